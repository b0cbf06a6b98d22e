//! The `etcd` store backend: the [`Store`] trait on an etcd v3 cluster, through the
//! `etcd-client` crate (gRPC over HTTP/2).
//!
//! # Mapping
//!
//! The trait was modelled on etcd, so most calls are one RPC:
//!
//! | trait                | etcd                                                                |
//! |----------------------|---------------------------------------------------------------------|
//! | `get`                | `Range` of one key                                                  |
//! | `list`               | `Range`s of the prefix in pages of [`PAGE_KEYS`](paging::PAGE_KEYS) keys (etcd sorts by key), each page from the last key + `\0`, every page at the first page's header revision (which `list` returns): one snapshot however big the prefix, and no answer near gRPC's 4 MiB message limit (a page of huge values is asked again with fewer keys) |
//! | `put`                | `Put` (with the lease if any); returns the header revision          |
//! | `delete`             | `DeleteRange` of one key; `deleted > 0` says whether it existed     |
//! | `txn`                | `Txn`: compares, `success` = the writes, `failure` = one `Range` per compared key, so a failed txn reports the current value of each compared key, in compare order, read atomically with the compare |
//! | `watch`              | one `Watch` stream per call, forwarded by a task (see below)        |
//! | `lease_*`            | `LeaseGrant`, `LeaseKeepAlive` (a stream kept per lease), `LeaseRevoke` |
//! | `compact`            | `Compact` (not physical: the RPC returns once the compaction is applied, the space is freed in the background) |
//!
//! Compares: `Absent(k)` is `create_revision(k) == 0`; `Value(k, v)` is `value(k) == v`
//! (etcd fails it for a missing key); `ModRevision(k, r)` is `mod_revision(k) == r`, plus
//! `create_revision(k) > 0` when `r <= 0`, because etcd sees a missing key's mod
//! revision as 0 while the trait says the compare fails for a missing key.
//!
//! Keys are UTF-8 in the trait and bytes in etcd: a key that is not UTF-8 (not
//! written by rnet) is converted lossily.
//!
//! # Watches
//!
//! `watch` opens the stream and waits for etcd's "created" answer before returning,
//! so a watch from revision 0 sees every write made after `watch` returned. A task
//! then forwards each response: etcd may put several revisions in one response, so
//! events are split by their `mod_revision` (a delete carries its revision there too)
//! into one [`WatchMessage::Events`] per revision. A response with a non-zero
//! `compact_revision` becomes [`WatchMessage::Compacted`]; an error, the end of the
//! stream or any other cancellation (e.g. "no leader") becomes [`WatchMessage::Lost`].
//! Either ends the task. Dropping the receiver drops the stream, which cancels the
//! watch in etcd.
//!
//! # Leases
//!
//! `lease_keep_alive` keeps one etcd keep-alive stream per lease and sends one request
//! on it per call. The first call for a lease opens the stream, which etcd-client does
//! with a renewal of its own (so that call renews twice). A stream that failed in any
//! way, or answered TTL 0 (then: `LeaseNotFound`), is dropped, so a late answer is
//! never taken for the answer to a later renewal; a kept stream that broke (etcd
//! restarted) is replaced once within the same call. `lease_revoke` drops the lease's
//! stream; an abandoned lease keeps its idle stream until the handle is dropped.
//!
//! # Differences from the embedded backend
//!
//! etcd refuses a txn that writes one key twice even when its compares fail (the
//! embedded store only when they hold), and limits a txn to 128 operations and a
//! request to 1.5 MiB by default. Its minimum lease TTL is about 2 s, and its lease ids
//! are large, random-looking numbers.
//!
//! # Failures
//!
//! [`EtcdStore::connect`] does no I/O (with an etcd user it authenticates, but an
//! unreachable etcd is still not an error): the gRPC channel connects lazily, so a
//! daemon can start while etcd is down; [`EtcdStore::preflight`] is one round trip that
//! turns TLS and auth failures into clear errors at start (see `security` and `sniff`).
//! Every call runs under the store's deadline ([`DEFAULT_CALL_TIMEOUT`], or rnetd's
//! `--store-timeout`: see `deadline`); a timeout, a
//! refused or broken connection, or a gRPC `Unavailable` / `DeadlineExceeded` /
//! `Cancelled` status becomes [`StoreError::Unavailable`] naming the endpoints and the
//! operation, and makes the next call build a fresh client (the channel also
//! reconnects by itself), so the same handle works again once etcd is back. etcd's
//! "requested lease not found" becomes [`StoreError::LeaseNotFound`]; everything else
//! is [`StoreError::Backend`]. HTTP/2 keep-alive pings (only while a stream is open,
//! as etcd's server policy demands) notice a silently dead connection within
//! [`KEEPALIVE_INTERVAL`] + [`KEEPALIVE_TIMEOUT`], which ends its watches with `Lost`.
//!
//! Calls are not retried: a write that timed out may or may not have been applied,
//! and only the caller knows whether repeating it is safe.

