//! Store conformance: one suite of etcd v3 semantics, run against every backend.
//!
//! * the embedded redb store, in a temporary directory (always runs);
//! * `EtcdStore` on a real etcd (Debian's `etcd-server`) that the test starts itself
//!   (needs root, so only with `--features root-tests`).
//!
//! The etcd tests never listen in the root network namespace: each creates a fresh
//! namespace, starts etcd in it on 127.0.0.1 (the loopback of a private namespace is
//! private), and runs its client on a thread that has entered that namespace, with a
//! current-thread tokio runtime built on that thread. [`EtcdNet`]'s `Drop` kills etcd
//! and deletes the namespace and the data directory, also when the test panics.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rnet::store::etcd::EtcdStore;
use rnet::store::{
    Compare, EmbeddedStore, EventKind, KeyValue, LeaseId, Revision, Store, StoreError, StoreResult,
    TxnOp, TxnResult, Watch, WatchMessage,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long to wait for any one expected message or state.
const WAIT: Duration = Duration::from_secs(10);
/// How long etcd may take to start answering.
const READY_WAIT: Duration = Duration::from_secs(30);
/// A call to a stopped etcd must fail within this.
const UNAVAILABLE_WITHIN: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(100);
/// A watch on a connection that went silent ends after the keep-alive ping interval
/// plus its timeout (see `rnet::store::etcd`), with some slack.
const PARTITION_WAIT: Duration = Duration::from_secs(25);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn put_op(key: &str, value: &str) -> TxnOp {
    TxnOp::Put {
        key: key.into(),
        value: value.into(),
        lease: None,
    }
}

fn leased_put(key: &str, lease: LeaseId) -> TxnOp {
    TxnOp::Put {
        key: key.into(),
        value: b"leased".to_vec(),
        lease: Some(lease),
    }
}

async fn put<S: Store>(s: &S, key: &str, value: &str) -> Revision {
    s.put(key, value.into(), None).await.expect("put")
}

async fn get<S: Store>(s: &S, key: &str) -> Option<KeyValue> {
    s.get(key).await.expect("get")
}

/// The store's current revision.
async fn revision<S: Store>(s: &S) -> Revision {
    s.list("/no-such-prefix/").await.expect("list").1
}

async fn txn<S: Store>(s: &S, compares: Vec<Compare>, ops: Vec<TxnOp>) -> TxnResult {
    s.txn(compares, ops).await.expect("txn")
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
            for e in &events {
                assert_eq!(e.kv.mod_revision, revision, "{e:?}");
                if e.kind == EventKind::Delete {
                    assert!(e.kv.value.is_empty(), "{e:?}");
                }
            }
            let summary = events.iter().map(|e| (e.kind, e.kv.key.clone())).collect();
            (revision, summary)
        }
        other => panic!("expected events, got {other:?}"),
    }
}

fn one(kind: EventKind, key: &str) -> Vec<(EventKind, String)> {
    vec![(kind, key.to_string())]
}

