//! The `embedded` store backend: one [redb] file on local disk, with etcd v3 semantics.
//!
//! # On-disk layout
//!
//! All integers are `i64`; byte encodings are little-endian.
//!
//! | table        | key                 | value                                                  |
//! |--------------|---------------------|--------------------------------------------------------|
//! | `meta`       | `&str` name         | `i64`: `revision` (last committed revision), `compacted` (highest revision whose events were discarded, 0 if none), `next_lease` (next lease id to hand out) |
//! | `kv`         | `&str` key          | bytes: `create_revision`, `mod_revision`, `lease` (8 bytes each), then the value |
//! | `leases`     | `i64` lease id      | `(ttl_secs, deadline_unix_millis)`                     |
//! | `lease_keys` | `i64` lease id      | multimap of `&str` keys attached to the lease          |
//! | `events`     | `i64` revision      | bytes: the events of that revision, see below          |
//!
//! An `events` value is a `u32` count followed by each event as: kind `u8` (0 put,
//! 1 delete), `create_revision`, `mod_revision`, `lease`, `u32` key length, key,
//! `u32` value length, value.
//!
//! # Concurrency and durability
//!
//! Every write runs in one redb write transaction while holding the in-memory
//! `State` lock. It commits without an fsync and then waits for one that covers it
//! (group commit, see `group`): concurrent writes share an fsync, and none is
//! acknowledged before its data is on disk. The fsync's leader then hands the
//! events of the commits it covered to the live watchers, in order, under the lock.
//! A watch registers itself under the same lock and notes the last published
//! revision, so it replays history up to that revision from disk and receives
//! everything after it live: no gap, no duplicate. Reads use redb snapshots and take
//! no lock; like writes, they return only once what they saw is on disk.
//!
//! All redb I/O runs on tokio's blocking pool. A background task reaps expired leases
//! every 200 ms (and lazily on keep-alive or put); lease deadlines are wall-clock so they survive restarts.

#[cfg(test)]
mod bench;
mod group;
mod lease;
#[cfg(test)]
mod power_cut_tests;
mod read;
mod tables;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tracked;
mod watch;
mod write;

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, DatabaseError};
use tokio::sync::{mpsc, oneshot};

use self::group::GroupCommit;
use self::lease::expiry_loop;
use self::tables::init_tables;
use self::watch::{forward, Registration, Watcher, WATCH_BUFFER};
use super::{
    Compare, Event, KeyValue, LeaseId, Revision, Staged, Store, StoreError, StoreResult, TxnOp,
    TxnResult, Watch, WatchMessage,
};

/// How many revisions of watch history are kept before older ones are discarded.
const RETAINED_REVISIONS: i64 = 10_000;
/// A just-dropped store may still be released by a blocking task for a moment.
const OPEN_RETRIES: u32 = 50;
const OPEN_RETRY_DELAY: Duration = Duration::from_millis(20);

/// A [`Store`] kept in one redb file on local disk; cheap to clone (a handle).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

/// What every handle shares; dropping it closes the database and stops the tasks.
struct Inner {
    db: Database,
    path: PathBuf,
    retained: i64,
    state: Mutex<State>,
    group: GroupCommit,
    /// Never sent on: its drop tells the expiry task to stop.
    _shutdown: oneshot::Sender<()>,
}

/// In-memory mirror of the write-side bookkeeping, guarded by one lock.
struct State {
    /// The latest committed revision, durable or not: the next write builds on it.
    revision: Revision,
    /// The latest revision handed to the watchers; every revision up to it is durable.
    published: Revision,
    compacted: Revision,
    /// Commits not yet on disk, oldest first, with their events.
    unpublished: VecDeque<Unpublished>,
    watchers: Vec<Watcher>,
}

/// A commit whose events wait for the fsync that covers it.
struct Unpublished {
    seq: u64,
    revision: Revision,
    events: Vec<Event>,
}

