//! Unit tests of the service's decisions, without root: an embedded store in a tempdir
//! (wrapped so a test can fail any store call or lose an allocation race) and the recording
//! fake dataplane. Store calls and kernel calls are counted in one sequence (the fake's), so
//! "fail step k" means the same thing for both.

mod alloc;
mod attach;
mod cni;
mod docker;
mod peers;
mod reconcile;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use ipnetwork::Ipv4Network;

use super::allocate::MAX_ALLOCATION_ATTEMPTS;
use super::{to_json, HostConfig, Service, Tunnel};
use crate::api::types::{AttachRequest, NetworkRequest};
use crate::daemon::liveness::Liveness;
use crate::dataplane::fake::FakeDataplane;
use crate::dataplane::{spec, Underlay};
use crate::error::Error;
use crate::ipam;
use crate::model::HostRecord;
use crate::model::{Endpoint, Mac, Network};
use crate::netns::NetNs;
use crate::reconcile::Repair;
use crate::store::{keys, Compare, KeyValue, Revision, Store, TxnOp};
use crate::store::{EmbeddedStore, LeaseId, StoreError, StoreResult, TxnResult, Watch};

/// The workload namespace of every test endpoint: this process's (opening it needs no root).
pub(super) const WORKLOAD: &str = "/proc/self/ns/net";

/// The embedded store, with every call recorded as a step of the fake (failing when the fake
/// says so), and allocation races lost on demand.
#[derive(Clone)]
pub(super) struct TestStore {
    inner: EmbeddedStore,
    steps: FakeDataplane,
    /// Allocations to lose: before this many more create-if-absent writes of an endpoint
    /// key, another host takes the address.
    steal: Arc<AtomicUsize>,
    stolen: Arc<Mutex<Vec<Ipv4Addr>>>,
}

fn injected(op: &str) -> StoreError {
    StoreError::Unavailable(format!("injected failure of {op}"))
}

impl TestStore {
    fn step(&self, op: &'static str, key: &str) -> StoreResult<()> {
        match self.steps.step(op, key.to_string()) {
            true => Err(injected(op)),
            false => Ok(()),
        }
    }

    /// Lose the next `n` allocation races.
    pub(super) fn steal(&self, n: usize) {
        self.steal.store(n, Ordering::SeqCst);
    }

    pub(super) fn stolen(&self) -> Vec<Ipv4Addr> {
        self.stolen.lock().unwrap().clone()
    }

    /// Another host ("h2") takes the address `key` holds, as if it won the race.
    async fn take_first(&self, key: &str) -> StoreResult<()> {
        let keys::Key::Endpoint(net, ip) = keys::classify(key) else {
            return Ok(());
        };
        let Some(kv) = self.inner.get(&keys::network(net)).await? else {
            return Ok(());
        };
        let net: Network = serde_json::from_slice(&kv.value).expect("network record");
        let n = self.stolen.lock().unwrap().len();
        let mut ep = endpoint(&net, &format!("racer-{n}"), ip);
        ep.host = "h2".into();
        self.inner.put(key, to_json(&ep), None).await?;
        self.stolen.lock().unwrap().push(ip);
        Ok(())
    }
}

