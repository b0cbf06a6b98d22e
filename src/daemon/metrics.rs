//! Prometheus metrics of rnetd: one process-wide registry. Events (attach, detach, reconcile,
//! store watch) are counted where they happen; state (endpoints, peers, tunnels, bad records)
//! is read at scrape time from what the daemon already keeps, so nothing else threads counters.

use std::sync::LazyLock;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::api::types::PeerInfo;
use crate::api::types::PeerState;
use crate::wireguard::DropCounters;

/// The exposition format's content type (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// Every metric rnetd exports.
pub struct Metrics {
    registry: Registry,
    attach_seconds: Histogram,
    detach_seconds: Histogram,
    attach_failures: Counter,
    detach_failures: Counter,
    reconcile_runs: Counter,
    drift_findings: Counter,
    repairs: Counter,
    watch_events: Counter,
    store_lists: Counter,
    // Read at scrape time.
    endpoints: Gauge,
    peers: Family<StateLabel, Gauge>,
    bad_records: Gauge,
    store_revision: Gauge,
    wg_tx_bytes: Family<PeerLabel, Gauge>,
    wg_rx_bytes: Family<PeerLabel, Gauge>,
    wg_since_handshake: Family<PeerLabel, Gauge>,
    wg_tunnel_up: Family<PeerLabel, Gauge>,
    wg_drops: Family<ReasonLabel, Gauge>,
    /// Scrape-time gauges are cleared and set again: one scrape at a time.
    render: Mutex<()>,
}

