//! A VM lab owned by a test: `rnet lab up --vm` on creation, `rnet lab down` on drop (also when
//! the test panics, after showing the guests' consoles and daemon logs). Every guest is a QEMU
//! running Debian 12's own kernel (ESP, WireGuard modules), so tests that need kernel features
//! the machine lacks run here:
//!
//! ```ignore
//! let Some(lab) = VmLab::up(2) else { return }; // skipped (loudly) only without QEMU
//! lab.exec_ok("h1", &["modprobe", "esp4"]);
//! lab.rnet_ok("h1", &["network", "create", "n", "--subnet", "10.9.0.0/24"]);
//! // Returns once h1's rnet lists the endpoint; a workload that fails to attach fails here.
//! let pid = lab.run_workload("h1", "w1", "n", "10.9.0.10", &["sleep", "600"]);
//! ```
//!
//! The lab's L2 is bridge `br0` in [`VmLab::netns`] (198.18.0.1/24 on it): capture there to see
//! exactly what the guests put on the wire, e.g.
//! `pcap::Capture::start(&lab.netns(), "br0", "198.18.0.11:9".parse().unwrap())` (tested in
//! tests/vm_lab.rs). The first lab ever built on a machine also builds the
//! guest image (a few minutes; cached under /var/lib/rnet/lab/vm afterwards).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::lab::{ok, unique_name};
use super::{output_with_timeout, require_root, wait_until};

/// Upper bound for `lab up --vm`, image build included.
const UP_TIMEOUT: Duration = Duration::from_secs(900);
/// Upper bound for any other `rnet lab` call (exec has its own --timeout below this).
const CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// The `--timeout` given to every exec.
const EXEC_TIMEOUT_SECS: &str = "240";
/// How long a workload may take to attach (a few etcd calls, each up to 15 s under TCG).
const WORKLOAD_START: Duration = Duration::from_secs(120);
/// Between two looks at a starting workload (each look is a guest round trip already).
const WORKLOAD_POLL: Duration = Duration::from_millis(500);

/// Why QEMU cannot run here at all, if it cannot (the only reason VM tests skip).
pub fn qemu_missing() -> Option<String> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/bin")])
        .any(|d| d.join("qemu-system-x86_64").is_file());
    (!found).then(|| "qemu-system-x86_64 is not installed (run scripts/deps.sh)".to_string())
}

/// `rnet lab --name NAME ARGS…` with `timeout`.
fn rnet_lab(name: &str, args: &[&str], timeout: Duration) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rnet"));
    cmd.args(["lab", "--name", name]).args(args);
    output_with_timeout(&mut cmd, timeout)
}

/// A running VM lab, removed on drop.
pub struct VmLab {
    name: String,
    down: bool,
    /// How long `lab up` took (image build included when it happened).
    pub up_time: Duration,
}

impl VmLab {
    /// `rnet lab up --vm --hosts N`; None (after a loud message) only when QEMU is missing.
    pub fn up(hosts: u32) -> Option<VmLab> {
        Self::up_with(hosts, &[])
    }

