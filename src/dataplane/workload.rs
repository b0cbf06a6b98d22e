//! The workload side of an attach, in one blocking pass on a thread inside the workload's
//! namespace: look the interface up, then one datagram carrying `ip link set lo up`,
//! `ip addr add`, `ip link set IFNAME up`, `ip route add default via GW mtu M advmss A` and
//! the interface's ARP retries, each acknowledged; then, after the answer, a gratuitous ARP.
//!
//! Two round trips on one thread, instead of six through an async connection whose every
//! answer is a wake-up across the runtime's threads: on a busy host each wake-up can wait
//! for a time slice, and an attach (a CNI ADD) pays for all of them. netavark made the same
//! move to a blocking socket (containers/netavark PR #429).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::{channel, Sender};
use std::sync::OnceLock;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::neighbour_table::{
    NeighbourTableAttribute, NeighbourTableMessage, NeighbourTableParameter,
};
use netlink_packet_route::route::{RouteAttribute, RouteMetric};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::{AddressMessageBuilder, LinkUnspec, RouteMessageBuilder};

use super::error::DataplaneError;
use super::request;
use super::spec::{advmss, EndpointSpec};
use crate::model::Mac;
use crate::netns::NetNs;

type Result<T> = std::result::Result<T, DataplaneError>;

/// Configure the workload end of `ep` (already created in this thread's namespace), then,
/// once its caller has the answer, announce it.
pub async fn configure_in(ns: &NetNs, ep: EndpointSpec) -> Result<()> {
    ns.run_async_then(
        move || match configure(&ep) {
            Ok(index) => (Ok(()), Some((index, ep))),
            Err(e) => (Err(e), None),
        },
        // A peer's failed neighbour entry waits for this; the attach's answer need not:
        // sending it runs the frame through the sandbox's bridge and VXLAN device
        // (a fifth of a millisecond, as long as the rest of the configuration).
        |done| {
            if let Some((index, ep)) = done {
                announce(index, ep.mac, ep.address.ip());
            }
        },
    )
    .await?
}

/// Configure the workload end of `ep` in this thread's namespace; its interface index.
fn configure(ep: &EndpointSpec) -> Result<u32> {
    let sock = request::open_socket(Some(request::RECV_TIMEOUT)).map_err(DataplaneError::Socket)?;
    let index = request::link_index(&sock, &ep.ifname)?
        .ok_or_else(|| DataplaneError::no_device(format!("looking up {}", ep.ifname)))?;
    let mut batch = requests(ep, index);
    let required = batch.len();
    batch.push(quick_neighbour_retries(index));
    let (msgs, ops): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|(msg, flags, op)| ((msg, flags), op))
        .unzip();
    let out = request::send_batch(&sock, &msgs, request::Ack::Each);
    if let Some(e) = out.unsent.into_iter().next() {
        return Err(DataplaneError::Socket(e));
    }
    for &(i, code) in &out.refused {
        if i < required {
            return Err(DataplaneError::errno(ops[i].clone(), code));
        }
        // Best effort: the kernel's defaults only cost a second on a missed answer.
        tracing::debug!(errno = code, ifname = %ep.ifname, "{}", ops[i]);
    }
    if let Some(e) = out.unanswered {
        return Err(DataplaneError::Socket(e));
    }
    Ok(index)
}

/// Address resolution on the overlay asks every 100 ms, ten times, instead of the kernel's
/// every second, three times. Every ARP request is answered (or dropped) by the sandbox's
/// own VXLAN device from the programmed table, never sent across hosts, so asking often
/// costs nothing; a workload that asks for an address whose entry its host programs a few
/// milliseconds later (the record was just written elsewhere) then waits 100 ms, not a
/// second. `net.ipv4.neigh.IFNAME.{retrans_time_ms,mcast_solicit}` set through netlink
/// (RTM_SETNEIGHTBL) in the configuration's batch, rather than two writes under /proc.
fn quick_neighbour_retries(index: u32) -> (RouteNetlinkMessage, u16, String) {
    let mut msg = NeighbourTableMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.attributes = vec![
        NeighbourTableAttribute::Name("arp_cache".into()),
        NeighbourTableAttribute::Parms(vec![
            NeighbourTableParameter::Ifindex(index),
            NeighbourTableParameter::RetransTime(100),
            NeighbourTableParameter::McastProbes(10),
        ]),
    ];
    (
        RouteNetlinkMessage::SetNeighbourTable(msg),
        0,
        "setting the workload's ARP retries failed".into(),
    )
}

