//! rnetd's `--store-timeout` reaches its etcd store: against an etcd that takes connections
//! and never answers (too starved to reply), rnetd's start-up check gives up after the
//! deadline it was given, and says so.
mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{wait_until, ChildGuard, Host};

/// A TCP listener in the namespace at `netns` that is never accepted from: the kernel
/// completes each handshake, nothing ever answers.
fn silent_listener_in(netns: &Path, addr: String) -> std::net::TcpListener {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let ns = fs::File::open(&netns).expect("open netns");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        std::net::TcpListener::bind(addr).expect("bind")
    })
    .join()
    .unwrap()
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn the_store_timeout_flag_sets_the_deadline_of_etcd_calls() {
    let host = Host::new("st");
    let etcd = format!("{}:2379", host.underlay());
    let _silent = silent_listener_in(&host.netns_path(), etcd.clone());
    let d = |n: &str| host.dir().join(n);
    let log_path = d("rnetd.log");
    let log = fs::File::create(&log_path).unwrap();
    let underlay = host.underlay().to_string();
    let child = Command::new("nsenter")
        .arg(format!("--net={}", host.netns_path().display()))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_rnetd"))
        .arg("--socket")
        .arg(d("sock"))
        .arg("--state-dir")
        .arg(d("state"))
        .arg("--run-dir")
        .arg(d("run"))
        .args(["--host-id", "st", "--underlay", &underlay])
        .args(["--docker-plugin-dir", "none"])
        .args(["--store", &format!("etcd://{etcd}"), "--store-timeout", "1"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawning rnetd");
    let _rnetd = ChildGuard(child);
    let read = || fs::read_to_string(&log_path).unwrap_or_default();
    wait_until(
        "rnetd to report etcd's silence",
        Duration::from_secs(30),
        || read().contains("etcd is not reachable yet"),
    );
    let text = read();
    assert!(
        text.contains("no answer within 1s") && !text.contains("no answer within 3s"),
        "rnetd did not use --store-timeout 1:\n{text}"
    );
}
