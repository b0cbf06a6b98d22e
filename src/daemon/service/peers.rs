//! Peers: program each local network's FDB and neighbour entries from the watched cache
//! (only what changed, or the full difference with the kernel), show peers' states, and
//! release the endpoints of a host that is gone (`rnet gc`).

use std::collections::BTreeSet;

use super::{now_secs, Service};
use crate::api::types::{GcRequest, GcResponse, PeerInfo};
use crate::daemon::sync::Cache;
use crate::dataplane::Dataplane;
use crate::error::{Error, Result};
use crate::model::Network;
use crate::peers::{self, PeerState};
use crate::reconcile::{self, Finding};
use crate::store::{keys, Store};

impl<S: Store, D: Dataplane> Service<S, D> {
    /// Program every local network's peer tables from the cache (called on store changes
    /// and liveness changes). `full` reads the kernel back instead of trusting what was
    /// last programmed.
    pub async fn sync_peers(&self, full: bool) -> Result<usize> {
        let _guard = self.kernel.read().await;
        self.egress_on_change().await;
        Ok(self.peer_pass(full, true, None).await?.len())
    }

    /// Compare (and with `apply`, program) the peer tables of every local network.
    /// `only`: just that network, whether or not the cache shows a local endpoint on it yet.
    pub(super) async fn peer_pass(
        &self,
        full: bool,
        apply: bool,
        only: Option<&Network>,
    ) -> Result<Vec<Finding>> {
        let me = self.cfg.host_id.as_str();
        let up = self.tunnels_up();
        // Each network's desired tables, computed under the read lock: the cache is never
        // cloned (at 10,000 endpoints a copy costs more than the whole pass).
        let plans: Vec<(Network, peers::Tables)> = {
            let cache = self.shared.read();
            if !cache.synced {
                return Ok(Vec::new());
            }
            let reachable = self.liveness.reachable(me, &cache);
            let hosts = known_hosts(&cache);
            let local: BTreeSet<String> = match only {
                Some(net) => [net.name.to_string()].into(),
                None => cache
                    .endpoints
                    .values()
                    .filter(|e| e.host == me)
                    .map(|e| e.network.to_string())
                    .collect(),
            };
            local
                .iter()
                .filter_map(|name| only.or_else(|| cache.networks.get(name)))
                .map(|net| {
                    let allowed = self.allowed_peers(net, &reachable, &up);
                    // Records of an earlier network of the same name are never programmed.
                    let eps = cache
                        .endpoints_of(net.name.as_str())
                        .filter(|e| e.network_id == net.id);
                    (net.clone(), peers::desired(me, eps, &hosts, &allowed))
                })
                .collect()
        };
        let mut programmed = self.programmed.lock().await;
        if only.is_none() {
            programmed.retain(|id, _| plans.iter().any(|(n, _)| &n.id == id));
        }
        let mut findings = Vec::new();
        for (net, desired) in plans {
            let net = &net;
            let name = &net.name.to_string();
            let sandbox = self.sandbox_spec(net).netns;
            let (ifindex, observed) = match programmed.get(&net.id) {
                Some(p) if !full => p.clone(),
                _ => match self
                    .dp
                    .observe_tables(&sandbox, &net.name.vxlan_ifname())
                    .await?
                {
                    Some(o) => o,
                    None => continue,
                },
            };
            let diff = peers::diff(&desired, &observed);
            if !diff.is_empty() {
                findings.extend(reconcile::peer_findings(name, &diff));
                if !apply {
                    continue;
                }
                if self.dp.apply_tables(&sandbox, ifindex, &diff).await? > 0 {
                    programmed.remove(&net.id); // read the kernel back next time
                    continue;
                }
                tracing::debug!(network = %name, changes = diff.len(), "peer tables programmed");
            }
            programmed.insert(net.id.clone(), (ifindex, desired));
        }
        Ok(findings)
    }

    /// The hosts whose entries are programmed now.
    pub fn reachable(&self) -> BTreeSet<String> {
        self.liveness
            .reachable(&self.cfg.host_id, &self.shared.read())
    }

    /// Every known peer with its state, as `rnet peers` shows them.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let cache = self.shared.read();
        let now = now_secs();
        known_hosts(&cache)
            .into_values()
            .map(|h| PeerInfo {
                state: self.liveness.state(&self.cfg.host_id, &h.id, &cache).into(),
                renewed_ago: cache
                    .presence
                    .get(&h.id)
                    .map(|p| now.saturating_sub(p.renewed)),
                endpoints: cache.endpoints.values().filter(|e| e.host == h.id).count(),
                tunnel: self.tunnel_status(&h).map(Into::into),
                ipsec: self.ipsec_peer(&h).map(Into::into),
                host: h.id,
                underlay: h.underlay,
                vtep_mac: h.vtep_mac,
            })
            .collect()
    }

    /// Release the endpoints of a host that is gone, and forget the host.
    pub async fn gc(&self, req: &GcRequest) -> Result<GcResponse> {
        if req.host == self.cfg.host_id {
            return Err(Error::Conflict(format!(
                "host {} is this host; detach its endpoints instead",
                req.host
            )));
        }
        if self.store.get(&keys::host(&req.host)).await?.is_some() {
            return Err(Error::Conflict(format!("host {} is live (its daemon holds its presence record); gc only releases hosts that are gone", req.host)));
        }
        let state = self
            .liveness
            .state(&self.cfg.host_id, &req.host, &self.shared.read());
        if state == PeerState::DaemonDown && !req.force {
            return Err(Error::Conflict(format!(
                "host {} still answers on its underlay (its daemon is down but its workloads may run); use --force to release its addresses anyway",
                req.host
            )));
        }
        let mut released = Vec::new();
        for v in self.versioned_endpoints(None).await? {
            if v.ep.host == req.host && self.release(&v).await {
                released.push(v.ep);
            }
        }
        self.store.delete(&keys::host_info(&req.host)).await?;
        tracing::info!(host = %req.host, released = released.len(), "garbage-collected host");
        Ok(GcResponse {
            host: req.host.clone(),
            released,
        })
    }
}

/// Every host ever registered (durable records), updated by live presence records.
fn known_hosts(cache: &Cache) -> std::collections::BTreeMap<String, crate::model::HostRecord> {
    let mut hosts = cache.host_info.clone();
    hosts.extend(cache.presence.iter().map(|(k, v)| (k.clone(), v.clone())));
    hosts
}
