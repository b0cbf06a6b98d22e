//! `rnet lab up --vm`: the lab on real guest kernels. Each host is a QEMU guest (Debian 12,
//! its stock kernel has ESP and WireGuard modules, which the machine's kernel may lack).
//!
//! ```text
//! /var/lib/rnet/lab/vm/<recipe hash>/  base.qcow2 vmlinuz initrd.img   (image::ensure, cached)
//! <dir>/vm.json                the lab's configuration (VmLabConfig); its presence marks a VM lab
//! <dir>/netns/switch           the lab namespace: bridge br0, one tap per guest (h1 … hN)
//! <dir>/h1/ overlay.qcow2 console.log qmp.sock agent0.sock … agent3.sock qemu.pid
//! ```
//!
//! QEMU runs inside the lab namespace (setns before exec), so its taps are born there and no
//! packet reaches the machine's own namespace. Guests boot the kernel directly (no bootloader),
//! mount rnet's binaries read-only over virtio-9p (a rebuild needs no new image), and run
//! `rnet lab agent` (see [`agent`]), through which the machine runs every command: starting
//! etcd on h1 and rnetd everywhere, `lab exec`, health checks. `lab down` needs only the
//! directory: it stops every QEMU by pid file, and dropping the namespace removes the taps.

pub mod agent;
pub mod client;
mod control;
pub mod down;
mod guest_net;
pub mod image;
pub mod proto;
mod qemu;
mod qmp;
pub mod status;
pub mod up;

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use super::{LabError, LabPaths};
pub use control::set_link;
pub use up::{up, VmUpOptions};

/// The configuration file that marks a lab directory as a VM lab.
pub const CONFIG_FILE: &str = "vm.json";
/// Most guests one VM lab runs (each is a whole QEMU).
pub const MAX_GUESTS: u32 = 16;
/// The lab namespace's bridge.
pub const BRIDGE: &str = "br0";
/// etcd's client port on h1.
pub const ETCD_PORT: u16 = 2379;
/// Where a guest keeps the lab's files (logs of the daemons the lab starts).
pub const GUEST_LOG_DIR: &str = "/var/log/rnet-lab";

/// rnetd's `--store-timeout` in TCG guests: emulation makes etcd on h1 (and every guest's
/// rnetd) about 10x slower, so etcd's answers often miss rnetd's default 3 s deadline; KVM
/// guests keep the default.
pub const TCG_STORE_TIMEOUT_SECS: u64 = 15;

/// Which accelerator the guests run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The `--store-timeout` guests on this accelerator give rnetd (None: rnetd's default).
    pub fn store_timeout(self) -> Option<u64> {
        match self {
            Accel::Kvm => None,
            Accel::Tcg => Some(TCG_STORE_TIMEOUT_SECS),
        }
    }
}

