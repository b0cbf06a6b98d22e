//! The tunnel namespace's device: the TAP device of userspace WireGuard, or a kernel
//! WireGuard device, with the address and default route every encrypted VXLAN packet takes.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

use ipnetwork::Ipv4Network;
use netlink_packet_route::link::LinkAttribute;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::error::DataplaneError;
use super::netlink::Netlink;
use super::request::{
    add_address, add_link, del_link, get_link, replace_route, require_link, set_link,
};
use crate::netns::NetNs;

type Result<T> = std::result::Result<T, DataplaneError>;

/// Queue length of the WireGuard TUN device.
const TUNNEL_TXQUEUELEN: u32 = 5000;

impl Netlink {
    /// Give the tunnel namespace's device its address, MTU and the default route: every
    /// VXLAN packet of an encrypted network goes to the tunnel, whatever its destination.
    pub async fn configure_tunnel(
        &self,
        netns: &Path,
        ifname: &str,
        address: Ipv4Addr,
        mtu: u32,
    ) -> Result<()> {
        // Its device is an Ethernet device, which with IPv6 would announce itself to rnetd
        // (router solicitations, MLD reports) for nothing: the tunnel carries IPv4.
        super::sandbox::disable_ipv6(&NetNs::open(netns)?)?;
        let h = self.sandbox(netns)?;
        let lo = require_link(&h, "lo").await?;
        set_link(
            &h,
            LinkUnspec::new_with_index(lo.index).up().build(),
            "bringing up lo",
        )
        .await?;
        let tun = require_link(&h, ifname).await?;
        // No ARP: the userspace tunnel's device is a TAP device (see wireguard::tun), which
        // takes every packet routed to it with its own address as the destination.
        let mut msg = LinkUnspec::new_with_index(tun.index)
            .mtu(mtu)
            .arp(false)
            .up()
            .build();
        // The tunnel thread drains the queue in batches; the default 500 packets overflow in
        // bursts and TCP takes every drop for congestion.
        msg.attributes
            .push(LinkAttribute::TxQueueLen(TUNNEL_TXQUEUELEN));
        set_link(&h, msg, &format!("bringing up {ifname}")).await?;
        let host = Ipv4Network::from(address);
        add_address(
            &h,
            tun.index,
            host,
            true,
            &format!("adding {address} to {ifname}"),
        )
        .await?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .output_interface(tun.index)
            .build();
        replace_route(&h, route, &format!("routing through {ifname}")).await
    }

    /// Remove the tunnel device `ifname` from the namespace at `netns` if one is there (a
    /// kernel WireGuard device outlives rnetd; a new start makes its own).
    pub async fn remove_tunnel_device(&self, netns: &Path, ifname: &str) -> Result<()> {
        let h = self.sandbox(netns)?;
        match get_link(&h, ifname).await? {
            Some(l) => del_link(&h, l.index, ifname).await,
            None => Ok(()),
        }
    }

    /// Create a kernel WireGuard device named `ifname` from the host namespace straight into
    /// the namespace at `netns`: the kernel keeps its UDP socket in the namespace it was
    /// created from (the underlay's), while its packets come and go in `netns`. Fails with
    /// errno EOPNOTSUPP where the kernel has no WireGuard.
    pub async fn create_wireguard_device(&self, netns: &Path, ifname: &str) -> Result<()> {
        let ns = NetNs::open(netns)?;
        let msg = rtnetlink::LinkWireguard::new(ifname)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        add_link(
            &self.host,
            msg,
            &format!("creating WireGuard device {ifname}"),
        )
        .await
    }
}