/// What a scrape reads from the daemon's state.
#[derive(Debug, Default)]
pub struct Sample {
    pub local_endpoints: usize,
    pub bad_records: usize,
    pub store_revision: i64,
    pub peers: Vec<PeerInfo>,
    /// None: this host runs no WireGuard tunnel.
    pub drops: Option<DropCounters>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// Attach/detach latency buckets: 1 ms doubling to ~16 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 15)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            attach_seconds: Histogram::new(latency_buckets()),
            detach_seconds: Histogram::new(latency_buckets()),
            attach_failures: Counter::default(),
            detach_failures: Counter::default(),
            reconcile_runs: Counter::default(),
            drift_findings: Counter::default(),
            repairs: Counter::default(),
            watch_events: Counter::default(),
            store_lists: Counter::default(),
            endpoints: Gauge::default(),
            peers: Family::default(),
            bad_records: Gauge::default(),
            store_revision: Gauge::default(),
            wg_tx_bytes: Family::default(),
            wg_rx_bytes: Family::default(),
            wg_since_handshake: Family::default(),
            wg_tunnel_up: Family::default(),
            wg_drops: Family::default(),
            render: Mutex::new(()),
            registry: Registry::default(),
        };
        let r = &mut registry;
        let dns = crate::dns::stats();
        r.register(
            "rnet_dns_malformed",
            "DNS queries dropped unanswered as malformed",
            dns.malformed.clone(),
        );
        r.register(
            "rnet_dns_answered",
            "DNS queries answered from the networks' names",
            dns.answered.clone(),
        );
        r.register(
            "rnet_dns_forwarded",
            "DNS queries answered by an upstream resolver",
            dns.forwarded.clone(),
        );
        r.register(
            "rnet_dns_forward_failed",
            "DNS queries no upstream answered (answered SERVFAIL)",
            dns.forward_failed.clone(),
        );
        r.register(
            "rnet_attach_duration_seconds",
            "Time an attach (API, CNI ADD) took, successful or not",
            m.attach_seconds.clone(),
        );
        r.register(
            "rnet_detach_duration_seconds",
            "Time a detach (API, CNI DEL) took, successful or not",
            m.detach_seconds.clone(),
        );
        r.register(
            "rnet_attach_failures",
            "Attaches that returned an error",
            m.attach_failures.clone(),
        );
        r.register(
            "rnet_detach_failures",
            "Detaches that returned an error",
            m.detach_failures.clone(),
        );
        r.register(
            "rnet_reconcile_runs",
            "Reconciles run (start-up, periodic, doctor)",
            m.reconcile_runs.clone(),
        );
        r.register(
            "rnet_reconcile_drift_findings",
            "Differences between the kernel and the records that reconciles found",
            m.drift_findings.clone(),
        );
        r.register(
            "rnet_reconcile_repairs",
            "Findings that reconciles repaired",
            m.repairs.clone(),
        );
        r.register(
            "rnet_store_watch_events",
            "Store events received through the watch",
            m.watch_events.clone(),
        );
        r.register(
            "rnet_store_lists",
            "Full lists of the store (start-up, after compaction or lost watches)",
            m.store_lists.clone(),
        );
        r.register(
            "rnet_endpoints",
            "Endpoints on this host (as the watched store says)",
            m.endpoints.clone(),
        );
        r.register(
            "rnet_peers",
            "Known peer hosts by state (live, daemon_down, gone)",
            m.peers.clone(),
        );
        r.register(
            "rnet_bad_records",
            "Invalid store records now skipped",
            m.bad_records.clone(),
        );
        r.register(
            "rnet_store_revision",
            "Store revision the daemon's watched copy reflects",
            m.store_revision.clone(),
        );
        r.register(
            "rnet_wireguard_tx_bytes",
            "Bytes sent through the WireGuard tunnel to a peer",
            m.wg_tx_bytes.clone(),
        );
        r.register(
            "rnet_wireguard_rx_bytes",
            "Bytes received through the WireGuard tunnel from a peer",
            m.wg_rx_bytes.clone(),
        );
        r.register(
            "rnet_wireguard_seconds_since_handshake",
            "Seconds since the current session's handshake with a peer (absent: no session)",
            m.wg_since_handshake.clone(),
        );
        r.register(
            "rnet_wireguard_tunnel_up",
            "Whether the WireGuard tunnel to a peer is up (1) or not (0)",
            m.wg_tunnel_up.clone(),
        );
        r.register(
            "rnet_wireguard_drops",
            "Datagrams and packets the WireGuard tunnel dropped, by reason",
            m.wg_drops.clone(),
        );
        Metrics { registry, ..m }
    }

    /// One attach took `took`; `ok`: it succeeded.
    pub fn attached(&self, took: Duration, ok: bool) {
        self.attach_seconds.observe(took.as_secs_f64());
        if !ok {
            self.attach_failures.inc();
        }
    }

    /// One detach took `took`; `ok`: it succeeded.
    pub fn detached(&self, took: Duration, ok: bool) {
        self.detach_seconds.observe(took.as_secs_f64());
        if !ok {
            self.detach_failures.inc();
        }
    }

    /// A reconcile ran and found `findings` differences, repaired when `applied`.
    pub fn reconciled(&self, findings: usize, applied: bool) {
        self.reconcile_runs.inc();
        self.drift_findings.inc_by(findings as u64);
        if applied {
            self.repairs.inc_by(findings as u64);
        }
    }

    /// The watch delivered `n` events.
    pub fn watch_events(&self, n: usize) {
        self.watch_events.inc_by(n as u64);
    }

    /// The store was listed in full.
    pub fn store_listed(&self) {
        self.store_lists.inc();
    }

    /// The exposition text, with the scrape-time gauges set from `sample`.
    pub fn render(&self, sample: &Sample) -> String {
        let _one = self.render.lock();
        self.endpoints.set(sample.local_endpoints as i64);
        self.bad_records.set(sample.bad_records as i64);
        self.store_revision.set(sample.store_revision);
        self.peers.clear();
        for f in [
            &self.wg_tx_bytes,
            &self.wg_rx_bytes,
            &self.wg_since_handshake,
            &self.wg_tunnel_up,
        ] {
            f.clear();
        }
        self.wg_drops.clear();
        // Every state has a sample, so a state that empties reads 0 rather than vanishing.
        for state in [PeerState::Live, PeerState::DaemonDown, PeerState::Gone] {
            self.peers.get_or_create(&state_label(state)).set(0);
        }
        for p in &sample.peers {
            if p.state != PeerState::Local {
                self.peers.get_or_create(&state_label(p.state)).inc();
            }
            let Some(t) = &p.tunnel else { continue };
            let peer = PeerLabel {
                peer: p.host.clone(),
            };
            self.wg_tx_bytes
                .get_or_create(&peer)
                .set(saturate(t.tx_bytes));
            self.wg_rx_bytes
                .get_or_create(&peer)
                .set(saturate(t.rx_bytes));
            self.wg_tunnel_up.get_or_create(&peer).set(t.up as i64);
            if let Some(s) = t.since_handshake {
                self.wg_since_handshake
                    .get_or_create(&peer)
                    .set(saturate(s));
            }
        }
        if let Some(d) = &sample.drops {
            for (reason, n) in [
                ("malformed", d.malformed),
                ("rejected", d.rejected),
                ("spoofed", d.spoofed),
                ("no_peer", d.no_peer),
                ("bad_offload", d.bad_offload),
            ] {
                self.wg_drops
                    .get_or_create(&ReasonLabel {
                        reason: reason.into(),
                    })
                    .set(saturate(n));
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

fn state_label(state: PeerState) -> StateLabel {
    let state = match state {
        PeerState::Live => "live",
        PeerState::DaemonDown => "daemon_down",
        PeerState::Gone => "gone",
        PeerState::Local => "self",
    };
    StateLabel {
        state: state.into(),
    }
}

fn saturate(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mac;

    fn peer(host: &str, state: PeerState) -> PeerInfo {
        PeerInfo {
            host: host.into(),
            underlay: "198.18.0.2".parse().unwrap(),
            vtep_mac: Mac::from_name(0x56, host),
            state,
            renewed_ago: None,
            endpoints: 0,
            tunnel: None,
            ipsec: None,
        }
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn dns_counters_are_exported() {
        let m = Metrics::new();
        let before = crate::dns::stats().malformed.get();
        crate::dns::stats().malformed.inc();
        let text = m.render(&Sample::default());
        let line = format!("rnet_dns_malformed_total {}", before + 1);
        assert!(text.contains(&line), "{text}");
        assert!(text.contains("rnet_dns_forwarded_total"), "{text}");
    }

    #[test]
    fn scrape_sets_state_gauges_and_counts_events() {
        let m = Metrics::new();
        m.attached(Duration::from_millis(20), true);
        m.attached(Duration::from_millis(30), false);
        m.reconciled(3, true);
        m.reconciled(2, false);
        let mut gone = peer("h3", PeerState::Gone);
        gone.tunnel = Some(crate::api::types::TunnelStatus {
            up: false,
            since_handshake: Some(7),
            tx_bytes: 100,
            rx_bytes: 200,
            key_age: None,
            problem: None,
            backend: None,
        });
        let text = m.render(&Sample {
            local_endpoints: 4,
            bad_records: 1,
            store_revision: 9,
            peers: vec![
                peer("h1", PeerState::Local),
                peer("h2", PeerState::Live),
                gone,
            ],
            drops: Some(DropCounters {
                malformed: 5,
                ..Default::default()
            }),
        });
        assert!(text.contains("# TYPE rnet_attach_duration_seconds histogram"));
        assert_eq!(
            line(&text, "rnet_attach_duration_seconds_count"),
            Some("rnet_attach_duration_seconds_count 2")
        );
        assert_eq!(
            line(&text, "rnet_attach_failures_total"),
            Some("rnet_attach_failures_total 1")
        );
        assert_eq!(
            line(&text, "rnet_reconcile_runs_total"),
            Some("rnet_reconcile_runs_total 2")
        );
        assert_eq!(
            line(&text, "rnet_reconcile_drift_findings_total"),
            Some("rnet_reconcile_drift_findings_total 5")
        );
        assert_eq!(
            line(&text, "rnet_reconcile_repairs_total"),
            Some("rnet_reconcile_repairs_total 3")
        );
        assert_eq!(line(&text, "rnet_endpoints "), Some("rnet_endpoints 4"));
        assert_eq!(line(&text, "rnet_bad_records "), Some("rnet_bad_records 1"));
        assert!(text.contains("rnet_peers{state=\"live\"} 1"));
        assert!(text.contains("rnet_peers{state=\"gone\"} 1"));
        assert!(text.contains("rnet_peers{state=\"daemon_down\"} 0"));
        assert!(!text.contains("state=\"self\""));
        assert!(text.contains("rnet_wireguard_tx_bytes{peer=\"h3\"} 100"));
        assert!(text.contains("rnet_wireguard_rx_bytes{peer=\"h3\"} 200"));
        assert!(text.contains("rnet_wireguard_seconds_since_handshake{peer=\"h3\"} 7"));
        assert!(text.contains("rnet_wireguard_drops{reason=\"malformed\"} 5"));
        assert!(text.ends_with("# EOF\n"));

        // A peer that is gone from the next scrape leaves no series behind.
        let text = m.render(&Sample::default());
        assert!(!text.contains("peer=\"h3\""));
        assert!(text.contains("rnet_peers{state=\"gone\"} 0"));
    }
}
