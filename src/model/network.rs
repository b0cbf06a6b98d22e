//! The network record and its encryption mode.

use std::fmt;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use super::{Invalid, NetworkId, NetworkName, Vni};

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
