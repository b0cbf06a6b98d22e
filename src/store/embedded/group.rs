//! Group commit: every write commits to redb without an fsync, then waits for an
//! fsync that covers it. One writer at a time leads: it lets the writers already
//! queued commit, then makes one durable (empty) commit, which persists every commit
//! before it. So eight concurrent writes cost about one fsync, and none returns
//! before its own data is on disk.
//!
//! Commits are numbered: a writer takes its number while it holds redb's write
//! transaction, just before committing. The leader reads the latest number once it
//! holds the write transaction itself, so every commit up to that number has
//! finished, and its fsync covers them all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use redb::Durability;

use super::{Context, Inner};
use crate::store::{StoreError, StoreResult};

/// The commit numbering and who is waiting for which fsync.
#[derive(Default)]
pub(super) struct GroupCommit {
    /// Number of the latest commit (taken before it commits, so it may still be running).
    committed: AtomicU64,
    sync: Mutex<SyncState>,
    changed: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// Every commit numbered up to this is on disk.
    synced: u64,
    /// A leader is gathering or syncing.
    leading: bool,
    /// Writers that started / finished their (non-durable) commit.
    entered: u64,
    left: u64,
    /// A failed fsync: redb refuses further writes, so no later commit can be durable.
    failed: Option<String>,
}

/// Held by a writer from before it queues for the write transaction until its
/// commit is done; a leader lets the writers holding one commit before it syncs.
pub(super) struct InFlight<'a>(&'a GroupCommit);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.lock().left += 1;
        self.0.changed.notify_all();
    }
}

/// Clears `leading` however the leader's turn ends (also on a panic).
struct Leading<'a>(&'a GroupCommit);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.lock().leading = false;
        self.0.changed.notify_all();
    }
}

impl GroupCommit {
    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.sync.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, SyncState>) -> MutexGuard<'a, SyncState> {
        self.changed
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn enter(&self) -> InFlight<'_> {
        self.lock().entered += 1;
        InFlight(self)
    }

    /// Number the commit about to be made; call while holding the write transaction.
    pub(super) fn number(&self) -> u64 {
        self.committed.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Every commit numbered up to this is on disk.
    #[cfg(test)]
    pub(super) fn synced(&self) -> u64 {
        self.lock().synced
    }

    /// The latest commit number: after a read snapshot is taken (or while holding the
    /// write transaction), every commit the reader can see is numbered at most this.
    pub(super) fn latest(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }
}

impl Inner {
    /// Return once commit `seq` is on disk, leading an fsync if no one else is.
    ///
    /// The leader hands the events of the commits its fsync covered to the watchers
    /// before it releases anyone, so an acknowledged write has been published.
    pub(super) fn await_durable(&self, seq: u64) -> StoreResult<()> {
        let group = &self.group;
        let mut state = group.lock();
        loop {
            if state.synced >= seq {
                return Ok(());
            }
            if let Some(e) = &state.failed {
                return Err(StoreError::Backend(format!("syncing to disk: {e}")));
            }
            if state.leading {
                state = group.wait(state);
                continue;
            }
            state.leading = true;
            let leading = Leading(group);
            // Writers already queued commit first, so this fsync covers them too.
            // Later arrivals do not extend the wait: each queued writer finishes its
            // commit without waiting for an fsync.
            let queued = state.entered;
            while state.left < queued {
                state = group.wait(state);
            }
            drop(state);
            let synced = self.sync_to_disk();
            if let Ok(covered) = synced {
                self.publish_through(covered);
            }
            state = group.lock();
            match synced {
                Ok(covered) => state.synced = state.synced.max(covered),
                Err(e) => state.failed = Some(e.to_string()),
            }
            drop(state);
            drop(leading);
            state = group.lock();
        }
    }

    /// One durable, empty commit: redb's fsync then persists every commit before it.
    /// Returns the number of the last commit covered.
    fn sync_to_disk(&self) -> StoreResult<u64> {
        let mut txn = self.db.begin_write().ctx("beginning sync")?;
        let covered = self.group.latest();
        txn.set_durability(Durability::Immediate)
            .ctx("setting durability")?;
        txn.commit().ctx("syncing to disk")?;
        Ok(covered)
    }
}
