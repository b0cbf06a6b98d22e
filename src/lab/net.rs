//! The lab's kernel objects, all through rtnetlink (the dataplane's `request` module), all
//! inside lab namespaces: the switch's
//! bridge, one veth per host (the host end `ul0`, its peer a port of the bridge), addresses,
//! and link state for cutting a host off.
//!
//! A link set up is not yet a link that passes packets: the kernel turns carrier on, starts
//! the queueing discipline and lets the bridge port forward from its link-watch work, which it
//! may defer for up to a second. So plugging a host in (or restoring its link) waits until both
//! ends say so: the host's `ul0` operationally up and the switch port forwarding.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use netlink_packet_route::link::{
    BridgePortState, InfoBridgePort, InfoData, InfoPortData, InfoVeth, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage, State,
};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::config::{BRIDGE, UNDERLAY_IF, UNDERLAY_MTU};
use super::{LabError, POLL};
use crate::dataplane::request::{self, connect};
use crate::netns::NetNs;

/// The switch bridge's MAC address, set once (locally administered). Left to the kernel, a
/// bridge takes the lowest MAC among its ports and changes it when a port joins: the hosts'
/// ARP entries for etcd's address would then point at a MAC no longer there, and their store
/// requests would hang until the entries are probed again (seconds).
const SWITCH_MAC: [u8; 6] = [0x02, 0x72, 0x6e, 0x73, 0x77, 0x01];

/// In the switch namespace: `lo` up, bridge `br0` up holding `address`.
pub(super) async fn build_switch(switch: &NetNs, address: Ipv4Network) -> Result<(), LabError> {
    let h = connect(Some(switch))?;
    set_up(&h, "lo", true).await?;
    let msg = LinkBridge::new(BRIDGE)
        .mtu(UNDERLAY_MTU)
        .address(SWITCH_MAC.to_vec())
        .up()
        .build();
    request::add_link(&h, msg, &format!("creating bridge {BRIDGE}")).await?;
    let br = index_of(&h, BRIDGE).await?;
    add_address(&h, br, address, BRIDGE).await
}

/// Plug a host into the switch: `lo` up in the host; a veth pair made in one request from
/// the switch (the port `port`, enslaved to the bridge and up) whose peer `ul0` is born in
/// the host namespace; then `ul0` gets `address` and goes up. See [`wait_plugged`].
pub(super) async fn plug_host(
    switch: &NetNs,
    host: &NetNs,
    port: &str,
    address: Ipv4Network,
) -> Result<(), LabError> {
    let sw = connect(Some(switch))?;
    let bridge = index_of(&sw, BRIDGE).await?;
    let op = format!(
        "creating veth {port} <-> {UNDERLAY_IF} of {}",
        host.path().display()
    );
    request::add_link(&sw, veth_message(port, bridge, host), &op).await?;
    let h = connect(Some(host))?;
    set_up(&h, "lo", true).await?;
    let ul = index_of(&h, UNDERLAY_IF).await?;
    add_address(&h, ul, address, UNDERLAY_IF).await?;
    set_up(&h, UNDERLAY_IF, true).await
}

/// Make link `port` of the switch a port of the bridge, and up (a VM lab's QEMU creates its
/// tap `port` in the switch namespace; this plugs it in).
pub(super) async fn enslave(switch: &NetNs, port: &str) -> Result<(), LabError> {
    let sw = connect(Some(switch))?;
    let bridge = index_of(&sw, BRIDGE).await?;
    let index = index_of(&sw, port).await?;
    let msg = LinkUnspec::new_with_index(index)
        .controller(bridge)
        .up()
        .build();
    Ok(request::set_link(&sw, msg, &format!("plugging {port} into {BRIDGE}")).await?)
}

/// Wait until a plugged host's link passes packets (see the module doc).
pub(super) async fn wait_plugged(switch: &NetNs, host: &NetNs, port: &str) -> Result<(), LabError> {
    let sw = connect(Some(switch))?;
    let h = connect(Some(host))?;
    wait_operational(&sw, &h, port).await
}

