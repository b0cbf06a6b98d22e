//! The kernel backend's pure half: what the `wireguard` device is told (SET_DEVICE messages,
//! peer changes from one plan to the next) and what its GET_DEVICE replies mean (up or down).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardDeviceFlags, WireguardMessage, WireguardPeer, WireguardPeerAttribute,
    WireguardPeerFlags,
};

use crate::wireguard::keys::HostKey;
use crate::wireguard::plan::PeerSpec;
use crate::wireguard::{KEEPALIVE_SECS, TUN_NAME};

/// WireGuard's REJECT_AFTER_TIME: a session older than this carries no data, so a peer
/// whose latest handshake is older is down.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(180);

/// Peers per SET_DEVICE message (keeps each well under a netlink page per peer batch).
pub const PEERS_PER_MESSAGE: usize = 32;

/// The counters of one peer the kernel reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelPeer {
    /// When the latest handshake was, since the Unix epoch (None: never).
    pub last_handshake: Option<Duration>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

/// Whether a handshake at `last` still gives a usable session at `now`, the key having
/// last changed at `rotated` (all since the Unix epoch).
pub fn session_live(last: Option<Duration>, now: Duration, rotated: Duration) -> bool {
    last.is_some_and(|t| t > rotated && now.saturating_sub(t) < SESSION_LIFETIME)
}

/// Which peers to take out of the kernel, and which to (re)configure, to go from `old` to
/// `new`. A changed key is a different kernel peer (removed, then added); a moved endpoint
/// is the same peer configured again.
pub fn peer_changes(
    old: &BTreeMap<String, PeerSpec>,
    new: &[PeerSpec],
) -> (Vec<PeerSpec>, Vec<PeerSpec>) {
    let wanted: BTreeMap<&str, &PeerSpec> = new.iter().map(|s| (s.host.as_str(), s)).collect();
    let remove = old
        .values()
        .filter(|o| {
            wanted
                .get(o.host.as_str())
                .is_none_or(|n| n.public != o.public)
        })
        .cloned()
        .collect();
    let add = new
        .iter()
        .filter(|n| {
            old.get(&n.host)
                .is_none_or(|o| !o.same_tunnel(n) || o.tunnel_ip != n.tunnel_ip)
        })
        .cloned()
        .collect();
    (remove, add)
}

/// One peer as the kernel is told it: its key, endpoint, keepalive, and its tunnel address
/// as its only allowed IP (cryptokey routing: what it may send and what goes to it).
pub fn peer_config(spec: &PeerSpec) -> WireguardPeer {
    WireguardPeer(vec![
        WireguardPeerAttribute::PublicKey(*spec.public.as_bytes()),
        WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
        WireguardPeerAttribute::Endpoint(SocketAddr::V4(spec.endpoint)),
        WireguardPeerAttribute::PersistentKeepalive(KEEPALIVE_SECS),
        WireguardPeerAttribute::AllowedIps(vec![WireguardAllowedIp(vec![
            WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
            WireguardAllowedIpAttr::IpAddr(IpAddr::V4(spec.tunnel_ip)),
            WireguardAllowedIpAttr::Cidr(32),
        ])]),
    ])
}

/// A SET_DEVICE message for the tunnel device.
pub fn device_message(
    key: Option<&HostKey>,
    port: Option<u16>,
    remove: &[PeerSpec],
    add: &[PeerSpec],
    replace_peers: bool,
) -> WireguardMessage {
    let mut attributes = vec![WireguardAttribute::IfName(TUN_NAME.to_string())];
    if let Some(key) = key {
        attributes.push(WireguardAttribute::PrivateKey(key.secret.to_bytes()));
    }
    if let Some(port) = port {
        attributes.push(WireguardAttribute::ListenPort(port));
    }
    if replace_peers {
        attributes.push(WireguardAttribute::Flags(
            WireguardDeviceFlags::ReplacePeers,
        ));
    }
    let mut peers: Vec<WireguardPeer> = remove
        .iter()
        .map(|s| {
            WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(*s.public.as_bytes()),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
            ])
        })
        .collect();
    peers.extend(add.iter().map(peer_config));
    if !peers.is_empty() {
        attributes.push(WireguardAttribute::Peers(peers));
    }
    WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes,
    }
}

