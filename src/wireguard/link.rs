//! A peer's boringtun sessions in the userspace tunnel, without I/O: how a key change
//! replaces a session without a pause.
//!
//! Key changes are make-before-break: when either side's key changes, a `Link` keeps
//! carrying traffic on its current session while a second `Tunn`, made for the new keys,
//! handshakes; the new one takes over once it has a session. Each peer owns two tunnel
//! indices (`base << 1` and `base << 1 | 1`), so datagrams for either session find it.

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::PublicKey;

use super::limiter::Keys;

/// The peer a datagram addressed to our session index `receiver_idx` belongs to (the key of
/// the peer table's index map).
pub(super) fn peer_index(receiver_idx: u32) -> u32 {
    receiver_idx >> 9
}

fn is_initiation(msg: &[u8]) -> bool {
    msg.first() == Some(&1)
}

/// Which of a link's sessions a datagram is for.
#[derive(Clone, Copy, Debug)]
pub(super) enum To {
    /// A handshake initiation: the session being made, if any, else the current one.
    Initiation,
    /// Any other message, by the receiver index it carries.
    Index(u32),
}

struct Session {
    tunn: Tunn,
    /// The `Tunn`'s 24-bit index (the top bits of its sessions' receiver indices).
    index: u32,
}

/// One peer's sessions: the one carrying traffic and, while a key change is under way, the
/// one being made with the new keys.
pub(super) struct Link {
    current: Session,
    next: Option<Session>,
}

impl Link {
    /// A link to the peer with key `theirs`; `base` is its 23-bit peer index.
    pub fn new(keys: &Keys, theirs: PublicKey, base: u32) -> Link {
        let index = (base & 0x7f_ffff) << 1;
        Link {
            current: Session {
                tunn: keys.tunn(theirs, index),
                index,
            },
            next: None,
        }
    }

    /// Either key changed: start a session with this host's key in `keys` and the peer's
    /// `theirs`, beside the current one, which carries traffic until the new one has a
    /// handshake. A session already being made is replaced.
    pub fn renew(&mut self, keys: &Keys, theirs: PublicKey) {
        let index = self.current.index ^ 1;
        self.next = Some(Session {
            tunn: keys.tunn(theirs, index),
            index,
        });
    }

    /// Whether a key change is under way.
    pub fn renewing(&self) -> bool {
        self.next.is_some()
    }

    /// The tunnel outbound packets go through: the current one while it has a session.
    pub fn sender(&mut self) -> &mut Tunn {
        match &mut self.next {
            Some(next) if self.current.tunn.time_since_last_handshake().is_none() => &mut next.tunn,
            _ => &mut self.current.tunn,
        }
    }

    /// The tunnel a received datagram is for; `None`: none of this link's sessions.
    pub fn receiver(&mut self, to: To) -> Option<&mut Tunn> {
        match to {
            To::Initiation => Some(&mut self.next.as_mut().unwrap_or(&mut self.current).tunn),
            To::Index(idx) => {
                let idx = idx >> 8;
                if idx == self.current.index {
                    Some(&mut self.current.tunn)
                } else {
                    self.next
                        .as_mut()
                        .filter(|n| n.index == idx)
                        .map(|n| &mut n.tunn)
                }
            }
        }
    }

