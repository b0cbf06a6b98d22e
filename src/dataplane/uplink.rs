//! Uplinks: the veth pair between a network's sandbox and the host namespace.
//!
//! ```text
//!  sandbox                                   host namespace
//!  br0 (gateway) ... uplink 169.254.77.2/32 ═══ rnu<id> 169.254.77.1/32 ── underlay
//!  default via 169.254.77.1 dev uplink onlink   SUBNET via 169.254.77.2 dev rnu<id> onlink
//! ```
//!
//! Only the sandbox's default route points at the host: traffic to the overlay itself stays on
//! the bridge and the VXLAN device, and the host's NAT table (`nat`) refuses to forward from
//! one uplink to another. Both namespaces forward IPv4 (a per-namespace sysctl, written from
//! a thread inside the namespace, never by a subprocess).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use ipnetwork::Ipv4Network;
use netlink_packet_route::route::RouteFlags;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::error::DataplaneError;
use super::netlink::Netlink;
use super::request::{
    self, add_link, del_link, get_link, list_links, replace_route, require_link, set_link,
};
use super::spec::{UplinkSpec, UPLINK_HOST_ADDR, UPLINK_SANDBOX_ADDR, UPLINK_SANDBOX_IFNAME};
use super::state::LinkState;
use crate::netns::NetNs;

type Result<T> = std::result::Result<T, DataplaneError>;

impl Netlink {
    /// Make the uplink exist as `spec` says: the pair (re-created if either end is missing),
    /// both ends up, the transit addresses, both routes and forwarding on both sides.
    pub async fn ensure_uplink(&self, spec: &UplinkSpec) -> Result<()> {
        let sb = self.sandbox(&spec.sandbox)?;
        let host_side = get_link(&self.host, &spec.host_ifname).await?;
        let sb_side = get_link(&sb, UPLINK_SANDBOX_IFNAME).await?;
        if host_side.is_none() || sb_side.is_none() {
            if let Some(l) = host_side {
                del_link(&self.host, l.index, &l.name).await?;
            }
            if let Some(l) = sb_side {
                del_link(&sb, l.index, &l.name).await?;
            }
            let sandbox = NetNs::open(&spec.sandbox)?;
            add_link(
                &self.host,
                uplink_message(spec, &sandbox),
                &format!(
                    "creating uplink {} <-> {UPLINK_SANDBOX_IFNAME}",
                    spec.host_ifname
                ),
            )
            .await?;
        }
        let host_side = require_link(&self.host, &spec.host_ifname).await?;
        let sb_side = require_link(&sb, UPLINK_SANDBOX_IFNAME).await?;
        for (h, l) in [(&self.host, &host_side), (&sb, &sb_side)] {
            if !l.up {
                set_link(
                    h,
                    LinkUnspec::new_with_index(l.index).up().build(),
                    &format!("bringing up {}", l.name),
                )
                .await?;
            }
        }
        add_address(&self.host, &host_side, UPLINK_HOST_ADDR).await?;
        add_address(&sb, &sb_side, UPLINK_SANDBOX_ADDR).await?;
        add_route(&sb, &sb_side, Ipv4Addr::UNSPECIFIED, 0, UPLINK_HOST_ADDR).await?;
        let (net, prefix) = (spec.subnet.network(), spec.subnet.prefix());
        add_route(&self.host, &host_side, net, prefix, UPLINK_SANDBOX_ADDR).await?;
        enable_forwarding(&NetNs::open(&spec.sandbox)?)?;
        enable_forwarding(&self.host_ns)
    }

    /// Remove an uplink by its host-side name (the kernel removes both ends). Absent is fine.
    pub async fn remove_uplink(&self, host_ifname: &str) -> Result<()> {
        if let Some(l) = get_link(&self.host, host_ifname).await? {
            del_link(&self.host, l.index, host_ifname).await?;
        }
        Ok(())
    }

    /// The uplinks in the host namespace (host-side links named with rnet's prefix).
    pub async fn uplinks(&self) -> Result<Vec<LinkState>> {
        Ok(list_links(&self.host)
            .await?
            .into_iter()
            .filter(|l| l.name.starts_with(crate::nat::UPLINK_PREFIX))
            .collect())
    }

    /// What is wrong with an uplink, if anything (missing or down ends).
    pub async fn check_uplink(&self, spec: &UplinkSpec) -> Result<Option<String>> {
        let sb = self.sandbox(&spec.sandbox)?;
        let ends = [
            (
                spec.host_ifname.as_str(),
                get_link(&self.host, &spec.host_ifname).await?,
            ),
            (
                UPLINK_SANDBOX_IFNAME,
                get_link(&sb, UPLINK_SANDBOX_IFNAME).await?,
            ),
        ];
        for (name, link) in ends {
            match link {
                None => return Ok(Some(format!("{name} is missing"))),
                Some(l) if !l.up => return Ok(Some(format!("{name} is down"))),
                Some(_) => {}
            }
        }
        Ok(None)
    }
}

/// `ip link add HOST mtu M up type veth peer name uplink mtu M netns SANDBOX`.
fn uplink_message(
    spec: &UplinkSpec,
    sandbox: &NetNs,
) -> rtnetlink::packet_route::link::LinkMessage {
    use rtnetlink::packet_route::link::{InfoData, InfoVeth};
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(UPLINK_SANDBOX_IFNAME.to_string())
        .mtu(spec.mtu)
        .setns_by_fd(sandbox.as_raw_fd())
        .build();
    LinkVeth::new(&spec.host_ifname, UPLINK_SANDBOX_IFNAME)
        .mtu(spec.mtu)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build()
}

/// `ip addr replace ADDR/32 dev LINK`.
async fn add_address(h: &Handle, link: &LinkState, addr: Ipv4Addr) -> Result<()> {
    let op = format!("adding {addr} to {}", link.name);
    request::add_address(h, link.index, Ipv4Network::from(addr), true, &op).await
}

/// `ip route replace DST/PREFIX via GW dev LINK onlink`.
async fn add_route(
    h: &Handle,
    link: &LinkState,
    dst: Ipv4Addr,
    prefix: u8,
    gw: Ipv4Addr,
) -> Result<()> {
    let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, prefix)
        .gateway(gw)
        .output_interface(link.index)
        .build();
    route.header.flags |= RouteFlags::Onlink;
    let op = format!("routing {dst}/{prefix} via {gw} dev {}", link.name);
    replace_route(h, route, &op).await
}

/// `sysctl net.ipv4.ip_forward=1` in `ns` (the file answers for the namespace of the thread
/// that opens it).
fn enable_forwarding(ns: &NetNs) -> Result<()> {
    ns.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))?
        .map_err(|e| DataplaneError::Netlink {
            op: format!("enabling IPv4 forwarding in {}", ns.path().display()),
            msg: e.to_string(),
            errno: e.raw_os_error(),
        })
}
