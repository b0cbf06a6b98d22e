//! The store: one trait, several backends (embedded on local disk; etcd for clusters).
//!
//! Semantics follow etcd v3 so the daemon does not care which backend it talks to:
//! every write bumps one global revision; a key carries its create and mod revision
//! and an optional lease; transactions compare and then write atomically; a watch
//! delivers every change under a prefix from a given revision on, or says the history
//! it needs was compacted (the caller then lists again); keys attached to a lease are
//! deleted when the lease expires.

pub mod embedded;
pub mod etcd;
pub mod keys;

use std::future::Future;

use tokio::sync::mpsc;

pub use embedded::EmbeddedStore;

/// A store revision: increases by one with every committed write.
pub type Revision = i64;
/// A lease id; 0 means "no lease".
pub type LeaseId = i64;

/// One key and its value, with etcd's bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created the key (0 for a key that does not exist).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// The lease the key is attached to, 0 if none.
    pub lease: LeaseId,
}

/// A condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist (etcd: `create_revision(key) == 0`).
    Absent(String),
    /// The key exists and was last written at this revision.
    ModRevision(String, Revision),
    /// The key exists and holds exactly this value.
    Value(String, Vec<u8>),
}

/// A write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
}

/// The outcome of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResult {
    /// True when every compare held and the writes were applied.
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: Revision,
    /// On failure: the current value of each compared key, in compare order.
    pub current: Vec<Option<KeyValue>>,
}

/// A transaction whose outcome is decided (later writes see it) but which may not be on
/// disk yet: `durable` resolves once it is. See [`Store::txn_staged`].
pub struct Staged {
    pub result: TxnResult,
    pub durable: futures::future::BoxFuture<'static, StoreResult<()>>,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch. For a delete, `kv.value` is empty and
/// `kv.mod_revision` is the revision of the delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// What a watch stream delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    /// Changes committed at `revision` (all events of one revision come together).
    Events {
        revision: Revision,
        events: Vec<Event>,
    },
    /// The start revision is older than the retained history: the watch is dead;
    /// list again and watch from the list's revision + 1.
    Compacted { compact_revision: Revision },
    /// The stream broke (connection lost); list again and watch again.
    Lost(String),
}

/// A live watch: messages arrive on `rx`; dropping it cancels the watch.
pub struct Watch {
    pub rx: mpsc::Receiver<WatchMessage>,
}

/// Errors of any backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached (etcd down, connection refused, timeout).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A lease id the store does not know (expired or revoked).
    #[error("lease {0:#x} not found")]
    LeaseNotFound(LeaseId),
    /// A watch or read asked for history that was compacted away.
    #[error("revision {requested} is compacted (oldest available {compact_revision})")]
    Compacted {
        requested: Revision,
        compact_revision: Revision,
    },
    /// Anything else the backend reports.
    #[error("store error: {0}")]
    Backend(String),
}

pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// The operations rnet needs from a key-value store.
///
/// All methods are cheap to call concurrently; implementations are `Clone` handles
/// onto one shared backend.
pub trait Store: Clone + Send + Sync + 'static {
    /// The value of one key.
    fn get(&self, key: &str) -> impl Future<Output = StoreResult<Option<KeyValue>>> + Send;

    /// Every key under `prefix` (sorted by key), with the revision the list was read at.
    fn list(
        &self,
        prefix: &str,
    ) -> impl Future<Output = StoreResult<(Vec<KeyValue>, Revision)>> + Send;

    /// Write a key, optionally attached to a lease; returns the new revision.
    fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> impl Future<Output = StoreResult<Revision>> + Send;

    /// Delete a key; returns whether it existed.
    fn delete(&self, key: &str) -> impl Future<Output = StoreResult<bool>> + Send;

    /// If every compare holds, apply `ops` atomically (one new revision).
    fn txn(
        &self,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> impl Future<Output = StoreResult<TxnResult>> + Send;

    /// As `txn`, but return as soon as the outcome is decided, with a future that resolves
    /// once the transaction is durable (already resolved for a backend that only answers
    /// then, such as etcd). The caller may do other work meanwhile (an attach builds the
    /// kernel side while the embedded store syncs) but must not acknowledge anything that
    /// depends on the write before `durable` resolves: a crash may take it back until then.
    fn txn_staged(
        &self,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> impl Future<Output = StoreResult<Staged>> + Send {
        async move {
            let result = self.txn(compares, ops).await?;
            let durable: futures::future::BoxFuture<'static, StoreResult<()>> =
                Box::pin(std::future::ready(Ok(())));
            Ok(Staged { result, durable })
        }
    }

    /// Watch every change under `prefix` with revision >= `from_revision`.
    fn watch(
        &self,
        prefix: &str,
        from_revision: Revision,
    ) -> impl Future<Output = StoreResult<Watch>> + Send;

    /// Grant a lease of `ttl_secs` seconds.
    fn lease_grant(&self, ttl_secs: i64) -> impl Future<Output = StoreResult<LeaseId>> + Send;

    /// Renew a lease once; returns its new TTL in seconds, or `LeaseNotFound`.
    fn lease_keep_alive(&self, lease: LeaseId) -> impl Future<Output = StoreResult<i64>> + Send;

    /// Revoke a lease now, deleting its keys.
    fn lease_revoke(&self, lease: LeaseId) -> impl Future<Output = StoreResult<()>> + Send;

    /// Discard the watch history before `revision` (what etcd calls compaction).
    fn compact(&self, revision: Revision) -> impl Future<Output = StoreResult<()>> + Send;
}
