//! The VXLAN device's peer tables through netlink: FDB entries (`bridge fdb … self`) and
//! permanent neighbour entries, read back by dump and written in batches over one raw
//! socket per sandbox (many messages per datagram, acknowledged only on failure).
//!
//! Message builders are pure; `observe` and `apply` are the I/O.

use futures::TryStreamExt;
use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};
use rtnetlink::Handle;

use crate::model::Mac;
use crate::peers::{FdbEntry, NeighEntry, TableDiff, Tables};

/// `bridge fdb {replace|append} MAC dev VXLAN dst DST self permanent`.
pub fn fdb_message(ifindex: u32, e: &FdbEntry) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(e.mac.0.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            e.dst,
        )));
    m
}

/// `ip neigh replace IP lladdr MAC dev VXLAN nud permanent`.
pub fn neigh_message(ifindex: u32, e: &NeighEntry) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            e.ip,
        )));
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(e.mac.0.to_vec()));
    m
}

fn lladdr(m: &NeighbourMessage) -> Option<Mac> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
            Some(Mac([b[0], b[1], b[2], b[3], b[4], b[5]]))
        }
        _ => None,
    })
}

fn destination(m: &NeighbourMessage) -> Option<std::net::Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        // In AF_BRIDGE dumps the parser cannot tell the VTEP's family: four raw bytes.
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
            Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
        _ => None,
    })
}

/// An FDB entry of the VXLAN device with index `ifindex` (entries without a VTEP are not ours).
pub fn parse_fdb(m: &NeighbourMessage, ifindex: u32) -> Option<FdbEntry> {
    if m.header.ifindex != ifindex {
        return None;
    }
    Some(FdbEntry {
        mac: lladdr(m)?,
        dst: destination(m)?,
    })
}

/// A neighbour entry of the VXLAN device with index `ifindex`.
pub fn parse_neigh(m: &NeighbourMessage, ifindex: u32) -> Option<NeighEntry> {
    if m.header.ifindex != ifindex {
        return None;
    }
    Some(NeighEntry {
        ip: destination(m)?,
        mac: lladdr(m)?,
    })
}

/// Read the device's tables.
pub async fn observe(h: &Handle, ifindex: u32) -> Result<Tables, rtnetlink::Error> {
    let mut t = Tables::default();
    let mut fdb = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute();
    while let Some(m) = fdb.try_next().await? {
        t.fdb.extend(parse_fdb(&m, ifindex));
    }
    let mut neigh = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute();
    while let Some(m) = neigh.try_next().await? {
        t.neigh.extend(parse_neigh(&m, ifindex));
    }
    Ok(t)
}

/// Bytes per sendmsg: the kernel walks every message of one datagram in order.
const BATCH_BYTES: usize = 64 * 1024;

/// A raw netlink socket of one namespace for batched writes.
pub fn open_batch_socket() -> std::io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    // Failures come back as error messages; room for many, so none is dropped (ENOBUFS).
    s.set_rx_buf_sz(4 * 1024 * 1024)?;
    let tv = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: a valid socket and a correctly sized timeval for SO_RCVTIMEO.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(s)
}

/// The requests of a diff, deletions first (a flood entry being moved must go before its
/// replacement arrives): (message, extra flags, is a deletion).
fn requests(ifindex: u32, d: &TableDiff) -> Vec<(RouteNetlinkMessage, u16, bool)> {
    let dels = d
        .del_fdb
        .iter()
        .map(|e| {
            (
                RouteNetlinkMessage::DelNeighbour(fdb_message(ifindex, e)),
                0,
                true,
            )
        })
        .chain(d.del_neigh.iter().map(|e| {
            (
                RouteNetlinkMessage::DelNeighbour(neigh_message(ifindex, e)),
                0,
                true,
            )
        }));
    let adds = d
        .add_fdb
        .iter()
        .map(|e| {
            // Flood entries share the all-zeros MAC, one per VTEP: only APPEND adds a second one.
            let how = if e.is_flood() {
                NLM_F_CREATE | NLM_F_APPEND
            } else {
                NLM_F_CREATE | NLM_F_REPLACE
            };
            (
                RouteNetlinkMessage::NewNeighbour(fdb_message(ifindex, e)),
                how,
                false,
            )
        })
        .chain(d.add_neigh.iter().map(|e| {
            (
                RouteNetlinkMessage::NewNeighbour(neigh_message(ifindex, e)),
                NLM_F_CREATE | NLM_F_REPLACE,
                false,
            )
        }));
    dels.chain(adds).collect()
}

