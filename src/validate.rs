//! Checks every record read from the store against its key and the schema before it is
//! used. Whoever can write the store is not trusted to be root on every host: a record that
//! fails here is skipped (never programmed into the kernel) and reported with its key and
//! the reason. Pure: no I/O, so every rule is unit-tested with hostile values.
//!
//! Checks that need a second record (an endpoint's address inside its network's subnet)
//! take that record as an argument; the caller looks it up.

use std::fmt;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::de::DeserializeOwned;

use crate::dataplane::spec;
use crate::ipam::{MIN_MTU, MIN_PREFIX};
use crate::model::{
    DnsName, Endpoint, EndpointId, HostRecord, Invalid, Mac, Network, NetworkName, Vni,
};
use crate::store::keys;

/// The largest record value accepted; rnet writes a few hundred bytes per record.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// The largest MTU an interface can have on any underlay.
pub const MAX_MTU: u32 = 65535;
/// Host ids are hostnames: at most HOST_NAME_MAX (64) bytes.
pub const HOST_ID_MAX: usize = 64;
/// A namespace path in an endpoint record: at most PATH_MAX bytes.
pub const NETNS_PATH_MAX: usize = 4096;
/// The longest owner an attach accepts.
pub const OWNER_MAX: usize = 128;
/// Keys and values from a record are shortened to this many characters where shown, and
/// a whole reason to `REASON_MAX`.
const SHOWN_MAX: usize = 200;
const REASON_MAX: usize = 1000;

/// What kind of record a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Network,
    VniIndex,
    Endpoint,
    EndpointIdIndex,
    Host,
    HostInfo,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Network => "network",
            Kind::VniIndex => "VNI index",
            Kind::Endpoint => "endpoint",
            Kind::EndpointIdIndex => "endpoint-id index",
            Kind::Host => "host",
            Kind::HostInfo => "host-info",
        })
    }
}

/// A record that failed a check: which, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub kind: Kind,
    pub key: String,
    pub reason: String,
}

impl Rejected {
    fn new(kind: Kind, key: &str, reason: impl Into<String>) -> Rejected {
        Rejected {
            kind,
            key: key.to_string(),
            reason: shorten_to(&reason.into(), REASON_MAX),
        }
    }

    /// The key as it may be shown: control characters escaped, length bounded.
    pub fn shown_key(&self) -> String {
        shown_key(&self.key)
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.kind, self.shown_key(), self.reason)
    }
}

impl std::error::Error for Rejected {}

/// A store key made safe to print (a key may hold newlines or be megabytes long).
pub fn shown_key(key: &str) -> String {
    shorten(&key.escape_debug().to_string())
}

fn shorten(s: &str) -> String {
    shorten_to(s, SHOWN_MAX)
}

fn shorten_to(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_string(),
    }
}

/// What this host knows about itself, for the checks that depend on who reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Own {
    pub host_id: String,
    /// This host's underlay address (None: not known, no check).
    pub underlay: Option<Ipv4Addr>,
}

/// Decode a record's JSON, bounded in size.
fn decode<T: DeserializeOwned>(kind: Kind, key: &str, value: &[u8]) -> Result<T, Rejected> {
    if value.len() > MAX_RECORD_BYTES {
        return Err(Rejected::new(
            kind,
            key,
            format!(
                "the record is {} bytes; at most {MAX_RECORD_BYTES} are accepted",
                value.len()
            ),
        ));
    }
    serde_json::from_slice(value)
        .map_err(|e| Rejected::new(kind, key, format!("undecodable record: {e}")))
}

/// A small text value (an index), bounded and UTF-8.
fn text<'a>(kind: Kind, key: &str, value: &'a [u8]) -> Result<&'a str, Rejected> {
    if value.len() > 256 {
        return Err(Rejected::new(
            kind,
            key,
            format!(
                "the value is {} bytes; an index holds a short name",
                value.len()
            ),
        ));
    }
    std::str::from_utf8(value).map_err(|_| Rejected::new(kind, key, "the value is not UTF-8"))
}

/// A host id: a hostname (letters, digits, '.', '_', '-'; at most 64 bytes).
pub fn host_id(s: &str) -> Result<(), Invalid> {
    let ok_start = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if s.len() > HOST_ID_MAX || !ok_start || !ok_chars {
        return Err(Invalid(format!(
            "host id {:?} is not a host name (1 to {HOST_ID_MAX} letters, digits, '.', '_' or '-', starting with a letter or digit)",
            shorten(s)
        )));
    }
    Ok(())
}

