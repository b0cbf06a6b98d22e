//! A dead daemon is not a dead host. When a host's presence record expires, probe its
//! underlay address with ICMP echo (its kernel answers while the machine is up, whatever
//! its rnetd is doing); keep its entries while it answers, drop them once it has been
//! silent for the probe window.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// Tokio's clock (the plain monotonic clock outside tests), so tests can pause and advance it.
use tokio::time::Instant;

use super::sync::{Cache, Shared};
use crate::icmp::IcmpSocket;
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
    // Inside the runtime's context, the thread's `mark_up` stamps come from the same clock
    // as everything else's (a paused one in tests); its own pacing stays on the OS clock.
    let runtime = tokio::runtime::Handle::try_current().ok();
    let spawned = std::thread::Builder::new().name("rnet-prober".into()).spawn(move || {
        let _context = runtime.as_ref().map(|r| r.enter());
        let socket = match IcmpSocket::open() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot open an ICMP socket; hosts whose daemon is down will be dropped after the probe window");
                return;
            }
        };
        let mut seq: u16 = 0;
        loop {
            let started = std::time::Instant::now();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HostRecord, Mac};

    fn record(id: &str) -> HostRecord {
        HostRecord {
            id: id.into(),
            underlay: "198.18.0.12".parse().unwrap(),
            vtep_mac: Mac([2, 0, 0, 0, 0, 1]),
            started: 0,
            renewed: 0,
            wireguard: None,
            ipsec: None,
        }
    }

    /// On the paused clock: the window is exact, and nothing waits for real.
    #[tokio::test(start_paused = true)]
    async fn states_follow_presence_then_the_window() {
        const WINDOW: Duration = Duration::from_secs(5);
        let l = Liveness::new(WINDOW);
        let mut c = Cache::default();
        c.host_info.insert("h2".into(), record("h2"));
        c.presence.insert("h2".into(), record("h2"));
        assert_eq!(l.state("h1", "h1", &c), PeerState::Local);
        assert_eq!(l.state("h1", "h2", &c), PeerState::Live);
        c.presence.clear();
        assert_eq!(l.state("h1", "h2", &c), PeerState::DaemonDown);
        assert_eq!(l.targets("h1", &c).len(), 1);
        tokio::time::advance(WINDOW - Duration::from_millis(1)).await;
        assert_eq!(l.state("h1", "h2", &c), PeerState::DaemonDown);
        assert_eq!(l.reachable("h1", &c).len(), 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(l.state("h1", "h2", &c), PeerState::Gone);
        assert!(l.reachable("h1", &c).is_empty());
    }

    /// A probe answer restarts the window; a host never seen up since start-up gets one
    /// window of grace from the daemon's start.
    #[tokio::test(start_paused = true)]
    async fn probe_answers_restart_the_window_and_unseen_hosts_get_one_from_start() {
        const WINDOW: Duration = Duration::from_secs(5);
        let l = Liveness::new(WINDOW);
        let mut c = Cache::default();
        c.host_info.insert("h2".into(), record("h2"));
        c.host_info.insert("h3".into(), record("h3"));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(l.state("h1", "h3", &c), PeerState::DaemonDown, "grace");
        l.mark_up("h2");
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(l.state("h1", "h3", &c), PeerState::Gone, "grace over");
        assert_eq!(
            l.state("h1", "h2", &c),
            PeerState::DaemonDown,
            "answered 4 s ago"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            l.state("h1", "h2", &c),
            PeerState::Gone,
            "silent for the window"
        );
        assert!(l.reachable("h1", &c).is_empty());
    }
}
