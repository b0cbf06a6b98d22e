//! Link-layer values: VNIs and MACs (and the stable hash MACs are derived with).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{invalid, Invalid, VNI_MAX};

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