/// Turns any error into `StoreError::Backend` with a note of what was being done.
trait Context<T> {
    fn ctx(self, what: &str) -> StoreResult<T>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> StoreResult<T> {
        self.map_err(|e| StoreError::Backend(format!("{what}: {e}")))
    }
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Open (or create, with its parent directory) the store file at `path`.
    ///
    /// Must be called inside a tokio runtime: it spawns the lease-expiry task, which
    /// ends when the last handle is dropped. Opening does its file I/O on the calling
    /// thread (it is a start-up step); everything afterwards runs on the blocking pool.
    ///
    /// # Errors
    ///
    /// `StoreError::Backend` ("opening PATH: ...") when there is no runtime, the
    /// directory cannot be created, or the file cannot be opened as a redb database.
    pub fn open(path: &Path) -> StoreResult<EmbeddedStore> {
        Self::open_with(path, RETAINED_REVISIONS)
    }

    fn open_with(path: &Path, retained: i64) -> StoreResult<EmbeddedStore> {
        let what = format!("opening {}", path.display());
        tokio::runtime::Handle::try_current().ctx(&what)?;
        let db = open_database(path, &what)?;
        Self::start(db, path, retained)
    }

    /// Open a fresh store on `backend`, a test's file layer; `path` only names it.
    #[cfg(test)]
    fn open_backend(path: &Path, backend: impl redb::StorageBackend) -> EmbeddedStore {
        let db = Database::builder()
            .create_with_backend(backend)
            .expect("database on test backend");
        Self::start(db, path, RETAINED_REVISIONS).expect("store on test backend")
    }

    /// Load the counters of an open database and start the lease-expiry task.
    fn start(db: Database, path: &Path, retained: i64) -> StoreResult<EmbeddedStore> {
        let what = format!("opening {}", path.display());
        let runtime = tokio::runtime::Handle::try_current().ctx(&what)?;
        let (revision, compacted) = init_tables(&db).ctx(&what)?;
        let (shutdown, stopped) = oneshot::channel();
        let state = State {
            revision,
            published: revision,
            compacted,
            unpublished: VecDeque::new(),
            watchers: Vec::new(),
        };
        let inner = Arc::new(Inner {
            db,
            path: path.to_path_buf(),
            retained,
            state: Mutex::new(state),
            group: GroupCommit::default(),
            _shutdown: shutdown,
        });
        runtime.spawn(expiry_loop(Arc::downgrade(&inner), stopped));
        Ok(EmbeddedStore { inner })
    }

    /// Run `f` on the blocking pool, prefixing backend errors with the file path.
    async fn blocking<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner).map_err(|e| inner.annotate(e)))
            .await
            .ctx("embedded store task")?
    }

    #[cfg(test)]
    fn watcher_count(&self) -> usize {
        self.inner.lock().watchers.len()
    }
}