/// Apply a diff over `sock` (blocking): messages packed many to a datagram, acknowledged only
/// on failure and once at the end, so ten thousand entries cost a few hundred syscalls, not
/// forty thousand. Returns how many requests failed (each is logged); deleting an entry that
/// is already gone is not a failure.
pub fn apply(sock: &Socket, ifindex: u32, d: &TableDiff) -> usize {
    let reqs = requests(ifindex, d);
    if reqs.is_empty() {
        return 0;
    }
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let base = SEQ.fetch_add(reqs.len() as u32 + 1, std::sync::atomic::Ordering::Relaxed);
    let last = base + reqs.len() as u32 - 1;
    let mut answers = Answers {
        base,
        last,
        failed: 0,
        acked: false,
    };
    let mut buf = Vec::with_capacity(BATCH_BYTES);
    for (i, (msg, flags, _)) in reqs.iter().enumerate() {
        let mut nl = NetlinkMessage::from(msg.clone());
        let seq = base + i as u32;
        nl.header.flags = NLM_F_REQUEST | flags | if seq == last { NLM_F_ACK } else { 0 };
        nl.header.sequence_number = seq;
        nl.finalize();
        let len = nl.buffer_len();
        if buf.len() + len > BATCH_BYTES {
            flush(sock, &mut buf, &mut answers, &reqs);
        }
        let at = buf.len();
        buf.resize(at + len, 0);
        nl.serialize(&mut buf[at..]);
    }
    flush(sock, &mut buf, &mut answers, &reqs);
    while !answers.acked {
        // Blocking, bounded by the socket's receive timeout.
        if !read_answers(sock, &mut answers, &reqs, 0) {
            tracing::warn!(
                "no acknowledgement for the peer-table batch; will read the kernel back"
            );
            return answers.failed + 1;
        }
    }
    answers.failed
}

/// What the kernel has answered to one batch so far.
struct Answers {
    base: u32,
    last: u32,
    failed: usize,
    /// The final message (the only one asking for an ack) was acknowledged.
    acked: bool,
}

fn flush(
    sock: &Socket,
    buf: &mut Vec<u8>,
    answers: &mut Answers,
    reqs: &[(RouteNetlinkMessage, u16, bool)],
) {
    if let Err(e) = sock.send(buf, 0) {
        tracing::warn!(error = %e, "sending peer entries failed");
        answers.failed += 1;
    }
    buf.clear();
    // Collect what was reported so far, so failures never pile up in the receive buffer.
    while read_answers(sock, answers, reqs, libc::MSG_DONTWAIT) {}
}

/// Read one datagram of answers into `answers`; false when there was nothing to read (or
/// the read failed or timed out).
fn read_answers(
    sock: &Socket,
    answers: &mut Answers,
    reqs: &[(RouteNetlinkMessage, u16, bool)],
    flags: libc::c_int,
) -> bool {
    let mut buf = Vec::with_capacity(256 * 1024);
    if let Err(e) = sock.recv(&mut buf, flags) {
        if e.kind() != std::io::ErrorKind::WouldBlock {
            tracing::warn!(error = %e, "reading netlink answers failed");
        }
        return false;
    }
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        if len < 16 || at + len > buf.len() {
            break;
        }
        if let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[at..at + len]) {
            note_answer(answers, reqs, &m);
        }
        at += (len + 3) & !3;
    }
    true
}

fn note_answer(
    answers: &mut Answers,
    reqs: &[(RouteNetlinkMessage, u16, bool)],
    m: &NetlinkMessage<RouteNetlinkMessage>,
) {
    let seq = m.header.sequence_number;
    if let NetlinkPayload::Error(e) = &m.payload {
        let req = seq
            .checked_sub(answers.base)
            .and_then(|i| reqs.get(i as usize));
        let gone = req.is_some_and(|r| r.2) && e.raw_code() == -libc::ENOENT;
        if e.code.is_some() && !gone {
            answers.failed += 1;
            tracing::warn!(error = %std::io::Error::from_raw_os_error(-e.raw_code()), request = ?req.map(|r| &r.0), "programming a peer entry failed");
        }
    }
    answers.acked |= seq == answers.last;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_the_parsers() {
        let f = FdbEntry {
            mac: "02:52:0a:00:00:03".parse().unwrap(),
            dst: "198.18.0.12".parse().unwrap(),
        };
        let m = fdb_message(7, &f);
        assert_eq!(m.header.family, AddressFamily::Bridge);
        assert!(
            m.header.flags.contains(NeighbourFlags::Own),
            "NTF_SELF: the VXLAN device's own table"
        );
        assert_eq!(parse_fdb(&m, 7), Some(f));
        assert_eq!(parse_fdb(&m, 8), None, "another device's entry");
        let mut dumped = m.clone();
        dumped.attributes[1] =
            NeighbourAttribute::Destination(NeighbourAddress::Other(vec![198, 18, 0, 12]));
        assert_eq!(
            parse_fdb(&dumped, 7),
            Some(f),
            "as an AF_BRIDGE dump delivers it"
        );
        let n = NeighEntry {
            ip: "10.0.0.3".parse().unwrap(),
            mac: f.mac,
        };
        let m = neigh_message(7, &n);
        assert_eq!(m.header.state, NeighbourState::Permanent);
        assert_eq!(parse_neigh(&m, 7), Some(n));
    }
}
