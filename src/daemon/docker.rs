//! The Docker plugin server: libnetwork's remote network driver and remote IPAM driver on
//! `<docker-plugin-dir>/<name>.sock`, a second axum router next to the API's.
//!
//! Every call answers at once from local state where it can (activation, capabilities,
//! pools, gateways, networks the store watch already knows); a call that must write the
//! store (addresses, endpoint records) runs in its own task and Docker gets an answer within
//! [`DEADLINE`] whatever the store does: dockerd waits for its plugins, and a plugin that
//! hangs hangs container starts (moby/libnetwork#813). Work that finishes after Docker was
//! told it failed is undone, so a slow store leaks nothing.
//!
//! Errors travel as the protocol says: `{"Err": …}` from the network driver, `{"Error": …}`
//! from the IPAM driver, both with HTTP 200 (libnetwork reads the field; a non-200 status
//! would make Docker's plugin client show the raw body). Unknown methods get HTTP 404, which
//! Docker reads as "optional method not implemented".

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::service::{Service, Versioned};
use crate::dataplane::{Dataplane, Netlink};
use crate::error::{Error, Result};
use crate::libnetwork::protocol::{
    self, ActivateResponse, AddressSpacesResponse, CapabilitiesResponse, CreateEndpointRequest,
    CreateEndpointResponse, CreateNetworkRequest, DeleteNetworkRequest, DriverError,
    EndpointOperInfoResponse, EndpointRequest, IpamCapabilitiesResponse, IpamError, JoinRequest,
    JoinResponse, ProgramExternalConnectivityRequest, ReleaseAddressRequest, ReleasePoolRequest,
    RequestAddressRequest, RequestAddressResponse, RequestPoolRequest, RequestPoolResponse,
    CONTENT_TYPE, IMPLEMENTS,
};
use crate::libnetwork::state::{Binding, State as DriverState};
use crate::libnetwork::translate::{self, Choice, PoolRef};
use crate::model::{fnv1a, Endpoint, EndpointId, Network};
use crate::store::Store;

mod names;

/// The longest a Docker call waits for the store (and the kernel) before it is answered.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// The plugin name Docker knows rnet by (`-d rnet --ipam-driver rnet`).
pub const DEFAULT_NAME: &str = "rnet";
/// The state file, in the daemon's state dir.
const STATE_FILE: &str = "docker.json";

/// Where the plugin socket goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginConfig {
    pub dir: PathBuf,
    /// The socket is `<dir>/<name>.sock`, and Docker's driver name is `<name>`.
    pub name: String,
}

impl PluginConfig {
    /// From rnetd's flags: `none` turns the plugin off.
    pub fn from_flags(dir: &str, name: &str) -> Result<Option<PluginConfig>> {
        if dir == "none" || dir.is_empty() {
            return Ok(None);
        }
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return Err(Error::Invalid(format!(
                "Docker plugin name {name:?} may only contain letters, digits, '_', '.' and '-'"
            )));
        }
        Ok(Some(PluginConfig {
            dir: PathBuf::from(dir),
            name: name.to_string(),
        }))
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join(format!("{}.sock", self.name))
    }
}

type Undo<T> = Box<dyn FnOnce(T) -> BoxFuture<'static, ()> + Send>;

/// The driver: the service, the local state, and the Docker endpoints this process has seen.
pub struct Plugin<S: Store, D: Dataplane = Netlink> {
    service: Arc<Service<S, D>>,
    state: Mutex<DriverState>,
    state_path: PathBuf,
    /// By Docker endpoint id: the record as last written (saves a store read per call; after
    /// a restart the store's id index finds them again).
    endpoints: Mutex<HashMap<String, Versioned>>,
    deadline: Duration,
    /// The local Docker engine's API socket, asked for containers' names after a Join.
    engine: Option<PathBuf>,
}

