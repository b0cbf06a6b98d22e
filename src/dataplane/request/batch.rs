//! Requests over a raw route-netlink socket on a blocking thread: many packed into few
//! datagrams, every refusal matched by sequence number to the request that caused it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

use super::super::error::DataplaneError;

type Result<T> = std::result::Result<T, DataplaneError>;

/// How long a blocking read waits for the kernel's answers before giving up.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes per sendmsg: the kernel walks every message of one datagram in order.
const BATCH_BYTES: usize = 64 * 1024;

/// Sequence numbers, unique across every raw socket of the process: an answer that arrives
/// late (after its batch gave up) never passes for one of a later batch.
static SEQ: AtomicU32 = AtomicU32::new(1);

/// A raw route-netlink socket of the calling thread's namespace, connected to the kernel.
/// Reads wait at most `recv_timeout` (None: as long as the kernel takes).
pub fn open_socket(recv_timeout: Option<Duration>) -> std::io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    // Failures come back as error messages; room for many, so none is dropped (ENOBUFS).
    s.set_rx_buf_sz(4 * 1024 * 1024)?;
    if let Some(t) = recv_timeout {
        let tv = nix::sys::time::TimeVal::new(t.as_secs() as _, t.subsec_micros() as _);
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::ReceiveTimeout, &tv)?;
    }
    Ok(s)
}

/// Which requests of a batch ask the kernel for an acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// Every one: each answers, success or failure.
    Each,
    /// Only the last: the others answer only when they fail, so ten thousand entries cost a
    /// few hundred syscalls, not forty thousand. The kernel answers in order, so the last
    /// acknowledgement closes the batch.
    Last,
}

/// What the kernel answered to a batch.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The requests the kernel refused: (index in the batch, positive errno), in order.
    pub refused: Vec<(usize, i32)>,
    /// Datagrams that could not be sent (their requests never reached the kernel).
    pub unsent: Vec<std::io::Error>,
    /// Why the batch's closing answer never came; None when it did.
    pub unanswered: Option<std::io::Error>,
}

/// Send `requests` (message, flags beyond `NLM_F_REQUEST`) over `sock`, packed many to a
/// datagram, and wait (bounded by the socket's receive timeout) for the kernel's last
/// answer. Answers already waiting are read after every datagram, so refusals never pile up
/// in the receive buffer.
pub fn send_batch(sock: &Socket, requests: &[(RouteNetlinkMessage, u16)], ack: Ack) -> Outcome {
    let mut out = Outcome::default();
    let Some(n) = u32::try_from(requests.len()).ok().filter(|n| *n > 0) else {
        return out;
    };
    let base = SEQ.fetch_add(n + 1, Ordering::Relaxed);
    let last = base + n - 1;
    let mut answers = Answers {
        base,
        last,
        closed: false,
    };
    let mut buf = Vec::with_capacity(BATCH_BYTES);
    let mut last_sent = true;
    for (i, (msg, flags)) in requests.iter().enumerate() {
        let seq = base + i as u32;
        let wants_ack = ack == Ack::Each || seq == last;
        let mut nl = NetlinkMessage::from(msg.clone());
        nl.header.flags = NLM_F_REQUEST | flags | if wants_ack { NLM_F_ACK } else { 0 };
        nl.header.sequence_number = seq;
        nl.finalize();
        let len = nl.buffer_len();
        if !buf.is_empty() && buf.len() + len > BATCH_BYTES {
            flush(sock, &mut buf, &mut answers, &mut out);
        }
        let at = buf.len();
        buf.resize(at + len, 0);
        nl.serialize(&mut buf[at..]);
    }
    if !buf.is_empty() {
        last_sent = flush(sock, &mut buf, &mut answers, &mut out);
    }
    if !last_sent {
        // The closing request never left: there is nothing to wait for.
        out.unanswered = Some(std::io::Error::other(
            "the batch's last request was not sent",
        ));
        return out;
    }
    while !answers.closed {
        match read_datagram(sock, 0) {
            Ok(msgs) => answers.note(&msgs, &mut out),
            Err(e) => {
                out.unanswered = Some(e);
                break;
            }
        }
    }
    out
}

/// Send `requests`, each acknowledged, as one batch: the first refusal is the error, named by
/// its operation (the third field).
pub fn transact(sock: &Socket, requests: Vec<(RouteNetlinkMessage, u16, String)>) -> Result<()> {
    let (msgs, ops): (Vec<_>, Vec<_>) = requests
        .into_iter()
        .map(|(msg, flags, op)| ((msg, flags), op))
        .unzip();
    let out = send_batch(sock, &msgs, Ack::Each);
    if let Some(e) = out.unsent.into_iter().next() {
        return Err(DataplaneError::Socket(e));
    }
    if let Some(&(i, code)) = out.refused.first() {
        return Err(DataplaneError::errno(ops[i].clone(), code));
    }
    match out.unanswered {
        Some(e) => Err(DataplaneError::Socket(e)),
        None => Ok(()),
    }
}

/// Send one request that asks for no acknowledgement (a `GET`) and return the messages of
/// the first datagram answering it.
pub fn query(
    sock: &Socket,
    msg: RouteNetlinkMessage,
) -> std::io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
    let mut nl = NetlinkMessage::from(msg);
    nl.header.flags = NLM_F_REQUEST;
    nl.header.sequence_number = SEQ.fetch_add(1, Ordering::Relaxed);
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    sock.send(&buf, 0)?;
    read_datagram(sock, 0)
}

