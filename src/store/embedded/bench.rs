//! A benchmark of the commit path. `make test` runs it small (20 allocations per writer, one
//! round) and checks what does not depend on the machine's speed: the old path costs an fsync
//! per write, group commit never more. `make bench` runs it full size (scripts/bench.sh); by
//! hand:
//!
//! ```text
//! RNET_BENCH_STORE=full cargo test --release --lib store::embedded::bench -- --nocapture --test-threads 1
//! ```
//!
//! Each write is what a CNI ADD's address allocation does: a txn that creates a key
//! only if it is absent. The baseline is the commit path before group commit: each
//! write its own durable redb commit (one fsync), same writers, same file layer.
//! Files sit in the temp directory (on disk, not tmpfs, or an fsync would cost
//! nothing); fsyncs are counted by [`TrackedFile`].

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable};

use super::tables::KV;
use super::tracked::{TrackedFile, Tracker};
use super::EmbeddedStore;
use crate::store::{Compare, Store, TxnOp};

/// Full size (`RNET_BENCH_STORE=full`) or the small run of `make test`.
fn full() -> bool {
    std::env::var("RNET_BENCH_STORE").is_ok_and(|v| v == "full")
}

fn writes_per_writer() -> usize {
    if full() {
        200
    } else {
        20
    }
}

fn rounds() -> usize {
    if full() {
        5
    } else {
        1
    }
}

/// fsyncs a run may spend beyond one per write on the old path (the database's own).
const SPARE_SYNCS: f64 = 4.0;

/// One run's figures.
struct Run {
    writes_per_sec: f64,
    syncs_per_write: f64,
    latencies: Vec<Duration>,
}

fn tracked_file(path: &Path, tracker: &Arc<Tracker>) -> TrackedFile {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("bench file");
    TrackedFile::new(file, Arc::clone(tracker))
}

fn finish(writes: usize, elapsed: Duration, syncs: u64, mut latencies: Vec<Duration>) -> Run {
    latencies.sort();
    Run {
        writes_per_sec: writes as f64 / elapsed.as_secs_f64(),
        syncs_per_write: syncs as f64 / writes as f64,
        latencies,
    }
}

/// `writers` concurrent allocators on the embedded store.
async fn store_run(writers: usize) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.redb");
    let tracker = Tracker::counting();
    let store = EmbeddedStore::open_backend(&path, tracked_file(&path, &tracker));
    let syncs_before = tracker.syncs();
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| tokio::spawn(store_writer(store.clone(), w)))
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("writer"));
    }
    let syncs = tracker.syncs() - syncs_before;
    finish(
        writers * writes_per_writer(),
        started.elapsed(),
        syncs,
        latencies,
    )
}

/// One writer's allocations, each timed from call to acknowledgement.
async fn store_writer(store: EmbeddedStore, w: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(writes_per_writer());
    for i in 0..writes_per_writer() {
        let key = format!("/bench/alloc/{w}/{i}");
        let started = Instant::now();
        let put = TxnOp::Put {
            key: key.clone(),
            value: b"endpoint".to_vec(),
            lease: None,
        };
        let done = store
            .txn(vec![Compare::Absent(key)], vec![put])
            .await
            .expect("txn");
        assert!(done.succeeded, "the key was free");
        latencies.push(started.elapsed());
    }
    latencies
}

/// The old commit path's cost: `writers` threads, each write one durable commit.
fn per_write_fsync_run(writers: usize) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("baseline.redb");
    let tracker = Tracker::counting();
    let db = Database::builder()
        .create_with_backend(tracked_file(&path, &tracker))
        .expect("baseline database");
    let syncs_before = tracker.syncs();
    let started = Instant::now();
    let latencies = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..writers)
            .map(|w| {
                let db = &db;
                scope.spawn(move || {
                    (0..writes_per_writer())
                        .map(|i| durable_insert(db, &format!("/bench/alloc/{w}/{i}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("baseline writer"))
            .collect()
    });
    let syncs = tracker.syncs() - syncs_before;
    finish(
        writers * writes_per_writer(),
        started.elapsed(),
        syncs,
        latencies,
    )
}

fn durable_insert(db: &Database, key: &str) -> Duration {
    let started = Instant::now();
    let mut txn = db.begin_write().expect("begin");
    txn.set_durability(Durability::Immediate)
        .expect("durability");
    {
        let mut kv = txn.open_table(KV).expect("kv");
        assert!(kv.get(key).expect("get").is_none(), "the key was free");
        kv.insert(key, b"endpoint".as_slice()).expect("insert");
    }
    txn.commit().expect("commit");
    started.elapsed()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// One table row: medians over the rounds, and the spread of writes/s.
fn row(what: &str, runs: &[Run]) {
    let rates: Vec<f64> = runs.iter().map(|r| r.writes_per_sec).collect();
    let (min, max) = rates
        .iter()
        .fold((f64::MAX, 0.0_f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    let pct = |p: usize| {
        median(
            runs.iter()
                .map(|r| ms(r.latencies[(r.latencies.len() - 1) * p / 100]))
                .collect(),
        )
    };
    println!(
        "| {what} | {:.0} | {min:.0}–{max:.0} | {:.3} | {:.2} | {:.2} |",
        median(rates),
        median(runs.iter().map(|r| r.syncs_per_write).collect()),
        pct(50),
        pct(99),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_throughput() {
    let (mut baseline, mut grouped, mut single) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds() {
        baseline.push(tokio::task::block_in_place(|| per_write_fsync_run(8)));
        grouped.push(store_run(8).await);
        single.push(store_run(1).await);
    }
    let speedup = median(grouped.iter().map(|r| r.writes_per_sec).collect())
        / median(baseline.iter().map(|r| r.writes_per_sec).collect());
    // A blank line first: libtest prints the test's name without a newline.
    println!();
    println!(
        "### Embedded store commits ({} allocations per writer, median of {} interleaved rounds)",
        writes_per_writer(),
        rounds()
    );
    println!();
    println!("| what | writes/s | spread | fsyncs/write | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    row(
        "baseline: one durable commit per write, 8 writers",
        &baseline,
    );
    row("embedded store, group commit, 8 writers", &grouped);
    row("embedded store, group commit, 1 writer", &single);
    println!();
    println!(
        "Group commit over one fsync per write, 8 writers: {speedup:.2}x the writes/s. \
         A write is acknowledged only after the fsync that covers it (the power-cut test, \
         src/store/embedded/power_cut_tests.rs, checks this)."
    );
    let writes = |writers: usize| (writers * writes_per_writer()) as f64;
    for r in &baseline {
        assert!(
            r.syncs_per_write >= 1.0,
            "a durable commit per write costs its fsync"
        );
    }
    for (runs, writers) in [(&grouped, 8), (&single, 1)] {
        for r in runs {
            assert!(
                r.syncs_per_write * writes(writers) <= writes(writers) + SPARE_SYNCS,
                "group commit spent {} fsyncs per write with {writers} writer(s)",
                r.syncs_per_write
            );
        }
    }
}
