//! Which WireGuard implementation carries the tunnel: the kernel's `wireguard` device where
//! the kernel has it, boringtun in userspace elsewhere. `WireGuard` hides the difference from
//! the service: same keys, same records, same pins, same peer plan, same fail-closed rule.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::device::{DropCounters, TunOffload, TunnelStatus, Userspace, WgConfig};
use super::kernel::{self, KernelWg};
use super::pins::PinBook;
use super::plan::PeerSpec;
use super::{WgError, TUN_NAME};
use crate::dataplane::{DataplaneError, Netlink};
use crate::model::WireguardInfo;
use crate::netns::{self, NetNs};

/// The implementation that runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The kernel's `wireguard` module, configured over generic netlink.
    Kernel,
    /// boringtun, with rnetd's own TUN device and UDP socket.
    Userspace,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Kernel => "kernel",
            Backend::Userspace => "userspace (boringtun)",
        })
    }
}

/// `rnetd --wireguard-backend`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// The kernel's module where it exists, boringtun elsewhere.
    #[default]
    Auto,
    /// The kernel's module; rnetd refuses to start without it.
    Kernel,
    /// boringtun, even where the kernel has WireGuard.
    Userspace,
}

/// The backend to try for `choice`, given whether the kernel has WireGuard (`probe`, asked
/// only when it matters). Err: `kernel` was asked for and the kernel has none.
pub fn choose(
    choice: BackendChoice,
    probe: impl FnOnce() -> Result<(), String>,
) -> Result<Backend, String> {
    match choice {
        BackendChoice::Userspace => Ok(Backend::Userspace),
        BackendChoice::Kernel => probe().map(|()| Backend::Kernel),
        BackendChoice::Auto => match probe() {
            Ok(()) => Ok(Backend::Kernel),
            Err(why) => {
                tracing::info!(reason = %why, "using userspace WireGuard (boringtun)");
                Ok(Backend::Userspace)
            }
        },
    }
}

/// The running tunnel, whichever backend carries it; cheap to clone.
#[derive(Clone)]
pub enum WireGuard {
    Kernel(KernelWg),
    Userspace(Userspace),
}

/// Call the same method on whichever backend runs.
macro_rules! each {
    ($self:expr, $wg:ident => $e:expr) => {
        match $self {
            WireGuard::Kernel($wg) => $e,
            WireGuard::Userspace($wg) => $e,
        }
    };
}

