//! Pure: which hosts this host keeps a tunnel with, from the live host records.
//!
//! Every other live host that publishes a WireGuard endpoint is a peer. Its tunnel address
//! is its underlay address: the tunnel namespace holds nothing else, so the underlay's
//! addresses are free there, and a peer's VTEP address is the same on both paths.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use boringtun::x25519::PublicKey;

use super::keys::parse_public;
use crate::model::HostRecord;

/// One peer as the records describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub host: String,
    pub public: PublicKey,
    /// Where its tunnel's UDP socket listens.
    pub endpoint: SocketAddrV4,
    /// The only inner source address accepted from it, and the VTEP its frames go to.
    pub tunnel_ip: Ipv4Addr,
    /// Unix seconds when its key was made.
    pub key_created: u64,
}

impl PeerSpec {
    /// Whether a tunnel built for `self` still fits `other` (same key, same place).
    pub fn same_tunnel(&self, other: &PeerSpec) -> bool {
        self.public == other.public && self.endpoint == other.endpoint
    }
}

/// The peers to keep, and for each host that cannot be one, why.
pub fn wanted<'a>(
    me: &str,
    my_public: &PublicKey,
    hosts: impl IntoIterator<Item = &'a HostRecord>,
) -> (Vec<PeerSpec>, BTreeMap<String, String>) {
    let mut peers: Vec<PeerSpec> = Vec::new();
    let mut problems = BTreeMap::new();
    for h in hosts {
        if h.id == me {
            continue;
        }
        let Some(wg) = &h.wireguard else {
            problems.insert(
                h.id.clone(),
                "publishes no WireGuard endpoint (its tunnel could not be set up; see its rnetd log)"
                    .to_string(),
            );
            continue;
        };
        let public = match parse_public(&wg.public_key) {
            Ok(k) => k,
            Err(why) => {
                problems.insert(
                    h.id.clone(),
                    format!("its public key in the store is unusable: {why}"),
                );
                continue;
            }
        };
        if public == *my_public {
            problems.insert(
                h.id.clone(),
                "its public key in the store is this host's own key".to_string(),
            );
            continue;
        }
        if let Some(other) = peers
            .iter()
            .find(|p| p.public == public || p.tunnel_ip == h.underlay)
        {
            problems.insert(
                h.id.clone(),
                format!(
                    "shares its public key or underlay address with host {}",
                    other.host
                ),
            );
            continue;
        }
        peers.push(PeerSpec {
            host: h.id.clone(),
            public,
            endpoint: SocketAddrV4::new(h.underlay, wg.port),
            tunnel_ip: h.underlay,
            key_created: wg.key_created,
        });
    }
    (peers, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mac, WireguardInfo};
    use crate::wireguard::keys::HostKey;

    fn host(id: &str, underlay: &str, key: Option<&HostKey>) -> HostRecord {
        HostRecord {
            id: id.into(),
            underlay: underlay.parse().unwrap(),
            vtep_mac: Mac::from_name(0x56, id),
            started: 0,
            renewed: 0,
            wireguard: key.map(|k| WireguardInfo {
                public_key: k.public_b64(),
                port: 51820,
                key_created: 7,
                identity: None,
                signature: None,
            }),
            ipsec: None,
        }
    }

    #[test]
    fn every_other_host_with_an_endpoint_is_a_peer_at_its_underlay() {
        let (me, a, b) = (
            HostKey::generate(),
            HostKey::generate(),
            HostKey::generate(),
        );
        let hosts = [
            host("h1", "198.18.0.11", Some(&me)),
            host("h2", "198.18.0.12", Some(&a)),
            host("h3", "198.18.0.13", Some(&b)),
            host("h4", "198.18.0.14", None),
        ];
        let (peers, problems) = wanted("h1", &me.public, &hosts);
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].endpoint, "198.18.0.12:51820".parse().unwrap());
        assert_eq!(
            peers[0].tunnel_ip,
            "198.18.0.12".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(peers[1].public, b.public);
        assert!(problems["h4"].contains("no WireGuard endpoint"));
    }

    #[test]
    fn unusable_duplicate_or_stolen_keys_are_refused_with_a_reason() {
        let (me, a) = (HostKey::generate(), HostKey::generate());
        let mut bad = host("h5", "198.18.0.15", Some(&a));
        bad.wireguard.as_mut().unwrap().public_key = "not-a-key".into();
        let hosts = [
            host("h2", "198.18.0.12", Some(&a)),
            host("h3", "198.18.0.13", Some(&a)),
            host("h4", "198.18.0.14", Some(&me)),
            bad,
        ];
        let (peers, problems) = wanted("h1", &me.public, &hosts);
        assert_eq!(peers.len(), 1);
        assert!(problems["h3"].contains("shares its public key"));
        assert!(problems["h4"].contains("this host's own key"));
        assert!(problems["h5"].contains("unusable"));
    }

    #[test]
    fn a_changed_key_or_port_is_a_new_tunnel() {
        let (me, a, b) = (
            HostKey::generate(),
            HostKey::generate(),
            HostKey::generate(),
        );
        let (one, _) = wanted("h1", &me.public, &[host("h2", "198.18.0.12", Some(&a))]);
        let (two, _) = wanted("h1", &me.public, &[host("h2", "198.18.0.12", Some(&b))]);
        let mut moved = host("h2", "198.18.0.12", Some(&a));
        moved.wireguard.as_mut().unwrap().port = 51821;
        let (three, _) = wanted("h1", &me.public, &[moved]);
        assert!(one[0].same_tunnel(&one[0].clone()));
        assert!(!one[0].same_tunnel(&two[0]));
        assert!(!one[0].same_tunnel(&three[0]));
    }
}
