//! The lab's configuration (`<dir>/lab.json`): what `lab up` planned, so that every later
//! command (exec, status, stop/start, link, down) acts on the same hosts, addresses and flags.
//! [`LabConfig::plan`] is pure: options and paths in, the whole layout out.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use super::{LabError, LabPaths, UpOptions};

/// The switch bridge's address: the lab's etcd listens here.
pub const SWITCH_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Prefix length of the lab's underlay segment (inside 198.18.0.0/15).
pub const UNDERLAY_PREFIX: u8 = 24;
/// Host `h<i>` gets 198.18.0.(HOST_BASE + i).
pub const HOST_BASE: u8 = 10;
/// At most this many hosts fit on the /24 above the base.
pub const MAX_HOSTS: u32 = 240;
/// The switch's bridge.
pub const BRIDGE: &str = "br0";
/// A host's underlay interface.
pub const UNDERLAY_IF: &str = "ul0";
/// MTU of the lab underlay.
pub const UNDERLAY_MTU: u32 = 1500;
/// etcd's client port on the switch address.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's peer URL (inside the switch namespace only).
pub const ETCD_PEER_URL: &str = "http://127.0.0.1:2380";
/// The store URL the hosts' rnetd use unless told otherwise.
pub const DEFAULT_STORE: &str = "etcd://198.18.0.1:2379";
/// Longest unix socket path the kernel accepts (sun_path less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Everything `lab up` built, as saved in `lab.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabConfig {
    pub name: String,
    pub dir: PathBuf,
    /// The switch namespace's bind mount.
    pub switch_netns: PathBuf,
    pub bridge: String,
    /// The bridge's address with prefix, e.g. 198.18.0.1/24.
    pub switch_address: Ipv4Network,
    pub etcd: EtcdConfig,
    /// The rnetd binary every host runs.
    pub rnetd: PathBuf,
    /// The `--store` every rnetd gets.
    pub store: String,
    pub lease_ttl: u64,
    pub probe_window: Option<u64>,
    /// rnetd's `--resync`, passed only when set.
    #[serde(default)]
    pub resync: Option<u64>,
    pub hosts: Vec<HostConfig>,
}

/// The lab's etcd: one member, inside the switch namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdConfig {
    pub binary: PathBuf,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub pid_file: PathBuf,
    /// etcd's full argument list (without the program).
    pub args: Vec<String>,
}

/// One simulated host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostConfig {
    /// Host id, also rnetd's `--host-id`: h1 … hN.
    pub id: String,
    pub netns: PathBuf,
    /// `ul0`'s address with prefix, e.g. 198.18.0.11/24.
    pub underlay: Ipv4Network,
    /// The veth peer of `ul0` in the switch namespace (a port of the bridge).
    pub switch_port: String,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub log: PathBuf,
    pub pid_file: PathBuf,
    /// rnetd's full argument list (without the program), reused by `lab start`.
    pub rnetd_args: Vec<String>,
}

impl LabConfig {
    /// The layout of a lab built with `opts` at `paths`. Validates the options.
    pub fn plan(
        opts: &UpOptions,
        paths: &LabPaths,
        rnetd: PathBuf,
        etcd: PathBuf,
    ) -> Result<LabConfig, LabError> {
        if opts.hosts == 0 || opts.hosts > MAX_HOSTS {
            return Err(LabError::Invalid(format!(
                "--hosts must be between 1 and {MAX_HOSTS}, not {}",
                opts.hosts
            )));
        }
        let mut cfg = LabConfig {
            name: paths.name().to_string(),
            dir: paths.dir().to_path_buf(),
            switch_netns: paths.switch_netns(),
            bridge: BRIDGE.into(),
            switch_address: net(SWITCH_ADDRESS),
            etcd: plan_etcd(paths, etcd),
            rnetd,
            store: opts.store.clone(),
            lease_ttl: opts.lease_ttl,
            probe_window: opts.probe_window,
            resync: opts.resync,
            hosts: Vec::new(),
        };
        cfg.hosts = (1..=opts.hosts).map(|i| cfg.plan_host(paths, i)).collect();
        check_socket_len(&cfg.hosts[0].socket)?;
        Ok(cfg)
    }