/// The peers in GET_DEVICE replies, by public key.
pub fn parse_peers(replies: &[WireguardMessage]) -> HashMap<[u8; 32], KernelPeer> {
    let mut out = HashMap::new();
    for m in replies {
        for a in &m.attributes {
            let WireguardAttribute::Peers(peers) = a else {
                continue;
            };
            for p in peers {
                let mut key = None;
                let mut state = KernelPeer::default();
                for attr in p.iter() {
                    match attr {
                        WireguardPeerAttribute::PublicKey(k) => key = Some(*k),
                        WireguardPeerAttribute::LastHandshake(t) if t.seconds > 0 => {
                            state.last_handshake = Some(
                                Duration::from_secs(t.seconds as u64)
                                    + Duration::from_nanos(
                                        t.nano_seconds.clamp(0, 999_999_999) as u64
                                    ),
                            )
                        }
                        WireguardPeerAttribute::TxBytes(n) => state.tx_bytes = *n,
                        WireguardPeerAttribute::RxBytes(n) => state.rx_bytes = *n,
                        _ => {}
                    }
                }
                if let Some(k) = key {
                    out.insert(k, state);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_wireguard::WireguardTimeSpec;

    fn spec(host: &str, ip: &str, key: &HostKey) -> PeerSpec {
        PeerSpec {
            host: host.into(),
            public: key.public,
            endpoint: format!("{ip}:51820").parse().unwrap(),
            tunnel_ip: ip.parse().unwrap(),
            key_created: 1,
        }
    }

    #[test]
    fn a_peer_is_its_key_endpoint_keepalive_and_tunnel_address_alone() {
        let k = HostKey::generate();
        let p = peer_config(&spec("h2", "198.18.0.12", &k));
        assert!(p.contains(&WireguardPeerAttribute::PublicKey(*k.public.as_bytes())));
        assert!(p.contains(&WireguardPeerAttribute::Endpoint(
            "198.18.0.12:51820".parse().unwrap()
        )));
        assert!(p.contains(&WireguardPeerAttribute::PersistentKeepalive(KEEPALIVE_SECS)));
        // Replaced, not added to: a stale allowed IP would let the peer speak for another host.
        assert!(p.contains(&WireguardPeerAttribute::Flags(
            WireguardPeerFlags::ReplaceAllowedIps
        )));
        let ips: Vec<_> = p
            .iter()
            .filter_map(|a| match a {
                WireguardPeerAttribute::AllowedIps(v) => Some(v.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            ips,
            vec![vec![WireguardAllowedIp(vec![
                WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
                WireguardAllowedIpAttr::IpAddr("198.18.0.12".parse().unwrap()),
                WireguardAllowedIpAttr::Cidr(32),
            ])]]
        );
    }

    #[test]
    fn only_changed_peers_are_touched_and_a_new_key_is_a_new_kernel_peer() {
        let (a, b, c, a2) = (
            HostKey::generate(),
            HostKey::generate(),
            HostKey::generate(),
            HostKey::generate(),
        );
        let old: BTreeMap<String, PeerSpec> = [
            spec("h2", "198.18.0.12", &a),
            spec("h3", "198.18.0.13", &b),
            spec("h4", "198.18.0.14", &c),
        ]
        .into_iter()
        .map(|s| (s.host.clone(), s))
        .collect();
        let mut moved = spec("h3", "198.18.0.13", &b);
        moved.endpoint = "198.18.0.13:51821".parse().unwrap();
        let new = vec![spec("h2", "198.18.0.12", &a2), moved.clone()];
        let (remove, add) = peer_changes(&old, &new);
        let hosts = |v: &[PeerSpec]| v.iter().map(|s| s.host.clone()).collect::<Vec<_>>();
        // h2's old key and gone h4 leave; h3 stays the same kernel peer, reconfigured.
        assert_eq!(hosts(&remove), vec!["h2", "h4"]);
        assert_eq!(remove[0].public, a.public);
        assert_eq!(hosts(&add), vec!["h2", "h3"]);
        assert_eq!(add[0].public, a2.public);
        let (remove, add) = peer_changes(&old, &old.values().cloned().collect::<Vec<_>>());
        assert!(remove.is_empty() && add.is_empty());
    }

    #[test]
    fn set_device_carries_removals_then_additions_and_the_key_only_when_asked() {
        let (me, a, b) = (
            HostKey::generate(),
            HostKey::generate(),
            HostKey::generate(),
        );
        let m = device_message(
            None,
            None,
            &[spec("h2", "198.18.0.12", &a)],
            &[spec("h3", "198.18.0.13", &b)],
            false,
        );
        assert!(!m
            .attributes
            .iter()
            .any(|x| matches!(x, WireguardAttribute::PrivateKey(_))));
        let Some(WireguardAttribute::Peers(peers)) = m.attributes.last() else {
            panic!("no peers in {m:?}")
        };
        assert!(peers[0].contains(&WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe)));
        assert!(peers[1].contains(&WireguardPeerAttribute::PublicKey(*b.public.as_bytes())));
        let m = device_message(Some(&me), Some(51820), &[], &[], true);
        assert!(m
            .attributes
            .contains(&WireguardAttribute::PrivateKey(me.secret.to_bytes())));
        assert!(m
            .attributes
            .contains(&WireguardAttribute::ListenPort(51820)));
        assert!(m.attributes.contains(&WireguardAttribute::Flags(
            WireguardDeviceFlags::ReplacePeers
        )));
        assert!(!m
            .attributes
            .iter()
            .any(|x| matches!(x, WireguardAttribute::Peers(_))));
    }

    #[test]
    fn up_means_a_handshake_younger_than_a_session_lifetime() {
        let s = Duration::from_secs;
        assert!(!session_live(None, s(1000), s(0)));
        assert!(session_live(Some(s(1000)), s(1000), s(0)));
        assert!(session_live(Some(s(1000)), s(1179), s(0)));
        assert!(!session_live(Some(s(1000)), s(1180), s(0)));
        // A rotated key ends the sessions made with the old one.
        assert!(!session_live(Some(s(1000)), s(1001), s(1000)));
        assert!(session_live(
            Some(s(1000) + Duration::from_millis(1)),
            s(1001),
            s(1000)
        ));
        let k = HostKey::generate();
        let reply = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::Peers(vec![WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(*k.public.as_bytes()),
                // The kernel reports 0 for "never".
                WireguardPeerAttribute::LastHandshake(WireguardTimeSpec {
                    seconds: 0,
                    nano_seconds: 0,
                }),
                WireguardPeerAttribute::TxBytes(5),
                WireguardPeerAttribute::RxBytes(7),
            ])])],
        };
        let seen = parse_peers(&[reply]);
        assert_eq!(
            seen[k.public.as_bytes()],
            KernelPeer {
                last_handshake: None,
                tx_bytes: 5,
                rx_bytes: 7
            }
        );
    }
}
