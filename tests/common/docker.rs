//! A real Docker engine owned by a test: `dockerd` (Debian's docker.io) started inside a test
//! network namespace with `nsenter --net=…` (never `ip netns exec`, whose private mount
//! namespace would hide rnet's namespace bind mounts), with its own data root, exec root,
//! pid file and API socket in a temp dir, `--iptables=false` (iptables on sets the FORWARD
//! policy to DROP) and `--bridge=none`. Drop removes every container, stops dockerd and its
//! containerd, kills what is left of them, unmounts what they mounted and removes the dir,
//! also when the test panics.
//!
//! No registry is reachable, so [`Dockerd::busybox`] builds the image locally with
//! `docker import` from a tarball of busybox-static's `/bin/busybox` and applet symlinks.
//!
//! [`DockerPlugin`] gives rnetd a plugin name unique to the test and cleans up after it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{mounts_under, output_with_timeout, require_root, tail, unmount_all_under, POLL};

/// Where dockerd looks for plugin sockets (and where rnetd puts its socket by default).
pub const PLUGIN_DIR: &str = "/run/docker/plugins";
/// Where dockerd looks for plugin discovery files.
pub const SPEC_DIR: &str = "/etc/docker/plugins";
/// The image every test container runs.
pub const IMAGE: &str = "rnet-busybox:test";
/// How long dockerd may take to answer after starting.
const START: Duration = Duration::from_secs(60);
/// How long dockerd may take to stop after SIGTERM.
const STOP: Duration = Duration::from_secs(30);
/// Upper bound for one docker CLI call.
const CALL: Duration = Duration::from_secs(120);
/// Applets linked into the image.
const APPLETS: &[&str] = &[
    "sh", "ash", "ping", "ip", "sleep", "true", "false", "cat", "echo", "ls", "ifconfig", "route",
    "hostname", "wget", "nc", "seq", "test", "grep", "nslookup",
];

static NAMES: AtomicU32 = AtomicU32::new(0);

/// The docker CLI matching Debian's engine (a newer client may sit earlier on PATH).
fn docker_cli() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

/// Panics with the reason unless Docker and busybox-static are installed.
pub fn require_docker() {
    require_root();
    let missing: Vec<&str> = [
        ("/usr/sbin/dockerd", "docker.io"),
        ("/bin/busybox", "busybox-static"),
    ]
    .iter()
    .filter(|(p, _)| !Path::new(p).exists())
    .map(|(_, pkg)| *pkg)
    .collect();
    assert!(
        missing.is_empty(),
        "these tests need {} (run scripts/deps.sh as root)",
        missing.join(" and ")
    );
}

/// The Docker plugin of one rnetd under a name unique to this test, so tests running side by
/// side never see each other's driver. Either rnetd's socket sits in dockerd's socket dir
/// ([`DockerPlugin::socket_dir`]), or it sits elsewhere and a discovery file in
/// `/etc/docker/plugins`, made from one of `plugin-spec/docker/`'s examples, points at it
/// ([`DockerPlugin::spec_file`]). Drop removes the socket and the discovery file.
pub struct DockerPlugin {
    name: String,
    socket: PathBuf,
    spec: Option<PathBuf>,
}

/// Where the examples in plugin-spec/docker/ put rnetd's socket.
const EXAMPLE_SOCKET: &str = "/run/rnet/docker/rnet.sock";

fn unique_name() -> String {
    format!(
        "rnt{}n{}",
        std::process::id(),
        NAMES.fetch_add(1, Ordering::Relaxed)
    )
}

impl DockerPlugin {
    /// rnetd's socket in `/run/docker/plugins`, found by dockerd on its own.
    pub fn socket_dir() -> DockerPlugin {
        let name = unique_name();
        DockerPlugin {
            socket: Path::new(PLUGIN_DIR).join(format!("{name}.sock")),
            name,
            spec: None,
        }
    }

    /// rnetd's socket at `dir/rnet.sock`, and `/etc/docker/plugins/<unique>.<ext>` made from
    /// the example `plugin-spec/docker/<example>` (`rnet.spec` or `rnet.json`) with the
    /// example's socket path replaced.
    pub fn spec_file(example: &str, dir: &Path) -> DockerPlugin {
        let name = unique_name();
        let socket = dir.join("rnet.sock");
        let text = fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("plugin-spec/docker")
                .join(example),
        )
        .expect("read the discovery file example");
        assert!(text.contains(EXAMPLE_SOCKET), "{example}: {text}");
        let text = text
            .replace(EXAMPLE_SOCKET, socket.to_str().expect("utf-8 path"))
            .replace("\"Name\": \"rnet\"", &format!("\"Name\": \"{name}\""));
        let ext = Path::new(example)
            .extension()
            .and_then(|e| e.to_str())
            .expect("example has an extension");
        fs::create_dir_all(SPEC_DIR).expect("create /etc/docker/plugins");
        let spec = Path::new(SPEC_DIR).join(format!("{name}.{ext}"));
        fs::write(&spec, text).expect("write discovery file");
        DockerPlugin {
            name,
            socket,
            spec: Some(spec),
        }
    }

    /// Docker's driver name (`-d NAME --ipam-driver NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// rnetd's plugin socket.
    pub fn path(&self) -> &Path {
        &self.socket
    }

    /// rnetd's flags for serving this plugin.
    pub fn rnetd_args(&self) -> Vec<String> {
        let dir = self.socket.parent().expect("socket dir");
        let stem = self.socket.file_stem().expect("socket name");
        vec![
            "--docker-plugin-dir".into(),
            dir.display().to_string(),
            "--docker-plugin-name".into(),
            stem.to_string_lossy().into_owned(),
        ]
    }
}

