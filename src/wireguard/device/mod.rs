//! The host's userspace WireGuard interface: one TAP device in the tunnel namespace, one UDP
//! socket on the underlay, one boringtun `Tunn` per peer, and three threads:
//!
//! - **tx**: device → (cut TCP super-packets, `offload`) → encrypt → `sendmmsg` (up to 64
//!   datagrams per call);
//! - **rx**: `recvmmsg` → decrypt → (merge TCP segments, `gather`) → device;
//! - **timers**: every 250 ms, boringtun's handshake, keepalive and rekey rules.
//!
//! The two directions run on their own threads so both cores work. The peer table is
//! swapped whole (read once per batch); each peer's `Tunn` has its own lock, taken per packet
//! and uncontended except when both directions hit the same peer at the same moment.
//!
//! Fail closed: a packet whose destination is not a peer is dropped, and one for a peer
//! without a session waits inside boringtun for the handshake. Nothing here can send an
//! overlay frame unencrypted: the VXLAN sockets of encrypted networks live in the tunnel
//! namespace, whose only way out is this device.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use parking_lot::{Mutex, RwLock};

use super::batch::{RecvBatch, SendBatch, Udp, BUF};
use super::gather::Device as _;
use super::gather::TunWriter;
use super::identity::Identity;
use super::keys::{encode_public, HostKey};
use super::limiter::Keys;
use super::link::{self, Link, To};
use super::offload;
use super::pins::PinBook;
use super::plan::PeerSpec;
use super::tun::{Tun, TunRead, MAX_PACKET};
use super::{WgError, TUN_NAME};
use crate::model::{WireguardInfo, WIREGUARD_OVERHEAD};
use crate::netns::{self, NetNs};

mod datapath;

const TIMER_TICK: Duration = Duration::from_millis(250);
/// Refused sources remembered for `rnet peers` (unauthenticated, so bounded).
const MAX_STRANGERS: usize = 256;
/// Socket buffers: a burst of a few thousand full-size datagrams without receive drops.
const SOCKET_BUFFER: usize = 8 << 20;

/// What the tunnel needs to know about its host.
#[derive(Clone, Debug)]
pub struct WgConfig {
    /// This host's id: its record's signature covers it.
    pub host_id: String,
    pub key_file: PathBuf,
    /// This host's Ed25519 identity key (see `identity`).
    pub identity_file: PathBuf,
    /// The peers' pinned identities (see `pins`).
    pub pins_file: PathBuf,
    /// Where the tunnel namespace is bind-mounted.
    pub netns: PathBuf,
    pub underlay: Ipv4Addr,
    pub underlay_mtu: u32,
    pub port: u16,
    /// Ask the device for TCP super-packets (cut here before encryption) and give it merged
    /// ones where the kernel offers that; off, the kernel cuts them before the device.
    pub tun_offload: bool,
}

/// One peer's tunnel, as `rnet peers` shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TunnelStatus {
    pub up: bool,
    /// Seconds since the current session's handshake (None: no session).
    pub since_handshake: Option<u64>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Seconds since the peer made its key.
    pub key_age: Option<u64>,
    /// Why the tunnel is not up, when rnetd knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Which WireGuard implementation carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<super::Backend>,
}

/// Datagrams dropped on the way in, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DropCounters {
    /// Not a WireGuard message at all.
    pub malformed: u64,
    /// Well-formed but refused by the protocol (bad MAC or tag, replayed counter, unknown index...).
    pub rejected: u64,
    /// Decrypted, but the inner source address is not the peer's.
    pub spoofed: u64,
    /// Outbound packets for an address that is no peer.
    pub no_peer: u64,
    /// Outbound packets whose offload metadata does not fit them (headers a workload forged
    /// for a segmentation offload, say): refused whole.
    pub bad_offload: u64,
}

/// The tunnel device's segmentation offload, as `rnet status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunOffload {
    /// The kernel hands over TCP super-packets, bare or inside VXLAN.
    pub tso: bool,
    /// Super-packets cut into wire packets here so far.
    pub super_packets: u64,
    /// Super-packets merged here from received TCP segments and written whole so far.
    pub merged: u64,
}

struct Peer {
    spec: PeerSpec,
    /// Kept across a change of the peer's key (a new `Peer` with the same state).
    state: Arc<PeerState>,
}

