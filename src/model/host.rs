//! The host record (a host's presence) and the public tunnel material it carries.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::Mac;

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

#[cfg(test)]
impl HostRecord {
    /// Tests' host `id` at `underlay`, started and renewed at 0, with no tunnel: its VTEP MAC
    /// is derived from the id as the daemon derives it.
    pub fn plain(id: &str, underlay: &str) -> HostRecord {
        HostRecord {
            id: id.into(),
            underlay: underlay.parse().expect("an IPv4 underlay"),
            vtep_mac: Mac::from_name(0x56, id),
            started: 0,
            renewed: 0,
            wireguard: None,
            ipsec: None,
        }
    }
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
