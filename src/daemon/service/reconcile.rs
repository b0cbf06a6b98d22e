//! The reconcile: compare the kernel with the records (sandboxes and veths with the store,
//! peer tables with the watched cache, egress with both) and, when asked, repair what
//! differs; `rnet doctor` shows the findings.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use super::records::Records;
use super::{now_secs, Service};
use crate::api::types::{DoctorReport, DriftLine};
use crate::dataplane::spec::{self, EndpointSpec};
use crate::dataplane::Dataplane;
use crate::error::{Error, Result};
use crate::model::{Endpoint, Network, NetworkId};
use crate::netns::{NetNs, Opener};
use crate::reconcile::{self, DesiredNetwork, Finding, Observed, Repair};
use crate::store::{keys, Store};
use crate::validate;

impl<S: Store, D: Dataplane> Service<S, D> {
    /// Compare the kernel with the records; with `apply`, repair what differs. Returns the
    /// findings (before repair). Sandboxes and veths are compared with the store itself
    /// (authoritative, never behind an attach); peer tables with the watched cache. While
    /// the store is unreachable only the peer tables are checked.
    pub async fn reconcile(&self, apply: bool) -> Result<Vec<Finding>> {
        let _guard = self.kernel.write().await;
        let store_unreachable = |e| {
            tracing::warn!(error = %e, "store unreachable: checking peer tables only");
            Vec::new()
        };
        let mut findings = match self.records().await {
            Ok(records) => {
                let mut findings = match self.sandbox_pass(apply, &records).await {
                    Ok(f) => f,
                    Err(Error::Store(e)) => store_unreachable(e),
                    Err(e) => return Err(e),
                };
                match self.egress_pass(apply, Some(&records)).await {
                    Ok(f) => findings.extend(f),
                    Err(e) => tracing::warn!(error = %e, "checking egress failed"),
                }
                findings
            }
            Err(Error::Store(e)) => store_unreachable(e),
            Err(e) => return Err(e),
        };
        let peer_findings: Vec<Finding> = self
            .peer_pass(true, apply, None)
            .await?
            .iter()
            .flat_map(|(network, diff)| crate::reconcile::peer_findings(network, diff))
            .collect();
        if apply {
            let repaired = findings.len() + peer_findings.len();
            if repaired > 0 {
                tracing::info!(findings = repaired, "reconciled");
            }
            *self.last_reconcile.lock().expect("poisoned") = (repaired, now_secs());
        }
        findings.extend(peer_findings);
        Ok(findings)
    }

    pub(super) async fn sandbox_pass(
        &self,
        apply: bool,
        records: &Records,
    ) -> Result<Vec<Finding>> {
        let Records {
            networks,
            present,
            local,
        } = records;
        let (desired, observed) = self.desired_and_observed(networks, local).await?;
        // Not stray: the sandboxes of every network with a record, valid or not.
        let known: BTreeSet<PathBuf> = observed
            .sandboxes
            .keys()
            .filter(|path| {
                path.file_name()
                    .and_then(|f| f.to_str())
                    .and_then(spec::sandbox_network)
                    .is_some_and(|(_, id)| present.contains(id.as_str()))
            })
            .cloned()
            .collect();
        let findings = reconcile::diff(&desired, &observed, &known);
        if apply {
            for f in &findings {
                if let Err(e) = self.repair(&f.repair, networks, local).await {
                    tracing::warn!(error = %e, finding = ?f.line, "repair failed");
                }
            }
            self.sweep_journal(present);
            self.sync_dns(networks).await;
        }
        Ok(findings)
    }

    /// `rnet doctor`: the findings of a reconcile; with `repair`, also applied.
    pub async fn doctor(&self, repair: bool) -> Result<DoctorReport> {
        let findings = self.reconcile(repair).await?;
        let mut drift: Vec<_> = findings.into_iter().map(|f| f.line).collect();
        drift.extend(self.tunnel_drift());
        drift.extend(self.ipsec_drift().await);
        drift.extend(self.bad_record_drift());
        Ok(DoctorReport {
            networks_checked: self.shared.read().networks.len(),
            drift,
        })
    }

    /// One drift line per invalid record in the store (as the watch last saw it).
    pub(super) fn bad_record_drift(&self) -> Vec<DriftLine> {
        let cache = self.shared.cache.read().expect("cache poisoned");
        cache
            .bad
            .values()
            .map(|b| {
                let r = &b.rejected;
                let network = match keys::classify(&r.key) {
                    keys::Key::Network(n) => Some(n),
                    _ => keys::network_of_endpoint_key(&r.key),
                };
                DriftLine {
                    network: network.map_or("store".into(), validate::shown_key),
                    kind: "invalid".into(),
                    object: format!("{} record {}", r.kind, r.shown_key()),
                    detail: format!("skipped: {}", r.reason),
                }
            })
            .collect()
    }