struct PeerState {
    /// The peer's index: its sessions' receiver indices carry it (`link::peer_index`).
    base: u32,
    link: Mutex<Link>,
    up: AtomicBool,
    problem: Mutex<Option<String>>,
}

#[derive(Default)]
struct PeerMap {
    by_host: HashMap<String, Arc<Peer>>,
    by_ip: HashMap<Ipv4Addr, Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    by_key: HashMap<[u8; 32], Arc<Peer>>,
}

#[derive(Default)]
struct Counters {
    malformed: AtomicU64,
    rejected: AtomicU64,
    spoofed: AtomicU64,
    no_peer: AtomicU64,
    bad_offload: AtomicU64,
    super_packets: AtomicU64,
    merged: AtomicU64,
}

struct Inner {
    cfg: WgConfig,
    tun: Tun,
    udp: Udp,
    keys: RwLock<Keys>,
    identity: Identity,
    pins: PinBook,
    peers: RwLock<Arc<PeerMap>>,
    /// Why hosts that are not peers (yet) were refused, by underlay address.
    strangers: Mutex<HashMap<Ipv4Addr, String>>,
    next_index: AtomicU32,
    counters: Counters,
    /// One key rotation at a time (file, keys and tunnels change together).
    rotation: Mutex<()>,
    on_change: Box<dyn Fn() + Send + Sync>,
}

/// The running userspace tunnel; cheap to clone.
#[derive(Clone)]
pub struct Userspace {
    inner: Arc<Inner>,
}

