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
mod tests {
    use super::*;

    #[test]
    fn requested_mac_and_mtu() {
        let net = plan_network(&req("blue", "10.1.0.0/24"), &[], 1450).unwrap();
        let ok = |s: &str| check_requested_mac(&net, s.parse().unwrap());
        assert!(ok("02:00:00:00:00:01").is_ok());
        assert!(ok("00:00:00:00:00:00").is_err());
        assert!(ok("ff:ff:ff:ff:ff:ff").is_err());
        assert!(ok("01:00:5e:00:00:01").is_err());
        assert!(ok("02:52:0a:01:00:05").is_err(), "derived for 10.1.0.5");
        assert!(
            ok("02:52:0a:02:00:05").is_ok(),
            "derived for another subnet"
        );
        assert!(check_requested_mtu(&net, 1400).is_ok());
        assert!(check_requested_mtu(&net, 1450).is_ok());
        assert!(check_requested_mtu(&net, 1451).is_err());
        assert!(check_requested_mtu(&net, 67).is_err());
    }

    #[test]
    fn ipsec_costs_the_esp_overhead_in_mtu() {
        let enc = NetworkRequest {
            encryption: Some(Encryption::Ipsec),
            ..req("sec", "10.9.0.0/24")
        };
        let net = plan_network(&enc, &[], 1450).unwrap();
        assert_eq!(
            (net.encryption, net.mtu),
            (Encryption::Ipsec, 1410),
            "1500 - 50 - 40"
        );
        let e = plan_network(
            &NetworkRequest {
                mtu: Some(1411),
                ..enc
            },
            &[],
            1450,
        )
        .unwrap_err();
        assert!(e.to_string().contains("40-byte ESP"), "{e}");
    }

    #[test]
    fn encryption_is_fixed_and_costs_the_wireguard_overhead_in_mtu() {
        let enc = NetworkRequest {
            encryption: Some(Encryption::Wireguard),
            ..req("sec", "10.9.0.0/24")
        };
        let net = plan_network(&enc, &[], 1450).unwrap();
        assert_eq!(net.encryption, Encryption::Wireguard);
        assert_eq!(net.mtu, 1390, "1500 - 50 - 60");
        let e = plan_network(
            &NetworkRequest {
                mtu: Some(1400),
                ..enc.clone()
            },
            &[],
            1450,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("60-byte WireGuard"), "{e}");
        // Asked again without saying: the same network; asked with another value: refused.
        let again = plan_network(&req("sec", "10.9.0.0/24"), std::slice::from_ref(&net), 1450);
        assert_eq!(again.unwrap(), net);
        let plain = NetworkRequest {
            encryption: Some(Encryption::None),
            ..req("sec", "10.9.0.0/24")
        };
        let e = plan_network(&plain, std::slice::from_ref(&net), 1450)
            .unwrap_err()
            .to_string();
        assert!(e.contains("encryption wireguard vs none"), "{e}");
    }

    fn req(name: &str, subnet: &str) -> NetworkRequest {
        NetworkRequest {
            name: name.into(),
            subnet: subnet.into(),
            ..Default::default()
        }
    }

    fn net(name: &str, subnet: &str, vni: u32) -> Network {
        let mut r = req(name, subnet);
        r.vni = Some(vni);
        plan_network(&r, &[], 1450).unwrap()
    }

