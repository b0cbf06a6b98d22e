//! Netlink requests: the one place rnet opens route-netlink sockets, sends requests and
//! matches the kernel's answers back to them. Two ways in:
//!
//! - over an rtnetlink [`Handle`] (async, one connection per namespace): the lookups and
//!   changes the dataplane and the lab make, each failure named by its operation;
//! - over a raw socket on a blocking thread ([`send_batch`], [`transact`], [`query`]): many
//!   requests packed into few datagrams, every refusal matched to the request that caused it.
//!   The peer tables, a workload's configuration and a veth's deletion go this way (`batch`).

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};

use futures::{StreamExt, TryStreamExt};
use ipnetwork::Ipv4Network;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, TokioSocket};
use rtnetlink::Handle;

use super::error::{errno_of, DataplaneError};
use super::state::LinkState;
use crate::netns::NetNs;

mod batch;

pub use batch::{
    delete_link, link_index, open_socket, parse_datagram, query, send_batch, transact, Ack,
    Outcome, RECV_TIMEOUT,
};

type Result<T> = std::result::Result<T, DataplaneError>;

/// Open a netlink connection in the current namespace (ns = None) or inside `ns`. A socket
/// stays bound to the namespace it was created in, so one into another namespace is opened
/// on a short-lived thread that has entered it, then driven from tokio like any other.
pub fn connect(ns: Option<&NetNs>) -> Result<Handle> {
    let open = || -> std::io::Result<i32> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        // Extended acks make the kernel explain a refusal ("Address already in use" for what).
        let _ = socket.set_ext_ack(true);
        Ok(socket.into_raw_fd())
    };
    let fd = match ns {
        Some(ns) => ns.run(open)?,
        None => open(),
    }
    .map_err(DataplaneError::Socket)?;
    // SAFETY: `fd` is a netlink socket we just created and own exclusively.
    let socket = unsafe { TokioSocket::from_raw_fd(fd) };
    let (conn, handle, _) = rtnetlink::from_socket(socket);
    tokio::spawn(conn);
    Ok(handle)
}

// ----- over an rtnetlink connection -----

/// `ip link show NAME`: the kernel's message, or None if there is no such link.
pub async fn link_message(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m),
        Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(DataplaneError::netlink(format!("looking up {name}"), e)),
    }
}

/// Link `name`, or None if there is no such link.
pub async fn get_link(h: &Handle, name: &str) -> Result<Option<LinkState>> {
    Ok(link_message(h, name)
        .await?
        .as_ref()
        .map(LinkState::from_message))
}

/// Link `index`, or None if there is no such link.
pub async fn get_link_by_index(h: &Handle, index: u32) -> Result<Option<LinkState>> {
    match h.link().get().match_index(index).execute().try_next().await {
        Ok(m) => Ok(m.as_ref().map(LinkState::from_message)),
        Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(DataplaneError::netlink(
            format!("looking up link {index}"),
            e,
        )),
    }
}

/// Link `name`, which must exist.
pub async fn require_link(h: &Handle, name: &str) -> Result<LinkState> {
    get_link(h, name)
        .await?
        .ok_or_else(|| DataplaneError::no_device(format!("looking up {name}")))
}

/// Every link of the connection's namespace, as the kernel's messages.
pub async fn link_messages(h: &Handle) -> Result<Vec<LinkMessage>> {
    h.link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| DataplaneError::netlink("listing links", e))
}

/// Every link of the connection's namespace.
pub async fn list_links(h: &Handle) -> Result<Vec<LinkState>> {
    Ok(link_messages(h)
        .await?
        .iter()
        .map(LinkState::from_message)
        .collect())
}

/// `ip link add ...`; `op` names it in the error.
pub async fn add_link(h: &Handle, msg: LinkMessage, op: &str) -> Result<()> {
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(|e| DataplaneError::netlink(op, e))
}

/// `ip link set ...`; `op` names it in the error.
pub async fn set_link(h: &Handle, msg: LinkMessage, op: &str) -> Result<()> {
    h.link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| DataplaneError::netlink(op, e))
}

/// `ip link del INDEX`; a link already gone is fine.
pub async fn del_link(h: &Handle, index: u32, name: &str) -> Result<()> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(DataplaneError::netlink(format!("deleting {name}"), e)),
    }
}

/// `ip addr add ADDR dev INDEX`, or `ip addr replace` when `replace`.
pub async fn add_address(
    h: &Handle,
    index: u32,
    address: Ipv4Network,
    replace: bool,
    op: &str,
) -> Result<()> {
    let req = h
        .address()
        .add(index, IpAddr::V4(address.ip()), address.prefix());
    let req = if replace { req.replace() } else { req };
    req.execute()
        .await
        .map_err(|e| DataplaneError::netlink(op, e))
}

/// `ip route replace ...`; `op` names it in the error.
pub async fn replace_route(h: &Handle, route: RouteMessage, op: &str) -> Result<()> {
    h.route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(|e| DataplaneError::netlink(op, e))
}

/// The IPv4 addresses of link `index` (all links: None), as (link index, address); `op`
/// names the listing in the error.
pub async fn addresses(
    h: &Handle,
    index: Option<u32>,
    op: &str,
) -> Result<Vec<(u32, Ipv4Network)>> {
    let mut out = Vec::new();
    let req = h.address().get();
    let req = match index {
        Some(i) => req.set_link_index_filter(i),
        None => req,
    };
    let mut addrs = req.execute();
    while let Some(m) = addrs
        .try_next()
        .await
        .map_err(|e| DataplaneError::netlink(op, e))?
    {
        for a in &m.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                if let Ok(n) = Ipv4Network::new(*ip, m.header.prefix_len) {
                    out.push((m.header.index, n));
                }
            }
        }
    }
    Ok(out)
}

/// The id by which the namespace of connection `h` knows namespace `ns` (`RTM_GETNSID`);
/// None when it has assigned none (then no device there can have its socket in `ns`).
/// rtnetlink has no request for it, so it goes through the connection's raw request.
pub async fn nsid_of(h: &Handle, ns: &NetNs) -> Result<Option<i32>> {
    let mut msg = NsidMessage::default();
    msg.attributes
        .push(NsidAttribute::Fd(ns.as_raw_fd() as u32));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let op = || format!("asking for the id of namespace {}", ns.path().display());
    let mut replies = h
        .clone()
        .request(req)
        .map_err(|e| DataplaneError::netlink(op(), e))?;
    let mut id = None;
    while let Some(reply) = replies.next().await {
        match reply.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                id = m.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(i) if *i >= 0 => Some(*i),
                    _ => None,
                });
            }
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(DataplaneError::netlink(
                    op(),
                    rtnetlink::Error::NetlinkError(e),
                ))
            }
            _ => {}
        }
    }
    Ok(id)
}
