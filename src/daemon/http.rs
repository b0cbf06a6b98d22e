//! The rnetd API server: axum routes on the daemon's unix socket, each a thin call into
//! the service. [`serve`](super::serve) puts the checked caller in each request's extensions. Bodies are read as bytes and decoded here, so a malformed or oversized
//! body gets the same JSON error shape as every other failure.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::access::{self, Caller};
use super::metrics;
use super::service::Service;
use crate::api::types::{AttachRequest, DetachRequest, ErrorBody, NetworkRequest, MAX_BODY_BYTES};
use crate::error::Error;
use crate::store::Store;

/// An error as the API renders it.
pub struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error = %self.0, "request failed");
        }
        let body = ErrorBody {
            kind: self.0.kind().to_string(),
            error: self.0.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Decode a request body, naming what is wrong with it.
fn decode_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        let msg = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            format!("request body is larger than {MAX_BODY_BYTES} bytes")
        } else {
            format!("reading request body: {}", r.body_text())
        };
        ApiError(Error::Invalid(msg))
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError(Error::Invalid(format!("malformed JSON request body: {e}"))))
}

/// The router serving the API for `service`.
pub fn router<S: Store>(service: Arc<Service<S>>) -> Router {
    Router::new()
        .route("/v1/status", get(status::<S>))
        .route(
            "/v1/networks",
            get(list_networks::<S>).post(create_network::<S>),
        )
        .route(
            "/v1/networks/{name}",
            get(inspect::<S>).delete(remove_network::<S>),
        )
        .route("/v1/endpoints", get(endpoints::<S>))
        .route("/v1/attach", post(attach::<S>))
        .route("/v1/detach", post(detach::<S>))
        .route("/v1/doctor", get(doctor::<S>))
        .route("/v1/peers", get(peers::<S>))
        .route("/v1/peers/{host}/trust", post(trust_peer::<S>))
        .route("/v1/gc", post(gc::<S>))
        .route("/v1/wireguard/rotate-key", post(rotate_key::<S>))
        .route("/v1/reconcile", post(reconcile::<S>))
        .route("/v1/cni/add", post(cni_add::<S>))
        .route("/v1/cni/del", post(cni_del::<S>))
        .route("/v1/cni/check", post(cni_check::<S>))
        .route("/v1/cni/status", get(cni_status::<S>))
        .route("/v1/cni/gc", post(cni_gc::<S>))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
}

async fn not_found() -> ApiError {
    ApiError(Error::NotFound(
        "no such API endpoint (this daemon speaks /v1)".into(),
    ))
}

async fn status<S: Store>(
    State(s): State<Arc<Service<S>>>,
) -> ApiResult<crate::api::types::Status> {
    Ok(Json(s.status().await?))
}

async fn list_networks<S: Store>(
    State(s): State<Arc<Service<S>>>,
) -> ApiResult<Vec<crate::api::types::NetworkSummary>> {
    Ok(Json(s.list_networks().await?))
}