/// Bring a switch port up or down (a host's underlay cable plugged in or cut); up returns
/// once the link passes packets again.
pub(super) async fn set_port(
    switch: &NetNs,
    host: &NetNs,
    port: &str,
    up: bool,
) -> Result<(), LabError> {
    let sw = connect(Some(switch))?;
    set_up(&sw, port, up).await?;
    if !up {
        return Ok(());
    }
    let h = connect(Some(host))?;
    wait_operational(&sw, &h, port).await
}

/// How long a link may take to become operational once both ends are up.
const LINK_DEADLINE: Duration = Duration::from_secs(10);

/// Poll until `ul0` in the host is operationally up and switch port `port` forwards.
async fn wait_operational(sw: &Handle, host: &Handle, port: &str) -> Result<(), LabError> {
    let end = Instant::now() + LINK_DEADLINE;
    loop {
        let ul = get_link(host, UNDERLAY_IF).await?;
        let p = get_link(sw, port).await?;
        if ul.as_ref().is_some_and(oper_up) && p.as_ref().is_some_and(forwarding) {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(LabError::Netlink {
                op: format!("waiting for link {UNDERLAY_IF} <-> {port}"),
                msg: format!("not passing packets after {} s", LINK_DEADLINE.as_secs()),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

fn oper_up(m: &LinkMessage) -> bool {
    m.attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::OperState(State::Up)))
}

fn forwarding(m: &LinkMessage) -> bool {
    let infos = m.attributes.iter().filter_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    });
    infos.flatten().any(|i| match i {
        LinkInfo::PortData(InfoPortData::BridgePort(p)) => p
            .iter()
            .any(|x| matches!(x, InfoBridgePort::State(BridgePortState::Forwarding))),
        _ => false,
    })
}

/// Whether the switch port `port` is administratively up (None: no such port).
pub(super) async fn port_up(switch: &NetNs, port: &str) -> Result<Option<bool>, LabError> {
    let h = connect(Some(switch))?;
    Ok(get_link(&h, port)
        .await?
        .map(|m| m.header.flags.contains(LinkFlags::Up)))
}

/// `ip link add PORT mtu 1500 master br0 up type veth peer name ul0 mtu 1500 netns HOST`.
fn veth_message(port: &str, bridge: u32, host: &NetNs) -> LinkMessage {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(UNDERLAY_IF)
        .mtu(UNDERLAY_MTU)
        .setns_by_fd(host.as_raw_fd())
        .build();
    LinkVeth::new(port, UNDERLAY_IF)
        .mtu(UNDERLAY_MTU)
        .controller(bridge)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build()
}

async fn get_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, LabError> {
    Ok(request::link_message(h, name).await?)
}

async fn index_of(h: &Handle, name: &str) -> Result<u32, LabError> {
    Ok(request::require_link(h, name).await?.index)
}

async fn set_up(h: &Handle, name: &str, up: bool) -> Result<(), LabError> {
    let index = index_of(h, name).await?;
    let msg = LinkUnspec::new_with_index(index);
    let msg = if up { msg.up() } else { msg.down() }.build();
    let state = if up { "up" } else { "down" };
    Ok(request::set_link(h, msg, &format!("setting {name} {state}")).await?)
}

async fn add_address(
    h: &Handle,
    index: u32,
    address: Ipv4Network,
    ifname: &str,
) -> Result<(), LabError> {
    let op = format!("adding {address} to {ifname}");
    Ok(request::add_address(h, index, address, false, &op).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_port_is_enslaved_and_its_peer_born_in_the_host() {
        let ns = NetNs::of_pid(std::process::id()).unwrap();
        let msg = veth_message("h1", 4, &ns);
        assert!(msg.attributes.contains(&LinkAttribute::Controller(4)));
        assert!(msg.header.flags.contains(LinkFlags::Up));
        let peer = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(i) => i.iter().find_map(|x| match x {
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p.clone()),
                _ => None,
            }),
            _ => None,
        });
        let peer = peer.expect("peer info");
        assert!(peer
            .attributes
            .contains(&LinkAttribute::IfName(UNDERLAY_IF.into())));
        assert!(peer
            .attributes
            .contains(&LinkAttribute::NetNsFd(ns.as_raw_fd())));
    }
}