/// Send one gratuitous ARP from the new interface. A peer that asked for this address
/// before the interface existed holds a failed neighbour entry and would wait for the
/// kernel's one-second retry; the announcement (flooded to the network's hosts) updates
/// such entries at once. Best effort: a lost announcement costs only that second.
fn announce(index: u32, mac: Mac, ip: Ipv4Addr) {
    const ETH_P_ARP: u16 = 0x0806;
    // SAFETY: plain socket call; the descriptor is checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return;
    }
    // SAFETY: fd was just opened and is owned here only.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let frame = garp_frame(mac, ip);
    // SAFETY: all-zero is a valid sockaddr_ll; the fields set make it a broadcast on `index`.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: frame and `to` are valid for the call.
    unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    close_later(fd);
}

/// Close `fd` on a thread kept for that: closing a packet socket waits for an RCU grace
/// period (milliseconds), which is not the attach's to pay, and neither is a thread's
/// creation per attach. If that thread cannot be had, the caller closes it.
fn close_later(fd: OwnedFd) {
    static CLOSER: OnceLock<Option<Sender<OwnedFd>>> = OnceLock::new();
    let closer = CLOSER.get_or_init(|| {
        let (tx, rx) = channel::<OwnedFd>();
        std::thread::Builder::new()
            .name("rnet-closer".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .ok()
            .map(|_| tx)
    });
    if let Some(tx) = closer {
        if let Err(returned) = tx.send(fd) {
            drop(returned.0);
        }
    }
}

/// A gratuitous ARP request: `ip` is at `mac`, to everyone.
fn garp_frame(mac: Mac, ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac.0);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    // Ethernet, IPv4, 6-byte and 4-byte addresses, request.
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac.0);
    f[28..32].copy_from_slice(&ip.octets());
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// The requests after the lookup: (message, extra flags, what it does for errors).
fn requests(ep: &EndpointSpec, index: u32) -> Vec<(RouteNetlinkMessage, u16, String)> {
    let addr = AddressMessageBuilder::<Ipv4Addr>::new()
        .index(index)
        .address(ep.address.ip(), ep.address.prefix())
        .build();
    let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(ep.gateway)
        .output_interface(index)
        .build();
    // What a CNI 1.1 result reports for the route, so the kernel holds the same.
    route.attributes.push(RouteAttribute::Metrics(vec![
        RouteMetric::Mtu(ep.mtu),
        RouteMetric::Advmss(advmss(ep.mtu)),
    ]));
    vec![
        (
            // By name: lo is up already in most runtimes' namespaces, and up again is a no-op.
            RouteNetlinkMessage::SetLink(LinkUnspec::new_with_name("lo").up().build()),
            0,
            "bringing up lo".into(),
        ),
        (
            RouteNetlinkMessage::NewAddress(addr),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("adding {} to {}", ep.address, ep.ifname),
        ),
        (
            RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(index).up().build()),
            0,
            format!("bringing up {}", ep.ifname),
        ),
        (
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("adding default route via {}", ep.gateway),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mac;

    #[test]
    fn a_gratuitous_arp_names_the_address_as_sender_and_target() {
        let mac = Mac([2, 0x52, 10, 1, 0, 2]);
        let f = garp_frame(mac, Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[20..22], &[0, 1], "request");
        assert_eq!(&f[22..28], &mac.0);
        assert_eq!(&f[28..32], &[10, 1, 0, 2]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[10, 1, 0, 2]);
    }

    #[test]
    fn requests_carry_the_endpoint() {
        let ep = EndpointSpec {
            host_ifname: "ve0a000002".into(),
            ifname: "eth0".into(),
            mac: Mac([2, 0x52, 10, 0, 0, 2]),
            address: "10.0.0.2/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            mtu: 1400,
        };
        let r = requests(&ep, 7);
        assert_eq!(r.len(), 4);
        match &r[1].0 {
            RouteNetlinkMessage::NewAddress(a) => {
                assert_eq!((a.header.index, a.header.prefix_len), (7, 24));
            }
            other => panic!("{other:?}"),
        }
        match &r[3].0 {
            RouteNetlinkMessage::NewRoute(m) => {
                assert!(m.attributes.contains(&RouteAttribute::Oif(7)));
                assert!(m.attributes.contains(&RouteAttribute::Metrics(vec![
                    RouteMetric::Mtu(1400),
                    RouteMetric::Advmss(1360)
                ])));
            }
            other => panic!("{other:?}"),
        }
    }
}
