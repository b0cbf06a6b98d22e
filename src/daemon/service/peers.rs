//! Peers: program each local network's FDB and neighbour entries from the watched cache
//! (only what changed, or the full difference with the kernel), show peers' states, and
//! release the endpoints of a host that is gone (`rnet gc`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::{now_secs, Service};
use crate::api::types::{GcRequest, GcResponse, PeerInfo};
use crate::daemon::sync::Cache;
use crate::dataplane::Dataplane;
use crate::error::{Error, Result};
use crate::model::Network;
use crate::peers::{self, PeerState};
use crate::store::{keys, Store};

impl<S: Store, D: Dataplane> Service<S, D> {
    /// Program every local network's peer tables from the cache (called on store changes
    /// and liveness changes). `full` reads the kernel back instead of trusting what was
    /// last programmed.
    pub async fn sync_peers(&self, full: bool) -> Result<usize> {
        let _guard = self.kernel.read().await;
        self.egress_on_change().await;
        let changed = self.peer_pass(full, true, None).await?;
        Ok(changed.iter().map(|(_, d)| d.len()).sum())
    }

    /// Compare (and with `apply`, program) the peer tables of every local network; returns
    /// each network's differences (found, or programmed). `only`: just that network, whether
    /// or not the cache shows a local endpoint on it yet.
    ///
    /// A network programmed before, from the same hosts and the same list of the store, costs
    /// only the endpoints that changed since (the cache journals them); anything else (a
    /// full pass, a host that came or went, a fresh list) plans the network anew.
    pub(super) async fn peer_pass(
        &self,
        full: bool,
        apply: bool,
        only: Option<&Network>,
    ) -> Result<Vec<(String, peers::TableDiff)>> {
        let me = self.cfg.host_id.as_str();
        let up = self.tunnels_up();
        // Held to the end: passes run one at a time, each from where the last one left off.
        let mut programmed = self.programmed.lock().await;
        // Only a pass that keeps what it programs takes the journal. Changes journalled after
        // this are seen twice (read now, and taken by the next pass): harmless.
        let touched = if apply {
            let mut cache = self.shared.cache.write().expect("cache poisoned");
            cache.take_touched(only.map(|n| n.name.as_str()))
        } else {
            BTreeSet::new()
        };
        // Plans are made under the read lock, never across an await, and the cache is never
        // cloned (at 10,000 endpoints a copy costs more than the whole pass).
        let work: Vec<Work> = {
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
            let nets: Vec<&Network> = local
                .iter()
                .filter_map(|name| only.or_else(|| cache.networks.get(name)))
                .collect();
            if only.is_none() {
                programmed.retain(|id, _| nets.iter().any(|n| &n.id == id));
            }
            nets.into_iter()
                .map(|net| {
                    let vteps = peers::vteps(&hosts, &self.allowed_peers(net, &reachable, &up));
                    let last = if apply {
                        programmed.remove(&net.id)
                    } else if !full {
                        programmed.get(&net.id).cloned()
                    } else {
                        None // compared with the kernel
                    };
                    let (ifindex, against) = match last {
                        Some(mut p)
                            if apply
                                && !full
                                && p.generation == cache.generation
                                && p.vteps == vteps =>
                        {
                            let changes = touched_in(&touched, &net.name).map(|(key, ip)| {
                                let remote = cache
                                    .endpoints
                                    .get(key)
                                    .filter(|e| e.network_id == net.id)
                                    .and_then(|e| peers::Remote::of(me, e, &vteps));
                                (ip, remote)
                            });
                            let diff = p.plan.update(changes);
                            return Work {
                                net: net.clone(),
                                programmed: p,
                                against: Against::Changes(diff),
                            };
                        }
                        Some(p) if !full => (p.ifindex, Against::Tables(p.plan.tables())),
                        // The device's index comes with what the kernel holds.
                        _ => (0, Against::Kernel),
                    };
                    // Records of an earlier network of the same name are never programmed.
                    let eps = cache
                        .endpoints_of(net.name.as_str())
                        .filter(|e| e.network_id == net.id);
                    Work {
                        net: net.clone(),
                        programmed: Programmed {
                            ifindex,
                            plan: peers::Plan::new(me, eps, &vteps),
                            vteps,
                            generation: cache.generation,
                        },
                        against,
                    }
                })
                .collect()
        };
        let mut found = Vec::new();
        for work in work {
            let Work {
                net,
                programmed: mut now,
                against,
            } = work;
            let name = &net.name.to_string();
            let sandbox = self.sandbox_spec(&net).netns;
            let diff = match against {
                Against::Changes(diff) => diff,
                Against::Tables(last) => peers::diff(&now.plan.tables(), &last),
                Against::Kernel => match self
                    .dp
                    .observe_tables(&sandbox, &net.name.vxlan_ifname())
                    .await?
                {
                    Some((ifindex, observed)) => {
                        now.ifindex = ifindex;
                        peers::diff(&now.plan.tables(), &observed)
                    }
                    None => continue,
                },
            };
            if diff.is_empty() {
                if apply {
                    programmed.insert(net.id.clone(), now);
                }
                continue;
            }
            // A plan whose changes the kernel refused in part is not kept: the next pass reads
            // the kernel back.
            if apply && self.dp.apply_tables(&sandbox, now.ifindex, &diff).await? == 0 {
                tracing::debug!(network = %name, changes = diff.len(), "peer tables programmed");
                programmed.insert(net.id.clone(), now);
            }
            found.push((name.clone(), diff));
        }
        Ok(found)
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

/// What the peer programmer last wrote into one network's VXLAN device, and what that was
/// planned from: while the hosts and the store's list are the same, a pass applies only the
/// endpoints that changed.
#[derive(Clone, Debug)]
pub(super) struct Programmed {
    ifindex: u32,
    plan: peers::Plan,
    /// The VTEP of every host whose entries are programmed.
    vteps: BTreeMap<String, Ipv4Addr>,
    /// The cache's list the plan was made from (`Cache::generation`).
    generation: u64,
}

/// One network's share of a peer pass.
struct Work {
    net: Network,
    /// What will be programmed once the change is applied.
    programmed: Programmed,
    against: Against,
}

/// What the new plan is compared with.
enum Against {
    /// Nothing: the change is already known (planned from the journal).
    Changes(peers::TableDiff),
    /// What was last programmed.
    Tables(peers::Tables),
    /// What the kernel holds, read back.
    Kernel,
}

/// The endpoints of `network` among journalled keys, with their addresses.
fn touched_in<'a>(
    touched: &'a BTreeSet<String>,
    network: &crate::model::NetworkName,
) -> impl Iterator<Item = (&'a String, Ipv4Addr)> + 'a {
    let prefix = keys::endpoints_of(network.as_str());
    touched
        .range(prefix.clone()..)
        .take_while(move |k| k.starts_with(&prefix))
        .filter_map(|k| match keys::classify(k) {
            keys::Key::Endpoint(_, ip) => Some((k, ip)),
            _ => None,
        })
}

/// Every host ever registered (durable records), updated by live presence records.
fn known_hosts(cache: &Cache) -> std::collections::BTreeMap<String, crate::model::HostRecord> {
    let mut hosts = cache.host_info.clone();
    hosts.extend(cache.presence.iter().map(|(k, v)| (k.clone(), v.clone())));
    hosts
}
