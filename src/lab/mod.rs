//! `rnet lab`: simulated multi-host deployments on one machine.
//!
//! A lab is a directory (`/run/rnet/lab/<name>` by default) that holds everything the lab made:
//!
//! ```text
//! <dir>/lab.json              the lab's configuration (config::LabConfig)
//! <dir>/netns/switch          the switch namespace: bridge br0 (198.18.0.1/24) and etcd
//! <dir>/netns/h1 … hN         host namespaces: lo, underlay veth ul0 (198.18.0.(10+i)/24)
//! <dir>/etcd/ etcd.log etcd.pid
//! <dir>/h1/ rnetd.sock rnetd.log rnetd.pid state/ run/   one rnetd per host
//! ```
//!
//! Every host's `ul0` is a veth whose peer (`h<i>`) is a port of the switch's bridge. Nothing
//! is configured in the root network namespace, so no packet leaves the machine and labs with
//! different names coexist. A host's rnetd enters only the host's network namespace (setns
//! before exec), never a private mount namespace, so the namespace bind mounts it makes under
//! its run dir stay visible to everyone and outlive the daemon.
//!
//! The functions here block and build their own small tokio runtime where they need one
//! (netlink, the daemon API); call them outside any runtime.

pub mod config;
pub mod control;
mod daemons;
pub mod down;
pub mod exec;
mod net;
mod process;
pub mod status;
pub mod up;
pub mod vm;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use config::{EtcdConfig, HostConfig, LabConfig};
pub use up::UpOptions;

use crate::dataplane::DataplaneError;
use crate::netns::NetnsError;

/// Where labs live unless `--dir` says otherwise.
pub const LAB_ROOT: &str = "/run/rnet/lab";
/// The lab name used when none is given.
pub const DEFAULT_NAME: &str = "lab";
/// How long to wait for etcd or an rnetd to answer after starting it.
pub const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a process gets to exit after a signal before the next step.
pub const STOP_DEADLINE: Duration = Duration::from_secs(15);
/// How often every wait polls.
const POLL: Duration = Duration::from_millis(20);

/// Why a lab operation failed. Each message is one line; [`LabError::detail`] may add a log tail.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("lab {name} already exists at {}; remove it first with `rnet lab down --name {name}`", dir.display())]
    Exists { name: String, dir: PathBuf },
    #[error("there is no lab named {name} (nothing at {}); build one with `rnet lab up --name {name}`", dir.display())]
    Missing { name: String, dir: PathBuf },
    #[error("lab {lab} has no host {host} (its hosts: {known})")]
    NoSuchHost {
        lab: String,
        host: String,
        known: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("{op}: {msg}")]
    Netlink { op: String, msg: String },
    /// A process did not come up; `tail` holds the end of its log.
    #[error("{what} {reason}")]
    Start {
        what: String,
        reason: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} (pid {pid}) is still running {secs} s after {signal}{hint}")]
    Stop {
        what: String,
        pid: u32,
        secs: u64,
        signal: &'static str,
        hint: &'static str,
    },
    #[error("{what} is already running (pid {pid})")]
    Running { what: String, pid: u32 },
    #[error("{0}")]
    Runtime(String),
}

impl LabError {
    /// More worth showing after the message: the log of a process that failed to start, and
    /// its last lines.
    pub fn detail(&self) -> Option<(&Path, &str)> {
        match self {
            LabError::Start { log, tail, .. } => Some((log, tail)),
            _ => None,
        }
    }

    fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LabError {
        let path = path.to_path_buf();
        move |source| LabError::Io { op, path, source }
    }
}

/// Where one lab's files are. Pure path arithmetic; nothing here touches the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabPaths {
    name: String,
    dir: PathBuf,
}

impl LabPaths {
    /// The lab `name` at `dir`, or at `/run/rnet/lab/<name>` when `dir` is None.
    pub fn new(name: &str, dir: Option<&Path>) -> Result<LabPaths, LabError> {
        validate_name(name)?;
        let dir = match dir {
            Some(d) => std::path::absolute(d).map_err(LabError::io("resolving", d))?,
            None => Path::new(LAB_ROOT).join(name),
        };
        Ok(LabPaths {
            name: name.to_string(),
            dir,
        })
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lab directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/lab.json`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("lab.json")
    }

    /// `<dir>/netns`: the lab's namespace bind mounts.
    pub fn netns_dir(&self) -> PathBuf {
        self.dir.join("netns")
    }

    /// `<dir>/netns/switch`.
    pub fn switch_netns(&self) -> PathBuf {
        self.netns_dir().join("switch")
    }

    /// `<dir>/netns/<host>`.
    pub fn host_netns(&self, host: &str) -> PathBuf {
        self.netns_dir().join(host)
    }

    /// `<dir>/<host>`: the host's socket, log, pid file, state and run dirs.
    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.dir.join(host)
    }

    /// `<dir>/etcd`: etcd's data dir.
    pub fn etcd_data(&self) -> PathBuf {
        self.dir.join("etcd")
    }

    /// Fails with [`LabError::Missing`] unless the lab directory exists.
    pub fn require_exists(&self) -> Result<(), LabError> {
        if self.dir.is_dir() {
            Ok(())
        } else {
            Err(LabError::Missing {
                name: self.name.clone(),
                dir: self.dir.clone(),
            })
        }
    }
}

/// Lab names become directory names and etcd member names: keep them plain.
fn validate_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(LabError::Invalid(format!(
            "invalid lab name {name:?}: use 1-32 letters, digits, '-' or '_'"
        )))
    }
}

/// A single-threaded tokio runtime for one lab operation's async parts.
fn runtime() -> Result<tokio::runtime::Runtime, LabError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LabError::Runtime(format!("starting the tokio runtime: {e}")))
}

/// The directory holding the running `rnet` executable (rnetd and rnet-cni live beside it).
pub fn exe_dir() -> Result<PathBuf, LabError> {
    let exe = std::env::current_exe()
        .map_err(|e| LabError::Runtime(format!("finding the rnet executable: {e}")))?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_is_under_run_rnet_lab() {
        let p = LabPaths::new("demo", None).unwrap();
        assert_eq!(p.dir(), Path::new("/run/rnet/lab/demo"));
        assert_eq!(p.host_netns("h2"), Path::new("/run/rnet/lab/demo/netns/h2"));
        assert_eq!(p.config(), Path::new("/run/rnet/lab/demo/lab.json"));
    }

    #[test]
    fn names_are_plain() {
        for bad in ["", "a/b", "..", "-x", "x y", &"a".repeat(33)] {
            assert!(LabPaths::new(bad, None).is_err(), "{bad:?} accepted");
        }
        assert!(LabPaths::new("t123n4_a-b", None).is_ok());
    }
}
