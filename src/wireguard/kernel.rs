//! The kernel WireGuard backend: a `wireguard` device in the tunnel namespace, configured
//! through the kernel's generic-netlink API, with the same keys, pins and peer plan as the
//! userspace tunnel (the two interoperate: same protocol, same store records).
//!
//! The device is created from rnetd's own namespace straight into the tunnel namespace, so
//! its UDP socket lives on the underlay (the kernel keeps a WireGuard socket in the namespace
//! the device was created from) while its packets enter and leave in the tunnel namespace.
//!
//! Fail closed as before: a peer is up (its hosts get FDB entries) only while the kernel
//! reports a handshake younger than WireGuard's session lifetime. A poll thread reads that
//! every second and tells the daemon when the set of up peers changes. The kernel says
//! nothing about refused handshakes, so no reason is given for a peer that stays down.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardDeviceFlags, WireguardMessage, WireguardPeer, WireguardPeerAttribute,
    WireguardPeerFlags,
};
use parking_lot::{Mutex, RwLock};

use super::genl::WgSocket;
use super::identity::Identity;
use super::keys::{encode_public, HostKey};
use super::pins::PinBook;
use super::plan::PeerSpec;
use super::{TunnelStatus, WgConfig, WgError, KEEPALIVE_SECS, TUN_NAME};
use crate::model::WireguardInfo;
use crate::netns::NetNs;

/// WireGuard's REJECT_AFTER_TIME: a session older than this carries no data, so a peer
/// whose latest handshake is older is down.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(180);
/// How often the kernel's handshake times are read.
const POLL: Duration = Duration::from_secs(1);
/// Peers per SET_DEVICE message (keeps each well under a netlink page per peer batch).
const PEERS_PER_MESSAGE: usize = 32;
/// What `rnet peers` says about a peer without a session.
pub const NO_REASON: &str = "no handshake with it; the kernel WireGuard backend does not report why a handshake is refused (see `rnet peers` on that host, or its rnetd log)";

/// Whether this kernel has WireGuard: resolving the generic-netlink family loads the module
/// when it is installed (the kernel's own module alias), and creates nothing.
pub fn probe() -> Result<(), String> {
    match WgSocket::open() {
        Ok(_) => Ok(()),
        Err(e) if e.errno() == Some(libc::ENOENT) => Err(
            "this kernel has no wireguard module (the generic netlink family \"wireguard\" does not exist and could not be loaded)".into(),
        ),
        Err(e) => Err(format!("probing for the kernel's wireguard module: {e}")),
    }
}

/// The counters of one peer the kernel reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelPeer {
    /// When the latest handshake was, since the Unix epoch (None: never).
    pub last_handshake: Option<Duration>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

/// The running kernel device; cheap to clone.
#[derive(Clone)]
pub struct KernelWg {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: WgConfig,
    socket: Mutex<WgSocket>,
    key: RwLock<HostKey>,
    identity: Identity,
    pins: PinBook,
    /// The peers configured in the kernel, by host.
    peers: RwLock<BTreeMap<String, PeerSpec>>,
    /// The kernel's view from the last poll, by public key.
    seen: Mutex<HashMap<[u8; 32], KernelPeer>>,
    up: Mutex<BTreeSet<String>>,
    /// When the key last changed: sessions from before are gone (the kernel keeps their
    /// handshake times), so they do not count as up.
    rotated_at: Mutex<Duration>,
    rotation: Mutex<()>,
    on_change: Box<dyn Fn() + Send + Sync>,
}