mod client;
mod convert;
mod deadline;
mod endpoints;
mod lease;
mod paging;
mod security;
mod sniff;
#[cfg(test)]
mod tests;
mod txn;
mod watch;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::mpsc;

use self::convert::{key_value, put_options, revision_of};
pub use self::deadline::{
    lease_lapse_risk, parse_call_timeout, DEFAULT_CALL_TIMEOUT, MAX_CALL_TIMEOUT_SECS,
};
use self::endpoints::{check_endpoint, host_port, is_https};
use self::lease::SharedKeeper;
pub use self::security::{EtcdSecurity, EtcdUser};
use self::txn::{current_values, etcd_txn, leases_of};
use self::watch::{forward, watch_options, WATCH_BUFFER};
#[cfg(doc)]
use super::WatchMessage;
use super::{
    Compare, KeyValue, LeaseId, Revision, Store, StoreError, StoreResult, TxnOp, TxnResult, Watch,
};

/// Deadline of one TCP connection attempt. Not derived from the call deadline: the
/// handshake is answered by etcd's kernel, not by etcd, so a CPU-starved etcd accepts as
/// fast as ever, and a longer wait would only delay trying the next endpoint. A call
/// deadline below it still bounds the whole call.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle time on a connection with open streams before an HTTP/2 ping is sent.
/// etcd's server answers pings more often than every 5 s with GOAWAY.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is declared dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// A call that names no lease.
const NO_LEASE: LeaseId = 0;
/// etcd's message when compacting to (or below) the current compaction revision.
const ALREADY_COMPACTED: &str = "required revision has been compacted";

/// A [`Store`] on an etcd v3 cluster; cheap to clone (a handle).
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

/// What every handle shares.
struct Inner {
    /// The endpoints as given ("host:port", "http://host:port" or "https://host:port").
    endpoints: Vec<String>,
    /// TLS files and user.
    security: EtcdSecurity,
    /// The TLS options read from `security`'s files (None: plain HTTP).
    tls: Option<etcd_client::TlsOptions>,
    /// The same, joined for error messages.
    label: String,
    /// The deadline of every call, connecting included.
    call_timeout: Duration,
    /// The client, or `None` after a connection failure (rebuilt on the next call).
    client: Mutex<Option<Client>>,
    /// One keep-alive stream per lease renewed through this handle.
    keepers: Mutex<HashMap<LeaseId, SharedKeeper>>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// A store on the etcd cluster at `endpoints` ("host:port" each, plain HTTP).
    ///
    /// Does no I/O and so succeeds while etcd is down: the connection is made by the
    /// first call and remade after failures. Must be called inside a tokio runtime
    /// (the gRPC channel spawns its worker task).
    ///
    /// # Errors
    ///
    /// `StoreError::Backend` naming the problem when `endpoints` is empty or one is
    /// not `HOST:PORT`.
    pub async fn connect(endpoints: &[String]) -> StoreResult<EtcdStore> {
        EtcdStore::connect_with(endpoints, &EtcdSecurity::default()).await
    }

    /// As [`connect`](Self::connect), with TLS and an etcd user. Endpoints are
    /// "host:port" or "http://host:port" (plain) or "https://host:port" (TLS), all
    /// of one kind. With a user, connecting authenticates: a wrong password is
    /// refused here, while an unreachable etcd still is not (the next call retries).
    ///
    /// # Errors
    ///
    /// `StoreError::Backend` naming the problem and the flag to fix: a bad endpoint,
    /// mixed plain and TLS endpoints, TLS files for plain endpoints, a certificate
    /// without its key (or the reverse), an unreadable or non-PEM file, a refused user.
    pub async fn connect_with(
        endpoints: &[String],
        security: &EtcdSecurity,
    ) -> StoreResult<EtcdStore> {
        EtcdStore::connect_with_timeout(endpoints, security, DEFAULT_CALL_TIMEOUT).await
    }

