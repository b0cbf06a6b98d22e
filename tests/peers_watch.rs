//! `rnet peers --watch` against a lab: a peer appearing and its daemon stopping show up in the
//! JSON stream as they happen, SIGTERM ends the watch with status 0, bad intervals are refused.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::lab::Lab;
use common::{wait_until, ChildGuard};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

fn peer<'a>(doc: &'a Value, host: &str) -> Option<&'a Value> {
    doc["peers"].as_array()?.iter().find(|p| p["host"] == host)
}

fn listed(doc: &Value, key: &str, host: &str) -> bool {
    doc["changes"][key]
        .as_array()
        .is_some_and(|a| a.iter().any(|h| h == host))
}

/// The next document from the watcher satisfying `want`, within `within`; every line must be
/// one JSON document.
fn next_doc(
    lines: &Receiver<String>,
    seen: &mut Vec<String>,
    within: Duration,
    what: &str,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "no document with {what} within {within:?}; last lines:\n{}",
                seen[seen.len().saturating_sub(5)..].join("\n")
            )
        });
        let doc: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not one JSON document per line ({e}): {line}"));
        seen.push(line);
        if want(&doc) {
            return doc;
        }
    }
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn watch_reports_a_peer_appearing_and_its_daemon_stopping_then_exits_on_sigterm() {
    let lab = Lab::up(2, &["--lease-ttl", "2", "--probe-window", "2"]);
    // h1 forgets h2 first (daemon stopped, host released), so the watch sees it appear.
    lab.ok(&["stop", "h2"]);
    wait_until("h1 sees h2's daemon down", Duration::from_secs(15), || {
        let peers = lab.host_rnet_json("h1", &["peers"]);
        peers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["host"] == "h2" && p["state"] == "daemon-down")
    });
    lab.host_rnet_ok("h1", &["gc", "--host", "h2", "--force"]);

    let sock = lab.dir().join("h1").join("rnetd.sock");
    let mut watcher = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_rnet"))
            .arg("--socket")
            .arg(&sock)
            .args(["peers", "--watch", "--json", "--interval", "0.2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the watcher"),
    );
    let (tx, lines) = mpsc::channel();
    let stdout = watcher.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let first = next_doc(&lines, &mut seen, Duration::from_secs(5), "peers", |d| {
        d["peers"].is_array()
    });
    assert!(peer(&first, "h2").is_none(), "h2 still known: {first}");
    assert_eq!(peer(&first, "h1").unwrap()["state"], "self");

    // h2 comes back: added, live.
    lab.ok(&["start", "h2"]);
    let doc = next_doc(
        &lines,
        &mut seen,
        Duration::from_secs(10),
        "h2 added",
        |d| listed(d, "added", "h2"),
    );
    assert_eq!(peer(&doc, "h2").unwrap()["state"], "live", "{doc}");

    // Its daemon stops: changed, daemon down (its namespace still answers probes).
    lab.ok(&["stop", "h2"]);
    let doc = next_doc(
        &lines,
        &mut seen,
        Duration::from_secs(15),
        "h2 changed to daemon-down",
        |d| {
            listed(d, "changed", "h2") && peer(d, "h2").is_some_and(|p| p["state"] == "daemon-down")
        },
    );
    assert!(doc["time"].as_f64().unwrap() > 0.0);

    // SIGTERM: out promptly, status 0.
    let pid = Pid::from_raw(watcher.0.id() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    let mut status = None;
    wait_until("the watcher exits", Duration::from_secs(2), || {
        status = watcher.0.try_wait().unwrap();
        status.is_some()
    });
    let status = status.unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(watcher.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn watch_refuses_intervals_that_are_not_positive_finite_seconds() {
    for (bad, says) in [
        ("0", "more than 0"),
        ("-1", "more than 0"),
        ("NaN", "not a finite number"),
        ("inf", "not a finite number"),
        ("0.001", "from 0.1 to 86400"),
        ("soon", "not a number of seconds"),
    ] {
        // No daemon at this socket: the flags are refused before any connection.
        let out = Command::new(env!("CARGO_BIN_EXE_rnet"))
            .args(["--socket", "/nonexistent/rnetd.sock"])
            .args(["peers", "--watch", "--json", "--interval", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--interval {bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("invalid value '{bad}' for '--interval <SECONDS>'"))
                && err.contains(says),
            "--interval {bad}: {err}"
        );
        assert!(out.stdout.is_empty());
    }
    // A watch that cannot reach the daemon at all fails at once, naming the socket.
    let out = Command::new(env!("CARGO_BIN_EXE_rnet"))
        .args(["--socket", "/nonexistent/rnetd.sock"])
        .args(["peers", "--watch", "--interval", "0.1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/rnetd.sock"), "{err}");
}