    #[test]
    fn defaults_are_filled_in() {
        let n = plan_network(&req("blue", "10.1.0.0/24"), &[], 1450).unwrap();
        assert_eq!(n.gateway, "10.1.0.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(n.mtu, 1450);
        assert_eq!(n.vni.get(), AUTO_VNI_BASE);
    }

    #[test]
    fn bad_subnets_are_named() {
        for (s, want) in [
            ("10.1.0.0", "not an IPv4 CIDR"),
            ("10.1.0.0/33", "not an IPv4 CIDR"),
            ("banana", "not an IPv4 CIDR"),
            ("10.1.0.5/24", "did you mean 10.1.0.0/24"),
            ("10.1.0.0/31", "too small"),
        ] {
            let e = plan_network(&req("a", s), &[], 1450)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn gateway_must_be_inside() {
        let mut r = req("a", "10.1.0.0/24");
        r.gateway = Some("10.2.0.1".into());
        assert!(plan_network(&r, &[], 1450)
            .unwrap_err()
            .to_string()
            .contains("not a host address"));
        r.gateway = Some("10.1.0.255".into());
        assert!(plan_network(&r, &[], 1450).is_err());
        r.gateway = Some("10.1.0.254".into());
        assert!(plan_network(&r, &[], 1450).is_ok());
    }

    #[test]
    fn same_name_same_options_is_idempotent() {
        let a = net("a", "10.1.0.0/24", 100);
        let again = plan_network(&req("a", "10.1.0.0/24"), std::slice::from_ref(&a), 1450).unwrap();
        assert_eq!(again, a);
        let e = plan_network(&req("a", "10.2.0.0/24"), &[a], 1450).unwrap_err();
        assert!(
            matches!(e, PlanError::Conflict(ref m) if m.contains("subnet")),
            "{e}"
        );
    }

    #[test]
    fn vni_and_overlap_conflicts() {
        let a = net("a", "10.1.0.0/16", 100);
        let mut r = req("b", "10.2.0.0/24");
        r.vni = Some(100);
        assert!(plan_network(&r, std::slice::from_ref(&a), 1450)
            .unwrap_err()
            .to_string()
            .contains("VNI 100"));
        let e = plan_network(&req("b", "10.1.5.0/24"), std::slice::from_ref(&a), 1450).unwrap_err();
        assert!(e.to_string().contains("overlaps"), "{e}");
        let mut r = req("b", "10.1.5.0/24");
        r.allow_overlap = true;
        let b = plan_network(&r, std::slice::from_ref(&a), 1450).unwrap();
        assert_ne!(b.vni, a.vni);
        r.vni = Some(VNI_MAX + 1);
        assert!(plan_network(&r, &[a], 1450)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
    }

    #[test]
    fn mtu_bounds() {
        let mut r = req("a", "10.1.0.0/24");
        r.mtu = Some(1500);
        assert!(plan_network(&r, &[], 1450)
            .unwrap_err()
            .to_string()
            .contains("MTU 1500"));
        r.mtu = Some(1400);
        assert_eq!(plan_network(&r, &[], 1450).unwrap().mtu, 1400);
    }

    #[test]
    fn candidates_visit_every_free_address_once_lowest_first() {
        for subnet in ["10.1.0.0/30", "10.1.0.0/29", "10.1.0.0/24"] {
            let n = net("a", subnet, 5);
            let taken: BTreeSet<Ipv4Addr> = ["10.1.0.3".parse().unwrap()].into();
            let free: Vec<Ipv4Addr> = free_addresses(&n, &taken).collect();
            for seed in [0u64, 3, 99, u64::MAX] {
                let order: Vec<Ipv4Addr> = candidates(&n, &taken, seed).collect();
                let mut sorted = order.clone();
                sorted.sort();
                assert_eq!(sorted, free, "{subnet} seed {seed}");
                assert_eq!(order.first(), free.first(), "lowest first");
            }
        }
        let n = net("a", "10.1.0.0/24", 5);
        let none = BTreeSet::new();
        assert_ne!(
            candidates(&n, &none, 10).nth(1),
            candidates(&n, &none, 100).nth(1),
            "seeds spread the second try"
        );
    }

    #[test]
    fn the_largest_allowed_subnet_allocates_without_listing_its_space() {
        // A /8: 16.7 million addresses. The first candidates come at once, whatever the seed.
        let n = net("big", "10.0.0.0/8", 5);
        let taken: BTreeSet<Ipv4Addr> = ["10.0.0.2".parse().unwrap()].into();
        let first: Vec<Ipv4Addr> = candidates(&n, &taken, u64::MAX / 3).take(3).collect();
        assert_eq!(first[0], "10.0.0.3".parse::<Ipv4Addr>().unwrap());
        assert!(first
            .iter()
            .all(|ip| n.subnet.contains(*ip) && !taken.contains(ip)));
        assert_eq!(capacity(&n), (1 << 24) - 3);
    }

    #[test]
    fn subnets_larger_than_the_limit_are_refused() {
        for s in ["0.0.0.0/0", "10.0.0.0/7", "128.0.0.0/1"] {
            let e = parse_subnet(s).unwrap_err().to_string();
            assert!(e.contains("too large") && e.contains("/8"), "{s}: {e}");
        }
        assert!(parse_subnet("10.0.0.0/8").is_ok());
    }

    #[test]
    fn addresses() {
        let n = net("a", "10.1.0.0/29", 5);
        let taken: BTreeSet<Ipv4Addr> = ["10.1.0.2".parse().unwrap()].into();
        let free: Vec<String> = free_addresses(&n, &taken).map(|i| i.to_string()).collect();
        assert_eq!(free, ["10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]);
        assert_eq!(capacity(&n), 5);
        assert!(check_requested(&n, "10.1.0.1".parse().unwrap())
            .unwrap_err()
            .0
            .contains("gateway"));
        assert!(check_requested(&n, "10.1.0.7".parse().unwrap())
            .unwrap_err()
            .0
            .contains("broadcast"));
        assert!(check_requested(&n, "10.9.0.2".parse().unwrap())
            .unwrap_err()
            .0
            .contains("outside"));
        assert!(check_requested(&n, "10.1.0.3".parse().unwrap()).is_ok());
    }
}
