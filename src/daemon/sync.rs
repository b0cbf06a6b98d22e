//! The daemon's view of the store, kept current by list + watch.
//!
//! List everything under `/rnet/v1/`, then watch from the list's revision + 1. When the
//! watch breaks (store restarted, connection lost), resume from the last revision seen;
//! when the store says that history is compacted, list again. While the store is
//! unreachable the cache keeps its last state: losing the store never flushes the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::model::{Endpoint, HostRecord, Network};
use crate::store::keys::{self, Key};
use crate::store::{Event, EventKind, KeyValue, Revision, Store, WatchMessage};
use crate::validate::{self, Own, Rejected};

/// A record the cache skipped because it failed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRecord {
    /// The store revision at which it was found bad (its own, or that of the change to
    /// its network that made it bad).
    pub revision: Revision,
    pub rejected: Rejected,
}

/// The records the peer tables are computed from. Every record is validated on its way in
/// (`crate::validate`); one that fails is kept out and listed in `bad` instead.
#[derive(Clone, Debug, Default)]
pub struct Cache {
    /// The store revision the cache reflects.
    pub revision: Revision,
    /// Whether a list has succeeded since the daemon started.
    pub synced: bool,
    pub networks: BTreeMap<String, Network>,
    /// By endpoint key, so one network's endpoints are a contiguous range. Only endpoints
    /// that fit their network's record.
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Hosts whose daemon's presence record lives.
    pub presence: BTreeMap<String, HostRecord>,
    /// Every host's last known record (durable).
    pub host_info: BTreeMap<String, HostRecord>,
    /// The invalid records now in the store, by key.
    pub bad: BTreeMap<String, BadRecord>,
    /// Bumped by every fresh list: changes journalled before it are lost with the old cache.
    pub generation: u64,
    /// Keys of endpoints whose used record changed (came, went or changed) since the peer
    /// programmer last took them, so it can plan in proportion to the change.
    touched: BTreeSet<String>,
    /// Endpoints sound on their own that do not fit their network (or whose network has no
    /// valid record): checked again whenever that network's record changes.
    held: BTreeMap<String, Endpoint>,
    /// Who reads: some checks depend on it (no other host may claim our underlay).
    own: Own,
    /// During a re-list: what was bad before, so it is not logged again.
    logged: BTreeMap<String, BadRecord>,
}

impl Cache {
    /// An empty cache for host `own`.
    pub fn new(own: Own) -> Cache {
        Cache {
            own,
            ..Default::default()
        }
    }

