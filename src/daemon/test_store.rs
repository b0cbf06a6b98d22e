//! A store for tests on tokio's paused clock: the embedded store underneath, with leases that
//! expire on tokio's clock (the embedded store's follow the wall clock, which a paused test
//! does not move), a switch that takes the store down, and a log of the calls made.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::store::{
    Compare, EmbeddedStore, KeyValue, LeaseId, Revision, Store, StoreError, StoreResult, TxnOp,
    TxnResult, Watch,
};

/// The TTL of the leases underneath: far longer than any test, so only tokio's clock expires.
const WALL_CLOCK_TTL: i64 = 24 * 3600;

#[derive(Clone)]
pub struct PausedStore {
    inner: EmbeddedStore,
    /// Live leases: their TTL and when they expire on tokio's clock.
    leases: Arc<Mutex<HashMap<LeaseId, (Duration, Instant)>>>,
    down: Arc<AtomicBool>,
    calls: Arc<Mutex<Vec<(&'static str, Instant)>>>,
    _dir: Arc<tempfile::TempDir>,
}

impl PausedStore {
    pub fn new() -> PausedStore {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = EmbeddedStore::open(&dir.path().join("store.redb")).expect("open");
        PausedStore {
            inner,
            leases: Arc::default(),
            down: Arc::default(),
            calls: Arc::default(),
            _dir: Arc::new(dir),
        }
    }

    /// Take the store down (every call fails as unavailable) or bring it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// When each call named `op` was made.
    pub fn calls(&self, op: &str) -> Vec<Instant> {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| c.0 == op).map(|c| c.1).collect()
    }

    /// Log the call, fail it while the store is down, and expire the leases that are due.
    async fn enter(&self, op: &'static str) -> StoreResult<()> {
        self.calls.lock().unwrap().push((op, Instant::now()));
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("taken down by the test".into()));
        }
        let due: Vec<LeaseId> = {
            let mut leases = self.leases.lock().unwrap();
            let due = leases
                .iter()
                .filter(|(_, (_, deadline))| *deadline <= Instant::now())
                .map(|(id, _)| *id)
                .collect();
            leases.retain(|_, (_, deadline)| *deadline > Instant::now());
            due
        };
        for id in due {
            self.inner.lease_revoke(id).await?;
        }
        Ok(())
    }

    fn alive(&self, lease: Option<LeaseId>) -> StoreResult<()> {
        match lease {
            Some(id) if !self.leases.lock().unwrap().contains_key(&id) => {
                Err(StoreError::LeaseNotFound(id))
            }
            _ => Ok(()),
        }
    }
}

impl Store for PausedStore {
    async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        self.enter("get").await?;
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> StoreResult<(Vec<KeyValue>, Revision)> {
        self.enter("list").await?;
        self.inner.list(prefix).await
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> StoreResult<Revision> {
        self.enter("put").await?;
        self.alive(lease)?;
        self.inner.put(key, value, lease).await
    }

    async fn delete(&self, key: &str) -> StoreResult<bool> {
        self.enter("delete").await?;
        self.inner.delete(key).await
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<TxnOp>) -> StoreResult<TxnResult> {
        self.enter("txn").await?;
        for op in &ops {
            if let TxnOp::Put { lease, .. } = op {
                self.alive(*lease)?;
            }
        }
        self.inner.txn(compares, ops).await
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> StoreResult<Watch> {
        self.enter("watch").await?;
        self.inner.watch(prefix, from_revision).await
    }

    async fn lease_grant(&self, ttl_secs: i64) -> StoreResult<LeaseId> {
        self.enter("lease_grant").await?;
        let id = self.inner.lease_grant(WALL_CLOCK_TTL).await?;
        let ttl = Duration::from_secs(ttl_secs.max(1) as u64);
        let mut leases = self.leases.lock().unwrap();
        leases.insert(id, (ttl, Instant::now() + ttl));
        Ok(id)
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> StoreResult<i64> {
        self.enter("lease_keep_alive").await?;
        let mut leases = self.leases.lock().unwrap();
        let (ttl, deadline) = leases
            .get_mut(&lease)
            .ok_or(StoreError::LeaseNotFound(lease))?;
        *deadline = Instant::now() + *ttl;
        Ok(ttl.as_secs() as i64)
    }

    async fn lease_revoke(&self, lease: LeaseId) -> StoreResult<()> {
        self.enter("lease_revoke").await?;
        if self.leases.lock().unwrap().remove(&lease).is_none() {
            return Err(StoreError::LeaseNotFound(lease));
        }
        self.inner.lease_revoke(lease).await
    }

    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        self.enter("compact").await?;
        self.inner.compact(revision).await
    }
}
