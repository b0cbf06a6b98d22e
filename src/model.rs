//! Pure domain types: validated names, VNIs, MACs, and the records kept in the store.
//!
//! Everything that comes from outside (CLI flags, API bodies, store values) is parsed
//! into these types once, at the edge; code further in trusts them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// Linux limits interface names to IFNAMSIZ - 1 = 15 bytes.
pub const IFNAME_MAX: usize = 15;
/// VXLAN device names are `vx-<network>`: the prefix leaves this much for the name.
pub const NETWORK_NAME_MAX: usize = IFNAME_MAX - VXLAN_PREFIX.len();
const VXLAN_PREFIX: &str = "vx-";
/// A VXLAN network identifier is 24 bits.
pub const VNI_MAX: u32 = (1 << 24) - 1;
/// Encapsulation overhead of VXLAN over IPv4: outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The IANA VXLAN port (the kernel's default, 8472, predates it).
pub const VXLAN_PORT: u16 = 4789;

/// A validation failure, with a message that names the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(msg.into()))
}

/// The characters CNI allows in names: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
fn check_name_chars(what: &str, s: &str) -> Result<(), Invalid> {
    let mut chars = s.chars();
    match chars.next() {
        None => return invalid(format!("{what} is empty")),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return invalid(format!("{what} {s:?} must start with a letter or digit"))
        }
        _ => {}
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(*c))) {
        return invalid(format!(
            "{what} {s:?} contains {bad:?}; allowed are letters, digits, '_', '.' and '-'"
        ));
    }
    Ok(())
}

/// A network's identity: 16 lowercase hex digits drawn at random when the network is created.
/// A name can be removed and taken again; an id never comes back, so everything a host builds
/// for a network (sandbox, VXLAN device, cached sockets, programmed tables) is keyed by it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NetworkId(String);

/// Hex digits in a network id (64 bits: no two networks of a cluster's life share one).
pub const NETWORK_ID_LEN: usize = 16;

impl NetworkId {
    /// A fresh id from the operating system's random source.
    pub fn random() -> NetworkId {
        use rand_core::{OsRng, RngCore};
        NetworkId(format!("{:016x}", OsRng.next_u64()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NetworkId {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        if s.len() != NETWORK_ID_LEN
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return invalid(format!(
                "network id {s:?} is not {NETWORK_ID_LEN} lowercase hex digits"
            ));
        }
        Ok(Self(s.to_string()))
    }
}

impl TryFrom<String> for NetworkId {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        s.parse()
    }
}

impl From<NetworkId> for String {
    fn from(n: NetworkId) -> String {
        n.0
    }
}

impl fmt::Display for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A network name: CNI's name characters, short enough for the interface names derived from it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NetworkName(String);

impl NetworkName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The VXLAN device of this network (created in the host namespace, so it must be unique there).
    pub fn vxlan_ifname(&self) -> String {
        format!("{VXLAN_PREFIX}{}", self.0)
    }
}

impl FromStr for NetworkName {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        check_name_chars("network name", s)?;
        if s.len() > NETWORK_NAME_MAX {
            return invalid(format!(
                "network name {s:?} is {} characters; at most {NETWORK_NAME_MAX} fit in the \
                 derived interface name {VXLAN_PREFIX}NAME (the kernel allows {IFNAME_MAX})",
                s.len()
            ));
        }
        Ok(Self(s.to_string()))
    }
}

impl TryFrom<String> for NetworkName {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        s.parse()
    }
}

impl From<NetworkName> for String {
    fn from(n: NetworkName) -> String {
        n.0
    }
}

impl fmt::Display for NetworkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Linux interface name, checked as iproute2 checks it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);

impl IfName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() {
            return invalid("interface name is empty");
        }
        if s.len() > IFNAME_MAX {
            return invalid(format!(
                "interface name {s:?} is {} bytes; the kernel allows at most {IFNAME_MAX}",
                s.len()
            ));
        }
        if s == "."
            || s == ".."
            || s.contains(['/', ':'])
            || s.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return invalid(format!(
                "interface name {s:?} may not be '.', '..' or contain '/', ':', spaces or control characters"
            ));
        }
        Ok(Self(s.to_string()))
    }
}