    /// The endpoints of one network.
    pub fn endpoints_of<'a>(&'a self, network: &str) -> impl Iterator<Item = &'a Endpoint> + 'a {
        in_network(&self.endpoints, network).map(|(_, e)| e)
    }

    /// Replace everything with a fresh list.
    pub fn load(&mut self, kvs: &[KeyValue], revision: Revision) {
        let logged = std::mem::take(&mut self.bad);
        *self = Cache {
            revision,
            synced: true,
            generation: self.generation + 1,
            own: std::mem::take(&mut self.own),
            logged,
            ..Default::default()
        };
        // Networks before their endpoints (keys sort endpoints first).
        let (eps, rest): (Vec<&KeyValue>, Vec<&KeyValue>) = kvs
            .iter()
            .partition(|kv| kv.key.starts_with(keys::ENDPOINTS));
        for kv in rest.into_iter().chain(eps) {
            self.put(kv);
        }
        self.logged.clear();
        // Everything is new: readers of the journal start over from the generation instead.
        self.touched.clear();
    }

    /// Take the keys of the endpoints whose used record changed since they were last taken:
    /// all of them, or those of one network.
    pub fn take_touched(&mut self, network: Option<&str>) -> BTreeSet<String> {
        match network {
            None => std::mem::take(&mut self.touched),
            Some(name) => {
                let prefix = keys::endpoints_of(name);
                let taken: BTreeSet<String> = self
                    .touched
                    .range(prefix.clone()..)
                    .take_while(|k| k.starts_with(&prefix))
                    .cloned()
                    .collect();
                self.touched.retain(|k| !taken.contains(k));
                taken
            }
        }
    }

    /// Apply one revision's events; returns whether anything that shapes the peer tables
    /// changed (a presence record merely renewed does not).
    pub fn apply(&mut self, revision: Revision, events: &[Event]) -> bool {
        self.revision = revision;
        let mut relevant = false;
        for e in events {
            relevant |= match e.kind {
                EventKind::Put => self.put(&e.kv),
                EventKind::Delete => self.delete(&e.kv.key),
            };
        }
        relevant
    }

    fn put(&mut self, kv: &KeyValue) -> bool {
        let key = kv.key.as_str();
        let rev = kv.mod_revision;
        match keys::classify(key) {
            Key::Network(name) => {
                let changed = match validate::network(key, &kv.value) {
                    Ok(n) => {
                        self.bad.remove(key);
                        self.networks.insert(name.to_string(), n.clone()) != Some(n)
                    }
                    Err(r) => {
                        self.mark_bad(rev, r);
                        self.networks.remove(name).is_some()
                    }
                };
                self.recheck_endpoints(name) | changed
            }
            Key::Endpoint(..) => match validate::endpoint_alone(key, &kv.value) {
                Ok(ep) => self.place_endpoint(key, ep, Some(rev)),
                Err(r) => {
                    self.held.remove(key);
                    self.mark_bad(rev, r);
                    self.unuse_endpoint(key)
                }
            },
            Key::Host(id) => match validate::host(key, &kv.value, &self.own) {
                Ok(h) => {
                    self.bad.remove(key);
                    let old = self.presence.insert(id.to_string(), h.clone());
                    old.is_none_or(|o| o.underlay != h.underlay)
                }
                Err(r) => {
                    self.mark_bad(rev, r);
                    self.presence.remove(id).is_some()
                }
            },
            Key::HostInfo(id) => match validate::host(key, &kv.value, &self.own) {
                Ok(h) => {
                    self.bad.remove(key);
                    self.host_info.insert(id.to_string(), h);
                    true
                }
                Err(r) => {
                    self.mark_bad(rev, r);
                    self.host_info.remove(id).is_some()
                }
            },
            Key::Other => {
                // Indexes are not used from the cache, but a bad one is reported all the same;
                // keys this version does not know are left alone.
                let checked = if key.starts_with(keys::ENDPOINTS) {
                    validate::endpoint_alone(key, &kv.value).map(drop)
                } else if key.starts_with(keys::ENDPOINT_IDS) {
                    validate::endpoint_id_index(key, &kv.value).map(drop)
                } else if key.starts_with(keys::VNIS) {
                    validate::vni_index(key, &kv.value).map(drop)
                } else {
                    Ok(())
                };
                match checked {
                    Ok(()) => {
                        self.bad.remove(key);
                    }
                    Err(r) => self.mark_bad(rev, r),
                }
                false
            }
        }
    }

    fn delete(&mut self, key: &str) -> bool {
        self.bad.remove(key);
        match keys::classify(key) {
            Key::Network(name) => {
                let had = self.networks.remove(name).is_some();
                self.recheck_endpoints(name) | had
            }
            Key::Endpoint(..) => {
                self.held.remove(key);
                self.unuse_endpoint(key)
            }
            Key::Host(id) => {
                let had = self.presence.remove(id).is_some();
                if had {
                    tracing::info!(peer = %id, "peer's presence record is gone (its lease lapsed or its daemon stopped); probing its underlay");
                }
                had
            }
            Key::HostInfo(id) => self.host_info.remove(id).is_some(),
            Key::Other => false,
        }
    }

    /// Use an endpoint sound on its own if it fits its network, else hold it. `rev`: its
    /// record's revision (None: re-checked after its network changed). Returns whether the
    /// used endpoints changed.
    fn place_endpoint(&mut self, key: &str, ep: Endpoint, rev: Option<Revision>) -> bool {
        match validate::fits(key, &ep, self.networks.get(ep.network.as_str())) {
            Ok(()) => {
                self.bad.remove(key);
                self.held.remove(key);
                let changed = self.endpoints.insert(key.to_string(), ep.clone()) != Some(ep);
                if changed {
                    self.touched.insert(key.to_string());
                }
                changed
            }
            Err(r) => {
                let rev = match (rev, self.bad.get(key)) {
                    (Some(rev), _) => rev,
                    // Still bad for the same reason: the same finding, not logged again.
                    (None, Some(old)) if old.rejected == r => old.revision,
                    (None, _) => self.revision,
                };
                self.mark_bad(rev, r);
                self.held.insert(key.to_string(), ep);
                self.unuse_endpoint(key)
            }
        }
    }

    /// Stop using the endpoint at `key`; returns whether it was used.
    fn unuse_endpoint(&mut self, key: &str) -> bool {
        let used = self.endpoints.remove(key).is_some();
        if used {
            self.touched.insert(key.to_string());
        }
        used
    }

    /// Check a network's endpoints again after its record changed or went.
    fn recheck_endpoints(&mut self, network: &str) -> bool {
        let keys: Vec<String> = in_network(&self.endpoints, network)
            .chain(in_network(&self.held, network))
            .map(|(k, _)| k.clone())
            .collect();
        let mut changed = false;
        for key in keys {
            let used = self.endpoints.remove(&key);
            let was_used = used.is_some();
            let Some(ep) = used.or_else(|| self.held.remove(&key)) else {
                continue;
            };
            self.place_endpoint(&key, ep, None);
            let now_used = self.endpoints.contains_key(&key);
            if was_used != now_used {
                self.touched.insert(key);
                changed = true;
            }
        }
        changed
    }

    /// Keep a bad record out, and log it unless it was logged already at this revision.
    fn mark_bad(&mut self, revision: Revision, rejected: Rejected) {
        let bad = BadRecord { revision, rejected };
        let key = bad.rejected.key.clone();
        let seen = self.bad.get(&key).or(self.logged.get(&key));
        if seen != Some(&bad) {
            tracing::warn!(key = %bad.rejected.shown_key(), revision, reason = %bad.rejected.reason, "skipping an invalid store record");
        }
        self.bad.insert(key, bad);
    }
}

