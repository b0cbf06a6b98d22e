//! `rnet lab status` of a VM lab: for every guest, whether its QEMU runs, its agent answers,
//! its rnetd answers (`rnet status` inside it), and whether its link is set up.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::client::{self, ExecSpec};
use super::{control, VmHost, VmLabConfig};
use crate::lab::{process, LabError, LabPaths};

/// How long each probe may take.
const PROBE: Duration = Duration::from_secs(5);

/// The state of a VM lab.
#[derive(Clone, Debug, Serialize)]
pub struct VmLabStatus {
    pub name: String,
    pub dir: PathBuf,
    pub vm: bool,
    pub accel: &'static str,
    pub hosts: Vec<VmHostStatus>,
}

/// One guest.
#[derive(Clone, Debug, Serialize)]
pub struct VmHostStatus {
    pub id: String,
    pub underlay: String,
    pub qemu_pid: Option<u32>,
    /// Whether that QEMU runs (and is this guest's).
    pub alive: bool,
    pub agent: bool,
    /// Whether the guest's rnetd answers `rnet status`.
    pub api: bool,
    pub link_up: bool,
    pub etcd: bool,
}

/// Look at the VM lab `paths` names.
pub fn status(paths: &LabPaths) -> Result<VmLabStatus, LabError> {
    let cfg = VmLabConfig::load(paths)?;
    Ok(VmLabStatus {
        name: cfg.name.clone(),
        dir: cfg.dir.clone(),
        vm: true,
        accel: cfg.accel.as_str(),
        hosts: cfg.hosts.iter().map(host_status).collect(),
    })
}

fn host_status(h: &VmHost) -> VmHostStatus {
    let qemu_pid = process::read_pid(&h.pid_file);
    let alive = qemu_pid.is_some_and(|p| process::alive(p, &h.pid_file));
    let agent = alive && client::answers(h, PROBE);
    let spec = ExecSpec {
        argv: vec!["rnet".into(), "status".into()],
        timeout: PROBE,
        ..Default::default()
    };
    let api = agent && client::exec(h, &spec).is_ok_and(|r| r.status == 0);
    VmHostStatus {
        id: h.id.clone(),
        underlay: h.underlay.ip().to_string(),
        qemu_pid,
        alive,
        agent,
        api,
        link_up: control::link_up(h),
        etcd: h.etcd,
    }
}
