//! This host's key as the userspace tunnel uses it, and the handshake limiters.
//!
//! Handshake initiations are counted once by each of two limiters: the host-wide one here,
//! which checks an initiation's MACs before rnetd knows which peer sent it (a stranger's
//! flood meets cookies there), and the peer's own `Tunn` limiter (boringtun's per-peer
//! figure, reset by its timers), which also meters handshake responses.

use std::net::{IpAddr, SocketAddrV4};
use std::sync::Arc;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::PublicKey;

use super::keys::HostKey;
use super::KEEPALIVE_SECS;

/// Handshake initiations per second the host-wide limiter lets through before it asks for
/// cookies (boringtun's own device uses the same figure).
pub(super) const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// This host's static key and the host-wide handshake limiter made for it.
pub(super) struct Keys {
    pub key: HostKey,
    pub limiter: Arc<RateLimiter>,
}

impl Keys {
    pub fn new(key: HostKey) -> Keys {
        let limiter = Arc::new(RateLimiter::new(&key.public, HANDSHAKE_RATE_LIMIT));
        Keys { key, limiter }
    }

    /// The host-wide check of a handshake initiation from `from`: its MAC1 must be made for
    /// this host's key, and under load it must carry a cookie (`Err` holds the cookie reply
    /// to send, or why it was refused). Counts the message once.
    pub fn admit<'a>(
        &self,
        from: SocketAddrV4,
        datagram: &[u8],
        cookie: &'a mut [u8],
    ) -> Result<(), TunnResult<'a>> {
        self.limiter
            .verify_packet(Some(IpAddr::V4(*from.ip())), datagram, cookie)
            .map(|_| ())
    }

    /// A tunnel to the peer with key `theirs`, under our 24-bit `index`. Its limiter is its
    /// own (`None`): the host-wide one has already counted the initiations routed to it.
    pub fn tunn(&self, theirs: PublicKey, index: u32) -> Tunn {
        Tunn::new(
            self.key.secret.clone(),
            theirs,
            None,
            Some(KEEPALIVE_SECS),
            index,
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boringtun::noise::{Packet, Tunn};
    use std::net::Ipv4Addr;

    const FROM: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 12), 51820);

    /// What this host answers an initiation with, the way the receive path handles it:
    /// the host-wide check, then the peer's tunnel.
    fn answer(host: &Keys, tunn: &mut Tunn, init: &[u8]) -> Option<u32> {
        let mut cookie = [0u8; 64];
        let mut out = [0u8; 256];
        match host.admit(FROM, init, &mut cookie) {
            Ok(()) => {}
            Err(TunnResult::WriteToNetwork(reply)) => return Some(message_type(reply)),
            Err(_) => return None,
        }
        match tunn.decapsulate(Some(IpAddr::V4(*FROM.ip())), init, &mut out) {
            TunnResult::WriteToNetwork(reply) => Some(message_type(reply)),
            _ => None,
        }
    }

    fn message_type(msg: &[u8]) -> u32 {
        u32::from_le_bytes(msg[..4].try_into().unwrap())
    }

    const RESPONSE: u32 = 2;
    const COOKIE_REPLY: u32 = 3;

    /// `peers` peers each initiating `each` times within one second.
    fn initiate(host: &Keys, peers: usize, each: usize) -> Vec<u32> {
        let mut answers = Vec::new();
        let mut pairs: Vec<(Tunn, Tunn)> = (0..peers)
            .map(|i| {
                let peer = Keys::new(HostKey::generate());
                let theirs = peer.tunn(host.key.public, 1000 + i as u32);
                (theirs, host.tunn(peer.key.public, i as u32 + 1))
            })
            .collect();
        for _ in 0..each {
            for (theirs, ours) in &mut pairs {
                let mut buf = [0u8; 256];
                let TunnResult::WriteToNetwork(init) =
                    theirs.format_handshake_initiation(&mut buf, true)
                else {
                    panic!("no initiation");
                };
                assert!(matches!(
                    Tunn::parse_incoming_packet(init),
                    Ok(Packet::HandshakeInit(_))
                ));
                answers.push(answer(host, ours, init).unwrap_or(0));
            }
        }
        answers
    }

    #[test]
    fn initiations_under_the_limit_are_all_answered_each_counted_once() {
        // 90 initiations from 10 peers: under the host-wide 100 and the per-peer 10 when
        // each is counted once; counted twice by the same limiter, the 51st met a cookie.
        let host = Keys::new(HostKey::generate());
        let answers = initiate(&host, 10, 9);
        assert_eq!(answers.len(), 90);
        let refused = answers.iter().filter(|a| **a != RESPONSE).count();
        assert_eq!(refused, 0, "answers: {answers:?}");
    }

    #[test]
    fn a_flood_over_the_host_limit_meets_cookies() {
        let host = Keys::new(HostKey::generate());
        let answers = initiate(&host, 20, 6);
        let responses = answers.iter().filter(|a| **a == RESPONSE).count();
        let cookies = answers.iter().filter(|a| **a == COOKIE_REPLY).count();
        assert_eq!(responses, HANDSHAKE_RATE_LIMIT as usize, "{answers:?}");
        assert_eq!(cookies, 120 - HANDSHAKE_RATE_LIMIT as usize, "{answers:?}");
    }

    #[test]
    fn one_peer_flooding_meets_cookies_from_its_own_limiter() {
        // boringtun's per-peer limit is 10 a second: one peer cannot use up the host's 100.
        let host = Keys::new(HostKey::generate());
        let answers = initiate(&host, 1, 30);
        let responses = answers.iter().filter(|a| **a == RESPONSE).count();
        assert_eq!(responses, 10, "{answers:?}");
        assert!(
            answers[10..].iter().all(|a| *a == COOKIE_REPLY),
            "{answers:?}"
        );
    }
}
