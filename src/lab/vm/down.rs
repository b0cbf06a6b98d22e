//! The VM part of `rnet lab down`: stop every guest's QEMU, found by the pid files under the lab
//! directory (no configuration needed, so it works after a crash). A QEMU counts as the lab's
//! only while its command line carries its own pid file path. The generic `down` then drops
//! the lab namespace, which takes the bridge and any tap with it, and removes the directory
//! (overlays included).

use super::pid_files;
use crate::lab::process::{self, Victim};
use crate::lab::{down::DownReport, LabError, LabPaths, STOP_DEADLINE};

/// Stop the lab's QEMUs (SIGTERM, then SIGKILL after the deadline).
pub fn stop_guests(
    paths: &LabPaths,
    report: &mut DownReport,
    progress: &mut dyn FnMut(&str),
) -> Result<(), LabError> {
    let files = pid_files(paths.dir());
    let victims: Vec<Victim> = files
        .iter()
        .filter_map(|(host, pid_file)| {
            let pid = process::running(pid_file, pid_file)?;
            Some(Victim {
                what: format!("QEMU of guest {host}"),
                pid,
                marker: pid_file,
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
