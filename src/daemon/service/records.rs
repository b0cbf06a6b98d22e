//! Reading the store: networks and endpoints whose record is valid (an invalid one is
//! skipped and reported once per revision), by name, by id, by address or from the watched
//! cache, and what `rnet status`, `rnet ls` and `rnet inspect` show.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use super::{bad_record_error, Service, WARNED_MAX};
use crate::api::types::{NetworkDetail, NetworkSummary, Status};
use crate::dataplane::Dataplane;
use crate::error::{Error, Result};
use crate::model::{Endpoint, Network, NetworkName};
use crate::store::{keys, KeyValue, Revision, Store, TxnOp};
use crate::validate::{self, Rejected};

/// An endpoint record with the store revision it was read or written at (0: unknown, then
/// the value itself is compared).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub ep: Endpoint,
    pub rev: Revision,
}

/// The records a reconcile works from (see [`Service::records`]).
pub(super) struct Records {
    /// The valid network records.
    pub networks: Vec<Network>,
    /// The id of every network record, valid or not: their sandboxes are not stray.
    pub present: HashSet<String>,
    /// This host's valid endpoints.
    pub local: Vec<Endpoint>,
}

impl<S: Store, D: Dataplane> Service<S, D> {
    /// The networks as the store watch last saw them; None until its first list succeeded.
    pub fn cached_networks(&self) -> Option<Vec<Network>> {
        let cache = self.shared.cache.read().expect("cache poisoned");
        cache
            .synced
            .then(|| cache.networks.values().cloned().collect())
    }

    /// A network from the watched cache, or from the store when the cache lacks it.
    pub async fn network_fast(&self, name: &str) -> Result<Network> {
        let cached = self
            .shared
            .cache
            .read()
            .expect("cache poisoned")
            .networks
            .get(name)
            .cloned();
        match cached {
            Some(n) => Ok(n),
            None => self.network(name).await,
        }
    }

    /// The endpoint record holding `ip` on `network`; an invalid one is an error naming it.
    pub async fn endpoint_at(&self, network: &str, ip: Ipv4Addr) -> Result<Option<Versioned>> {
        let Some(kv) = self.store.get(&keys::endpoint(network, ip)).await? else {
            return Ok(None);
        };
        let net = self.network_fast(network).await.ok();
        let ep = validate::endpoint(&kv.key, &kv.value, net.as_ref())
            .map_err(|r| self.reject(kv.mod_revision, r))?;
        Ok(Some(Versioned {
            ep,
            rev: kv.mod_revision,
        }))
    }

    /// The networks with a valid record (invalid ones are skipped and reported).
    pub async fn networks(&self) -> Result<Vec<Network>> {
        Ok(self.network_records().await?.0)
    }

    /// From one list of the store: the networks with a valid record, and the ids named by
    /// every network record, valid or not (read leniently: a network whose record is
    /// briefly broken keeps its sandboxes and journal entries on every host).
    pub(super) async fn network_records(&self) -> Result<(Vec<Network>, HashSet<String>)> {
        let (kvs, _) = self.store.list(keys::NETWORKS).await?;
        let valid = kvs
            .iter()
            .filter_map(|kv| self.valid(kv, validate::network(&kv.key, &kv.value)))
            .collect();
        let ids = kvs
            .iter()
            .filter_map(|kv| {
                let v: serde_json::Value = serde_json::from_slice(&kv.value).ok()?;
                v.get("id")?.as_str().map(str::to_string)
            })
            .collect();
        Ok((valid, ids))
    }

    /// One network; an invalid record is an error that names the problem.
    pub async fn network(&self, name: &str) -> Result<Network> {
        Ok(self.network_at(name).await?.0)
    }

    /// One network with its record's revision (what an allocation compares, so an address
    /// is never taken in a network removed or re-created meanwhile).
    pub(super) async fn network_at(&self, name: &str) -> Result<(Network, Revision)> {
        let key_name: NetworkName = name.parse()?;
        match self.store.get(&keys::network(key_name.as_str())).await? {
            Some(kv) => validate::network(&kv.key, &kv.value)
                .map(|n| (n, kv.mod_revision))
                .map_err(|r| self.reject(kv.mod_revision, r)),
            None => Err(Error::NotFound(format!("network {name} does not exist"))),
        }
    }

    /// Endpoints of one network, or of all networks: those whose record is valid and fits
    /// its network's (the others are skipped and reported).
    pub async fn endpoints(&self, network: Option<&str>) -> Result<Vec<Endpoint>> {
        Ok(self
            .versioned_endpoints(network)
            .await?
            .into_iter()
            .map(|v| v.ep)
            .collect())
    }

    /// Valid endpoints with the revision of their record, for changes that must compare it.
    pub(super) async fn versioned_endpoints(
        &self,
        network: Option<&str>,
    ) -> Result<Vec<Versioned>> {
        let (prefix, networks) = match network {
            Some(n) => (keys::endpoints_of(n), vec![self.network(n).await?]),
            None => (keys::ENDPOINTS.to_string(), self.networks().await?),
        };
        self.listed_endpoints(&prefix, &networks).await
    }

    /// What a reconcile compares the kernel with, read from the store once for both of its
    /// passes: every host reads every host's endpoints at every resync, and at 50,000 one
    /// such read is a good part of a second (the start's list of the whole store: 0.7 s).
    pub(super) async fn records(&self) -> Result<Records> {
        let (networks, present) = self.network_records().await?;
        let local = self
            .listed_endpoints(keys::ENDPOINTS, &networks)
            .await?
            .into_iter()
            .map(|v| v.ep)
            .filter(|e| e.host == self.cfg.host_id)
            .collect();
        Ok(Records {
            networks,
            present,
            local,
        })
    }