/// Create the parent directory and open the file, waiting briefly if a handle that
/// was just dropped is still being released by a blocking task.
fn open_database(path: &Path, what: &str) -> StoreResult<Database> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).ctx(what)?;
    }
    let mut attempts = 0;
    loop {
        match Database::create(path) {
            Err(DatabaseError::DatabaseAlreadyOpen) if attempts < OPEN_RETRIES => {
                attempts += 1;
                std::thread::sleep(OPEN_RETRY_DELAY);
            }
            other => return other.ctx(what),
        }
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn lease_of(lease: Option<LeaseId>) -> LeaseId {
    lease.unwrap_or(0)
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves the state consistent (it is updated only
        // after a commit), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn annotate(&self, err: StoreError) -> StoreError {
        match err {
            StoreError::Backend(msg) => {
                StoreError::Backend(format!("{}: {msg}", self.path.display()))
            }
            other => other,
        }
    }
}

impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        let key = key.to_string();
        self.blocking(move |inner| inner.get(&key)).await
    }

    async fn list(&self, prefix: &str) -> StoreResult<(Vec<KeyValue>, Revision)> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| inner.list(&prefix)).await
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> StoreResult<Revision> {
        let (key, lease, now) = (key.to_string(), lease_of(lease), now_millis());
        self.blocking(move |inner| {
            inner.write(|w| {
                if lease != 0 && !w.lease_alive(lease, now)? {
                    return Ok(Err(StoreError::LeaseNotFound(lease)));
                }
                w.put(&key, value, lease)?;
                Ok(Ok(w.revision))
            })
        })
        .await
    }

    async fn delete(&self, key: &str) -> StoreResult<bool> {
        let key = key.to_string();
        self.blocking(move |inner| inner.write(|w| w.delete(&key).map(Ok)))
            .await
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<TxnOp>) -> StoreResult<TxnResult> {
        let now = now_millis();
        self.blocking(move |inner| inner.write(|w| w.txn(&compares, ops, now)))
            .await
    }

    /// The commit is decided on the blocking pool; its fsync starts at once on another
    /// blocking thread (shared with concurrent writers, as for `txn`), awaited by `durable`.
    async fn txn_staged(&self, compares: Vec<Compare>, ops: Vec<TxnOp>) -> StoreResult<Staged> {
        let now = now_millis();
        let (outcome, seq) = self
            .blocking(move |inner| inner.write_staged(|w| w.txn(&compares, ops, now)))
            .await?;
        let inner = Arc::clone(&self.inner);
        let sync = tokio::task::spawn_blocking(move || {
            inner.await_durable(seq).map_err(|e| inner.annotate(e))
        });
        let durable = async move { sync.await.ctx("embedded store task")? };
        match outcome {
            Ok(result) => Ok(Staged {
                result,
                durable: Box::pin(durable),
            }),
            Err(e) => {
                // A refusal is reported only once what it read is on disk, as by `txn`.
                durable.await?;
                Err(e)
            }
        }
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> StoreResult<Watch> {
        let prefix = prefix.to_string();
        let (out, rx) = mpsc::channel(WATCH_BUFFER);
        let registration = self
            .blocking(move |inner| Ok(inner.register(prefix, from_revision)))
            .await?;
        match registration {
            Registration::Compacted(compact_revision) => {
                // The channel is new and empty, so this cannot fail for lack of room.
                let _ = out.try_send(WatchMessage::Compacted { compact_revision });
            }
            Registration::Live { replay, live } => {
                let store = Arc::downgrade(&self.inner);
                tokio::spawn(forward(store, replay, live, out));
            }
        }
        Ok(Watch { rx })
    }

    async fn lease_grant(&self, ttl_secs: i64) -> StoreResult<LeaseId> {
        // etcd raises a too-short TTL to its minimum; ours is one second.
        let (ttl, now) = (ttl_secs.max(1), now_millis());
        self.blocking(move |inner| inner.write(|w| w.grant(ttl, now).map(Ok)))
            .await
    }

    /// A renewal is committed without waiting for an fsync: the next durable write carries
    /// it to disk. A daemon renews every few seconds for as long as it runs, so waiting
    /// would sync the file every few seconds on an idle host; etcd does not persist
    /// renewals either. A renewal lost in a crash only makes the lease look older once the
    /// store is opened again, when the daemon registers anew anyway (as after any stop
    /// longer than the lease).
    async fn lease_keep_alive(&self, lease: LeaseId) -> StoreResult<i64> {
        let now = now_millis();
        self.blocking(move |inner| {
            let (outcome, _unsynced) = inner.write_staged(|w| {
                let ttl = w.keep_alive(lease, now)?;
                Ok(ttl.ok_or(StoreError::LeaseNotFound(lease)))
            })?;
            outcome
        })
        .await
    }

    async fn lease_revoke(&self, lease: LeaseId) -> StoreResult<()> {
        self.blocking(move |inner| {
            inner.write(|w| {
                let found = w.revoke(lease)?;
                Ok(if found {
                    Ok(())
                } else {
                    Err(StoreError::LeaseNotFound(lease))
                })
            })
        })
        .await
    }

    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        self.blocking(move |inner| inner.write(|w| w.compact(revision).map(Ok)))
            .await
    }
}
