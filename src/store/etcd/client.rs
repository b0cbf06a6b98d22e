//! The client and every call through it: the cached client, rebuilt after a
//! connection failure, and the deadline and error translation around each RPC.

use std::future::Future;
use std::sync::{MutexGuard, PoisonError};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use super::{EtcdStore, Inner, CONNECT_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, NO_LEASE};
use crate::store::{LeaseId, StoreError, StoreResult};

/// TCP keep-alive of the connections to etcd.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

fn connect_options(inner: &Inner) -> ConnectOptions {
    let base = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .with_keep_alive_while_idle(false)
        .with_tcp_keepalive(TCP_KEEPALIVE)
        .with_require_leader(true);
    inner.security.apply(base, inner.tls.clone())
}

impl Inner {
    fn client_slot(&self) -> MutexGuard<'_, Option<Client>> {
        self.client.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl EtcdStore {
    /// The cached client, or a new one (which does no I/O).
    pub(super) async fn client(&self) -> StoreResult<Client> {
        if let Some(client) = self.inner.client_slot().clone() {
            return Ok(client);
        }
        let what = "creating the client";
        let endpoints = self.inner.endpoints.clone();
        let client = self
            .deadline(
                what,
                NO_LEASE,
                Client::connect(endpoints, Some(connect_options(&self.inner))),
            )
            .await?;
        Ok(self.inner.client_slot().get_or_insert(client).clone())
    }

    /// Run `fut` under the store's call deadline, translating its error; after an
    /// `Unavailable` the next call builds a fresh client.
    pub(super) async fn deadline<T>(
        &self,
        what: &str,
        lease: LeaseId,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> StoreResult<T> {
        let limit = self.inner.call_timeout;
        let result = match tokio::time::timeout(limit, fut).await {
            Ok(result) => result.map_err(|e| self.inner.error(what, lease, e)),
            Err(_) => Err(self
                .inner
                .unavailable(what, format!("no answer within {limit:?}"))),
        };
        if let Err(StoreError::Unavailable(why)) = &result {
            tracing::debug!(error = %why, "etcd call failed; reconnecting on the next call");
            self.inner.client_slot().take();
        }
        result
    }

    /// One call to etcd: `f` gets a client and returns the RPC's future.
    pub(super) async fn call<T, F, Fut>(&self, what: &str, lease: LeaseId, f: F) -> StoreResult<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = self.client().await?;
        self.deadline(what, lease, f(client)).await
    }
}