fn assert_lease_not_found<T: Debug>(result: StoreResult<T>, lease: LeaseId) {
    match result {
        Err(StoreError::LeaseNotFound(id)) => assert_eq!(id, lease),
        other => panic!("expected LeaseNotFound({lease:#x}), got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------

/// Everything the daemon relies on, in one pass over a fresh store.
async fn conformance<S: Store>(s: S) {
    keys_carry_their_revisions(&s).await;
    list_is_sorted_and_limited_to_the_prefix(&s).await;
    delete_says_whether_the_key_existed(&s).await;
    create_if_absent_has_exactly_one_winner(&s).await;
    txn_compares(&s).await;
    txn_writes_commit_in_one_revision(&s).await;
    lease_expiry_deletes_keys_with_delete_events(&s).await;
    revoked_leases_are_not_found(&s).await;
    watch_replays_history_then_goes_live(&s).await;
    watch_filters_by_prefix(&s).await;
    compaction_ends_watches_on_old_history(&s).await;
}

async fn keys_carry_their_revisions<S: Store>(s: &S) {
    let r0 = revision(s).await;
    let r1 = put(s, "/kv/a", "1").await;
    assert_eq!(r1, r0 + 1, "every write bumps the revision by one");
    let want = KeyValue {
        key: "/kv/a".into(),
        value: b"1".to_vec(),
        create_revision: r1,
        mod_revision: r1,
        lease: 0,
    };
    assert_eq!(get(s, "/kv/a").await, Some(want));
    let r2 = put(s, "/kv/a", "2").await;
    assert_eq!(r2, r1 + 1);
    let kv = get(s, "/kv/a").await.expect("key");
    assert_eq!((kv.create_revision, kv.mod_revision), (r1, r2));
    assert_eq!(kv.value, b"2");
    assert_eq!(get(s, "/kv/missing").await, None);
    assert_eq!(revision(s).await, r2, "reads do not bump the revision");
}

async fn list_is_sorted_and_limited_to_the_prefix<S: Store>(s: &S) {
    for key in ["/ls/b", "/ls/a", "/ls-other/x", "/ls/c/d", "/l"] {
        put(s, key, "x").await;
    }
    let last = put(s, "/ls/0", "x").await;
    let (kvs, rev) = s.list("/ls/").await.expect("list");
    let keys: Vec<_> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/ls/0", "/ls/a", "/ls/b", "/ls/c/d"]);
    assert_eq!(rev, last, "list reports the revision it read at");
    let (kvs, rev) = s.list("/nothing-here/").await.expect("empty list");
    assert!(kvs.is_empty());
    assert_eq!(rev, last);
}

async fn delete_says_whether_the_key_existed<S: Store>(s: &S) {
    let r = put(s, "/del/k", "v").await;
    assert!(s.delete("/del/k").await.expect("delete"));
    assert_eq!(revision(s).await, r + 1);
    assert_eq!(get(s, "/del/k").await, None);
    assert!(!s.delete("/del/k").await.expect("delete missing"));
    assert_eq!(revision(s).await, r + 1, "deleting nothing is no write");
}

async fn create_if_absent_has_exactly_one_winner<S: Store>(s: &S) {
    const KEY: &str = "/race/k";
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let ops = vec![put_op(KEY, &format!("task-{i}"))];
                (i, s.txn(vec![Compare::Absent(KEY.into())], ops).await)
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        let (i, result) = task.await.expect("task");
        results.push((i, result.expect("txn")));
    }
    let winners: Vec<_> = results.iter().filter(|(_, r)| r.succeeded).collect();
    assert_eq!(winners.len(), 1, "exactly one create wins: {results:?}");
    let (winner, won) = winners[0];
    let kv = get(s, KEY).await.expect("created");
    assert_eq!(kv.value, format!("task-{winner}").into_bytes());
    assert_eq!(kv.create_revision, won.revision);
    for (_, lost) in results.iter().filter(|(_, r)| !r.succeeded) {
        assert_eq!(
            lost.current,
            vec![Some(kv.clone())],
            "losers see the winner"
        );
    }
}

async fn txn_compares<S: Store>(s: &S) {
    let (k, missing) = ("/cmp/k", "/cmp/missing");
    let r = put(s, k, "v1").await;

    let ok = txn(
        s,
        vec![Compare::ModRevision(k.into(), r)],
        vec![put_op(k, "v2")],
    )
    .await;
    assert!(ok.succeeded);
    assert_eq!(ok.revision, r + 1);
    assert!(ok.current.is_empty());
    let now = get(s, k).await.expect("k");

    let stale = txn(
        s,
        vec![Compare::ModRevision(k.into(), r)],
        vec![put_op(k, "v3")],
    )
    .await;
    assert!(!stale.succeeded, "a stale mod revision fails");
    assert_eq!(stale.revision, r + 1, "a failed txn writes nothing");
    assert_eq!(stale.current, vec![Some(now.clone())]);

    for rev in [0, r] {
        let cmp = Compare::ModRevision(missing.into(), rev);
        let res = txn(s, vec![cmp], vec![put_op(missing, "x")]).await;
        assert!(
            !res.succeeded,
            "ModRevision({rev}) of a missing key is false"
        );
        assert_eq!(res.current, vec![None]);
    }
    assert_eq!(get(s, missing).await, None);

    let absent = txn(s, vec![Compare::Absent(k.into())], vec![put_op(k, "x")]).await;
    assert!(!absent.succeeded, "Absent of an existing key is false");

    let value = txn(s, vec![Compare::Value(k.into(), b"v2".to_vec())], vec![]).await;
    assert!(value.succeeded, "Value holds");
    let wrong = txn(s, vec![Compare::Value(k.into(), b"nope".to_vec())], vec![]).await;
    assert!(!wrong.succeeded);
    assert_eq!(wrong.current, vec![Some(now.clone())]);
    let empty = txn(s, vec![Compare::Value(missing.into(), Vec::new())], vec![]).await;
    assert!(
        !empty.succeeded,
        "Value of a missing key is false, even empty"
    );

    let compares = vec![
        Compare::Absent(missing.into()),
        Compare::ModRevision(k.into(), 1),
        Compare::Value("/cmp/other".into(), b"x".to_vec()),
    ];
    let mixed = txn(s, compares, vec![put_op(missing, "x")]).await;
    assert!(!mixed.succeeded);
    assert_eq!(
        mixed.current,
        vec![None, Some(now), None],
        "in compare order"
    );
    assert_eq!(revision(s).await, r + 1, "failed txns never write");

    let always = txn(s, vec![], vec![put_op("/cmp/free", "x")]).await;
    assert!(always.succeeded, "no compares: the writes apply");
}

async fn txn_writes_commit_in_one_revision<S: Store>(s: &S) {
    put(s, "/one/c", "x").await;
    let before = revision(s).await;
    let ops = vec![
        put_op("/one/a", "1"),
        put_op("/one/b", "2"),
        TxnOp::Delete {
            key: "/one/c".into(),
        },
    ];
    let res = txn(s, vec![], ops).await;
    assert!(res.succeeded);
    assert_eq!(
        res.revision,
        before + 1,
        "all writes of a txn share one revision"
    );
    for key in ["/one/a", "/one/b"] {
        assert_eq!(get(s, key).await.expect(key).mod_revision, before + 1);
    }
    assert_eq!(get(s, "/one/c").await, None);

    let noop = vec![TxnOp::Delete {
        key: "/one/never".into(),
    }];
    let res = txn(s, vec![], noop).await;
    assert!(res.succeeded);
    assert_eq!(
        res.revision,
        before + 1,
        "a txn that changes nothing is no write"
    );
}

async fn lease_expiry_deletes_keys_with_delete_events<S: Store>(s: &S) {
    let lease = s.lease_grant(3).await.expect("grant");
    assert_ne!(lease, 0);
    s.put("/lease/held", b"v".to_vec(), Some(lease))
        .await
        .expect("leased put");
    assert_eq!(get(s, "/lease/held").await.expect("held").lease, lease);
    let mut watch = s.watch("/lease/", 0).await.expect("watch");

    // Renewed for longer than its TTL, the lease holds.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let ttl = s.lease_keep_alive(lease).await.expect("keep alive");
        assert!(ttl >= 3, "ttl {ttl}");
        // Renewal pacing over more than the TTL on the store's own (wall) clock, which
        // etcd keeps: the elapsed time is what is tested.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(get(s, "/lease/held").await.is_some(), "renewed lease holds");

    // Left alone, it expires and its key is deleted, visibly to watches.
    let (_, events) = next_events(&mut watch).await;
    assert_eq!(events, one(EventKind::Delete, "/lease/held"));
    assert_eq!(get(s, "/lease/held").await, None);
    assert_lease_not_found(s.lease_keep_alive(lease).await, lease);
}

async fn revoked_leases_are_not_found<S: Store>(s: &S) {
    let lease = s.lease_grant(60).await.expect("grant");
    let live = s.lease_grant(60).await.expect("grant");
    for key in ["/revoke/a", "/revoke/b"] {
        s.put(key, b"v".to_vec(), Some(lease)).await.expect("put");
    }
    assert!(s.lease_keep_alive(lease).await.expect("renew") >= 60);
    let mut watch = s.watch("/revoke/", 0).await.expect("watch");

    s.lease_revoke(lease).await.expect("revoke");
    let (_, mut events) = next_events(&mut watch).await;
    events.sort_by(|a, b| a.1.cmp(&b.1));
    let want = vec![
        (EventKind::Delete, "/revoke/a".to_string()),
        (EventKind::Delete, "/revoke/b".to_string()),
    ];
    assert_eq!(events, want, "revoking deletes the keys in one revision");

    assert_lease_not_found(s.lease_keep_alive(lease).await, lease);
    assert_lease_not_found(s.lease_revoke(lease).await, lease);
    assert_lease_not_found(s.put("/revoke/c", b"v".to_vec(), Some(lease)).await, lease);
    let ops = vec![leased_put("/revoke/d", lease)];
    assert_lease_not_found(s.txn(vec![], ops).await, lease);
    let ops = vec![
        leased_put("/revoke/e", live),
        leased_put("/revoke/f", lease),
    ];
    assert_lease_not_found(s.txn(vec![], ops).await, lease);
    assert_eq!(
        get(s, "/revoke/e").await,
        None,
        "a refused txn writes nothing"
    );
    s.lease_revoke(live).await.expect("revoke live");
}

async fn watch_replays_history_then_goes_live<S: Store>(s: &S) {
    let r0 = revision(s).await;
    let ra = put(s, "/w/a", "1").await;
    put(s, "/other/x", "ignored").await;
    let rt = txn(s, vec![], vec![put_op("/w/b", "2"), put_op("/w/c", "3")])
        .await
        .revision;
    assert!(s.delete("/w/a").await.expect("delete"));
    let rd = revision(s).await;

    let mut watch = s.watch("/w/", r0 + 1).await.expect("watch");
    assert_eq!(
        next_events(&mut watch).await,
        (ra, one(EventKind::Put, "/w/a"))
    );
    let both = vec![
        (EventKind::Put, "/w/b".to_string()),
        (EventKind::Put, "/w/c".to_string()),
    ];
    assert_eq!(next_events(&mut watch).await, (rt, both));
    assert_eq!(
        next_events(&mut watch).await,
        (rd, one(EventKind::Delete, "/w/a"))
    );

    let rl = put(s, "/w/d", "4").await;
    match next(&mut watch).await {
        Some(WatchMessage::Events { revision, events }) => {
            assert_eq!(revision, rl);
            let kv = &events[0].kv;
            assert_eq!((kv.create_revision, kv.mod_revision), (rl, rl));
            assert_eq!(kv.value, b"4");
        }
        other => panic!("expected the live put, got {other:?}"),
    }

    let mut from_now = s.watch("/w/", 0).await.expect("watch from now");
    let mut from_middle = s.watch("/w/", rt).await.expect("watch from rt");
    let re = put(s, "/w/e", "5").await;
    assert_eq!(
        next_events(&mut from_now).await,
        (re, one(EventKind::Put, "/w/e"))
    );
    assert_eq!(
        next_events(&mut from_middle).await.0,
        rt,
        "start is inclusive"
    );
}

async fn watch_filters_by_prefix<S: Store>(s: &S) {
    let mut watch = s.watch("/pf/a", 0).await.expect("watch");
    put(s, "/pf/b", "no").await;
    let rab = put(s, "/pf/ab", "yes").await;
    put(s, "/pfx", "no").await;
    let ra = put(s, "/pf/a", "yes").await;
    assert_eq!(
        next_events(&mut watch).await,
        (rab, one(EventKind::Put, "/pf/ab"))
    );
    assert_eq!(
        next_events(&mut watch).await,
        (ra, one(EventKind::Put, "/pf/a"))
    );
}

async fn compaction_ends_watches_on_old_history<S: Store>(s: &S) {
    let r1 = put(s, "/cp/a", "1").await;
    let r2 = put(s, "/cp/a", "2").await;
    let r3 = put(s, "/cp/b", "3").await;
    s.compact(r3).await.expect("compact");

    let mut old = s.watch("/cp/", r1).await.expect("watch old");
    match next(&mut old).await {
        Some(WatchMessage::Compacted { compact_revision }) => assert_eq!(compact_revision, r3),
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert_eq!(next(&mut old).await, None, "a compacted watch ends");

    let mut kept = s.watch("/cp/", r3).await.expect("watch kept");
    assert_eq!(
        next_events(&mut kept).await,
        (r3, one(EventKind::Put, "/cp/b"))
    );

    s.compact(r2)
        .await
        .expect("compacting old history again is a no-op");
    let err = s.compact(r3 + 1000).await.expect_err("future revision");
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let (kvs, _) = s.list("/cp/").await.expect("list");
    assert_eq!(kvs.len(), 2, "compaction keeps the keys");
}

// ---------------------------------------------------------------------------
// The embedded backend
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).expect("open");
    conformance(store).await;
}

// ---------------------------------------------------------------------------
// A real etcd in a private network namespace
// ---------------------------------------------------------------------------

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

static NEXT_NETNS: AtomicU32 = AtomicU32::new(0);

fn endpoint() -> String {
    format!("127.0.0.1:{CLIENT_PORT}")
}

/// Owns a network namespace, an etcd data directory and the etcd process; dropping
/// it kills etcd and deletes the namespace and the directory.
struct EtcdNet {
    netns: String,
    dir: tempfile::TempDir,
    etcd: Mutex<Option<Child>>,
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status();
    let status = status.unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(status.success(), "{program} {args:?}: {status}");
}

impl EtcdNet {
    /// A fresh namespace with `lo` up; etcd is not started yet.
    fn new() -> EtcdNet {
        let n = NEXT_NETNS.fetch_add(1, Ordering::SeqCst);
        let netns = format!("rnt-etcd-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &netns]);
        let net = EtcdNet {
            netns,
            dir: tempfile::tempdir().expect("tempdir"),
            etcd: Mutex::new(None),
        };
        run("ip", &["-n", &net.netns, "link", "set", "lo", "up"]);
        net
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.etcd.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Start etcd in the namespace (on the same data directory every time).
    fn start(&self) {
        let client = format!("http://127.0.0.1:{CLIENT_PORT}");
        let peer = format!("http://127.0.0.1:{PEER_PORT}");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["--", "etcd", "--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning etcd (is etcd-server installed?)");
        *self.child() = Some(child);
    }

    /// Kill etcd (SIGKILL: no goodbye to its clients) and reap it.
    fn stop(&self) {
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Bring the namespace's loopback "up" or "down" (down: packets are dropped).
    fn set_loopback(&self, state: &str) {
        run("ip", &["-n", &self.netns, "link", "set", "lo", state]);
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<_> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Run `f` to completion on a thread inside the namespace, on a current-thread
    /// runtime built there (so every socket it opens is in the namespace).
    fn run<F, Fut>(&self, f: F)
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = ()>,
    {
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                let ns = File::open(format!("/run/netns/{}", self.netns)).expect("netns");
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(f());
            });
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        });
    }

    /// Poll `store` until etcd answers (never a fixed sleep).
    async fn wait_ready(&self, store: &EtcdStore) {
        let deadline = Instant::now() + READY_WAIT;
        loop {
            match store.get("/ready-probe").await {
                Ok(_) => return,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "etcd not ready yet");
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => panic!("etcd not ready: {e}\netcd log:\n{}", self.log_tail()),
            }
        }
    }
}

