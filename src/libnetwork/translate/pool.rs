//! The IPAM driver's side: pools, addresses, gateways and the reservations that hold them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::{
    choose_network, invalid, Choice, NetworkPlan, NETWORK_OPTION, POOL_PREFIX, RESERVATION_PREFIX,
};
use crate::error::Error;
use crate::ipam;
use crate::libnetwork::protocol::{RequestPoolRequest, GATEWAY_ADDRESS_TYPE, REQUEST_ADDRESS_TYPE};
use crate::model::{Endpoint, EndpointId, Network, NetworkName};

/// An IPAM pool: a subnet, and the rnet network when `--ipam-opt rnet.network=NAME` named one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRef {
    pub subnet: Ipv4Network,
    pub network: Option<NetworkName>,
}

impl PoolRef {
    /// The pool id: self-describing (`rnet:SUBNET[:NAME]`), so a restarted daemon, or any
    /// host, understands it without state; identical requests give identical ids.
    pub fn id(&self) -> String {
        match &self.network {
            Some(n) => format!("{POOL_PREFIX}{}:{n}", self.subnet),
            None => format!("{POOL_PREFIX}{}", self.subnet),
        }
    }

    pub fn parse(id: &str) -> Result<PoolRef, Error> {
        let bad = || {
            Error::Invalid(format!(
                "pool id {id:?} is not one of rnet's (rnet:SUBNET[:NETWORK])"
            ))
        };
        let rest = id.strip_prefix(POOL_PREFIX).ok_or_else(bad)?;
        let (subnet, network) = match rest.split_once(':') {
            Some((s, n)) => (s, Some(n.parse().map_err(|_| bad())?)),
            None => (rest, None),
        };
        let subnet = ipam::parse_subnet(subnet).map_err(|_| bad())?;
        Ok(PoolRef { subnet, network })
    }
}

/// Read a `RequestPool` request, given the networks that exist.
pub fn plan_pool(req: &RequestPoolRequest, networks: &[Network]) -> Result<PoolRef, Error> {
    if req.v6 {
        return invalid("rnet's IPAM is IPv4 only: create the Docker network without --ipv6");
    }
    if !req.sub_pool.is_empty() {
        return invalid("rnet's IPAM allocates from the whole subnet; --ip-range is not supported");
    }
    let mut network: Option<NetworkName> = None;
    for (key, value) in &req.options {
        match key.as_str() {
            NETWORK_OPTION => network = Some(value.parse()?),
            k if k.starts_with("rnet.") => {
                return invalid(format!(
                    "unknown IPAM option {k}; rnet knows {NETWORK_OPTION}"
                ))
            }
            _ => {}
        }
    }
    let named = network
        .as_ref()
        .and_then(|n| networks.iter().find(|x| &x.name == n));
    let subnet = if req.pool.trim().is_empty() {
        match (&network, named) {
            (_, Some(net)) => net.subnet,
            (Some(n), None) => {
                return invalid(format!(
                    "rnet network {n} does not exist; give its subnet with --subnet to create it"
                ))
            }
            (None, None) => {
                return invalid(
                    "rnet's IPAM needs the subnet: docker network create --subnet CIDR \
                     (the same on every host), or --ipam-opt rnet.network=NAME for an existing rnet network",
                )
            }
        }
    } else {
        ipam::parse_subnet(req.pool.trim())?
    };
    if let Some(net) = named.filter(|n| n.subnet != subnet) {
        return Err(Error::Conflict(format!(
            "rnet network {} has subnet {}, not {subnet}",
            net.name, net.subnet
        )));
    }
    Ok(PoolRef { subnet, network })
}

/// The rnet network an IPAM pool allocates from. `bound` are the rnet networks that Docker
/// networks with this pool's subnet (and rnet's IPAM) were mapped to on this host.
pub fn pool_network(
    pool: &PoolRef,
    bound: &BTreeSet<String>,
    networks: &[Network],
) -> Result<Choice, Error> {
    let name = match (&pool.network, bound.len()) {
        (Some(n), _) => Some(n.clone()),
        (None, 1) => Some(bound.iter().next().expect("one").parse()?),
        (None, 0) => None,
        (None, _) => {
            return Err(Error::Conflict(format!(
                "Docker networks on this host map subnet {} to several rnet networks ({}); \
                 create them with --ipam-opt {NETWORK_OPTION}=NAME to tell rnet's IPAM which",
                pool.subnet,
                bound.iter().cloned().collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let plan = NetworkPlan {
        name,
        subnet: pool.subnet,
        gateway: None,
        mtu: None,
        vni: None,
        // An encrypted network is made by `rnet create --encrypt` or the driver's option.
        encryption: None,
        rnet_ipam: true,
        internal: false,
    };
    choose_network(&plan, networks)
}

/// Whether a `RequestAddress` asks for the network's gateway.
pub fn is_gateway_request(options: &BTreeMap<String, String>) -> bool {
    options.get(REQUEST_ADDRESS_TYPE).map(String::as_str) == Some(GATEWAY_ADDRESS_TYPE)
}

/// The answer to a gateway request: the rnet network's gateway if it exists, else the one
/// asked for (`--gateway`), else the subnet's first host address (rnet's default).
pub fn gateway_for(
    pool: &PoolRef,
    requested: Option<Ipv4Addr>,
    existing: Option<&Network>,
) -> Result<Ipv4Network, Error> {
    let gateway = match (existing, requested) {
        (Some(net), Some(g)) if g != net.gateway => {
            return Err(Error::Conflict(format!(
                "rnet network {} has gateway {}, not {g}",
                net.name, net.gateway
            )))
        }
        (Some(net), _) => net.gateway,
        (None, Some(g)) => g,
        (None, None) => Ipv4Addr::from(u32::from(pool.subnet.network()) + 1),
    };
    let s = pool.subnet;
    if !s.contains(gateway) || gateway == s.network() || gateway == s.broadcast() {
        return invalid(format!("gateway {gateway} is not a host address of {s}"));
    }
    Ok(Ipv4Network::new(gateway, s.prefix()).expect("prefix of a valid subnet"))
}

/// The id under which the IPAM driver holds an address outside an endpoint's life.
pub fn reservation_id(seed: u64) -> EndpointId {
    format!("{RESERVATION_PREFIX}{:012x}", seed & 0xffff_ffff_ffff)
        .parse()
        .expect("valid id")
}

/// Whether a record is an IPAM reservation (not an endpoint Docker created).
pub fn is_reservation(ep: &Endpoint) -> bool {
    ep.id.as_str().starts_with(RESERVATION_PREFIX)
}