    fn plan_host(&self, paths: &LabPaths, i: u32) -> HostConfig {
        let id = format!("h{i}");
        let dir = paths.host_dir(&id);
        let address = Ipv4Addr::new(198, 18, 0, HOST_BASE + i as u8);
        let mut h = HostConfig {
            netns: paths.host_netns(&id),
            underlay: net(address),
            switch_port: id.clone(),
            socket: dir.join("rnetd.sock"),
            state_dir: dir.join("state"),
            run_dir: dir.join("run"),
            log: dir.join("rnetd.log"),
            pid_file: dir.join("rnetd.pid"),
            rnetd_args: Vec::new(),
            id,
        };
        h.rnetd_args = self.rnetd_args(&h);
        h
    }

    fn rnetd_args(&self, h: &HostConfig) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--socket".into(),
            path_arg(&h.socket),
            "--state-dir".into(),
            path_arg(&h.state_dir),
            "--run-dir".into(),
            path_arg(&h.run_dir),
            "--host-id".into(),
            h.id.clone(),
            "--underlay".into(),
            h.underlay.ip().to_string(),
            "--store".into(),
            self.store.clone(),
            "--docker-plugin-dir".into(),
            "none".into(),
            "--lease-ttl".into(),
            self.lease_ttl.to_string(),
        ];
        if let Some(w) = self.probe_window {
            args.extend(["--probe-window".into(), w.to_string()]);
        }
        if let Some(r) = self.resync {
            args.extend(["--resync".into(), r.to_string()]);
        }
        args
    }

    /// The host with id `id`.
    pub fn host(&self, id: &str) -> Result<&HostConfig, LabError> {
        self.hosts
            .iter()
            .find(|h| h.id == id)
            .ok_or_else(|| LabError::NoSuchHost {
                lab: self.name.clone(),
                host: id.to_string(),
                known: self.host_ids().join(", "),
            })
    }

    /// h1 … hN.
    pub fn host_ids(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.id.clone()).collect()
    }

    /// Read `<dir>/lab.json`; [`LabError::Missing`] if the lab does not exist.
    pub fn load(paths: &LabPaths) -> Result<LabConfig, LabError> {
        paths.require_exists()?;
        let path = paths.config();
        let text = fs::read_to_string(&path).map_err(LabError::io("reading", &path))?;
        serde_json::from_str(&text).map_err(|e| {
            LabError::Invalid(format!(
                "{} is not a lab configuration ({e}); remove the lab with `rnet lab down --name {}`",
                path.display(),
                paths.name()
            ))
        })
    }

    /// Write `<dir>/lab.json` (atomically: a temp file renamed into place).
    pub fn save(&self) -> Result<(), LabError> {
        let path = self.dir.join("lab.json");
        let tmp = self.dir.join("lab.json.tmp");
        let text = serde_json::to_string_pretty(self).expect("serializable");
        fs::write(&tmp, text + "\n").map_err(LabError::io("writing", &tmp))?;
        fs::rename(&tmp, &path).map_err(LabError::io("renaming into place", &path))
    }
}

