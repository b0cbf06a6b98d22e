//! Cluster DNS: rnetd answers, for each network with a sandbox on this host, at the
//! network's gateway address (port 53, UDP and TCP, inside the sandbox) the names of the
//! network's endpoints on every host, from the daemon's store cache; other names go to the
//! host's resolvers. docs/dns.md describes the names.
//!
//! `lookup` (what a query gets) and `resolv` (the host's resolvers) are pure; `server` owns
//! the sockets and `forward` the upstream traffic.

pub mod forward;
pub mod lookup;
pub mod resolv;
pub mod server;

use std::net::Ipv4Addr;
use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;

pub use server::Servers;

/// Where the server finds names: the addresses of network `network`'s endpoints that carry
/// DNS name `name` (lowercase, no trailing dot). The daemon's store cache implements it.
pub trait Directory: Send + Sync + 'static {
    fn addresses(&self, network: &str, name: &str) -> Vec<Ipv4Addr>;
}

/// The addresses of the endpoints among `endpoints` that carry DNS name `name`.
pub fn named<'a>(
    endpoints: impl IntoIterator<Item = &'a crate::model::Endpoint>,
    name: &str,
) -> Vec<Ipv4Addr> {
    endpoints
        .into_iter()
        .filter(|e| e.dns_names().any(|n| n.as_str() == name))
        .map(|e| e.ip.ip())
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("DNS server: {0}")]
    Socket(String),
    #[error("DNS server: {0}")]
    Io(#[from] std::io::Error),
}

/// The process's DNS counters (Prometheus counters, also shown by `rnet status`).
#[derive(Default)]
pub struct Stats {
    /// Queries dropped unanswered: unparsable, too long, not a query, not one question.
    pub malformed: Counter,
    /// Queries answered from the network's names.
    pub answered: Counter,
    /// Queries answered by an upstream.
    pub forwarded: Counter,
    /// Forwards that got no answer (or hit the cap): answered SERVFAIL.
    pub forward_failed: Counter,
}

static STATS: LazyLock<Stats> = LazyLock::new(Stats::default);

pub fn stats() -> &'static Stats {
    &STATS
}
