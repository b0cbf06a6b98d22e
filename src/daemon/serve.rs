//! Serving an axum router on a unix socket so that no client can hold the daemon: each
//! connection's peer is checked at accept time (see [`access`](super::access)), headers must
//! arrive within [`Limits::header_timeout`] (also the longest a kept-alive connection may sit
//! idle), a request body within [`Limits::body_timeout`], and at most
//! [`Limits::max_connections`] connections are served at once (at most
//! [`Limits::max_per_user`] of them for any one non-root user); further ones wait in the
//! listen backlog until a slot frees, which the timeouts guarantee happens: no connection,
//! even one whose client never reads its answers, lives longer than
//! [`Limits::connection_lifetime`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::access::{self, Access, Caller};
use super::http::ApiError;
use crate::api::types::MAX_BODY_BYTES;
use crate::error::Error;

/// How long clients get.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// For a request's headers, from the first read; and for an idle kept-alive connection.
    pub header_timeout: Duration,
    /// For a request's whole body, from when its headers were read.
    pub body_timeout: Duration,
    pub max_connections: usize,
    /// Connections one non-root user may hold at once (root's are bounded by the total only).
    pub max_per_user: usize,
    /// How long a connection is kept: then it finishes the request in flight and closes (a
    /// kept-alive client reconnects). One whose answer still cannot be written `grace` later
    /// (a client that never reads) is dropped.
    pub connection_lifetime: Duration,
    /// How long a shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            max_connections: 128,
            max_per_user: 32,
            connection_lifetime: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Serve `router` on `listener` for the callers `access` allows until `shutdown` completes.
