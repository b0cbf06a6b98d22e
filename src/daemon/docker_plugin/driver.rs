//! The remote network driver's calls (`NetworkDriver.*`): Docker networks mapped to rnet
//! networks, endpoints as rnet endpoint records, Join as the veth Docker moves in.

use std::sync::Arc;

use rand_core::{OsRng, RngCore};

use super::{Plugin, Undo};
use crate::daemon::service::Versioned;
use crate::dataplane::Dataplane;
use crate::error::{Error, Result};
use crate::libnetwork::protocol::{
    CreateEndpointRequest, CreateEndpointResponse, CreateNetworkRequest, DeleteNetworkRequest,
    EndpointOperInfoResponse, EndpointRequest, JoinRequest, JoinResponse,
    ProgramExternalConnectivityRequest,
};
use crate::libnetwork::state::Binding;
use crate::libnetwork::translate::{self, Choice};
use crate::model::{Endpoint, EndpointId, Network};
use crate::store::Store;

impl<S: Store, D: Dataplane> Plugin<S, D> {
    pub(super) async fn create_network(
        &self,
        req: CreateNetworkRequest,
    ) -> Result<serde_json::Value> {
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

    pub(super) async fn delete_network(
        &self,
        req: DeleteNetworkRequest,
    ) -> Result<serde_json::Value> {
        // The rnet network stays: it is cluster-wide, and other hosts may use it.
        if let Some(b) = self.change_state(|s| s.networks.remove(&req.network_id))? {
            tracing::info!(docker_network = %req.network_id, network = %b.network, "Docker network unmapped");
        }
        Ok(serde_json::json!({}))
    }

    pub(super) async fn create_endpoint(
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
        let hold = b.rnet_ipam.then(new_reservation_id);
        self.service.docker_delete_endpoint(&net, v, hold).await
    }

    pub(super) async fn delete_endpoint(
        self: Arc<Self>,
        req: EndpointRequest,
    ) -> Result<serde_json::Value> {
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

    pub(super) async fn endpoint_oper_info(
        &self,
        req: EndpointRequest,
    ) -> Result<EndpointOperInfoResponse> {
        let b = self.binding(&req.network_id)?;
        let value = match self.endpoint(&b, &req.endpoint_id).await? {
            Some(v) => translate::oper_info(&v.ep),
            None => Default::default(),
        };
        Ok(EndpointOperInfoResponse { value })
    }

    pub(super) async fn join(self: Arc<Self>, req: JoinRequest) -> Result<JoinResponse> {
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

    pub(super) async fn leave(&self, req: EndpointRequest) -> Result<serde_json::Value> {
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
    pub(super) async fn program_external(
        &self,
        req: ProgramExternalConnectivityRequest,
    ) -> Result<serde_json::Value> {
        let ports = crate::libnetwork::ports::port_mappings(&req.options)?;
        self.publish(&req.network_id, &req.endpoint_id, ports).await
    }

    pub(super) async fn revoke_external(&self, req: EndpointRequest) -> Result<serde_json::Value> {
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
}

/// A fresh reservation id for an address an endpoint gives back (48 bits from the OS RNG).
fn new_reservation_id() -> EndpointId {
    translate::reservation_id(OsRng.next_u64())
}