fn unicast(what: &str, mac: Mac) -> Result<(), String> {
    if mac.is_zero() {
        return Err(format!("{what} {mac} is all zeros"));
    }
    if mac.is_multicast() {
        return Err(format!(
            "{what} {mac} is a multicast address (group bit set)"
        ));
    }
    Ok(())
}

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

// ----- hosts: /rnet/v1/hosts/<id>, /rnet/v1/host-info/<id> -----

/// A host record (presence or durable info), checked against its key and this host.
pub fn host(key: &str, value: &[u8], own: &Own) -> Result<HostRecord, Rejected> {
    let (kind, id) = match keys::classify(key) {
        keys::Key::Host(id) => (Kind::Host, id),
        keys::Key::HostInfo(id) => (Kind::HostInfo, id),
        _ => (Kind::Host, key),
    };
    let rec: HostRecord = decode(kind, key, value)?;
    check_host(id, &rec, own).map_err(|why| Rejected::new(kind, key, why))?;
    Ok(rec)
}

/// The rules of a host record whose key names `key_id`, as host `own` reads it.
pub fn check_host(key_id: &str, rec: &HostRecord, own: &Own) -> Result<(), String> {
    host_id(key_id).map_err(|e| format!("the key does not name a host: {}", e.0))?;
    if rec.id != key_id {
        return Err(format!(
            "the record is of host {:?}, its key of {key_id:?}",
            shorten(&rec.id)
        ));
    }
    let u = rec.underlay;
    let why = if u.is_loopback() {
        Some("a loopback address")
    } else if u.is_multicast() {
        Some("a multicast address")
    } else if u.is_unspecified() {
        Some("the unspecified address")
    } else if u.is_broadcast() {
        Some("the broadcast address")
    } else {
        None
    };
    if let Some(why) = why {
        return Err(format!("underlay {u} is {why}"));
    }
    if own.underlay == Some(u) && rec.id != own.host_id {
        return Err(format!(
            "underlay {u} is this host's ({}) own address",
            own.host_id
        ));
    }
    unicast("VTEP MAC address", rec.vtep_mac)?;
    if let Some(wg) = &rec.wireguard {
        crate::wireguard::keys::parse_public(&wg.public_key)
            .map_err(|e| format!("WireGuard public key: {}", shorten(&e)))?;
        if wg.port == 0 {
            return Err("WireGuard port is 0".into());
        }
    }
    if let Some(ip) = &rec.ipsec {
        if rec.wireguard.is_none() {
            return Err("it has an IPsec part but no X25519 key to derive IPsec keys from".into());
        }
        if ip.acks.len() > MAX_IPSEC_ACKS {
            return Err(format!(
                "its IPsec part acknowledges {} peers (at most {MAX_IPSEC_ACKS})",
                ip.acks.len()
            ));
        }
        if let Some((host, spi)) = ip.acks.iter().find(|(_, spi)| **spi < 256) {
            return Err(format!(
                "its IPsec acknowledgement for {host} names reserved SPI {spi}"
            ));
        }
    }
    Ok(())
}

