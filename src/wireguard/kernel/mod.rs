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

mod config;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

use super::genl::WgSocket;
use super::identity::Identity;
use super::keys::{encode_public, HostKey};
use super::pins::PinBook;
use super::plan::PeerSpec;
use super::{TunnelStatus, WgConfig, WgError, TUN_NAME};
use crate::model::WireguardInfo;
use crate::netns::NetNs;
use config::{
    device_message, parse_peers, peer_changes, session_live, KernelPeer, PEERS_PER_MESSAGE,
};

/// How often the kernel's handshake times are read.
const POLL: Duration = Duration::from_secs(1);
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

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn now_secs() -> u64 {
    now().as_secs()
}
