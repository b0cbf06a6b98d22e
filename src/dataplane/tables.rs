//! The VXLAN device's peer tables through netlink: FDB entries (`bridge fdb … self`) and
//! permanent neighbour entries, read back by dump and written in batches over one raw
//! socket per sandbox (many messages per datagram, acknowledged only on failure; the
//! batching itself is `request`'s).
//!
//! Message builders are pure; `observe` and `apply` are the I/O.

use futures::TryStreamExt;
use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::Socket;
use rtnetlink::Handle;

use super::request::{self, Ack};
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

/// The requests of a diff, deletions first (a flood entry being moved must go before its
/// replacement arrives): (message, flags beyond `NLM_F_REQUEST`).
fn requests(ifindex: u32, d: &TableDiff) -> Vec<(RouteNetlinkMessage, u16)> {
    let dels = d
        .del_fdb
        .iter()
        .map(|e| {
            (
                RouteNetlinkMessage::DelNeighbour(fdb_message(ifindex, e)),
                0,
            )
        })
        .chain(d.del_neigh.iter().map(|e| {
            (
                RouteNetlinkMessage::DelNeighbour(neigh_message(ifindex, e)),
                0,
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
            )
        })
        .chain(d.add_neigh.iter().map(|e| {
            (
                RouteNetlinkMessage::NewNeighbour(neigh_message(ifindex, e)),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
        }));
    dels.chain(adds).collect()
}

/// Apply a diff over `sock` (blocking, a socket from [`request::open_socket`]) as one batch
/// acknowledged only at its end. Returns how many requests failed (each is logged); deleting
/// an entry that is already gone is not a failure.
pub fn apply(sock: &Socket, ifindex: u32, d: &TableDiff) -> usize {
    let reqs = requests(ifindex, d);
    let out = request::send_batch(sock, &reqs, Ack::Last);
    let mut failed = 0;
    for e in &out.unsent {
        tracing::warn!(error = %e, "sending peer entries failed");
        failed += 1;
    }
    for &(i, errno) in &out.refused {
        let req = &reqs[i].0;
        let gone = matches!(req, RouteNetlinkMessage::DelNeighbour(_)) && errno == libc::ENOENT;
        if !gone {
            failed += 1;
            tracing::warn!(error = %std::io::Error::from_raw_os_error(errno), request = ?req, "programming a peer entry failed");
        }
    }
    if out.unanswered.is_some() {
        tracing::warn!("no acknowledgement for the peer-table batch; will read the kernel back");
        failed += 1;
    }
    failed
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