/// The guest image files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFiles {
    pub base: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Everything `lab up --vm` built, as saved in `vm.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmLabConfig {
    pub name: String,
    pub dir: PathBuf,
    /// The lab namespace (bridge and taps).
    pub netns: PathBuf,
    pub qemu: PathBuf,
    pub accel: Accel,
    pub image: ImageFiles,
    /// The directory shared read-only into every guest at /opt/rnet/bin.
    pub bin_dir: PathBuf,
    pub memory_mib: u32,
    /// rnetd's `--store` in every guest (etcd on h1).
    pub store: String,
    /// rnetd's `--store-timeout` in every guest (None: not passed; labs saved before it
    /// existed read as None).
    #[serde(default)]
    pub store_timeout: Option<u64>,
    pub lease_ttl: u64,
    pub hosts: Vec<VmHost>,
}

/// One guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmHost {
    /// h1 … hN: also the guest's hostname, rnetd's `--host-id` and the tap's name.
    pub id: String,
    pub underlay: Ipv4Network,
    pub mac: String,
    pub dir: PathBuf,
    pub overlay: PathBuf,
    pub console: PathBuf,
    pub qmp: PathBuf,
    pub agents: Vec<PathBuf>,
    pub pid_file: PathBuf,
    /// Whether this guest runs the lab's etcd.
    pub etcd: bool,
}

impl VmLabConfig {
    /// The layout of an `n`-guest lab at `paths`. Pure.
    pub fn plan(
        paths: &LabPaths,
        n: u32,
        accel: Accel,
        image: ImageFiles,
        qemu: PathBuf,
        bin_dir: PathBuf,
        lease_ttl: u64,
    ) -> Result<VmLabConfig, LabError> {
        check_count(n)?;
        let hosts: Vec<VmHost> = (1..=n).map(|i| plan_host(paths, i)).collect();
        let store = format!("etcd://{}:{ETCD_PORT}", hosts[0].underlay.ip());
        Ok(VmLabConfig {
            name: paths.name().to_string(),
            dir: paths.dir().to_path_buf(),
            netns: paths.switch_netns(),
            qemu,
            accel,
            image,
            bin_dir,
            memory_mib: 512,
            store,
            store_timeout: accel.store_timeout(),
            lease_ttl,
            hosts,
        })
    }

    /// The guest with id `id`.
    pub fn host(&self, id: &str) -> Result<&VmHost, LabError> {
        self.hosts
            .iter()
            .find(|h| h.id == id)
            .ok_or_else(|| LabError::NoSuchHost {
                lab: self.name.clone(),
                host: id.to_string(),
                known: self
                    .hosts
                    .iter()
                    .map(|h| h.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Read `<dir>/vm.json`.
    pub fn load(paths: &LabPaths) -> Result<VmLabConfig, LabError> {
        paths.require_exists()?;
        let path = paths.dir().join(CONFIG_FILE);
        let text = fs::read_to_string(&path).map_err(LabError::io("reading", &path))?;
        serde_json::from_str(&text).map_err(|e| {
            LabError::Invalid(format!(
                "{} is not a VM lab configuration ({e}); remove the lab with `rnet lab down --name {}`",
                path.display(),
                paths.name()
            ))
        })
    }

    /// Write `<dir>/vm.json` atomically.
    pub fn save(&self) -> Result<(), LabError> {
        let path = self.dir.join(CONFIG_FILE);
        let tmp = self.dir.join("vm.json.tmp");
        let text = serde_json::to_string_pretty(self).expect("serializable");
        fs::write(&tmp, text + "\n").map_err(LabError::io("writing", &tmp))?;
        fs::rename(&tmp, &path).map_err(LabError::io("renaming into place", &path))
    }
}

/// Fails unless `n` guests is a lab this module builds.
pub fn check_count(n: u32) -> Result<(), LabError> {
    if n == 0 || n > MAX_GUESTS {
        return Err(LabError::Invalid(format!(
            "--hosts must be between 1 and {MAX_GUESTS} for a VM lab, not {n}"
        )));
    }
    Ok(())
}

/// Whether the lab at `paths` is a VM lab.
pub fn is_vm(paths: &LabPaths) -> bool {
    paths.dir().join(CONFIG_FILE).is_file()
}

fn plan_host(paths: &LabPaths, i: u32) -> VmHost {
    let id = format!("h{i}");
    let dir = paths.host_dir(&id);
    let ip = Ipv4Addr::new(198, 18, 0, super::config::HOST_BASE + i as u8);
    VmHost {
        underlay: Ipv4Network::new(ip, super::config::UNDERLAY_PREFIX).expect("valid prefix"),
        mac: format!("52:54:00:12:00:{i:02x}"),
        overlay: dir.join("overlay.qcow2"),
        console: dir.join("console.log"),
        qmp: dir.join("qmp.sock"),
        agents: (0..proto::PORTS)
            .map(|k| dir.join(format!("agent{k}.sock")))
            .collect(),
        pid_file: dir.join("qemu.pid"),
        etcd: i == 1,
        dir,
        id,
    }
}

/// The QEMU pid files under a lab directory, found without its configuration (for `down`
/// after a crash): `<dir>/*/qemu.pid`.
pub fn pid_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("qemu.pid").is_file())
        .map(|p| {
            let host = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            (host, p.join("qemu.pid"))
        })
        .collect();
    out.sort();
    out
}

/// A plan of `n` guests for tests, of lab "v" (nothing is read from its image or directories).
#[cfg(test)]
pub(super) fn test_plan(n: u32, accel: Accel, lease_ttl: u64) -> Result<VmLabConfig, LabError> {
    let paths = LabPaths::new("v", None)?;
    let image = ImageFiles {
        base: "/i/base.qcow2".into(),
        kernel: "/i/vmlinuz".into(),
        initrd: "/i/initrd.img".into(),
    };
    VmLabConfig::plan(
        &paths,
        n,
        accel,
        image,
        "/q".into(),
        "/bin/dir".into(),
        lease_ttl,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_get_addresses_macs_and_etcd_on_h1() {
        let cfg = test_plan(2, Accel::Tcg, 10).unwrap();
        assert_eq!(cfg.store, "etcd://198.18.0.11:2379");
        let h2 = cfg.host("h2").unwrap();
        assert_eq!(h2.underlay.to_string(), "198.18.0.12/24");
        assert_eq!(h2.mac, "52:54:00:12:00:02");
        assert!(!h2.etcd && cfg.hosts[0].etcd);
        assert_eq!(h2.agents.len(), proto::PORTS);
        assert!(cfg.host("h3").unwrap_err().to_string().contains("h1, h2"));
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<VmLabConfig>(&json).unwrap(), cfg);
    }

    #[test]
    fn the_store_deadline_follows_the_accelerator_and_old_configs_still_load() {
        let plan = |accel| test_plan(1, accel, 10).unwrap();
        assert_eq!(plan(Accel::Tcg).store_timeout, Some(TCG_STORE_TIMEOUT_SECS));
        assert_eq!(plan(Accel::Kvm).store_timeout, None);
        // A vm.json written before the field existed.
        let mut json = serde_json::to_value(plan(Accel::Tcg)).unwrap();
        json.as_object_mut().unwrap().remove("store_timeout");
        let old: VmLabConfig = serde_json::from_value(json).unwrap();
        assert_eq!(old.store_timeout, None);
    }

    #[test]
    fn guest_count_is_bounded() {
        for n in [0, MAX_GUESTS + 1] {
            let r = test_plan(n, Accel::Tcg, 10);
            assert!(r.is_err(), "{n} guests accepted");
        }
    }
}
