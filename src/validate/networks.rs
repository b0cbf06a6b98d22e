//! Network records and the VNI index, checked against their keys.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::{decode, text, Kind, Rejected, MAX_MTU};
use crate::ipam::{MIN_MTU, MIN_PREFIX};
use crate::model::{Network, NetworkName, Vni};
use crate::store::keys;

// ----- networks: /rnet/v1/networks/<name>, /rnet/v1/vnis/<vni> -----

/// A network record, checked against its key.
pub fn network(key: &str, value: &[u8]) -> Result<Network, Rejected> {
    let name = key.strip_prefix(keys::NETWORKS).unwrap_or(key);
    let net: Network = decode(Kind::Network, key, value)?;
    check_network(name, &net).map_err(|why| Rejected::new(Kind::Network, key, why))?;
    Ok(net)
}

/// The rules of a network record whose key names `key_name`.
pub fn check_network(key_name: &str, net: &Network) -> Result<(), String> {
    if let Err(e) = key_name.parse::<NetworkName>() {
        return Err(format!("the key does not name a network: {e}"));
    }
    if net.name.as_str() != key_name {
        return Err(format!(
            "the record is of network {:?}, its key of {key_name:?}",
            net.name.as_str()
        ));
    }
    // Serde checks these on decoding already; said again so no other path can skip them.
    Vni::new(net.vni.get()).map_err(|e| e.0)?;
    if net.internal && net.egress {
        return Err("an internal network cannot have egress".into());
    }
    // A NetworkId is checked by its type when decoded.
    let subnet = net.subnet;
    if subnet.ip() != subnet.network() {
        return Err(format!("subnet {subnet} has host bits set"));
    }
    if !(MIN_PREFIX..=30).contains(&subnet.prefix()) {
        return Err(format!(
            "subnet {subnet} has a prefix outside /{MIN_PREFIX}../30"
        ));
    }
    if !is_host_address(subnet, net.gateway) {
        return Err(format!(
            "gateway {} is not a host address of subnet {subnet}",
            net.gateway
        ));
    }
    if !(MIN_MTU..=MAX_MTU).contains(&net.mtu) {
        return Err(format!(
            "MTU {} is out of range {MIN_MTU}..={MAX_MTU}",
            net.mtu
        ));
    }
    Ok(())
}

/// A VNI index entry: its key a VNI, its value a network name.
pub fn vni_index(key: &str, value: &[u8]) -> Result<(Vni, NetworkName), Rejected> {
    let bad = |why: String| Rejected::new(Kind::VniIndex, key, why);
    let vni = key
        .strip_prefix(keys::VNIS)
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or_else(|| bad("the key does not end in a VNI".into()))
        .and_then(|v| Vni::new(v).map_err(|e| bad(e.0)))?;
    let name = text(Kind::VniIndex, key, value)?
        .parse::<NetworkName>()
        .map_err(|e| bad(format!("the value is not a network name: {e}")))?;
    Ok((vni, name))
}

fn is_host_address(subnet: Ipv4Network, ip: Ipv4Addr) -> bool {
    subnet.contains(ip) && ip != subnet.network() && ip != subnet.broadcast()
}
