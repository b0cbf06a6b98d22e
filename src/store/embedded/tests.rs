//! Tests of the embedded backend.

use std::future::Future;
use std::time::Instant;

use tempfile::TempDir;

use super::tables::{decode_events, decode_kv, encode_events, encode_kv};
use super::*;
use crate::store::{Event, EventKind};

const WAIT: Duration = Duration::from_secs(5);

fn temp_store() -> (TempDir, PathBuf, EmbeddedStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db").join("store.redb");
    let store = EmbeddedStore::open(&path).expect("open");
    (dir, path, store)
}

async fn revision(store: &EmbeddedStore) -> Revision {
    store.list("").await.expect("list").1
}

/// Poll `check` until it yields `Some`, failing after [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next(watch: &mut Watch) -> Option<WatchMessage> {
    tokio::time::timeout(WAIT, watch.rx.recv())
        .await
        .expect("watch message in time")
}

/// The next message, which must be events: (revision, [(kind, key)]).
async fn next_events(watch: &mut Watch) -> (Revision, Vec<(EventKind, String)>) {
    match next(watch).await {
        Some(WatchMessage::Events { revision, events }) => {
            let summary = events.iter().map(|e| (e.kind, e.kv.key.clone())).collect();
            (revision, summary)
        }
        other => panic!("expected events, got {other:?}"),
    }
}

fn put_op(key: &str, value: &str) -> TxnOp {
    TxnOp::Put {
        key: key.into(),
        value: value.into(),
        lease: None,
    }
}

async fn put(store: &EmbeddedStore, key: &str, value: &str) -> Revision {
    store.put(key, value.into(), None).await.expect("put")
}

#[tokio::test]
async fn every_write_bumps_the_revision_once() {
    let (_dir, _path, store) = temp_store();
    assert_eq!(revision(&store).await, 0);
    assert_eq!(put(&store, "a", "1").await, 1);
    assert_eq!(put(&store, "b", "1").await, 2);
    assert_eq!(put(&store, "a", "2").await, 3);
    let a = store.get("a").await.unwrap().expect("a exists");
    assert_eq!(
        (a.value.as_slice(), a.create_revision, a.mod_revision),
        (&b"2"[..], 1, 3)
    );
    assert_eq!(a.lease, 0);
    assert!(store.delete("b").await.unwrap());
    assert_eq!(revision(&store).await, 4);
    assert!(
        !store.delete("b").await.unwrap(),
        "second delete finds nothing"
    );
    assert_eq!(
        revision(&store).await,
        4,
        "deleting a missing key is no write"
    );
    assert_eq!(store.get("b").await.unwrap(), None);
    // Recreating a deleted key starts a new create_revision.
    assert_eq!(put(&store, "b", "x").await, 5);
    assert_eq!(store.get("b").await.unwrap().unwrap().create_revision, 5);
}