    /// As `up`, with extra `lab up` flags (e.g. `--accel tcg`).
    pub fn up_with(hosts: u32, extra: &[&str]) -> Option<VmLab> {
        require_root();
        if let Some(why) = qemu_missing() {
            eprintln!("\n*** SKIPPED: the VM lab cannot run: {why} ***\n");
            return None;
        }
        let mut lab = VmLab {
            name: unique_name(),
            down: false,
            up_time: Duration::ZERO,
        };
        let n = hosts.to_string();
        let mut args = vec!["up", "--vm", "--hosts", &n];
        args.extend_from_slice(extra);
        let t = Instant::now();
        let out = rnet_lab(&lab.name, &args, UP_TIMEOUT);
        lab.up_time = t.elapsed();
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        ok(&format!("rnet lab up --vm {}", lab.name), out);
        Some(lab)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/rnet/lab/<name>`.
    pub fn dir(&self) -> PathBuf {
        Path::new("/run/rnet/lab").join(&self.name)
    }

    /// The lab namespace: bridge `br0` (the guests' L2) and one tap per guest.
    pub fn netns(&self) -> PathBuf {
        self.dir().join("netns").join("switch")
    }

    /// `rnet lab --name NAME ARGS…`.
    pub fn rnet_lab(&self, args: &[&str]) -> Output {
        rnet_lab(&self.name, args, CALL_TIMEOUT)
    }

    /// `rnet lab exec HOST -- ARGV…`: the guest command's status, stdout and stderr.
    pub fn exec(&self, host: &str, argv: &[&str]) -> Output {
        let mut args = vec!["exec", "--timeout", EXEC_TIMEOUT_SECS, host, "--"];
        args.extend_from_slice(argv);
        self.rnet_lab(&args)
    }

    /// As `exec`, asserted to succeed; returns stdout.
    pub fn exec_ok(&self, host: &str, argv: &[&str]) -> String {
        ok(
            &format!("{host}: {}", argv.join(" ")),
            self.exec(host, argv),
        )
    }

    /// `exec` with `input` as the command's stdin.
    pub fn exec_stdin(&self, host: &str, argv: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rnet"));
        cmd.args(["lab", "--name", &self.name, "exec", "--stdin", host, "--"])
            .args(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start rnet lab exec");
        let mut pipe = child.stdin.take().expect("stdin");
        let data = input.to_vec();
        let writer = thread::spawn(move || pipe.write_all(&data));
        let out = child.wait_with_output().expect("rnet lab exec");
        let _ = writer.join();
        out
    }

    /// Start `argv` in the background in `host`; its output goes to
    /// /var/log/rnet-lab/TAG.log in the guest ([`VmLab::guest_log`]). Returns its pid.
    pub fn detach(&self, host: &str, tag: &str, argv: &[&str]) -> u32 {
        let log = format!("/var/log/rnet-lab/{tag}.log");
        let mut args = vec!["exec", "--detach", &log, host, "--"];
        args.extend_from_slice(argv);
        let out = ok(&format!("{host}: detach {argv:?}"), self.rnet_lab(&args));
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("no pid from detach: {out:?}"))
    }

    /// `rnet run NETWORK --ip IP -- CMD…` in the background in `host` (as [`VmLab::detach`],
    /// log TAG), then wait until the host's rnet lists the workload's endpoint at `ip`. A
    /// workload that fails to start fails here, naming it, with its log and what rnet lists,
    /// not at some later check of the network. For long-running CMDs (one that may exit
    /// before the first look counts as failed). Returns its pid.
    pub fn run_workload(
        &self,
        host: &str,
        tag: &str,
        network: &str,
        ip: &str,
        cmd: &[&str],
    ) -> u32 {
        let mut argv = vec!["rnet", "run", network, "--ip", ip, "--"];
        argv.extend_from_slice(cmd);
        let pid = self.detach(host, tag, &argv);
        let end = Instant::now() + WORKLOAD_START;
        loop {
            let listed = self.rnet(host, &["-o", "json", "endpoints", network]);
            if listed.status.success() && lists_endpoint(&listed.stdout, host, ip) {
                return pid;
            }
            // The agent reaps what it detached: an exited workload leaves no /proc entry.
            let proc_dir = format!("/proc/{pid}");
            let alive = self.exec(host, &["test", "-e", &proc_dir]).status.success();
            if !alive || Instant::now() >= end {
                let why = match alive {
                    true => format!("is not listed after {WORKLOAD_START:?}"),
                    false => "exited".to_string(),
                };
                panic!(
                    "{host}: workload {tag} (rnet run {network} --ip {ip}, pid {pid}) {why}\n\
                     --- rnet endpoints {network} on {host} ({}) ---\n{}{}\n\
                     --- /var/log/rnet-lab/{tag}.log ---\n{}",
                    listed.status,
                    String::from_utf8_lossy(&listed.stdout),
                    String::from_utf8_lossy(&listed.stderr),
                    self.guest_log(host, tag)
                );
            }
            thread::sleep(WORKLOAD_POLL);
        }
    }

    /// A guest log under /var/log/rnet-lab (e.g. `rnetd`, `etcd`, or a detach tag).
    pub fn guest_log(&self, host: &str, tag: &str) -> String {
        let path = format!("/var/log/rnet-lab/{tag}.log");
        String::from_utf8_lossy(&self.exec(host, &["cat", &path]).stdout).into_owned()
    }

    /// `rnet ARGS…` inside guest `host` (against its own rnetd).
    pub fn rnet(&self, host: &str, args: &[&str]) -> Output {
        let mut argv = vec!["rnet"];
        argv.extend_from_slice(args);
        self.exec(host, &argv)
    }

    /// As `rnet`, asserted to succeed; returns stdout.
    pub fn rnet_ok(&self, host: &str, args: &[&str]) -> String {
        ok(
            &format!("{host}: rnet {}", args.join(" ")),
            self.rnet(host, args),
        )
    }

    /// As `rnet_ok` with `-o json`, parsed.
    pub fn rnet_json(&self, host: &str, args: &[&str]) -> Value {
        let mut full = vec!["-o", "json"];
        full.extend_from_slice(args);
        let out = self.rnet_ok(host, &full);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{out}"))
    }

    /// The rnetd command line `lab up` used in guest `host` (from `vm.json`), plus `extra`.
    pub fn rnetd_argv(&self, host: &str, extra: &[&str]) -> Vec<String> {
        let cfg: Value =
            serde_json::from_str(&fs::read_to_string(self.dir().join("vm.json")).expect("vm.json"))
                .expect("vm.json parses");
        let hosts = cfg["hosts"].as_array().expect("hosts");
        let h = hosts
            .iter()
            .find(|h| h["id"] == host)
            .unwrap_or_else(|| panic!("no guest {host}"));
        let underlay = h["underlay"].as_str().unwrap().split('/').next().unwrap();
        let mut argv: Vec<String> = vec![
            "rnetd".into(),
            "--host-id".into(),
            host.into(),
            "--underlay".into(),
            underlay.into(),
            "--store".into(),
            cfg["store"].as_str().unwrap().into(),
            "--docker-plugin-dir".into(),
            "none".into(),
            "--lease-ttl".into(),
            cfg["lease_ttl"].to_string(),
        ];
        // TCG guests' longer etcd deadline (`VmLabConfig::store_timeout`).
        if let Some(secs) = cfg["store_timeout"].as_u64() {
            argv.extend(["--store-timeout".into(), secs.to_string()]);
        }
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv
    }

    /// Stop guest `host`'s rnetd (SIGTERM, waiting until it is gone), start it again with
    /// `lab up`'s flags plus `extra` (log: /var/log/rnet-lab/rnetd.log), wait until it answers.
    pub fn restart_rnetd(&self, host: &str, extra: &[&str]) {
        let _ = self.exec(host, &["pkill", "-x", "rnetd"]);
        wait_until(
            &format!("rnetd in {host} to exit"),
            Duration::from_secs(60),
            || !self.exec(host, &["pgrep", "-x", "rnetd"]).status.success(),
        );
        let argv = self.rnetd_argv(host, extra);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.detach(host, "rnetd", &argv);
        wait_until(
            &format!("rnetd in {host} to answer"),
            Duration::from_secs(120),
            || self.rnet(host, &["status"]).status.success(),
        );
    }

    /// One ping from guest `host` to `ip` answered within two seconds.
    pub fn ping(&self, host: &str, ip: &str) -> bool {
        self.exec(host, &["ping", "-n", "-q", "-c", "1", "-W", "2", ip])
            .status
            .success()
    }

    /// Cut (false) or restore (true) guest `host`'s NIC link.
    pub fn link(&self, host: &str, up: bool) {
        let state = if up { "up" } else { "down" };
        ok(
            &format!("rnet lab link {host} {state}"),
            self.rnet_lab(&["link", host, state]),
        );
    }

    /// `rnet lab status -o json`, parsed.
    pub fn status(&self) -> Value {
        let out = ok("rnet lab status", self.rnet_lab(&["-o", "json", "status"]));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad status JSON ({e}):\n{out}"))
    }

    /// `rnet lab down`, asserted to succeed; returns stdout. Drop then does nothing.
    pub fn down(&mut self) -> String {
        self.down = true;
        ok("rnet lab down", self.rnet_lab(&["down"]))
    }

    fn show_logs(&self) {
        let Ok(entries) = fs::read_dir(self.dir()) else {
            return;
        };
        for host in entries
            .flatten()
            .filter(|e| e.path().join("qemu.pid").exists())
        {
            let id = host.file_name().to_string_lossy().into_owned();
            let console = fs::read_to_string(host.path().join("console.log")).unwrap_or_default();
            let lines: Vec<&str> = console.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            eprintln!("--- {id} console (tail) ---\n{tail}");
            for log in ["rnetd", "etcd"] {
                let out = self.exec(
                    &id,
                    &["tail", "-n", "30", &format!("/var/log/rnet-lab/{log}.log")],
                );
                if out.status.success() {
                    eprintln!(
                        "--- {id} {log}.log (tail) ---\n{}",
                        String::from_utf8_lossy(&out.stdout)
                    );
                }
            }
        }
    }
}

impl Drop for VmLab {
    fn drop(&mut self) {
        if thread::panicking() {
            self.show_logs();
        }
        if !self.down {
            let _ = rnet_lab(&self.name, &["down"], CALL_TIMEOUT);
        }
    }
}

/// Whether `rnet -o json endpoints` output lists an endpoint of `host` at `ip` (its `ip`
/// carries the prefix length: `10.0.0.2/24`).
fn lists_endpoint(json: &[u8], host: &str, ip: &str) -> bool {
    let Ok(Value::Array(eps)) = serde_json::from_slice::<Value>(json) else {
        return false;
    };
    eps.iter().any(|e| {
        e["host"] == host && e["ip"].as_str().and_then(|a| a.split('/').next()) == Some(ip)
    })
}

/// Live processes whose command line names `needle` (QEMUs carry their lab directory).
pub fn processes_naming(needle: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}
