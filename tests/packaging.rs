//! What a packager and an operator use: `make install-files` into a DESTDIR, the systemd
//! unit, shell completions and man pages, through the real tools (make, systemd-analyze,
//! bash, groff). No root needed: nothing outside the temporary directory is touched, but for
//! `make cni-static`'s build in `target/static/`.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

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

/// Hard links to the binaries this test run built, as the `release/` of a scratch cargo
/// target directory: the package test reuses them instead of a release build of its own.
fn scratch_target_dir() -> tempfile::TempDir {
    // Beside the binaries (target/tmp), so the links are on the same filesystem.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let release = dir.path().join("release");
    std::fs::create_dir(&release).unwrap();
    for (name, path) in [
        ("rnetd", env!("CARGO_BIN_EXE_rnetd")),
        ("rnet", env!("CARGO_BIN_EXE_rnet")),
        ("rnet-cni", env!("CARGO_BIN_EXE_rnet-cni")),
    ] {
        std::fs::hard_link(path, release.join(name)).unwrap();
    }
    dir
}

/// `make deb-files` (cargo-deb, installed by make when missing) packages everything; the
/// package's contents, modes, control fields and maintainer scripts are what dpkg reports, and
/// the binaries extracted into a scratch root run. The machine's dpkg database is not touched.
#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "make test runs it: cargo-deb is installed on demand"
)]
fn make_deb_packages_binaries_unit_completions_and_man_pages() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = scratch_target_dir();
    let t0 = std::time::Instant::now();
    // --fast: these are debug binaries, and compression ratio is not under test.
    run(Command::new("make")
        .current_dir(root)
        .args(["-s", "deb-files", "DEB_FLAGS=--fast"])
        .arg(format!("DEB_TARGET_DIR={}", target.path().display())));
    eprintln!("make deb-files took {:.1} s", t0.elapsed().as_secs_f64());
    let debs: Vec<PathBuf> = std::fs::read_dir(target.path().join("debian"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    let deb = &debs[0];
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        deb.file_name().unwrap().to_str().unwrap() == format!("rnet_{version}-1_amd64.deb")
            || !cfg!(target_arch = "x86_64"),
        "{}",
        deb.display()
    );

    // Control fields.
    let field = |name: &str| {
        let out = run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(field("Package"), "rnet");
    assert_eq!(field("Version"), format!("{version}-1"));
    assert_eq!(field("Section"), "net");
    let depends = field("Depends");
    assert!(depends.starts_with("libc6"), "Depends: {depends}");
    // rnetd programs the kernel through netlink itself: no ip, iptables or nft needed.
    for tool in ["iproute2", "iptables", "nftables"] {
        assert!(!depends.contains(tool), "Depends: {depends}");
    }
    let info = String::from_utf8(run(Command::new("dpkg-deb").arg("-I").arg(deb)).stdout).unwrap();
    for script in ["postinst", "prerm", "postrm"] {
        assert!(info.contains(script), "no {script} in:\n{info}");
    }

    // Every file, with its mode, owned by root.
    let listing =
        String::from_utf8(run(Command::new("dpkg-deb").arg("-c").arg(deb)).stdout).unwrap();
    let files: std::collections::BTreeMap<String, (String, String)> = listing
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f[5].trim_start_matches('.').to_string();
            (path, (f[0].to_string(), f[1].to_string()))
        })
        .collect();
    let exe = "-rwxr-xr-x";
    let data = "-rw-r--r--";
    for (path, mode) in [
        ("/usr/bin/rnetd", exe),
        ("/usr/bin/rnet", exe),
        ("/usr/bin/rnet-cni", exe),
        ("/usr/lib/cni/rnet-cni", exe),
        ("/opt/cni/bin/rnet-cni", exe),
        ("/usr/lib/systemd/system/rnetd.service", data),
        ("/usr/share/bash-completion/completions/rnet", data),
        ("/usr/share/zsh/vendor-completions/_rnet", data),
        ("/usr/share/fish/vendor_completions.d/rnet.fish", data),
        ("/usr/share/man/man1/rnet.1.gz", data),
        ("/usr/share/man/man1/rnet-attach.1.gz", data),
        ("/usr/share/man/man1/rnetd.1.gz", data),
        ("/usr/share/doc/rnet/copyright", data),
        ("/usr/share/doc/rnet/README.md", data),
        ("/usr/share/doc/rnet/docs/operations.md", data),
        ("/usr/share/doc/rnet/changelog.Debian.gz", data),
        ("/usr/share/lintian/overrides/rnet", data),
    ] {
        let (m, owner) = files
            .get(path)
            .unwrap_or_else(|| panic!("{path} not in the package:\n{listing}"));
        assert_eq!(m, mode, "{path}");
        assert_eq!(owner, "0/0", "{path}");
    }
    // Nothing outside /usr and /opt (no /etc, no /run, no home directory).
    for path in files.keys() {
        assert!(
            path.starts_with("/usr/") || path.starts_with("/opt/"),
            "{path} in the package"
        );
    }

    // Maintainer scripts: valid sh; reload systemd only when it runs; never start rnetd.
    let control = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(deb)
        .arg(control.path()));
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.path().join(script);
        run(Command::new("sh").arg("-n").arg(&path));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("[ -d /run/systemd/system ]"), "{script}");
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect();
        for verb in ["enable", "start", "restart"] {
            assert!(
                !code.contains(&format!(" {verb} ")),
                "{script} runs systemctl {verb}"
            );
        }
    }

    // Installed into a scratch root: the binaries run, the unit points at /usr/bin.
    let inst = tempfile::tempdir().unwrap();
    run(Command::new("dpkg").arg("-x").arg(deb).arg(inst.path()));
    let r = inst.path();
    let out = run(Command::new(r.join("usr/bin/rnet")).arg("--version"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("rnet {version}")
    );
    let out = run(Command::new(r.join("usr/bin/rnetd")).arg("--help"));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--store") && help.contains("--metrics-addr"),
        "{help}"
    );
    for cni in ["usr/lib/cni/rnet-cni", "opt/cni/bin/rnet-cni"] {
        let out = run(Command::new(r.join(cni)).env("CNI_COMMAND", "VERSION"));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["supportedVersions"].is_array(), "{cni}: {v}");
    }
    let unit = std::fs::read_to_string(r.join("usr/lib/systemd/system/rnetd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/rnetd "), "{unit}");
    let man = run(Command::new("zcat").arg(r.join("usr/share/man/man1/rnetd.1.gz")));
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH rnetd"));

    // lintian (scripts/deps.sh installs it): no errors. Warnings and pedantic tags are
    // reported by `make deb` users' own lintian runs, not failures here.
    {
        let out = Command::new("lintian")
            .args(["--tag-display-limit", "0", "--fail-on", "error"])
            .arg(deb)
            .output()
            .expect("lintian (scripts/deps.sh installs it)");
        assert!(
            out.status.success(),
            "lintian errors:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "make test runs it: cargo-deb is installed on demand"
)]
fn make_deb_files_refuses_missing_binaries_before_packaging() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = tempfile::tempdir().unwrap();
    let out = Command::new("make")
        .current_dir(root)
        .args(["-s", "deb-files"])
        .arg(format!("DEB_TARGET_DIR={}", target.path().display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("release/rnetd is missing: run 'make build' first"),
        "{err}"
    );
    assert!(!target.path().join("debian").exists(), "a package was made");
}

