//! Names and ids: networks, interfaces, endpoints and DNS names, each checked once.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{check_name_chars, invalid, Invalid, IFNAME_MAX, NETWORK_NAME_MAX, VXLAN_PREFIX};

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
