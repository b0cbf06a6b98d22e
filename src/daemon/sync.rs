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
                    self.endpoints.remove(key).is_some()
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
                self.endpoints.remove(key).is_some()
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
                self.endpoints.insert(key.to_string(), ep.clone()) != Some(ep)
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
                self.endpoints.remove(key).is_some()
            }
        }
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
            changed |= was_used != self.endpoints.contains_key(&key);
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

    pub fn snapshot(&self) -> Cache {
        self.cache.read().expect("cache poisoned").clone()
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
            ipsec: None,
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

    fn network(name: &str, subnet: &str) -> Vec<u8> {
        let subnet: ipnetwork::Ipv4Network = subnet.parse().unwrap();
        serde_json::to_vec(&Network {
            name: name.parse().unwrap(),
            id: "00000000000000aa".parse().unwrap(),
            vni: crate::model::Vni::new(7).unwrap(),
            subnet,
            gateway: std::net::Ipv4Addr::from(u32::from(subnet.network()) + 1),
            mtu: 1450,
            encryption: Default::default(),
            allow_overlap: false,
            egress: true,
            internal: false,
        })
        .unwrap()
    }

    fn endpoint(net: &str, ip: &str, host: &str) -> Endpoint {
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        Endpoint {
            network: net.parse().unwrap(),
            network_id: "00000000000000aa".parse().unwrap(),
            id: format!("id-{ip}").parse().unwrap(),
            ip: ipnetwork::Ipv4Network::new(ip, 24).unwrap(),
            mac: Mac::from_ipv4(ip),
            host: host.into(),
            ifname: "eth0".parse().unwrap(),
            netns: String::new(),
            netns_inode: 0,
            host_ifname: crate::dataplane::spec::host_ifname(ip),
            created: 0,
            origin: Default::default(),
            owner: None,
            mtu: None,
            name: None,
            aliases: Vec::new(),
            ports: Vec::new(),
        }
    }

    fn ep_kv(e: &Endpoint, rev: Revision) -> KeyValue {
        KeyValue {
            mod_revision: rev,
            ..kv(
                keys::endpoint(e.network.as_str(), e.ip.ip()),
                serde_json::to_vec(e).unwrap(),
            )
        }
    }

    fn put(kv: KeyValue) -> Event {
        Event {
            kind: EventKind::Put,
            kv,
        }
    }

    fn own_h1() -> Own {
        Own {
            host_id: "h1".into(),
            underlay: Some("198.18.0.11".parse().unwrap()),
        }
    }

    #[test]
    fn invalid_records_are_kept_out_and_listed_until_fixed_or_deleted() {
        let mut c = Cache::new(own_h1());
        let good = endpoint("blue", "10.9.0.5", "h2");
        let outside = endpoint("blue", "10.99.0.5", "h2");
        let mut multicast = endpoint("blue", "10.9.0.6", "h2");
        multicast.mac = "01:00:5e:00:00:06".parse().unwrap();
        // Endpoints sort before networks in a list: the load must still check them against it.
        c.load(
            &[
                ep_kv(&good, 3),
                ep_kv(&outside, 4),
                ep_kv(&multicast, 5),
                kv(keys::host("h3"), host("h3", "127.0.0.1", 1)),
                kv(keys::host_info("h4"), host("h4", "198.18.0.11", 1)),
                kv(keys::host_info("h2"), host("h2", "198.18.0.12", 1)),
                kv(keys::network("junk"), b"{not json".to_vec()),
                kv(keys::network("blue"), network("blue", "10.9.0.0/24")),
                kv("/rnet/v1/endpoint-ids/blue/x".into(), b"garbage".to_vec()),
                kv("/rnet/v1/future/thing".into(), b"anything".to_vec()),
            ],
            9,
        );
        assert_eq!(c.endpoints_of("blue").cloned().collect::<Vec<_>>(), [good]);
        assert_eq!(c.networks.keys().collect::<Vec<_>>(), ["blue"]);
        assert!(c.presence.is_empty());
        assert_eq!(c.host_info.keys().collect::<Vec<_>>(), ["h2"]);
        let bad: Vec<String> = c.bad.values().map(|b| b.rejected.to_string()).collect();
        assert_eq!(bad.len(), 6, "{bad:#?}");
        for want in [
            "endpoint /rnet/v1/endpoints/blue/10.99.0.5: address 10.99.0.5 is outside subnet",
            "endpoint /rnet/v1/endpoints/blue/10.9.0.6: MAC address 01:00:5e:00:00:06 is a multicast",
            "host /rnet/v1/hosts/h3: underlay 127.0.0.1 is a loopback address",
            "host-info /rnet/v1/host-info/h4: underlay 198.18.0.11 is this host's (h1) own address",
            "network /rnet/v1/networks/junk: undecodable record",
            "endpoint-id index /rnet/v1/endpoint-ids/blue/x: the value \"garbage\"",
        ] {
            assert!(bad.iter().any(|b| b.starts_with(want)), "{want} in {bad:#?}");
        }
        // Fixed: used again. Deleted: forgotten.
        let fixed = endpoint("blue", "10.9.0.6", "h2");
        assert!(c.apply(10, &[put(ep_kv(&fixed, 10))]));
        assert_eq!(c.endpoints_of("blue").count(), 2);
        assert!(!c
            .bad
            .contains_key(&keys::endpoint("blue", "10.9.0.6".parse().unwrap())));
        c.apply(
            11,
            &[Event {
                kind: EventKind::Delete,
                kv: kv(keys::network("junk"), vec![]),
            }],
        );
        assert!(!c.bad.contains_key(&keys::network("junk")));
        assert_eq!(c.bad.len(), 4);
        // A relist finds what the store holds now, no more.
        c.load(&[kv(keys::network("junk"), b"{not json".to_vec())], 12);
        assert_eq!(c.bad.keys().collect::<Vec<_>>(), [&keys::network("junk")]);
        assert!(c.logged.is_empty());
        assert!(c.endpoints.is_empty() && c.held.is_empty());
    }

    #[test]
    fn a_record_that_turns_bad_takes_its_valid_predecessor_out() {
        let mut c = Cache::new(own_h1());
        c.load(
            &[
                kv(keys::network("blue"), network("blue", "10.9.0.0/24")),
                kv(keys::host("h2"), host("h2", "198.18.0.12", 1)),
                ep_kv(&endpoint("blue", "10.9.0.5", "h2"), 2),
            ],
            2,
        );
        assert_eq!(c.endpoints_of("blue").count(), 1);
        let mut moved = endpoint("blue", "10.9.0.5", "h2");
        moved.ip = "10.9.0.6/24".parse().unwrap();
        moved.host_ifname = crate::dataplane::spec::host_ifname(moved.ip.ip());
        // Written under the old key, .5.
        let key = keys::endpoint("blue", "10.9.0.5".parse().unwrap());
        let mut wrong = ep_kv(&moved, 3);
        wrong.key = key.clone();
        assert!(c.apply(4, &[put(wrong)]));
        assert!(!c.endpoints.contains_key(&key));
        assert!(c.bad[&key].rejected.reason.contains("its key 10.9.0.5"));
        assert!(c.apply(5, &[put(kv(keys::host("h2"), host("h2", "127.0.0.1", 2)))]));
        assert!(
            c.presence.is_empty(),
            "a loopback underlay replaces no valid record"
        );
    }

    #[test]
    fn a_network_that_turns_bad_or_goes_takes_its_endpoints_out_until_it_is_back() {
        let mut c = Cache::new(own_h1());
        c.load(
            &[
                kv(keys::network("blue"), network("blue", "10.9.0.0/24")),
                ep_kv(&endpoint("blue", "10.9.0.5", "h2"), 2),
                ep_kv(&endpoint("blue", "10.9.0.6", "h2"), 2),
            ],
            2,
        );
        assert_eq!(c.endpoints_of("blue").count(), 2);
        // The network's subnet is rewritten: its endpoints no longer fit.
        assert!(c.apply(
            3,
            &[put(kv(
                keys::network("blue"),
                network("blue", "10.7.0.0/24")
            ))]
        ));
        assert_eq!(c.endpoints_of("blue").count(), 0);
        assert_eq!(c.bad.len(), 2);
        let rev = c.bad.values().next().unwrap().revision;
        // Garbage: they stay out, for another reason.
        assert!(c.apply(4, &[put(kv(keys::network("blue"), b"[]".to_vec()))]));
        assert!(c
            .bad
            .values()
            .filter(|b| b.rejected.kind == validate::Kind::Endpoint)
            .all(|b| b.rejected.reason == "network blue has no valid record" && b.revision == 4));
        assert_ne!(rev, 4);
        // Back as it was: they are used again.
        assert!(c.apply(
            5,
            &[put(kv(
                keys::network("blue"),
                network("blue", "10.9.0.0/24")
            ))]
        ));
        assert_eq!(c.endpoints_of("blue").count(), 2);
        assert!(c.bad.is_empty(), "{:?}", c.bad);
        // Deleted: its endpoints are held (and listed) until it returns.
        assert!(c.apply(
            6,
            &[Event {
                kind: EventKind::Delete,
                kv: kv(keys::network("blue"), vec![]),
            }]
        ));
        assert_eq!(c.endpoints_of("blue").count(), 0);
        assert_eq!(c.bad.len(), 2);
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
                host_ifname: crate::dataplane::spec::host_ifname(ip),
                created: 0,
                origin: Default::default(),
                owner: None,
                mtu: None,
                name: None,
                aliases: Vec::new(),
                ports: Vec::new(),
            };
            kv(keys::endpoint(net, ip), serde_json::to_vec(&e).unwrap())
        };
        c.load(
            &[
                kv(keys::network("a"), network("a", "10.0.0.0/24")),
                kv(keys::network("a2"), network("a2", "10.0.0.0/24")),
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

    /// On the paused clock: a store that is down is listed again after 100 ms, doubling to
    /// 1 s, and once it is back the cache is loaded within that second.
    #[tokio::test(start_paused = true)]
    async fn a_store_that_is_down_is_retried_at_doubling_delays_up_to_a_second() {
        use crate::daemon::test_store::PausedStore;
        use tokio::time::Instant;
        let store = PausedStore::new();
        store
            .put(&keys::host_info("h2"), host("h2", "198.18.0.12", 1), None)
            .await
            .unwrap();
        store.set_down(true);
        let shared = Arc::new(Shared {
            cache: RwLock::new(Cache::default()),
            changed: Notify::new(),
        });
        let task = tokio::spawn(run(store.clone(), shared.clone()));
        tokio::time::sleep(Duration::from_millis(4200)).await; // the schedule is what is tested
        let lists = store.calls("list");
        let gaps: Vec<u64> = lists
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis() as u64)
            .collect();
        assert_eq!(gaps, [100, 200, 400, 800, 1000, 1000]);
        assert!(!shared.snapshot().synced);

        store.set_down(false);
        let back = Instant::now();
        tokio::time::timeout(Duration::from_secs(1), shared.changed.notified())
            .await
            .expect("the cache is loaded within a second of the store's return");
        assert!(back.elapsed() <= Duration::from_secs(1));
        let cache = shared.snapshot();
        assert!(cache.synced);
        assert!(cache.host_info.contains_key("h2"));
        task.abort();
    }
}
