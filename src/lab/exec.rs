//! `rnet lab exec HOST -- CMD…`: run a command on a simulated host, like `nsenter --net`:
//! enter the host's network namespace (and no other) on the calling thread, then exec the
//! command in place, so its exit status is the command's own. The command sees
//! `RNET_SOCKET` pointing at the host's rnetd and finds rnet's binaries first on PATH.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::sched::{setns, CloneFlags};

use super::config::LabConfig;
use super::{exe_dir, LabError, LabPaths};
use crate::netns::NetNs;

/// Exit status when rnet fails before the command runs (as `docker run` and `rnet run` use).
pub const EXIT_LAB_FAILED: i32 = 125;
/// Exit status when the command exists but cannot be run.
pub const EXIT_CANNOT_RUN: i32 = 126;
/// Exit status when the command is not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Why `exec` returned (it only returns on failure), with the exit status to use.
#[derive(Debug)]
pub struct ExecFailure {
    pub error: LabError,
    pub code: i32,
}

/// Replace this process with `argv` running in host `host`'s network namespace.
/// Call it from the main thread before any runtime or other thread exists.
pub fn exec(paths: &LabPaths, host: &str, argv: &[String]) -> ExecFailure {
    let failed = |error| ExecFailure {
        error,
        code: EXIT_LAB_FAILED,
    };
    let Some((program, args)) = argv.split_first() else {
        return failed(LabError::Invalid("no command given".into()));
    };
    let prepared = prepare(paths, host);
    let (socket, path) = match prepared {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let err = Command::new(program)
        .args(args)
        .env("RNET_SOCKET", socket)
        .env("PATH", path)
        .exec();
    let code = match err.kind() {
        std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
        _ => EXIT_CANNOT_RUN,
    };
    ExecFailure {
        error: LabError::io("running", Path::new(program))(err),
        code,
    }
}

/// Look the host up, enter its namespace; returns its socket and the PATH to use.
fn prepare(paths: &LabPaths, host: &str) -> Result<(OsString, OsString), LabError> {
    let cfg = LabConfig::load(paths)?;
    let h = cfg.host(host)?;
    let path = path_with(&exe_dir()?, std::env::var_os("PATH"))?;
    let ns = NetNs::open(&h.netns)?;
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| LabError::Io {
        op: "entering network namespace",
        path: h.netns.clone(),
        source: e.into(),
    })?;
    Ok((h.socket.clone().into_os_string(), path))
}

/// `dir` first, then the current PATH (or a standard one when there is none).
fn path_with(dir: &Path, current: Option<OsString>) -> Result<OsString, LabError> {
    let current = current
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    let dirs = std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&current));
    std::env::join_paths(dirs)
        .map_err(|e| LabError::Invalid(format!("cannot put {} on PATH: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rnet_dir_comes_first_on_path() {
        let p = path_with(Path::new("/opt/rnet/bin"), Some("/usr/bin:/bin".into())).unwrap();
        assert_eq!(p, "/opt/rnet/bin:/usr/bin:/bin");
        let p = path_with(Path::new("/x"), None).unwrap();
        assert!(p.to_string_lossy().starts_with("/x:/usr/local/sbin"));
    }
}