impl TryFrom<String> for IfName {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        s.parse()
    }
}

impl From<IfName> for String {
    fn from(n: IfName) -> String {
        n.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A VXLAN network identifier (24 bits; 0 is reserved here as "unset").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Vni(u32);

impl Vni {
    pub fn new(v: u32) -> Result<Self, Invalid> {
        if v == 0 || v > VNI_MAX {
            return invalid(format!("VNI {v} is out of range 1..={VNI_MAX}"));
        }
        Ok(Self(v))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Vni {
    type Error = Invalid;
    fn try_from(v: u32) -> Result<Self, Invalid> {
        Self::new(v)
    }
}

impl From<Vni> for u32 {
    fn from(v: Vni) -> u32 {
        v.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Endpoint MACs are derived from their IPv4 address (locally administered, unicast),
    /// so a restarted daemon or a peer computes the same MAC without a lookup.
    pub fn from_ipv4(ip: Ipv4Addr) -> Mac {
        let o = ip.octets();
        Mac([0x02, 0x52, o[0], o[1], o[2], o[3]])
    }

    /// VTEP and bridge MACs are derived from a stable name (host id, network),
    /// so they survive reboots and peers' entries stay right.
    pub fn from_name(kind: u8, name: &str) -> Mac {
        let h = fnv1a(name.as_bytes());
        let b = h.to_be_bytes();
        Mac([0x02, kind, b[4], b[5], b[6], b[7]])
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// Group (multicast or broadcast) addresses have the lowest bit of the first byte set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

/// FNV-1a: a tiny stable hash for deriving identifiers (not for security).
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

impl FromStr for Mac {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || {
            Invalid(format!(
                "MAC address {s:?} is not six ':'-separated hex bytes"
            ))
        };
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (slot, part) in mac.iter_mut().zip(&parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        Ok(Mac(mac))
    }
}

impl TryFrom<String> for Mac {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        s.parse()
    }
}

impl From<Mac> for String {
    fn from(m: Mac) -> String {
        m.to_string()
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// An endpoint id: what a runtime calls the container (CNI's container id, Docker's endpoint id).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EndpointId(String);

impl EndpointId {
    pub const MAX_LEN: usize = 128;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for EndpointId {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        check_name_chars("endpoint id", s)?;
        if s.len() > Self::MAX_LEN {
            return invalid(format!(
                "endpoint id is {} characters; at most {} are allowed",
                s.len(),
                Self::MAX_LEN
            ));
        }
        Ok(Self(s.to_string()))
    }
}

impl TryFrom<String> for EndpointId {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        s.parse()
    }
}

impl From<EndpointId> for String {
    fn from(n: EndpointId) -> String {
        n.0
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A workload's DNS name (`rnet run --name`, CNI's pod name, Docker's container name):
/// RFC 1123 labels of lowercase letters, digits and inner '-', each 1..=63 bytes, at most
/// 253 in all, the last label not all digits (it would read as an address).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DnsName(String);

impl DnsName {
    pub const MAX_LEN: usize = 253;
    pub const LABEL_MAX: usize = 63;
    /// Aliases one endpoint may carry.
    pub const MAX_ALIASES: usize = 16;

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A runtime's name made a DNS name if it only differs in case (Docker allows
    /// uppercase); None when it has characters DNS cannot carry.
    pub fn lenient(s: &str) -> Option<DnsName> {
        s.to_ascii_lowercase().parse().ok()
    }
}

fn check_label(name: &str, label: &str) -> Result<(), Invalid> {
    if label.is_empty() {
        return invalid(format!("DNS name {name:?} has an empty label"));
    }
    if label.len() > DnsName::LABEL_MAX {
        return invalid(format!(
            "DNS name {name:?}: label {label:?} is {} bytes; at most {} are allowed",
            label.len(),
            DnsName::LABEL_MAX
        ));
    }
    if let Some(bad) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return invalid(format!(
            "DNS name {name:?} contains {bad:?}; allowed are lowercase letters, digits and '-'"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return invalid(format!(
            "DNS name {name:?}: label {label:?} may not start or end with '-'"
        ));
    }
    Ok(())
}

impl FromStr for DnsName {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() {
            return invalid("DNS name is empty");
        }
        if s.len() > Self::MAX_LEN {
            return invalid(format!(
                "DNS name is {} bytes; at most {} are allowed",
                s.len(),
                Self::MAX_LEN
            ));
        }
        for label in s.split('.') {
            check_label(s, label)?;
        }
        if s.rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
        {
            return invalid(format!(
                "DNS name {s:?} ends in an all-digit label (it would read as an address)"
            ));
        }
        Ok(Self(s.to_string()))
    }
}

impl TryFrom<String> for DnsName {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        s.parse()
    }
}

impl From<DnsName> for String {
    fn from(n: DnsName) -> String {
        n.0
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a network's traffic between hosts is protected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    #[default]
    None,
    /// Every frame between hosts travels inside WireGuard (rnetd's userspace tunnel).
    Wireguard,
    /// The VXLAN flows between hosts travel inside kernel ESP (XFRM, transport mode).
    Ipsec,
}

impl fmt::Display for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encryption::None => "none",
            Encryption::Wireguard => "wireguard",
            Encryption::Ipsec => "ipsec",
        })
    }
}

impl std::str::FromStr for Encryption {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        match s {
            "none" => Ok(Encryption::None),
            "wireguard" => Ok(Encryption::Wireguard),
            "ipsec" => Ok(Encryption::Ipsec),
            other => Err(Invalid(format!(
                "unknown encryption {other:?}: use \"none\", \"wireguard\" or \"ipsec\""
            ))),
        }
    }
}

/// Bytes WireGuard adds on an IPv4 underlay: IP and UDP headers plus its own 32.
pub const WIREGUARD_OVERHEAD: u32 = 60;
/// Bytes ESP in transport mode adds at most with a 16-byte ICV AEAD: SPI and sequence 8,
/// IV 8, padding to 4 bytes up to 3, pad length and next header 2, ICV 16 (37, rounded up).
pub const IPSEC_OVERHEAD: u32 = 40;
/// The UDP port of the VXLAN devices of IPsec networks. Plain networks use 4789; a port of
/// their own lets the XFRM policies select exactly the encrypted networks' flows (a policy
/// matches addresses, protocol and ports, never a VNI).
pub const IPSEC_VXLAN_PORT: u16 = 4799;

/// A cluster-wide network record (`/rnet/v1/networks/<name>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: NetworkName,
    /// Unique for the network's life; a network re-created under the same name gets a new one.
    pub id: NetworkId,
    pub vni: Vni,
    pub subnet: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    #[serde(default)]
    pub encryption: Encryption,
    /// Whether this network may share address space with others.
    #[serde(default)]
    pub allow_overlap: bool,
    /// Whether workloads reach beyond the overlay through their host (masqueraded to the
    /// host's address). Records written before the field existed had none: on.
    #[serde(default = "default_true")]
    pub egress: bool,
    /// Docker's `--internal`: no egress and no published ports.
    #[serde(default)]
    pub internal: bool,
}

fn default_true() -> bool {
    true
}

impl Network {
    /// The same network asked for twice: name, subnet and every option given explicitly match
    /// (the id is the network's identity, not an option).
    pub fn same_options(&self, other: &Network) -> bool {
        Network {
            id: self.id.clone(),
            ..other.clone()
        } == *self
    }
}

/// An endpoint record (`/rnet/v1/networks/<name>/endpoints/<ip>`): the address allocation itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub network: NetworkName,
    /// The id of the network this address was taken in: a record left by an earlier network
    /// of the same name is told apart by it and never programmed.
    pub network_id: NetworkId,
    pub id: EndpointId,
    /// The address with the subnet's prefix length.
    pub ip: Ipv4Network,
    pub mac: Mac,
    pub host: String,
    pub ifname: IfName,
    /// The workload's network namespace as the attacher named it (path).
    pub netns: String,
    /// Inode of that namespace: tells a namespace apart from a later one at the same path.
    #[serde(default)]
    pub netns_inode: u64,
    /// The sandbox-side veth name on this host.
    pub host_ifname: String,
    /// Unix seconds at creation.
    pub created: u64,
    /// Which front door made it; CNI GC only ever releases endpoints that CNI made.
    #[serde(default)]
    pub origin: Origin,
    /// Who made it within that front door (for CNI: the network configuration's name), so
    /// one runtime's GC leaves another's attachments alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The workload interface's MTU when it was asked below the network's (None: the network's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The name the network's DNS answers for this endpoint (with its aliases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<DnsName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<DnsName>,
    /// Ports published on this endpoint's host (DNAT to the endpoint's address).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
}

impl Endpoint {
    /// Every DNS name of the endpoint: its name, then its aliases.
    pub fn dns_names(&self) -> impl Iterator<Item = &DnsName> {
        self.name.iter().chain(&self.aliases)
    }
}

/// A transport protocol of a published port.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            other => invalid(format!(
                "unknown protocol {other:?}: use \"tcp\" or \"udp\""
            )),
        }
    }
}