impl Userspace {
    /// Load or make the key, bind the UDP port, create the TAP device in the tunnel
    /// namespace, and start the threads. `configure` gives the device its address, MTU and
    /// route (netlink, owned by the dataplane). `on_change` runs whenever a tunnel goes up or
    /// down, so the peer tables follow.
    pub async fn start<F, Fut>(
        cfg: WgConfig,
        configure: F,
        on_change: Box<dyn Fn() + Send + Sync>,
    ) -> Result<Userspace, WgError>
    where
        F: FnOnce(PathBuf, String, Ipv4Addr, u32) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let key = HostKey::load_or_generate(&cfg.key_file)?;
        let identity = Identity::load_or_generate(&cfg.identity_file)?;
        let pins = PinBook::open(&cfg.pins_file)?;
        let udp = bind(cfg.underlay, cfg.port)?;
        if !netns::is_mounted(&cfg.netns) {
            netns::remove(&cfg.netns).map_err(|e| WgError::Setup(e.to_string()))?;
            NetNs::create(&cfg.netns)
                .map_err(|e| WgError::Setup(format!("creating the tunnel namespace: {e}")))?;
        }
        let ns = NetNs::open(&cfg.netns).map_err(|e| WgError::Setup(e.to_string()))?;
        let tun = Tun::create(&ns, TUN_NAME, !cfg.tun_offload)?;
        configure(
            cfg.netns.clone(),
            TUN_NAME.to_string(),
            cfg.underlay,
            tunnel_mtu(cfg.underlay_mtu),
        )
        .await
        .map_err(|e| WgError::Setup(format!("configuring {TUN_NAME}: {e}")))?;
        let inner = Arc::new(Inner {
            cfg,
            tun,
            udp,
            keys: RwLock::new(Keys::new(key)),
            identity,
            pins,
            peers: RwLock::new(Arc::new(PeerMap::default())),
            strangers: Mutex::new(HashMap::new()),
            next_index: AtomicU32::new(1),
            counters: Counters::default(),
            rotation: Mutex::new(()),
            on_change,
        });
        for (name, run) in [
            ("wg-tx", Inner::tx_loop as fn(&Inner)),
            ("wg-rx", Inner::rx_loop),
            ("wg-timers", Inner::timer_loop),
        ] {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let result =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&inner)));
                    if result.is_err() {
                        // A dead datapath thread would leave a tunnel that says it works.
                        tracing::error!(thread = name, "WireGuard thread panicked; aborting rnetd");
                        std::process::abort();
                    }
                })
                .map_err(|e| WgError::Setup(format!("starting thread {name}: {e}")))?;
        }
        let me = Userspace { inner };
        tracing::info!(port = me.inner.cfg.port, public_key = %me.public_key(), device = TUN_NAME, "WireGuard tunnel up");
        Ok(me)
    }

    pub fn public(&self) -> boringtun::x25519::PublicKey {
        self.inner.keys.read().key.public
    }

    pub fn public_key(&self) -> String {
        self.inner.keys.read().key.public_b64()
    }

    /// What goes into this host's record, signed with its identity key.
    pub fn info(&self) -> WireguardInfo {
        let keys = self.inner.keys.read();
        let mut info = WireguardInfo {
            public_key: keys.key.public_b64(),
            port: self.inner.cfg.port,
            key_created: keys.key.created,
            identity: None,
            signature: None,
        };
        let cfg = &self.inner.cfg;
        self.inner
            .identity
            .sign(&cfg.host_id, cfg.underlay, &mut info);
        info
    }

    /// The X25519 shared secret of this host's key with `peer`'s: the input of the IPsec
    /// key derivation (`ipsec::keys`). Never logged, never stored.
    pub fn shared_secret(&self, peer: &boringtun::x25519::PublicKey) -> [u8; 32] {
        self.inner
            .keys
            .read()
            .key
            .secret
            .diffie_hellman(peer)
            .to_bytes()
    }

    /// The peers' pinned identities.
    pub fn pins(&self) -> &PinBook {
        &self.inner.pins
    }

    /// The namespace whose sockets carry encrypted networks' VXLAN traffic.
    pub fn netns(&self) -> &Path {
        &self.inner.cfg.netns
    }

    /// Make the peer table match `specs`: new peers get a tunnel and an immediate
    /// handshake; a peer whose key or endpoint changed gets a new tunnel; the rest stay.
    pub fn set_peers(&self, specs: Vec<PeerSpec>) {
        let old = self.inner.peers.read().clone();
        let unchanged = specs.len() == old.by_host.len()
            && specs.iter().all(|s| {
                old.by_host
                    .get(&s.host)
                    .is_some_and(|p| p.spec.same_tunnel(s))
            });
        if unchanged {
            return;
        }
        let mut map = PeerMap::default();
        let (mut fresh, mut renewed) = (Vec::new(), Vec::new());
        for spec in specs {
            let peer = match old.by_host.get(&spec.host) {
                Some(p) if p.spec.same_tunnel(&spec) => p.clone(),
                Some(p)
                    if p.spec.endpoint == spec.endpoint && p.spec.tunnel_ip == spec.tunnel_ip =>
                {
                    // A new key in the same place: its session is made beside the old one.
                    p.state
                        .link
                        .lock()
                        .renew(&self.inner.keys.read(), spec.public);
                    let p = Arc::new(Peer {
                        spec,
                        state: p.state.clone(),
                    });
                    renewed.push(p.clone());
                    p
                }
                _ => {
                    let p = Arc::new(self.inner.new_peer(spec));
                    fresh.push(p.clone());
                    p
                }
            };
            map.by_ip.insert(peer.spec.tunnel_ip, peer.clone());
            map.by_index.insert(peer.state.base, peer.clone());
            map.by_key
                .insert(*peer.spec.public.as_bytes(), peer.clone());
            map.by_host.insert(peer.spec.host.clone(), peer);
        }
        for gone in old.by_host.keys().filter(|h| !map.by_host.contains_key(*h)) {
            tracing::info!(peer = %gone, "WireGuard peer removed");
        }
        *self.inner.peers.write() = Arc::new(map);
        for p in fresh {
            tracing::info!(peer = %p.spec.host, endpoint = %p.spec.endpoint, public_key = %encode_public(&p.spec.public), "WireGuard peer added; starting handshake");
            self.inner.initiate(&p);
        }
        for p in renewed {
            tracing::info!(peer = %p.spec.host, public_key = %encode_public(&p.spec.public), "WireGuard peer has a new key; starting a handshake beside the current session");
            self.inner.initiate(&p);
        }
        (self.inner.on_change)();
    }

    /// Hosts whose tunnel has a live session: the only ones encrypted traffic may go to.
    pub fn up_hosts(&self) -> BTreeSet<String> {
        self.inner
            .peers
            .read()
            .by_host
            .values()
            .filter(|p| p.state.up.load(Ordering::Relaxed))
            .map(|p| p.spec.host.clone())
            .collect()
    }

    /// The state of the tunnel to `host`, if it is a peer.
    pub fn status(&self, host: &str) -> Option<TunnelStatus> {
        let peer = self.inner.peers.read().by_host.get(host)?.clone();
        let (since, tx, rx) = peer.state.link.lock().stats();
        let problem = peer.state.problem.lock().clone();
        Some(TunnelStatus {
            up: peer.state.up.load(Ordering::Relaxed),
            since_handshake: since.map(|d| d.as_secs()),
            tx_bytes: tx as u64,
            rx_bytes: rx as u64,
            key_age: (peer.spec.key_created > 0)
                .then(|| now_secs().saturating_sub(peer.spec.key_created)),
            problem,
            backend: Some(super::Backend::Userspace),
        })
    }

    /// Why a host at `underlay` that is not a peer was refused, if it tried.
    pub fn stranger_problem(&self, underlay: Ipv4Addr) -> Option<String> {
        self.inner.strangers.lock().get(&underlay).cloned()
    }

    pub fn drops(&self) -> DropCounters {
        let c = &self.inner.counters;
        DropCounters {
            malformed: c.malformed.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            spoofed: c.spoofed.load(Ordering::Relaxed),
            no_peer: c.no_peer.load(Ordering::Relaxed),
            bad_offload: c.bad_offload.load(Ordering::Relaxed),
        }
    }

    /// Whether the tunnel device hands over super-packets, how many it has, and how many
    /// were merged for it.
    pub fn tun_offload(&self) -> TunOffload {
        TunOffload {
            tso: self.inner.tun.tso(),
            super_packets: self.inner.counters.super_packets.load(Ordering::Relaxed),
            merged: self.inner.counters.merged.load(Ordering::Relaxed),
        }
    }

    /// Replace the host's static key: saved first, then used by every new handshake. Each
    /// tunnel's current session carries on until the peers, having read the new public key
    /// from the store, have made one with it (make-before-break).
    pub fn rotate_key(&self) -> Result<WireguardInfo, WgError> {
        let _one_at_a_time = self.inner.rotation.lock();
        let key = HostKey::generate();
        key.save(&self.inner.cfg.key_file)?;
        *self.inner.keys.write() = Keys::new(key.clone());
        let map = self.inner.peers.read().clone();
        let keys = self.inner.keys.read();
        for p in map.by_host.values() {
            // The peers know the old key until they read the new one from the store; then
            // they handshake with it, and the old session carries traffic until then.
            p.state.link.lock().renew(&keys, p.spec.public);
        }
        drop(keys);
        tracing::info!(public_key = %key.public_b64(), "WireGuard key rotated");
        Ok(self.info())
    }
}