impl Store for TestStore {
    async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        self.step("store.get", key)?;
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> StoreResult<(Vec<KeyValue>, Revision)> {
        self.step("store.list", prefix)?;
        self.inner.list(prefix).await
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> StoreResult<Revision> {
        self.step("store.put", key)?;
        self.inner.put(key, value, lease).await
    }

    async fn delete(&self, key: &str) -> StoreResult<bool> {
        self.step("store.delete", key)?;
        self.inner.delete(key).await
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<TxnOp>) -> StoreResult<TxnResult> {
        let first = match compares.first() {
            Some(Compare::Absent(k) | Compare::ModRevision(k, _) | Compare::Value(k, _)) => k,
            None => "",
        };
        self.step("store.txn", first)?;
        if let Some(Compare::Absent(k)) = compares.first() {
            let steal = self
                .steal
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if matches!(keys::classify(k), keys::Key::Endpoint(..)) && steal.is_ok() {
                self.take_first(k).await?;
            } else if let Ok(n) = steal {
                self.steal.store(n, Ordering::SeqCst); // not an allocation: keep the count
            }
        }
        self.inner.txn(compares, ops).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> StoreResult<Watch> {
        self.inner.watch(prefix, from).await
    }

    async fn lease_grant(&self, ttl: i64) -> StoreResult<LeaseId> {
        self.inner.lease_grant(ttl).await
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> StoreResult<i64> {
        self.inner.lease_keep_alive(lease).await
    }

    async fn lease_revoke(&self, lease: LeaseId) -> StoreResult<()> {
        self.inner.lease_revoke(lease).await
    }

    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        self.inner.compact(revision).await
    }
}

/// One host's service over a fresh store and a fresh fake.
pub(super) struct Harness {
    pub dir: tempfile::TempDir,
    pub dp: FakeDataplane,
    pub store: TestStore,
    pub svc: std::sync::Arc<Service<TestStore, FakeDataplane>>,
}

impl Harness {
    pub async fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let dp = FakeDataplane::new();
        let store = TestStore {
            inner: EmbeddedStore::open(&dir.path().join("store.redb")).unwrap(),
            steps: dp.clone(),
            steal: Default::default(),
            stolen: Default::default(),
        };
        let svc = std::sync::Arc::new(service(dir.path(), store.clone(), dp.clone()));
        Harness {
            dir,
            dp,
            store,
            svc,
        }
    }

    pub async fn network(&self, name: &str, subnet: &str) -> Network {
        self.svc
            .create_network(&request(name, subnet))
            .await
            .unwrap()
    }

    /// Every endpoint record and id index in the store.
    pub async fn endpoint_keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        for prefix in [keys::ENDPOINTS, keys::ENDPOINT_IDS] {
            let (kvs, _) = self.store.inner.list(prefix).await.unwrap();
            out.extend(kvs.into_iter().map(|kv| kv.key));
        }
        out
    }
}

pub(super) fn service(
    dir: &Path,
    store: TestStore,
    dp: FakeDataplane,
) -> Service<TestStore, FakeDataplane> {
    let record = HostRecord {
        id: "h1".into(),
        underlay: Ipv4Addr::new(198, 18, 0, 11),
        vtep_mac: Mac([2, 0, 0, 0, 0, 1]),
        started: 0,
        renewed: 0,
        wireguard: None,
        ipsec: None,
    };
    Service::new(
        store,
        dp,
        HostConfig {
            host_id: "h1".into(),
            run_dir: dir.join("run"),
            underlay: Underlay {
                address: record.underlay,
                ifindex: 1,
                mtu: 1500,
            },
            store_name: "embedded".into(),
        },
        Default::default(),
        std::sync::Arc::new(Liveness::new(std::time::Duration::from_secs(1))),
        Tunnel {
            wireguard: Err("not in this test".into()),
            record: tokio::sync::watch::channel(record).0,
            ipsec: Err("not in this test".into()),
        },
    )
}

pub(super) fn request(name: &str, subnet: &str) -> NetworkRequest {
    NetworkRequest {
        name: name.into(),
        subnet: subnet.into(),
        ..Default::default()
    }
}

/// An attach of this process's namespace under `ifname`.
pub(super) fn attach_req(network: &str, ifname: &str) -> AttachRequest {
    AttachRequest {
        network: network.into(),
        netns: Some(WORKLOAD.into()),
        ifname: Some(ifname.into()),
        ..Default::default()
    }
}

/// A record of endpoint `id` at `ip` on this host, with no namespace.
pub(super) fn endpoint(net: &Network, id: &str, ip: Ipv4Addr) -> Endpoint {
    Endpoint {
        network: net.name.clone(),
        network_id: net.id.clone(),
        id: id.parse().unwrap(),
        ip: Ipv4Network::new(ip, net.subnet.prefix()).unwrap(),
        mac: Mac::from_ipv4(ip),
        host: "h1".into(),
        ifname: "eth0".parse().unwrap(),
        netns: String::new(),
        netns_inode: 0,
        host_ifname: spec::host_ifname(ip),
        created: 0,
        origin: Default::default(),
        owner: None,
        mtu: None,
        name: None,
        aliases: Vec::new(),
        ports: Vec::new(),
    }
}

/// The inode of the test workload namespace.
pub(super) fn workload_inode() -> u64 {
    NetNs::open(Path::new(WORKLOAD)).unwrap().inode()
}

/// Poll `check` until it holds, for at most five seconds.
pub(super) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