#[tokio::test]
async fn list_is_sorted_and_limited_to_the_prefix() {
    let (_dir, _path, store) = temp_store();
    for key in ["n/c", "n/a", "m/z", "n/b", "o/a", "n"] {
        put(&store, key, key).await;
    }
    let (kvs, rev) = store.list("n/").await.unwrap();
    let keys: Vec<_> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["n/a", "n/b", "n/c"]);
    assert_eq!(kvs[0].value, b"n/a");
    assert_eq!(rev, 6);
    assert_eq!(store.list("").await.unwrap().0.len(), 6);
    assert!(store.list("q/").await.unwrap().0.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_concurrent_create_wins() {
    let (_dir, _path, store) = temp_store();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let cmp = vec![Compare::Absent("lock".into())];
                let op = vec![put_op("lock", &format!("owner-{i}"))];
                (i, store.txn(cmp, op).await.expect("txn"))
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (i, result) = task.await.unwrap();
        if result.succeeded {
            assert!(result.current.is_empty());
            winners.push(i);
        } else {
            let current = result.current[0].as_ref().expect("loser sees the winner");
            assert_eq!(current.create_revision, 1);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let kv = store.get("lock").await.unwrap().unwrap();
    assert_eq!(kv.value, format!("owner-{}", winners[0]).into_bytes());
    assert_eq!(
        revision(&store).await,
        1,
        "failed txns do not bump the revision"
    );
}

#[tokio::test]
async fn txn_compares_mod_revision_and_value() {
    let (_dir, _path, store) = temp_store();
    let rev = put(&store, "k", "v1").await;
    put(&store, "other", "o").await;

    let stale = store
        .txn(
            vec![
                Compare::ModRevision("k".into(), rev + 5),
                Compare::Absent("nope".into()),
            ],
            vec![put_op("k", "v2")],
        )
        .await
        .unwrap();
    assert!(!stale.succeeded);
    assert_eq!(stale.revision, 2);
    assert_eq!(stale.current.len(), 2, "one entry per compare, in order");
    assert_eq!(stale.current[0].as_ref().unwrap().mod_revision, rev);
    assert_eq!(stale.current[1], None);
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b"v1");

    let fresh = store
        .txn(
            vec![
                Compare::ModRevision("k".into(), rev),
                Compare::Value("other".into(), b"o".to_vec()),
            ],
            vec![put_op("k", "v2")],
        )
        .await
        .unwrap();
    assert!(fresh.succeeded);
    assert_eq!(fresh.revision, 3);
    let k = store.get("k").await.unwrap().unwrap();
    assert_eq!(
        (k.value.as_slice(), k.create_revision, k.mod_revision),
        (&b"v2"[..], 1, 3)
    );

    let wrong_value = store
        .txn(vec![Compare::Value("k".into(), b"v1".to_vec())], vec![])
        .await
        .unwrap();
    assert!(!wrong_value.succeeded);
    let absent = store
        .txn(vec![Compare::ModRevision("missing".into(), 0)], vec![])
        .await
        .unwrap();
    assert!(!absent.succeeded, "ModRevision requires the key to exist");
}

#[tokio::test]
async fn txn_applies_all_ops_in_one_revision() {
    let (_dir, _path, store) = temp_store();
    put(&store, "t/old", "x").await;
    let mut watch = store.watch("t/", 0).await.unwrap();
    let ops = vec![
        put_op("t/a", "1"),
        put_op("t/b", "2"),
        TxnOp::Delete {
            key: "t/old".into(),
        },
    ];
    let result = store.txn(vec![], ops).await.unwrap();
    assert!(result.succeeded);
    assert_eq!(result.revision, 2);
    let (rev, events) = next_events(&mut watch).await;
    assert_eq!(rev, 2);
    assert_eq!(
        events,
        [
            (EventKind::Put, "t/a".to_string()),
            (EventKind::Put, "t/b".to_string()),
            (EventKind::Delete, "t/old".to_string()),
        ]
    );
    for key in ["t/a", "t/b"] {
        assert_eq!(store.get(key).await.unwrap().unwrap().mod_revision, 2);
    }
}

#[tokio::test]
async fn txn_without_changes_keeps_the_revision_and_duplicates_are_refused() {
    let (_dir, _path, store) = temp_store();
    put(&store, "k", "v").await;
    let noop = store
        .txn(
            vec![],
            vec![TxnOp::Delete {
                key: "missing".into(),
            }],
        )
        .await
        .unwrap();
    assert!(noop.succeeded);
    assert_eq!(noop.revision, 1);
    let dup = store
        .txn(vec![], vec![put_op("d", "1"), put_op("d", "2")])
        .await;
    assert!(matches!(dup, Err(StoreError::Backend(_))), "{dup:?}");
    assert_eq!(store.get("d").await.unwrap(), None);
    assert_eq!(revision(&store).await, 1);
}

#[tokio::test]
async fn expired_lease_deletes_its_keys_with_delete_events() {
    let (_dir, _path, store) = temp_store();
    let lease = store.lease_grant(1).await.unwrap();
    assert_ne!(lease, 0);
    store.put("l/a", b"1".to_vec(), Some(lease)).await.unwrap();
    store.put("l/b", b"2".to_vec(), Some(lease)).await.unwrap();
    put(&store, "l/plain", "3").await;
    assert_eq!(store.get("l/a").await.unwrap().unwrap().lease, lease);
    let mut watch = store.watch("l/", 0).await.unwrap();

    eventually("lease expiry", || async {
        store.get("l/a").await.unwrap().is_none().then_some(())
    })
    .await;
    let (rev, events) = next_events(&mut watch).await;
    assert_eq!(rev, 4, "both keys deleted in one revision");
    assert_eq!(
        events,
        [
            (EventKind::Delete, "l/a".to_string()),
            (EventKind::Delete, "l/b".to_string())
        ]
    );
    assert_eq!(store.get("l/b").await.unwrap(), None);
    assert!(store.get("l/plain").await.unwrap().is_some());
    assert!(matches!(
        store.lease_keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(id)) if id == lease
    ));
}

