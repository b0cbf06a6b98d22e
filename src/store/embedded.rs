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
//! # Concurrency
//!
//! Every write runs in one redb write transaction while holding the in-memory
//! `State` lock, and hands its events to the live watchers before releasing it.
//! A watch registers itself under the same lock and notes the revision it saw, so it
//! replays history up to that revision from disk and receives everything after it
//! live: no gap, no duplicate. Reads use redb snapshots and take no lock.
//!
//! All redb I/O runs on tokio's blocking pool. A background task reaps expired leases
//! every 200 ms (and lazily on keep-alive or put); lease deadlines are wall-clock so they survive restarts.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{
    Database, DatabaseError, MultimapTable, MultimapTableDefinition, ReadableDatabase,
    ReadableTable, Table, TableDefinition, WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    Compare, Event, EventKind, KeyValue, LeaseId, Revision, Store, StoreError, StoreResult, TxnOp,
    TxnResult, Watch, WatchMessage,
};

const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LEASES: TableDefinition<i64, (i64, i64)> = TableDefinition::new("leases");
const LEASE_KEYS: MultimapTableDefinition<i64, &str> = MultimapTableDefinition::new("lease_keys");
const EVENTS: TableDefinition<i64, &[u8]> = TableDefinition::new("events");

const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
const META_NEXT_LEASE: &str = "next_lease";

/// How many revisions of watch history are kept before older ones are discarded.
const RETAINED_REVISIONS: i64 = 10_000;
/// How often the background task looks for expired leases.
const EXPIRY_INTERVAL: Duration = Duration::from_millis(200);
/// Revisions read per blocking call while a watch replays history.
const REPLAY_CHUNK: i64 = 256;
/// Capacity of the channel handed to the watcher (the internal one is unbounded).
const WATCH_BUFFER: usize = 256;
/// A just-dropped store may still be released by a blocking task for a moment.
const OPEN_RETRIES: u32 = 50;
const OPEN_RETRY_DELAY: Duration = Duration::from_millis(20);
/// Size of the revision/lease header in front of a stored value.
const KV_HEADER: usize = 24;

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
    /// Never sent on: its drop tells the expiry task to stop.
    _shutdown: oneshot::Sender<()>,
}

/// In-memory mirror of the write-side bookkeeping, guarded by one lock.
struct State {
    revision: Revision,
    compacted: Revision,
    watchers: Vec<Watcher>,
}

/// A live subscription: gets the matching events of every revision >= `min_revision`.
struct Watcher {
    prefix: String,
    min_revision: Revision,
    tx: mpsc::UnboundedSender<WatchMessage>,
}

/// What a new watch needs to start, decided under the state lock.
enum Registration {
    Compacted(Revision),
    Live {
        replay: Replay,
        live: mpsc::UnboundedReceiver<WatchMessage>,
    },
}

/// The history a watch must read from disk: revisions `next..=last` under `prefix`.
struct Replay {
    prefix: String,
    next: Revision,
    last: Revision,
}

/// One chunk of replayed history.
enum History {
    Messages(Vec<WatchMessage>),
    Compacted(Revision),
}