    /// Start a handshake on the newest session unless one is under way.
    pub fn initiate<'a>(&mut self, buf: &'a mut [u8]) -> TunnResult<'a> {
        self.next
            .as_mut()
            .unwrap_or(&mut self.current)
            .tunn
            .format_handshake_initiation(buf, false)
    }

    /// Let the new session take over once it has a handshake; true when it did.
    pub fn settle(&mut self) -> bool {
        match self.next.take() {
            Some(next) if next.tunn.time_since_last_handshake().is_some() => {
                self.current = next;
                true
            }
            next => {
                self.next = next;
                false
            }
        }
    }

    /// Whether traffic can flow: some session has a handshake.
    pub fn has_session(&self) -> bool {
        self.current.tunn.time_since_last_handshake().is_some()
            || self
                .next
                .as_ref()
                .is_some_and(|n| n.tunn.time_since_last_handshake().is_some())
    }

    /// The current session's (time since handshake, tx bytes, rx bytes).
    pub fn stats(&self) -> (Option<std::time::Duration>, usize, usize) {
        let (since, tx, rx, _, _) = self.current.tunn.stats();
        (since, tx, rx)
    }

    /// boringtun's handshake, keepalive and rekey rules for both sessions; `send` gets
    /// each message to send. A session boringtun gives up on starts over from `fresh`
    /// (given its index) with a new handshake; a current one that gives up while a new one
    /// is being made yields to it.
    pub fn update_timers(
        &mut self,
        buf: &mut [u8],
        fresh: impl Fn(u32) -> Tunn,
        mut send: impl FnMut(&[u8]),
    ) {
        let mut current_expired = false;
        match self.current.tunn.update_timers(buf) {
            // A session whose key is being replaced carries traffic until it is, but makes
            // no new handshake with the old key (a key rotated away stays away).
            TunnResult::WriteToNetwork(msg) if self.next.is_some() && is_initiation(msg) => {}
            TunnResult::WriteToNetwork(msg) => send(msg),
            TunnResult::Err(WireGuardError::ConnectionExpired) => current_expired = true,
            _ => {}
        }
        if let Some(next) = &mut self.next {
            match next.tunn.update_timers(buf) {
                TunnResult::WriteToNetwork(msg) => send(msg),
                TunnResult::Err(WireGuardError::ConnectionExpired) => {
                    next.tunn = fresh(next.index);
                    if let TunnResult::WriteToNetwork(msg) =
                        next.tunn.format_handshake_initiation(buf, false)
                    {
                        send(msg);
                    }
                }
                _ => {}
            }
        }
        if current_expired {
            match self.next.take() {
                Some(next) => self.current = next,
                None => {
                    self.current.tunn = fresh(self.current.index);
                    if let TunnResult::WriteToNetwork(msg) =
                        self.current.tunn.format_handshake_initiation(buf, false)
                    {
                        send(msg);
                    }
                }
            }
        }
        self.settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wireguard::keys::HostKey;
    use boringtun::noise::Packet;
    use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

    // Two hosts in memory, each with its link to the other.

    const A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
    const B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);

    struct Side {
        keys: Keys,
        link: Link,
        ip: Ipv4Addr,
        /// Inner packets that came out of the tunnel.
        got: Vec<Vec<u8>>,
    }

    fn pair() -> (Side, Side) {
        let (ka, kb) = (
            Keys::new(HostKey::generate()),
            Keys::new(HostKey::generate()),
        );
        let a = Side {
            link: Link::new(&ka, kb.key.public, 1),
            keys: ka,
            ip: A_IP,
            got: Vec::new(),
        };
        let b = Side {
            link: Link::new(&kb, a.keys.key.public, 7),
            keys: kb,
            ip: B_IP,
            got: Vec::new(),
        };
        (a, b)
    }

    /// An IPv4 packet from `src` carrying `tag`.
    fn packet(src: Ipv4Addr, tag: u8) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&[10, 0, 0, 1]);
        p[27] = tag;
        p
    }

    /// What `to` does with `datagram` from `from_ip`, as the device's receive path does;
    /// returns the messages it sends back.
    fn deliver(to: &mut Side, from_ip: Ipv4Addr, datagram: &[u8]) -> Vec<Vec<u8>> {
        let from = SocketAddrV4::new(from_ip, 51820);
        let mut cookie = [0u8; 64];
        let which = match Tunn::parse_incoming_packet(datagram).expect("a WireGuard message") {
            Packet::HandshakeInit(_) => match to.keys.admit(from, datagram, &mut cookie) {
                Ok(()) => To::Initiation,
                Err(_) => return Vec::new(),
            },
            Packet::HandshakeResponse(r) => To::Index(r.receiver_idx),
            Packet::PacketCookieReply(c) => To::Index(c.receiver_idx),
            Packet::PacketData(d) => To::Index(d.receiver_idx),
        };
        let mut out = Vec::new();
        let mut plain = [0u8; 2048];
        let Some(tunn) = to.link.receiver(which) else {
            return out;
        };
        match tunn.decapsulate(Some(IpAddr::V4(from_ip)), datagram, &mut plain) {
            TunnResult::WriteToTunnelV4(p, _) => to.got.push(p.to_vec()),
            TunnResult::WriteToNetwork(reply) => {
                out.push(reply.to_vec());
                while let TunnResult::WriteToNetwork(q) = tunn.decapsulate(None, &[], &mut plain) {
                    out.push(q.to_vec());
                }
            }
            _ => {}
        }
        to.link.settle();
        out
    }

    /// Carry `first`, sent by `a`, and every answer back and forth until both are quiet.
    fn carry(a: &mut Side, b: &mut Side, first: Vec<Vec<u8>>) {
        let mut to_b = first;
        let mut to_a: Vec<Vec<u8>> = Vec::new();
        for _ in 0..20 {
            for d in std::mem::take(&mut to_b) {
                to_a.extend(deliver(b, a.ip, &d));
            }
            for d in std::mem::take(&mut to_a) {
                to_b.extend(deliver(a, b.ip, &d));
            }
            if to_b.is_empty() {
                return;
            }
        }
        panic!("the two sides never went quiet");
    }

    /// Whether a packet tagged `tag` sent by `from` comes out at `to`.
    fn send(from: &mut Side, to: &mut Side, tag: u8) -> bool {
        let mut buf = [0u8; 2048];
        let msg = match from
            .link
            .sender()
            .encapsulate(&packet(from.ip, tag), &mut buf)
        {
            TunnResult::WriteToNetwork(m) => vec![m.to_vec()],
            _ => Vec::new(),
        };
        carry(from, to, msg);
        to.got.iter().any(|p| p[27] == tag)
    }

    fn both_ways(a: &mut Side, b: &mut Side, tag: u8) -> bool {
        send(a, b, tag) && send(b, a, tag + 1)
    }

    /// A side whose key changed, and the other side learning its new key (from the store),
    /// which starts the new handshake at once, as `set_peers` does.
    fn rotate(me: &mut Side, theirs: PublicKey) {
        me.keys = Keys::new(HostKey::generate());
        me.link.renew(&me.keys, theirs);
    }

    fn learn(other: &mut Side, me: &mut Side, new_key: PublicKey) {
        other.link.renew(&other.keys, new_key);
        let mut buf = [0u8; 256];
        let init = match other.link.initiate(&mut buf) {
            TunnResult::WriteToNetwork(m) => vec![m.to_vec()],
            _ => Vec::new(),
        };
        carry(other, me, init);
    }

    #[test]
    fn traffic_flows_at_every_step_of_either_sides_key_change() {
        let (mut a, mut b) = pair();
        // The first packet waits inside boringtun for the first handshake.
        assert!(
            send(&mut a, &mut b, 1),
            "the first packet arrives after the handshake"
        );
        assert!(both_ways(&mut a, &mut b, 10));
        for round in 0..2u8 {
            let (me, other) = if round == 0 {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            rotate(me, other.keys.key.public);
            assert!(me.link.renewing());
            // The peer does not know the new key yet: the old session still carries both ways.
            assert!(
                both_ways(me, other, 20 + 10 * round),
                "round {round}: before the peer learns"
            );
            let key = me.keys.key.public;
            learn(other, me, key);
            assert!(
                !other.link.renewing(),
                "round {round}: the peer's new session took over"
            );
            assert!(
                both_ways(me, other, 24 + 10 * round),
                "round {round}: after the handshake"
            );
            assert!(
                !me.link.renewing(),
                "round {round}: the new session took over"
            );
            assert!(
                both_ways(other, me, 26 + 10 * round),
                "round {round}: both ways"
            );
        }
    }

    #[test]
    fn a_session_under_an_unknown_key_never_takes_over() {
        // Our key changed, but the peer goes on with the old one (it has not read the new
        // key yet): its handshakes for our old key are refused by the host-wide check, and
        // the old session still carries traffic.
        let (mut a, mut b) = pair();
        assert!(send(&mut a, &mut b, 1));
        rotate(&mut a, b.keys.key.public);
        let mut buf = [0u8; 256];
        let TunnResult::WriteToNetwork(init) = b
            .link
            .current
            .tunn
            .format_handshake_initiation(&mut buf, true)
        else {
            panic!("no initiation");
        };
        let init = init.to_vec();
        assert!(
            deliver(&mut a, B_IP, &init).is_empty(),
            "an initiation for our old key is refused"
        );
        assert!(a.link.renewing());
        assert!(both_ways(&mut a, &mut b, 40));
    }
}
