//! Integration-test harness: simulated hosts and workloads in network namespaces.
//!
//! A [`Host`] is what one machine of a real deployment is: a network namespace with an underlay
//! interface (`ul0`, a veth end with an address from 198.18.0.0/15, the benchmarking range)
//! and, once started, its own `rnetd` with its own socket, state dir and run dir in a temp dir.
//! A [`Workload`] is a bare network namespace standing in for a container.
//!
//! Rules the harness keeps so tests can run in parallel and leave nothing behind:
//! - nothing is configured in the root network namespace;
//! - every name carries the test process id and a per-process counter;
//! - `Drop` cleans up even when the test panics, and never panics itself;
//! - every wait polls with a deadline (no fixed sleeps), and every child process has a timeout,
//!   so a hung daemon fails a test instead of hanging CI.
//!
//! The daemon is started with `nsenter --net=<netns>` and never with `ip netns exec`: the latter
//! also gives the process a private mount namespace, and the namespace bind mounts rnetd makes
//! under its run dir must be visible (and outlive the daemon) in the test's mount namespace.
#![allow(dead_code)]

pub mod cni;
pub mod docker;
pub mod lab;
pub mod pcap;
pub mod vmlab;

use std::fs;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How often every wait in the harness polls.
const POLL: Duration = Duration::from_millis(20);
/// How long `start_daemon` waits for `rnet status` to succeed.
const DAEMON_START: Duration = Duration::from_secs(15);
/// How long `kill_daemon` waits for the daemon to exit after the signal.
const DAEMON_STOP: Duration = Duration::from_secs(15);
/// Upper bound for any one command the harness runs (CLI calls, `ip`, `ping`).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Source of unique names and addresses within this test process.
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Panics with a clear message unless the process runs as root (every kernel test needs it).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (it creates network namespaces and devices); run `make test` as root"
    );
}

/// Polls `f` every 20 ms until it returns true; panics naming `what` once `deadline` has passed.
pub fn wait_until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        thread::sleep(POLL);
    }
}

/// Runs `cmd` to completion with piped stdout/stderr, killing it and panicking after `timeout`.
///
/// The pipes are drained on their own threads so a chatty child cannot block on a full pipe
/// while we poll for its exit.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let end = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < end => thread::sleep(POLL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {timeout:?}");
            }
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// `Command` for `argv` run inside the network namespace at `netns` (and no other namespace).
fn nsenter(netns: &Path, argv: &[&str]) -> Command {
    assert!(!argv.is_empty(), "empty argv");
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .arg("--")
        .args(argv);
    cmd
}

