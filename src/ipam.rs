//! Pure address and network planning: validating a network request against the networks
//! that exist, choosing a VNI, and choosing addresses. No I/O; the store makes the choices
//! stick (compare-and-swap on the address key).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::model::{
    Encryption, Invalid, Mac, Network, NetworkId, NetworkName, Vni, IPSEC_OVERHEAD, VNI_MAX,
    WIREGUARD_OVERHEAD,
};

/// Automatically assigned VNIs start here (low VNIs are often taken by hand-made devices).
pub const AUTO_VNI_BASE: u32 = 4096;
/// The smallest MTU IPv4 allows.
pub const MIN_MTU: u32 = 68;

/// A request to create a network; a wire type, defined with the API's.
pub use crate::api::types::NetworkRequest;

/// Why a network request cannot be granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    Conflict(String),
}

fn bad<T>(msg: String) -> Result<T, PlanError> {
    Err(PlanError::Invalid(Invalid(msg)))
}

/// The shortest subnet prefix a network may have. A /8 already holds 16.7 million addresses;
/// anything larger is a mistake (0.0.0.0/0 would take every address there is).
pub const MIN_PREFIX: u8 = 8;

/// Parse a subnet: an IPv4 network address with a prefix between /8 and /30.
pub fn parse_subnet(s: &str) -> Result<Ipv4Network, PlanError> {
    let net: Ipv4Network = match s.parse() {
        Ok(n) if s.contains('/') => n,
        _ => return bad(format!("subnet {s:?} is not an IPv4 CIDR like 10.1.0.0/24")),
    };
    if net.ip() != net.network() {
        return bad(format!(
            "subnet {s} has host bits set; did you mean {}/{}?",
            net.network(),
            net.prefix()
        ));
    }
    if net.prefix() < MIN_PREFIX {
        return bad(format!(
            "subnet {s} is too large: the shortest prefix a network may have is /{MIN_PREFIX}"
        ));
    }
    if net.prefix() > 30 {
        return bad(format!(
            "subnet {s} is too small: it needs room for a gateway and an endpoint (at most /30)"
        ));
    }
    Ok(net)
}

/// Parse an IPv4 address given as a string, naming what it is for.
pub fn parse_ip(what: &str, s: &str) -> Result<Ipv4Addr, Invalid> {
    s.parse()
        .map_err(|_| Invalid(format!("{what} {s:?} is not an IPv4 address")))
}

/// Whether `ip` is a usable host address of `subnet` (not its network or broadcast address).
fn is_host_address(subnet: Ipv4Network, ip: Ipv4Addr) -> bool {
    subnet.contains(ip) && ip != subnet.network() && ip != subnet.broadcast()
}

/// Turn a request into a network record, given the networks that exist and the MTU the
/// underlay allows. An identical request for an existing network returns that network.
pub fn plan_network(
    req: &NetworkRequest,
    existing: &[Network],
    max_mtu: u32,
) -> Result<Network, PlanError> {
    plan_network_avoiding(req, existing, max_mtu, &BTreeSet::new())
}