    /// As [`connect_with`](Self::connect_with), with every call (connecting included)
    /// under `call_timeout` instead of [`DEFAULT_CALL_TIMEOUT`].
    ///
    /// # Errors
    ///
    /// As `connect_with`; also `StoreError::Backend` for a zero `call_timeout`.
    pub async fn connect_with_timeout(
        endpoints: &[String],
        security: &EtcdSecurity,
        call_timeout: Duration,
    ) -> StoreResult<EtcdStore> {
        if call_timeout.is_zero() {
            return Err(StoreError::Backend(
                "etcd: a call deadline of 0 s would fail every call".into(),
            ));
        }
        if endpoints.is_empty() {
            return Err(StoreError::Backend("etcd: no endpoint given".into()));
        }
        for endpoint in endpoints {
            check_endpoint(endpoint)
                .map_err(|why| StoreError::Backend(format!("etcd endpoint {why}")))?;
        }
        let https = endpoints.iter().filter(|e| is_https(e)).count();
        if https != 0 && https != endpoints.len() {
            return Err(StoreError::Backend(format!(
                "etcd endpoints {}: either all use https:// or none does",
                endpoints.join(",")
            )));
        }
        let tls = security.tls_options(https != 0)?;
        let inner = Arc::new(Inner {
            endpoints: endpoints.to_vec(),
            label: endpoints.join(","),
            call_timeout,
            security: security.clone(),
            tls,
            client: Mutex::new(None),
            keepers: Mutex::new(HashMap::new()),
        });
        let store = EtcdStore { inner };
        // Builds the channel now so that a bad endpoint (or, with a user, a refused
        // password) is reported here; an unreachable etcd is not an error yet.
        match store.client().await {
            Ok(_) | Err(StoreError::Unavailable(_)) => Ok(store),
            Err(e) => Err(e),
        }
    }

    /// The endpoints this store talks to.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// One round trip to etcd, to fail fast on what waiting cannot fix: an untrusted
    /// or refused certificate, a refused user, a plain-HTTP client at a TLS etcd. An
    /// unreachable etcd is `Unavailable` (a daemon may start before its store).
    ///
    /// # Errors
    ///
    /// `StoreError::Backend` with the reason and the flag to fix, or `Unavailable`.
    pub async fn preflight(&self) -> StoreResult<()> {
        let check = || {
            self.call("checking the connection", NO_LEASE, |mut c| async move {
                c.status().await
            })
        };
        let mut result = check().await;
        // TLS 1.3: etcd checks a client certificate after the handshake, so a call may only
        // see the connection closed under it; a later one usually reads etcd's alert. Try
        // again while that is all there is (an etcd that is simply down refuses at once).
        for _ in 0..PREFLIGHT_TLS_RETRIES {
            let closed_under_us = matches!(&result, Err(StoreError::Unavailable(why))
                if ["connection closed", "operation was canceled", "broken pipe", "reset by peer"]
                    .iter()
                    .any(|s| why.contains(s)));
            if self.inner.tls.is_none() || !closed_under_us {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            result = check().await;
        }
        match result {
            Err(StoreError::Unavailable(why)) if self.inner.tls.is_none() => {
                for endpoint in &self.inner.endpoints {
                    if sniff::speaks_tls(host_port(endpoint)).await {
                        return Err(StoreError::Backend(format!(
                            "etcd at {} speaks TLS: use https://{} in --store, and --etcd-cacert with the CA that signed etcd's certificate",
                            host_port(endpoint),
                            host_port(endpoint)
                        )));
                    }
                }
                Err(StoreError::Unavailable(why))
            }
            other => other.map(drop),
        }
    }
}

/// Extra start-up checks over TLS while the answer is only a closed connection.
const PREFLIGHT_TLS_RETRIES: usize = 30;

impl Store for EtcdStore {
    async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        let k = key.to_string();
        let resp = self
            .call(
                &format!("reading {key:?}"),
                NO_LEASE,
                move |mut c| async move { c.get(k, None).await },
            )
            .await?;
        Ok(resp.kvs().first().map(key_value))
    }

