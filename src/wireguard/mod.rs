//! Encrypted overlay: one WireGuard tunnel per host, carried by the kernel's `wireguard`
//! device where the kernel has it (`kernel`, over generic netlink) and by boringtun in
//! userspace elsewhere (`device`: boringtun's sans-IO `Tunn`; rnet owns the TAP device, the
//! UDP socket and the timers). `backend` picks one and hides the difference.
//!
//! The VXLAN devices of encrypted networks are created from a dedicated *tunnel namespace*
//! that holds only the tunnel device: their UDP sockets live there, so every frame they send
//! leaves through WireGuard and every frame they receive came out of it. Peers' tunnel
//! addresses are their underlay addresses (see `plan`), so the peer tables are the same as
//! for unencrypted networks, gated on the tunnel being up.

pub mod backend;
pub mod batch;
mod device;
mod gather;
mod genl;
pub mod identity;
pub mod kernel;
pub mod keys;
mod limiter;
mod link;
pub mod offload;
pub mod pins;
pub mod plan;
mod private_file;
pub mod tun;
mod wire;

pub use backend::{Backend, BackendChoice, WireGuard};
pub use device::{tunnel_mtu, DropCounters, TunOffload, TunnelStatus, WgConfig};

/// The tunnel device (TAP or kernel WireGuard), in the tunnel namespace.
pub const TUN_NAME: &str = "rnet-wg0";
/// WireGuard's customary port.
pub const DEFAULT_PORT: u16 = 51820;
/// Seconds between keepalives: keeps sessions (and so the up/down state) fresh.
pub const KEEPALIVE_SECS: u16 = 15;
/// The private key's file in the state directory.
pub const KEY_FILE: &str = "wireguard.key";

pub use crate::paths::tunnel_netns;

/// Why the tunnel cannot run.
#[derive(Debug, thiserror::Error)]
pub enum WgError {
    #[error("WireGuard key: {0}")]
    Key(String),
    #[error("{0}")]
    Tun(String),
    #[error("{0}")]
    Socket(String),
    #[error("{0}")]
    Setup(String),
}