    pub(super) async fn desired_and_observed(
        &self,
        networks: &[Network],
        local: &[Endpoint],
    ) -> Result<(Vec<DesiredNetwork>, Observed)> {
        let mut observed = Observed::default();
        let tunnel = crate::wireguard::tunnel_netns(&self.cfg.run_dir);
        let tunnel = self.dp.netns_present(&tunnel).then_some(tunnel.as_path());
        for (path, _, _) in self.sandbox_paths() {
            if let Some(state) = self.dp.observe_sandbox(&path, tunnel).await? {
                observed.sandboxes.insert(path, state);
            }
        }
        let mut desired = Vec::new();
        for net in networks {
            let sandbox = self.sandbox_spec(net);
            // A record with no namespace is an address held for a runtime that has not
            // joined it yet (Docker's IPAM): nothing of it is in the kernel.
            let endpoints: Vec<(Endpoint, EndpointSpec)> = local
                .iter()
                .filter(|e| e.network == net.name && !e.netns.is_empty())
                .map(|e| (e.clone(), EndpointSpec::for_endpoint(net, e)))
                .collect();
            if !endpoints.is_empty() || observed.sandboxes.contains_key(&sandbox.netns) {
                desired.push(DesiredNetwork {
                    name: net.name.to_string(),
                    sandbox,
                    endpoints,
                });
            }
        }
        Ok((desired, observed))
    }

    /// The sandbox bind mounts present in the run directory, with their network's name and id.
    pub(super) fn sandbox_paths(&self) -> Vec<(PathBuf, String, NetworkId)> {
        self.dp
            .netns_entries(&spec::netns_dir(&self.cfg.run_dir))
            .into_iter()
            .filter_map(|path| {
                let (name, id) = spec::sandbox_network(path.file_name()?.to_str()?)?;
                let name = name.to_string();
                Some((path, name, id))
            })
            .collect()
    }

    /// Apply one repair; Ok(false) when there was nothing the daemon could do.
    pub(super) async fn repair(
        &self,
        repair: &Repair,
        networks: &[Network],
        local: &[Endpoint],
    ) -> Result<bool> {
        let find_net = |name: &str| networks.iter().find(|n| n.name.as_str() == name);
        match repair {
            Repair::EnsureSandbox { network } => {
                let Some(net) = find_net(network) else {
                    return Ok(false);
                };
                self.dp.ensure_sandbox(&self.sandbox_spec(net)).await?;
                self.ensured
                    .lock()
                    .expect("poisoned")
                    .insert(net.id.clone(), net.encryption);
                self.programmed.lock().await.remove(&net.id);
            }
            // Peer tables are programmed by the peer pass that follows; egress by its own.
            Repair::SyncPeers { .. } | Repair::Egress => return Ok(false),
            Repair::RemoveSandbox { path } => {
                self.stop_dns_of(path).await;
                self.dp.remove_sandbox(path).await?
            }
            Repair::RemoveVeth {
                sandbox,
                host_ifname,
            } => self.dp.detach(sandbox, host_ifname).await?,
            Repair::FixVeth {
                sandbox,
                host_ifname,
            } => self.dp.fix_veth(sandbox, host_ifname).await?,
            Repair::Reattach { network, ip } => {
                let Some(net) = find_net(network) else {
                    return Ok(false);
                };
                let Some(ep) = local
                    .iter()
                    .find(|e| e.network == net.name && e.ip.ip() == *ip)
                else {
                    return Ok(false);
                };
                return self.reattach(net, ep).await;
            }
        }
        Ok(true)
    }

    /// Re-create a lost veth pair if this daemon attached the endpoint to that very
    /// namespace (its journal says so: a store record alone never names a namespace to plug
    /// in) and the namespace is still the same one.
    pub(super) async fn reattach(&self, net: &Network, ep: &Endpoint) -> Result<bool> {
        if !self.journal.vouches_for(ep) {
            tracing::warn!(id = %ep.id, netns = %ep.netns, "not rebuilding an endpoint this daemon did not attach to that namespace (its record alone is not trusted)");
            return Ok(false);
        }
        // The path comes from a store record: opened off the runtime, with a deadline.
        let ns = match NetNs::open_untrusted(Path::new(&ep.netns), Opener::Trusted).await {
            Ok(ns) if ns.inode() == ep.netns_inode => ns,
            _ => {
                tracing::warn!(id = %ep.id, netns = %ep.netns, "workload namespace is gone; `rnet detach` releases the endpoint");
                return Ok(false);
            }
        };
        let sandbox = self.sandbox_spec(net);
        self.dp.ensure_sandbox(&sandbox).await?;
        match self
            .dp
            .attach(&sandbox, &EndpointSpec::for_endpoint(net, ep), &ns)
            .await
        {
            Ok(()) => Ok(true),
            Err(crate::dataplane::DataplaneError::IfaceExists { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Drop the journal entries of networks that have no record in the store at all (a
    /// record that is only invalid for a while keeps them: its endpoints are still this
    /// host's). Entries of single endpoints go with their detach or release; one left over
    /// vouches only for the very namespace this daemon attached, so it is harmless.
    pub(super) fn sweep_journal(&self, present: &HashSet<String>) {
        for (net, ep) in self.journal.entries() {
            if !present.contains(&net) {
                self.journal.remove_entry(&net, &ep);
            }
        }
    }
}