    async fn list(&self, prefix: &str) -> StoreResult<(Vec<KeyValue>, Revision)> {
        self.list_paged(prefix).await
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> StoreResult<Revision> {
        let (k, lease) = (key.to_string(), lease.unwrap_or(0));
        let resp = self
            .call(
                &format!("writing {key:?}"),
                lease,
                move |mut c| async move { c.put(k, value, put_options(lease)).await },
            )
            .await?;
        revision_of(resp.header())
    }

    async fn delete(&self, key: &str) -> StoreResult<bool> {
        let k = key.to_string();
        let resp = self
            .call(
                &format!("deleting {key:?}"),
                NO_LEASE,
                move |mut c| async move { c.delete(k, None).await },
            )
            .await?;
        Ok(resp.deleted() > 0)
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<TxnOp>) -> StoreResult<TxnResult> {
        let leases = leases_of(&ops);
        let what = format!(
            "transaction ({} compares, {} writes)",
            compares.len(),
            ops.len()
        );
        let txn = etcd_txn(&compares, ops);
        let result = self
            .call(
                &what,
                NO_LEASE,
                move |mut c| async move { c.txn(txn).await },
            )
            .await;
        let resp = match result {
            Err(StoreError::LeaseNotFound(_)) => {
                return Err(StoreError::LeaseNotFound(self.missing_lease(&leases).await))
            }
            other => other?,
        };
        let revision = revision_of(resp.header())?;
        if resp.succeeded() {
            let current = Vec::new();
            return Ok(TxnResult {
                succeeded: true,
                revision,
                current,
            });
        }
        let current = current_values(resp.op_responses(), compares.len())?;
        Ok(TxnResult {
            succeeded: false,
            revision,
            current,
        })
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> StoreResult<Watch> {
        let what = format!("watching {prefix:?} from revision {from_revision}");
        let (p, options) = (prefix.to_string(), watch_options(from_revision));
        let (stream, first) = self
            .call(&what, NO_LEASE, move |mut c| async move {
                let mut stream = c.watch(p, Some(options)).await?;
                let first = stream.message().await?;
                Ok((stream, first))
            })
            .await?;
        let Some(first) = first else {
            return Err(self
                .inner
                .unavailable(&what, "etcd closed the stream before creating the watch"));
        };
        if first.canceled() && first.compact_revision() == 0 {
            let reason = first.cancel_reason();
            return Err(StoreError::Backend(format!(
                "etcd {}: {what}: refused: {reason}",
                self.inner.label
            )));
        }
        let (out, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(forward(self.inner.label.clone(), stream, first, out));
        Ok(Watch { rx })
    }

    async fn lease_grant(&self, ttl_secs: i64) -> StoreResult<LeaseId> {
        // etcd raises a TTL below its minimum (about 2 s) to that minimum.
        let ttl = ttl_secs.max(1);
        let resp = self
            .call("granting a lease", NO_LEASE, move |mut c| async move {
                c.lease_grant(ttl, None).await
            })
            .await?;
        Ok(resp.id())
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> StoreResult<i64> {
        let what = format!("renewing lease {lease:#x}");
        if let Some(keeper) = self.inner.keeper(lease) {
            match self.renew(lease, &keeper, &what).await {
                // The kept stream may have died with its connection: try a new one.
                Err(StoreError::Unavailable(why)) => {
                    tracing::debug!(error = %why, "lease keep-alive stream broken; reopening");
                }
                done => return done,
            }
        }
        let keeper = self.open_keeper(lease, &what).await?;
        self.renew(lease, &keeper, &what).await
    }

    async fn lease_revoke(&self, lease: LeaseId) -> StoreResult<()> {
        if let Some(keeper) = self.inner.keeper(lease) {
            self.inner.drop_keeper(lease, &keeper);
        }
        let what = format!("revoking lease {lease:#x}");
        self.call(&what, lease, move |mut c| async move {
            c.lease_revoke(lease).await
        })
        .await
        .map(drop)
    }

    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        let what = format!("compacting to revision {revision}");
        let result = self
            .call(&what, NO_LEASE, move |mut c| async move {
                c.compact(revision, None).await
            })
            .await;
        match result {
            // Like the embedded store: compacting what is already compacted is a no-op.
            Err(StoreError::Backend(msg)) if msg.contains(ALREADY_COMPACTED) => Ok(()),
            other => other.map(drop),
        }
    }
}
