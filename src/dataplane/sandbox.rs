//! Sandboxes: one namespace per network with local endpoints, holding the bridge (with the
//! gateway address and the network's marker) and the network's VXLAN device.

use std::os::fd::AsRawFd;
use std::path::Path;

use netlink_packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVxlan};

use super::error::DataplaneError;
use super::netlink::Netlink;
use super::request::{
    add_address, add_link, addresses, del_link, get_link, list_links, nsid_of, require_link,
    set_link,
};
use super::spec::{SandboxMarker, SandboxSpec, BRIDGE};
use super::state::{LinkState, SandboxState};
use crate::netns::{self, NetNs};

type Result<T> = std::result::Result<T, DataplaneError>;

impl Netlink {
    /// Make the sandbox exist as `spec` says. Idempotent; a sandbox this call created is
    /// removed again if a later step fails.
    pub async fn ensure_sandbox(&self, spec: &SandboxSpec) -> Result<()> {
        let created = !netns::is_mounted(&spec.netns);
        if created {
            netns::remove(&spec.netns)?; // a leftover plain file from a crash
            NetNs::create(&spec.netns)?;
        }
        let result = self.fill_sandbox(spec).await;
        if result.is_err() && created {
            self.remove_sandbox(&spec.netns).await?;
        }
        result
    }

    async fn fill_sandbox(&self, spec: &SandboxSpec) -> Result<()> {
        let sb = self.sandbox(&spec.netns)?;
        disable_ipv6(&NetNs::open(&spec.netns)?)?;
        let bridge = match get_link(&sb, BRIDGE).await? {
            Some(b) => b,
            None => {
                let mut msg = LinkBridge::new(BRIDGE)
                    .mtu(spec.mtu)
                    .address(spec.bridge_mac.0.to_vec())
                    .up()
                    .build();
                msg.attributes
                    .push(LinkAttribute::IfAlias(spec.marker.alias()));
                add_link(
                    &sb,
                    msg,
                    &format!("creating bridge {BRIDGE} in {}", spec.netns.display()),
                )
                .await?;
                require_link(&sb, BRIDGE).await?
            }
        };
        self.check_marker(spec, &sb, &bridge).await?;
        if !bridge.up || bridge.mtu != spec.mtu {
            set_link(
                &sb,
                LinkUnspec::new_with_index(bridge.index)
                    .mtu(spec.mtu)
                    .up()
                    .build(),
                "bringing up bridge",
            )
            .await?;
        }
        let op = format!("adding gateway {} to {BRIDGE}", spec.gateway);
        add_address(&sb, bridge.index, spec.gateway, true, &op).await?;
        self.ensure_vxlan(spec, &sb, bridge.index).await
    }

    /// Refuse a sandbox whose bridge says it is another network's, or an encrypted one the
    /// spec would rebuild in the clear; mark it (again) as the spec's.
    async fn check_marker(
        &self,
        spec: &SandboxSpec,
        sb: &Handle,
        bridge: &LinkState,
    ) -> Result<()> {
        if let Some(have) = bridge.alias.as_deref().and_then(SandboxMarker::parse) {
            if let Some(why) = have.refuses(&spec.marker) {
                return Err(DataplaneError::SandboxRefused {
                    path: spec.netns.display().to_string(),
                    why,
                });
            }
        }
        let alias = spec.marker.alias();
        if bridge.alias.as_deref() != Some(alias.as_str()) {
            let mut msg = LinkUnspec::new_with_index(bridge.index).build();
            msg.attributes.push(LinkAttribute::IfAlias(alias));
            set_link(sb, msg, &format!("marking {BRIDGE} with its network")).await?;
        }
        Ok(())
    }

    /// The id by which the sandbox knows the namespace that should hold its VXLAN socket.
    async fn vtep_nsid(&self, spec: &SandboxSpec, sb: &Handle) -> Result<Option<i32>> {
        match &spec.vtep_netns {
            None => nsid_of(sb, &self.host_ns).await,
            Some(path) => nsid_of(sb, &NetNs::open(path)?).await,
        }
    }

    async fn ensure_vxlan(&self, spec: &SandboxSpec, sb: &Handle, bridge: u32) -> Result<()> {
        let existing = get_link(sb, &spec.vxlan).await?;
        // A device is trusted only with its socket where the spec wants it: an encrypted
        // network's in the tunnel namespace (whose only exit is WireGuard), never the host's.
        let socket_ns = match &existing {
            Some(_) => self.vtep_nsid(spec, sb).await?,
            None => None,
        };
        let wanted = |l: &LinkState| {
            l.vni == Some(spec.vni)
                && l.learning == Some(false)
                && l.proxy == Some(true)
                && l.port == Some(spec.port)
                && (spec.vtep_netns.is_none() || l.udp_csum == Some(false))
                && socket_ns.is_some()
                && l.link_netnsid == socket_ns
        };
        let vx = match existing {
            Some(l) if wanted(&l) => l,
            other => {
                if let Some(stale) = other {
                    del_link(sb, stale.index, &spec.vxlan).await?;
                }
                self.create_vxlan(spec).await?;
                require_link(sb, &spec.vxlan).await?
            }
        };
        if vx.controller != Some(bridge) || !vx.up || vx.mtu != spec.mtu {
            let msg = LinkUnspec::new_with_index(vx.index)
                .controller(bridge)
                .mtu(spec.mtu)
                .up()
                .build();
            set_link(sb, msg, &format!("attaching {} to {BRIDGE}", spec.vxlan)).await?;
        }
        Ok(())
    }

