//! Durability under group commit: a power cut at any moment keeps every write
//! acknowledged before it.
//!
//! The store runs on [`TrackedFile`], which keeps the image a power cut would leave
//! (only what an fsync covered). While eight writers allocate keys (half of them through
//! `txn_staged`, acknowledging once its `durable` resolves), the test cuts
//! the power several times: it notes the writes acknowledged so far, then takes the
//! durable image, opens a store on a copy of it, and checks that every noted write
//! is there, and so is every write a watcher was told of. A write acknowledged (or
//! published) before its fsync is missing from such an image;
//! a SIGKILL could not show that, as the page cache survives it.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::tables::{encode_kv, KV};
use super::tracked::{TrackedFile, Tracker};
use super::EmbeddedStore;
use crate::store::{Compare, KeyValue, Store, TxnOp, Watch, WatchMessage};

const WRITERS: usize = 8;
const WRITES_PER_WRITER: usize = 40;
/// Acknowledgements between two power cuts.
const CUT_EVERY: usize = 20;
const ROUNDS: usize = 3;
const WAIT: Duration = Duration::from_secs(60);

type Acked = Arc<Mutex<Vec<String>>>;

fn acked_now(acked: &Acked) -> Vec<String> {
    acked.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

async fn writer(store: EmbeddedStore, w: usize, acked: Acked) {
    for i in 0..WRITES_PER_WRITER {
        let key = format!("/alloc/{w}/{i:03}");
        let put = TxnOp::Put {
            key: key.clone(),
            value: key.clone().into_bytes(),
            lease: None,
        };
        let compares = vec![Compare::Absent(key.clone())];
        // Half the writers take the staged path (as an attach does): acknowledged only
        // once `durable` resolves, so a cut must never lose one of theirs either.
        let done = if w.is_multiple_of(2) {
            store.txn(compares, vec![put]).await.expect("txn")
        } else {
            let staged = store.txn_staged(compares, vec![put]).await.expect("txn");
            staged.durable.await.expect("sync");
            staged.result
        };
        assert!(done.succeeded, "{key} was free");
        acked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(key);
    }
}

/// Open a store on a copy of `image` and return the keys it holds; it must open.
async fn keys_after_cut(dir: &std::path::Path, cut: usize, image: &[u8]) -> BTreeSet<String> {
    let path = dir.join(format!("cut-{cut}.redb"));
    std::fs::write(&path, image).expect("write image");
    let store = EmbeddedStore::open(&path).expect("the store opens after a power cut");
    let (kvs, _) = store.list("/alloc/").await.expect("list after cut");
    for kv in &kvs {
        assert_eq!(kv.value, kv.key.as_bytes(), "value of {} intact", kv.key);
    }
    kvs.into_iter().map(|kv| kv.key).collect()
}

async fn round(round: usize) -> usize {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("live.redb");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("live file");
    let tracker = Tracker::imaging();
    let store = EmbeddedStore::open_backend(&path, TrackedFile::new(file, Arc::clone(&tracker)));
    let acked: Acked = Arc::default();
    // A watcher sees the same rule: no event before the fsync that covers it.
    let watched: Acked = Arc::default();
    let watch = store.watch("/alloc/", 0).await.expect("watch");
    let watcher = tokio::spawn(record_events(watch, Arc::clone(&watched)));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(store.clone(), w, Arc::clone(&acked))))
        .collect();

    let total = WRITERS * WRITES_PER_WRITER;
    let deadline = Instant::now() + WAIT;
    let mut cuts = 0;
    let mut next_cut = CUT_EVERY;
    while next_cut <= total {
        while acked_now(&acked).len() < next_cut {
            assert!(Instant::now() < deadline, "round {round}: writers stalled");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Acknowledged (or watched) first, image second: the image can only have
        // gained since.
        let mut before_cut = acked_now(&acked);
        before_cut.extend(acked_now(&watched));
        let image = tracker.durable_image();
        let kept = keys_after_cut(dir.path(), cuts, &image).await;
        let lost: Vec<_> = before_cut.iter().filter(|k| !kept.contains(*k)).collect();
        assert!(
            lost.is_empty(),
            "round {round}, cut {cuts}: {} of {} acknowledged or watched writes lost, e.g. {:?}",
            lost.len(),
            before_cut.len(),
            &lost[..lost.len().min(5)]
        );
        cuts += 1;
        next_cut += CUT_EVERY;
    }
    for task in tasks {
        task.await.expect("writer");
    }
    watcher.abort();
    cuts
}

/// Note the key of every event the watch delivers.
async fn record_events(mut watch: Watch, seen: Acked) {
    while let Some(msg) = watch.rx.recv().await {
        let WatchMessage::Events { events, .. } = msg else {
            panic!("unexpected watch message {msg:?}");
        };
        let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.extend(events.into_iter().map(|e| e.kv.key));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_keeps_every_acknowledged_write() {
    let mut cuts = 0;
    for r in 0..ROUNDS {
        cuts += round(r).await;
    }
    assert_eq!(cuts, ROUNDS * WRITERS * WRITES_PER_WRITER / CUT_EVERY);
}

/// The image is not vacuous: what was never fsynced is not in it.
#[tokio::test]
async fn the_power_cut_image_holds_only_fsynced_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("live.redb");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("live file");
    let tracker = Tracker::imaging();
    let store = EmbeddedStore::open_backend(&path, TrackedFile::new(file, Arc::clone(&tracker)));
    store
        .put("/alloc/synced", b"/alloc/synced".to_vec(), None)
        .await
        .expect("put");
    let synced = tracker.durable_image();
    // A commit without an fsync, straight through redb, bypassing the group commit.
    let unsynced = KeyValue {
        key: "/alloc/unsynced".into(),
        value: b"/alloc/unsynced".to_vec(),
        create_revision: 2,
        mod_revision: 2,
        lease: 0,
    };
    let mut txn = store.inner.db.begin_write().expect("begin");
    txn.set_durability(redb::Durability::None)
        .expect("durability");
    txn.open_table(KV)
        .expect("kv")
        .insert(unsynced.key.as_str(), encode_kv(&unsynced).as_slice())
        .expect("insert");
    txn.commit().expect("commit");
    assert!(store.get("/alloc/unsynced").await.expect("get").is_some());

    let kept = keys_after_cut(dir.path(), 0, &tracker.durable_image()).await;
    assert!(kept.contains("/alloc/synced"), "{kept:?}");
    assert!(!kept.contains("/alloc/unsynced"), "{kept:?}");
    assert_eq!(kept, keys_after_cut(dir.path(), 1, &synced).await);
}