impl<S: Store, D: Dataplane> Plugin<S, D> {
    /// Load the local state from `state_dir` (an unreadable file is moved aside: the daemon
    /// must come up; the Docker networks it named need creating again).
    pub fn open(service: Arc<Service<S, D>>, state_dir: &Path) -> Plugin<S, D> {
        let state_path = state_dir.join(STATE_FILE);
        let state = match DriverState::load(&state_path) {
            Ok(s) => s,
            Err(e) => {
                let aside = state_path.with_extension("json.bad");
                tracing::error!(error = %e, file = %state_path.display(), moved_to = %aside.display(),
                    "unreadable Docker driver state; starting empty");
                let _ = std::fs::rename(&state_path, &aside);
                DriverState::default()
            }
        };
        tracing::info!(
            networks = state.networks.len(),
            pools = state.pools.len(),
            "Docker driver state loaded"
        );
        Plugin {
            service,
            state: Mutex::new(state),
            state_path,
            endpoints: Mutex::new(HashMap::new()),
            deadline: DEADLINE,
            engine: None,
        }
    }

    /// Name Docker's containers (DNS) from the engine's API at `socket` (None: not at all).
    pub fn with_engine(mut self, socket: Option<PathBuf>) -> Self {
        self.engine = socket;
        self
    }

    /// Change the local state and write it out.
    fn change_state<T>(&self, f: impl FnOnce(&mut DriverState) -> T) -> Result<T> {
        let mut state = self.state.lock().expect("state poisoned");
        let mut next = state.clone();
        let out = f(&mut next);
        if next != *state {
            next.save(&self.state_path).map_err(|e| {
                Error::Internal(format!("writing {}: {e}", self.state_path.display()))
            })?;
            *state = next;
        }
        Ok(out)
    }