/// The TUN device's MTU: the underlay's minus WireGuard's overhead.
pub fn tunnel_mtu(underlay_mtu: u32) -> u32 {
    underlay_mtu.saturating_sub(WIREGUARD_OVERHEAD)
}

fn bind(underlay: Ipv4Addr, port: u16) -> Result<Udp, WgError> {
    let addr = SocketAddrV4::new(underlay, port);
    let socket = UdpSocket::bind(addr).map_err(|e| {
        WgError::Socket(format!(
            "binding WireGuard's UDP port {addr}: {e} (another tunnel there? choose a port with --wireguard-port)"
        ))
    })?;
    use nix::sys::socket::{setsockopt, sockopt};
    // Root may go past the sysctl limits; where that fails the defaults still work.
    let _ = setsockopt(&socket, sockopt::RcvBufForce, &SOCKET_BUFFER);
    let _ = setsockopt(&socket, sockopt::SndBufForce, &SOCKET_BUFFER);
    let udp = Udp::new(socket)
        .map_err(|e| WgError::Socket(format!("setting up WireGuard's UDP socket {addr}: {e}")))?;
    // Coalesced receives (split again in RecvBatch); without it, one datagram per message.
    if !udp.gro() {
        tracing::info!("the kernel offers no UDP GRO; receiving datagrams one by one");
    }
    Ok(udp)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Inner {
    fn new_peer(&self, spec: PeerSpec) -> Peer {
        // 23-bit peer index space (two tunnel indices each); wrapping after 8 million peer
        // changes is harmless.
        let base = self.next_index.fetch_add(1, Ordering::Relaxed) & 0x007f_ffff;
        let link = Link::new(&self.keys.read(), spec.public, base);
        Peer {
            spec,
            state: Arc::new(PeerState {
                base,
                link: Mutex::new(link),
                up: AtomicBool::new(false),
                problem: Mutex::new(None),
            }),
        }
    }

    fn initiate(&self, peer: &Peer) {
        let mut buf = [0u8; 256];
        if let TunnResult::WriteToNetwork(msg) = peer.state.link.lock().initiate(&mut buf) {
            self.udp.send_one(msg, peer.spec.endpoint);
        }
    }
}