/// A lease as stored in the `leases` table.
#[derive(Clone, Copy)]
struct LeaseRecord {
    ttl: i64,
    deadline: i64,
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
        let runtime = tokio::runtime::Handle::try_current().ctx(&what)?;
        let db = open_database(path, &what)?;
        let (revision, compacted) = init_tables(&db).ctx(&what)?;
        let (shutdown, stopped) = oneshot::channel();
        let state = State {
            revision,
            compacted,
            watchers: Vec::new(),
        };
        let inner = Arc::new(Inner {
            db,
            path: path.to_path_buf(),
            retained,
            state: Mutex::new(state),
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

/// Create every table (so read transactions never miss one) and load the counters.
fn init_tables(db: &Database) -> Result<(Revision, Revision), redb::Error> {
    let txn = db.begin_write()?;
    let counters = {
        let meta = txn.open_table(META)?;
        txn.open_table(KV)?;
        txn.open_table(LEASES)?;
        txn.open_multimap_table(LEASE_KEYS)?;
        txn.open_table(EVENTS)?;
        let get = |name| meta.get(name).map(|v| v.map_or(0, |g| g.value()));
        (get(META_REVISION)?, get(META_COMPACTED)?)
    };
    txn.commit()?;
    Ok(counters)
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn lease_of(lease: Option<LeaseId>) -> LeaseId {
    lease.unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------

/// The open tables of one write transaction plus the events it produced.
///
/// `revision` is the revision this write commits at if it changes any key.
struct Writer<'t> {
    meta: Table<'t, &'static str, i64>,
    kv: Table<'t, &'static str, &'static [u8]>,
    leases: Table<'t, i64, (i64, i64)>,
    lease_keys: MultimapTable<'t, i64, &'static str>,
    log: Table<'t, i64, &'static [u8]>,
    revision: Revision,
    compacted: Revision,
    retained: i64,
    events: Vec<Event>,
    /// Set when something other than keys changed (leases, compaction).
    dirty: bool,
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

    /// Run `f` in one write transaction and publish its events.
    ///
    /// An outer error aborts the transaction; an inner one is returned after the
    /// commit (used when `f` reaped an expired lease and then refuses the request).
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Writer<'_>) -> StoreResult<StoreResult<T>>,
    ) -> StoreResult<T> {
        let mut state = self.lock();
        let txn = self.db.begin_write().ctx("beginning write")?;
        let (outcome, events, compacted, changed) = {
            let mut w = Writer::open(&txn, &state, self.retained)?;
            let outcome = f(&mut w)?;
            w.log_events()?;
            let changed = w.dirty || !w.events.is_empty();
            (outcome, w.events, w.compacted, changed)
        };
        if !changed {
            txn.abort().ctx("aborting write")?;
            return outcome;
        }
        txn.commit().ctx("committing write")?;
        state.publish(&events, compacted);
        outcome
    }

    /// Reap every lease whose deadline has passed, one revision per lease.
    fn expire_due(&self) -> StoreResult<()> {
        let now = now_millis();
        for id in self.due_leases(now)? {
            self.write(|w| w.lease_alive(id, now).map(Ok))?;
        }
        Ok(())
    }

    fn due_leases(&self, now: i64) -> StoreResult<Vec<LeaseId>> {
        let txn = self.db.begin_read().ctx("beginning read")?;
        let leases = txn.open_table(LEASES).ctx("opening leases")?;
        let mut due = Vec::new();
        for entry in leases.iter().ctx("scanning leases")? {
            let (id, rec) = entry.ctx("scanning leases")?;
            if rec.value().1 <= now {
                due.push(id.value());
            }
        }
        Ok(due)
    }
}

impl State {
    /// Record a commit and hand its events to the watchers, dropping dead ones.
    fn publish(&mut self, events: &[Event], compacted: Revision) {
        self.compacted = compacted;
        if events.is_empty() {
            return;
        }
        self.revision += 1;
        let revision = self.revision;
        self.watchers.retain(|w| w.deliver(revision, events));
    }
}

impl Watcher {
    /// Send the matching events; false when the watch is gone.
    fn deliver(&self, revision: Revision, events: &[Event]) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        if revision < self.min_revision {
            return true;
        }
        let events = matching(events, &self.prefix);
        if events.is_empty() {
            return true;
        }
        self.tx
            .send(WatchMessage::Events { revision, events })
            .is_ok()
    }
}

fn matching(events: &[Event], prefix: &str) -> Vec<Event> {
    events
        .iter()
        .filter(|e| e.kv.key.starts_with(prefix))
        .cloned()
        .collect()
}

impl<'t> Writer<'t> {
    fn open(txn: &'t WriteTransaction, state: &State, retained: i64) -> StoreResult<Self> {
        let what = "opening tables";
        Ok(Writer {
            meta: txn.open_table(META).ctx(what)?,
            kv: txn.open_table(KV).ctx(what)?,
            leases: txn.open_table(LEASES).ctx(what)?,
            lease_keys: txn.open_multimap_table(LEASE_KEYS).ctx(what)?,
            log: txn.open_table(EVENTS).ctx(what)?,
            revision: state.revision + 1,
            compacted: state.compacted,
            retained,
            events: Vec::new(),
            dirty: false,
        })
    }

    /// The store's revision as it will be after this write commits.
    fn result_revision(&self) -> Revision {
        if self.events.is_empty() {
            self.revision - 1
        } else {
            self.revision
        }
    }

    fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        load_kv(&self.kv, key)
    }

    fn put(&mut self, key: &str, value: Vec<u8>, lease: LeaseId) -> StoreResult<()> {
        let old = self.get(key)?;
        let create_revision = old.as_ref().map_or(self.revision, |kv| kv.create_revision);
        self.relink(key, old.map_or(0, |kv| kv.lease), lease)?;
        let kv = KeyValue {
            key: key.to_string(),
            value,
            create_revision,
            mod_revision: self.revision,
            lease,
        };
        self.kv
            .insert(key, encode_kv(&kv).as_slice())
            .ctx("writing key")?;
        self.events.push(Event {
            kind: EventKind::Put,
            kv,
        });
        Ok(())
    }

    fn delete(&mut self, key: &str) -> StoreResult<bool> {
        let Some(old) = self.get(key)? else {
            return Ok(false);
        };
        self.kv.remove(key).ctx("deleting key")?;
        self.relink(key, old.lease, 0)?;
        let kv = KeyValue {
            key: key.to_string(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: self.revision,
            lease: 0,
        };
        self.events.push(Event {
            kind: EventKind::Delete,
            kv,
        });
        Ok(true)
    }

    /// Move `key` from lease `old` to lease `new` in the lease index (0 = none).
    fn relink(&mut self, key: &str, old: LeaseId, new: LeaseId) -> StoreResult<()> {
        if old == new {
            return Ok(());
        }
        if old != 0 {
            self.lease_keys.remove(old, key).ctx("unlinking lease")?;
        }
        if new != 0 {
            self.lease_keys.insert(new, key).ctx("linking lease")?;
        }
        Ok(())
    }

    fn lease(&self, id: LeaseId) -> StoreResult<Option<LeaseRecord>> {
        let rec = self.leases.get(id).ctx("reading lease")?;
        Ok(rec.map(|g| {
            let (ttl, deadline) = g.value();
            LeaseRecord { ttl, deadline }
        }))
    }

    fn set_lease(&mut self, id: LeaseId, rec: LeaseRecord) -> StoreResult<()> {
        self.leases
            .insert(id, (rec.ttl, rec.deadline))
            .ctx("writing lease")?;
        self.dirty = true;
        Ok(())
    }

    fn grant(&mut self, ttl: i64, now: i64) -> StoreResult<LeaseId> {
        let id = self.meta_get(META_NEXT_LEASE)?.max(1);
        self.meta
            .insert(META_NEXT_LEASE, id + 1)
            .ctx("writing meta")?;
        let deadline = now.saturating_add(ttl.saturating_mul(1000));
        self.set_lease(id, LeaseRecord { ttl, deadline })?;
        Ok(id)
    }

    /// Whether lease `id` exists and has not expired; an expired one is reaped here.
    fn lease_alive(&mut self, id: LeaseId, now: i64) -> StoreResult<bool> {
        match self.lease(id)? {
            None => Ok(false),
            Some(rec) if rec.deadline > now => Ok(true),
            Some(_) => self.revoke(id).map(|_| false),
        }
    }

    /// Renew a live lease; `None` if it is unknown or expired.
    fn keep_alive(&mut self, id: LeaseId, now: i64) -> StoreResult<Option<i64>> {
        if !self.lease_alive(id, now)? {
            return Ok(None);
        }
        let Some(rec) = self.lease(id)? else {
            return Ok(None);
        };
        let deadline = now.saturating_add(rec.ttl.saturating_mul(1000));
        self.set_lease(id, LeaseRecord { deadline, ..rec })?;
        Ok(Some(rec.ttl))
    }

    /// Remove a lease and delete its keys; false if it did not exist.
    fn revoke(&mut self, id: LeaseId) -> StoreResult<bool> {
        if self.leases.remove(id).ctx("removing lease")?.is_none() {
            return Ok(false);
        }
        self.dirty = true;
        let mut keys = Vec::new();
        for key in self.lease_keys.remove_all(id).ctx("unlinking lease")? {
            keys.push(key.ctx("unlinking lease")?.value().to_string());
        }
        for key in keys {
            self.delete(&key)?;
        }
        Ok(true)
    }

    /// Whether `cmp` holds, with the current value of its key.
    fn compare(&self, cmp: &Compare) -> StoreResult<(bool, Option<KeyValue>)> {
        let (Compare::Absent(key) | Compare::ModRevision(key, _) | Compare::Value(key, _)) = cmp;
        let current = self.get(key)?;
        let holds = match (cmp, &current) {
            (Compare::Absent(_), current) => current.is_none(),
            (Compare::ModRevision(_, rev), Some(kv)) => kv.mod_revision == *rev,
            (Compare::Value(_, value), Some(kv)) => kv.value == *value,
            (_, None) => false,
        };
        Ok((holds, current))
    }

    /// etcd's txn: compare, then check leases (reaping expired ones), then apply.
    fn txn(
        &mut self,
        compares: &[Compare],
        ops: Vec<TxnOp>,
        now: i64,
    ) -> StoreResult<StoreResult<TxnResult>> {
        let checked = compares
            .iter()
            .map(|c| self.compare(c))
            .collect::<StoreResult<Vec<_>>>()?;
        if !checked.iter().all(|(ok, _)| *ok) {
            return Ok(Ok(TxnResult {
                succeeded: false,
                revision: self.revision - 1,
                current: checked.into_iter().map(|(_, kv)| kv).collect(),
            }));
        }
        reject_duplicates(&ops)?;
        if let Some(dead) = self.dead_lease(&ops, now)? {
            return Ok(Err(StoreError::LeaseNotFound(dead)));
        }
        for op in ops {
            self.apply(op)?;
        }
        Ok(Ok(TxnResult {
            succeeded: true,
            revision: self.result_revision(),
            current: Vec::new(),
        }))
    }

    /// The first lease named by a put of `ops` that does not exist (or expired).
    fn dead_lease(&mut self, ops: &[TxnOp], now: i64) -> StoreResult<Option<LeaseId>> {
        for op in ops {
            if let TxnOp::Put { lease, .. } = op {
                let id = lease_of(*lease);
                if id != 0 && !self.lease_alive(id, now)? {
                    return Ok(Some(id));
                }
            }
        }
        Ok(None)
    }

    fn apply(&mut self, op: TxnOp) -> StoreResult<()> {
        match op {
            TxnOp::Put { key, value, lease } => self.put(&key, value, lease_of(lease)),
            TxnOp::Delete { key } => self.delete(&key).map(drop),
        }
    }

    /// Discard history before `revision` (etcd refuses a future revision).
    fn compact(&mut self, revision: Revision) -> StoreResult<()> {
        let current = self.revision - 1;
        if revision > current {
            return Err(StoreError::Backend(format!(
                "compacting to revision {revision}: beyond current revision {current}"
            )));
        }
        self.discard_through(revision - 1)
    }

    /// Delete the event log up to and including `floor`.
    fn discard_through(&mut self, floor: Revision) -> StoreResult<()> {
        if floor <= self.compacted {
            return Ok(());
        }
        self.log
            .retain_in(..=floor, |_, _| false)
            .ctx("compacting events")?;
        self.meta
            .insert(META_COMPACTED, floor)
            .ctx("writing meta")?;
        self.compacted = floor;
        self.dirty = true;
        Ok(())
    }

    /// Append this write's events to the log and trim old history.
    fn log_events(&mut self) -> StoreResult<()> {
        if self.events.is_empty() {
            return Ok(());
        }
        let bytes = encode_events(&self.events);
        self.log
            .insert(self.revision, bytes.as_slice())
            .ctx("logging events")?;
        self.meta
            .insert(META_REVISION, self.revision)
            .ctx("writing meta")?;
        self.discard_through(self.revision - self.retained)
    }

    fn meta_get(&self, name: &str) -> StoreResult<i64> {
        let value = self.meta.get(name).ctx("reading meta")?;
        Ok(value.map_or(0, |g| g.value()))
    }
}

/// etcd rejects a txn that writes one key twice; so do we.
fn reject_duplicates(ops: &[TxnOp]) -> StoreResult<()> {
    let mut seen = std::collections::HashSet::new();
    for op in ops {
        let key = match op {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        };
        if !seen.insert(key.as_str()) {
            return Err(StoreError::Backend(format!("duplicate key {key:?} in txn")));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------

fn load_kv(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> StoreResult<Option<KeyValue>> {
    let value = table.get(key).ctx("reading key")?;
    value.map(|g| decode_kv(key, g.value())).transpose()
}

impl Inner {
    fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        let txn = self.db.begin_read().ctx("beginning read")?;
        let kv = txn.open_table(KV).ctx("opening kv")?;
        load_kv(&kv, key)
    }

    fn list(&self, prefix: &str) -> StoreResult<(Vec<KeyValue>, Revision)> {
        let txn = self.db.begin_read().ctx("beginning read")?;
        let meta = txn.open_table(META).ctx("opening meta")?;
        let revision = meta.get(META_REVISION).ctx("reading meta")?;
        let revision = revision.map_or(0, |g| g.value());
        let kv = txn.open_table(KV).ctx("opening kv")?;
        let mut out = Vec::new();
        for entry in kv.range(prefix..).ctx("listing keys")? {
            let (key, value) = entry.ctx("listing keys")?;
            if !key.value().starts_with(prefix) {
                break;
            }
            out.push(decode_kv(key.value(), value.value())?);
        }
        Ok((out, revision))
    }

    /// Register a watch under the state lock (see the module docs).
    fn register(&self, prefix: String, from: Revision) -> Registration {
        let mut state = self.lock();
        let next = if from <= 0 { state.revision + 1 } else { from };
        if next <= state.compacted {
            return Registration::Compacted(state.compacted + 1);
        }
        let last = state.revision;
        let (tx, live) = mpsc::unbounded_channel();
        state.watchers.push(Watcher {
            prefix: prefix.clone(),
            min_revision: next.max(last + 1),
            tx,
        });
        Registration::Live {
            replay: Replay { prefix, next, last },
            live,
        }
    }

    /// Read the matching history of revisions `from..=to` in one snapshot.
    fn history(&self, prefix: &str, from: Revision, to: Revision) -> StoreResult<History> {
        let txn = self.db.begin_read().ctx("beginning read")?;
        let meta = txn.open_table(META).ctx("opening meta")?;
        let compacted = meta.get(META_COMPACTED).ctx("reading meta")?;
        let compacted = compacted.map_or(0, |g| g.value());
        if from <= compacted {
            return Ok(History::Compacted(compacted + 1));
        }
        let log = txn.open_table(EVENTS).ctx("opening events")?;
        let mut out = Vec::new();
        for entry in log.range(from..=to).ctx("reading events")? {
            let (revision, bytes) = entry.ctx("reading events")?;
            let events = matching(&decode_events(bytes.value())?, prefix);
            if !events.is_empty() {
                let revision = revision.value();
                out.push(WatchMessage::Events { revision, events });
            }
        }
        Ok(History::Messages(out))
    }
}

// ---------------------------------------------------------------------------
// Background tasks
// ---------------------------------------------------------------------------

/// Reap expired leases until the store is dropped.
async fn expiry_loop(store: Weak<Inner>, mut stopped: oneshot::Receiver<()>) {
    let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        // Upgrade inside the blocking call so the task holds the store only briefly.
        let weak = store.clone();
        let reaped = tokio::task::spawn_blocking(move || match weak.upgrade() {
            Some(inner) => inner.expire_due().map_err(|e| inner.annotate(e)),
            None => Ok(()),
        })
        .await;
        match reaped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "lease expiry failed"),
            Err(e) => tracing::warn!(error = %e, "lease expiry task failed"),
        }
    }
}

/// Feed one watch: replay history from disk, then forward live events.
async fn forward(
    store: Weak<Inner>,
    replay: Replay,
    mut live: mpsc::UnboundedReceiver<WatchMessage>,
    out: mpsc::Sender<WatchMessage>,
) {
    if !replay_history(&store, replay, &out).await {
        return;
    }
    loop {
        let msg = tokio::select! {
            msg = live.recv() => msg,
            () = out.closed() => return,
        };
        let Some(msg) = msg else {
            // The store was dropped: tell the watcher rather than just closing.
            let _ = out.try_send(WatchMessage::Lost("store closed".into()));
            return;
        };
        if out.send(msg).await.is_err() {
            return;
        }
    }
}

/// Send the replayed history in chunks; false when the watch must end.
async fn replay_history(
    store: &Weak<Inner>,
    mut replay: Replay,
    out: &mpsc::Sender<WatchMessage>,
) -> bool {
    while replay.next <= replay.last {
        let to = replay.last.min(replay.next + REPLAY_CHUNK - 1);
        let msgs = match read_history(store, &replay.prefix, replay.next, to).await {
            Ok(History::Messages(msgs)) => msgs,
            Ok(History::Compacted(compact_revision)) => {
                let _ = out.send(WatchMessage::Compacted { compact_revision }).await;
                return false;
            }
            Err(e) => {
                let _ = out.send(WatchMessage::Lost(e.to_string())).await;
                return false;
            }
        };
        for msg in msgs {
            if out.send(msg).await.is_err() {
                return false;
            }
        }
        replay.next = to + 1;
    }
    true
}

async fn read_history(
    store: &Weak<Inner>,
    prefix: &str,
    from: Revision,
    to: Revision,
) -> StoreResult<History> {
    let weak = store.clone();
    let prefix = prefix.to_string();
    tokio::task::spawn_blocking(move || match weak.upgrade() {
        Some(inner) => inner
            .history(&prefix, from, to)
            .map_err(|e| inner.annotate(e)),
        None => Err(StoreError::Backend("store closed".into())),
    })
    .await
    .ctx("embedded store task")?
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(KV_HEADER + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.lease.to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

fn decode_kv(key: &str, bytes: &[u8]) -> StoreResult<KeyValue> {
    let mut d = Decoder(bytes);
    Ok(KeyValue {
        key: key.to_string(),
        create_revision: d.i64()?,
        mod_revision: d.i64()?,
        lease: d.i64()?,
        value: d.0.to_vec(),
    })
}

fn encode_events(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    put_len(&mut out, events.len());
    for e in events {
        out.push(match e.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        out.extend_from_slice(&e.kv.create_revision.to_le_bytes());
        out.extend_from_slice(&e.kv.mod_revision.to_le_bytes());
        out.extend_from_slice(&e.kv.lease.to_le_bytes());
        put_len(&mut out, e.kv.key.len());
        out.extend_from_slice(e.kv.key.as_bytes());
        put_len(&mut out, e.kv.value.len());
        out.extend_from_slice(&e.kv.value);
    }
    out
}

/// Lengths are stored as `u32`; keys and values are far smaller than 4 GiB.
fn put_len(out: &mut Vec<u8>, len: usize) {
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
}

fn decode_events(bytes: &[u8]) -> StoreResult<Vec<Event>> {
    let mut d = Decoder(bytes);
    let count = d.len()?;
    let mut events = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        events.push(d.event()?);
    }
    Ok(events)
}

/// Reads the little-endian encodings above, failing cleanly on truncated data.
struct Decoder<'a>(&'a [u8]);

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> StoreResult<&'a [u8]> {
        if self.0.len() < n {
            return Err(StoreError::Backend("corrupt record: truncated".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> StoreResult<[u8; N]> {
        self.take(N)?.try_into().ctx("corrupt record")
    }

    fn i64(&mut self) -> StoreResult<i64> {
        self.array().map(i64::from_le_bytes)
    }

    fn len(&mut self) -> StoreResult<usize> {
        let len = u32::from_le_bytes(self.array()?);
        usize::try_from(len).ctx("corrupt record")
    }

    fn event(&mut self) -> StoreResult<Event> {
        let kind = match self.array::<1>()? {
            [0] => EventKind::Put,
            [1] => EventKind::Delete,
            [k] => return Err(StoreError::Backend(format!("corrupt event kind {k}"))),
        };
        let (create_revision, mod_revision, lease) = (self.i64()?, self.i64()?, self.i64()?);
        let key_len = self.len()?;
        let key = String::from_utf8(self.take(key_len)?.to_vec()).ctx("corrupt event key")?;
        let value_len = self.len()?;
        let value = self.take(value_len)?.to_vec();
        let kv = KeyValue {
            key,
            value,
            create_revision,
            mod_revision,
            lease,
        };
        Ok(Event { kind, kv })
    }
}

// ---------------------------------------------------------------------------
// The trait
// ---------------------------------------------------------------------------

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

    async fn lease_keep_alive(&self, lease: LeaseId) -> StoreResult<i64> {
        let now = now_millis();
        self.blocking(move |inner| {
            inner.write(|w| {
                let ttl = w.keep_alive(lease, now)?;
                Ok(ttl.ok_or(StoreError::LeaseNotFound(lease)))
            })
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::time::Instant;

    use tempfile::TempDir;

    use super::*;

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
}