/// More acknowledged IPsec peers than this in one host record is not a real cluster.
const MAX_IPSEC_ACKS: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Encryption, WireguardInfo};

    fn net() -> Network {
        Network {
            name: "blue".parse().unwrap(),
            id: "00000000000000aa".parse().unwrap(),
            vni: Vni::new(42).unwrap(),
            subnet: "10.9.0.0/24".parse().unwrap(),
            gateway: "10.9.0.1".parse().unwrap(),
            mtu: 1450,
            encryption: Encryption::None,
            allow_overlap: false,
            egress: true,
            internal: false,
        }
    }

    fn ep(ip: &str) -> Endpoint {
        let addr: Ipv4Addr = ip.parse().unwrap();
        Endpoint {
            network: "blue".parse().unwrap(),
            network_id: "00000000000000aa".parse().unwrap(),
            id: "ep-1".parse().unwrap(),
            ip: Ipv4Network::new(addr, 24).unwrap(),
            mac: Mac::from_ipv4(addr),
            host: "h2".into(),
            ifname: "eth0".parse().unwrap(),
            netns: "/run/netns/w".into(),
            netns_inode: 7,
            host_ifname: spec::host_ifname(addr),
            created: 1,
            origin: Default::default(),
            owner: None,
            mtu: None,
            name: None,
            aliases: Vec::new(),
            ports: Vec::new(),
        }
    }

    fn host_rec(id: &str, underlay: &str) -> HostRecord {
        HostRecord {
            id: id.into(),
            underlay: underlay.parse().unwrap(),
            vtep_mac: Mac::from_name(0x56, id),
            started: 1,
            renewed: 1,
            wireguard: None,
            ipsec: None,
        }
    }

    fn own() -> Own {
        Own {
            host_id: "h1".into(),
            underlay: Some("198.18.0.11".parse().unwrap()),
        }
    }

    fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    fn net_err(n: &Network) -> String {
        network(&keys::network("blue"), &json(n))
            .unwrap_err()
            .to_string()
    }

    fn ep_err(key_ip: &str, e: &Endpoint) -> String {
        let key = keys::endpoint("blue", key_ip.parse().unwrap());
        endpoint(&key, &json(e), Some(&net()))
            .unwrap_err()
            .to_string()
    }

    fn host_err(key: &str, h: &HostRecord) -> String {
        host(key, &json(h), &own()).unwrap_err().to_string()
    }

    #[test]
    fn a_sound_network_passes() {
        assert_eq!(
            network(&keys::network("blue"), &json(&net())).unwrap(),
            net()
        );
    }

    #[test]
    fn a_network_must_match_its_key() {
        let e = network(&keys::network("red"), &json(&net()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "network /rnet/v1/networks/red: the record is of network \"blue\", its key of \"red\""
        );
        let e = network("/rnet/v1/networks/blue/x", &json(&net())).unwrap_err();
        assert!(e.reason.contains("does not name a network"), "{e}");
    }

    #[test]
    fn a_network_vni_subnet_gateway_and_mtu_are_checked() {
        // A VNI out of range does not even decode.
        let raw = String::from_utf8(json(&net()))
            .unwrap()
            .replace("\"vni\":42", "\"vni\":16777216");
        let e = network(&keys::network("blue"), raw.as_bytes()).unwrap_err();
        assert!(
            e.reason.contains("undecodable") && e.reason.contains("VNI"),
            "{e}"
        );

        let mut n = net();
        n.subnet = "10.9.0.5/24".parse().unwrap();
        assert!(net_err(&n).contains("host bits set"));
        n.subnet = "16.0.0.0/4".parse().unwrap();
        n.gateway = "16.0.0.1".parse().unwrap();
        assert!(net_err(&n).contains("outside /8../30"), "{}", net_err(&n));
        n.subnet = "10.9.0.0/31".parse().unwrap();
        n.gateway = "10.9.0.1".parse().unwrap();
        assert!(net_err(&n).contains("outside /8../30"));
        let mut n = net();
        n.gateway = "10.8.0.1".parse().unwrap();
        assert!(net_err(&n).contains("gateway 10.8.0.1 is not a host address"));
        n.gateway = "10.9.0.255".parse().unwrap();
        assert!(net_err(&n).contains("not a host address"));
        let mut n = net();
        n.mtu = 10;
        assert!(net_err(&n).contains("MTU 10 is out of range"));
        n.mtu = u32::MAX;
        assert!(net_err(&n).contains("out of range"));
    }

    #[test]
    fn garbage_and_huge_records_are_rejected_with_the_key() {
        let key = keys::network("blue");
        let e = network(&key, b"{not json").unwrap_err().to_string();
        assert!(
            e.starts_with("network /rnet/v1/networks/blue: undecodable record"),
            "{e}"
        );
        let huge = vec![b' '; MAX_RECORD_BYTES + 1];
        let e = network(&key, &huge).unwrap_err();
        assert!(e.reason.contains("at most 65536"), "{e}");
        // A huge number, a negative one, deep nesting.
        let raw = String::from_utf8(json(&net()))
            .unwrap()
            .replace("\"mtu\":1450", "\"mtu\":99999999999999999999");
        assert!(network(&key, raw.as_bytes()).is_err());
        let raw = String::from_utf8(json(&net()))
            .unwrap()
            .replace("\"mtu\":1450", "\"mtu\":-1");
        assert!(network(&key, raw.as_bytes()).is_err());
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(network(&key, deep.as_bytes()).is_err());
        let e =
            endpoint_alone(&keys::endpoint("blue", "10.9.0.5".parse().unwrap()), b"").unwrap_err();
        assert!(e.reason.contains("undecodable"), "{e}");
    }

    #[test]
    fn a_long_or_control_character_key_is_shown_escaped_and_short() {
        let key = format!("{}x\n{}", keys::NETWORKS, "y".repeat(10_000));
        let e = network(&key, b"{}").unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.len() < 1000, "{}", e.len());
    }

    #[test]
    fn an_endpoint_of_an_earlier_network_of_the_same_name_is_rejected() {
        let key = keys::endpoint("blue", "10.9.0.5".parse().unwrap());
        let stale = Endpoint {
            network_id: "00000000000000ff".parse().unwrap(),
            ..ep("10.9.0.5")
        };
        let e = endpoint(&key, &json(&stale), Some(&net())).unwrap_err();
        assert!(e.reason.contains("earlier network"), "{e}");
    }

    #[test]
    fn a_sound_endpoint_passes() {
        let key = keys::endpoint("blue", "10.9.0.5".parse().unwrap());
        assert_eq!(
            endpoint(&key, &json(&ep("10.9.0.5")), Some(&net())).unwrap(),
            ep("10.9.0.5")
        );
    }

    #[test]
    fn an_endpoint_must_match_its_key() {
        assert!(ep_err("10.9.0.6", &ep("10.9.0.5"))
            .contains("the record holds address 10.9.0.5, its key 10.9.0.6"));
        let mut e = ep("10.9.0.5");
        e.network = "red".parse().unwrap();
        assert!(ep_err("10.9.0.5", &e).contains("on network \"red\", its key on \"blue\""));
        let e =
            endpoint_alone("/rnet/v1/endpoints/blue/garbage", &json(&ep("10.9.0.5"))).unwrap_err();
        assert!(
            e.reason.contains("not endpoints/<network>/<address>"),
            "{e}"
        );
    }

    #[test]
    fn an_endpoint_address_must_be_a_host_address_of_its_subnet_but_not_the_gateway() {
        assert_eq!(
            ep_err("10.9.0.1", &ep("10.9.0.1")),
            "endpoint /rnet/v1/endpoints/blue/10.9.0.1: address 10.9.0.1 is the network's gateway"
        );
        assert!(ep_err("10.99.0.5", &ep("10.99.0.5"))
            .contains("address 10.99.0.5 is outside subnet 10.9.0.0/24 of network blue"));
        assert!(ep_err("10.9.0.0", &ep("10.9.0.0")).contains("network or broadcast"));
        assert!(ep_err("10.9.0.255", &ep("10.9.0.255")).contains("network or broadcast"));
        let mut e = ep("10.9.0.5");
        e.ip = "10.9.0.5/16".parse().unwrap();
        assert!(ep_err("10.9.0.5", &e).contains("prefix length /16 differs from the network's /24"));
    }

    #[test]
    fn an_endpoint_mac_must_be_unicast() {
        let mut e = ep("10.9.0.5");
        e.mac = "01:00:5e:00:00:01".parse().unwrap();
        assert!(ep_err("10.9.0.5", &e).contains("MAC address 01:00:5e:00:00:01 is a multicast"));
        e.mac = "ff:ff:ff:ff:ff:ff".parse().unwrap();
        assert!(ep_err("10.9.0.5", &e).contains("multicast"));
        e.mac = Mac([0; 6]);
        assert!(ep_err("10.9.0.5", &e).contains("all zeros"));
    }

    #[test]
    fn an_endpoints_dns_names_are_checked() {
        let key = keys::endpoint("blue", "10.9.0.5".parse().unwrap());
        let mut e = ep("10.9.0.5");
        e.name = Some("web".parse().unwrap());
        e.aliases = (0..16).map(|i| format!("a{i}").parse().unwrap()).collect();
        assert!(endpoint(&key, &json(&e), Some(&net())).is_ok());
        e.aliases.push("one-more".parse().unwrap());
        assert!(ep_err("10.9.0.5", &e).contains("17 DNS aliases; at most 16"));
        // A name DNS cannot carry, written into the store by hand, does not even decode.
        for bad in ["Web", "a..b", "x_y"] {
            let raw = String::from_utf8(json(&ep("10.9.0.5")))
                .unwrap()
                .replace("\"created\"", &format!("\"name\":\"{bad}\",\"created\""));
            let err = endpoint_alone(&key, raw.as_bytes()).unwrap_err();
            assert!(err.reason.contains("undecodable"), "{bad}: {err}");
        }
    }

    #[test]
    fn an_endpoint_host_ifname_netns_owner_and_mtu_are_checked() {
        let mut e = ep("10.9.0.5");
        e.host = "evil host".into();
        assert!(ep_err("10.9.0.5", &e).contains("is not a host name"));
        e.host = String::new();
        assert!(ep_err("10.9.0.5", &e).contains("is not a host name"));
        e.host = "h".repeat(65);
        assert!(ep_err("10.9.0.5", &e).contains("is not a host name"));
        let mut e = ep("10.9.0.5");
        e.host_ifname = "vx-blue".into();
        assert!(ep_err("10.9.0.5", &e).contains("host interface \"vx-blue\" is not \"ve0a090005\""));
        let mut e = ep("10.9.0.5");
        e.netns = "relative/path".into();
        assert!(ep_err("10.9.0.5", &e).contains("not an absolute path"));
        e.netns = format!("/{}", "a".repeat(NETNS_PATH_MAX));
        assert!(ep_err("10.9.0.5", &e).contains("not an absolute path"));
        e.netns = "/run/netns/a\0b".into();
        assert!(ep_err("10.9.0.5", &e).contains("not an absolute path"));
        e.netns = String::new(); // an address held for Docker
        assert!(endpoint(
            &keys::endpoint("blue", "10.9.0.5".parse().unwrap()),
            &json(&e),
            Some(&net())
        )
        .is_ok());
        let mut e = ep("10.9.0.5");
        e.owner = Some("o".repeat(OWNER_MAX + 1));
        assert!(ep_err("10.9.0.5", &e).contains("owner is longer"));
        let mut e = ep("10.9.0.5");
        e.mtu = Some(1500);
        assert!(ep_err("10.9.0.5", &e).contains("MTU 1500 is above the network's 1450"));
        e.mtu = Some(12);
        assert!(ep_err("10.9.0.5", &e).contains("MTU 12 is out of range"));
        // An interface name the kernel would refuse does not even decode.
        let raw = String::from_utf8(json(&ep("10.9.0.5")))
            .unwrap()
            .replace("\"eth0\"", "\"../../etc\"");
        let e = endpoint_alone(
            &keys::endpoint("blue", "10.9.0.5".parse().unwrap()),
            raw.as_bytes(),
        )
        .unwrap_err();
        assert!(e.reason.contains("undecodable"), "{e}");
    }

    #[test]
    fn an_endpoint_of_an_unknown_network_is_not_used() {
        let key = keys::endpoint("blue", "10.9.0.5".parse().unwrap());
        let e = endpoint(&key, &json(&ep("10.9.0.5")), None).unwrap_err();
        assert_eq!(e.reason, "network blue has no valid record");
    }

    #[test]
    fn endpoint_id_and_vni_indexes_are_checked() {
        assert_eq!(
            endpoint_id_index("/rnet/v1/endpoint-ids/blue/ep-1", b"10.9.0.5").unwrap(),
            "10.9.0.5".parse::<Ipv4Addr>().unwrap()
        );
        let e = endpoint_id_index("/rnet/v1/endpoint-ids/blue/ep-1", b"not-an-ip").unwrap_err();
        assert_eq!(
            e.to_string(),
            "endpoint-id index /rnet/v1/endpoint-ids/blue/ep-1: the value \"not-an-ip\" is not an IPv4 address"
        );
        assert!(endpoint_id_index("/rnet/v1/endpoint-ids/blue", b"10.9.0.5").is_err());
        assert!(endpoint_id_index("/rnet/v1/endpoint-ids/blue/a b", b"10.9.0.5").is_err());
        assert!(endpoint_id_index("/rnet/v1/endpoint-ids/blue/ep", &[0xff, 0xfe]).is_err());
        assert!(endpoint_id_index("/rnet/v1/endpoint-ids/blue/ep", &[b'1'; 1000]).is_err());
        assert!(vni_index("/rnet/v1/vnis/42", b"blue").is_ok());
        assert!(vni_index("/rnet/v1/vnis/0", b"blue").is_err());
        assert!(vni_index("/rnet/v1/vnis/x", b"blue").is_err());
        assert!(vni_index("/rnet/v1/vnis/42", b"bad name!").is_err());
    }

    #[test]
    fn a_sound_host_record_passes_presence_and_info() {
        let h = host_rec("h2", "198.18.0.12");
        assert_eq!(host(&keys::host("h2"), &json(&h), &own()).unwrap(), h);
        assert_eq!(host(&keys::host_info("h2"), &json(&h), &own()).unwrap(), h);
        // Its own record with its own underlay is sound too.
        let me = host_rec("h1", "198.18.0.11");
        assert!(host(&keys::host("h1"), &json(&me), &own()).is_ok());
    }

    #[test]
    fn a_host_record_must_match_its_key() {
        let h = host_rec("h2", "198.18.0.12");
        assert_eq!(
            host_err(&keys::host("h3"), &h),
            "host /rnet/v1/hosts/h3: the record is of host \"h2\", its key of \"h3\""
        );
        assert!(host_err(&keys::host_info("a b"), &h).starts_with("host-info "));
    }

    #[test]
    fn a_host_underlay_must_be_a_unicast_address_and_not_ours() {
        for (addr, why) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.1", "loopback"),
            ("224.0.0.1", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("255.255.255.255", "broadcast"),
            ("198.18.0.11", "this host's (h1) own address"),
        ] {
            let e = host_err(&keys::host_info("h2"), &host_rec("h2", addr));
            assert!(
                e.contains(&format!("underlay {addr} is")) && e.contains(why),
                "{e}"
            );
        }
    }

    #[test]
    fn a_host_vtep_mac_and_wireguard_key_are_checked() {
        let mut h = host_rec("h2", "198.18.0.12");
        h.vtep_mac = "33:33:00:00:00:01".parse().unwrap();
        assert!(host_err(&keys::host("h2"), &h)
            .contains("VTEP MAC address 33:33:00:00:00:01 is a multicast"));
        let mut h = host_rec("h2", "198.18.0.12");
        let key =
            crate::wireguard::keys::encode_public(&boringtun::x25519::PublicKey::from([7u8; 32]));
        h.wireguard = Some(WireguardInfo {
            public_key: key.clone(),
            port: 51820,
            key_created: 1,
            identity: None,
            signature: None,
        });
        assert!(host(&keys::host("h2"), &json(&h), &own()).is_ok());
        h.wireguard.as_mut().unwrap().public_key = "AAAA".into();
        assert!(host_err(&keys::host("h2"), &h).contains("WireGuard public key: a key is 32 bytes"));
        h.wireguard.as_mut().unwrap().public_key = "%%%".into();
        assert!(host_err(&keys::host("h2"), &h).contains("not base64"));
        h.wireguard.as_mut().unwrap().public_key = key;
        let ipsec = crate::model::IpsecInfo {
            aead: crate::model::Aead::AesGcm,
            epoch: 1,
            acks: [("h1".to_string(), 255u32)].into(),
        };
        h.ipsec = Some(ipsec.clone());
        assert!(host_err(&keys::host("h2"), &h).contains("reserved SPI 255"));
        h.ipsec.as_mut().unwrap().acks.clear();
        let wg = h.wireguard.take();
        assert!(host_err(&keys::host("h2"), &h).contains("no X25519 key"));
        h.wireguard = wg;
        h.ipsec = None;
        h.wireguard.as_mut().unwrap().port = 0;
        assert!(host_err(&keys::host("h2"), &h).contains("port is 0"));
    }

    #[test]
    fn egress_and_ports_are_checked() {
        let mut n = net();
        n.internal = true;
        assert!(check_network("blue", &n).unwrap_err().contains("internal"));
        n.egress = false;
        assert!(check_network("blue", &n).is_ok());
        let mut e = ep("10.9.0.5");
        e.ports = vec!["8080:80".parse().unwrap()];
        assert!(check_endpoint("blue", "10.9.0.5".parse().unwrap(), &e).is_ok());
        // A record can carry what the parser refuses: checked again here.
        e.ports[0].host_port = 70000;
        assert!(check_endpoint("blue", "10.9.0.5".parse().unwrap(), &e)
            .unwrap_err()
            .contains("out of range"));
        e.ports = vec!["8080:80".parse().unwrap(), "8080:81".parse().unwrap()];
        assert!(check_endpoint("blue", "10.9.0.5".parse().unwrap(), &e)
            .unwrap_err()
            .contains("same host port"));
        e.ports = (1..=65)
            .map(|p| format!("{p}:80").parse().unwrap())
            .collect();
        assert!(check_endpoint("blue", "10.9.0.5".parse().unwrap(), &e)
            .unwrap_err()
            .contains("at most 64"));
    }

    #[test]
    fn host_ids_are_host_names() {
        assert!(host_id("h1").is_ok());
        assert!(host_id("node-1.example.com").is_ok());
        assert!(host_id("").is_err());
        assert!(host_id("-x").is_err());
        assert!(host_id("a/b").is_err());
        assert!(host_id("a\nb").is_err());
        assert!(host_id(&"a".repeat(64)).is_ok());
        assert!(host_id(&"a".repeat(65)).is_err());
    }
}
