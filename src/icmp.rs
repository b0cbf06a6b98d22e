//! ICMP echo over a raw socket: the daemon's liveness probe of silent hosts (and the
//! benchmarks' fine-grained reachability check).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvfrom, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol,
    SockType, SockaddrIn,
};
use nix::sys::time::TimeVal;
use rand_core::{OsRng, RngCore};

use crate::checksum::internet_checksum;

/// A raw ICMP socket (root) for echo requests.
pub struct IcmpSocket {
    fd: std::os::fd::OwnedFd,
    id: u16,
}

impl IcmpSocket {
    /// A raw socket in the calling thread's network namespace.
    pub fn open() -> nix::Result<IcmpSocket> {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Icmp,
        )?;
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 50_000))?;
        Ok(IcmpSocket { fd, id: echo_id() })
    }

    /// Send one echo request to each target; return those that replied within `wait`.
    pub fn probe(&self, targets: &[Ipv4Addr], seq: u16, wait: Duration) -> BTreeSet<Ipv4Addr> {
        let packet = echo_request(self.id, seq);
        for t in targets {
            let _ = sendto(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                &packet,
                &SockaddrIn::from(SocketAddrV4::new(*t, 0)),
                MsgFlags::empty(),
            );
        }
        let deadline = Instant::now() + wait;
        let mut answered = BTreeSet::new();
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline && answered.len() < targets.len() {
            if let Ok((n, _)) =
                recvfrom::<SockaddrIn>(std::os::fd::AsRawFd::as_raw_fd(&self.fd), &mut buf)
            {
                if let Some(src) = parse_echo_reply(&buf[..n], self.id) {
                    answered.insert(src);
                }
            }
        }
        answered
    }
}

/// A socket's echo identifier: random, not the pid, so that each socket tells its own replies
/// from those of another socket in the same process (a raw socket sees every echo reply).
fn echo_id() -> u16 {
    OsRng.next_u32() as u16
}

/// An ICMP echo request with identifier `id` and sequence `seq`.
pub fn echo_request(id: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = 8; // echo request
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(b"rnetprob");
    let sum = internet_checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The source of an echo reply carrying identifier `id` (the raw socket hands us the IP header).
pub fn parse_echo_reply(pkt: &[u8], id: u16) -> Option<Ipv4Addr> {
    let ihl = usize::from(pkt.first()? & 0x0f) * 4;
    let icmp = pkt.get(ihl..ihl + 8)?;
    if icmp[0] != 0 || icmp[4..6] != id.to_be_bytes() {
        return None;
    }
    let src = pkt.get(12..16)?;
    Some(Ipv4Addr::new(src[0], src[1], src[2], src[3]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_of_one_process_draw_different_ids() {
        let ids: BTreeSet<u16> = (0..64).map(|_| echo_id()).collect();
        assert!(ids.len() > 1, "64 echo ids all {ids:?}");
    }

    #[test]
    fn echo_request_checksums_to_zero() {
        let p = echo_request(0x1234, 7);
        assert_eq!(
            internet_checksum(&p),
            0,
            "a packet with its checksum sums to zero"
        );
        assert_eq!(&p[4..8], &[0x12, 0x34, 0, 7]);
    }

    #[test]
    fn parses_only_our_echo_replies() {
        let mut pkt = vec![
            0x45u8, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 198, 18, 0, 12, 198, 18, 0, 11,
        ];
        pkt.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 7]);
        assert_eq!(
            parse_echo_reply(&pkt, 0x1234),
            Some("198.18.0.12".parse().unwrap())
        );
        assert_eq!(
            parse_echo_reply(&pkt, 0x9999),
            None,
            "another prober's reply"
        );
        pkt[20] = 8;
        assert_eq!(
            parse_echo_reply(&pkt, 0x1234),
            None,
            "a request, not a reply"
        );
        assert_eq!(parse_echo_reply(&pkt[..10], 0x1234), None, "truncated");
    }
}