    /// The valid endpoints under `prefix`, each checked against its network among
    /// `networks` (the valid network records).
    async fn listed_endpoints(&self, prefix: &str, networks: &[Network]) -> Result<Vec<Versioned>> {
        let networks: HashMap<&str, &Network> =
            networks.iter().map(|n| (n.name.as_str(), n)).collect();
        let (kvs, _) = self.store.list(prefix).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| {
                let net = keys::network_of_endpoint_key(&kv.key).and_then(|n| networks.get(n));
                let ep = self.valid(kv, validate::endpoint(&kv.key, &kv.value, net.copied()))?;
                Some(Versioned {
                    ep,
                    rev: kv.mod_revision,
                })
            })
            .collect())
    }

    /// The endpoint with id `id` on `network`, with its record's revision (through the id
    /// index; an index left without its record is dropped). Shared by every front door.
    pub async fn endpoint_by_id(&self, network: &str, id: &str) -> Result<Option<Versioned>> {
        let Some(kv) = self.store.get(&keys::endpoint_id(network, id)).await? else {
            return Ok(None);
        };
        // An invalid index or record is skipped: the endpoint is unknown here.
        let Some(ip) = self.valid(&kv, validate::endpoint_id_index(&kv.key, &kv.value)) else {
            return Ok(None);
        };
        match self.store.get(&keys::endpoint(network, ip)).await? {
            Some(kv) => {
                let net = match self.network_fast(network).await {
                    Ok(n) => Some(n),
                    Err(Error::NotFound(_) | Error::Conflict(_)) => None,
                    Err(e) => return Err(e),
                };
                let checked = validate::endpoint(&kv.key, &kv.value, net.as_ref());
                let Some(ep) = self.valid(&kv, checked) else {
                    return Ok(None);
                };
                Ok((ep.id.as_str() == id).then_some(Versioned {
                    ep,
                    rev: kv.mod_revision,
                }))
            }
            None => {
                let del = TxnOp::Delete {
                    key: keys::endpoint_id(network, id),
                };
                self.store.txn(vec![], vec![del]).await?;
                Ok(None)
            }
        }
    }

    /// The error for a request that needs a record the store holds in an invalid form,
    /// after reporting the record like a skipped one.
    pub(super) fn reject(&self, revision: Revision, r: Rejected) -> Error {
        let e = bad_record_error(&r);
        self.skip_bad(revision, r);
        e
    }

    /// The checked value, or None after reporting why the record is skipped.
    pub(super) fn valid<T>(
        &self,
        kv: &KeyValue,
        checked: std::result::Result<T, Rejected>,
    ) -> Option<T> {
        checked.map_err(|r| self.skip_bad(kv.mod_revision, r)).ok()
    }

    /// Report a record skipped as invalid: a warning once per key and revision (the watched
    /// cache logs what it sees itself; this covers what a listing meets first).
    pub(super) fn skip_bad(&self, revision: Revision, r: Rejected) {
        let cache = self.shared.cache.read().expect("cache poisoned");
        if cache
            .bad
            .get(&r.key)
            .is_some_and(|b| b.revision == revision)
        {
            return;
        }
        let mut warned = self.warned.lock().expect("poisoned");
        if warned.get(&r.key) == Some(&revision) {
            return;
        }
        if warned.len() >= WARNED_MAX {
            warned.retain(|k, _| !cache.bad.contains_key(k));
            if warned.len() >= WARNED_MAX {
                warned.clear();
            }
        }
        tracing::warn!(key = %r.shown_key(), revision, reason = %r.reason, "skipping an invalid store record");
        warned.insert(r.key, revision);
    }

    pub(super) async fn local_endpoints(&self) -> Result<Vec<Endpoint>> {
        Ok(self
            .endpoints(None)
            .await?
            .into_iter()
            .filter(|e| e.host == self.cfg.host_id)
            .collect())
    }

    /// The counts come from the watched cache once it is loaded: asking the store would
    /// read every host's endpoints (at 10,000, a tenth of a second) to count this host's.
    pub async fn status(&self) -> Result<Status> {
        let cached = {
            let cache = self.shared.read();
            cache.synced.then(|| {
                let me = self.cfg.host_id.as_str();
                (
                    cache.networks.len(),
                    cache.endpoints.values().filter(|e| e.host == me).count(),
                )
            })
        };
        let (networks, local_endpoints) = match cached {
            Some(counts) => counts,
            None => (
                self.networks().await?.len(),
                self.local_endpoints().await?.len(),
            ),
        };
        let bad_records = self.shared.read().bad.len();
        let (changes, at) = *self.last_reconcile.lock().expect("poisoned");
        Ok(Status {
            api_version: crate::api::types::API_VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
            host_id: self.cfg.host_id.clone(),
            underlay: self.cfg.underlay.address,
            underlay_mtu: self.cfg.underlay.mtu,
            store: self.cfg.store_name.clone(),
            networks,
            local_endpoints,
            last_reconcile_changes: changes,
            last_reconcile_at: at,
            bad_records,
            wireguard: self.wireguard_status(),
            dns: self.dns_status(),
            ipsec: self.ipsec_status().into(),
        })
    }

    pub async fn list_networks(&self) -> Result<Vec<NetworkSummary>> {
        let eps = self.endpoints(None).await?;
        Ok(self
            .networks()
            .await?
            .into_iter()
            .map(|n| NetworkSummary {
                endpoints: eps.iter().filter(|e| e.network == n.name).count(),
                network: n,
            })
            .collect())
    }

    pub async fn inspect(&self, name: &str) -> Result<NetworkDetail> {
        let network = self.network(name).await?;
        let endpoints = self.endpoints(Some(name)).await?;
        Ok(NetworkDetail { network, endpoints })
    }
}
