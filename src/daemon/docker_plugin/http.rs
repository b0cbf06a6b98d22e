//! The plugin socket's HTTP side: one POST route per method name, each call decoded, run
//! and answered in the driver's or the IPAM driver's error shape.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Plugin;
use crate::dataplane::Dataplane;
use crate::error::{Error, Result};
use crate::libnetwork::protocol::{
    self, ActivateResponse, AddressSpacesResponse, CapabilitiesResponse, DriverError,
    IpamCapabilitiesResponse, IpamError, CONTENT_TYPE, IMPLEMENTS,
};
use crate::libnetwork::translate;
use crate::store::Store;

fn reply<T: Serialize>(value: &T) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        serde_json::to_vec(value).expect("responses serialize"),
    )
        .into_response()
}

fn driver_reply<T: Serialize>(method: &str, r: Result<T>) -> Response {
    match r {
        Ok(v) => reply(&v),
        Err(e) => {
            tracing::warn!(method, error = %e, "Docker call failed");
            reply(&DriverError { err: e.to_string() })
        }
    }
}

fn ipam_reply<T: Serialize>(method: &str, r: Result<T>) -> Response {
    match r {
        Ok(v) => reply(&v),
        Err(e) => {
            tracing::warn!(method, error = %e, "Docker IPAM call failed");
            reply(&IpamError {
                error: e.to_string(),
            })
        }
    }
}

/// Decode the request and run `f` on it.
async fn with<Req, T, Fut>(body: &[u8], f: impl FnOnce(Req) -> Fut) -> Result<T>
where
    Req: DeserializeOwned + Default,
    Fut: Future<Output = Result<T>>,
{
    f(protocol::decode(body).map_err(Error::Invalid)?).await
}

/// The router serving the plugin protocols for `plugin`.
pub fn router<S: Store, D: Dataplane>(plugin: Arc<Plugin<S, D>>) -> Router {
    Router::new()
        .route("/{method}", post(dispatch::<S, D>))
        .fallback(unknown)
        .with_state(plugin)
}

async fn unknown() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        "{\"Err\":\"rnet does not implement this method\"}",
    )
        .into_response()
}

async fn dispatch<S: Store, D: Dataplane>(
    State(p): State<Arc<Plugin<S, D>>>,
    UrlPath(method): UrlPath<String>,
    body: Bytes,
) -> Response {
    tracing::debug!(method, body = %String::from_utf8_lossy(&body), "Docker call");
    let started = std::time::Instant::now();
    let response = answer(p, &method, &body).await;
    tracing::debug!(
        method,
        micros = started.elapsed().as_micros() as u64,
        "Docker call answered"
    );
    response
}

async fn answer<S: Store, D: Dataplane>(p: Arc<Plugin<S, D>>, m: &str, body: &[u8]) -> Response {
    match m {
        "Plugin.Activate" => reply(&ActivateResponse {
            implements: IMPLEMENTS.iter().map(|s| s.to_string()).collect(),
        }),
        "NetworkDriver.GetCapabilities" => reply(&CapabilitiesResponse {
            scope: translate::SCOPE.into(),
            connectivity_scope: translate::CONNECTIVITY_SCOPE.into(),
            gw_alloc_checker: false,
        }),
        "NetworkDriver.CreateNetwork" => driver_reply(m, with(body, |r| p.create_network(r)).await),
        "NetworkDriver.DeleteNetwork" => driver_reply(m, with(body, |r| p.delete_network(r)).await),
        "NetworkDriver.CreateEndpoint" => {
            driver_reply(m, with(body, |r| p.clone().create_endpoint(r)).await)
        }
        "NetworkDriver.DeleteEndpoint" => {
            driver_reply(m, with(body, |r| p.clone().delete_endpoint(r)).await)
        }
        "NetworkDriver.EndpointOperInfo" => {
            driver_reply(m, with(body, |r| p.endpoint_oper_info(r)).await)
        }
        "NetworkDriver.Join" => driver_reply(m, with(body, |r| p.clone().join(r)).await),
        "NetworkDriver.Leave" => driver_reply(m, with(body, |r| p.leave(r)).await),
        "NetworkDriver.ProgramExternalConnectivity" => {
            driver_reply(m, with(body, |r| p.program_external(r)).await)
        }
        "NetworkDriver.RevokeExternalConnectivity" => {
            driver_reply(m, with(body, |r| p.revoke_external(r)).await)
        }
        "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => {
            reply(&serde_json::json!({}))
        }
        "IpamDriver.GetCapabilities" => reply(&IpamCapabilitiesResponse {
            requires_mac_address: false,
            requires_request_replay: false,
        }),
        "IpamDriver.GetDefaultAddressSpaces" => reply(&AddressSpacesResponse {
            local_default_address_space: translate::LOCAL_ADDRESS_SPACE.into(),
            global_default_address_space: translate::GLOBAL_ADDRESS_SPACE.into(),
        }),
        "IpamDriver.RequestPool" => ipam_reply(m, with(body, |r| p.request_pool(r)).await),
        "IpamDriver.ReleasePool" => ipam_reply(m, with(body, |r| p.release_pool(r)).await),
        "IpamDriver.RequestAddress" => {
            ipam_reply(m, with(body, |r| p.clone().request_address(r)).await)
        }
        "IpamDriver.ReleaseAddress" => ipam_reply(m, with(body, |r| p.release_address(r)).await),
        _ => {
            tracing::debug!(method = m, "unknown plugin method: 404");
            unknown().await
        }
    }
}
