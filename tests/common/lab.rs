//! A lab owned by a test: `rnet lab up` on creation, `rnet lab down` on drop (also when the
//! test panics, after showing the tails of the lab's logs). Lab names carry the test process id
//! and a per-process counter (`t<pid>n<k>`), so tests run in parallel and labs coexist.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use super::{output_with_timeout, require_root};

/// Upper bound for one `rnet lab` command (up waits for etcd and every daemon itself).
const LAB_TIMEOUT: Duration = Duration::from_secs(120);

static LABS: AtomicU32 = AtomicU32::new(0);

/// A fresh lab name unique to this test process.
pub fn unique_name() -> String {
    format!(
        "t{}n{}",
        std::process::id(),
        LABS.fetch_add(1, Ordering::Relaxed)
    )
}

/// `rnet lab --name NAME ARGS…` (the CLI runs in the test's own namespaces).
pub fn rnet_lab(name: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rnet"));
    cmd.args(["lab", "--name", name]).args(args);
    output_with_timeout(&mut cmd, LAB_TIMEOUT)
}

/// Panics showing both streams unless `out` is a success; returns stdout.
pub fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "`{what}` failed ({}).\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running lab, removed on drop.
pub struct Lab {
    name: String,
    down: bool,
}

impl Lab {
    /// `rnet lab up --hosts N` (daemons on the lab's etcd) with `extra` flags; panics if it fails.
    pub fn up(hosts: u32, extra: &[&str]) -> Lab {
        Lab::up_with_env(hosts, extra, &[])
    }

    /// As `up`, with `env` set for `rnet lab up` (and so for its daemons).
    pub fn up_with_env(hosts: u32, extra: &[&str], env: &[(&str, &str)]) -> Lab {
        require_root();
        let lab = Lab {
            name: unique_name(),
            down: false,
        };
        let n = hosts.to_string();
        let mut args = vec!["up", "--hosts", &n];
        args.extend_from_slice(extra);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rnet"));
        cmd.args(["lab", "--name", &lab.name]).args(&args);
        cmd.envs(env.iter().copied());
        ok(
            &format!("rnet lab up {}", lab.name),
            output_with_timeout(&mut cmd, LAB_TIMEOUT),
        );
        lab
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/rnet/lab/<name>`.
    pub fn dir(&self) -> PathBuf {
        Path::new("/run/rnet/lab").join(&self.name)
    }

    /// `rnet lab --name NAME ARGS…`.
    pub fn rnet(&self, args: &[&str]) -> Output {
        rnet_lab(&self.name, args)
    }

    /// As `rnet`, asserted to succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        ok(&format!("rnet lab {}", args.join(" ")), self.rnet(args))
    }

    /// `rnet lab exec HOST -- ARGV…`.
    pub fn exec(&self, host: &str, argv: &[&str]) -> Output {
        let mut args = vec!["exec", host, "--"];
        args.extend_from_slice(argv);
        self.rnet(&args)
    }

    /// As `exec`, asserted to succeed; returns stdout.
    pub fn exec_ok(&self, host: &str, argv: &[&str]) -> String {
        ok(
            &format!("{host}: {}", argv.join(" ")),
            self.exec(host, argv),
        )
    }

    /// `rnet ARGS…` against host `host`'s daemon (through its socket, from the test's namespace).
    pub fn host_rnet(&self, host: &str, args: &[&str]) -> Output {
        let sock = self.dir().join(host).join("rnetd.sock");
        Command::new(env!("CARGO_BIN_EXE_rnet"))
            .arg("--socket")
            .arg(sock)
            .args(args)
            .output()
            .expect("run rnet")
    }

    /// As `host_rnet`, asserted to succeed; returns stdout.
    pub fn host_rnet_ok(&self, host: &str, args: &[&str]) -> String {
        ok(
            &format!("{host}: rnet {}", args.join(" ")),
            self.host_rnet(host, args),
        )
    }

    /// As `host_rnet_ok` with `-o json`, parsed.
    pub fn host_rnet_json(&self, host: &str, args: &[&str]) -> Value {
        let mut full = vec!["-o", "json"];
        full.extend_from_slice(args);
        let out = self.host_rnet_ok(host, &full);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{out}"))
    }

    /// Attach workload namespace `netns` on `host` to `net`; returns its address (no prefix).
    pub fn attach(&self, host: &str, net: &str, netns: &Path) -> String {
        let path = netns.display().to_string();
        let ep = self.host_rnet_json(host, &["attach", net, "--netns", &path]);
        let ip = ep["ip"].as_str().expect("ip in endpoint");
        ip.split('/').next().unwrap().to_string()
    }

    /// The daemon log of `host`.
    pub fn log(&self, host: &str) -> String {
        fs::read_to_string(self.dir().join(host).join("rnetd.log")).unwrap_or_default()
    }

    /// The lab switch's namespace (its bridge `br0` carries every packet between hosts).
    pub fn switch_netns(&self) -> PathBuf {
        self.dir().join("netns").join("switch")
    }

    /// One ping from `host` to `ip` answered within a second.
    pub fn ping(&self, host: &str, ip: &str) -> bool {
        self.exec(host, &["ping", "-n", "-q", "-c", "1", "-W", "1", ip])
            .status
            .success()
    }

    /// `rnet lab status -o json`, parsed.
    pub fn status(&self) -> Value {
        let out = self.ok(&["-o", "json", "status"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad status JSON ({e}):\n{out}"))
    }

    /// The status entry of host `id`.
    pub fn host_status(&self, id: &str) -> Value {
        let s = self.status();
        let hosts = s["hosts"].as_array().expect("hosts").clone();
        hosts
            .into_iter()
            .find(|h| h["id"] == id)
            .unwrap_or_else(|| panic!("no host {id} in status"))
    }

    /// `rnet lab down`, asserted to succeed; returns stdout. Drop then does nothing.
    pub fn down(&mut self) -> String {
        self.down = true;
        self.ok(&["down"])
    }

    fn show_logs(&self) {
        let dir = self.dir();
        let mut logs = vec![dir.join("etcd.log")];
        if let Ok(entries) = fs::read_dir(&dir) {
            logs.extend(entries.flatten().map(|e| e.path().join("rnetd.log")));
        }
        for log in logs.iter().filter(|l| l.is_file()) {
            let text = fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            eprintln!("--- {} (tail) ---\n{tail}", log.display());
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if thread::panicking() {
            self.show_logs();
        }
        if !self.down {
            let _ = rnet_lab(&self.name, &["down"]);
        }
    }
}

/// Whether any live process still has an argument under `dir` (zombies have none).
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let prefix = format!("{}/", dir.display());
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline
                .split(|&b| b == 0)
                .any(|a| String::from_utf8_lossy(a).starts_with(&prefix))
        })
        .collect()
}
