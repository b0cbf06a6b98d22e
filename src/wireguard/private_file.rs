//! Files only root may read or write (keys, pins): refused when others can read or write
//! them, and replaced atomically (temp file + rename) so a crash never leaves half a file.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The file's text, None if it does not exist; an error naming the file if others may
/// read or write it or it cannot be read.
pub fn read(path: &Path) -> Result<Option<String>, String> {
    let failed = |e: std::io::Error| format!("reading {}: {e}", path.display());
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    // The mode of the file that is read, not of whatever the path names a moment later.
    let mode = file.metadata().map_err(failed)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable by others (mode {:o}); it must be 0600",
            path.display(),
            mode & 0o777
        ));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(failed)?;
    Ok(Some(text))
}

/// Replace `path` with `text`, mode 0600, atomically.
pub fn write(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", tmp.display());
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| fail("creating", e))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| fail("writing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("replacing {}: {e}", path.display()))?;
    // The rename itself must reach the disk too, or a crash can bring back the old file.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("syncing {}: {e}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_are_0600_and_read_back_and_open_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        assert_eq!(read(&path).unwrap(), None);
        write(&path, "one").unwrap();
        write(&path, "two").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read(&path).unwrap().as_deref(), Some("two"));
        assert!(!path.with_extension("tmp").exists());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read(&path).unwrap_err().contains("readable by others"));
    }
}