/// As [`plan_network`], never choosing a VNI of `held_vnis` (VNI index entries in the store
/// that no valid network record explains: a corrupted record's, or one being written).
pub fn plan_network_avoiding(
    req: &NetworkRequest,
    existing: &[Network],
    max_mtu: u32,
    held_vnis: &BTreeSet<u32>,
) -> Result<Network, PlanError> {
    let name: NetworkName = req.name.parse()?;
    let subnet = parse_subnet(&req.subnet)?;
    let same_name = existing.iter().find(|n| n.name == name);
    let gateway = match &req.gateway {
        Some(g) => parse_ip("gateway", g)?,
        None => same_name
            .filter(|n| n.subnet == subnet)
            .map(|n| n.gateway)
            .unwrap_or_else(|| first_host(subnet)),
    };
    if !is_host_address(subnet, gateway) {
        return bad(format!(
            "gateway {gateway} is not a host address of subnet {subnet}"
        ));
    }
    let encryption = req
        .encryption
        .or(same_name.map(|n| n.encryption))
        .unwrap_or_default();
    let (max_mtu, overhead) = match encryption {
        Encryption::None => (max_mtu, "the 50-byte VXLAN overhead"),
        Encryption::Wireguard => (
            max_mtu.saturating_sub(WIREGUARD_OVERHEAD),
            "the 50-byte VXLAN and 60-byte WireGuard overheads",
        ),
        Encryption::Ipsec => (
            max_mtu.saturating_sub(IPSEC_OVERHEAD),
            "the 50-byte VXLAN and 40-byte ESP overheads",
        ),
    };
    let mtu = req.mtu.or(same_name.map(|n| n.mtu)).unwrap_or(max_mtu);
    if !(MIN_MTU..=max_mtu).contains(&mtu) {
        return bad(format!(
            "MTU {mtu} is out of range {MIN_MTU}..={max_mtu} (the underlay MTU minus {overhead})"
        ));
    }
    let vni = match req.vni {
        Some(v) => Vni::new(v)?,
        None => match same_name {
            Some(n) => n.vni,
            None => pick_vni(existing, held_vnis)?,
        },
    };
    let net = Network {
        name,
        // A new network gets a fresh id; a repeated request is compared without it.
        id: same_name.map_or_else(NetworkId::random, |n| n.id.clone()),
        vni,
        subnet,
        gateway,
        mtu,
        encryption,
        allow_overlap: req.allow_overlap,
        egress: !req.no_egress && !req.internal,
        internal: req.internal,
    };
    if let Some(old) = same_name {
        return if old.same_options(&net) {
            Ok(old.clone())
        } else {
            Err(PlanError::Conflict(format!(
                "network {} already exists with other options ({}); remove it first or use the same options",
                old.name,
                describe_differences(old, &net)
            )))
        };
    }
    check_against_others(&net, existing)?;
    Ok(net)
}

fn check_against_others(net: &Network, existing: &[Network]) -> Result<(), PlanError> {
    if let Some(other) = existing.iter().find(|n| n.vni == net.vni) {
        return Err(PlanError::Conflict(format!(
            "VNI {} is already used by network {}",
            net.vni, other.name
        )));
    }
    if net.allow_overlap {
        return Ok(());
    }
    if let Some(other) = existing.iter().find(|n| n.subnet.overlaps(net.subnet)) {
        return Err(PlanError::Conflict(format!(
            "subnet {} overlaps subnet {} of network {} (use --allow-overlap to allow it: networks live in separate sandboxes)",
            net.subnet, other.subnet, other.name
        )));
    }
    Ok(())
}

fn describe_differences(old: &Network, new: &Network) -> String {
    let mut d = Vec::new();
    if old.subnet != new.subnet {
        d.push(format!("subnet {} vs {}", old.subnet, new.subnet));
    }
    if old.gateway != new.gateway {
        d.push(format!("gateway {} vs {}", old.gateway, new.gateway));
    }
    if old.vni != new.vni {
        d.push(format!("VNI {} vs {}", old.vni, new.vni));
    }
    if old.encryption != new.encryption {
        d.push(format!(
            "encryption {} vs {} (a network's encryption cannot change)",
            old.encryption, new.encryption
        ));
    }
    if old.mtu != new.mtu {
        d.push(format!("MTU {} vs {}", old.mtu, new.mtu));
    }
    if old.allow_overlap != new.allow_overlap {
        d.push(format!(
            "allow-overlap {} vs {}",
            old.allow_overlap, new.allow_overlap
        ));
    }
    if old.egress != new.egress {
        d.push(format!("egress {} vs {}", old.egress, new.egress));
    }
    if old.internal != new.internal {
        d.push(format!("internal {} vs {}", old.internal, new.internal));
    }
    d.join(", ")
}

/// The lowest VNI from `AUTO_VNI_BASE` up that no network uses and `held` does not name.
pub fn pick_vni(existing: &[Network], held: &BTreeSet<u32>) -> Result<Vni, PlanError> {
    let mut used: BTreeSet<u32> = existing.iter().map(|n| n.vni.get()).collect();
    used.extend(held);
    (AUTO_VNI_BASE..=VNI_MAX)
        .find(|v| !used.contains(v))
        .map(|v| Vni::new(v).expect("in range"))
        .ok_or_else(|| PlanError::Conflict("every VNI is in use".into()))
}

