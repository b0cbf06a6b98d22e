//! `rnet lab down`: remove everything a lab made, in an order that works on a half-built lab.
//!
//! It needs nothing but the lab directory (not even `lab.json`): the pid files under it name
//! the processes, `/proc/self/mountinfo` names the mounts. Steps: stop a VM lab's QEMUs
//! (`vm::down`), every rnetd, then etcd
//! (SIGTERM, wait with a deadline, then SIGKILL); unmount every mount point under the directory,
//! deepest first (the lab's namespaces and the sandbox namespaces each rnetd made under its run
//! dir), which lets the kernel destroy the namespaces and every link in them; remove the
//! directory. Each step runs even if an earlier one failed; the first failure is returned.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};

use super::process::{self, Victim};
use super::{LabError, LabPaths, STOP_DEADLINE};

/// Unmount passes before giving up (mounts may be stacked on one another).
const UNMOUNT_PASSES: usize = 8;

/// What `down` found and removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DownReport {
    /// False when there was no lab directory at all.
    pub existed: bool,
    /// The processes that were running and were stopped.
    pub stopped: Vec<String>,
    /// How many mount points were unmounted.
    pub unmounted: usize,
}

/// Tear the lab at `paths` down. Idempotent: a missing lab is `existed: false`, not an error.
pub fn down(paths: &LabPaths, progress: &mut dyn FnMut(&str)) -> Result<DownReport, LabError> {
    let dir = paths.dir();
    if !dir.exists() {
        return Ok(DownReport::default());
    }
    let mut report = DownReport {
        existed: true,
        ..Default::default()
    };
    let guests = super::vm::down::stop_guests(paths, &mut report, progress);
    let stopped = stop_stragglers(paths, &mut report, progress).and(stop_processes(
        paths,
        &mut report,
        progress,
    ));
    let unmounted = unmount_under(dir).map(|n| report.unmounted = n);
    progress(&format!("unmounted {} mount point(s)", report.unmounted));
    let removed = fs::remove_dir_all(dir).map_err(LabError::io("removing lab directory", dir));
    guests.and(stopped).and(unmounted).and(removed)?;
    progress(&format!("removed {}", dir.display()));
    Ok(report)
}

/// Stop whatever else runs in the lab's namespaces (workloads started with `rnet lab exec`,
/// `rnet run` supervisors), while the daemons still answer their detaches: SIGTERM, then
/// SIGKILL after the deadline.
fn stop_stragglers(
    paths: &LabPaths,
    report: &mut DownReport,
    progress: &mut dyn FnMut(&str),
) -> Result<(), LabError> {
    let namespaces: std::collections::HashSet<u64> = fs::read_dir(paths.netns_dir())
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| fs::metadata(e.path()).ok())
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .collect()
        })
        .unwrap_or_default();
    let mut keep: Vec<u32> = daemon_pid_files(paths.dir())
        .iter()
        .map(|(_, pid_file, _)| pid_file.clone())
        .chain([paths.dir().join("etcd.pid")])
        .filter_map(|f| fs::read_to_string(f).ok()?.trim().parse().ok())
        .collect();
    keep.push(std::process::id());
    let stragglers = processes_in(&namespaces, &keep);
    if stragglers.is_empty() {
        return Ok(());
    }
    for signal in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGKILL,
    ] {
        for &pid in &stragglers {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
        let end = std::time::Instant::now() + STOP_DEADLINE;
        while std::time::Instant::now() < end && stragglers.iter().any(|&p| !process::zombie(p)) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if stragglers.iter().all(|&p| process::zombie(p)) {
            break;
        }
    }
    let what = format!(
        "{} other process(es) in the lab's namespaces",
        stragglers.len()
    );
    progress(&format!("stopped {what}"));
    report.stopped.push(what);
    match stragglers.iter().find(|&&p| !process::zombie(p)) {
        None => Ok(()),
        Some(&pid) => Err(LabError::Invalid(format!(
            "process {pid} in a lab namespace survived SIGKILL"
        ))),
    }
}

/// Pids (not in `keep`) whose network namespace is one of `namespaces` (by inode).
fn processes_in(namespaces: &std::collections::HashSet<u64>, keep: &[u32]) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !keep.contains(pid) && !process::zombie(*pid))
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| namespaces.contains(&std::os::unix::fs::MetadataExt::ino(&m)))
        })
        .collect()
}

