//! The daemon's view of the store, kept current by list + watch.
//!
//! List everything under `/rnet/v1/`, then watch from the list's revision + 1. When the
//! watch breaks (store restarted, connection lost), resume from the last revision seen;
//! when the store says that history is compacted, list again. While the store is
//! unreachable the cache keeps its last state: losing the store never flushes the kernel.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::model::{Endpoint, HostRecord, Network};
use crate::store::keys::{self, Key};
use crate::store::{Event, EventKind, KeyValue, Revision, Store, WatchMessage};

/// The records the peer tables are computed from.
#[derive(Clone, Debug, Default)]
pub struct Cache {
    /// The store revision the cache reflects.
    pub revision: Revision,
    /// Whether a list has succeeded since the daemon started.
    pub synced: bool,
    pub networks: BTreeMap<String, Network>,
    /// By endpoint key, so one network's endpoints are a contiguous range.
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Hosts whose daemon's presence record lives.
    pub presence: BTreeMap<String, HostRecord>,
    /// Every host's last known record (durable).
    pub host_info: BTreeMap<String, HostRecord>,
}

impl Cache {
    /// The endpoints of one network.
    pub fn endpoints_of<'a>(&'a self, network: &str) -> impl Iterator<Item = &'a Endpoint> + 'a {
        let prefix = keys::endpoints_of(network);
        self.endpoints
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, e)| e)
    }

    /// Replace everything with a fresh list.
    pub fn load(&mut self, kvs: &[KeyValue], revision: Revision) {
        *self = Cache {
            revision,
            synced: true,
            ..Default::default()
        };
        for kv in kvs {
            self.put(kv);
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
        match keys::classify(&kv.key) {
            Key::Network(name) => decode(kv)
                .map(|n| self.networks.insert(name.to_string(), n))
                .is_some(),
            Key::Endpoint(..) => decode(kv)
                .map(|e| self.endpoints.insert(kv.key.clone(), e))
                .is_some(),
            Key::Host(id) => match decode::<HostRecord>(kv) {
                Some(h) => {
                    let old = self.presence.insert(id.to_string(), h.clone());
                    old.is_none_or(|o| o.underlay != h.underlay)
                }
                None => false,
            },
            Key::HostInfo(id) => decode(kv)
                .map(|h| self.host_info.insert(id.to_string(), h))
                .is_some(),
            Key::Other => false,
        }
    }

    fn delete(&mut self, key: &str) -> bool {
        match keys::classify(key) {
            Key::Network(name) => self.networks.remove(name).is_some(),
            Key::Endpoint(..) => self.endpoints.remove(key).is_some(),
            Key::Host(id) => self.presence.remove(id).is_some(),
            Key::HostInfo(id) => self.host_info.remove(id).is_some(),
            Key::Other => false,
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    match serde_json::from_slice(&kv.value) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "ignoring undecodable record");
            None
        }
    }
}

/// The cache shared by the sync task (writer) and everyone else (readers), with a signal
/// for relevant changes.
#[derive(Default)]
pub struct Shared {
    pub cache: RwLock<Cache>,
    pub changed: Notify,
}

impl Shared {
    pub fn snapshot(&self) -> Cache {
        self.cache.read().expect("cache poisoned").clone()
    }
}

/// Keep `shared` in line with the store, forever.
pub async fn run<S: Store>(store: S, shared: Arc<Shared>) {
    let mut backoff = Backoff::default();
    let mut resume_from: Option<Revision> = None;
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
                    shared.changed.notify_one();
                    tracing::info!(revision = rev, keys = kvs.len(), "store listed");
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
            Ended::Compacted => resume_from = None,
            Ended::Lost(last) => {
                resume_from = Some(last);
                backoff.wait().await;
            }
            Ended::Healthy(last) => {
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
mod tests {
    use super::*;
    use crate::model::Mac;

    fn kv(key: String, value: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            value,
            create_revision: 1,
            mod_revision: 1,
            lease: 0,
        }
    }

    fn host(id: &str, underlay: &str, renewed: u64) -> Vec<u8> {
        serde_json::to_vec(&HostRecord {
            id: id.into(),
            underlay: underlay.parse().unwrap(),
            vtep_mac: Mac::from_name(0x56, id),
            started: 0,
            renewed,
            wireguard: None,
        })
        .unwrap()
    }

    #[test]
    fn renewals_are_not_relevant_but_arrivals_and_departures_are() {
        let mut c = Cache::default();
        let put = |k: String, v: Vec<u8>| Event {
            kind: EventKind::Put,
            kv: kv(k, v),
        };
        assert!(c.apply(2, &[put(keys::host("h2"), host("h2", "198.18.0.12", 1))]));
        assert!(
            !c.apply(3, &[put(keys::host("h2"), host("h2", "198.18.0.12", 2))]),
            "a renewal changes no table"
        );
        assert!(c.apply(
            4,
            &[Event {
                kind: EventKind::Delete,
                kv: kv(keys::host("h2"), vec![])
            }]
        ));
        assert_eq!(c.revision, 4);
        assert!(c.presence.is_empty());
        assert!(
            !c.apply(5, &[put(keys::host("h3"), b"garbage".to_vec())]),
            "undecodable records are ignored"
        );
    }

    #[test]
    fn endpoints_of_one_network_do_not_leak_into_a_prefix_sibling() {
        let mut c = Cache::default();
        let ep = |net: &str, ip: &str| {
            let ip: std::net::Ipv4Addr = ip.parse().unwrap();
            let e = Endpoint {
                network_id: "00000000000000aa".parse().unwrap(),
                network: net.parse().unwrap(),
                id: "x".parse().unwrap(),
                ip: ipnetwork::Ipv4Network::new(ip, 24).unwrap(),
                mac: Mac::from_ipv4(ip),
                host: "h1".into(),
                ifname: "eth0".parse().unwrap(),
                netns: String::new(),
                netns_inode: 0,
                host_ifname: String::new(),
                created: 0,
                origin: Default::default(),
                owner: None,
                mtu: None,
            };
            kv(keys::endpoint(net, ip), serde_json::to_vec(&e).unwrap())
        };
        c.load(
            &[
                ep("a", "10.0.0.2"),
                ep("a2", "10.0.0.3"),
                ep("a", "10.0.0.4"),
            ],
            9,
        );
        assert_eq!(c.endpoints_of("a").count(), 2);
        assert_eq!(c.endpoints_of("a2").count(), 1);
        assert!(c.synced);
    }
}