/// A port of the host forwarded to a port of the endpoint (`HOST_PORT:PORT[/udp]`).
/// Ports are u32 on the wire so that 70000 is refused by name, not by a parse error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    pub host_port: u32,
    pub container_port: u32,
    #[serde(default)]
    pub proto: Proto,
    /// Only traffic to this host address (default: any address of the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
}

impl PortMapping {
    /// Both ports in 1..=65535.
    pub fn check(&self) -> Result<(), Invalid> {
        for (what, p) in [
            ("host port", self.host_port),
            ("container port", self.container_port),
        ] {
            if !(1..=65535).contains(&p) {
                return invalid(format!("{what} {p} in {self} is out of range 1..=65535"));
            }
        }
        Ok(())
    }

    /// Whether two mappings would take the same host port (same protocol, overlapping address).
    pub fn clashes(&self, other: &PortMapping) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.container_port, self.proto
        )
    }
}

impl FromStr for PortMapping {
    type Err = Invalid;
    /// `[HOST_IP:]HOST_PORT:PORT[/tcp|/udp]`, as `docker run -p` takes it.
    fn from_str(s: &str) -> Result<Self, Invalid> {
        let (ports, proto) = match s.rsplit_once('/') {
            Some((p, proto)) => (p, proto.parse()?),
            None => (s, Proto::Tcp),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (host_ip, host, container) = match parts.as_slice() {
            [h, c] => (None, *h, *c),
            [ip, h, c] => (
                Some(ip.parse::<Ipv4Addr>().map_err(|_| {
                    Invalid(format!(
                        "{ip:?} in port mapping {s:?} is not an IPv4 address"
                    ))
                })?),
                *h,
                *c,
            ),
            _ => {
                return invalid(format!(
                    "port mapping {s:?} is not [HOST_IP:]HOST_PORT:PORT[/tcp|/udp]"
                ))
            }
        };
        let port = |what: &str, p: &str| {
            p.parse::<u32>().map_err(|_| {
                Invalid(format!(
                    "{what} {p:?} in port mapping {s:?} is not a number"
                ))
            })
        };
        let m = PortMapping {
            host_port: port("host port", host)?,
            container_port: port("container port", container)?,
            proto,
            host_ip,
        };
        m.check()?;
        Ok(m)
    }
}

/// The front door an endpoint came through. Records written before this field existed were
/// all made by the CLI, hence the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `rnet attach` (and any API client that does not say).
    #[default]
    Cli,
    /// `rnet run`.
    Run,
    /// The `rnet-cni` plugin.
    Cni,
    /// The Docker libnetwork driver.
    Docker,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Cli => "cli",
            Origin::Run => "run",
            Origin::Cni => "cni",
            Origin::Docker => "docker",
        })
    }
}