fn plan_etcd(paths: &LabPaths, binary: PathBuf) -> EtcdConfig {
    let client_url = format!("http://{SWITCH_ADDRESS}:{ETCD_CLIENT_PORT}");
    let data_dir = paths.etcd_data();
    let member = format!("lab-{}", paths.name());
    let args = vec![
        "--name".into(),
        member.clone(),
        "--data-dir".into(),
        path_arg(&data_dir),
        "--listen-client-urls".into(),
        client_url.clone(),
        "--advertise-client-urls".into(),
        client_url.clone(),
        "--listen-peer-urls".into(),
        ETCD_PEER_URL.into(),
        "--initial-advertise-peer-urls".into(),
        ETCD_PEER_URL.into(),
        "--initial-cluster".into(),
        format!("{member}={ETCD_PEER_URL}"),
    ];
    EtcdConfig {
        binary,
        client_url,
        peer_url: ETCD_PEER_URL.into(),
        log: paths.dir().join("etcd.log"),
        pid_file: paths.dir().join("etcd.pid"),
        data_dir,
        args,
    }
}

fn net(ip: Ipv4Addr) -> Ipv4Network {
    Ipv4Network::new(ip, UNDERLAY_PREFIX).expect("prefix 24 is valid")
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn check_socket_len(socket: &Path) -> Result<(), LabError> {
    let len = socket.as_os_str().len();
    if len <= MAX_SOCKET_PATH {
        return Ok(());
    }
    Err(LabError::Invalid(format!(
        "lab directory too deep: socket path {} is {len} bytes, the limit is {MAX_SOCKET_PATH}",
        socket.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(hosts: u32, probe_window: Option<u64>) -> UpOptions {
        UpOptions {
            hosts,
            lease_ttl: 5,
            probe_window,
            resync: None,
            rnetd: None,
            etcd: None,
            store: DEFAULT_STORE.into(),
        }
    }

    fn plan(o: &UpOptions) -> Result<LabConfig, LabError> {
        let paths = LabPaths::new("x", None).unwrap();
        LabConfig::plan(o, &paths, "/b/rnetd".into(), "/usr/bin/etcd".into())
    }

    #[test]
    fn hosts_get_consecutive_underlay_addresses_and_own_dirs() {
        let cfg = plan(&opts(3, None)).unwrap();
        let ids: Vec<_> = cfg.hosts.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(ids, ["h1", "h2", "h3"]);
        assert_eq!(cfg.hosts[2].underlay.to_string(), "198.18.0.13/24");
        assert_eq!(cfg.switch_address.to_string(), "198.18.0.1/24");
        let h1 = &cfg.hosts[0];
        assert_eq!(h1.socket, Path::new("/run/rnet/lab/x/h1/rnetd.sock"));
        assert_eq!(h1.netns, Path::new("/run/rnet/lab/x/netns/h1"));
        let a = h1.rnetd_args.join(" ");
        assert!(a.contains("--host-id h1 --underlay 198.18.0.11"), "{a}");
        assert!(a.contains("--store etcd://198.18.0.1:2379"), "{a}");
        assert!(a.contains("--lease-ttl 5"), "{a}");
        assert!(!a.contains("--probe-window"), "{a}");
    }

    #[test]
    fn probe_window_is_passed_only_when_given() {
        let cfg = plan(&opts(1, Some(7))).unwrap();
        assert!(cfg.hosts[0]
            .rnetd_args
            .ends_with(&["--probe-window".into(), "7".into()]));
    }

    #[test]
    fn host_count_is_bounded() {
        assert!(plan(&opts(0, None)).is_err());
        assert!(plan(&opts(MAX_HOSTS + 1, None)).is_err());
        let last = plan(&opts(MAX_HOSTS, None)).unwrap();
        assert_eq!(last.hosts.last().unwrap().underlay.ip().octets()[3], 250);
    }

    #[test]
    fn etcd_listens_on_the_switch_and_round_trips() {
        let cfg = plan(&opts(2, None)).unwrap();
        assert_eq!(cfg.etcd.client_url, "http://198.18.0.1:2379");
        assert!(cfg
            .etcd
            .args
            .contains(&"lab-x=http://127.0.0.1:2380".into()));
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<LabConfig>(&json).unwrap(), cfg);
        assert!(cfg.host("h9").unwrap_err().to_string().contains("h1, h2"));
    }
}
