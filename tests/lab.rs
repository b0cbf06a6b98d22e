//! `rnet lab` end to end: labs built in namespaces, hosts that reach each other over the lab
//! switch, daemons stopped and restarted, links cut, labs side by side, and nothing left after
//! `rnet lab down`.
mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::lab::{ok, processes_under, rnet_lab, unique_name, Lab};
use common::{mounts_under, wait_until};
use serde_json::Value;

const ETCDCTL: [&str; 5] = [
    "etcdctl",
    "--endpoints",
    "198.18.0.1:2379",
    "--dial-timeout=2s",
    "--command-timeout=2s",
];

fn etcd_healthy(lab: &Lab, host: &str) -> bool {
    let mut argv = ETCDCTL.to_vec();
    argv.extend(["endpoint", "health"]);
    lab.exec(host, &argv).status.success()
}

fn inode(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .ino()
}

fn pid_of(v: &Value) -> u32 {
    v["pid"].as_u64().unwrap_or_else(|| panic!("no pid in {v}")) as u32
}

/// The one-line `rnet: error: …` of a command that must fail.
fn one_line_error(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "should have failed: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr:?}");
    assert!(stderr.starts_with("rnet: error: "), "{stderr}");
    stderr
}

/// Nothing of the lab at `dir` is left: no mounts, no directory, no process.
fn assert_gone(dir: &Path) {
    assert!(
        mounts_under(dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(dir)
    );
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(
        processes_under(dir).is_empty(),
        "processes left: {:?}",
        processes_under(dir)
    );
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn three_hosts_come_up_reach_each_other_and_leave_nothing_behind() {
    let mut lab = Lab::up(3, &[]);
    let dir = lab.dir();
    assert!(dir.join("lab.json").is_file());

    // Every daemon answers, as its own host, through RNET_SOCKET set by `lab exec`.
    assert!(lab.exec_ok("h1", &["rnet", "status"]).contains("h1"));
    for (h, ip) in [
        ("h1", "198.18.0.11"),
        ("h2", "198.18.0.12"),
        ("h3", "198.18.0.13"),
    ] {
        let s: Value = serde_json::from_str(&lab.exec_ok(h, &["rnet", "-o", "json", "status"]))
            .expect("status JSON");
        assert_eq!(s["host_id"], h);
        assert_eq!(s["underlay"], ip);
    }
    // Hosts reach each other over the switch; etcd answers on the switch address.
    assert!(lab.ping("h1", "198.18.0.12"));
    assert!(lab.ping("h1", "198.18.0.13"));
    assert!(lab.ping("h3", "198.18.0.11"));
    assert!(etcd_healthy(&lab, "h2"));

    let status = lab.status();
    assert_eq!(status["etcd"]["alive"], true);
    assert_eq!(status["etcd"]["answers"], true);
    assert_eq!(status["switch_netns"], true);
    let hosts = status["hosts"].as_array().unwrap().clone();
    assert_eq!(hosts.len(), 3);
    for h in &hosts {
        for key in ["netns", "alive", "api", "link_up"] {
            assert_eq!(h[key], true, "{key} of {h}");
        }
        // The daemon is in its host's network namespace, and in our mount namespace.
        let pid = pid_of(h);
        let netns = format!("{}/netns/{}", dir.display(), h["id"].as_str().unwrap());
        assert_eq!(inode(&format!("/proc/{pid}/ns/net")), inode(&netns));
        assert_eq!(
            inode(&format!("/proc/{pid}/ns/mnt")),
            inode("/proc/self/ns/mnt")
        );
    }
    // The exit status of a command passes through `lab exec`.
    let out = lab.exec("h2", &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));

    let table = lab.down();
    assert!(table.contains("removed"), "{table}");
    assert_gone(&dir);
    let again = lab.ok(&["down"]);
    assert!(again.contains("nothing to remove"), "{again}");
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_killed_daemon_restarts_and_its_namespace_mounts_outlive_it() {
    let mut lab = Lab::up(2, &[]);
    let dir = lab.dir();
    lab.exec_ok("h2", &["rnet", "create", "n1", "--subnet", "10.77.0.0/24"]);
    lab.exec_ok("h2", &["rnet", "run", "n1", "--", "true"]);
    let sandbox = dir.join("h2/run/netns");
    assert!(!mounts_under(&sandbox).is_empty(), "no sandbox mount");
    let before = pid_of(&lab.host_status("h2"));

    lab.ok(&["stop", "h2", "--kill"]);
    let h2 = lab.host_status("h2");
    assert_eq!(h2["alive"], false);
    assert_eq!(h2["api"], false);
    assert_eq!(lab.host_status("h1")["alive"], true);
    assert!(!lab.exec("h2", &["rnet", "status"]).status.success());
    // The sandbox bind mount the daemon made is still there: it used no private mount namespace.
    assert!(
        !mounts_under(&sandbox).is_empty(),
        "sandbox mount died with rnetd"
    );

    lab.ok(&["start", "h2"]);
    let h2 = lab.host_status("h2");
    assert_eq!(h2["api"], true);
    assert_ne!(pid_of(&h2), before);
    assert!(lab.exec_ok("h2", &["rnet", "ls"]).contains("n1"));
    // Starting a running daemon is refused; a graceful stop and start work too.
    one_line_error(&lab.rnet(&["start", "h2"]));
    lab.ok(&["stop", "h1"]);
    lab.ok(&["start", "h1"]);
    assert_eq!(lab.host_status("h1")["api"], true);

    lab.down();
    assert_gone(&dir);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_cut_link_isolates_a_host_until_restored_and_etcd_restarts() {
    let lab = Lab::up(3, &[]);
    assert!(lab.ping("h1", "198.18.0.13"));
    lab.ok(&["link", "h3", "down"]);
    assert!(!lab.ping("h1", "198.18.0.13"), "h3 still reachable");
    assert!(lab.ping("h1", "198.18.0.12"), "h2 cut off too");
    assert_eq!(lab.host_status("h3")["link_up"], false);
    lab.ok(&["link", "h3", "up"]);
    assert_eq!(lab.host_status("h3")["link_up"], true);
    // ARP for h3 may still be failing from the cut; it recovers on its own.
    wait_until("h1 to reach h3 again", Duration::from_secs(10), || {
        lab.ping("h1", "198.18.0.13")
    });

    lab.ok(&["etcd", "stop"]);
    assert_eq!(lab.status()["etcd"]["alive"], false);
    assert!(!etcd_healthy(&lab, "h1"));
    lab.ok(&["etcd", "start"]);
    let etcd = &lab.status()["etcd"];
    assert_eq!(etcd["alive"], true);
    assert_eq!(etcd["answers"], true);
    assert!(etcd_healthy(&lab, "h1"));
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn two_labs_coexist_and_come_down_separately() {
    let mut a = Lab::up(2, &[]);
    let b = Lab::up(2, &[]);
    // Same addresses, separate switches: each lab's hosts reach their own peers.
    assert!(a.ping("h1", "198.18.0.12"));
    assert!(b.ping("h2", "198.18.0.11"));
    a.ok(&["etcd", "stop"]);
    assert!(etcd_healthy(&b, "h1"), "stopping a's etcd stopped b's");

    let a_dir = a.dir();
    a.down();
    assert_gone(&a_dir);
    let s = b.status();
    assert_eq!(s["etcd"]["alive"], true);
    for h in s["hosts"].as_array().unwrap() {
        assert_eq!(h["api"], true, "{h}");
    }
    assert!(b.ping("h1", "198.18.0.12"));
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn an_existing_lab_is_not_rebuilt_and_a_failed_up_leaves_nothing() {
    let lab = Lab::up(1, &[]);
    let err = one_line_error(&lab.rnet(&["up", "--hosts", "1"]));
    assert!(
        err.contains(&format!("rnet lab down --name {}", lab.name())),
        "{err}"
    );
    assert_eq!(
        lab.status()["hosts"][0]["api"],
        true,
        "the failed up hurt the lab"
    );

    let name = unique_name();
    let out = rnet_lab(&name, &["up", "--hosts", "2", "--rnetd", "/bin/false"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exited during startup"), "{stderr}");
    assert_gone(&Path::new("/run/rnet/lab").join(&name));
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn missing_labs_and_hosts_are_reported_clearly() {
    common::require_root();
    let name = unique_name();
    let err = one_line_error(&rnet_lab(&name, &["status"]));
    assert!(err.contains(&format!("no lab named {name}")), "{err}");
    let out = ok("lab down", rnet_lab(&name, &["down"]));
    assert!(out.contains("nothing to remove"), "{out}");
    let out = rnet_lab(&name, &["exec", "h1", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));

    let lab = Lab::up(1, &[]);
    let out = lab.exec("h7", &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(one_line_error(&out).contains("has no host h7"));
    let out = lab.exec("h1", &["no-such-command-xyz"]);
    assert_eq!(out.status.code(), Some(127));
    // VM-lab-only exec flags are refused, not silently ignored.
    let out = lab.rnet(&["exec", "--detach", "/tmp/x.log", "h1", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(one_line_error(&out).contains("are for VM labs"));
    let err = one_line_error(&rnet_lab("bad/name", &["status"]));
    assert!(err.contains("invalid lab name"), "{err}");
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn down_stops_what_lab_exec_left_running() {
    let mut lab = Lab::up(1, &[]);
    // A unique duration finds the process again in /proc.
    let marker = format!("{}.5", 1000 + std::process::id() % 1000);
    let mut exec = std::process::Command::new(env!("CARGO_BIN_EXE_rnet"))
        .args([
            "lab",
            "exec",
            "h1",
            "--name",
            lab.name(),
            "--",
            "sleep",
            &marker,
        ])
        .spawn()
        .unwrap();
    let running = || {
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .any(|e| {
                let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
                let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                cmd.split(|b| *b == 0).any(|a| a == marker.as_bytes())
                    && !stat
                        .rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim().starts_with('Z'))
            })
    };
    wait_until("the sleep runs in h1", Duration::from_secs(10), running);
    let out = lab.down();
    assert!(
        out.contains("other process(es) in the lab's namespaces"),
        "{out}"
    );
    assert!(!running(), "the sleep outlived lab down");
    let _ = exec.wait();
}