async fn create_network<S: Store>(
    State(s): State<Arc<Service<S>>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<crate::model::Network> {
    let req: NetworkRequest = decode_body(body)?;
    Ok(Json(s.create_network(&req).await?))
}

async fn inspect<S: Store>(
    State(s): State<Arc<Service<S>>>,
    Path(name): Path<String>,
) -> ApiResult<crate::api::types::NetworkDetail> {
    Ok(Json(s.inspect(&name).await?))
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

async fn remove_network<S: Store>(
    State(s): State<Arc<Service<S>>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<crate::api::types::RemoveResponse> {
    access::require_root(caller, "remove networks")?;
    Ok(Json(s.remove_network(&name, q.force).await?))
}

#[derive(Deserialize)]
struct EndpointsQuery {
    network: Option<String>,
}

async fn endpoints<S: Store>(
    State(s): State<Arc<Service<S>>>,
    Query(q): Query<EndpointsQuery>,
) -> ApiResult<Vec<crate::model::Endpoint>> {
    Ok(Json(s.endpoints(q.network.as_deref()).await?))
}

async fn attach<S: Store>(
    State(s): State<Arc<Service<S>>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<crate::model::Endpoint> {
    let req: AttachRequest = decode_body(body)?;
    let started = Instant::now();
    let result = s.attach(&req, caller).await;
    metrics::get().attached(started.elapsed(), result.is_ok());
    Ok(Json(result?))
}

async fn detach<S: Store>(
    State(s): State<Arc<Service<S>>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<crate::api::types::DetachResponse> {
    let req: DetachRequest = decode_body(body)?;
    let started = Instant::now();
    let result = s.detach(&req, caller).await;
    metrics::get().detached(started.elapsed(), result.is_ok());
    Ok(Json(result?))
}

async fn doctor<S: Store>(
    State(s): State<Arc<Service<S>>>,
) -> ApiResult<crate::api::types::DoctorReport> {
    let report = s.doctor(false).await?;
    metrics::get().reconciled(report.drift.len(), false);
    Ok(Json(report))
}

async fn reconcile<S: Store>(
    State(s): State<Arc<Service<S>>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<crate::api::types::DoctorReport> {
    access::require_root(caller, "repair the kernel (doctor --repair)")?;
    let report = s.doctor(true).await?;
    metrics::get().reconciled(report.drift.len(), true);
    Ok(Json(report))
}

async fn peers<S: Store>(
    State(s): State<Arc<Service<S>>>,
) -> ApiResult<Vec<crate::api::types::PeerInfo>> {
    Ok(Json(s.peers()))
}

async fn trust_peer<S: Store>(
    State(s): State<Arc<Service<S>>>,
    Extension(caller): Extension<Caller>,
    Path(host): Path<String>,
) -> ApiResult<crate::api::types::TrustResponse> {
    access::require_root(caller, "approve a peer's identity")?;
    Ok(Json(s.trust_peer(&host)?))
}

async fn rotate_key<S: Store>(
    State(s): State<Arc<Service<S>>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<crate::model::WireguardInfo> {
    access::require_root(caller, "rotate this host's WireGuard key")?;
    Ok(Json(s.rotate_key()?))
}

async fn gc<S: Store>(
    State(s): State<Arc<Service<S>>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<crate::api::types::GcResponse> {
    access::require_root(caller, "release a host's addresses (gc)")?;
    let req: crate::api::types::GcRequest = decode_body(body)?;
    Ok(Json(s.gc(&req).await?))
}

// ----- CNI: what the rnet-cni plugin calls -----

async fn cni_add<S: Store>(
    State(s): State<Arc<Service<S>>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<crate::api::types::CniAttachment> {
    let req: AttachRequest = decode_body(body)?;
    let started = Instant::now();
    let result = s.cni_add(&req, caller).await;
    metrics::get().attached(started.elapsed(), result.is_ok());
    Ok(Json(result?))
}

async fn cni_del<S: Store>(
    State(s): State<Arc<Service<S>>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<crate::api::types::CniDelResponse> {
    access::require_root(caller, "release CNI attachments (CNI DEL)")?;
    let req: crate::api::types::CniDelRequest = decode_body(body)?;
    let started = Instant::now();
    let result = s.cni_del(&req).await;
    metrics::get().detached(started.elapsed(), result.is_ok());
    Ok(Json(result?))
}

async fn cni_check<S: Store>(
    State(s): State<Arc<Service<S>>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<crate::api::types::CniAttachment> {
    let req: crate::api::types::CniCheckRequest = decode_body(body)?;
    Ok(Json(s.cni_check(&req, caller).await?))
}

#[derive(Deserialize)]
struct CniStatusQuery {
    network: String,
}

async fn cni_status<S: Store>(
    State(s): State<Arc<Service<S>>>,
    Query(q): Query<CniStatusQuery>,
) -> ApiResult<crate::api::types::CniStatus> {
    Ok(Json(s.cni_status(&q.network).await?))
}

async fn cni_gc<S: Store>(
    State(s): State<Arc<Service<S>>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<crate::api::types::CniGcResponse> {
    access::require_root(caller, "release CNI attachments (CNI GC)")?;
    let req: crate::api::types::CniGcRequest = decode_body(body)?;
    Ok(Json(s.cni_gc(&req).await?))
}
