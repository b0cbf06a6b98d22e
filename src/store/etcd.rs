//! The `etcd` store backend: the [`Store`] trait on an etcd v3 cluster, through the
//! `etcd-client` crate (gRPC over HTTP/2).
//!
//! # Mapping
//!
//! The trait was modelled on etcd, so most calls are one RPC:
//!
//! | trait                | etcd                                                                |
//! |----------------------|---------------------------------------------------------------------|
//! | `get` / `list`       | `Range` of one key / of the prefix (etcd sorts by key); `list` returns the header revision |
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
//! [`EtcdStore::connect`] does no I/O: the gRPC channel connects lazily, so a daemon
//! can start while etcd is down. Every call runs under [`CALL_TIMEOUT`]; a timeout, a
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

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::Ipv6Addr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use etcd_client::{
    Client, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    LeaseTimeToLiveOptions, PutOptions, ResponseHeader, Txn, TxnOpResponse, WatchOptions,
    WatchResponse, WatchStream,
};
use tokio::sync::mpsc;
use tonic::Code;

use super::{
    Compare, Event, EventKind, KeyValue, LeaseId, Revision, Store, StoreError, StoreResult, TxnOp,
    TxnResult, Watch, WatchMessage,
};

/// Deadline of every call to etcd (connecting included).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of one TCP connection attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle time on a connection with open streams before an HTTP/2 ping is sent.
/// etcd's server answers pings more often than every 5 s with GOAWAY.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is declared dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keep-alive of the connections to etcd.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// Capacity of the channel handed to the watcher.
const WATCH_BUFFER: usize = 256;
/// The scheme of rnetd's `--store` flag for etcd.
const URL_SCHEME: &str = "etcd://";
/// A call that names no lease.
const NO_LEASE: LeaseId = 0;
/// etcd's message for an unknown lease (`rpctypes.ErrLeaseNotFound`); etcd-client
/// says "lease not found" when opening a keep-alive stream for one.
const LEASE_NOT_FOUND: &str = "lease not found";
/// etcd's message when compacting to (or below) the current compaction revision.
const ALREADY_COMPACTED: &str = "required revision has been compacted";

/// A [`Store`] on an etcd v3 cluster; cheap to clone (a handle).
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

/// What every handle shares.
struct Inner {
    /// The endpoints as given ("host:port").
    endpoints: Vec<String>,
    /// The same, joined for error messages.
    label: String,
    /// The client, or `None` after a connection failure (rebuilt on the next call).
    client: Mutex<Option<Client>>,
    /// One keep-alive stream per lease renewed through this handle.
    keepers: Mutex<HashMap<LeaseId, SharedKeeper>>,
}

/// The two halves of a lease keep-alive stream.
struct Keeper {
    requests: LeaseKeeper,
    responses: LeaseKeepAliveStream,
}

type SharedKeeper = Arc<tokio::sync::Mutex<Keeper>>;

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// Construction and endpoints
// ---------------------------------------------------------------------------

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
        if endpoints.is_empty() {
            return Err(StoreError::Backend("etcd: no endpoint given".into()));
        }
        for endpoint in endpoints {
            check_endpoint(endpoint)
                .map_err(|why| StoreError::Backend(format!("etcd endpoint {why}")))?;
        }
        let inner = Arc::new(Inner {
            endpoints: endpoints.to_vec(),
            label: endpoints.join(","),
            client: Mutex::new(None),
            keepers: Mutex::new(HashMap::new()),
        });
        let store = EtcdStore { inner };
        // Builds the channel now so that a bad endpoint is reported here.
        store.client().await?;
        Ok(store)
    }

    /// The endpoints of rnetd's store flag `etcd://HOST:PORT[,HOST:PORT...]`.
    ///
    /// `HOST` is a name, an IPv4 address or a bracketed IPv6 address.
    ///
    /// # Errors
    ///
    /// `StoreError::Backend` quoting the URL and naming the problem (wrong scheme, no
    /// endpoint, an endpoint without host or port, a bad port, a path).
    pub fn parse_url(url: &str) -> StoreResult<Vec<String>> {
        let bad = |why: String| {
            StoreError::Backend(format!(
                "invalid etcd URL {url:?}: {why} (expected {URL_SCHEME}HOST:PORT[,HOST:PORT...])"
            ))
        };
        let Some(list) = url.strip_prefix(URL_SCHEME) else {
            return Err(bad(format!("it does not start with {URL_SCHEME}")));
        };
        if list.is_empty() {
            return Err(bad("it names no endpoint".into()));
        }
        list.split(',')
            .map(|endpoint| check_endpoint(endpoint).map(str::to_string).map_err(bad))
            .collect()
    }

    /// The endpoints this store talks to.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }
}

