//! The lab's long-running processes (etcd, the hosts' rnetd): start one detached inside a
//! network namespace, tell whether it still runs, stop it.
//!
//! A process counts as the lab's only while its command line carries its marker argument
//! (rnetd: its socket path; etcd: its data dir), so a stale pid file whose pid was reused
//! never gets an unrelated process signalled. A zombie (the lab's processes are reparented to
//! whatever reaps orphans, which may be slow to) has an empty command line and counts as gone.

use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{LabError, POLL};

/// What to start: a program, its arguments, the namespace it runs in, where it logs.
pub(crate) struct Launch<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    pub netns: &'a Path,
    pub log: &'a Path,
    pub pid_file: &'a Path,
    /// The program reads `<PREFIX><FLAG>` variables as flag defaults: those naming a flag in
    /// `args` are not passed on, so the environment can neither shadow nor contradict them.
    pub env_prefix: &'a str,
}

/// Start `l.program` detached (own session, stdin null, stdout and stderr appended to the
/// log) inside the network namespace `l.netns` and nothing else; write its pid file.
pub(crate) fn launch(l: &Launch) -> Result<u32, LabError> {
    let netns: OwnedFd = File::open(l.netns)
        .map_err(LabError::io("opening network namespace", l.netns))?
        .into();
    let mut cmd = command(l)?;
    let fd = netns.as_raw_fd();
    // SAFETY: between fork and exec the closure makes only async-signal-safe system calls
    // (setns, setsid) on a descriptor that stays open until exec (it is close-on-exec).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 || libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(LabError::io("starting", l.program))?;
    write_pid(l.pid_file, child.id())?;
    Ok(child.id())
}

/// The command line, environment and stdio of `l` (without the namespace switch).
fn command(l: &Launch) -> Result<Command, LabError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(l.log)
        .map_err(LabError::io("opening log", l.log))?;
    let log2 = log
        .try_clone()
        .map_err(LabError::io("duplicating", l.log))?;
    let mut cmd = Command::new(l.program);
    cmd.args(l.args)
        .stdin(Stdio::null())
        .stdout(log2)
        .stderr(log);
    for var in flag_variables(l.env_prefix, l.args) {
        cmd.env_remove(var);
    }
    Ok(cmd)
}

/// `--lease-ttl` with prefix `RNET_` → `RNET_LEASE_TTL`, for every flag in `args`.
fn flag_variables(prefix: &str, args: &[String]) -> Vec<String> {
    args.iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|flag| format!("{prefix}{}", flag.replace('-', "_").to_uppercase()))
        .collect()
}

fn write_pid(path: &Path, pid: u32) -> Result<(), LabError> {
    fs::write(path, format!("{pid}\n")).map_err(|e| {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        LabError::Io {
            op: "writing pid file",
            path: path.to_path_buf(),
            source: e,
        }
    })
}

/// The pid recorded in `pid_file`, if there is a readable one.
pub(crate) fn read_pid(pid_file: &Path) -> Option<u32> {
    fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// The pid in `pid_file` if that process is alive and still the lab's (see the module doc).
pub(crate) fn running(pid_file: &Path, marker: &Path) -> Option<u32> {
    read_pid(pid_file).filter(|&pid| alive(pid, marker))
}

/// Whether `pid` is a live (not zombie) process with `marker` among its arguments.
pub(crate) fn alive(pid: u32, marker: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let marker = marker.as_os_str().as_encoded_bytes();
    cmdline.split(|&b| b == 0).any(|arg| arg == marker) && !zombie(pid)
}

pub(crate) fn zombie(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the command name, which is in parentheses and may contain anything.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim().chars().next());
    matches!(state, Some('Z') | Some('X') | None)
}

/// One process to stop: its pid, its marker, and a name for messages.
pub(crate) struct Victim<'a> {
    pub what: String,
    pub pid: u32,
    pub marker: &'a Path,
}

/// Send `signal` to every victim that is still the lab's, then wait until all are gone.
/// Fails naming the first one still running after `deadline`.
pub(crate) fn stop(victims: &[Victim], signal: Signal, deadline: Duration) -> Result<(), LabError> {
    let mut signalled = Vec::new();
    for v in victims.iter().filter(|v| alive(v.pid, v.marker)) {
        signal_session(v.pid, signal);
        signalled.push(v.pid);
    }
    let end = Instant::now() + deadline;
    loop {
        let left = victims
            .iter()
            .find(|v| alive(v.pid, v.marker) || (signalled.contains(&v.pid) && !released(v.pid)));
        match left {
            None => return Ok(()),
            Some(v) if Instant::now() >= end => {
                return Err(LabError::Stop {
                    what: v.what.clone(),
                    pid: v.pid,
                    secs: deadline.as_secs(),
                    signal: signal.as_str(),
                    hint: if signal == Signal::SIGKILL {
                        ""
                    } else {
                        "; use --kill"
                    },
                })
            }
            Some(_) => std::thread::sleep(POLL),
        }
    }
}

/// Whether `pid` has let go of everything it held (sockets, ports): reaped, or a zombie whose
/// threads have all exited. An exiting process loses its command line (so `alive` says no)
/// before its files are closed, and a restart in that window finds its ports still bound.
fn released(pid: u32) -> bool {
    match fs::read_dir(format!("/proc/{pid}/task")) {
        Err(_) => true,
        Ok(tasks) => tasks.count() <= 1 && zombie(pid),
    }
}

/// Signal `pid` and, as it leads its own process group (launch made it a session leader),
/// whatever it started.
fn signal_session(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(pid as i32);
    if nix::unistd::getpgid(Some(pid)) == Ok(pid) {
        let _ = nix::sys::signal::killpg(pid, signal);
    } else {
        let _ = kill(pid, signal);
    }
}

/// SIGTERM, and SIGKILL for whatever outlives `deadline`.
pub(crate) fn terminate(victims: &[Victim], deadline: Duration) -> Result<(), LabError> {
    if stop(victims, Signal::SIGTERM, deadline).is_ok() {
        return Ok(());
    }
    stop(victims, Signal::SIGKILL, deadline)
}

/// The last `n` lines of the file at `path` (empty if unreadable).
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_only_with_its_own_marker() {
        let me = std::process::id();
        let exe = std::env::args().next().unwrap();
        assert!(alive(me, Path::new(&exe)));
        assert!(!alive(me, Path::new("/no/such/marker")));
        assert!(!alive(u32::MAX, Path::new(&exe)));
    }

    #[test]
    fn flags_name_the_variables_to_drop() {
        let args = [
            "--data-dir".to_string(),
            "/x".into(),
            "--name".into(),
            "n".into(),
        ];
        assert_eq!(
            flag_variables("ETCD_", &args),
            ["ETCD_DATA_DIR", "ETCD_NAME"]
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        fs::write(&p, "a\nb\nc\n").unwrap();
        assert_eq!(log_tail(&p, 2), "b\nc");
        assert_eq!(log_tail(&dir.path().join("none"), 2), "");
    }
}