/// Stop the hosts' daemons first (they may talk to etcd while shutting down), then etcd.
fn stop_processes(
    paths: &LabPaths,
    report: &mut DownReport,
    progress: &mut dyn FnMut(&str),
) -> Result<(), LabError> {
    let daemons = daemon_pid_files(paths.dir());
    let etcd = vec![(
        "the lab's etcd".to_string(),
        paths.dir().join("etcd.pid"),
        paths.etcd_data(),
    )];
    let first = stop_group(&daemons, report, progress);
    let second = stop_group(&etcd, report, progress);
    first.and(second)
}

/// `(name, pid file, marker)` of every host daemon: `<dir>/<host>/rnetd.pid`.
fn daemon_pid_files(dir: &Path) -> Vec<(String, PathBuf, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("rnetd.pid").is_file())
        .map(|p| {
            let host = p.file_name().unwrap_or_default().to_string_lossy();
            (
                format!("rnetd of host {host}"),
                p.join("rnetd.pid"),
                p.join("rnetd.sock"),
            )
        })
        .collect();
    out.sort();
    out
}

fn stop_group(
    group: &[(String, PathBuf, PathBuf)],
    report: &mut DownReport,
    progress: &mut dyn FnMut(&str),
) -> Result<(), LabError> {
    let victims: Vec<Victim> = group
        .iter()
        .filter_map(|(what, pid_file, marker)| {
            let pid = process::running(pid_file, marker)?;
            Some(Victim {
                what: what.clone(),
                pid,
                marker,
            })
        })
        .collect();
    if victims.is_empty() {
        return Ok(());
    }
    let result = process::terminate(&victims, STOP_DEADLINE);
    for v in &victims {
        progress(&format!("stopped {} (pid {})", v.what, v.pid));
        report.stopped.push(v.what.clone());
    }
    result
}

/// Unmount (lazily) every mount point at or below `dir`, deepest first, until none is left.
/// Returns how many unmounts succeeded.
pub fn unmount_under(dir: &Path) -> Result<usize, LabError> {
    let mut count = 0;
    for _ in 0..UNMOUNT_PASSES {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return Ok(count);
        }
        for m in deepest_first(mounts) {
            match umount2(&m, MntFlags::MNT_DETACH) {
                Ok(()) => count += 1,
                Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                Err(e) => {
                    return Err(LabError::Io {
                        op: "unmounting",
                        path: m,
                        source: e.into(),
                    })
                }
            }
        }
    }
    match mounts_under(dir).into_iter().next() {
        None => Ok(count),
        Some(m) => Err(LabError::Invalid(format!(
            "{} is still mounted after {UNMOUNT_PASSES} passes",
            m.display()
        ))),
    }
}

/// Mount points at or below `dir` (canonicalised, as the kernel reports), in mount order.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mountinfo(&info)
        .into_iter()
        .filter(|p| p.starts_with(&dir))
        .collect()
}

/// The mount points (field 5) of mountinfo text.
fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect()
}

/// Children before parents; of mounts on one path, the latest first.
fn deepest_first(mut mounts: Vec<PathBuf>) -> Vec<PathBuf> {
    mounts.reverse();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_points_are_unescaped() {
        let text = "36 35 0:4 net:[1] /run/rnet/lab/a\\040b/netns/h1 rw shared:1 - nsfs nsfs rw\n";
        assert_eq!(
            parse_mountinfo(text),
            [PathBuf::from("/run/rnet/lab/a b/netns/h1")]
        );
    }

    #[test]
    fn children_come_before_parents() {
        let order = deepest_first(vec![
            "/l/netns/h1".into(),
            "/l/h1/run/netns/n1".into(),
            "/l".into(),
        ]);
        assert_eq!(order[0], PathBuf::from("/l/h1/run/netns/n1"));
        assert_eq!(order[2], PathBuf::from("/l"));
    }

    #[test]
    fn a_missing_lab_is_nothing_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = LabPaths::new("gone", Some(&tmp.path().join("gone"))).unwrap();
        let r = down(&paths, &mut |_| {}).unwrap();
        assert!(!r.existed);
    }
}
