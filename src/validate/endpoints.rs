//! Endpoint records and the endpoint-id index: on their own, and against their network.

use std::net::Ipv4Addr;

use super::{
    decode, host_id, shorten, text, unicast, Kind, Rejected, MAX_MTU, NETNS_PATH_MAX, OWNER_MAX,
};
use crate::dataplane::spec;
use crate::ipam::MIN_MTU;
use crate::model::{DnsName, Endpoint, EndpointId, Network, NetworkName};
use crate::store::keys;

// ----- endpoints: /rnet/v1/endpoints/<network>/<ip>, /rnet/v1/endpoint-ids/<network>/<id> -----

/// An endpoint record checked on its own (against its key); `fits` does the checks
/// against its network.
pub fn endpoint_alone(key: &str, value: &[u8]) -> Result<Endpoint, Rejected> {
    let bad = |why: String| Rejected::new(Kind::Endpoint, key, why);
    let (net, ip) = match keys::classify(key) {
        keys::Key::Endpoint(net, ip) => (net, ip),
        _ => return Err(bad("the key is not endpoints/<network>/<address>".into())),
    };
    let ep: Endpoint = decode(Kind::Endpoint, key, value)?;
    check_endpoint(net, ip, &ep).map_err(bad)?;
    Ok(ep)
}

/// An endpoint record checked against its key and its network (None: the network has no
/// valid record, and the endpoint is not used).
pub fn endpoint(key: &str, value: &[u8], net: Option<&Network>) -> Result<Endpoint, Rejected> {
    let ep = endpoint_alone(key, value)?;
    fits(key, &ep, net)?;
    Ok(ep)
}

/// The checks of an endpoint against its network.
pub fn fits(key: &str, ep: &Endpoint, net: Option<&Network>) -> Result<(), Rejected> {
    let Some(net) = net else {
        return Err(Rejected::new(
            Kind::Endpoint,
            key,
            format!("network {} has no valid record", ep.network),
        ));
    };
    check_endpoint_in(ep, net).map_err(|why| Rejected::new(Kind::Endpoint, key, why))
}

/// The rules of an endpoint record on its own, whose key names `key_net` and `key_ip`.
pub fn check_endpoint(key_net: &str, key_ip: Ipv4Addr, ep: &Endpoint) -> Result<(), String> {
    if ep.network.as_str() != key_net {
        return Err(format!(
            "the record is on network {:?}, its key on {:?}",
            ep.network.as_str(),
            shorten(key_net)
        ));
    }
    let ip = ep.ip.ip();
    if ip != key_ip {
        return Err(format!("the record holds address {ip}, its key {key_ip}"));
    }
    unicast("MAC address", ep.mac)?;
    host_id(&ep.host).map_err(|e| e.0)?;
    // The sandbox-side veth is deleted by this name: only the name rnet derives is trusted,
    // so a record cannot point a detach at another device.
    let derived = spec::host_ifname(ip);
    if ep.host_ifname != derived {
        return Err(format!(
            "host interface {:?} is not {derived:?}, the name derived from its address",
            shorten(&ep.host_ifname)
        ));
    }
    if ep.netns.len() > NETNS_PATH_MAX
        || ep.netns.contains('\0')
        || !(ep.netns.is_empty() || ep.netns.starts_with('/'))
    {
        return Err(format!(
            "namespace {:?} is not an absolute path (at most {NETNS_PATH_MAX} bytes)",
            shorten(&ep.netns)
        ));
    }
    if ep.owner.as_ref().is_some_and(|o| o.len() > OWNER_MAX) {
        return Err(format!("owner is longer than {OWNER_MAX} bytes"));
    }
    // Each name is checked as it is read (`DnsName`); only their number is left.
    if ep.aliases.len() > DnsName::MAX_ALIASES {
        return Err(format!(
            "{} DNS aliases; at most {} are allowed",
            ep.aliases.len(),
            DnsName::MAX_ALIASES
        ));
    }
    if let Some(mtu) = ep.mtu {
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return Err(format!("MTU {mtu} is out of range {MIN_MTU}..={MAX_MTU}"));
        }
    }
    check_ports(&ep.ports)
}

/// At most this many published ports per endpoint (each costs two NAT rules on its host).
pub const MAX_PORTS: usize = 64;

/// Published ports: in range, not too many, no host port twice.
pub fn check_ports(ports: &[crate::model::PortMapping]) -> Result<(), String> {
    if ports.len() > MAX_PORTS {
        return Err(format!(
            "{} published ports; at most {MAX_PORTS} are allowed",
            ports.len()
        ));
    }
    for p in ports {
        p.check().map_err(|e| e.0)?;
    }
    if let Some((a, b)) = crate::nat::duplicate_in(ports) {
        return Err(format!(
            "published ports {a} and {b} take the same host port"
        ));
    }
    Ok(())
}

/// The rules of an endpoint against its network's record.
pub fn check_endpoint_in(ep: &Endpoint, net: &Network) -> Result<(), String> {
    if ep.network_id != net.id {
        return Err(format!(
            "the record belongs to network id {}, an earlier network than {} (id {})",
            ep.network_id, net.name, net.id
        ));
    }
    let ip = ep.ip.ip();
    let subnet = net.subnet;
    if !subnet.contains(ip) {
        return Err(format!(
            "address {ip} is outside subnet {subnet} of network {}",
            net.name
        ));
    }
    if ip == net.gateway {
        return Err(format!("address {ip} is the network's gateway"));
    }
    if ip == subnet.network() || ip == subnet.broadcast() {
        return Err(format!(
            "address {ip} is the network or broadcast address of subnet {subnet}"
        ));
    }
    if ep.ip.prefix() != subnet.prefix() {
        return Err(format!(
            "prefix length /{} differs from the network's /{}",
            ep.ip.prefix(),
            subnet.prefix()
        ));
    }
    if ep.mtu.is_some_and(|m| m > net.mtu) {
        return Err(format!(
            "MTU {} is above the network's {}",
            ep.mtu.unwrap_or_default(),
            net.mtu
        ));
    }
    Ok(())
}

/// An endpoint-id index entry: its key a network and an endpoint id, its value an address.
pub fn endpoint_id_index(key: &str, value: &[u8]) -> Result<Ipv4Addr, Rejected> {
    let bad = |why: String| Rejected::new(Kind::EndpointIdIndex, key, why);
    let rest = key.strip_prefix(keys::ENDPOINT_IDS).unwrap_or(key);
    let Some((net, id)) = rest.split_once('/') else {
        return Err(bad("the key is not endpoint-ids/<network>/<id>".into()));
    };
    net.parse::<NetworkName>()
        .map_err(|e| bad(format!("the key does not name a network: {e}")))?;
    id.parse::<EndpointId>()
        .map_err(|e| bad(format!("the key does not name an endpoint id: {e}")))?;
    let s = text(Kind::EndpointIdIndex, key, value)?;
    s.parse::<Ipv4Addr>()
        .map_err(|_| bad(format!("the value {:?} is not an IPv4 address", shorten(s))))
}