impl WireGuard {
    /// Start the tunnel with the backend `choice` picks. A device left in the tunnel
    /// namespace by an earlier run goes first. `on_change` runs whenever a peer's tunnel
    /// goes up or down.
    pub async fn start(
        cfg: WgConfig,
        choice: BackendChoice,
        dp: &Netlink,
        on_change: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<WireGuard, WgError> {
        let backend = choose(choice, kernel::probe).map_err(WgError::Setup)?;
        if !netns::is_mounted(&cfg.netns) {
            netns::remove(&cfg.netns).map_err(|e| WgError::Setup(e.to_string()))?;
            NetNs::create(&cfg.netns)
                .map_err(|e| WgError::Setup(format!("creating the tunnel namespace: {e}")))?;
        }
        dp.remove_tunnel_device(&cfg.netns, TUN_NAME)
            .await
            .map_err(|e| WgError::Setup(format!("removing the old {TUN_NAME}: {e}")))?;
        let configure = |ns: PathBuf, ifname: String, addr: Ipv4Addr, mtu: u32| async move {
            dp.configure_tunnel(&ns, &ifname, addr, mtu)
                .await
                .map_err(|e| e.to_string())
        };
        let notify = |f: &Arc<dyn Fn() + Send + Sync>| -> Box<dyn Fn() + Send + Sync> {
            let f = f.clone();
            Box::new(move || f())
        };
        if backend == Backend::Kernel {
            match dp.create_wireguard_device(&cfg.netns, TUN_NAME).await {
                Ok(()) => {
                    let started = KernelWg::start(cfg.clone(), configure, notify(&on_change)).await;
                    if started.is_err() {
                        // Leave no half-configured device behind.
                        let _ = dp.remove_tunnel_device(&cfg.netns, TUN_NAME).await;
                    }
                    return started.map(WireGuard::Kernel);
                }
                Err(DataplaneError::Netlink {
                    errno: Some(libc::EOPNOTSUPP),
                    ..
                }) if choice == BackendChoice::Auto => {
                    tracing::info!("the kernel cannot create wireguard devices; using userspace WireGuard (boringtun)");
                }
                Err(e) => {
                    return Err(WgError::Setup(format!(
                        "kernel WireGuard (the wireguard module): {e}"
                    )))
                }
            }
        }
        let configure = |ns: PathBuf, ifname: String, addr: Ipv4Addr, mtu: u32| async move {
            dp.configure_tunnel(&ns, &ifname, addr, mtu)
                .await
                .map_err(|e| e.to_string())
        };
        Userspace::start(cfg, configure, notify(&on_change))
            .await
            .map(WireGuard::Userspace)
    }

    pub fn backend(&self) -> Backend {
        match self {
            WireGuard::Kernel(_) => Backend::Kernel,
            WireGuard::Userspace(_) => Backend::Userspace,
        }
    }

    pub fn public(&self) -> boringtun::x25519::PublicKey {
        each!(self, wg => wg.public())
    }

    pub fn public_key(&self) -> String {
        each!(self, wg => wg.public_key())
    }

    /// What goes into this host's record, signed with its identity key.
    pub fn info(&self) -> WireguardInfo {
        each!(self, wg => wg.info())
    }

    /// The X25519 shared secret of this host's key with `peer`'s: the input of the IPsec
    /// key derivation (`ipsec::keys`). Never logged, never stored.
    pub fn shared_secret(&self, peer: &boringtun::x25519::PublicKey) -> [u8; 32] {
        each!(self, wg => wg.shared_secret(peer))
    }

    /// The peers' pinned identities.
    pub fn pins(&self) -> &PinBook {
        each!(self, wg => wg.pins())
    }

    /// The namespace whose sockets carry encrypted networks' VXLAN traffic.
    pub fn netns(&self) -> &Path {
        each!(self, wg => wg.netns())
    }

    /// Make the peers match `specs`.
    pub fn set_peers(&self, specs: Vec<PeerSpec>) {
        each!(self, wg => wg.set_peers(specs))
    }

    /// Hosts whose tunnel has a live session: the only ones encrypted traffic may go to.
    pub fn up_hosts(&self) -> BTreeSet<String> {
        each!(self, wg => wg.up_hosts())
    }

    /// The state of the tunnel to `host`, if it is a peer.
    pub fn status(&self, host: &str) -> Option<TunnelStatus> {
        each!(self, wg => wg.status(host))
    }

    /// Why a host at `underlay` that is not a peer was refused, if it tried (userspace
    /// only: the kernel does not tell).
    pub fn stranger_problem(&self, underlay: Ipv4Addr) -> Option<String> {
        match self {
            WireGuard::Kernel(_) => None,
            WireGuard::Userspace(wg) => wg.stranger_problem(underlay),
        }
    }

    /// What the tunnel dropped, by reason (None: the kernel backend counts no such reasons).
    pub fn drops(&self) -> Option<DropCounters> {
        match self {
            WireGuard::Kernel(_) => None,
            WireGuard::Userspace(wg) => Some(wg.drops()),
        }
    }

    /// The TUN device's segmentation offload (None: the kernel backend has no TUN device).
    pub fn tun_offload(&self) -> Option<TunOffload> {
        match self {
            WireGuard::Kernel(_) => None,
            WireGuard::Userspace(wg) => Some(wg.tun_offload()),
        }
    }

    /// Replace the host's static key (saved first), and use it at once.
    pub fn rotate_key(&self) -> Result<WireguardInfo, WgError> {
        each!(self, wg => wg.rotate_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_the_kernel_where_it_has_wireguard_and_boringtun_elsewhere() {
        assert_eq!(choose(BackendChoice::Auto, || Ok(())), Ok(Backend::Kernel));
        assert_eq!(
            choose(BackendChoice::Auto, || Err("no module".into())),
            Ok(Backend::Userspace)
        );
    }

    #[test]
    fn a_forced_backend_is_that_backend_or_an_error_naming_the_module() {
        assert_eq!(
            choose(BackendChoice::Kernel, || Ok(())),
            Ok(Backend::Kernel)
        );
        assert_eq!(
            choose(BackendChoice::Kernel, || Err(
                "this kernel has no wireguard module".into()
            )),
            Err("this kernel has no wireguard module".to_string())
        );
        // Userspace never asks the kernel.
        assert_eq!(
            choose(BackendChoice::Userspace, || panic!("probed")),
            Ok(Backend::Userspace)
        );
    }

    #[test]
    fn the_backend_is_named_in_lowercase_in_json() {
        assert_eq!(
            serde_json::to_string(&Backend::Kernel).unwrap(),
            "\"kernel\""
        );
        assert_eq!(
            serde_json::from_str::<Backend>("\"userspace\"").unwrap(),
            Backend::Userspace
        );
    }
}