    /// Created from the host namespace straight into the sandbox: the device's UDP socket
    /// lives in the namespace of the request (the host's), its interface in the sandbox.
    /// Encrypted networks' devices are created from the tunnel namespace instead, and send
    /// no UDP checksum: WireGuard's tag covers every byte, and without one the TUN device
    /// can take their TCP super-packets uncut (`wireguard::offload`).
    async fn create_vxlan(&self, spec: &SandboxSpec) -> Result<()> {
        let sandbox = NetNs::open(&spec.netns)?;
        let from = match &spec.vtep_netns {
            None => self.host.clone(),
            Some(path) => self.sandbox(path)?,
        };
        let mut msg = LinkVxlan::new(&spec.vxlan, spec.vni)
            .local(spec.local)
            .port(spec.port)
            .learning(false)
            .proxy(true)
            .mtu(spec.mtu);
        if spec.vtep_netns.is_some() {
            msg = msg.udp_csum(false);
        }
        let msg = msg.setns_by_fd(sandbox.as_raw_fd()).build();
        add_link(
            &from,
            msg,
            &format!(
                "creating VXLAN device {} (VNI {}, port {})",
                spec.vxlan, spec.vni, spec.port
            ),
        )
        .await
    }

    /// Remove a sandbox: dropping the namespace tears down its devices in the kernel's own time.
    /// Every handle cached for it goes too: a cached socket would keep the old namespace (and
    /// its VXLAN device) alive and be used for whatever later appears at the same path.
    pub async fn remove_sandbox(&self, path: &Path) -> Result<()> {
        // The namespace dies only once nothing refers to it; its VXLAN device (and with it
        // the VNI on the shared UDP socket) goes now, so a successor can be built at once.
        if netns::is_mounted(path) {
            let sb = self.sandbox(path)?;
            for l in list_links(&sb).await? {
                if l.kind.as_deref() == Some("vxlan") {
                    del_link(&sb, l.index, &l.name).await?;
                }
            }
        }
        self.forget_sandbox(path);
        netns::remove(path)?;
        Ok(())
    }

    /// Read back a sandbox; None if it does not exist. `tunnel`: the tunnel namespace, if
    /// this host has one, so an encrypted network's VXLAN socket can be checked.
    pub async fn observe_sandbox(
        &self,
        path: &Path,
        tunnel: Option<&Path>,
    ) -> Result<Option<SandboxState>> {
        if !netns::is_mounted(path) {
            return Ok(None);
        }
        let sb = self.sandbox(path)?;
        let host_nsid = nsid_of(&sb, &self.host_ns).await?;
        let tunnel_nsid = match tunnel.map(NetNs::open) {
            Some(Ok(ns)) => nsid_of(&sb, &ns).await?,
            _ => None,
        };
        let links = list_links(&sb).await?;
        let addresses = addresses(&sb, None, "listing sandbox addresses").await?;
        Ok(Some(SandboxState {
            links,
            addresses,
            host_nsid,
            tunnel_nsid,
        }))
    }

    /// The index of link `name` in a sandbox, if both exist.
    pub async fn sandbox_link(&self, sandbox: &Path, name: &str) -> Result<Option<LinkState>> {
        if !netns::is_mounted(sandbox) {
            return Ok(None);
        }
        get_link(&self.sandbox(sandbox)?, name).await
    }
}

/// No IPv6 in a sandbox (`sysctl net.ipv6.conf.{default,all}.disable_ipv6=1`, before the
/// bridge exists): the overlay carries IPv4, and every interface with IPv6 announces itself
/// (duplicate address detection, MLD reports, router solicitations), each frame flooded to
/// every workload on the bridge and, through the VXLAN device's flood entries, to every other
/// host. With the sandbox end of every veth pair doing that, 8 ADDs at once cost about 8% more
/// CPU. Best effort: a kernel without IPv6 has no such files, and a read-only `/proc/sys`
/// costs only the chatter. The tunnel namespace has no IPv6 either (`configure_tunnel`).
pub(super) fn disable_ipv6(ns: &NetNs) -> Result<()> {
    let written = ns.run(|| {
        ["default", "all"].into_iter().try_for_each(|scope| {
            let path = format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6");
            match std::fs::write(&path, "1") {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err((path, e)),
                _ => Ok(()),
            }
        })
    })?;
    if let Err((path, e)) = written {
        tracing::warn!(netns = %ns.path().display(), error = %e, "writing {path}; the namespace keeps IPv6");
    }
    Ok(())
}