impl KernelWg {
    /// Set up the device `create` made in the tunnel namespace: this host's key and port,
    /// no peers; `configure` then gives it its address, MTU and route and brings it up.
    pub async fn start<F, Fut>(
        cfg: WgConfig,
        configure: F,
        on_change: Box<dyn Fn() + Send + Sync>,
    ) -> Result<KernelWg, WgError>
    where
        F: FnOnce(PathBuf, String, std::net::Ipv4Addr, u32) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let key = HostKey::load_or_generate(&cfg.key_file)?;
        let identity = Identity::load_or_generate(&cfg.identity_file)?;
        let pins = PinBook::open(&cfg.pins_file)?;
        let ns = NetNs::open(&cfg.netns).map_err(|e| WgError::Setup(e.to_string()))?;
        let mut socket = ns
            .run(WgSocket::open)
            .map_err(|e| WgError::Setup(e.to_string()))?
            .map_err(|e| WgError::Setup(format!("kernel WireGuard: {e}")))?;
        socket
            .set_device(
                device_message(Some(&key), Some(cfg.port), &[], &[], true),
                &format!("setting {TUN_NAME}'s key and port"),
            )
            .map_err(|e| match e.errno() {
                Some(libc::EADDRINUSE) => WgError::Socket(format!(
                    "binding WireGuard's UDP port {}: {e} (another tunnel there? choose a port with --wireguard-port)",
                    cfg.port
                )),
                _ => WgError::Setup(e.to_string()),
            })?;
        configure(
            cfg.netns.clone(),
            TUN_NAME.to_string(),
            cfg.underlay,
            super::tunnel_mtu(cfg.underlay_mtu),
        )
        .await
        .map_err(|e| WgError::Setup(format!("configuring {TUN_NAME}: {e}")))?;
        let inner = Arc::new(Inner {
            cfg,
            socket: Mutex::new(socket),
            key: RwLock::new(key),
            identity,
            pins,
            peers: RwLock::new(BTreeMap::new()),
            seen: Mutex::new(HashMap::new()),
            up: Mutex::new(BTreeSet::new()),
            rotated_at: Mutex::new(Duration::ZERO),
            rotation: Mutex::new(()),
            on_change,
        });
        // The poll thread holds only a weak reference: it ends with the last handle.
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("wg-kernel-poll".into())
            .spawn(move || loop {
                std::thread::sleep(POLL);
                let Some(inner) = weak.upgrade() else { return };
                inner.poll();
            })
            .map_err(|e| WgError::Setup(format!("starting the WireGuard poll thread: {e}")))?;
        let me = KernelWg { inner };
        tracing::info!(port = me.inner.cfg.port, public_key = %me.public_key(), device = TUN_NAME, "kernel WireGuard device up");
        Ok(me)
    }

    pub fn public(&self) -> boringtun::x25519::PublicKey {
        self.inner.key.read().public
    }

    pub fn public_key(&self) -> String {
        self.inner.key.read().public_b64()
    }

    /// The X25519 shared secret of this host's key with `peer`'s (IPsec key derivation).
    pub fn shared_secret(&self, peer: &boringtun::x25519::PublicKey) -> [u8; 32] {
        self.inner.key.read().secret.diffie_hellman(peer).to_bytes()
    }

    pub fn info(&self) -> WireguardInfo {
        let key = self.inner.key.read();
        let mut info = WireguardInfo {
            public_key: key.public_b64(),
            port: self.inner.cfg.port,
            key_created: key.created,
            identity: None,
            signature: None,
        };
        let cfg = &self.inner.cfg;
        self.inner
            .identity
            .sign(&cfg.host_id, cfg.underlay, &mut info);
        info
    }

    pub fn pins(&self) -> &PinBook {
        &self.inner.pins
    }

    pub fn netns(&self) -> &Path {
        &self.inner.cfg.netns
    }

    /// Make the kernel's peers match `specs`: gone peers (and old keys) removed, new or
    /// moved ones added with their endpoint, allowed-ips and keepalive; the rest untouched,
    /// so their sessions survive.
    pub fn set_peers(&self, specs: Vec<PeerSpec>) {
        let old = self.inner.peers.read().clone();
        let (remove, add) = peer_changes(&old, &specs);
        if remove.is_empty() && add.is_empty() {
            return;
        }
        let mut socket = self.inner.socket.lock();
        let mut ok = true;
        for chunk in remove.chunks(PEERS_PER_MESSAGE) {
            let msg = device_message(None, None, chunk, &[], false);
            if let Err(e) = socket.set_device(msg, "removing WireGuard peers") {
                tracing::error!(error = %e, "kernel WireGuard refused a peer change");
                ok = false;
            }
        }
        for chunk in add.chunks(PEERS_PER_MESSAGE) {
            let msg = device_message(None, None, &[], chunk, false);
            if let Err(e) = socket.set_device(msg, "adding WireGuard peers") {
                tracing::error!(error = %e, "kernel WireGuard refused a peer change");
                ok = false;
            }
        }
        drop(socket);
        for p in &add {
            tracing::info!(peer = %p.host, endpoint = %p.endpoint, public_key = %encode_public(&p.public), "WireGuard peer added (kernel)");
        }
        // On a refusal the next pass tries again: only what the kernel took is remembered.
        if ok {
            *self.inner.peers.write() = specs.into_iter().map(|s| (s.host.clone(), s)).collect();
        }
        self.inner.poll();
        (self.inner.on_change)();
    }

    pub fn up_hosts(&self) -> BTreeSet<String> {
        self.inner.up.lock().clone()
    }

    pub fn status(&self, host: &str) -> Option<TunnelStatus> {
        let spec = self.inner.peers.read().get(host)?.clone();
        let seen = self
            .inner
            .seen
            .lock()
            .get(spec.public.as_bytes())
            .cloned()
            .unwrap_or_default();
        let now = now_secs();
        let up = self.inner.up.lock().contains(host);
        Some(TunnelStatus {
            up,
            since_handshake: seen
                .last_handshake
                .filter(|_| up)
                .map(|t| now.saturating_sub(t.as_secs())),
            tx_bytes: seen.tx_bytes,
            rx_bytes: seen.rx_bytes,
            key_age: (spec.key_created > 0).then(|| now.saturating_sub(spec.key_created)),
            problem: (!up).then(|| NO_REASON.to_string()),
            backend: Some(super::Backend::Kernel),
        })
    }

    /// Replace the host's static key: saved first, then given to the device (its sessions
    /// end; peers handshake again once they read the new public key from the store).
    pub fn rotate_key(&self) -> Result<WireguardInfo, WgError> {
        let _one_at_a_time = self.inner.rotation.lock();
        let key = HostKey::generate();
        key.save(&self.inner.cfg.key_file)?;
        self.inner
            .socket
            .lock()
            .set_device(
                device_message(Some(&key), None, &[], &[], false),
                "setting the new WireGuard key",
            )
            .map_err(|e| WgError::Setup(e.to_string()))?;
        *self.inner.key.write() = key.clone();
        *self.inner.rotated_at.lock() = now();
        self.inner.poll();
        tracing::info!(public_key = %key.public_b64(), "WireGuard key rotated (kernel)");
        Ok(self.info())
    }
}

impl Inner {
    /// Read the kernel's handshake times; recompute which peers are up.
    fn poll(&self) {
        let replies = match self.socket.lock().get_device(TUN_NAME) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reading the kernel WireGuard device failed");
                return;
            }
        };
        let seen = parse_peers(&replies);
        let (now, rotated) = (now(), *self.rotated_at.lock());
        let up: BTreeSet<String> = self
            .peers
            .read()
            .values()
            .filter(|s| {
                seen.get(s.public.as_bytes())
                    .is_some_and(|p| session_live(p.last_handshake, now, rotated))
            })
            .map(|s| s.host.clone())
            .collect();
        *self.seen.lock() = seen;
        let changed = {
            let mut cur = self.up.lock();
            if *cur == up {
                false
            } else {
                for h in up.difference(&cur) {
                    tracing::info!(peer = %h, "WireGuard tunnel up (kernel)");
                }
                for h in cur.difference(&up) {
                    tracing::warn!(peer = %h, "WireGuard tunnel down (kernel)");
                }
                *cur = up;
                true
            }
        };
        if changed {
            (self.on_change)();
        }
    }
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

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn now_secs() -> u64 {
    now().as_secs()
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