/// A host record (`/rnet/v1/hosts/<id>`), attached to the host's lease: its presence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub id: String,
    pub underlay: Ipv4Addr,
    pub vtep_mac: Mac,
    /// Unix seconds of the daemon's start.
    pub started: u64,
    /// Unix seconds of the daemon's last renewal of this record.
    #[serde(default)]
    pub renewed: u64,
    /// The host's WireGuard endpoint; absent where its tunnel could not be set up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireguardInfo>,
    /// The host's IPsec state; absent where the kernel has no ESP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipsec: Option<IpsecInfo>,
}

/// An ESP AEAD rnet uses, as the store names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Aead {
    /// AES-256-GCM with a 16-byte ICV (RFC 4106): where the CPU has AES instructions.
    #[serde(rename = "aes-gcm")]
    AesGcm,
    /// ChaCha20-Poly1305 (RFC 7634): fast without AES instructions.
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
}

impl Aead {
    /// The kernel crypto API's name of the ESP AEAD.
    pub fn kernel_name(self) -> &'static str {
        match self {
            Aead::AesGcm => "rfc4106(gcm(aes))",
            Aead::ChaCha20Poly1305 => "rfc7539esp(chacha20,poly1305)",
        }
    }
}

impl fmt::Display for Aead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Aead::AesGcm => "aes-gcm",
            Aead::ChaCha20Poly1305 => "chacha20-poly1305",
        })
    }
}