impl Drop for EtcdNet {
    fn drop(&mut self) {
        self.stop();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// etcd's count of live watchers, from its Prometheus metrics on the client port.
async fn etcd_watchers() -> u64 {
    let mut conn = tokio::net::TcpStream::connect(endpoint())
        .await
        .expect("metrics connect");
    // HTTP/1.0: no chunked encoding to split the lines.
    let request = "GET /metrics HTTP/1.0\r\n\r\n";
    conn.write_all(request.as_bytes()).await.expect("request");
    let mut body = String::new();
    conn.read_to_string(&mut body).await.expect("metrics");
    let line = body
        .lines()
        .find(|l| l.starts_with("etcd_debugging_mvcc_watcher_total "))
        .expect("watcher gauge in the metrics");
    let value = line.rsplit(' ').next().unwrap_or_default();
    value.parse::<f64>().expect("gauge value") as u64
}

async fn eventually_watchers(want: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let have = etcd_watchers().await;
        if have == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "etcd has {have} watchers, want {want}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `fut` must fail with `Unavailable` naming the endpoint, within [`UNAVAILABLE_WITHIN`].
async fn expect_unavailable<T: Debug>(what: &str, fut: impl Future<Output = StoreResult<T>>) {
    let result = tokio::time::timeout(UNAVAILABLE_WITHIN, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {UNAVAILABLE_WITHIN:?}"));
    match result {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains(&endpoint()), "{what}: {msg}"),
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn etcd_store_conforms() {
    let net = EtcdNet::new();
    net.start();
    net.run(|| async {
        let store = EtcdStore::connect(&[endpoint()]).await.expect("connect");
        net.wait_ready(&store).await;
        conformance(store.clone()).await;

        // Dropping a watch cancels it in etcd.
        eventually_watchers(0).await;
        let watch = store.watch("/gone/", 0).await.expect("watch");
        eventually_watchers(1).await;
        drop(watch);
        eventually_watchers(0).await;
    });
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn etcd_store_is_unavailable_while_etcd_is_down_and_recovers() {
    let net = EtcdNet::new();
    net.run(|| async {
        // Connecting needs no etcd; calls fail fast until it is there.
        let store = EtcdStore::connect(&[endpoint()]).await.expect("connect");
        expect_unavailable("get before etcd started", store.get("/f/k")).await;
        net.start();
        net.wait_ready(&store).await;

        store.put("/f/k", b"v".to_vec(), None).await.expect("put");
        let lease = store.lease_grant(60).await.expect("grant");
        store.lease_keep_alive(lease).await.expect("renew");
        let mut watch = store.watch("/f/", 0).await.expect("watch");

        net.stop();
        match next(&mut watch).await {
            Some(WatchMessage::Lost(why)) => assert!(why.contains(&endpoint()), "{why}"),
            other => panic!("expected Lost, got {other:?}"),
        }
        assert_eq!(next(&mut watch).await, None, "a lost watch ends");
        expect_unavailable("get", store.get("/f/k")).await;
        expect_unavailable("put", store.put("/f/k", b"w".to_vec(), None)).await;
        expect_unavailable("txn", store.txn(vec![], vec![put_op("/f/t", "x")])).await;
        expect_unavailable("keep-alive", store.lease_keep_alive(lease)).await;
        expect_unavailable("watch", async { store.watch("/f/", 0).await.map(drop) }).await;

        // The same handle works again once etcd is back (same data directory).
        net.start();
        net.wait_ready(&store).await;
        assert_eq!(get(&store, "/f/k").await.expect("kept").value, b"v");
        assert!(store.lease_keep_alive(lease).await.expect("lease kept") > 0);
        let mut watch = store.watch("/f/", 0).await.expect("watch again");
        let rev = put(&store, "/f/k2", "x").await;
        assert_eq!(
            next_events(&mut watch).await,
            (rev, one(EventKind::Put, "/f/k2"))
        );

        // A silent etcd (its packets dropped, connection still open): the call
        // deadline fires, and keep-alive pings end the watch.
        net.set_loopback("down");
        expect_unavailable("get from a silent etcd", store.get("/f/k")).await;
        match tokio::time::timeout(PARTITION_WAIT, watch.rx.recv()).await {
            Ok(Some(WatchMessage::Lost(_))) => {}
            other => panic!("expected Lost from keep-alive, got {other:?}"),
        }
        net.set_loopback("up");
        net.wait_ready(&store).await;
        assert_eq!(get(&store, "/f/k2").await.expect("k2").mod_revision, rev);
    });
}

/// Records written for the paging test: over 4 MiB in all, gRPC's default limit
/// for one message (so a one-message list fails).
const MANY: usize = 20_000;

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn etcd_list_pages_past_the_grpc_message_limit_at_one_revision() {
    let net = EtcdNet::new();
    net.start();
    net.run(|| async {
        let store = EtcdStore::connect(&[endpoint()]).await.expect("connect");
        net.wait_ready(&store).await;
        // Endpoint-sized values (~300 bytes), 100 puts a txn (etcd allows 128).
        let value = |i: usize| format!("{{\"id\":\"{i:064}\",\"pad\":\"{}\"}}", "x".repeat(220));
        let keys: Vec<String> = (0..MANY).map(|i| format!("/big/ep/{i:06}")).collect();
        for chunk in keys.chunks(100) {
            let ops = chunk
                .iter()
                .map(|k| put_op(k, &value(k[8..].parse().unwrap())))
                .collect();
            assert!(txn(&store, vec![], ops).await.succeeded);
        }
        let total: usize = keys.iter().map(|k| k.len() + value(0).len()).sum();
        assert!(total > 4 << 20, "the records must exceed 4 MiB ({total})");
        // A key right after the prefix range, which no page may include.
        put(&store, "/big/eq", "outside").await;

        let (kvs, rev) = store
            .list("/big/ep/")
            .await
            .expect("list of 20,000 records");
        assert_eq!(kvs.len(), MANY);
        let listed: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(listed, keys, "every key once, sorted");
        assert!(kvs.iter().all(|kv| kv.mod_revision <= rev));

        // Every page is read at the first page's revision: writes landing while the
        // list runs are not in it, however many pages it takes.
        let writer = store.clone();
        let churn = tokio::spawn(async move {
            for i in 0..200 {
                writer
                    .put(&format!("/big/ep/{i:06}"), b"changed".to_vec(), None)
                    .await
                    .expect("churn put");
                writer
                    .put(&format!("/big/ep/zz{i:03}"), b"new".to_vec(), None)
                    .await
                    .expect("churn put");
            }
        });
        let mut snapshots = 0;
        while !churn.is_finished() {
            let (kvs, rev) = store.list("/big/ep/").await.expect("list under churn");
            assert!(
                kvs.iter().all(|kv| kv.mod_revision <= rev),
                "a record newer than the list's revision {rev}"
            );
            let changed = kvs.iter().filter(|kv| kv.value == b"changed").count();
            let added = kvs.iter().filter(|kv| kv.key.contains("/zz")).count();
            // Each churn step writes "changed" then a new key: a snapshot sees both
            // counts equal, or one more change than additions (between the two).
            assert!(
                added == changed || added + 1 == changed,
                "not one snapshot: {changed} changed, {added} added at revision {rev}"
            );
            assert_eq!(kvs.len(), MANY + added);
            snapshots += 1;
        }
        churn.await.expect("churn");
        assert!(snapshots > 0);
    });
}
