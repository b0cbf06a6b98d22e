//! Starting the lab's etcd and the hosts' rnetd, and waiting (with deadlines) until they answer:
//! etcd when it accepts TCP connections on the switch address, seen from a host namespace;
//! rnetd when `GET /v1/status` answers on its socket.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use super::config::{HostConfig, LabConfig, ETCD_CLIENT_PORT, SWITCH_ADDRESS};
use super::process::{self, Launch, Victim};
use super::{LabError, POLL, START_DEADLINE};
use crate::api::types::Status;
use crate::api::Client;
use crate::netns::NetNs;

/// Lines of a log shown when its process fails to come up.
const TAIL_LINES: usize = 20;
/// How long one API or TCP probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Start the lab's etcd in the switch namespace; returns its pid.
pub(crate) fn launch_etcd(cfg: &LabConfig) -> Result<u32, LabError> {
    let e = &cfg.etcd;
    if let Some(pid) = process::running(&e.pid_file, &e.data_dir) {
        return Err(LabError::Running {
            what: "the lab's etcd".into(),
            pid,
        });
    }
    process::launch(&Launch {
        program: &e.binary,
        args: &e.args,
        netns: &cfg.switch_netns,
        log: &e.log,
        pid_file: &e.pid_file,
        env_prefix: "ETCD_",
    })
}

/// Wait until etcd (pid `pid`) accepts connections, probing from the first host's namespace.
pub(crate) fn wait_etcd(cfg: &LabConfig, pid: u32) -> Result<(), LabError> {
    let probe_from = cfg
        .hosts
        .first()
        .map(|h| &h.netns)
        .unwrap_or(&cfg.switch_netns);
    let ns = NetNs::open(probe_from)?;
    let addr = SocketAddr::new(SWITCH_ADDRESS.into(), ETCD_CLIENT_PORT);
    let marker = cfg.etcd.data_dir.clone();
    let outcome = ns.run(move || wait_tcp(addr, pid, &marker))?;
    outcome.map_err(|reason| start_error("etcd", reason, &cfg.etcd.log))
}

fn wait_tcp(addr: SocketAddr, pid: u32, marker: &Path) -> Result<(), String> {
    let end = Instant::now() + START_DEADLINE;
    loop {
        if TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok() {
            return Ok(());
        }
        if !process::alive(pid, marker) {
            return Err(format!("exited before accepting connections on {addr}"));
        }
        if Instant::now() >= end {
            return Err(format!(
                "did not accept connections on {addr} within {} s",
                START_DEADLINE.as_secs()
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Whether the lab's etcd accepts connections right now (probed from the switch namespace).
pub(crate) fn etcd_answers(cfg: &LabConfig) -> bool {
    let Ok(ns) = NetNs::open(&cfg.switch_netns) else {
        return false;
    };
    let addr = SocketAddr::new(SWITCH_ADDRESS.into(), ETCD_CLIENT_PORT);
    ns.run(move || TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok())
        .unwrap_or(false)
}

/// Start host `h`'s rnetd in its namespace with the saved flags; returns its pid.
pub(crate) fn launch_rnetd(cfg: &LabConfig, h: &HostConfig) -> Result<u32, LabError> {
    if let Some(pid) = process::running(&h.pid_file, &h.socket) {
        return Err(LabError::Running {
            what: format!("rnetd of host {}", h.id),
            pid,
        });
    }
    let dir = h.socket.parent().unwrap_or(&cfg.dir);
    fs::create_dir_all(dir).map_err(LabError::io("creating host dir", dir))?;
    process::launch(&Launch {
        program: &cfg.rnetd,
        args: &h.rnetd_args,
        netns: &h.netns,
        log: &h.log,
        pid_file: &h.pid_file,
        env_prefix: "RNET_",
    })
}

/// Wait until host `h`'s rnetd (pid `pid`) answers `GET /v1/status`.
pub(crate) fn wait_rnetd(
    rt: &tokio::runtime::Runtime,
    h: &HostConfig,
    pid: u32,
) -> Result<(), LabError> {
    let end = Instant::now() + START_DEADLINE;
    let what = format!("rnetd of host {}", h.id);
    loop {
        if rt.block_on(api_answers(&h.socket)) {
            return Ok(());
        }
        if !process::alive(pid, &h.socket) {
            return Err(start_error(&what, "exited during startup".into(), &h.log));
        }
        if Instant::now() >= end {
            let reason = format!(
                "did not answer GET /v1/status on {} within {} s",
                h.socket.display(),
                START_DEADLINE.as_secs()
            );
            return Err(start_error(&what, reason, &h.log));
        }
        std::thread::sleep(POLL);
    }
}

/// Whether the daemon on `socket` answers `GET /v1/status` (within a short timeout).
pub(crate) async fn api_answers(socket: &Path) -> bool {
    let client = Client::new(socket);
    let call = client.get::<Status>("/v1/status");
    matches!(tokio::time::timeout(PROBE_TIMEOUT, call).await, Ok(Ok(_)))
}

fn start_error(what: &str, reason: String, log: &Path) -> LabError {
    LabError::Start {
        what: what.to_string(),
        reason,
        log: log.to_path_buf(),
        tail: process::log_tail(log, TAIL_LINES),
    }
}

/// The lab's etcd as a process to stop, if its pid file names one.
pub(crate) fn etcd_victim(cfg: &LabConfig) -> Option<Victim<'_>> {
    let pid = process::read_pid(&cfg.etcd.pid_file)?;
    Some(Victim {
        what: "the lab's etcd".into(),
        pid,
        marker: &cfg.etcd.data_dir,
    })
}

/// Host `h`'s rnetd as a process to stop, if its pid file names one.
pub(crate) fn rnetd_victim(h: &HostConfig) -> Option<Victim<'_>> {
    let pid = process::read_pid(&h.pid_file)?;
    Some(Victim {
        what: format!("rnetd of host {}", h.id),
        pid,
        marker: &h.socket,
    })
}

/// Remove a pid file once its process is gone (absent is fine).
pub(crate) fn clear_pid_file(path: &Path) {
    let _ = fs::remove_file(path);
}