/// `make cni-static` (what `make install`, `make deb` and `make bench` take rnet-cni from)
/// builds a plugin with no dynamic loader that answers a runtime.
#[test]
fn make_cni_static_builds_a_statically_linked_plugin() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut make = Command::new("make");
    make.current_dir(root)
        .args(["-s", "--no-print-directory", "cni-static", "-p"]);
    // Without the CARGO_* variables cargo gives a test (CARGO_MANIFEST_DIR, CARGO_PKG_*):
    // they change cargo's fingerprints, and the crate would be rebuilt here and again by the
    // next `make cni-static` from a shell.
    for (key, _) in std::env::vars_os() {
        if key
            .to_str()
            .is_some_and(|k| k.starts_with("CARGO_") && k != "CARGO_HOME")
        {
            make.env_remove(key);
        }
    }
    let out = run(&mut make);
    let db = String::from_utf8_lossy(&out.stdout);
    let plugin = db
        .lines()
        .find_map(|l| l.strip_prefix("CNI_STATIC := "))
        .expect("make's database names CNI_STATIC");
    let plugin = root.join(plugin);
    assert!(
        common::cni::is_static(&plugin),
        "{} is linked dynamically",
        plugin.display()
    );
    assert!(!common::cni::is_static(&common::cni::rnet_cni()));
    let out = run(Command::new(&plugin)
        .env_clear()
        .env("CNI_COMMAND", "VERSION"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["supportedVersions"].is_array(), "{v}");
}
