//! Endpoints: what `CreateEndpoint` and `Join` are given and answered.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::Value;

use super::{invalid, parse_address, DST_PREFIX};
use crate::error::Error;
use crate::libnetwork::protocol::{
    CreateEndpointResponse, EndpointInterface, InterfaceName, JoinResponse,
};
use crate::model::{fnv1a, Endpoint, EndpointId, Invalid, Mac, Network};

/// What `CreateEndpoint` was given: the address (from the IPAM driver) and a MAC (`--mac-address`).
pub fn requested_interface(
    i: &EndpointInterface,
) -> Result<(Option<Ipv4Addr>, Option<Mac>), Error> {
    if !i.address_ipv6.is_empty() {
        return invalid("rnet endpoints are IPv4 only");
    }
    let ip = parse_address("endpoint address", &i.address)?;
    let mac = if i.mac_address.is_empty() {
        None
    } else {
        Some(i.mac_address.parse::<Mac>()?)
    };
    Ok((ip, mac))
}

/// `CreateEndpoint`'s answer: only what Docker left empty (Docker refuses a driver that
/// changes a field it set), or no `Interface` at all.
pub fn create_endpoint_response(req: &EndpointInterface, ep: &Endpoint) -> CreateEndpointResponse {
    let iface = EndpointInterface {
        address: if req.address.is_empty() {
            ep.ip.to_string()
        } else {
            String::new()
        },
        address_ipv6: String::new(),
        mac_address: if req.mac_address.is_empty() {
            ep.mac.to_string()
        } else {
            String::new()
        },
    };
    CreateEndpointResponse {
        interface: (!iface.is_empty()).then_some(iface),
    }
}

/// The name of the veth end Docker moves into the container, while it is still in the host's
/// namespace: unique per (network, address) on the host, within IFNAMSIZ.
pub fn peer_ifname(network: &str, ip: Ipv4Addr) -> String {
    format!(
        "rd{:012x}",
        fnv1a(format!("{network}/{ip}").as_bytes()) & 0xffff_ffff_ffff
    )
}

/// `Join`'s answer. The gateway is the rnet network's gateway (the address of its sandbox
/// bridge), as `rnet run` gives its workloads, and `DisableGatewayService` is set: Docker then
/// adds no `docker_gwbridge` interface. rnet networks carry no traffic beyond the overlay.
pub fn join_response(net: &Network, peer: &str) -> JoinResponse {
    JoinResponse {
        interface_name: InterfaceName {
            src_name: peer.to_string(),
            dst_prefix: DST_PREFIX.to_string(),
        },
        gateway: net.gateway.to_string(),
        gateway_ipv6: String::new(),
        static_routes: Vec::new(),
        disable_gateway_service: true,
    }
}

/// `EndpointOperInfo`'s value (shown by `docker network inspect` and `docker inspect`).
pub fn oper_info(ep: &Endpoint) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    m.insert("rnet.network".into(), Value::from(ep.network.to_string()));
    m.insert("rnet.address".into(), Value::from(ep.ip.to_string()));
    m.insert("rnet.mac".into(), Value::from(ep.mac.to_string()));
    m.insert("rnet.host".into(), Value::from(ep.host.clone()));
    m.insert("rnet.veth".into(), Value::from(ep.host_ifname.clone()));
    m
}

/// A Docker endpoint id as an rnet endpoint id (Docker's are 64 hex digits).
pub fn endpoint_id(docker: &str) -> Result<EndpointId, Error> {
    if docker.is_empty() {
        return invalid("EndpointID is empty");
    }
    docker
        .parse::<EndpointId>()
        .map_err(|e: Invalid| Error::Invalid(e.0))
}
