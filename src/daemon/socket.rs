//! Binding rnetd's unix sockets so that they never exist with looser permissions than meant.
//!
//! `bind(2)` creates the socket file with the process umask applied, and a chmod afterwards
//! leaves a window in which anyone the umask lets through can connect. So the socket is bound
//! inside a fresh private directory (mode 0700, next to the final path, same filesystem), given
//! its mode and group there, and only then renamed into place, which is atomic.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::net::UnixListener;

use super::access::Access;
use crate::error::{Error, Result};

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Internal(format!("{what} {}: {e}", path.display()))
}

/// Bind the socket at `path` with `access`'s mode and group, replacing a stale socket but
/// never a live daemon's.
pub async fn bind(path: &Path, access: &Access) -> Result<UnixListener> {
    if path.exists() && tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(Error::Conflict(format!(
            "another rnetd is already serving {}",
            path.display()
        )));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| io_err("creating socket dir", dir, e))?;
    // Mode 0700 (tempfile's default): nobody but us can reach what is inside.
    let staging = tempfile::Builder::new()
        .prefix(".rnetd-bind-")
        .tempdir_in(dir)
        .map_err(|e| io_err("creating a private directory in", dir, e))?;
    let staged = staging.path().join("s");
    let listener = std::os::unix::net::UnixListener::bind(&staged)
        .map_err(|e| io_err("binding", &staged, e))?;
    std::fs::set_permissions(
        &staged,
        std::fs::Permissions::from_mode(access.socket_mode()),
    )
    .map_err(|e| io_err("setting mode of", &staged, e))?;
    if let Some(gid) = access.socket_gid() {
        std::os::unix::fs::chown(&staged, Some(0), Some(gid))
            .map_err(|e| io_err("giving the API group", &staged, e))?;
    }
    // Replaces a stale socket atomically; the staging directory is removed when it drops.
    std::fs::rename(&staged, path).map_err(|e| io_err("moving the socket to", path, e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| io_err("configuring", path, e))?;
    UnixListener::from_std(listener).map_err(|e| io_err("listening on", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn socket_appears_with_its_final_mode_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        // A stale socket nobody serves.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let old_umask = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let listener = bind(&path, &Access::root_only()).await;
        nix::sys::stat::umask(old_umask);
        let _listener = listener.unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        // Only the socket is left: the staging directory is gone.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("api.sock")]);
        tokio::net::UnixStream::connect(&path).await.unwrap();
        // A live daemon's socket is never taken over.
        let err = bind(&path, &Access::root_only()).await.unwrap_err();
        assert!(err.to_string().contains("already serving"), "{err}");
    }
}
