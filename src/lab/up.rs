//! `rnet lab up`: build a lab step by step, reporting progress; on any failure tear down what
//! was built (through `down`) and return the error.

use std::fs;
use std::path::{Path, PathBuf};

use super::config::LabConfig;
use super::{daemons, down, net, runtime, LabError, LabPaths};
use crate::netns::NetNs;

/// What `lab up` was asked for (the lab's name and directory come with its [`LabPaths`]).
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// Number of hosts, h1 … hN.
    pub hosts: u32,
    /// rnetd's `--lease-ttl`.
    pub lease_ttl: u64,
    /// rnetd's `--probe-window`, passed only when set.
    pub probe_window: Option<u64>,
    /// rnetd's `--resync`, passed only when set.
    pub resync: Option<u64>,
    /// The rnetd binary (default: the one beside the running rnet).
    pub rnetd: Option<PathBuf>,
    /// The etcd binary (default: `etcd` on PATH).
    pub etcd: Option<PathBuf>,
    /// rnetd's `--store`.
    pub store: String,
}

/// One started host, for the closing table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct UpHost {
    pub id: String,
    pub underlay: String,
    pub pid: u32,
    pub socket: PathBuf,
}

/// Build the lab `paths` names. Fails with [`LabError::Exists`] if it is already there.
pub fn up(
    paths: &LabPaths,
    opts: &UpOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<(LabConfig, Vec<UpHost>), LabError> {
    let rnetd = resolve_rnetd(opts.rnetd.as_deref())?;
    let etcd = resolve_etcd(opts.etcd.as_deref())?;
    let cfg = LabConfig::plan(opts, paths, rnetd, etcd)?;
    claim_dir(paths)?;
    match build(&cfg, paths, progress) {
        Ok(hosts) => Ok((cfg, hosts)),
        Err(e) => {
            progress("failed; tearing down what was built");
            if let Err(d) = down::down(paths, &mut |_| {}) {
                progress(&format!("teardown failed too: {d}"));
            }
            Err(e)
        }
    }
}

/// Create the lab directory; its existence is what "the lab exists" means.
pub(super) fn claim_dir(paths: &LabPaths) -> Result<(), LabError> {
    let dir = paths.dir();
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(LabError::io("creating", parent))?;
    }
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(LabError::Exists {
            name: paths.name().to_string(),
            dir: dir.to_path_buf(),
        }),
        Err(e) => Err(LabError::io("creating lab directory", dir)(e)),
    }
}

fn build(
    cfg: &LabConfig,
    paths: &LabPaths,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<UpHost>, LabError> {
    cfg.save()?;
    let netns_dir = paths.netns_dir();
    fs::create_dir(&netns_dir).map_err(LabError::io("creating", &netns_dir))?;
    build_network(cfg, progress)?;
    let etcd = daemons::launch_etcd(cfg)?;
    progress(&format!(
        "etcd: started (pid {etcd}), waiting for {}",
        cfg.etcd.client_url
    ));
    daemons::wait_etcd(cfg, etcd)?;
    progress(&format!(
        "etcd: accepting connections on {}",
        cfg.etcd.client_url
    ));
    start_daemons(cfg, progress)
}

/// The switch and every host namespace with its underlay.
fn build_network(cfg: &LabConfig, progress: &mut dyn FnMut(&str)) -> Result<(), LabError> {
    let rt = runtime()?;
    let switch = NetNs::create(&cfg.switch_netns)?;
    rt.block_on(net::build_switch(&switch, cfg.switch_address))?;
    progress(&format!(
        "switch: namespace {}, bridge {} {}",
        cfg.switch_netns.display(),
        cfg.bridge,
        cfg.switch_address
    ));
    let mut plugged = Vec::new();
    for h in &cfg.hosts {
        let host = NetNs::create(&h.netns)?;
        rt.block_on(net::plug_host(&switch, &host, &h.switch_port, h.underlay))?;
        progress(&format!(
            "{}: namespace {}, ul0 {} on switch port {}",
            h.id,
            h.netns.display(),
            h.underlay,
            h.switch_port
        ));
        plugged.push((host, h));
    }
    for (host, h) in &plugged {
        rt.block_on(net::wait_plugged(&switch, host, &h.switch_port))?;
    }
    progress("underlay: every host link passes packets");
    Ok(())
}

/// Start every host's rnetd, then wait for each to answer.
fn start_daemons(cfg: &LabConfig, progress: &mut dyn FnMut(&str)) -> Result<Vec<UpHost>, LabError> {
    let mut started = Vec::new();
    for h in &cfg.hosts {
        let pid = daemons::launch_rnetd(cfg, h)?;
        progress(&format!("{}: rnetd started (pid {pid})", h.id));
        started.push((h, pid));
    }
    let rt = runtime()?;
    let mut out = Vec::new();
    for (h, pid) in started {
        daemons::wait_rnetd(&rt, h, pid)?;
        progress(&format!(
            "{}: rnetd answers on {}",
            h.id,
            h.socket.display()
        ));
        out.push(UpHost {
            id: h.id.clone(),
            underlay: h.underlay.ip().to_string(),
            pid,
            socket: h.socket.clone(),
        });
    }
    Ok(out)
}

fn resolve_rnetd(given: Option<&Path>) -> Result<PathBuf, LabError> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => super::exe_dir()?.join("rnetd"),
    };
    if path.is_file() {
        return std::path::absolute(&path).map_err(LabError::io("resolving", &path));
    }
    Err(LabError::Invalid(format!(
        "rnetd not found at {}; build it (cargo build --bins) or pass --rnetd PATH",
        path.display()
    )))
}

fn resolve_etcd(given: Option<&Path>) -> Result<PathBuf, LabError> {
    if let Some(p) = given {
        if p.is_file() {
            return std::path::absolute(p).map_err(LabError::io("resolving", p));
        }
        return Err(LabError::Invalid(format!(
            "etcd not found at {}",
            p.display()
        )));
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file() && p.is_absolute())
        .ok_or_else(|| {
            LabError::Invalid(
                "etcd not found on PATH; install Debian's etcd-server (scripts/deps.sh) or pass --etcd PATH"
                    .into(),
            )
        })
}