/// What peers need to key IPsec with a host (`ipsec`). Public material only: the keys come
/// from the hosts' X25519 keys in `wireguard`, derived on each end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpsecInfo {
    /// The AEAD this host prefers (AES-GCM where the CPU has AES instructions).
    pub aead: Aead,
    /// The host's current sending epoch: the SAs it sends on are keyed by it.
    pub epoch: u64,
    /// Per peer: the SPI of the inbound SA this host installed for the peer's current
    /// epoch. A peer switches its outbound SA to a new epoch only once this names it.
    #[serde(default)]
    pub acks: std::collections::BTreeMap<String, u32>,
}

/// What peers need to reach a host's tunnel. Public material only: no secret enters the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireguardInfo {
    /// X25519 public key, base64.
    pub public_key: String,
    /// UDP port on the host's underlay address.
    pub port: u16,
    /// Unix seconds when the key was made.
    pub key_created: u64,
    /// The host's Ed25519 identity key, base64: peers pin it on first sight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Ed25519 signature by `identity` over the host id, underlay and the fields above
    /// (`wireguard::identity`): how peers accept a rotated key without an operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_name_rules() {
        assert!("blue".parse::<NetworkName>().is_ok());
        assert!("a.b_c-1".parse::<NetworkName>().is_ok());
        let long = "abcdefghijklm"; // 13 > 12
        let e = long.parse::<NetworkName>().unwrap_err().0;
        assert!(e.contains("at most 12"), "{e}");
        assert!("-x".parse::<NetworkName>().is_err());
        assert!("a b".parse::<NetworkName>().is_err());
        assert!("a/b".parse::<NetworkName>().is_err());
        assert!("".parse::<NetworkName>().is_err());
        assert_eq!(
            "red".parse::<NetworkName>().unwrap().vxlan_ifname(),
            "vx-red"
        );
    }

    #[test]
    fn ifname_rules() {
        assert!("eth0".parse::<IfName>().is_ok());
        assert!("abcdefghijklmnop".parse::<IfName>().is_err());
        assert!("a/b".parse::<IfName>().is_err());
        assert!("a b".parse::<IfName>().is_err());
        assert!("..".parse::<IfName>().is_err());
    }

    #[test]
    fn vni_range() {
        assert!(Vni::new(0).is_err());
        assert!(Vni::new(1).is_ok());
        assert!(Vni::new(VNI_MAX).is_ok());
        assert!(Vni::new(VNI_MAX + 1).is_err());
    }

    #[test]
    fn mac_parse_and_derive() {
        let m = Mac::from_ipv4("10.1.2.3".parse().unwrap());
        assert_eq!(m.to_string(), "02:52:0a:01:02:03");
        assert_eq!(m.to_string().parse::<Mac>().unwrap(), m);
        assert!("02:52:0a:01:02".parse::<Mac>().is_err());
        assert!("zz:52:0a:01:02:03".parse::<Mac>().is_err());
        assert_eq!(Mac::from_name(0x56, "h1"), Mac::from_name(0x56, "h1"));
        assert_ne!(Mac::from_name(0x56, "h1"), Mac::from_name(0x56, "h2"));
    }

    #[test]
    fn records_round_trip_json() {
        let n = Network {
            id: "00000000000000aa".parse().unwrap(),
            name: "blue".parse().unwrap(),
            vni: Vni::new(42).unwrap(),
            subnet: "10.1.0.0/24".parse().unwrap(),
            gateway: "10.1.0.1".parse().unwrap(),
            mtu: 1450,
            encryption: Encryption::None,
            allow_overlap: false,
            egress: true,
            internal: false,
        };
        let s = serde_json::to_string(&n).unwrap();
        assert_eq!(serde_json::from_str::<Network>(&s).unwrap(), n);
        assert!(serde_json::from_str::<Network>(&s.replace("42", "0")).is_err());
        // A record written before egress existed: egress on, not internal.
        let old = s.replace(",\"egress\":true,\"internal\":false", "");
        assert!(!old.contains("egress"), "{old}");
        assert_eq!(serde_json::from_str::<Network>(&old).unwrap(), n);
    }

    #[test]
    fn port_mappings_parse_and_refuse() {
        let m: PortMapping = "8080:80".parse().unwrap();
        assert_eq!(
            (m.host_port, m.container_port, m.proto, m.host_ip),
            (8080, 80, Proto::Tcp, None)
        );
        let u: PortMapping = "198.18.0.1:53:5353/udp".parse().unwrap();
        assert_eq!(u.proto, Proto::Udp);
        assert_eq!(u.host_ip, Some("198.18.0.1".parse().unwrap()));
        assert_eq!(u.to_string().parse::<PortMapping>().unwrap(), u);
        for bad in [
            "0:80",
            "8080:0",
            "70000:80",
            "80:65536",
            "80:80/sctp",
            "80",
            "a:80",
            "x:1:2",
        ] {
            assert!(bad.parse::<PortMapping>().is_err(), "{bad} accepted");
        }
        assert!("70000:80"
            .parse::<PortMapping>()
            .unwrap_err()
            .0
            .contains("out of range"));
        assert!("80:80/sctp"
            .parse::<PortMapping>()
            .unwrap_err()
            .0
            .contains("sctp"));
        assert!(m.clashes(&"8080:81".parse().unwrap()));
        assert!(!m.clashes(&"8080:80/udp".parse().unwrap()));
        assert!(m.clashes(&"1.2.3.4:8080:9".parse().unwrap()));
        let a: PortMapping = "1.2.3.4:8080:9".parse().unwrap();
        assert!(!a.clashes(&"1.2.3.5:8080:9".parse().unwrap()));
    }

    #[test]
    fn dns_name_rules() {
        for ok in ["web", "web-1", "a.b.c", "x1", &"a".repeat(63)] {
            assert!(ok.parse::<DnsName>().is_ok(), "{ok}");
        }
        let label64 = "a".repeat(64);
        let long = ["abcdefghij"; 26].join("."); // 285 bytes
        for (bad, says) in [
            ("a..b", "empty label"),
            ("", "empty"),
            (".a", "empty label"),
            ("a.", "empty label"),
            (label64.as_str(), "at most 63"),
            (long.as_str(), "at most 253"),
            ("Web", "'W'"),
            ("wéb", "'é'"),
            ("a_b", "'_'"),
            ("-a", "'-'"),
            ("a-", "'-'"),
            ("a b", "' '"),
            ("10.0.0.1", "all-digit"),
        ] {
            let e = bad.parse::<DnsName>().unwrap_err().0;
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        assert_eq!(DnsName::lenient("My-Box").unwrap().as_str(), "my-box");
        assert!(DnsName::lenient("my_box").is_none());
    }

    #[test]
    fn an_endpoint_record_without_names_still_reads() {
        let old = r#"{"network":"blue","network_id":"00000000000000aa","id":"e1","ip":"10.0.0.2/24",
            "mac":"02:52:0a:00:00:02","host":"h1","ifname":"eth0","netns":"/x","host_ifname":"ve0a000002","created":1}"#;
        let ep: Endpoint = serde_json::from_str(old).unwrap();
        assert_eq!(ep.name, None);
        assert!(ep.aliases.is_empty());
        let named = old.replace(r#""created":1"#, r#""created":1,"name":"Web""#);
        assert!(serde_json::from_str::<Endpoint>(&named).is_err());
    }
}
