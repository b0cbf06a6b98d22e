//! Fault injection on a running lab: stop and start one host's rnetd or the lab's etcd, and
//! cut or restore one host's underlay link at the switch.

use nix::sys::signal::Signal;

use super::config::LabConfig;
use super::{daemons, net, process, runtime, LabError, STOP_DEADLINE};
use crate::netns::NetNs;

/// How to stop a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// SIGTERM, and fail if it is still running after the deadline.
    Term,
    /// SIGKILL (as `kill -9`).
    Kill,
}

impl StopMode {
    fn signal(self) -> Signal {
        match self {
            StopMode::Term => Signal::SIGTERM,
            StopMode::Kill => Signal::SIGKILL,
        }
    }
}

/// Stop host `id`'s rnetd and wait until it is gone. Returns its pid, or None if it was not
/// running.
pub fn stop_host(cfg: &LabConfig, id: &str, mode: StopMode) -> Result<Option<u32>, LabError> {
    let h = cfg.host(id)?;
    let victim = daemons::rnetd_victim(h).filter(|v| process::alive(v.pid, v.marker));
    let Some(v) = victim else {
        daemons::clear_pid_file(&h.pid_file);
        return Ok(None);
    };
    process::stop(std::slice::from_ref(&v), mode.signal(), STOP_DEADLINE)?;
    daemons::clear_pid_file(&h.pid_file);
    Ok(Some(v.pid))
}

/// Start host `id`'s rnetd again with its saved flags; returns its pid once it answers.
pub fn start_host(cfg: &LabConfig, id: &str) -> Result<u32, LabError> {
    let h = cfg.host(id)?;
    let pid = daemons::launch_rnetd(cfg, h)?;
    daemons::wait_rnetd(&runtime()?, h, pid)?;
    Ok(pid)
}

/// Stop the lab's etcd and wait until it is gone. Returns its pid, or None if not running.
pub fn stop_etcd(cfg: &LabConfig, mode: StopMode) -> Result<Option<u32>, LabError> {
    let victim = daemons::etcd_victim(cfg).filter(|v| process::alive(v.pid, v.marker));
    let Some(v) = victim else {
        daemons::clear_pid_file(&cfg.etcd.pid_file);
        return Ok(None);
    };
    process::stop(std::slice::from_ref(&v), mode.signal(), STOP_DEADLINE)?;
    daemons::clear_pid_file(&cfg.etcd.pid_file);
    Ok(Some(v.pid))
}

/// Start the lab's etcd again (same data dir); returns its pid once it accepts connections.
pub fn start_etcd(cfg: &LabConfig) -> Result<u32, LabError> {
    let pid = daemons::launch_etcd(cfg)?;
    daemons::wait_etcd(cfg, pid)?;
    Ok(pid)
}

/// Set host `id`'s switch port up or down: its underlay cable plugged in or cut.
pub fn set_link(cfg: &LabConfig, id: &str, up: bool) -> Result<(), LabError> {
    let h = cfg.host(id)?;
    let switch = NetNs::open(&cfg.switch_netns)?;
    let host = NetNs::open(&h.netns)?;
    runtime()?.block_on(net::set_port(&switch, &host, &h.switch_port, up))
}