/// Handlers find the [`Caller`] in the request's extensions.
pub async fn serve(
    listener: UnixListener,
    router: Router,
    access: Access,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let router = router.layer(axum::middleware::from_fn_with_state(
        limits.body_timeout,
        body_deadline,
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_user: PerUser = Default::default();
    // Connections watch this to finish what is in flight and close when the server stops.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let mut full_reported = false;
    tokio::pin!(shutdown);
    loop {
        if slots.available_permits() == 0 && !full_reported {
            tracing::warn!(
                limit = limits.max_connections,
                "connection limit reached; new connections wait until one closes"
            );
        }
        full_reported = slots.available_permits() == 0;
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, mostly: give connections in flight time to close.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let verdict = match access::peer_of(std::os::fd::AsFd::as_fd(&stream)) {
            Ok(peer) => access.decide(&peer).inspect_err(|why| {
                tracing::warn!(
                    uid = peer.uid,
                    gid = peer.gid,
                    pid = peer.pid,
                    "refused a connection: {why}"
                );
            }),
            Err(e) => {
                tracing::warn!(error = %e, "refused a connection: reading its credentials failed");
                Err(format!(
                    "rnetd could not read the caller's credentials: {e}"
                ))
            }
        };
        let allowed = verdict.is_ok();
        // One non-root user cannot take every slot: beyond its share, close at once.
        let user = match &verdict {
            Ok(caller) if caller.uid != 0 => Some(caller.uid),
            _ => None,
        };
        let share = match user {
            Some(uid) => match Share::take(&per_user, uid, limits.max_per_user, usize::MAX) {
                Some(share) => Some(share),
                None => {
                    tracing::warn!(
                        uid,
                        limit = limits.max_per_user,
                        "refused a connection: this user holds its share of connections"
                    );
                    continue;
                }
            },
            None => None,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let (router, verdict) = (router.clone(), verdict.clone());
            async move {
                Ok::<_, std::convert::Infallible>(match verdict {
                    Ok(caller) => {
                        let mut req = req.map(Body::new);
                        req.extensions_mut().insert::<Caller>(caller);
                        match router.oneshot(req).await {
                            Ok(resp) => resp,
                            Err(never) => match never {},
                        }
                    }
                    Err(why) => ApiError::from(Error::Forbidden(why)).into_response(),
                })
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(allowed)
            .serve_connection(TokioIo::new(stream), service);
        let (limits, mut stopping) = (limits, stopping.clone());
        tokio::spawn(async move {
            // Given back however the task ends, a panicking handler included.
            let _held = (slot, share);
            let mut conn = std::pin::pin!(conn);
            let expiry = tokio::time::sleep(limits.connection_lifetime);
            tokio::pin!(expiry);
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = &mut expiry => None,
                _ = stopping.wait_for(|s| *s) => None,
            };
            let ended = match ended {
                Some(r) => r,
                None => {
                    // Finish the request in flight, then close; drop what cannot finish.
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(limits.shutdown_grace, conn.as_mut()).await {
                        Ok(r) => r,
                        Err(_) => {
                            tracing::debug!(
                                "dropped a connection whose answer could not be written"
                            );
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    // Every connection holds a slot until its task ends: all slots back means all closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let wait = limits.shutdown_grace + limits.shutdown_grace;
    if tokio::time::timeout(wait, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(grace = ?limits.shutdown_grace, "requests still in flight at shutdown were cut off");
    }
}

/// Connections held, by who holds them (a user, a source address).
type Counts<K> = Arc<std::sync::Mutex<std::collections::HashMap<K, usize>>>;
type PerUser = Counts<u32>;

/// One connection of `key`, counted until dropped (however its task ends).
struct Share<K: std::hash::Hash + Eq + Clone> {
    counts: Counts<K>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Clone> Share<K> {
    /// A place for one more connection of `key`, if it holds fewer than `per_key` and all
    /// together fewer than `total`.
    fn take(counts: &Counts<K>, key: K, per_key: usize, total: usize) -> Option<Share<K>> {
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        let all: usize = map.values().sum();
        let n = map.entry(key.clone()).or_default();
        if *n >= per_key || all >= total {
            return None;
        }
        *n += 1;
        Some(Share {
            counts: counts.clone(),
            key,
        })
    }
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Share<K> {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Read the whole body within `deadline` (a client trickling its body holds nothing for
/// longer), then hand the request on with the body in memory.
async fn body_deadline(State(deadline): State<Duration>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(deadline, axum::body::to_bytes(body, MAX_BODY_BYTES));
    let msg = match read.await {
        Ok(Ok(bytes)) => {
            return next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(_) => format!("the request body did not arrive within {deadline:?}"),
        Ok(Err(e)) => {
            let e = e.into_inner();
            if e.is::<http_body_util::LengthLimitError>() {
                format!("request body is larger than {MAX_BODY_BYTES} bytes")
            } else {
                format!("reading request body: {e}")
            }
        }
    };
    let mut resp = ApiError::from(Error::Invalid(msg)).into_response();
    // The rest of the body may still be on its way: do not read another request after it.
    resp.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    resp
}

/// Connections the metrics listener serves at once; a scrape is one short request.
const METRICS_CONNECTIONS: usize = 64;
/// Of which one source address may hold this many: clients that never send a byte cannot
/// keep the scraper (from another address) out.
const METRICS_CONNECTIONS_PER_SOURCE: usize = 4;
/// The longest a metrics connection lives: one request, headers within the header timeout.
const METRICS_CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

/// Serve `router` on a TCP listener reachable from the network (the metrics): one request
/// per connection, headers within `limits.header_timeout`, none alive longer than
/// [`METRICS_CONNECTION_LIFETIME`]. Every connection is accepted at once and closed at once
/// beyond [`METRICS_CONNECTIONS`], or [`METRICS_CONNECTIONS_PER_SOURCE`] from its address.
pub async fn serve_tcp(listener: tokio::net::TcpListener, router: Router, limits: Limits) {
    let held: Counts<std::net::IpAddr> = Default::default();
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = from.ip();
        let Some(share) = Share::take(
            &held,
            source,
            METRICS_CONNECTIONS_PER_SOURCE,
            METRICS_CONNECTIONS,
        ) else {
            tracing::debug!(%source, "refused a metrics connection: over the limit");
            continue;
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let router = router.clone();
            async move {
                match router.oneshot(req.map(Body::new)).await {
                    Ok(resp) => Ok::<_, std::convert::Infallible>(resp),
                    Err(never) => match never {},
                }
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(false)
            .serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _share = share;
            if let Ok(Err(e)) = tokio::time::timeout(METRICS_CONNECTION_LIFETIME, conn).await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}