/// Check one "host:port"; the error names the endpoint and the problem.
fn check_endpoint(endpoint: &str) -> Result<&str, String> {
    if endpoint.is_empty() {
        return Err("\"\" is empty".into());
    }
    if let Some(c) = endpoint
        .chars()
        .find(|c| "/@?#".contains(*c) || c.is_whitespace())
    {
        return Err(format!("{endpoint:?} must be HOST:PORT, not contain {c:?}"));
    }
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Err(format!("{endpoint:?} has no port"));
    };
    check_host(endpoint, host)?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(endpoint),
        _ => Err(format!("{endpoint:?} has an invalid port {port:?}")),
    }
}

fn check_host(endpoint: &str, host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err(format!("{endpoint:?} has no host"));
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<Ipv6Addr>()
            .map(drop)
            .map_err(|_| format!("{endpoint:?} has an invalid IPv6 address {v6:?}"));
    }
    if host.contains([':', '[', ']']) {
        return Err(format!(
            "{endpoint:?}: an IPv6 address must be in brackets, as in [::1]:2379"
        ));
    }
    Ok(())
}

fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .with_keep_alive_while_idle(false)
        .with_tcp_keepalive(TCP_KEEPALIVE)
        .with_require_leader(true)
}

// ---------------------------------------------------------------------------
// Calls, deadlines and errors
// ---------------------------------------------------------------------------

impl Inner {
    fn client_slot(&self) -> MutexGuard<'_, Option<Client>> {
        self.client.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn keeper_map(&self) -> MutexGuard<'_, HashMap<LeaseId, SharedKeeper>> {
        self.keepers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn unavailable(&self, what: &str, why: impl fmt::Display) -> StoreError {
        StoreError::Unavailable(format!("etcd {}: {what}: {why}", self.label))
    }

    /// Translate an etcd-client error (see the module docs).
    fn error(&self, what: &str, lease: LeaseId, err: etcd_client::Error) -> StoreError {
        use etcd_client::Error as E;
        match &err {
            E::GRpcStatus(status) if status.message().contains(LEASE_NOT_FOUND) => {
                StoreError::LeaseNotFound(lease)
            }
            E::GRpcStatus(status) if is_unavailable(status) => self.unavailable(what, &err),
            E::LeaseKeepAliveError(msg) if msg == LEASE_NOT_FOUND => {
                StoreError::LeaseNotFound(lease)
            }
            E::TransportError(_)
            | E::IoError(_)
            | E::WatchError(_)
            | E::LeaseKeepAliveError(_)
            | E::EndpointError(_) => self.unavailable(what, &err),
            _ => StoreError::Backend(format!("etcd {}: {what}: {err}", self.label)),
        }
    }
}

/// Whether a gRPC status means "etcd cannot be reached or cannot answer now": the
/// codes etcd and tonic use for that, or an `Unknown` status made on this side from
/// a broken connection (it carries the transport error as its source; one sent by
/// etcd has none).
fn is_unavailable(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => true,
        Code::Unknown => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

impl EtcdStore {
    /// The cached client, or a new one (which does no I/O).
    async fn client(&self) -> StoreResult<Client> {
        if let Some(client) = self.inner.client_slot().clone() {
            return Ok(client);
        }
        let what = "creating the client";
        let endpoints = self.inner.endpoints.clone();
        let client = self
            .deadline(
                what,
                NO_LEASE,
                Client::connect(endpoints, Some(connect_options())),
            )
            .await?;
        Ok(self.inner.client_slot().get_or_insert(client).clone())
    }

    /// Run `fut` under [`CALL_TIMEOUT`], translating its error; after an
    /// `Unavailable` the next call builds a fresh client.
    async fn deadline<T>(
        &self,
        what: &str,
        lease: LeaseId,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> StoreResult<T> {
        let result = match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Ok(result) => result.map_err(|e| self.inner.error(what, lease, e)),
            Err(_) => Err(self
                .inner
                .unavailable(what, format!("no answer within {CALL_TIMEOUT:?}"))),
        };
        if let Err(StoreError::Unavailable(why)) = &result {
            tracing::debug!(error = %why, "etcd call failed; reconnecting on the next call");
            self.inner.client_slot().take();
        }
        result
    }

    /// One call to etcd: `f` gets a client and returns the RPC's future.
    async fn call<T, F, Fut>(&self, what: &str, lease: LeaseId, f: F) -> StoreResult<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = self.client().await?;
        self.deadline(what, lease, f(client)).await
    }
}

