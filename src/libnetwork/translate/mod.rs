//! Pure translation between Docker's libnetwork requests and rnet's networks and endpoints.
//! No I/O: the daemon (`daemon::docker_plugin`) looks things up, calls these, and applies the result.
//!
//! Which rnet network a Docker network is:
//! - the one named by `-o rnet.network=NAME` (created with the Docker network's subnet if absent);
//! - else the one rnet network whose subnet is the Docker network's pool;
//! - else a new one named after the subnet (`dk` + the subnet in hex + the prefix length), so
//!   `docker network create -d rnet --ipam-driver rnet --subnet S` on several hosts names one
//!   rnet network everywhere (Docker does not tell a driver the Docker network's name).

use std::net::Ipv4Addr;

use crate::error::Error;
use crate::ipam;

/// Docker keeps the network's state on each host (there is no cluster store since Docker 23)…
pub const SCOPE: &str = "local";
/// …while its connectivity spans hosts.
pub const CONNECTIVITY_SCOPE: &str = "global";
/// The address spaces rnet's IPAM driver reports; either one means "rnet's cluster-wide IPAM".
pub const LOCAL_ADDRESS_SPACE: &str = "rnet-local";
pub const GLOBAL_ADDRESS_SPACE: &str = "rnet-global";
/// `-o rnet.network=NAME` (driver) and `--ipam-opt rnet.network=NAME` (IPAM).
pub const NETWORK_OPTION: &str = "rnet.network";
/// `-o rnet.vni=N`, used when the rnet network is created.
pub const VNI_OPTION: &str = "rnet.vni";
/// `-o rnet.mtu=N` (or Docker's `com.docker.network.driver.mtu`), used when the rnet network is created.
pub const MTU_OPTION: &str = "rnet.mtu";
/// `-o rnet.encrypt=wireguard`, used when the rnet network is created.
pub const ENCRYPT_OPTION: &str = "rnet.encrypt";
/// Docker names the moved interface `eth<N>`.
pub const DST_PREFIX: &str = "eth";
/// Endpoint ids of addresses the IPAM driver holds for Docker outside an endpoint's life.
pub const RESERVATION_PREFIX: &str = "docker-ipam-";
const POOL_PREFIX: &str = "rnet:";

fn invalid<T>(msg: impl Into<String>) -> Result<T, Error> {
    Err(Error::Invalid(msg.into()))
}

/// Parse an address Docker gives as `ip` or `ip/prefix` (empty: none).
pub fn parse_address(what: &str, s: &str) -> Result<Option<Ipv4Addr>, Error> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let ip = s.split('/').next().unwrap_or(s);
    Ok(Some(ipam::parse_ip(what, ip)?))
}

mod endpoint;
mod network;
mod pool;

pub use endpoint::{
    create_endpoint_response, endpoint_id, join_response, oper_info, peer_ifname,
    requested_interface,
};
pub use network::{
    check_compatible, choose_network, derived_name, is_rnet_address_space, plan_network, Choice,
    NetworkPlan,
};
pub use pool::{
    gateway_for, is_gateway_request, is_reservation, plan_pool, pool_network, reservation_id,
    PoolRef,
};

#[cfg(test)]
mod tests;