fn first_host(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// Check an address a caller asked for.
pub fn check_requested(net: &Network, ip: Ipv4Addr) -> Result<(), Invalid> {
    if !net.subnet.contains(ip) {
        return Err(Invalid(format!(
            "address {ip} is outside subnet {} of network {}",
            net.subnet, net.name
        )));
    }
    if ip == net.gateway {
        return Err(Invalid(format!(
            "address {ip} is the gateway of network {}",
            net.name
        )));
    }
    if !is_host_address(net.subnet, ip) {
        return Err(Invalid(format!(
            "address {ip} is the network or broadcast address of subnet {}",
            net.subnet
        )));
    }
    Ok(())
}

/// Free host addresses of `net`, lowest first, skipping the gateway and `taken`.
pub fn free_addresses<'a>(
    net: &'a Network,
    taken: &'a BTreeSet<Ipv4Addr>,
) -> impl Iterator<Item = Ipv4Addr> + 'a {
    let first = u32::from(net.subnet.network()) + 1;
    let last = u32::from(net.subnet.broadcast()) - 1;
    (first..=last)
        .map(Ipv4Addr::from)
        .filter(move |ip| *ip != net.gateway && !taken.contains(ip))
}

/// The free addresses of `net` in the order to try them, computed as they are consumed
/// (never a list of the whole space): the lowest free one first (sequential addresses in
/// the common, uncontended case), then, after losing a race for it, every other free one
/// from a point chosen by `seed` and around, so concurrent allocators spread out instead of
/// all fighting over the next one. Each free address comes exactly once.
pub fn candidates<'a>(
    net: &'a Network,
    taken: &'a BTreeSet<Ipv4Addr>,
    seed: u64,
) -> impl Iterator<Item = Ipv4Addr> + 'a {
    let first = u32::from(net.subnet.network()) + 1;
    let last = u32::from(net.subnet.broadcast()) - 1;
    let span = u64::from(last - first) + 1;
    let free = move |ip: &Ipv4Addr| *ip != net.gateway && !taken.contains(ip);
    let lowest = free_addresses(net, taken).next();
    let start = first + (seed % span) as u32;
    let around = (start..=last)
        .chain(first..start)
        .map(Ipv4Addr::from)
        .filter(free)
        .filter(move |ip| Some(*ip) != lowest);
    lowest.into_iter().chain(around)
}

/// How many endpoint addresses a network has in all.
pub fn capacity(net: &Network) -> u64 {
    // network, broadcast and gateway are not endpoints
    u64::from(u32::from(net.subnet.broadcast()) - u32::from(net.subnet.network())) - 2
}

/// Check a MAC a caller asks for: a unicast, non-zero address, and not one rnet derives
/// for an address of this network (`Mac::from_ipv4`), which a later endpoint would get.
pub fn check_requested_mac(net: &Network, mac: Mac) -> Result<(), Invalid> {
    if mac.is_zero() || mac.is_multicast() {
        return Err(Invalid(format!(
            "MAC address {mac} is not a unicast address (it is all zeros or has the group bit set)"
        )));
    }
    let derived_ip = Ipv4Addr::new(mac.0[2], mac.0[3], mac.0[4], mac.0[5]);
    if Mac::from_ipv4(derived_ip) == mac && net.subnet.contains(derived_ip) {
        return Err(Invalid(format!(
            "MAC address {mac} is the one rnet derives for {derived_ip} on network {}; choose another",
            net.name
        )));
    }
    Ok(())
}

/// Check an interface MTU a caller asks for against the network's.
pub fn check_requested_mtu(net: &Network, mtu: u32) -> Result<(), Invalid> {
    if mtu < MIN_MTU || mtu > net.mtu {
        return Err(Invalid(format!(
            "MTU {mtu} is out of range for network {}: {MIN_MTU}..={} (the network's MTU)",
            net.name, net.mtu
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
