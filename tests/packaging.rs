//! What a packager and an operator use: `make install-files` into a DESTDIR, the systemd
//! unit, shell completions and man pages, through the real tools (make, systemd-analyze,
//! bash, groff). No root needed: nothing outside the temporary directory is touched.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin(name: &str) -> PathBuf {
    let path = match name {
        "rnet" => env!("CARGO_BIN_EXE_rnet"),
        "rnetd" => env!("CARGO_BIN_EXE_rnetd"),
        _ => unreachable!(),
    };
    PathBuf::from(path)
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Man pages are roff that groff reads without a warning.
fn assert_roff(page: &Path) {
    let text = std::fs::read_to_string(page).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with(".TH ")),
        "{} has no .TH",
        page.display()
    );
    assert!(text.contains(".SH NAME"), "{} has no NAME", page.display());
    let out = run(Command::new("groff")
        .args(["-k", "-man", "-ww", "-z"])
        .arg(page));
    assert!(
        out.stderr.is_empty(),
        "groff warns about {}: {}",
        page.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn completions_cover_the_subcommands_and_bash_parses_them() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(Command::new(bin("rnet")).args(["completions", shell]));
        let text = String::from_utf8(out.stdout).unwrap();
        for sub in [
            "attach",
            "detach",
            "create",
            "peers",
            "doctor",
            "completions",
        ] {
            assert!(text.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let out = run(Command::new(bin("rnet")).args(["completions", "bash"]));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("rnet.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    run(Command::new("bash").arg("-n").arg(&script));
    // An unknown shell is refused, naming the choices.
    let out = Command::new(bin("rnet"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid value 'tcsh'") && err.contains("bash"),
        "{err}"
    );
}

#[test]
fn man_pages_of_rnet_and_rnetd_are_valid_roff() {
    let dir = tempfile::tempdir().unwrap();
    run(Command::new(bin("rnet")).arg("man").arg(dir.path()));
    run(Command::new(bin("rnetd")).arg("--man").arg(dir.path()));
    for page in [
        "rnet.1",
        "rnet-attach.1",
        "rnet-network-create.1",
        "rnetd.1",
    ] {
        assert_roff(&dir.path().join(page));
    }
    let rnetd = std::fs::read_to_string(dir.path().join("rnetd.1")).unwrap();
    assert!(
        rnetd.contains("metrics\\-addr"),
        "rnetd.1 lacks --metrics-addr"
    );
    assert!(
        !rnetd.contains("\\-\\-man"),
        "the hidden --man flag is documented"
    );
    // A directory that cannot be made is an error naming it.
    let file = dir.path().join("rnet.1");
    let out = Command::new(bin("rnet"))
        .arg("man")
        .arg(file.join("sub"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&file.display().to_string()), "{err}");
}

#[test]
fn make_install_files_stages_everything_under_destdir() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = bin("rnet").parent().unwrap().to_path_buf();
    let dest = tempfile::tempdir().unwrap();
    let destdir = format!("DESTDIR={}", dest.path().display());
    run(Command::new("make")
        .current_dir(root)
        .args(["-s", "install-files", "PREFIX=/usr", &destdir])
        .arg(format!("BUILT={}", built.display())));
    let d = dest.path();
    for (path, mode) in [
        ("usr/bin/rnetd", 0o755),
        ("usr/bin/rnet", 0o755),
        ("usr/bin/rnet-cni", 0o755),
        ("opt/cni/bin/rnet-cni", 0o755),
        ("usr/lib/systemd/system/rnetd.service", 0o644),
        ("usr/share/bash-completion/completions/rnet", 0o644),
        ("usr/share/zsh/site-functions/_rnet", 0o644),
        ("usr/share/fish/vendor_completions.d/rnet.fish", 0o644),
        ("usr/share/man/man1/rnet.1", 0o644),
        ("usr/share/man/man1/rnetd.1", 0o644),
    ] {
        let meta = std::fs::metadata(d.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(meta.len() > 0, "{path} is empty");
        if mode == 0o755 {
            assert_eq!(meta.permissions().mode() & 0o777, 0o755, "{path}");
        }
    }
    // Nothing lands outside DESTDIR's tree but these two roots.
    let mut tops: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    tops.sort();
    assert_eq!(tops, ["opt", "usr"]);
    let unit = std::fs::read_to_string(d.join("usr/lib/systemd/system/rnetd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/rnetd "), "{unit}");
    assert!(unit.contains("Type=notify"));
    // systemd accepts the unit as installed (pointed at the staged binary and man pages).
    {
        let staged = unit.replace(
            "ExecStart=/usr/bin/rnetd",
            &format!("ExecStart={}/usr/bin/rnetd", d.display()),
        );
        let check = d.join("check");
        std::fs::create_dir(&check).unwrap();
        std::fs::write(check.join("rnetd.service"), staged).unwrap();
        let out = run(Command::new("systemd-analyze")
            .env("MANPATH", d.join("usr/share/man"))
            .arg("verify")
            .arg(check.join("rnetd.service")));
        assert!(
            out.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Missing binaries stop the install before anything is written.
    let empty = tempfile::tempdir().unwrap();
    let dest2 = tempfile::tempdir().unwrap();
    let out = Command::new("make")
        .current_dir(root)
        .args(["-s", "install-files"])
        .arg(format!("DESTDIR={}", dest2.path().display()))
        .arg(format!("BUILT={}", empty.path().display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is missing: run 'make build' first"));
    assert_eq!(std::fs::read_dir(dest2.path()).unwrap().count(), 0);
}
