//! Writes: one redb write transaction per call, its revision and event log, and
//! the hand-off of a durable commit to the watchers.

use redb::{Durability, MultimapTable, ReadableTable, Table, WriteTransaction};

use super::read::load_kv;
use super::tables::{
    encode_events, encode_kv, EVENTS, KV, LEASES, LEASE_KEYS, META, META_COMPACTED, META_REVISION,
};
use super::{lease_of, Context, Inner, State, Unpublished};
use crate::store::{
    Compare, Event, EventKind, KeyValue, LeaseId, Revision, StoreError, StoreResult, TxnOp,
    TxnResult,
};

/// The open tables of one write transaction plus the events it produced.
///
/// `revision` is the revision this write commits at if it changes any key.
pub(super) struct Writer<'t> {
    pub(super) meta: Table<'t, &'static str, i64>,
    kv: Table<'t, &'static str, &'static [u8]>,
    pub(super) leases: Table<'t, i64, (i64, i64)>,
    pub(super) lease_keys: MultimapTable<'t, i64, &'static str>,
    log: Table<'t, i64, &'static [u8]>,
    pub(super) revision: Revision,
    compacted: Revision,
    retained: i64,
    events: Vec<Event>,
    /// Set when something other than keys changed (leases, compaction).
    pub(super) dirty: bool,
}

impl Inner {
    /// Run `f` in one write transaction, and return once it is on disk.
    ///
    /// An outer error aborts the transaction; an inner one is returned after the
    /// commit (used when `f` reaped an expired lease and then refuses the request).
    /// The commit itself skips the fsync: [`Inner::await_durable`] shares one among
    /// concurrent writers. A write that changed nothing still waits for the commits it
    /// read, so no caller acts on data a crash could take back.
    pub(super) fn write<T>(
        &self,
        f: impl FnOnce(&mut Writer<'_>) -> StoreResult<StoreResult<T>>,
    ) -> StoreResult<T> {
        let (outcome, seq) = self.write_staged(f)?;
        self.await_durable(seq)?;
        outcome
    }

    /// As [`Inner::write`], without waiting for the fsync: returns the outcome and the
    /// commit number that [`Inner::await_durable`] must be given before it is acknowledged.
    pub(super) fn write_staged<T>(
        &self,
        f: impl FnOnce(&mut Writer<'_>) -> StoreResult<StoreResult<T>>,
    ) -> StoreResult<(StoreResult<T>, u64)> {
        let _in_flight = self.group.enter();
        let mut state = self.lock();
        let mut txn = self.db.begin_write().ctx("beginning write")?;
        txn.set_durability(Durability::None)
            .ctx("setting durability")?;
        let (outcome, events, compacted, changed) = {
            let mut w = Writer::open(&txn, &state, self.retained)?;
            let outcome = f(&mut w)?;
            w.log_events()?;
            let changed = w.dirty || !w.events.is_empty();
            (outcome, w.events, w.compacted, changed)
        };
        if changed {
            let seq = self.group.number();
            txn.commit().ctx("committing write")?;
            state.record(seq, events, compacted);
            Ok((outcome, seq))
        } else {
            let seen = self.group.latest();
            txn.abort().ctx("aborting write")?;
            Ok((outcome, seen))
        }
    }

    /// Hand the events of every commit numbered up to `covered` (now on disk) to the
    /// watchers, in revision order.
    pub(super) fn publish_through(&self, covered: u64) {
        let mut state = self.lock();
        while state.unpublished.front().is_some_and(|c| c.seq <= covered) {
            let Some(commit) = state.unpublished.pop_front() else {
                break;
            };
            state.published = commit.revision;
            state
                .watchers
                .retain(|w| w.deliver(commit.revision, &commit.events));
        }
    }
}

impl State {
    /// Note a (not yet durable) commit; its events wait in `unpublished` for the fsync.
    fn record(&mut self, seq: u64, events: Vec<Event>, compacted: Revision) {
        self.compacted = compacted;
        if events.is_empty() {
            return;
        }
        self.revision += 1;
        self.unpublished.push_back(Unpublished {
            seq,
            revision: self.revision,
            events,
        });
    }
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

    pub(super) fn put(&mut self, key: &str, value: Vec<u8>, lease: LeaseId) -> StoreResult<()> {
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

    pub(super) fn delete(&mut self, key: &str) -> StoreResult<bool> {
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
    pub(super) fn txn(
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
    pub(super) fn compact(&mut self, revision: Revision) -> StoreResult<()> {
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

    pub(super) fn meta_get(&self, name: &str) -> StoreResult<i64> {
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