/// Send what `buf` holds, then read every answer already waiting. False if the send failed.
fn flush(sock: &Socket, buf: &mut Vec<u8>, answers: &mut Answers, out: &mut Outcome) -> bool {
    let sent = match sock.send(buf, 0) {
        Ok(_) => true,
        Err(e) => {
            out.unsent.push(e);
            false
        }
    };
    buf.clear();
    while let Ok(msgs) = read_datagram(sock, libc::MSG_DONTWAIT) {
        if msgs.is_empty() {
            break;
        }
        answers.note(&msgs, out);
    }
    sent
}

/// The sequence numbers of a batch in flight.
struct Answers {
    base: u32,
    last: u32,
    /// The last request has been answered.
    closed: bool,
}

impl Answers {
    fn note(&mut self, msgs: &[NetlinkMessage<RouteNetlinkMessage>], out: &mut Outcome) {
        for m in msgs {
            let seq = m.header.sequence_number;
            if !(self.base..=self.last).contains(&seq) {
                continue; // another batch's, answered after it gave up
            }
            if let NetlinkPayload::Error(e) = &m.payload {
                if let Some(code) = e.code {
                    out.refused.push(((seq - self.base) as usize, -code.get()));
                }
                self.closed |= seq == self.last;
            }
        }
    }
}

/// The messages of one datagram (`flags`: `MSG_DONTWAIT` for only what is waiting, which
/// then is an empty list when nothing is).
fn read_datagram(
    sock: &Socket,
    flags: libc::c_int,
) -> std::io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
    let mut buf = Vec::with_capacity(256 * 1024);
    match sock.recv(&mut buf, flags) {
        Ok(_) => Ok(parse_datagram(&buf)),
        Err(e) if flags & libc::MSG_DONTWAIT != 0 && e.kind() == std::io::ErrorKind::WouldBlock => {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// Split a datagram into its messages; what does not parse is skipped.
pub fn parse_datagram(buf: &[u8]) -> Vec<NetlinkMessage<RouteNetlinkMessage>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Ok(b) = NetlinkBuffer::new_checked(&buf[at..]) {
        let len = b.length() as usize;
        if let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[at..at + len]) {
            out.push(m);
        }
        // Messages are aligned to four bytes.
        at += (len + 3) & !3;
        if at >= buf.len() {
            break;
        }
    }
    out
}

/// `ip link show NAME` over a raw socket: its index, or None if there is no such link.
pub fn link_index(sock: &Socket, name: &str) -> Result<Option<u32>> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    let answers = query(sock, RouteNetlinkMessage::GetLink(msg)).map_err(DataplaneError::Socket)?;
    for m in answers {
        match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                return Ok(Some(l.header.index))
            }
            NetlinkPayload::Error(e) => match e.code.map(|c| -c.get()) {
                Some(libc::ENODEV) => return Ok(None),
                Some(code) => {
                    return Err(DataplaneError::errno(format!("looking up {name}"), code))
                }
                None => {}
            },
            _ => {}
        }
    }
    Ok(None)
}

/// `ip link del dev INDEX` over a raw socket, waiting as long as the kernel takes; a link
/// already gone is fine.
pub fn delete_link(sock: &Socket, index: u32, op: String) -> Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    match transact(sock, vec![(RouteNetlinkMessage::DelLink(msg), 0, op)]) {
        Err(DataplaneError::Netlink {
            errno: Some(libc::ENODEV),
            ..
        }) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(seq: u32, errno: i32) -> NetlinkMessage<RouteNetlinkMessage> {
        let mut e = netlink_packet_core::ErrorMessage::default();
        e.code = std::num::NonZeroI32::new(-errno);
        let mut m = NetlinkMessage::new(Default::default(), NetlinkPayload::Error(e));
        m.header.sequence_number = seq;
        m.finalize();
        m
    }

    fn datagram(msgs: &[NetlinkMessage<RouteNetlinkMessage>]) -> Vec<u8> {
        let mut buf = Vec::new();
        for m in msgs {
            let at = buf.len();
            buf.resize(at + m.buffer_len(), 0);
            m.serialize(&mut buf[at..]);
        }
        buf
    }

    #[test]
    fn a_datagram_splits_into_its_messages_and_a_torn_tail_is_dropped() {
        let mut buf = datagram(&[ack(7, 0), ack(8, libc::EEXIST), ack(9, 0)]);
        assert_eq!(parse_datagram(&buf).len(), 3);
        buf.truncate(buf.len() - 3);
        let seqs: Vec<u32> = parse_datagram(&buf)
            .iter()
            .map(|m| m.header.sequence_number)
            .collect();
        assert_eq!(seqs, [7, 8]);
        assert!(parse_datagram(&[0; 7]).is_empty());
    }

    #[test]
    fn answers_are_matched_to_their_requests_and_strays_ignored() {
        let mut a = Answers {
            base: 10,
            last: 12,
            closed: false,
        };
        let mut out = Outcome::default();
        // A refusal from an earlier batch that gave up must not count against this one.
        a.note(
            &parse_datagram(&datagram(&[ack(4, libc::ENOENT)])),
            &mut out,
        );
        a.note(
            &parse_datagram(&datagram(&[ack(11, libc::EEXIST)])),
            &mut out,
        );
        assert!(!a.closed);
        a.note(&parse_datagram(&datagram(&[ack(12, 0)])), &mut out);
        assert!(
            a.closed,
            "the last request's acknowledgement closes the batch"
        );
        assert_eq!(out.refused, [(1, libc::EEXIST)]);
    }
}