/// Runs `argv` and panics, showing its output, unless it succeeds. For setup steps.
fn must(argv: &[&str]) -> Output {
    let out = output_with_timeout(Command::new(argv[0]).args(&argv[1..]), COMMAND_TIMEOUT);
    assert!(
        out.status.success(),
        "`{}` failed ({}): {}",
        argv.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ip netns add NAME`, one at a time within the process. The first `ip netns add` on a machine
/// bind-mounts /run/netns onto itself; two racing ones can stack two such mounts and hide one
/// namespace file under the other.
fn add_netns(name: &str) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    must(&["ip", "netns", "add", name]);
}

/// `ip netns del NAME`, ignoring errors (cleanup must never panic).
fn delete_netns(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Last `n` lines of `s`.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `argv` inside the network namespace at `netns` and returns its stdout; panics,
/// showing its stderr, unless it succeeds.
pub fn in_netns_ok(netns: &Path, argv: &[&str]) -> String {
    let out = output_with_timeout(&mut nsenter(netns, argv), COMMAND_TIMEOUT);
    assert!(
        out.status.success(),
        "`{}` in {}: {}",
        argv.join(" "),
        netns.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Interface names in the network namespace at `netns_path` (`ip -o link`, without `@peer`).
pub fn links_in(netns_path: &Path) -> Vec<String> {
    parse_ip_o_link(&in_netns_ok(netns_path, &["ip", "-o", "link"]))
}

/// Parses `ip -o link` lines such as `5: veth1@if4: <...>` into names (`veth1`).
pub fn parse_ip_o_link(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect()
}

/// Mount points at or below `dir`, in mount order (parents before children), from
/// `/proc/self/mountinfo`. `dir` is canonicalised first, as the kernel reports canonical paths.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(&dir))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
pub fn unescape_mountinfo(s: &str) -> String {
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

/// Lazily unmounts everything at or below `dir`, children first; ignores errors.
fn unmount_all_under(dir: &Path) {
    for m in mounts_under(dir).iter().rev() {
        let _ = umount2(m, MntFlags::MNT_DETACH);
    }
}

/// A scratch directory for the socket, state and run directories of an rnetd a test starts
/// by hand: on drop, the namespace bind mounts that rnetd left under it (its tunnel
/// namespace, made at start) are unmounted first, so the directory and the namespaces go.
pub struct RunScratch(tempfile::TempDir);

impl RunScratch {
    pub fn new() -> RunScratch {
        RunScratch(tempfile::tempdir().expect("create a scratch dir"))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for RunScratch {
    fn drop(&mut self) {
        unmount_all_under(self.0.path());
    }
}

/// A simulated host: its own network namespace, underlay `ul0`, and (optionally) an rnetd.
pub struct Host {
    tag: String,
    netns: String,
    underlay: Ipv4Addr,
    dir: tempfile::TempDir,
    daemon: Option<Child>,
}

impl Host {
    /// Creates the host namespace `rnt-<tag>-<pid>-<n>` with `lo` up and an underlay `ul0`
    /// (veth to `ul0p`, mtu 1500, a unique address in 198.18.0.0/15, default route via it).
    pub fn new(tag: &str) -> Host {
        require_root();
        let n = next_id();
        let netns = format!("rnt-{tag}-{}-{n}", std::process::id());
        // .2 upwards, 250 hosts per /24 step: unique per process, all inside 198.18.0.0/15,
        // so hosts of one test could later share one underlay segment.
        let underlay = Ipv4Addr::new(
            198,
            18 + (n / 250 / 256) as u8,
            (n / 250 % 256) as u8,
            (n % 250 + 2) as u8,
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("rnt-{tag}-"))
            .tempdir()
            .expect("create host temp dir");
        // From here on, Drop removes whatever setup already made if a step below panics.
        let host = Host {
            tag: tag.to_string(),
            netns,
            underlay,
            dir,
            daemon: None,
        };
        add_netns(&host.netns);
        let ns = host.netns.as_str();
        let addr = format!("{underlay}/15");
        must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        // A veth pair, not a dummy device: the kernels of this project's machines are built
        // without CONFIG_DUMMY. The peer `ul0p` stays in the host namespace, up, so `ul0` has
        // carrier like a real NIC; a multi-host lab would move the peer onto a switch.
        must(&[
            "ip", "-n", ns, "link", "add", "ul0", "mtu", "1500", "type", "veth", "peer", "name",
            "ul0p", "mtu", "1500",
        ]);
        must(&["ip", "-n", ns, "link", "set", "ul0p", "up"]);
        must(&["ip", "-n", ns, "addr", "add", &addr, "dev", "ul0"]);
        must(&["ip", "-n", ns, "link", "set", "ul0", "up"]);
        must(&["ip", "-n", ns, "route", "add", "default", "dev", "ul0"]);
        host
    }

    /// The tag given to `new`; also the daemon's `--host-id`.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The namespace's name under /run/netns.
    pub fn netns_name(&self) -> &str {
        &self.netns
    }

    /// `/run/netns/<name>`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    /// The address on `ul0`.
    pub fn underlay(&self) -> Ipv4Addr {
        self.underlay
    }

    /// The host's temp dir (holds the socket, state and run dirs, and the daemon log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir().join("rnetd.sock")
    }

    /// The daemon's `--run-dir` (namespace bind mounts live here).
    pub fn run_dir(&self) -> PathBuf {
        self.dir().join("run")
    }

    /// Put the daemon's run directory on a tmpfs of its own, as a real host's `/run` is (for
    /// a benchmark: the temp dir may be on a disk, whose inode allocation for every attach's
    /// journal entry a real host never pays). Call before `start_daemon`; `Drop` unmounts it.
    pub fn run_dir_on_tmpfs(&self) {
        let run = self.run_dir();
        fs::create_dir_all(&run).expect("create the run dir");
        mount(
            Some("tmpfs"),
            &run,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        )
        .expect("mount a tmpfs on the run dir");
    }

    /// The daemon's `--state-dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    fn log_path(&self) -> PathBuf {
        self.dir().join("rnetd.log")
    }

    /// Starts rnetd in this host's netns with the standard flags; returns once `rnet status`
    /// answers. Panics (with the daemon log) if it exits or does not answer within 15 s.
    pub fn start_daemon(&mut self) {
        self.start_daemon_with(&[]);
    }

    /// As `start_daemon`, with `extra_args` appended to rnetd's command line.
    pub fn start_daemon_with(&mut self, extra_args: &[&str]) {
        self.start_daemon_wrapped(&[], extra_args);
    }

    /// As `start_daemon_with`, with rnetd run through `wrapper` (a command that ends by
    /// exec'ing its arguments, so the pid stays rnetd's).
    pub fn start_daemon_wrapped(&mut self, wrapper: &[&str], extra_args: &[&str]) {
        self.spawn_daemon(wrapper, extra_args);
        let end = Instant::now() + DAEMON_START;
        loop {
            if let Some(status) = self
                .daemon
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.daemon = None;
                panic!(
                    "rnetd of host {} exited during startup ({status}):\n{}",
                    self.tag,
                    self.daemon_log()
                );
            }
            if self.socket().exists() && self.rnet(&["status"]).status.success() {
                return;
            }
            if Instant::now() >= end {
                panic!(
                    "rnetd of host {} did not answer `rnet status` within {DAEMON_START:?}:\n{}",
                    self.tag,
                    tail(&self.daemon_log(), 60)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Start rnetd as `start_daemon_wrapped` does, without waiting for it to answer (for a
    /// daemon that is not meant to get that far); the `Host` still owns and stops it.
    pub fn spawn_daemon(&mut self, wrapper: &[&str], extra_args: &[&str]) {
        assert!(
            !self.daemon_running(),
            "rnetd of host {} is already running",
            self.tag
        );
        // Append: a restarted daemon's log follows the previous run's.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open daemon log");
        let (sock, state, run) = (self.socket(), self.state_dir(), self.run_dir());
        let underlay = self.underlay.to_string();
        let mut argv: Vec<&str> = wrapper.to_vec();
        argv.extend([
            env!("CARGO_BIN_EXE_rnetd"),
            "--socket",
            path_str(&sock),
            "--state-dir",
            path_str(&state),
            "--run-dir",
            path_str(&run),
            "--host-id",
            &self.tag,
            "--underlay",
            &underlay,
            "--docker-plugin-dir",
            "none",
        ]);
        argv.extend_from_slice(extra_args);
        let child = nsenter(&self.netns_path(), &argv)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn nsenter rnetd");
        // nsenter execs rnetd in place (no fork without --fork), so this pid is rnetd's.
        self.daemon = Some(child);
    }

    /// True while the daemon process started by this `Host` has not exited.
    pub fn daemon_running(&mut self) -> bool {
        matches!(self.daemon.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The daemon's pid, if one was started and not yet reaped.
    pub fn daemon_pid(&self) -> Option<i32> {
        self.daemon.as_ref().map(|c| c.id() as i32)
    }

    /// Sends `sig` to the daemon and waits (at most 15 s) for it to exit; returns its status.
    /// Panics if no daemon is running, or if it outlives the deadline (it is then SIGKILLed).
    pub fn kill_daemon(&mut self, sig: Signal) -> ExitStatus {
        let mut child = self
            .daemon
            .take()
            .expect("kill_daemon: no rnetd was started");
        let _ = kill(Pid::from_raw(child.id() as i32), sig);
        let end = Instant::now() + DAEMON_STOP;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < end => thread::sleep(POLL),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "rnetd of host {} did not exit within {DAEMON_STOP:?} of {sig}:\n{}",
                        self.tag,
                        tail(&self.daemon_log(), 60)
                    );
                }
            }
        }
    }

    /// Everything the daemon(s) of this host wrote to stdout and stderr so far.
    pub fn daemon_log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs the CLI as `rnet --socket <sock> <args...>`. The CLI only talks to the unix socket,
    /// so it runs in the test's own namespaces.
    pub fn rnet(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rnet"));
        cmd.arg("--socket").arg(self.socket()).args(args);
        output_with_timeout(&mut cmd, COMMAND_TIMEOUT)
    }

    /// Runs the CLI, panics (showing stderr and the daemon log's tail) unless it succeeds, and
    /// returns its stdout.
    pub fn rnet_ok(&self, args: &[&str]) -> String {
        let out = self.rnet(args);
        if !out.status.success() {
            panic!(
                "`rnet {}` failed ({}).\nstdout:\n{}\nstderr:\n{}\nrnetd log (tail):\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail(&self.daemon_log(), 40)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `rnet --socket <sock> -o json <args...>`, asserted to succeed, stdout parsed as JSON.
    pub fn rnet_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["-o", "json"];
        full.extend_from_slice(args);
        let stdout = self.rnet_ok(&full);
        serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "`rnet -o json {}` printed invalid JSON ({e}):\n{stdout}",
                args.join(" ")
            )
        })
    }

    /// Runs `argv` inside this host's network namespace.
    pub fn exec(&self, argv: &[&str]) -> Output {
        output_with_timeout(&mut nsenter(&self.netns_path(), argv), COMMAND_TIMEOUT)
    }

    /// Creates a fresh workload namespace (not attached to anything yet).
    pub fn new_workload(&self, tag: &str) -> Workload {
        Workload::new(tag)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            // Shown by libtest with the failing test's output: usually the best clue there is.
            let log = self.daemon_log();
            if !log.is_empty() {
                eprintln!(
                    "--- rnetd log of host {} (tail) ---\n{}",
                    self.tag,
                    tail(&log, 80)
                );
            }
        }
        // Namespace bind mounts under the run dir outlive the daemon by design; without this the
        // temp dir could not be removed and the namespaces would leak.
        unmount_all_under(self.dir.path());
        delete_netns(&self.netns);
        // TempDir's own Drop then removes the directory (ignoring errors).
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A workload network namespace (a stand-in for a container), deleted on drop.
pub struct Workload {
    tag: String,
    name: String,
}

impl Workload {
    /// Creates namespace `rnt-w-<pid>-<n>` with `lo` up, as container runtimes leave it.
    pub fn new(tag: &str) -> Workload {
        require_root();
        let name = format!("rnt-w-{}-{}", std::process::id(), next_id());
        let w = Workload {
            tag: tag.to_string(),
            name,
        };
        add_netns(&w.name);
        must(&["ip", "-n", &w.name, "link", "set", "lo", "up"]);
        w
    }

    /// The tag given at creation (for messages).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The namespace's name under /run/netns.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`: what `rnet attach --netns` takes.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `argv` inside the workload's network namespace.
    pub fn exec(&self, argv: &[&str]) -> Output {
        output_with_timeout(&mut nsenter(&self.path(), argv), COMMAND_TIMEOUT)
    }

    /// Pings `ip` `count` times from inside the workload; true if any reply came back within
    /// the 1 s per-probe deadline (ping's exit status 0).
    pub fn ping(&self, ip: &str, count: u32) -> bool {
        let count = count.max(1).to_string();
        self.exec(&["ping", "-n", "-q", "-c", &count, "-W", "1", "-i", "0.2", ip])
            .status
            .success()
    }

    /// A counter of the namespace's `/proc/net/snmp`, such as `("Icmp", "InEchoReps")`, or 0
    /// when there is no such counter: what a test waits on to know that traffic flows.
    pub fn snmp(&self, group: &str, field: &str) -> u64 {
        let out = self.exec(&["cat", "/proc/net/snmp"]);
        snmp_counter(&String::from_utf8_lossy(&out.stdout), group, field)
    }

    /// Interface names inside the workload namespace.
    pub fn links(&self) -> Vec<String> {
        links_in(&self.path())
    }

    /// The IPv4 addresses (without prefix length) on interface `ifname`, if it exists.
    pub fn ipv4_addrs(&self, ifname: &str) -> Vec<Ipv4Addr> {
        let out = self.exec(&["ip", "-4", "-o", "addr", "show", "dev", ifname]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace().skip_while(|w| *w != "inet");
                it.nth(1)?.split('/').next()?.parse().ok()
            })
            .collect()
    }
}

/// One counter of `/proc/net/snmp` text: each group is a line of names (`Icmp: InMsgs ...`)
/// followed by a line of values (`Icmp: 5 ...`).
pub fn snmp_counter(text: &str, group: &str, field: &str) -> u64 {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == field)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

impl Drop for Workload {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

/// A spawned process killed (and reaped) when the guard goes.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What `make` returns when run on a thread that entered the namespace at `netns`: a socket
/// made there keeps that namespace wherever it is used.
pub fn made_in<T: Send + 'static>(netns: &Path, make: impl FnOnce() -> T + Send + 'static) -> T {
    let netns = netns.to_path_buf();
    thread::spawn(move || {
        let ns = fs::File::open(&netns).expect("open netns");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        make()
    })
    .join()
    .unwrap()
}

/// A UDP socket bound to `addr` that lives in the namespace at `netns`.
pub fn udp_socket_in(netns: &Path, addr: &str) -> std::net::UdpSocket {
    let addr = addr.to_string();
    made_in(netns, move || {
        std::net::UdpSocket::bind(addr).expect("bind")
    })
}

/// The sandbox bind mount of network `net` under a daemon's run dir (`netns/sb-<net>-<id>`),
/// if one exists.
pub fn find_sandbox(run_dir: &Path, net: &str) -> Option<PathBuf> {
    let prefix = format!("sb-{net}-");
    fs::read_dir(run_dir.join("netns"))
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.strip_prefix(&prefix)
                    .is_some_and(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            })
        })
        .map(|e| e.path())
}

/// The sandbox of network `net` under `run_dir`; panics when there is none.
pub fn sandbox_in(run_dir: &Path, net: &str) -> PathBuf {
    find_sandbox(run_dir, net)
        .unwrap_or_else(|| panic!("no sandbox of network {net} under {}", run_dir.display()))
}

/// A positive count from the environment variable `name`, else `default` (the benchmarks'
/// knobs).
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// The median, least and greatest of `values` (a benchmark's rounds); panics on none.
pub fn median_min_max(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}
