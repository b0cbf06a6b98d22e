//! `rnet lab status`: what of a lab is present and alive, checked against the kernel, `/proc`
//! and the daemons themselves.

use std::path::PathBuf;

use serde::Serialize;

use super::config::{HostConfig, LabConfig};
use super::{daemons, net, process, runtime, LabError, LabPaths};
use crate::netns::{self, NetNs};

/// The state of a whole lab.
#[derive(Clone, Debug, Serialize)]
pub struct LabStatus {
    pub name: String,
    pub dir: PathBuf,
    /// Whether the switch namespace is mounted.
    pub switch_netns: bool,
    pub etcd: EtcdStatus,
    pub hosts: Vec<HostStatus>,
}

/// The lab's etcd.
#[derive(Clone, Debug, Serialize)]
pub struct EtcdStatus {
    pub url: String,
    /// The pid in its pid file, if any.
    pub pid: Option<u32>,
    /// Whether that process is alive (and is the lab's etcd).
    pub alive: bool,
    /// Whether it accepts connections.
    pub answers: bool,
}

/// One host.
#[derive(Clone, Debug, Serialize)]
pub struct HostStatus {
    pub id: String,
    pub underlay: String,
    /// Whether the host's namespace is mounted.
    pub netns: bool,
    /// Whether its switch port is up (None: no such port).
    pub link_up: Option<bool>,
    /// The pid in its rnetd pid file, if any.
    pub pid: Option<u32>,
    /// Whether that process is alive (and is this host's rnetd).
    pub alive: bool,
    /// Whether rnetd answers `GET /v1/status`.
    pub api: bool,
    pub socket: PathBuf,
}

/// Look at the lab `paths` names; [`LabError::Missing`] if there is none.
pub fn status(paths: &LabPaths) -> Result<LabStatus, LabError> {
    let cfg = LabConfig::load(paths)?;
    let rt = runtime()?;
    let switch = NetNs::open(&cfg.switch_netns).ok();
    let hosts = cfg
        .hosts
        .iter()
        .map(|h| host_status(&rt, switch.as_ref(), h))
        .collect();
    Ok(LabStatus {
        name: cfg.name.clone(),
        dir: cfg.dir.clone(),
        switch_netns: switch.is_some(),
        etcd: etcd_status(&cfg),
        hosts,
    })
}

fn etcd_status(cfg: &LabConfig) -> EtcdStatus {
    let pid = process::read_pid(&cfg.etcd.pid_file);
    let alive = pid.is_some_and(|p| process::alive(p, &cfg.etcd.data_dir));
    EtcdStatus {
        url: cfg.etcd.client_url.clone(),
        pid,
        alive,
        answers: alive && daemons::etcd_answers(cfg),
    }
}

fn host_status(rt: &tokio::runtime::Runtime, switch: Option<&NetNs>, h: &HostConfig) -> HostStatus {
    let pid = process::read_pid(&h.pid_file);
    let alive = pid.is_some_and(|p| process::alive(p, &h.socket));
    let link_up =
        switch.and_then(|sw| rt.block_on(net::port_up(sw, &h.switch_port)).ok().flatten());
    HostStatus {
        id: h.id.clone(),
        underlay: h.underlay.ip().to_string(),
        netns: netns::is_mounted(&h.netns),
        link_up,
        pid,
        alive,
        api: alive && rt.block_on(daemons::api_answers(&h.socket)),
        socket: h.socket.clone(),
    }
}
