//! Crash test of the embedded store: no acknowledged allocation is lost to a SIGKILL.
//!
//! Each round runs this binary again as a child (`RNET_STORE_CRASH_CHILD` set), where
//! eight writers allocate keys on one store file concurrently (a txn that creates the
//! key if absent, as a CNI ADD's address allocation does) and print each key once the
//! store acknowledged it. The parent SIGKILLs the child mid-stream, then reopens the
//! file and checks: it opens, every acknowledged key of every round so far is there
//! with its value, each writer's keys are a gap-free prefix (writes commit in order
//! and whole), and the store takes a new write. The rounds share the file, so each
//! recovery also starts from a file that was killed before.
//!
//! A SIGKILL leaves the kernel's page cache, so it catches a write acknowledged before
//! it reached the file (redb keeps a commit without an fsync in process memory until
//! the next durable commit), not one acknowledged before its fsync. The unit test
//! `store::embedded::power_cut_tests` covers that with a file layer that keeps only
//! what an fsync covered.
//!
//! Needs no root; runs without the libtest harness (`harness = false` in Cargo.toml)
//! so the same binary can be its own child.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::ChildGuard;
use rnet::store::{Compare, EmbeddedStore, Store, TxnOp};

const CHILD_ENV: &str = "RNET_STORE_CRASH_CHILD";
const ROUND_ENV: &str = "RNET_STORE_CRASH_ROUND";
const WRITERS: usize = 8;
const ROUNDS: usize = 5;
/// How long the child may take to produce the acknowledgements a round waits for.
const ACK_WAIT: Duration = Duration::from_secs(60);

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("store_crash: test");
        return;
    }
    match std::env::var(CHILD_ENV) {
        Ok(path) => child(Path::new(&path)),
        Err(_) => parent(),
    }
}

fn key(round: usize, writer: usize, i: usize) -> String {
    format!("/crash/r{round}/w{writer}/{i:06}")
}

// ---------------------------------------------------------------------------
// Child: allocate until killed
// ---------------------------------------------------------------------------

fn child(path: &Path) {
    let round: usize = std::env::var(ROUND_ENV)
        .expect("round")
        .parse()
        .expect("round number");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = EmbeddedStore::open(path).expect("open store");
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(allocate(store.clone(), round, w)))
            .collect();
        for writer in writers {
            writer.await.expect("writer");
        }
    });
}

async fn allocate(store: EmbeddedStore, round: usize, w: usize) {
    for i in 0.. {
        let key = key(round, w, i);
        let put = TxnOp::Put {
            key: key.clone(),
            value: key.clone().into_bytes(),
            lease: None,
        };
        let done = store
            .txn(vec![Compare::Absent(key.clone())], vec![put])
            .await
            .expect("txn");
        assert!(done.succeeded, "{key} was free");
        // Acknowledged: tell the parent at once (a line is one write to the pipe).
        let mut out = std::io::stdout().lock();
        writeln!(out, "{key}").expect("report ack");
        out.flush().expect("report ack");
    }
}

// ---------------------------------------------------------------------------
// Parent: kill mid-stream, reopen, check
// ---------------------------------------------------------------------------

fn parent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    let mut acked: Vec<String> = Vec::new();
    for round in 0..ROUNDS {
        // A different point in the stream each round.
        let target = 100 + 137 * round;
        let got = kill_after(&path, round, target);
        assert!(got.len() >= target, "round {round}: too few acks");
        acked.extend(got);
        let present = check(&path, round, &acked);
        println!(
            "store_crash round {round}: killed after {target} acks; {} acknowledged in all, \
             {present} present, the store reopened and took a write",
            acked.len()
        );
    }
    println!("store_crash: ok ({ROUNDS} rounds)");
}

/// Run a child writing round `round`, SIGKILL it once it acknowledged `target` writes,
/// and return every write it acknowledged (also those still in the pipe).
fn kill_after(path: &Path, round: usize, target: usize) -> Vec<String> {
    let exe = std::env::current_exe().expect("current exe");
    let child = Command::new(exe)
        .env(CHILD_ENV, path)
        .env(ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut child = ChildGuard(child);
    let stdout = child.0.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acked = Vec::new();
    let deadline = Instant::now() + ACK_WAIT;
    while acked.len() < target {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => acked.push(line),
            Err(_) => {
                let _ = child.0.kill();
                let out = stderr_of(&mut child.0);
                panic!(
                    "round {round}: the child acknowledged {} of {target} writes, then \
                     stopped; its stderr:\n{out}",
                    acked.len()
                );
            }
        }
    }
    child.0.kill().expect("SIGKILL the child");
    child.0.wait().expect("reap the child");
    // Acks written before the kill are still in the pipe: they count too.
    reader.join().expect("reader");
    acked.extend(rx.try_iter());
    acked
}

/// What a killed child wrote to stderr.
fn stderr_of(child: &mut std::process::Child) -> String {
    let _ = child.wait();
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut text);
    }
    text
}

/// Reopen the store after a kill, check every acknowledged write and that the store
/// takes a new one; returns the number of keys present.
fn check(path: &Path, round: usize, acked: &[String]) -> usize {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = EmbeddedStore::open(path)
            .unwrap_or_else(|e| panic!("round {round}: the store does not open after a kill: {e}"));
        let (kvs, revision) = store.list("/crash/").await.expect("list");
        let present: BTreeMap<String, Vec<u8>> =
            kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();

        let lost: Vec<&String> = acked.iter().filter(|k| !present.contains_key(*k)).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} of {} acknowledged writes lost after SIGKILL, e.g. {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(5)]
        );
        for (key, value) in &present {
            assert_eq!(value, key.as_bytes(), "round {round}: value of {key}");
        }
        for r in 0..=round {
            for w in 0..WRITERS {
                let count = present
                    .keys()
                    .filter(|k| k.starts_with(&format!("/crash/r{r}/w{w}/")))
                    .count();
                let expected: Vec<String> = (0..count).map(|i| key(r, w, i)).collect();
                assert!(
                    expected.iter().all(|k| present.contains_key(k)),
                    "round {round}: writer {w} of round {r} has a gap in its {count} keys"
                );
            }
        }
        // One revision per allocation (and two per earlier check), none half-applied.
        assert_eq!(
            usize::try_from(revision).expect("revision"),
            present.len() + 2 * round,
            "round {round}: revision vs keys"
        );
        store
            .put("/crash/after", b"ok".to_vec(), None)
            .await
            .unwrap_or_else(|e| panic!("round {round}: no write after the kill: {e}"));
        store.delete("/crash/after").await.expect("delete");
        present.len()
    })
}