impl Drop for DockerPlugin {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.socket);
        if let Some(spec) = &self.spec {
            let _ = fs::remove_file(spec);
        }
    }
}

/// A dockerd of this test.
pub struct Dockerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Dockerd {
    /// Start dockerd in the network namespace at `netns`; returns once it answers.
    pub fn start(netns: &Path) -> Dockerd {
        require_docker();
        let dir = tempfile::Builder::new()
            .prefix("rnt-docker-")
            .tempdir()
            .expect("docker temp dir");
        let mut d = Dockerd { dir, child: None };
        let log = fs::File::create(d.log_path()).expect("dockerd log");
        let p = |sub: &str| d.dir.path().join(sub).display().to_string();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg("--")
            .arg("/usr/sbin/dockerd")
            .args(["--data-root", &p("data")])
            .args(["--exec-root", &p("exec")])
            .args(["--pidfile", &p("docker.pid")])
            .args(["-H", &format!("unix://{}", p("docker.sock"))])
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
            .args(["--userland-proxy=false", "--log-level=warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn nsenter dockerd");
        // nsenter execs dockerd in place, so this pid is dockerd's.
        d.child = Some(child);
        let end = Instant::now() + START;
        loop {
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                d.child = None;
                panic!("dockerd exited during startup ({status}):\n{}", d.log());
            }
            if d.socket().exists() && d.docker(&["version"]).status.success() {
                return d;
            }
            if Instant::now() >= end {
                panic!(
                    "dockerd did not answer within {START:?}:\n{}",
                    tail(&d.log(), 40)
                );
            }
            thread::sleep(POLL);
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir().join("docker.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir().join("dockerd.log")
    }

    /// What dockerd logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `docker -H unix://… ARGS` with a timeout.
    pub fn docker(&self, args: &[&str]) -> Output {
        output_with_timeout(&mut self.command(args), CALL)
    }

    /// The docker CLI aimed at this engine, for callers that time it themselves.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(docker_cli());
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args);
        cmd
    }

    /// As `docker`, asserted to succeed (showing dockerd's log otherwise); returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "`docker {}` failed ({}).\nstdout:\n{}\nstderr:\n{}\ndockerd log (tail):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 30)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Build [`IMAGE`] from busybox-static with `docker import`; returns its name.
    pub fn busybox(&self) -> &'static str {
        let root = self.dir().join("busybox-root");
        let bin = root.join("bin");
        fs::create_dir_all(&bin).expect("image dir");
        fs::copy("/bin/busybox", bin.join("busybox")).expect("copy busybox");
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
        }
        let tarball = self.dir().join("busybox.tar");
        let out = output_with_timeout(
            Command::new("tar")
                .arg("-C")
                .arg(&root)
                .arg("-cf")
                .arg(&tarball)
                .arg("."),
            CALL,
        );
        assert!(
            out.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.ok(&["import", tarball.to_str().expect("utf-8 path"), IMAGE]);
        IMAGE
    }

    /// The IPv4 address of `container` on Docker network `network`.
    pub fn container_ip(&self, container: &str, network: &str) -> String {
        let fmt = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
        self.ok(&["inspect", "-f", &fmt, container])
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- dockerd log (tail) ---\n{}", tail(&self.log(), 40));
        }
        if let Some(mut child) = self.child.take() {
            // Containers first, while the network plugins they use are still up.
            if let Some(out) = quiet_output(self.command(&["ps", "-aq"]), CALL) {
                let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids.iter().map(String::as_str));
                    let _ = quiet_output(self.command(&args), CALL);
                }
            }
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let end = Instant::now() + STOP;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < end {
                thread::sleep(POLL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // containerd and shims dockerd started, if any outlived it: every process whose
        // command line names this engine's dir is this test's.
        for pid in processes_naming(self.dir()) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let end = Instant::now() + STOP;
        while !processes_naming(self.dir()).is_empty() && Instant::now() < end {
            thread::sleep(POLL);
        }
        unmount_all_under(self.dir());
        if !mounts_under(self.dir()).is_empty() {
            eprintln!("warning: mounts left under {}", self.dir().display());
        }
    }
}

/// Run `cmd` with its output discarded, killed after `timeout`; None if it could not run or
/// timed out. Never panics (for cleanup, which may run while a test panics).
fn quiet_output(mut cmd: Command, timeout: Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
        buf
    });
    let end = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < end => thread::sleep(POLL),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    Some(Output {
        status,
        stdout: reader.join().unwrap_or_default(),
        stderr: Vec::new(),
    })
}

/// Live processes (not this one) with an argument under `dir`.
pub fn processes_naming(dir: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = dir.display().to_string();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline
                .split(|&b| b == 0)
                .any(|a| String::from_utf8_lossy(a).contains(&needle))
        })
        .collect()
}
