//! Leases: the lease table and its key index, renewal and revocation, and the
//! background task that reaps expired leases.

use std::sync::Weak;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable};
use tokio::sync::oneshot;

use super::tables::{LEASES, META_NEXT_LEASE};
use super::write::Writer;
use super::{now_millis, Context, Inner};
use crate::store::{LeaseId, StoreResult};

/// How often the background task looks for expired leases.
const EXPIRY_INTERVAL: Duration = Duration::from_millis(200);

/// A lease as stored in the `leases` table.
#[derive(Clone, Copy)]
struct LeaseRecord {
    ttl: i64,
    deadline: i64,
}

impl Writer<'_> {
    /// Move `key` from lease `old` to lease `new` in the lease index (0 = none).
    pub(super) fn relink(&mut self, key: &str, old: LeaseId, new: LeaseId) -> StoreResult<()> {
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

    pub(super) fn grant(&mut self, ttl: i64, now: i64) -> StoreResult<LeaseId> {
        let id = self.meta_get(META_NEXT_LEASE)?.max(1);
        self.meta
            .insert(META_NEXT_LEASE, id + 1)
            .ctx("writing meta")?;
        let deadline = now.saturating_add(ttl.saturating_mul(1000));
        self.set_lease(id, LeaseRecord { ttl, deadline })?;
        Ok(id)
    }

    /// Whether lease `id` exists and has not expired; an expired one is reaped here.
    pub(super) fn lease_alive(&mut self, id: LeaseId, now: i64) -> StoreResult<bool> {
        match self.lease(id)? {
            None => Ok(false),
            Some(rec) if rec.deadline > now => Ok(true),
            Some(_) => self.revoke(id).map(|_| false),
        }
    }

    /// Renew a live lease; `None` if it is unknown or expired.
    pub(super) fn keep_alive(&mut self, id: LeaseId, now: i64) -> StoreResult<Option<i64>> {
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
    pub(super) fn revoke(&mut self, id: LeaseId) -> StoreResult<bool> {
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
}

impl Inner {
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

/// Reap expired leases until the store is dropped.
pub(super) async fn expiry_loop(store: Weak<Inner>, mut stopped: oneshot::Receiver<()>) {
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
