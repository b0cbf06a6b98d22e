//! The kernel side of an attach, in one blocking pass on a thread inside the workload's
//! namespace: create the veth pair (its sandbox end born in the sandbox, enslaved to the
//! bridge and up; its workload end born here under its final name), look the workload end
//! up, then one datagram carrying `ip link set lo up`, `ip addr add`, `ip link set IFNAME
//! up`, `ip route add default via GW mtu M advmss A` and the interface's ARP retries, each
//! acknowledged; then, after the answer, a gratuitous ARP.
//!
//! Three round trips on one thread. Through an async connection every answer is a wake-up
//! across the runtime's threads; on a busy host each can wait for a time slice, and an
//! attach (a CNI ADD) pays for all of them: creating the veth that way (after looking the
//! bridge up) cost a third of a millisecond more per attach. netavark made the same move
//! to a blocking socket (containers/netavark PR #429).

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock, PoisonError};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{InfoData, InfoVeth, LinkMessage};
use netlink_packet_route::neighbour_table::{
    NeighbourTableAttribute, NeighbourTableMessage, NeighbourTableParameter,
};
use netlink_packet_route::route::{RouteAttribute, RouteMetric};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::Socket;
use rtnetlink::{
    AddressMessageBuilder, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use super::error::DataplaneError;
use super::request;
use super::spec::{advmss, EndpointSpec};
use crate::model::Mac;
use crate::netns::NetNs;

type Result<T> = std::result::Result<T, DataplaneError>;

/// Why building an endpoint failed.
#[derive(Debug)]
pub enum BuildError {
    /// Creating the veth pair failed: nothing of it exists.
    Create(DataplaneError),
    /// The pair exists, but configuring its workload end failed: the caller removes it.
    Configure(DataplaneError),
}

/// Create `ep`'s veth pair, its sandbox end in `sandbox` enslaved to the bridge at index
/// `bridge` (an index of that namespace), and configure its workload end in `ns`; then, once
/// the caller has the answer, announce it.
pub async fn build_in(
    ns: &NetNs,
    sandbox: &NetNs,
    bridge: u32,
    ep: EndpointSpec,
) -> std::result::Result<(), BuildError> {
    let dup = |ns: &NetNs| {
        ns.as_fd()
            .try_clone_to_owned()
            .map_err(|e| BuildError::Create(DataplaneError::Socket(e)))
    };
    let (sandbox_fd, workload_fd) = (dup(sandbox)?, dup(ns)?);
    ns.run_async_then(
        move || match build(&ep, &sandbox_fd, bridge, &workload_fd) {
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
    .await
    .map_err(|e| BuildError::Create(e.into()))?
}

/// Builds take turns. Nearly all of one runs under the kernel's RTNL mutex, so builds of
/// concurrent attaches (a runtime starting several pods) follow one another anyway; but a
/// thread that waits for RTNL spins on its CPU while the holder runs on another, taking
/// that CPU from the runtime's plugins and the rest of rnetd (7% of rnetd's CPU with 8 ADDs
/// at once on 2 cores). Waiting here sleeps instead (docs/benchmarks.md).
static BUILDS: Mutex<()> = Mutex::new(());

/// Create and configure `ep` from this thread's namespace (the workload's); the workload
/// end's interface index.
fn build(
    ep: &EndpointSpec,
    sandbox: &OwnedFd,
    bridge: u32,
    workload: &OwnedFd,
) -> std::result::Result<u32, BuildError> {
    let sock = request::open_socket(Some(request::RECV_TIMEOUT))
        .map_err(|e| BuildError::Create(DataplaneError::Socket(e)))?;
    let veth = veth_message(ep, bridge, Some(sandbox.as_raw_fd()), workload.as_raw_fd());
    let _turn = BUILDS.lock().unwrap_or_else(PoisonError::into_inner);
    request::transact(
        &sock,
        vec![(
            RouteNetlinkMessage::NewLink(veth),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("creating veth {} <-> {}", ep.host_ifname, ep.ifname),
        )],
    )
    .map_err(BuildError::Create)?;
    configure(&sock, ep).map_err(BuildError::Configure)
}

/// `ip link add HOST mtu M master br0 up [netns SANDBOX] type veth peer name IFNAME address
/// MAC mtu M netns PEER`: the peer end is born in its namespace under its final name, so
/// there is no move and no rename, and a name clash fails before anything exists. Without
/// `sandbox`, the first end is born in the namespace of the socket that sends this.
pub(super) fn veth_message(
    ep: &EndpointSpec,
    bridge: u32,
    sandbox: Option<RawFd>,
    peer_ns: RawFd,
) -> LinkMessage {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(ep.ifname.clone())
        .address(ep.mac.0.to_vec())
        .mtu(ep.mtu)
        .setns_by_fd(peer_ns)
        .build();
    let mut veth = LinkVeth::new(&ep.host_ifname, &ep.ifname)
        .mtu(ep.mtu)
        .controller(bridge)
        .up();
    if let Some(fd) = sandbox {
        veth = veth.setns_by_fd(fd);
    }
    veth.set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build()
}

/// Configure the workload end of `ep` (already created) over `sock`, a socket of its
/// namespace; its interface index.
fn configure(sock: &Socket, ep: &EndpointSpec) -> Result<u32> {
    let index = request::link_index(sock, &ep.ifname)?
        .ok_or_else(|| DataplaneError::no_device(format!("looking up {}", ep.ifname)))?;
    let mut batch = requests(ep, index);
    let required = batch.len();
    batch.push(quick_neighbour_retries(index));
    let (msgs, ops): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|(msg, flags, op)| ((msg, flags), op))
        .unzip();
    let out = request::send_batch(sock, &msgs, request::Ack::Each);
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
    use netlink_packet_route::link::{LinkAttribute, LinkInfo};

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

    fn spec() -> EndpointSpec {
        EndpointSpec {
            host_ifname: "ve0a000002".into(),
            ifname: "eth0".into(),
            mac: Mac([2, 0x52, 10, 0, 0, 2]),
            address: "10.0.0.2/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            mtu: 1450,
        }
    }

    /// The nested peer message of a veth creation.
    fn peer_of(msg: &LinkMessage) -> LinkMessage {
        msg.attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => i.iter().find_map(|x| match x {
                    LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p.clone()),
                    _ => None,
                }),
                _ => None,
            })
            .expect("peer info")
    }

    #[test]
    fn the_veth_is_born_split_between_sandbox_and_workload() {
        let ep = spec();
        let msg = veth_message(&ep, 7, Some(11), 12);
        assert!(msg.attributes.contains(&LinkAttribute::Controller(7)));
        assert!(msg.attributes.contains(&LinkAttribute::Mtu(1450)));
        assert!(msg.attributes.contains(&LinkAttribute::NetNsFd(11)));
        assert!(msg
            .attributes
            .contains(&LinkAttribute::IfName("ve0a000002".into())));
        let peer = peer_of(&msg);
        assert!(peer
            .attributes
            .contains(&LinkAttribute::IfName("eth0".into())));
        assert!(peer
            .attributes
            .contains(&LinkAttribute::Address(ep.mac.0.to_vec())));
        assert!(peer.attributes.contains(&LinkAttribute::NetNsFd(12)));
    }

    #[test]
    fn without_a_sandbox_the_first_end_stays_with_the_socket() {
        let msg = veth_message(&spec(), 7, None, 12);
        assert!(!msg
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::NetNsFd(_))));
        assert!(peer_of(&msg)
            .attributes
            .contains(&LinkAttribute::NetNsFd(12)));
    }

    #[test]
    fn requests_carry_the_endpoint() {
        let ep = EndpointSpec {
            mtu: 1400,
            ..spec()
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