    fn binding(&self, network_id: &str) -> Result<Binding> {
        self.state
            .lock()
            .expect("state poisoned")
            .networks
            .get(network_id)
            .cloned()
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "rnet knows no Docker network {network_id} (was it created with -d rnet on this host?)"
                ))
            })
    }

    /// Run `op` in its own task; answer within the deadline. If `op` succeeds only after the
    /// caller was answered, `undo` takes its result back.
    async fn bounded<T, F>(&self, what: &'static str, op: F, undo: Option<Undo<T>>) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let result = op.await;
            if let Err(Ok(late)) = tx.send(result) {
                tracing::warn!(
                    call = what,
                    "finished after Docker was told it failed; undoing"
                );
                if let Some(undo) = undo {
                    undo(late).await;
                }
            }
        });
        match tokio::time::timeout(self.deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Internal(format!("{what} was abandoned"))),
            Err(_) => Err(Error::Store(crate::store::StoreError::Unavailable(
                format!(
                "rnetd could not finish {what} within {:?} (is the store reachable?); try again",
                self.deadline
            ),
            ))),
        }
    }

    /// Every network: the watched cache when it has synced, else the store (bounded).
    async fn networks_now(&self) -> Result<Vec<Network>> {
        if let Some(n) = self.service.cached_networks() {
            return Ok(n);
        }
        let service = self.service.clone();
        self.bounded(
            "listing networks",
            async move { service.networks().await },
            None,
        )
        .await
    }

    /// The record of a Docker endpoint: as last written by this process, else by its id in the store.
    async fn endpoint(&self, b: &Binding, endpoint_id: &str) -> Result<Option<Versioned>> {
        if let Some(v) = self
            .endpoints
            .lock()
            .expect("endpoints poisoned")
            .get(endpoint_id)
        {
            return Ok(Some(v.clone()));
        }
        let (service, net, id) = (
            self.service.clone(),
            b.network.to_string(),
            endpoint_id.to_string(),
        );
        self.bounded(
            "looking up the endpoint",
            async move { service.endpoint_by_id(&net, &id).await },
            None,
        )
        .await
    }

    fn remember(&self, endpoint_id: &str, v: Option<Versioned>) {
        let mut map = self.endpoints.lock().expect("endpoints poisoned");
        match v {
            Some(v) => map.insert(endpoint_id.to_string(), v),
            None => map.remove(endpoint_id),
        };
    }

    // ----- NetworkDriver -----

    async fn create_network(&self, req: CreateNetworkRequest) -> Result<serde_json::Value> {
        if req.network_id.is_empty() {
            return Err(Error::Invalid("NetworkID is empty".into()));
        }
        let plan = translate::plan_network(&req)?;
        let networks = self.networks_now().await?;
        let net = match translate::choose_network(&plan, &networks)? {
            Choice::Existing(n) => n,
            Choice::Create(r) => {
                let (service, plan) = (self.service.clone(), plan.clone());
                self.bounded(
                    "CreateNetwork",
                    async move {
                        match service.create_network(&r).await {
                            // The cache was behind: decide again on the store's networks.
                            Err(Error::Conflict(_)) => {
                                match translate::choose_network(&plan, &service.networks().await?)?
                                {
                                    Choice::Existing(n) => Ok(n),
                                    Choice::Create(r) => service.create_network(&r).await,
                                }
                            }
                            other => other,
                        }
                    },
                    None,
                )
                .await?
            }
        };
        let binding = Binding {
            network: net.name.clone(),
            subnet: net.subnet,
            rnet_ipam: plan.rnet_ipam,
        };
        self.change_state(|s| s.networks.insert(req.network_id.clone(), binding))?;
        tracing::info!(docker_network = %req.network_id, network = %net.name, rnet_ipam = plan.rnet_ipam, "Docker network mapped");
        Ok(serde_json::json!({}))
    }

    async fn delete_network(&self, req: DeleteNetworkRequest) -> Result<serde_json::Value> {
        // The rnet network stays: it is cluster-wide, and other hosts may use it.
        if let Some(b) = self.change_state(|s| s.networks.remove(&req.network_id))? {
            tracing::info!(docker_network = %req.network_id, network = %b.network, "Docker network unmapped");
        }
        Ok(serde_json::json!({}))
    }

    async fn create_endpoint(
        self: Arc<Self>,
        req: CreateEndpointRequest,
    ) -> Result<CreateEndpointResponse> {
        let b = self.binding(&req.network_id)?;
        let eid = translate::endpoint_id(&req.endpoint_id)?;
        let (ip, mac) = translate::requested_interface(&req.interface)?;
        let service = self.service.clone();
        let me = service.host_id().to_string();
        let (id, net_name) = (eid.clone(), b.network.to_string());
        let op = async move {
            let net = service.network_fast(&net_name).await?;
            let cur = match ip {
                None => service.hold_address(&net, id.clone(), None).await?,
                Some(ip) => match service.endpoint_at(&net_name, ip).await? {
                    Some(v) if v.ep.host == me && (v.ep.id == id || translate::is_reservation(&v.ep)) => v,
                    Some(v) => {
                        return Err(Error::Conflict(format!(
                            "address {ip} on rnet network {net_name} is taken by endpoint {} on host {}",
                            v.ep.id, v.ep.host
                        )))
                    }
                    None => service.hold_address(&net, id.clone(), Some(ip)).await?,
                },
            };
            service
                .update_endpoint(cur, |e| Endpoint {
                    id: id.clone(),
                    mac: mac.unwrap_or(e.mac),
                    // A reservation is adopted only into the network it is now part of.
                    network_id: net.id.clone(),
                    ..e.clone()
                })
                .await
        };
        let (me2, b2) = (self.clone(), b.clone());
        let undo: Undo<Versioned> = Box::new(move |v| {
            Box::pin(async move {
                me2.end_endpoint(&b2, v).await.ok();
            })
        });
        let v = self.bounded("CreateEndpoint", op, Some(undo)).await?;
        self.remember(&req.endpoint_id, Some(v.clone()));
        tracing::info!(network = %b.network, id = %eid, ip = %v.ep.ip, "Docker endpoint created");
        Ok(translate::create_endpoint_response(&req.interface, &v.ep))
    }

    /// Take an endpoint out of Docker's hands: its veth goes, its address is held again for
    /// rnet's IPAM (which Docker asks to release it next) or released.
    async fn end_endpoint(&self, b: &Binding, v: Versioned) -> Result<()> {
        let net = self.service.network_fast(b.network.as_str()).await?;
        let hold = b.rnet_ipam.then(|| new_reservation_id(&v.ep.id));
        self.service.docker_delete_endpoint(&net, v, hold).await
    }

    async fn delete_endpoint(self: Arc<Self>, req: EndpointRequest) -> Result<serde_json::Value> {
        let Ok(b) = self.binding(&req.network_id) else {
            return Ok(serde_json::json!({}));
        };
        let Some(v) = self.endpoint(&b, &req.endpoint_id).await? else {
            return Ok(serde_json::json!({}));
        };
        let me = self.clone();
        self.bounded(
            "DeleteEndpoint",
            async move { me.end_endpoint(&b, v).await },
            None,
        )
        .await?;
        self.remember(&req.endpoint_id, None);
        Ok(serde_json::json!({}))
    }

    async fn endpoint_oper_info(&self, req: EndpointRequest) -> Result<EndpointOperInfoResponse> {
        let b = self.binding(&req.network_id)?;
        let value = match self.endpoint(&b, &req.endpoint_id).await? {
            Some(v) => translate::oper_info(&v.ep),
            None => Default::default(),
        };
        Ok(EndpointOperInfoResponse { value })
    }

    async fn join(self: Arc<Self>, req: JoinRequest) -> Result<JoinResponse> {
        let b = self.binding(&req.network_id)?;
        let cur = self.endpoint(&b, &req.endpoint_id).await?.ok_or_else(|| {
            Error::NotFound(format!(
                "rnet knows no endpoint {} on network {}",
                req.endpoint_id, b.network
            ))
        })?;
        let service = self.service.clone();
        let net_name = b.network.to_string();
        let peer = translate::peer_ifname(&net_name, cur.ep.ip.ip());
        let (sandbox_key, peer2) = (req.sandbox_key.clone(), peer.clone());
        let op = async move {
            let net = service.network_fast(&net_name).await?;
            let joined = service.docker_join(&net, cur, &sandbox_key, &peer2).await?;
            Ok((net, joined))
        };
        let service = self.service.clone();
        let undo: Undo<(Network, Versioned)> = Box::new(move |(net, v)| {
            Box::pin(async move {
                let _ = service.docker_leave(&net, v).await;
            })
        });
        let (net, joined) = self.bounded("Join", op, Some(undo)).await?;
        self.remember(&req.endpoint_id, Some(joined));
        self.clone()
            .name_from_engine(req.network_id.clone(), req.endpoint_id.clone());
        Ok(translate::join_response(&net, &peer))
    }

    async fn leave(&self, req: EndpointRequest) -> Result<serde_json::Value> {
        let b = self.binding(&req.network_id)?;
        let Some(cur) = self.endpoint(&b, &req.endpoint_id).await? else {
            return Ok(serde_json::json!({}));
        };
        let service = self.service.clone();
        let net_name = b.network.to_string();
        let op = async move {
            let net = service.network_fast(&net_name).await?;
            service.docker_leave(&net, cur).await
        };
        let left = self.bounded("Leave", op, None).await?;
        self.remember(&req.endpoint_id, Some(left));
        Ok(serde_json::json!({}))
    }

    /// Publish the endpoint's ports (`docker run -p`); egress needs nothing per endpoint.
    async fn program_external(
        &self,
        req: ProgramExternalConnectivityRequest,
    ) -> Result<serde_json::Value> {
        let ports = crate::libnetwork::ports::port_mappings(&req.options)?;
        self.publish(&req.network_id, &req.endpoint_id, ports).await
    }

    async fn revoke_external(&self, req: EndpointRequest) -> Result<serde_json::Value> {
        self.publish(&req.network_id, &req.endpoint_id, Vec::new())
            .await
    }

    async fn publish(
        &self,
        network_id: &str,
        endpoint_id: &str,
        ports: Vec<crate::model::PortMapping>,
    ) -> Result<serde_json::Value> {
        let b = self.binding(network_id)?;
        let Some(cur) = self.endpoint(&b, endpoint_id).await? else {
            if ports.is_empty() {
                return Ok(serde_json::json!({}));
            }
            return Err(Error::NotFound(format!(
                "rnet knows no endpoint {endpoint_id} on network {}",
                b.network
            )));
        };
        let (service, net_name) = (self.service.clone(), b.network.to_string());
        let op = async move {
            let net = service.network_fast(&net_name).await?;
            service.docker_publish(&net, cur, ports).await
        };
        let done = self.bounded("ExternalConnectivity", op, None).await?;
        self.remember(endpoint_id, Some(done));
        Ok(serde_json::json!({}))
    }

    // ----- IpamDriver -----

    async fn request_pool(&self, req: RequestPoolRequest) -> Result<RequestPoolResponse> {
        let networks = self.networks_now().await?;
        let pool = translate::plan_pool(&req, &networks)?;
        let id = pool.id();
        let count = self.change_state(|s| s.acquire_pool(&id))?;
        tracing::info!(pool = %id, count, "IPAM pool requested");
        Ok(RequestPoolResponse {
            pool_id: id,
            pool: pool.subnet.to_string(),
            data: Default::default(),
        })
    }

    async fn release_pool(&self, req: ReleasePoolRequest) -> Result<serde_json::Value> {
        PoolRef::parse(&req.pool_id)?;
        let left = self.change_state(|s| s.release_pool(&req.pool_id))?;
        tracing::info!(pool = %req.pool_id, left = ?left, "IPAM pool released");
        Ok(serde_json::json!({}))
    }

    /// The rnet network a pool allocates from (created if absent when `create`).
    async fn pool_network(&self, pool: &PoolRef) -> Result<Choice> {
        let bound = self
            .state
            .lock()
            .expect("state poisoned")
            .ipam_bindings(pool.subnet);
        translate::pool_network(pool, &bound, &self.networks_now().await?)
    }

    async fn request_address(
        self: Arc<Self>,
        req: RequestAddressRequest,
    ) -> Result<RequestAddressResponse> {
        let pool = PoolRef::parse(&req.pool_id)?;
        let requested = translate::parse_address("address", &req.address)?;
        let choice = self.pool_network(&pool).await?;
        if translate::is_gateway_request(&req.options) {
            let existing = match &choice {
                Choice::Existing(n) => Some(n),
                Choice::Create(_) => None,
            };
            let gw = translate::gateway_for(&pool, requested, existing)?;
            return Ok(RequestAddressResponse {
                address: gw.to_string(),
                data: Default::default(),
            });
        }
        let service = self.service.clone();
        let seed = fnv1a(format!("{}/{:?}", req.pool_id, std::time::Instant::now()).as_bytes());
        let op = async move {
            let net = match choice {
                Choice::Existing(n) => n,
                Choice::Create(r) => service.create_network(&r).await?,
            };
            service
                .hold_address(&net, translate::reservation_id(seed), requested)
                .await
        };
        let service = self.service.clone();
        let undo: Undo<Versioned> = Box::new(move |v| {
            Box::pin(async move {
                let _ = service.delete_endpoint(&v).await;
            })
        });
        let v = self.bounded("RequestAddress", op, Some(undo)).await?;
        Ok(RequestAddressResponse {
            address: v.ep.ip.to_string(),
            data: Default::default(),
        })
    }

    async fn release_address(&self, req: ReleaseAddressRequest) -> Result<serde_json::Value> {
        let pool = PoolRef::parse(&req.pool_id)?;
        let Some(ip) = translate::parse_address("address", &req.address)? else {
            return Err(Error::Invalid("ReleaseAddress without an Address".into()));
        };
        let net = match self.pool_network(&pool).await {
            Ok(Choice::Existing(n)) => n,
            _ => return Ok(serde_json::json!({})), // no such network: nothing is held
        };
        if ip == net.gateway {
            return Ok(serde_json::json!({}));
        }
        let service = self.service.clone();
        let op = async move {
            match service.endpoint_at(net.name.as_str(), ip).await? {
                Some(v) if v.ep.host == service.host_id() && translate::is_reservation(&v.ep) => {
                    service.delete_endpoint(&v).await
                }
                Some(v) => {
                    tracing::warn!(ip = %ip, id = %v.ep.id, host = %v.ep.host,
                        "ReleaseAddress for an address Docker's IPAM does not hold here; left alone");
                    Ok(())
                }
                None => Ok(()),
            }
        };
        self.bounded("ReleaseAddress", op, None).await?;
        Ok(serde_json::json!({}))
    }
}

/// A fresh reservation id for an address an endpoint gives back.
fn new_reservation_id(previous: &EndpointId) -> EndpointId {
    translate::reservation_id(fnv1a(
        format!("{previous}/{:?}", std::time::Instant::now()).as_bytes(),
    ))
}

// ----- HTTP -----

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_flags() {
        assert_eq!(PluginConfig::from_flags("none", "rnet").unwrap(), None);
        let p = PluginConfig::from_flags("/run/docker/plugins", "rnet")
            .unwrap()
            .unwrap();
        assert_eq!(p.socket(), PathBuf::from("/run/docker/plugins/rnet.sock"));
        assert!(PluginConfig::from_flags("/x", "a/b").is_err());
        assert!(PluginConfig::from_flags("/x", "").is_err());
    }
}