/// The entries of `map` (keyed by endpoint key) on one network.
fn in_network<'a, V>(
    map: &'a BTreeMap<String, V>,
    network: &str,
) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    let prefix = keys::endpoints_of(network);
    map.range(prefix.clone()..)
        .take_while(move |(k, _)| k.starts_with(&prefix))
}

/// The cache shared by the sync task (writer) and everyone else (readers), with a signal
/// for relevant changes.
#[derive(Default)]
pub struct Shared {
    pub cache: RwLock<Cache>,
    pub changed: Notify,
}

impl Shared {
    /// Shared state for host `own`, with an empty cache.
    pub fn new(own: Own) -> Shared {
        Shared {
            cache: RwLock::new(Cache::new(own)),
            changed: Notify::new(),
        }
    }

    /// The cache, read-locked: hold it only for pure work, never across an await (the
    /// sync task waits for it to apply the next events).
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().expect("cache poisoned")
    }
}

/// The DNS servers answer from the cache: every host's endpoints, as current as the watch.
impl crate::dns::Directory for Shared {
    fn addresses(&self, network: &str, name: &str) -> Vec<std::net::Ipv4Addr> {
        let cache = self.cache.read().expect("cache poisoned");
        crate::dns::named(cache.endpoints_of(network), name)
    }
}

/// Watches lost in a row, without an event between, before the cache lists the store again.
const RELIST_AFTER_LOST: u32 = 3;

/// Keep `shared` in line with the store, forever.
pub async fn run<S: Store>(store: S, shared: Arc<Shared>) {
    let mut backoff = Backoff::default();
    let mut resume_from: Option<Revision> = None;
    let mut lost_in_a_row = 0;
    loop {
        let from = match resume_from {
            Some(rev) => rev + 1,
            None => match store.list(keys::ROOT).await {
                Ok((kvs, rev)) => {
                    shared
                        .cache
                        .write()
                        .expect("cache poisoned")
                        .load(&kvs, rev);
                    super::metrics::get().store_listed();
                    shared.changed.notify_one();
                    tracing::info!(revision = rev, keys = kvs.len(), "store listed");
                    drop(kvs);
                    super::memory::give_back();
                    rev + 1
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listing the store failed; keeping the last known state");
                    backoff.wait().await;
                    continue;
                }
            },
        };
        match follow(&store, &shared, from).await {
            Ended::Compacted => {
                lost_in_a_row = 0;
                resume_from = None;
            }
            Ended::Lost(last) => {
                // A watch that keeps failing from the same point (its catch-up too large for
                // one gRPC message, say) is given up for a paged list.
                lost_in_a_row += 1;
                resume_from = (lost_in_a_row < RELIST_AFTER_LOST).then_some(last);
                if resume_from.is_none() {
                    lost_in_a_row = 0;
                }
                backoff.wait().await;
            }
            Ended::Healthy(last) => {
                lost_in_a_row = 0;
                resume_from = Some(last);
                backoff.reset();
            }
        }
    }
}

enum Ended {
    /// The history the watch needs is gone: list again.
    Compacted,
    /// The watch could not start or broke: resume after this revision.
    Lost(Revision),
    /// The watch delivered events and then broke: resume at once.
    Healthy(Revision),
}

/// Watch from `from` until the watch ends.
async fn follow<S: Store>(store: &S, shared: &Shared, from: Revision) -> Ended {
    let last = from - 1;
    let mut watch = match store.watch(keys::ROOT, from).await {
        Ok(w) => w,
        Err(crate::store::StoreError::Compacted {
            compact_revision, ..
        }) => {
            tracing::warn!(
                compact_revision,
                from,
                "watch history compacted; listing again"
            );
            return Ended::Compacted;
        }
        Err(e) => {
            tracing::warn!(error = %e, "watching the store failed; will resume");
            return Ended::Lost(last);
        }
    };
    let mut seen = last;
    while let Some(msg) = watch.rx.recv().await {
        match msg {
            WatchMessage::Events { revision, events } => {
                super::metrics::get().watch_events(events.len());
                let relevant = shared
                    .cache
                    .write()
                    .expect("cache poisoned")
                    .apply(revision, &events);
                seen = revision;
                if relevant {
                    shared.changed.notify_one();
                }
            }
            WatchMessage::Compacted { compact_revision } => {
                tracing::warn!(
                    compact_revision,
                    seen,
                    "watch history compacted; listing again"
                );
                return Ended::Compacted;
            }
            WatchMessage::Lost(why) => {
                tracing::warn!(reason = %why, seen, "store watch lost; resuming");
                break;
            }
        }
    }
    if seen > last {
        Ended::Healthy(seen)
    } else {
        Ended::Lost(seen)
    }
}

/// Retry delays: 100 ms doubling to 1 s, so a returning store is noticed within a second.
#[derive(Default)]
struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    async fn wait(&mut self) {
        let d = self.next.unwrap_or(Duration::from_millis(100));
        tokio::time::sleep(d).await;
        self.next = Some((d * 2).min(Duration::from_secs(1)));
    }

    fn reset(&mut self) {
        self.next = None;
    }
}

#[cfg(test)]
mod tests;
