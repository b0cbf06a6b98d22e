//! Pure domain types: validated names, VNIs, MACs, and the records kept in the store.
//!
//! Everything that comes from outside (CLI flags, API bodies, store values) is parsed
//! into these types once, at the edge; code further in trusts them.

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

mod endpoint;
mod host;
mod link;
mod names;
mod network;

pub use endpoint::{Endpoint, Origin, PortMapping, Proto};
pub use host::{Aead, HostRecord, IpsecInfo, WireguardInfo};
pub use link::{fnv1a, Mac, Vni};
pub use names::{DnsName, EndpointId, IfName, NetworkId, NetworkName, NETWORK_ID_LEN};
pub use network::{Encryption, Network, IPSEC_OVERHEAD, IPSEC_VXLAN_PORT, WIREGUARD_OVERHEAD};

#[cfg(test)]
mod tests;
