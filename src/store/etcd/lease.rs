//! Lease keep-alive streams: one kept per lease, opened on demand, dropped after
//! any failure.

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard, PoisonError};

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};

use super::{EtcdStore, Inner};
use crate::store::{LeaseId, StoreError, StoreResult};

/// The two halves of a lease keep-alive stream.
pub(super) struct Keeper {
    requests: LeaseKeeper,
    responses: LeaseKeepAliveStream,
}

pub(super) type SharedKeeper = Arc<tokio::sync::Mutex<Keeper>>;

impl Inner {
    fn keeper_map(&self) -> MutexGuard<'_, HashMap<LeaseId, SharedKeeper>> {
        self.keepers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn keeper(&self, lease: LeaseId) -> Option<SharedKeeper> {
        self.keeper_map().get(&lease).cloned()
    }

    /// Forget `keeper` (if it is still the one kept for `lease`).
    pub(super) fn drop_keeper(&self, lease: LeaseId, keeper: &SharedKeeper) {
        let mut map = self.keeper_map();
        if map.get(&lease).is_some_and(|k| Arc::ptr_eq(k, keeper)) {
            map.remove(&lease);
        }
    }
}

impl EtcdStore {
    /// Open a keep-alive stream for `lease` (etcd-client renews once while opening).
    pub(super) async fn open_keeper(
        &self,
        lease: LeaseId,
        what: &str,
    ) -> StoreResult<SharedKeeper> {
        let (requests, responses) = self
            .call(what, lease, move |mut c| async move {
                c.lease_keep_alive(lease).await
            })
            .await?;
        let keeper = Arc::new(tokio::sync::Mutex::new(Keeper {
            requests,
            responses,
        }));
        let mut map = self.inner.keeper_map();
        Ok(Arc::clone(map.entry(lease).or_insert(keeper)))
    }

    /// One renewal on `keeper`; a keeper that failed in any way is forgotten, so a
    /// late answer can never be taken for the answer to a later renewal.
    pub(super) async fn renew(
        &self,
        lease: LeaseId,
        keeper: &SharedKeeper,
        what: &str,
    ) -> StoreResult<i64> {
        let answer = self
            .deadline(what, lease, async {
                let mut k = keeper.lock().await;
                k.requests.keep_alive().await?;
                k.responses.message().await
            })
            .await;
        let ttl = match answer {
            Ok(Some(resp)) => resp.ttl(),
            Ok(None) => {
                self.inner.drop_keeper(lease, keeper);
                return Err(self
                    .inner
                    .unavailable(what, "etcd closed the keep-alive stream"));
            }
            Err(e) => {
                self.inner.drop_keeper(lease, keeper);
                return Err(e);
            }
        };
        if ttl <= 0 {
            self.inner.drop_keeper(lease, keeper);
            return Err(StoreError::LeaseNotFound(lease));
        }
        Ok(ttl)
    }
}
