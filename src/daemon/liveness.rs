//! A dead daemon is not a dead host. When a host's presence record expires, probe its
//! underlay address with ICMP echo (its kernel answers while the machine is up, whatever
//! its rnetd is doing); keep its entries while it answers, drop them once it has been
//! silent for the probe window.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvfrom, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol,
    SockType, SockaddrIn,
};
use nix::sys::time::TimeVal;

use super::sync::{Cache, Shared};
use crate::peers::PeerState;

/// How often silent hosts are probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// When each host was last known to be up (presence seen or probe answered).
pub struct Liveness {
    window: Duration,
    started: Instant,
    last_up: Mutex<HashMap<String, Instant>>,
}

impl Liveness {
    pub fn new(window: Duration) -> Liveness {
        Liveness {
            window,
            started: Instant::now(),
            last_up: Mutex::new(HashMap::new()),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// The state of `host` as seen from `me` with this cache.
    pub fn state(&self, me: &str, host: &str, cache: &Cache) -> PeerState {
        if host == me {
            return PeerState::Local;
        }
        if cache.presence.contains_key(host) {
            self.mark_up(host);
            return PeerState::Live;
        }
        // A host never seen up since this daemon started gets one window of grace, so a
        // restarted daemon keeps the kernel's entries until it has probed.
        let last = self
            .last_up
            .lock()
            .expect("poisoned")
            .get(host)
            .copied()
            .unwrap_or(self.started);
        if last.elapsed() < self.window {
            PeerState::DaemonDown
        } else {
            PeerState::Gone
        }
    }

    /// The hosts whose entries should be programmed.
    pub fn reachable(&self, me: &str, cache: &Cache) -> BTreeSet<String> {
        let mut hosts: BTreeSet<&String> = cache.host_info.keys().collect();
        hosts.extend(cache.presence.keys());
        hosts
            .into_iter()
            .filter(|h| {
                matches!(
                    self.state(me, h, cache),
                    PeerState::Live | PeerState::DaemonDown
                )
            })
            .cloned()
            .collect()
    }

    fn mark_up(&self, host: &str) {
        self.last_up
            .lock()
            .expect("poisoned")
            .insert(host.to_string(), Instant::now());
    }

    /// Hosts to probe: known, not present, not this host.
    fn targets(&self, me: &str, cache: &Cache) -> Vec<(String, Ipv4Addr)> {
        cache
            .host_info
            .iter()
            .filter(|(id, _)| id.as_str() != me && !cache.presence.contains_key(*id))
            .map(|(id, h)| (id.clone(), h.underlay))
            .collect()
    }
}

/// Probe absent hosts forever (on a plain OS thread: raw sockets and short blocking waits).
pub fn spawn_prober(me: String, liveness: Arc<Liveness>, shared: Arc<Shared>) {
    let spawned = std::thread::Builder::new().name("rnet-prober".into()).spawn(move || {
        let socket = match IcmpSocket::open() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot open an ICMP socket; hosts whose daemon is down will be dropped after the probe window");
                return;
            }
        };
        let mut seq: u16 = 0;
        loop {
            let started = Instant::now();
            let targets = liveness.targets(&me, &shared.cache.read().expect("cache poisoned"));
            if !targets.is_empty() {
                seq = seq.wrapping_add(1);
                let answered = socket.probe(&targets.iter().map(|t| t.1).collect::<Vec<_>>(), seq, PROBE_INTERVAL / 2);
                for (id, addr) in &targets {
                    if answered.contains(addr) {
                        liveness.mark_up(id);
                    }
                }
            }
            std::thread::sleep(PROBE_INTERVAL.saturating_sub(started.elapsed()));
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the prober thread");
    }
}

/// A raw ICMP socket (root) for echo requests.
struct IcmpSocket {
    fd: std::os::fd::OwnedFd,
    id: u16,
}

impl IcmpSocket {
    fn open() -> nix::Result<IcmpSocket> {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Icmp,
        )?;
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 50_000))?;
        Ok(IcmpSocket {
            fd,
            id: (std::process::id() & 0xffff) as u16,
        })
    }

    /// Send one echo request to each target; return those that replied within `wait`.
    fn probe(&self, targets: &[Ipv4Addr], seq: u16, wait: Duration) -> BTreeSet<Ipv4Addr> {
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

/// An ICMP echo request with identifier `id` and sequence `seq`.
fn echo_request(id: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = 8; // echo request
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(b"rnetprob");
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The source of an echo reply carrying identifier `id` (the raw socket hands us the IP header).
fn parse_echo_reply(pkt: &[u8], id: u16) -> Option<Ipv4Addr> {
    let ihl = usize::from(pkt.first()? & 0x0f) * 4;
    let icmp = pkt.get(ihl..ihl + 8)?;
    if icmp[0] != 0 || icmp[4..6] != id.to_be_bytes() {
        return None;
    }
    let src = pkt.get(12..16)?;
    Some(Ipv4Addr::new(src[0], src[1], src[2], src[3]))
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HostRecord, Mac};

    #[test]
    fn echo_request_checksums_to_zero() {
        let p = echo_request(0x1234, 7);
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
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

    #[test]
    fn states_follow_presence_then_the_window() {
        let l = Liveness::new(Duration::from_millis(50));
        let mut c = Cache::default();
        let rec = HostRecord {
            id: "h2".into(),
            underlay: "198.18.0.12".parse().unwrap(),
            vtep_mac: Mac([2, 0, 0, 0, 0, 1]),
            started: 0,
            renewed: 0,
        };
        c.host_info.insert("h2".into(), rec.clone());
        c.presence.insert("h2".into(), rec);
        assert_eq!(l.state("h1", "h1", &c), PeerState::Local);
        assert_eq!(l.state("h1", "h2", &c), PeerState::Live);
        c.presence.clear();
        assert_eq!(l.state("h1", "h2", &c), PeerState::DaemonDown);
        assert_eq!(l.targets("h1", &c).len(), 1);
        std::thread::sleep(Duration::from_millis(60)); // the window is the thing under test
        assert_eq!(l.state("h1", "h2", &c), PeerState::Gone);
        assert!(l.reachable("h1", &c).is_empty());
    }
}
