//! The guest image, built once and cached under `/var/lib/rnet/lab/vm/<hash>/`, where the hash
//! covers the recipe (`image.sh`, embedded in rnet): editing the recipe builds a new image, and
//! an unchanged one is reused by every lab. Concurrent builders serialise on a lock file, and a
//! build goes to a temporary directory renamed into place, so a half-built image is never used.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use super::ImageFiles;
use crate::lab::{process, LabError};

/// The recipe: a shell script run with OUT_DIR and MIRROR.
pub const RECIPE: &str = include_str!("image.sh");
/// Where images are cached unless `--image-dir` says otherwise.
pub const CACHE_ROOT: &str = "/var/lib/rnet/lab/vm";
/// The Debian archive the image is built from (override: RNET_LAB_MIRROR).
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// The tools the recipe runs, with the Debian package that has each.
const TOOLS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("mke2fs", "e2fsprogs"),
    ("qemu-img", "qemu-utils"),
];

/// The cache key of the recipe: the first 16 hex digits of its SHA-256.
pub fn recipe_hash() -> String {
    let digest = Sha256::digest(RECIPE.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The files of the image in `dir`.
pub fn files_in(dir: &Path) -> ImageFiles {
    ImageFiles {
        base: dir.join("base.qcow2"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
    }
}

fn complete(f: &ImageFiles) -> bool {
    [&f.base, &f.kernel, &f.initrd].iter().all(|p| p.is_file())
}

/// The cached image under `root`, built first if missing.
pub fn ensure(root: &Path, progress: &mut dyn FnMut(&str)) -> Result<ImageFiles, LabError> {
    let hash = recipe_hash();
    let dir = root.join(&hash);
    let files = files_in(&dir);
    if complete(&files) {
        return Ok(files);
    }
    fs::create_dir_all(root).map_err(LabError::io("creating", root))?;
    let lock_path = root.join(format!("{hash}.lock"));
    let lock = File::create(&lock_path).map_err(LabError::io("creating", &lock_path))?;
    progress(&format!(
        "image: waiting for the build lock {}",
        lock_path.display()
    ));
    let _lock = Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| LabError::Io {
        op: "locking",
        path: lock_path.clone(),
        source: e.into(),
    })?;
    if complete(&files) {
        return Ok(files);
    }
    build(root, &dir, progress)?;
    Ok(files)
}

fn build(root: &Path, dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), LabError> {
    check_tools()?;
    let tmp = root.join(format!("{}.tmp", recipe_hash()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(LabError::io("removing", &tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(LabError::io("creating", &tmp))?;
    let script = tmp.join("image.sh");
    fs::write(&script, RECIPE).map_err(LabError::io("writing", &script))?;
    let log = root.join(format!("{}.build.log", recipe_hash()));
    let mirror = std::env::var("RNET_LAB_MIRROR").unwrap_or_else(|_| DEFAULT_MIRROR.into());
    progress(&format!(
        "image: building Debian 12 from {mirror} into {} (log: {})",
        dir.display(),
        log.display()
    ));
    let started = std::time::Instant::now();
    let out = File::create(&log).map_err(LabError::io("creating", &log))?;
    let err = out.try_clone().map_err(LabError::io("duplicating", &log))?;
    let status = Command::new("bash")
        .arg(&script)
        .arg(&tmp)
        .arg(&mirror)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(LabError::io("running", &script))?;
    if !status.success() {
        return Err(LabError::Start {
            what: "the guest image build".into(),
            reason: format!("failed ({status})"),
            tail: process::log_tail(&log, 20),
            log,
        });
    }
    fs::remove_file(&script).map_err(LabError::io("removing", &script))?;
    fs::rename(&tmp, dir).map_err(LabError::io("renaming into place", dir))?;
    progress(&format!(
        "image: built in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Fail naming the package of the first missing tool.
fn check_tools() -> Result<(), LabError> {
    for (tool, package) in TOOLS {
        if which(tool).is_none() {
            return Err(LabError::Invalid(format!(
                "{tool} is needed to build the VM lab's image; install Debian's {package} (scripts/deps.sh)"
            )));
        }
    }
    Ok(())
}

/// `tool` on PATH or in the sbin directories a non-login PATH may lack.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_the_recipe() {
        let h = recipe_hash();
        assert_eq!(h.len(), 16);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(
            Sha256::digest(b"other recipe")[..8],
            Sha256::digest(RECIPE)[..8]
        );
    }

    #[test]
    fn the_recipe_installs_what_the_lab_needs() {
        for pkg in [
            "linux-image-amd64",
            "etcd-server",
            "iperf3",
            "tcpdump",
            "tini",
            "kmod",
        ] {
            assert!(RECIPE.contains(pkg), "{pkg} missing from the recipe");
        }
        assert!(RECIPE.contains("rnet lab agent"));
    }

    #[test]
    fn an_incomplete_image_is_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let f = files_in(tmp.path());
        fs::write(&f.base, b"x").unwrap();
        fs::write(&f.kernel, b"x").unwrap();
        assert!(!complete(&f));
        fs::write(&f.initrd, b"x").unwrap();
        assert!(complete(&f));
    }
}