#[tokio::test]
async fn delete_events_carry_the_delete_revision_and_no_value() {
    let (_dir, _path, store) = temp_store();
    put(&store, "d/k", "v").await;
    let mut watch = store.watch("d/", 0).await.unwrap();
    store.delete("d/k").await.unwrap();
    match next(&mut watch).await {
        Some(WatchMessage::Events { revision, events }) => {
            assert_eq!(revision, 2);
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].kind, EventKind::Delete);
            assert_eq!(events[0].kv.mod_revision, 2);
            assert!(events[0].kv.value.is_empty());
        }
        other => panic!("expected events, got {other:?}"),
    }
}

#[tokio::test]
async fn a_renewal_syncs_nothing_and_the_next_write_carries_it_to_disk() {
    let (_dir, path, store) = temp_store();
    let lease = store.lease_grant(60).await.unwrap();
    store.put("ka", b"v".to_vec(), Some(lease)).await.unwrap();
    let group = &store.inner.group;
    let synced = group.synced();
    assert_eq!(synced, group.latest(), "an acknowledged put is on disk");
    for _ in 0..3 {
        assert_eq!(store.lease_keep_alive(lease).await.unwrap(), 60);
    }
    assert_eq!(group.synced(), synced, "a renewal led no fsync");
    assert!(group.latest() > synced, "each renewal is a commit");
    store.put("other", b"v".to_vec(), None).await.unwrap();
    assert_eq!(
        group.synced(),
        group.latest(),
        "the next write synced them all"
    );
    // And what is on disk opens with the lease and its key.
    drop(store);
    let reopened = EmbeddedStore::open(&path).unwrap();
    assert!(reopened.get("ka").await.unwrap().is_some());
    assert_eq!(reopened.lease_keep_alive(lease).await.unwrap(), 60);
}

