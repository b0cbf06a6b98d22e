//! The endpoint record (the address allocation) and what it carries: published ports, origin.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use super::{invalid, DnsName, EndpointId, IfName, Invalid, Mac, NetworkId, NetworkName};

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
