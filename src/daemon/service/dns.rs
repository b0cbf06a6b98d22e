//! The DNS servers follow the sandboxes: one starts when a sandbox is built, stops before
//! its sandbox is removed, and every applied reconcile brings the set in line with the
//! sandboxes present (after a restart, a rebuilt sandbox, a network removed elsewhere).
//! A server that cannot start costs its network's names, never an attach: it is logged and
//! the next reconcile tries again.

use std::path::Path;

use super::Service;
use crate::dataplane::spec;
use crate::dataplane::Dataplane;
use crate::model::{Network, NetworkId};
use crate::store::Store;

impl<S: Store, D: Dataplane> Service<S, D> {
    /// Start network `net`'s server in its sandbox (nothing when it already runs there).
    pub(super) async fn start_dns(&self, net: &Network) {
        let Some(dns) = &self.dns else { return };
        let sandbox = self.sandbox_spec(net).netns;
        if let Err(e) = dns.ensure(net, &sandbox).await {
            tracing::warn!(network = %net.name, error = %e, "DNS server not started; the next reconcile retries");
        }
    }

    /// Stop network `id`'s server, sockets closed, before its sandbox goes.
    pub(super) async fn stop_dns(&self, id: &NetworkId) {
        if let Some(dns) = &self.dns {
            dns.stop(id).await;
        }
    }

    /// Stop the server of the sandbox at `path`.
    pub(super) async fn stop_dns_of(&self, path: &Path) {
        let id = path
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(spec::sandbox_network)
            .map(|(_, id)| id);
        if let Some(id) = id {
            self.stop_dns(&id).await;
        }
    }

    pub(super) fn dns_status(&self) -> crate::api::types::DnsStatus {
        let stats = crate::dns::stats();
        crate::api::types::DnsStatus {
            servers: self.dns.as_ref().map_or(0, |d| d.running().len()),
            upstreams: self
                .dns
                .as_ref()
                .map(|d| d.upstreams().iter().map(|a| a.to_string()).collect())
                .unwrap_or_default(),
            answered: stats.answered.get(),
            forwarded: stats.forwarded.get(),
            forward_failed: stats.forward_failed.get(),
            malformed: stats.malformed.get(),
        }
    }

    /// A server for every sandbox of a valid network here, and no other.
    pub(super) async fn sync_dns(&self, networks: &[Network]) {
        let Some(dns) = &self.dns else { return };
        let mut wanted = Vec::new();
        for (_, _, id) in self.sandbox_paths() {
            if let Some(net) = networks.iter().find(|n| n.id == id) {
                self.start_dns(net).await;
                wanted.push(id);
            }
        }
        for id in dns.running() {
            if !wanted.contains(&id) {
                dns.stop(&id).await;
            }
        }
    }
}