#[tokio::test]
async fn keep_alive_holds_a_lease_past_its_ttl() {
    let (_dir, _path, store) = temp_store();
    let lease = store.lease_grant(1).await.unwrap();
    store.put("ka", b"v".to_vec(), Some(lease)).await.unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        assert_eq!(store.lease_keep_alive(lease).await.unwrap(), 1);
        assert!(
            store.get("ka").await.unwrap().is_some(),
            "kept-alive key vanished"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eventually("expiry after keep-alives stop", || async {
        store.get("ka").await.unwrap().is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn unknown_leases_are_not_found() {
    let (_dir, _path, store) = temp_store();
    let missing = 0x1234;
    let not_found =
        |r: StoreResult<_>| matches!(r, Err(StoreError::LeaseNotFound(id)) if id == missing);
    assert!(not_found(store.lease_keep_alive(missing).await.map(drop)));
    assert!(not_found(
        store.put("k", b"v".to_vec(), Some(missing)).await.map(drop)
    ));
    assert!(not_found(store.lease_revoke(missing).await));
    let txn = store
        .txn(
            vec![],
            vec![TxnOp::Put {
                key: "k".into(),
                value: vec![],
                lease: Some(missing),
            }],
        )
        .await;
    assert!(not_found(txn.map(drop)));
    assert_eq!(store.get("k").await.unwrap(), None);
    assert_eq!(revision(&store).await, 0);

    let lease = store.lease_grant(30).await.unwrap();
    store.lease_revoke(lease).await.unwrap();
    assert!(matches!(
        store.lease_keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert!(matches!(
        store.lease_revoke(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    // Some(0) means "no lease", as in etcd.
    assert_eq!(store.put("z", b"v".to_vec(), Some(0)).await.unwrap(), 1);
}

#[tokio::test]
async fn revoke_deletes_the_keys_in_one_revision() {
    let (_dir, _path, store) = temp_store();
    let lease = store.lease_grant(60).await.unwrap();
    let other = store.lease_grant(60).await.unwrap();
    assert_ne!(lease, other);
    for key in ["r/1", "r/2", "r/3"] {
        store.put(key, b"v".to_vec(), Some(lease)).await.unwrap();
    }
    store
        .put("r/other", b"v".to_vec(), Some(other))
        .await
        .unwrap();
    let mut watch = store.watch("r/", 0).await.unwrap();
    store.lease_revoke(lease).await.unwrap();
    let (rev, events) = next_events(&mut watch).await;
    assert_eq!(rev, 5);
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|(kind, _)| *kind == EventKind::Delete));
    let (left, now) = store.list("r/").await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].key, "r/other");
    assert_eq!(now, 5);
    // A lease without keys revokes without a new revision.
    let empty = store.lease_grant(60).await.unwrap();
    store.lease_revoke(empty).await.unwrap();
    assert_eq!(revision(&store).await, 5);
}

#[tokio::test]
async fn a_put_moves_the_key_off_its_old_lease() {
    let (_dir, _path, store) = temp_store();
    let first = store.lease_grant(60).await.unwrap();
    let second = store.lease_grant(60).await.unwrap();
    store.put("m", b"1".to_vec(), Some(first)).await.unwrap();
    store.put("m", b"2".to_vec(), Some(second)).await.unwrap();
    store.lease_revoke(first).await.unwrap();
    let kv = store
        .get("m")
        .await
        .unwrap()
        .expect("survives the old lease");
    assert_eq!((kv.lease, kv.create_revision), (second, 1));

    store.put("m", b"3".to_vec(), None).await.unwrap();
    store.lease_revoke(second).await.unwrap();
    let kv = store
        .get("m")
        .await
        .unwrap()
        .expect("detached by a plain put");
    assert_eq!(kv.lease, 0);

    let third = store.lease_grant(60).await.unwrap();
    store.put("gone", b"1".to_vec(), Some(third)).await.unwrap();
    store.delete("gone").await.unwrap();
    put(&store, "gone", "again").await;
    let before = revision(&store).await;
    store.lease_revoke(third).await.unwrap();
    assert!(
        store.get("gone").await.unwrap().is_some(),
        "delete unlinked the lease"
    );
    assert_eq!(revision(&store).await, before);
}

#[tokio::test]
async fn keys_revision_and_leases_survive_a_reopen() {
    let (_dir, path, store) = temp_store();
    let long = store.lease_grant(60).await.unwrap();
    let short = store.lease_grant(1).await.unwrap();
    put(&store, "p/a", "1").await;
    store
        .put("p/long", b"2".to_vec(), Some(long))
        .await
        .unwrap();
    store
        .put("p/short", b"3".to_vec(), Some(short))
        .await
        .unwrap();
    store.compact(2).await.unwrap();
    let (before, rev) = store.list("p/").await.unwrap();
    drop(store);

    let store = EmbeddedStore::open(&path).expect("reopen");
    let (after, rev_after) = store.list("p/").await.unwrap();
    assert_eq!(rev_after, rev);
    assert_eq!(after, before);
    assert_eq!(store.lease_keep_alive(long).await.unwrap(), 60);
    assert_eq!(put(&store, "p/b", "4").await, rev + 1);
    let fresh = store.lease_grant(5).await.unwrap();
    assert!(fresh != long && fresh != short, "lease ids are not reused");
    // The short lease was granted before the restart and still expires.
    eventually("pre-restart lease expiry", || async {
        store.get("p/short").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(store.get("p/long").await.unwrap().is_some());
    // The compaction survived too.
    let mut watch = store.watch("p/", 1).await.unwrap();
    assert_eq!(
        next(&mut watch).await,
        Some(WatchMessage::Compacted {
            compact_revision: 2
        })
    );
}

#[tokio::test]
async fn watch_replays_history_then_continues_live() {
    let (_dir, _path, store) = temp_store();
    for i in 1..=5 {
        put(&store, "w/k", &i.to_string()).await;
    }
    let mut watch = store.watch("w/", 3).await.unwrap();
    for expected in 3..=5 {
        let (rev, events) = next_events(&mut watch).await;
        assert_eq!((rev, events.len()), (expected, 1));
    }
    put(&store, "w/k", "6").await;
    assert_eq!(next_events(&mut watch).await.0, 6);
    store.delete("w/k").await.unwrap();
    assert_eq!(
        next_events(&mut watch).await,
        (7, vec![(EventKind::Delete, "w/k".into())])
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), watch.rx.recv())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_started_during_writes_has_no_gap_or_duplicate() {
    const WRITES: i64 = 150;
    let (_dir, _path, store) = temp_store();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..WRITES {
                put(&store, &format!("g/{}", i % 7), "v").await;
            }
        })
    };
    eventually("some writes", || async {
        (revision(&store).await >= 20).then_some(())
    })
    .await;
    let mut watch = store.watch("g/", 1).await.unwrap();
    writer.await.unwrap();
    for expected in 1..=WRITES {
        assert_eq!(next_events(&mut watch).await.0, expected);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(100), watch.rx.recv())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn watch_from_zero_starts_after_the_current_revision() {
    let (_dir, _path, store) = temp_store();
    put(&store, "z/old", "v").await;
    let mut watch = store.watch("z/", 0).await.unwrap();
    put(&store, "z/new", "v").await;
    assert_eq!(
        next_events(&mut watch).await,
        (2, vec![(EventKind::Put, "z/new".into())])
    );
    // A future start revision waits for that revision.
    let mut later = store.watch("z/", 4).await.unwrap();
    put(&store, "z/3", "v").await;
    put(&store, "z/4", "v").await;
    assert_eq!(next_events(&mut later).await.0, 4);
}

#[tokio::test]
async fn watch_only_delivers_matching_events() {
    let (_dir, _path, store) = temp_store();
    let mut watch = store.watch("a/", 1).await.unwrap();
    put(&store, "b/x", "v").await;
    store
        .txn(
            vec![],
            vec![put_op("a/1", "v"), put_op("b/2", "v"), put_op("ab", "v")],
        )
        .await
        .unwrap();
    put(&store, "a/3", "v").await;
    assert_eq!(
        next_events(&mut watch).await,
        (2, vec![(EventKind::Put, "a/1".into())])
    );
    assert_eq!(
        next_events(&mut watch).await,
        (3, vec![(EventKind::Put, "a/3".into())])
    );
    // Replay filters the same way.
    let mut replay = store.watch("a/", 1).await.unwrap();
    assert_eq!(next_events(&mut replay).await.0, 2);
    assert_eq!(next_events(&mut replay).await.0, 3);
}

#[tokio::test]
async fn compacted_history_ends_the_watch() {
    let (_dir, _path, store) = temp_store();
    for i in 0..6 {
        put(&store, "c/k", &i.to_string()).await;
    }
    store.compact(4).await.unwrap();
    let mut old = store.watch("c/", 3).await.unwrap();
    assert_eq!(
        next(&mut old).await,
        Some(WatchMessage::Compacted {
            compact_revision: 4
        })
    );
    assert_eq!(next(&mut old).await, None, "nothing after Compacted");
    let mut kept = store.watch("c/", 4).await.unwrap();
    assert_eq!(next_events(&mut kept).await.0, 4);
    // Compacting again, or to an older revision, changes nothing.
    store.compact(2).await.unwrap();
    store.compact(4).await.unwrap();
    assert_eq!(revision(&store).await, 6);
    let future = store.compact(7).await;
    assert!(
        matches!(future, Err(StoreError::Backend(ref m)) if m.contains("beyond")),
        "{future:?}"
    );
}

#[tokio::test]
async fn old_history_is_compacted_automatically() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(&dir.path().join("s.redb"), 5).unwrap();
    for i in 0..12 {
        put(&store, "h/k", &i.to_string()).await;
    }
    let mut gone = store.watch("h/", 7).await.unwrap();
    assert_eq!(
        next(&mut gone).await,
        Some(WatchMessage::Compacted {
            compact_revision: 8
        })
    );
    let mut kept = store.watch("h/", 8).await.unwrap();
    for expected in 8..=12 {
        assert_eq!(next_events(&mut kept).await.0, expected);
    }
}

#[tokio::test]
async fn a_dropped_watch_is_unsubscribed() {
    let (_dir, _path, store) = temp_store();
    let watch = store.watch("x/", 0).await.unwrap();
    let kept = store.watch("x/", 0).await.unwrap();
    assert_eq!(store.watcher_count(), 2);
    drop(watch);
    eventually("watcher cleanup", || async {
        put(&store, "x/k", "v").await;
        (store.watcher_count() == 1).then_some(())
    })
    .await;
    drop(kept);
}

#[tokio::test]
async fn dropping_the_store_ends_its_watches_and_releases_the_file() {
    let (_dir, path, store) = temp_store();
    let mut watch = store.watch("", 0).await.unwrap();
    drop(store);
    assert!(matches!(
        next(&mut watch).await,
        Some(WatchMessage::Lost(_))
    ));
    assert_eq!(next(&mut watch).await, None);
    let reopened = EmbeddedStore::open(&path).expect("file released");
    assert_eq!(revision(&reopened).await, 0);
}

#[tokio::test]
async fn open_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = EmbeddedStore::open(dir.path()).expect_err("a directory is no store");
    let msg = err.to_string();
    assert!(
        msg.contains("opening") && msg.contains(&dir.path().display().to_string()),
        "{msg}"
    );
}

#[test]
fn open_needs_a_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let err = EmbeddedStore::open(&dir.path().join("s.redb")).expect_err("no runtime");
    assert!(matches!(err, StoreError::Backend(_)));
}

#[test]
fn events_round_trip_and_truncation_is_an_error() {
    let kv = |key: &str, value: &[u8]| KeyValue {
        key: key.into(),
        value: value.to_vec(),
        create_revision: 3,
        mod_revision: 9,
        lease: -7,
    };
    let events = vec![
        Event {
            kind: EventKind::Put,
            kv: kv("ä/key", b"\x00\xff"),
        },
        Event {
            kind: EventKind::Delete,
            kv: kv("", b""),
        },
    ];
    let bytes = encode_events(&events);
    assert_eq!(decode_events(&bytes).unwrap(), events);
    assert!(decode_events(&bytes[..bytes.len() - 1]).is_err());
    let stored = encode_kv(&events[0].kv);
    assert_eq!(decode_kv("ä/key", &stored).unwrap(), events[0].kv);
    assert!(decode_kv("k", &stored[..10]).is_err());
}