fn revision_of(header: Option<&ResponseHeader>) -> StoreResult<Revision> {
    header
        .map(ResponseHeader::revision)
        .ok_or_else(|| StoreError::Backend("etcd answered without a response header".into()))
}

fn key_value(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

fn put_options(lease: LeaseId) -> Option<PutOptions> {
    (lease != 0).then(|| PutOptions::new().with_lease(lease))
}

// ---------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------

fn compare_key(cmp: &Compare) -> &str {
    let (Compare::Absent(key) | Compare::ModRevision(key, _) | Compare::Value(key, _)) = cmp;
    key
}

/// The etcd compares equivalent to one trait compare (see the module docs).
fn etcd_compares(cmp: &Compare) -> Vec<etcd_client::Compare> {
    use etcd_client::Compare as C;
    match cmp {
        Compare::Absent(key) => vec![C::create_revision(key.as_str(), CompareOp::Equal, 0)],
        Compare::ModRevision(key, rev) if *rev > 0 => {
            vec![C::mod_revision(key.as_str(), CompareOp::Equal, *rev)]
        }
        Compare::ModRevision(key, rev) => vec![
            C::create_revision(key.as_str(), CompareOp::Greater, 0),
            C::mod_revision(key.as_str(), CompareOp::Equal, *rev),
        ],
        Compare::Value(key, value) => {
            vec![C::value(key.as_str(), CompareOp::Equal, value.clone())]
        }
    }
}

fn etcd_op(op: TxnOp) -> etcd_client::TxnOp {
    match op {
        TxnOp::Put { key, value, lease } => {
            etcd_client::TxnOp::put(key, value, put_options(lease.unwrap_or(0)))
        }
        TxnOp::Delete { key } => etcd_client::TxnOp::delete(key, None),
    }
}

fn etcd_txn(compares: &[Compare], ops: Vec<TxnOp>) -> Txn {
    let when: Vec<_> = compares.iter().flat_map(etcd_compares).collect();
    let reads: Vec<_> = compares
        .iter()
        .map(|c| etcd_client::TxnOp::get(compare_key(c), None))
        .collect();
    Txn::new()
        .when(when)
        .and_then(ops.into_iter().map(etcd_op).collect::<Vec<_>>())
        .or_else(reads)
}

/// The current value of each compared key, from the failure branch's reads.
fn current_values(
    responses: Vec<TxnOpResponse>,
    expected: usize,
) -> StoreResult<Vec<Option<KeyValue>>> {
    if responses.len() != expected {
        return Err(StoreError::Backend(format!(
            "etcd txn failure branch answered {} reads, expected {expected}",
            responses.len()
        )));
    }
    responses
        .into_iter()
        .map(|r| match r {
            TxnOpResponse::Get(get) => Ok(get.kvs().first().map(key_value)),
            other => Err(StoreError::Backend(format!(
                "etcd txn failure branch answered {other:?} to a read"
            ))),
        })
        .collect()
}

/// The distinct leases the puts of `ops` attach keys to, in order.
fn leases_of(ops: &[TxnOp]) -> Vec<LeaseId> {
    let mut leases = Vec::new();
    for op in ops {
        if let TxnOp::Put {
            lease: Some(id), ..
        } = op
        {
            if *id != 0 && !leases.contains(id) {
                leases.push(*id);
            }
        }
    }
    leases
}

impl EtcdStore {
    /// etcd does not say which lease of a txn was missing: with several, ask.
    async fn missing_lease(&self, leases: &[LeaseId]) -> LeaseId {
        for &id in leases.iter().take(leases.len().saturating_sub(1)) {
            let what = format!("looking up lease {id:#x}");
            let ttl = self
                .call(&what, id, move |mut c| async move {
                    c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new()))
                        .await
                })
                .await;
            // etcd answers TTL -1 for an unknown lease.
            if matches!(ttl, Ok(ref r) if r.ttl() < 0)
                || matches!(ttl, Err(StoreError::LeaseNotFound(_)))
            {
                return id;
            }
        }
        leases.last().copied().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------
// Watches
// ---------------------------------------------------------------------------

fn watch_options(from_revision: Revision) -> WatchOptions {
    let options = WatchOptions::new().with_prefix();
    if from_revision > 0 {
        options.with_start_revision(from_revision)
    } else {
        options
    }
}

fn event(e: &etcd_client::Event) -> Option<Event> {
    let mut kv = key_value(e.kv()?);
    let kind = match e.event_type() {
        EventType::Put => EventKind::Put,
        EventType::Delete => {
            // etcd sends the tombstone: key and delete revision only.
            kv.value.clear();
            kv.create_revision = 0;
            kv.lease = 0;
            EventKind::Delete
        }
    };
    Some(Event { kind, kv })
}

/// Split events (in revision order) into one message per revision.
fn by_revision(events: impl IntoIterator<Item = Event>) -> Vec<WatchMessage> {
    let mut out: Vec<WatchMessage> = Vec::new();
    for e in events {
        match out.last_mut() {
            Some(WatchMessage::Events { revision, events }) if *revision == e.kv.mod_revision => {
                events.push(e);
            }
            _ => out.push(WatchMessage::Events {
                revision: e.kv.mod_revision,
                events: vec![e],
            }),
        }
    }
    out
}

/// What to deliver for one item of the etcd stream, and whether the watch is over.
fn step(
    label: &str,
    received: Result<Option<WatchResponse>, etcd_client::Error>,
) -> (Vec<WatchMessage>, bool) {
    let lost = |why: String| {
        (
            vec![WatchMessage::Lost(format!("etcd {label}: {why}"))],
            true,
        )
    };
    match received {
        Err(e) => lost(format!("watch stream failed: {e}")),
        Ok(None) => lost("etcd closed the watch stream".into()),
        Ok(Some(resp)) if resp.compact_revision() != 0 => {
            let compact_revision = resp.compact_revision();
            (vec![WatchMessage::Compacted { compact_revision }], true)
        }
        Ok(Some(resp)) if resp.canceled() => {
            lost(format!("etcd canceled the watch: {}", resp.cancel_reason()))
        }
        Ok(Some(resp)) => (by_revision(resp.events().iter().filter_map(event)), false),
    }
}

/// Forward the etcd stream (starting with its already received `first` response)
/// until it ends or the receiver is dropped; dropping `stream` cancels the watch.
async fn forward(
    label: String,
    mut stream: WatchStream,
    first: WatchResponse,
    out: mpsc::Sender<WatchMessage>,
) {
    let mut received = Ok(Some(first));
    loop {
        let (messages, done) = step(&label, received);
        for msg in messages {
            if out.send(msg).await.is_err() {
                return;
            }
        }
        if done {
            return;
        }
        received = tokio::select! {
            r = stream.message() => r,
            () = out.closed() => return,
        };
    }
}

// ---------------------------------------------------------------------------
// Lease keep-alive streams
// ---------------------------------------------------------------------------

impl Inner {
    fn keeper(&self, lease: LeaseId) -> Option<SharedKeeper> {
        self.keeper_map().get(&lease).cloned()
    }

    /// Forget `keeper` (if it is still the one kept for `lease`).
    fn drop_keeper(&self, lease: LeaseId, keeper: &SharedKeeper) {
        let mut map = self.keeper_map();
        if map.get(&lease).is_some_and(|k| Arc::ptr_eq(k, keeper)) {
            map.remove(&lease);
        }
    }
}

impl EtcdStore {
    /// Open a keep-alive stream for `lease` (etcd-client renews once while opening).
    async fn open_keeper(&self, lease: LeaseId, what: &str) -> StoreResult<SharedKeeper> {
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
    async fn renew(&self, lease: LeaseId, keeper: &SharedKeeper, what: &str) -> StoreResult<i64> {
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

// ---------------------------------------------------------------------------
// The trait
// ---------------------------------------------------------------------------

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
        let p = prefix.to_string();
        let resp = self
            .call(
                &format!("listing {prefix:?}"),
                NO_LEASE,
                move |mut c| async move { c.get(p, Some(GetOptions::new().with_prefix())).await },
            )
            .await?;
        let revision = revision_of(resp.header())?;
        Ok((resp.kvs().iter().map(key_value).collect(), revision))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parse_url_accepts_endpoint_lists() {
        let parsed = EtcdStore::parse_url("etcd://10.0.0.1:2379").expect("one");
        assert_eq!(parsed, endpoints(&["10.0.0.1:2379"]));
        let parsed = EtcdStore::parse_url("etcd://a.example:2379,[fd00::1]:2379,b:1").expect("3");
        assert_eq!(
            parsed,
            endpoints(&["a.example:2379", "[fd00::1]:2379", "b:1"])
        );
    }

    #[test]
    fn parse_url_names_the_problem() {
        let cases = [
            ("http://h:2379", "does not start with etcd://"),
            ("etcd://", "names no endpoint"),
            ("etcd://h", "has no port"),
            ("etcd://:2379", "has no host"),
            ("etcd://h:0", "invalid port"),
            ("etcd://h:99999", "invalid port"),
            ("etcd://h:x", "invalid port"),
            ("etcd://h:2379,", "is empty"),
            ("etcd://h:2379/", "not contain '/'"),
            ("etcd://u@h:2379", "not contain '@'"),
            ("etcd://fd00::1:2379", "must be in brackets"),
            ("etcd://[zz::1]:2379", "invalid IPv6"),
        ];
        for (url, why) in cases {
            let err = EtcdStore::parse_url(url).expect_err(url).to_string();
            assert!(err.contains(why), "{url}: {err}");
            assert!(err.contains(url), "{url}: {err}");
        }
    }

    #[test]
    fn mod_revision_compare_fails_for_missing_keys() {
        let one = etcd_compares(&Compare::ModRevision("k".into(), 5));
        assert_eq!(one.len(), 1);
        let guarded = etcd_compares(&Compare::ModRevision("k".into(), 0));
        assert_eq!(guarded.len(), 2, "a create_revision > 0 guard is added");
    }

    fn ev(kind: EventKind, key: &str, rev: Revision) -> Event {
        let kv = KeyValue {
            key: key.into(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: rev,
            lease: 0,
        };
        Event { kind, kv }
    }

    #[test]
    fn events_are_split_by_revision() {
        let events = vec![
            ev(EventKind::Put, "a", 4),
            ev(EventKind::Put, "b", 4),
            ev(EventKind::Delete, "a", 5),
            ev(EventKind::Put, "c", 7),
        ];
        let msgs = by_revision(events);
        let summary: Vec<_> = msgs
            .iter()
            .map(|m| match m {
                WatchMessage::Events { revision, events } => (*revision, events.len()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(summary, vec![(4, 2), (5, 1), (7, 1)]);
    }

    #[test]
    fn txn_leases_are_distinct_and_ordered() {
        let put = |key: &str, lease| TxnOp::Put {
            key: key.into(),
            value: Vec::new(),
            lease,
        };
        let ops = vec![
            put("a", Some(7)),
            put("b", None),
            put("c", Some(0)),
            TxnOp::Delete { key: "d".into() },
            put("e", Some(3)),
            put("f", Some(7)),
        ];
        assert_eq!(leases_of(&ops), vec![7, 3]);
    }

    #[tokio::test]
    async fn connect_checks_endpoints_without_io() {
        let err = EtcdStore::connect(&[]).await.expect_err("empty");
        assert!(err.to_string().contains("no endpoint"), "{err}");
        let err = EtcdStore::connect(&endpoints(&["h"]))
            .await
            .expect_err("no port");
        assert!(err.to_string().contains("has no port"), "{err}");
        // Nothing listens on port 9 of a TEST-NET address; connect still succeeds.
        let store = EtcdStore::connect(&endpoints(&["192.0.2.1:9"]))
            .await
            .expect("lazy connect");
        assert_eq!(store.endpoints(), ["192.0.2.1:9"]);
    }
}
