//! The service: the single orchestrator of store and kernel on one host. Every front door
//! (API, Docker driver, CNI through the API) ends in these methods.
//!
//! Attach = (1) create the endpoint record if its address key is absent (the allocation),
//! (2) make sure the network's sandbox exists, (3) build the veth pair; on failure, undo
//! (3) and (1). Detach is the reverse. A reconcile, excluded from running at the same time
//! as attaches and detaches by one lock, repairs whatever drifted.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnetwork::Ipv4Network;
use tokio::sync::RwLock;

use super::access::{self, Caller};
use super::liveness::Liveness;
use super::sync::{Cache, Shared};
use crate::api::types::{
    AttachRequest, DetachRequest, DetachResponse, DoctorReport, DriftLine, GcRequest, GcResponse,
    NetworkDetail, NetworkRequest, NetworkSummary, PeerInfo, RemoveResponse, Status,
};
use crate::dataplane::spec::{self, EndpointSpec, SandboxSpec};
use crate::dataplane::{Dataplane, Netlink, Underlay};
use crate::error::{Error, Result};
use crate::ipam;
use crate::model::{
    fnv1a, DnsName, Encryption, Endpoint, EndpointId, IfName, Mac, Network, NetworkId, NetworkName,
};
use crate::netns::{self, NetNs, Opener};
use crate::peers::{self, PeerState, Tables};
use crate::reconcile::{self, DesiredNetwork, Finding, Observed, Repair};
use crate::store::{keys, Compare, KeyValue, Revision, Store, TxnOp};
use crate::validate::{self, Rejected};

mod cni;
mod dns;
mod docker;
mod egress;
mod ipsec;
mod tunnel;
pub use docker::Versioned;
pub use tunnel::Tunnel;

/// What the service needs to know about its host.
#[derive(Clone, Debug)]
pub struct HostConfig {
    pub host_id: String,
    pub run_dir: PathBuf,
    pub underlay: Underlay,
    /// How the store was named on the command line (for `status`).
    pub store_name: String,
}

/// The orchestrator of one host, over a store and a dataplane (the kernel, or a fake in
/// tests).
pub struct Service<S: Store, D: Dataplane = Netlink> {
    store: S,
    dp: D,
    cfg: HostConfig,
    /// Attaches and detaches share it; a reconcile takes it alone.
    kernel: RwLock<()>,
    /// Networks (by id) whose sandbox this process has already made sure of, with the
    /// encryption it was made for: a record that says otherwise goes the slow way (and is
    /// refused there if it would turn encryption off).
    ensured: Mutex<HashMap<NetworkId, Encryption>>,
    sandbox_locks: Mutex<HashMap<NetworkId, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    last_reconcile: Mutex<(usize, u64)>,
    /// The store as the watch sees it, and who is alive.
    shared: std::sync::Arc<Shared>,
    liveness: std::sync::Arc<Liveness>,
    /// Per network id: the VXLAN device index and the tables last programmed into it, so a
    /// change costs only its difference (the kernel is read back on full passes).
    programmed: tokio::sync::Mutex<HashMap<NetworkId, (u32, Tables)>>,
    /// Veth pairs of released CNI attachments still being deleted in the background.
    teardowns: cni::Teardowns,
    /// What this daemon attached itself: the only endpoints a reconcile rebuilds.
    journal: super::journal::Journal,
    tunnel: Tunnel,
    /// Hosts that cannot be WireGuard peers, and why.
    tunnel_problems: Mutex<std::collections::BTreeMap<String, String>>,
    /// Invalid records this process warned about (key -> revision) that the watched cache
    /// did not list yet, so a listing repeated every second logs each once.
    warned: Mutex<HashMap<String, Revision>>,
    /// The DNS servers of this host's sandboxes (None: no DNS, as in unit tests).
    dns: Option<std::sync::Arc<crate::dns::Servers>>,
    /// One egress pass (uplinks and NAT table) at a time.
    egress_lock: tokio::sync::Mutex<()>,
    /// Held from the check that a host port is free until the record taking it is written.
    ports_lock: tokio::sync::Mutex<()>,
    /// What the egress pass last made of the watched cache (see `egress_on_change`).
    egress_seen: Mutex<Option<egress::Seen>>,
}

/// Lost races an allocation tolerates before giving up (each is a store round trip).
const MAX_ALLOCATION_ATTEMPTS: usize = 256;
/// At most this many keys are remembered in `Service::warned`.
const WARNED_MAX: usize = 4096;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

/// The error for a request that needs a record the store holds in an invalid form.
fn bad_record_error(r: &Rejected) -> Error {
    Error::Conflict(format!(
        "{r}; the record is skipped until it is repaired or removed"
    ))
}

/// A fresh endpoint id when the caller gives none.
/// From the OS random source: an id nobody can predict (and so claim first) from the time.
fn generate_id() -> EndpointId {
    use rand_core::{OsRng, RngCore};
    format!("ep-{:012x}", OsRng.next_u64() & 0xffff_ffff_ffff)
        .parse()
        .expect("valid id")
}

impl<S: Store, D: Dataplane> Service<S, D> {
    pub fn new(
        store: S,
        dp: D,
        cfg: HostConfig,
        shared: std::sync::Arc<Shared>,
        liveness: std::sync::Arc<Liveness>,
        tunnel: Tunnel,
    ) -> Self {
        Service {
            journal: super::journal::Journal::new(&cfg.run_dir),
            store,
            dp,
            cfg,
            kernel: RwLock::new(()),
            ensured: Mutex::new(HashMap::new()),
            sandbox_locks: Mutex::new(HashMap::new()),
            last_reconcile: Mutex::new((0, 0)),
            shared,
            liveness,
            programmed: tokio::sync::Mutex::new(HashMap::new()),
            teardowns: cni::Teardowns::default(),
            tunnel,
            tunnel_problems: Mutex::new(Default::default()),
            warned: Mutex::new(HashMap::new()),
            dns: None,
            egress_lock: Default::default(),
            ports_lock: Default::default(),
            egress_seen: Mutex::new(None),
        }
    }

    /// Serve DNS in this host's sandboxes with `servers`.
    pub fn with_dns(mut self, servers: std::sync::Arc<crate::dns::Servers>) -> Self {
        self.dns = Some(servers);
        self
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn host_id(&self) -> &str {
        &self.cfg.host_id
    }

    fn max_mtu(&self) -> u32 {
        spec::overlay_mtu(self.cfg.underlay.mtu)
    }

    fn sandbox_spec(&self, net: &Network) -> SandboxSpec {
        SandboxSpec::for_network(net, &self.cfg.run_dir, self.cfg.underlay.address)
    }

    // ----- reading the store -----

    /// The networks with a valid record (invalid ones are skipped and reported).
    pub async fn networks(&self) -> Result<Vec<Network>> {
        Ok(self.network_records().await?.0)
    }

    /// From one list of the store: the networks with a valid record, and the ids named by
    /// every network record, valid or not (read leniently: a network whose record is
    /// briefly broken keeps its sandboxes and journal entries on every host).
    async fn network_records(&self) -> Result<(Vec<Network>, HashSet<String>)> {
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
    async fn network_at(&self, name: &str) -> Result<(Network, Revision)> {
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
    async fn versioned_endpoints(&self, network: Option<&str>) -> Result<Vec<Versioned>> {
        let (prefix, networks) = match network {
            Some(n) => (keys::endpoints_of(n), vec![self.network(n).await?]),
            None => (keys::ENDPOINTS.to_string(), self.networks().await?),
        };
        let networks: HashMap<&str, &Network> =
            networks.iter().map(|n| (n.name.as_str(), n)).collect();
        let (kvs, _) = self.store.list(&prefix).await?;
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

    /// The error for a request that needs a record the store holds in an invalid form,
    /// after reporting the record like a skipped one.
    fn reject(&self, revision: Revision, r: Rejected) -> Error {
        let e = bad_record_error(&r);
        self.skip_bad(revision, r);
        e
    }

    /// The checked value, or None after reporting why the record is skipped.
    fn valid<T>(&self, kv: &KeyValue, checked: std::result::Result<T, Rejected>) -> Option<T> {
        checked.map_err(|r| self.skip_bad(kv.mod_revision, r)).ok()
    }

    /// Report a record skipped as invalid: a warning once per key and revision (the watched
    /// cache logs what it sees itself; this covers what a listing meets first).
    fn skip_bad(&self, revision: Revision, r: Rejected) {
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

    async fn local_endpoints(&self) -> Result<Vec<Endpoint>> {
        Ok(self
            .endpoints(None)
            .await?
            .into_iter()
            .filter(|e| e.host == self.cfg.host_id)
            .collect())
    }

    pub async fn status(&self) -> Result<Status> {
        let networks = self.networks().await?.len();
        let local_endpoints = self.local_endpoints().await?.len();
        let bad_records = self.shared.cache.read().expect("cache poisoned").bad.len();
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
            ipsec: self.ipsec_status(),
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

    // ----- networks -----

    /// Create a network, or return the existing one if asked again with the same options.
    pub async fn create_network(&self, req: &NetworkRequest) -> Result<Network> {
        if let Some(enc) = req.encryption {
            self.check_encryption(&req.name, enc, "create")?;
        }
        let mut held_vnis = BTreeSet::new();
        for _ in 0..5 {
            let existing = self.networks().await?;
            let net = ipam::plan_network_avoiding(req, &existing, self.max_mtu(), &held_vnis)?;
            if existing.contains(&net) {
                return Ok(net);
            }
            let name = net.name.as_str();
            let txn = self
                .store
                .txn(
                    vec![
                        Compare::Absent(keys::network(name)),
                        Compare::Absent(keys::vni(net.vni.get())),
                    ],
                    vec![
                        TxnOp::Put {
                            key: keys::network(name),
                            value: to_json(&net),
                            lease: None,
                        },
                        TxnOp::Put {
                            key: keys::vni(net.vni.get()),
                            value: name.as_bytes().to_vec(),
                            lease: None,
                        },
                    ],
                )
                .await?;
            if txn.succeeded {
                tracing::info!(network = name, vni = %net.vni, subnet = %net.subnet, "network created");
                return Ok(net);
            }
            // The name's record exists but is not a valid network: say so, do not retry.
            if let Some(Some(kv)) = txn.current.first() {
                if let Err(r) = validate::network(&kv.key, &kv.value) {
                    return Err(bad_record_error(&r));
                }
            }
            // The VNI's index entry exists with no valid network behind it: never pick it
            // again (asked for explicitly, it is a conflict).
            // (Read the networks again first: a create racing this one may have written both
            // keys since `existing` was read.)
            if txn.current.get(1).is_some_and(|c| c.is_some())
                && !self.networks().await?.iter().any(|n| n.vni == net.vni)
            {
                if req.vni.is_some() {
                    return Err(Error::Conflict(format!(
                        "VNI {} is held by an index entry ({}) with no valid network record; remove the entry or choose another VNI",
                        net.vni,
                        keys::vni(net.vni.get())
                    )));
                }
                held_vnis.insert(net.vni.get());
            }
            // Someone else wrote one of the keys in the meantime: plan again against the news.
        }
        Err(Error::Conflict(format!(
            "network {} is being changed concurrently; try again",
            req.name
        )))
    }

    /// Remove a network; with `force`, detach its endpoints first.
    pub async fn remove_network(&self, name: &str, force: bool) -> Result<RemoveResponse> {
        let (net, net_rev) = self.network_at(name).await?;
        let eps = self.versioned_endpoints(Some(name)).await?;
        if !eps.is_empty() && !force {
            let ids: Vec<String> = eps.iter().take(5).map(|e| e.ep.id.to_string()).collect();
            return Err(Error::Conflict(format!(
                "network {name} still has {} endpoint(s) ({}{}); detach them or use --force",
                eps.len(),
                ids.join(", "),
                if eps.len() > 5 { ", ..." } else { "" }
            )));
        }
        let _guard = self.kernel.read().await;
        let mut detached = Vec::new();
        for v in eps {
            self.detach_one(&net, &v).await?;
            detached.push(v.ep);
        }
        let txn = self
            .store
            .txn(
                // Only the network read above: one re-created meanwhile is not removed.
                vec![Compare::ModRevision(keys::network(name), net_rev)],
                vec![
                    TxnOp::Delete {
                        key: keys::network(name),
                    },
                    TxnOp::Delete {
                        key: keys::vni(net.vni.get()),
                    },
                ],
            )
            .await?;
        if !txn.succeeded {
            return Err(Error::Conflict(format!(
                "network {name} was changed or re-created while it was being removed; not removed"
            )));
        }
        self.ensured.lock().expect("poisoned").remove(&net.id);
        self.programmed.lock().await.remove(&net.id);
        self.journal.forget_network(&net.id);
        self.stop_dns(&net.id).await;
        self.dp
            .remove_sandbox(&self.sandbox_spec(&net).netns)
            .await?;
        self.sync_egress().await;
        tracing::info!(network = name, "network removed");
        Ok(RemoveResponse {
            removed: name.to_string(),
            detached,
        })
    }

    // ----- endpoints -----

    /// Attach a workload to a network.
    pub async fn attach(&self, req: &AttachRequest, caller: Caller) -> Result<Endpoint> {
        let ifname: IfName = req.ifname.as_deref().unwrap_or("eth0").parse()?;
        let id: EndpointId = match &req.id {
            Some(id) => id.parse()?,
            None => generate_id(),
        };
        let requested_ip = req
            .ip
            .as_deref()
            .map(|s| ipam::parse_ip("address", s))
            .transpose()?;
        let requested_mac = req.mac.as_deref().map(str::parse::<Mac>).transpose()?;
        if req.owner.as_ref().is_some_and(|o| o.len() > 128) {
            return Err(Error::Invalid("owner is longer than 128 characters".into()));
        }
        let (name, aliases) = dns_names(req)?;
        let opener = Opener::for_uid(caller.uid);
        let (workload, netns_name) = open_workload(req.netns.as_deref(), req.pid, opener).await?;
        access::check_may_attach(&workload, caller)?;
        let (net, net_rev) = self.network_at(&req.network).await?;
        if let Some(ip) = requested_ip {
            ipam::check_requested(&net, ip)?;
        }
        if let Some(mtu) = req.mtu {
            ipam::check_requested_mtu(&net, mtu)?;
        }
        if let Some(mac) = requested_mac {
            self.check_mac_free(&net, mac).await?;
        }
        let ports_held = self.check_ports(&net, &req.ports, None).await?;
        let _guard = self.kernel.read().await;
        self.ensure_sandbox(&net).await?;
        let template = Endpoint {
            network: net.name.clone(),
            network_id: net.id.clone(),
            id,
            ip: Ipv4Network::new(net.gateway, net.subnet.prefix()).expect("valid prefix"),
            // All zeros: allocate derives it from the address.
            mac: requested_mac.unwrap_or(Mac([0; 6])),
            host: self.cfg.host_id.clone(),
            ifname,
            netns: netns_name,
            netns_inode: workload.inode(),
            host_ifname: String::new(),
            created: now_secs(),
            origin: req.origin.unwrap_or_default(),
            owner: req.owner.clone(),
            mtu: req.mtu.filter(|m| *m != net.mtu),
            name,
            aliases,
            ports: req.ports.clone(),
        };
        let held = self
            .allocate(&net, template, requested_ip, Some(net_rev))
            .await?;
        let sandbox = self.sandbox_spec(&net);
        if let Err(e) = self
            .dp
            .attach(
                &sandbox,
                &EndpointSpec::for_endpoint(&net, &held.ep),
                &workload,
            )
            .await
        {
            self.release(&held).await;
            return Err(e.into());
        }
        let ep = held.ep;
        drop(ports_held);
        self.journal_record(&ep);
        self.sync_egress().await;
        tracing::info!(network = %net.name, id = %ep.id, ip = %ep.ip, "attached");
        Ok(ep)
    }

    /// Make the sandbox exist (once per process per network; the reconcile checks it later),
    /// with the peers known so far programmed before any workload's interface exists: its
    /// first ARP then finds its answer instead of waiting a second for the kernel's retry.
    async fn ensure_sandbox(&self, net: &Network) -> Result<()> {
        self.check_encryption(net.name.as_str(), net.encryption, "attach to")?;
        let id = net.id.clone();
        let spec = self.sandbox_spec(net);
        let ensured = || {
            self.ensured.lock().expect("poisoned").get(&id) == Some(&net.encryption)
                && self.dp.netns_present(&spec.netns)
        };
        if ensured() {
            return Ok(());
        }
        let lock = self
            .sandbox_locks
            .lock()
            .expect("poisoned")
            .entry(id.clone())
            .or_default()
            .clone();
        let _held = lock.lock().await;
        if ensured() {
            return Ok(());
        }
        self.remove_stale_sandboxes(net).await?;
        self.dp.ensure_sandbox(&spec).await?;
        self.ensured
            .lock()
            .expect("poisoned")
            .insert(id.clone(), net.encryption);
        self.start_dns(net).await;
        if let Err(e) = self.peer_pass(false, true, Some(net)).await {
            tracing::warn!(network = %net.name, error = %e, "programming a new sandbox's peers failed; the next pass retries");
        }
        Ok(())
    }

    /// Drop the journal entries of networks that have no record in the store at all (a
    /// record that is only invalid for a while keeps them: its endpoints are still this
    /// host's). Entries of single endpoints go with their detach or release; one left over
    /// vouches only for the very namespace this daemon attached, so it is harmless.
    fn sweep_journal(&self, present: &HashSet<String>) {
        for (net, ep) in self.journal.entries() {
            if !present.contains(&net) {
                self.journal.remove_entry(&net, &ep);
            }
        }
    }

    /// Note an endpoint this daemon attached (see `journal`); a failure only costs the
    /// reconcile's ability to rebuild it, so it is logged, not returned.
    fn journal_record(&self, ep: &Endpoint) {
        if let Err(e) = self.journal.record(ep) {
            tracing::warn!(error = %e, id = %ep.id, "recording an attachment in the run directory failed; the reconcile will not rebuild it");
        }
    }

    /// Remove the sandboxes of networks that no longer exist before building `net`'s: one
    /// left by an earlier network of the same name (or VNI) holds a VXLAN device that the
    /// new one would clash with, and must never be mistaken for it.
    ///
    /// The directory is read before the store: a sandbox built meanwhile for another network
    /// (attaches to other networks run alongside) has its record in the store by then. A
    /// sandbox whose network has any record, valid or not, is kept.
    async fn remove_stale_sandboxes(&self, net: &Network) -> Result<()> {
        let sandboxes = self.sandbox_paths();
        let (_, present) = self.network_records().await?;
        for (path, _, id) in sandboxes {
            if id != net.id && !present.contains(id.as_str()) {
                tracing::info!(sandbox = %path.display(), "removing the sandbox of a network that no longer exists");
                self.ensured.lock().expect("poisoned").remove(&id);
                self.programmed.lock().await.remove(&id);
                self.journal.forget_network(&id);
                self.stop_dns(&id).await;
                self.dp.remove_sandbox(&path).await?;
            }
        }
        Ok(())
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

    /// Take an address: the requested one, or the lowest free one, by create-if-absent on
    /// its key (and on the endpoint id's key), so no two callers anywhere get the same.
    /// Returns the record with the revision it was written at (what a release compares).
    /// With `net_rev`, the network's record must still be the one read at that revision.
    pub(super) async fn allocate(
        &self,
        net: &Network,
        mut ep: Endpoint,
        requested: Option<Ipv4Addr>,
        net_rev: Option<Revision>,
    ) -> Result<Versioned> {
        let name = net.name.as_str();
        // The addresses are the keys: no need to decode the records.
        let taken: BTreeSet<Ipv4Addr> = match requested {
            Some(_) => BTreeSet::new(),
            None => {
                let (kvs, _) = self.store.list(&keys::endpoints_of(name)).await?;
                kvs.iter()
                    .filter_map(|kv| match keys::classify(&kv.key) {
                        keys::Key::Endpoint(_, ip) => Some(ip),
                        _ => None,
                    })
                    .collect()
            }
        };
        let seed = fnv1a(format!("{}/{}", self.cfg.host_id, ep.id).as_bytes());
        // Candidates are computed as they are tried, never listed: a /8 has 16.7 million.
        let candidates: Box<dyn Iterator<Item = Ipv4Addr> + Send> = match requested {
            Some(ip) => Box::new(std::iter::once(ip)),
            None => Box::new(ipam::candidates(net, &taken, seed)),
        };
        let requested_mac = (!ep.mac.is_zero()).then_some(ep.mac);
        for (attempt, ip) in candidates.enumerate() {
            if attempt >= MAX_ALLOCATION_ATTEMPTS {
                return Err(Error::Conflict(format!(
                    "network {name}: lost the race for {attempt} free addresses in a row; try again"
                )));
            }
            ep.ip = Ipv4Network::new(ip, net.subnet.prefix()).expect("valid prefix");
            ep.mac = requested_mac.unwrap_or_else(|| Mac::from_ipv4(ip));
            ep.host_ifname = spec::host_ifname(ip);
            let txn = self
                .store
                .txn(
                    [
                        Compare::Absent(keys::endpoint(name, ip)),
                        Compare::Absent(keys::endpoint_id(name, ep.id.as_str())),
                    ]
                    .into_iter()
                    .chain(net_rev.map(|rev| Compare::ModRevision(keys::network(name), rev)))
                    .collect(),
                    vec![
                        TxnOp::Put {
                            key: keys::endpoint(name, ip),
                            value: to_json(&ep),
                            lease: None,
                        },
                        TxnOp::Put {
                            key: keys::endpoint_id(name, ep.id.as_str()),
                            value: ip.to_string().into_bytes(),
                            lease: None,
                        },
                    ],
                )
                .await?;
            if txn.succeeded {
                return Ok(Versioned {
                    ep,
                    rev: txn.revision,
                });
            }
            if net_rev.is_some()
                && txn
                    .current
                    .get(2)
                    .is_some_and(|c| c.as_ref().map(|kv| kv.mod_revision) != net_rev)
            {
                return Err(Error::Conflict(format!(
                    "network {name} was removed or changed while attaching; try again"
                )));
            }
            if txn.current.get(1).is_some_and(|c| c.is_some()) {
                return Err(Error::Conflict(format!(
                    "endpoint id {} is already in use on network {name}",
                    ep.id
                )));
            }
            if requested.is_some() {
                return Err(Error::Conflict(format!(
                    "address {ip} is already in use on network {name}"
                )));
            }
        }
        let used = self.endpoints(Some(name)).await?.len();
        Err(Error::Exhausted(format!(
            "network {name} has no free address: {used} of {} in use in subnet {}",
            ipam::capacity(net),
            net.subnet
        )))
    }

    /// Delete an endpoint's records if they are still the version read (rollback, detach,
    /// gc, rm --force): a release that comes late must never free a newer allocation of the
    /// same address. Returns whether it deleted them.
    async fn release(&self, v: &Versioned) -> bool {
        let ep = &v.ep;
        let name = ep.network.as_str();
        let key = keys::endpoint(name, ep.ip.ip());
        let ops = vec![
            TxnOp::Delete { key: key.clone() },
            TxnOp::Delete {
                key: keys::endpoint_id(name, ep.id.as_str()),
            },
        ];
        match self
            .store
            .txn(vec![Compare::ModRevision(key, v.rev)], ops)
            .await
        {
            Ok(txn) if txn.succeeded => true,
            Ok(_) => {
                tracing::warn!(id = %ep.id, ip = %ep.ip, "endpoint record changed since it was read; not released");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, id = %ep.id, "releasing endpoint records failed");
                false
            }
        }
    }

    /// Detach endpoints chosen by id, namespace path or PID.
    /// A caller other than root detaches only endpoints in network namespaces it owns.
    pub async fn detach(
        &self,
        req: &DetachRequest,
        caller: access::Caller,
    ) -> Result<DetachResponse> {
        let net = self.network(&req.network).await?;
        let opener = Opener::for_uid(caller.uid);
        let chosen = self.select_endpoints(&net, req, opener).await?;
        if caller.uid != 0 {
            for v in &chosen {
                let gone = || {
                    Error::Forbidden(format!(
                        "uid {} may not detach endpoint {}: its network namespace is gone, and only root may release it",
                        caller.uid, v.ep.id
                    ))
                };
                match NetNs::open_untrusted(Path::new(&v.ep.netns), opener).await {
                    Ok(ns) if ns.inode() == v.ep.netns_inode => {
                        access::check_may_attach(&ns, caller)?
                    }
                    Ok(_)
                    | Err(crate::netns::NetnsError::NotFound { .. })
                    | Err(crate::netns::NetnsError::NotNetns { .. }) => return Err(gone()),
                    // Busy, a timeout: say so, not that the namespace is gone.
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let _guard = self.kernel.read().await;
        for v in &chosen {
            self.detach_one(&net, v).await?;
        }
        self.sync_egress().await;
        Ok(DetachResponse {
            detached: chosen.into_iter().map(|v| v.ep).collect(),
        })
    }

    async fn select_endpoints(
        &self,
        net: &Network,
        req: &DetachRequest,
        opener: Opener,
    ) -> Result<Vec<Versioned>> {
        let all = self.versioned_endpoints(Some(net.name.as_str())).await?;
        let chosen: Vec<Versioned> = match (&req.id, &req.netns, req.pid) {
            (Some(id), None, None) => all.into_iter().filter(|v| v.ep.id.as_str() == id).collect(),
            (None, Some(_), None) | (None, None, Some(_)) => {
                let path = req.netns.clone().unwrap_or_else(|| {
                    netns::pid_netns_path(req.pid.unwrap_or(0))
                        .display()
                        .to_string()
                });
                let inode = match req.pid {
                    Some(pid) => NetNs::of_pid_untrusted(pid, opener).await?.inode(),
                    None => NetNs::open_untrusted(Path::new(&path), opener)
                        .await
                        .map(|n| n.inode())
                        .unwrap_or(0),
                };
                all.into_iter()
                    .filter(|v| (inode != 0 && v.ep.netns_inode == inode) || v.ep.netns == path)
                    .collect()
            }
            _ => {
                return Err(Error::Invalid(
                    "detach needs exactly one of id, netns or pid".into(),
                ))
            }
        };
        if chosen.is_empty() {
            let what = req
                .id
                .as_ref()
                .map(|i| format!("id {i}"))
                .or(req.netns.as_ref().map(|n| format!("netns {n}")))
                .unwrap_or_else(|| format!("pid {}", req.pid.unwrap_or(0)));
            return Err(Error::NotFound(format!(
                "no endpoint with {what} on network {}",
                net.name
            )));
        }
        if let Some(remote) = chosen.iter().find(|v| v.ep.host != self.cfg.host_id) {
            return Err(Error::Conflict(format!(
                "endpoint {} lives on host {}; detach it there",
                remote.ep.id, remote.ep.host
            )));
        }
        Ok(chosen)
    }

    async fn detach_one(&self, net: &Network, v: &Versioned) -> Result<()> {
        let ep = &v.ep;
        if ep.host == self.cfg.host_id {
            self.dp
                .detach(&self.sandbox_spec(net).netns, &ep.host_ifname)
                .await?;
            self.journal.forget(ep);
        }
        if !self.release(v).await {
            return Err(Error::Conflict(format!(
                "endpoint {} ({}) on network {} changed while it was being detached; not released",
                ep.id, ep.ip, net.name
            )));
        }
        tracing::info!(network = %net.name, id = %ep.id, ip = %ep.ip, "detached");
        Ok(())
    }

    // ----- reconcile -----

    /// Compare the kernel with the records; with `apply`, repair what differs. Returns the
    /// findings (before repair). Sandboxes and veths are compared with the store itself
    /// (authoritative, never behind an attach); peer tables with the watched cache. While
    /// the store is unreachable only the peer tables are checked.
    pub async fn reconcile(&self, apply: bool) -> Result<Vec<Finding>> {
        let _guard = self.kernel.write().await;
        let mut findings = match self.sandbox_pass(apply).await {
            Ok(f) => f,
            Err(Error::Store(e)) => {
                tracing::warn!(error = %e, "store unreachable: checking peer tables only");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        match self.egress_pass(apply).await {
            Ok(f) => findings.extend(f),
            Err(e) => tracing::warn!(error = %e, "checking egress failed"),
        }
        let peer_findings = self.peer_pass(true, apply, None).await?;
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

    async fn sandbox_pass(&self, apply: bool) -> Result<Vec<Finding>> {
        let (networks, present) = self.network_records().await?;
        let local = self.local_endpoints().await?;
        let (desired, observed) = self.desired_and_observed(&networks, &local).await?;
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
                if let Err(e) = self.repair(&f.repair, &networks, &local).await {
                    tracing::warn!(error = %e, finding = ?f.line, "repair failed");
                }
            }
            self.sweep_journal(&present);
            self.sync_dns(&networks).await;
        }
        Ok(findings)
    }

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
    async fn peer_pass(
        &self,
        full: bool,
        apply: bool,
        only: Option<&Network>,
    ) -> Result<Vec<Finding>> {
        let cache = self.shared.snapshot();
        if !cache.synced {
            return Ok(Vec::new());
        }
        let me = self.cfg.host_id.as_str();
        let reachable = self.liveness.reachable(me, &cache);
        let up = self.tunnels_up();
        let hosts = known_hosts(&cache);
        let mut programmed = self.programmed.lock().await;
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
        let mut findings = Vec::new();
        for net in nets {
            let name = &net.name.to_string();
            let allowed = self.allowed_peers(net, &reachable, &up);
            // Records of an earlier network of the same name are never programmed.
            let eps = cache.endpoints_of(name).filter(|e| e.network_id == net.id);
            let desired = peers::desired(me, eps, &hosts, &allowed);
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
            .reachable(&self.cfg.host_id, &self.shared.snapshot())
    }

    /// Every known peer with its state, as `rnet peers` shows them.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let cache = self.shared.snapshot();
        let now = now_secs();
        known_hosts(&cache)
            .into_values()
            .map(|h| PeerInfo {
                state: self.liveness.state(&self.cfg.host_id, &h.id, &cache),
                renewed_ago: cache
                    .presence
                    .get(&h.id)
                    .map(|p| now.saturating_sub(p.renewed)),
                endpoints: cache.endpoints.values().filter(|e| e.host == h.id).count(),
                tunnel: self.tunnel_status(&h),
                ipsec: self.ipsec_peer(&h),
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
            .state(&self.cfg.host_id, &req.host, &self.shared.snapshot());
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

    /// `rnet doctor`: the findings of a reconcile; with `repair`, also applied.
    pub async fn doctor(&self, repair: bool) -> Result<DoctorReport> {
        let findings = self.reconcile(repair).await?;
        let mut drift: Vec<_> = findings.into_iter().map(|f| f.line).collect();
        drift.extend(self.tunnel_drift());
        drift.extend(self.ipsec_drift().await);
        drift.extend(self.bad_record_drift());
        Ok(DoctorReport {
            networks_checked: self.shared.snapshot().networks.len(),
            drift,
        })
    }

    /// One drift line per invalid record in the store (as the watch last saw it).
    fn bad_record_drift(&self) -> Vec<DriftLine> {
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

    async fn desired_and_observed(
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
    fn sandbox_paths(&self) -> Vec<(PathBuf, String, NetworkId)> {
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
    async fn repair(
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
    async fn reattach(&self, net: &Network, ep: &Endpoint) -> Result<bool> {
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
}

/// The DNS name and aliases a request asks for, checked (nothing is allocated for a bad one).
fn dns_names(req: &AttachRequest) -> Result<(Option<DnsName>, Vec<DnsName>)> {
    let name = req.name.as_deref().map(str::parse::<DnsName>).transpose()?;
    if req.aliases.len() > DnsName::MAX_ALIASES {
        return Err(Error::Invalid(format!(
            "{} aliases given; at most {} are allowed",
            req.aliases.len(),
            DnsName::MAX_ALIASES
        )));
    }
    let aliases = req
        .aliases
        .iter()
        .map(|a| a.parse::<DnsName>())
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((name, aliases))
}

/// Open the workload's namespace from a path or a PID (exactly one), off the runtime's
/// workers and with a deadline: a caller's path may be anything (a FIFO, a hung mount).
async fn open_workload(
    netns: Option<&str>,
    pid: Option<u32>,
    opener: Opener,
) -> Result<(NetNs, String)> {
    match (netns, pid) {
        (Some(path), None) => Ok((
            NetNs::open_untrusted(Path::new(path), opener).await?,
            path.to_string(),
        )),
        (None, Some(pid)) => Ok((
            NetNs::of_pid_untrusted(pid, opener).await?,
            netns::pid_netns_path(pid).display().to_string(),
        )),
        _ => Err(Error::Invalid(
            "attach needs exactly one of netns (a path) or pid".into(),
        )),
    }
}

/// Every host ever registered (durable records), updated by live presence records.
fn known_hosts(cache: &Cache) -> std::collections::BTreeMap<String, crate::model::HostRecord> {
    let mut hosts = cache.host_info.clone();
    hosts.extend(cache.presence.iter().map(|(k, v)| (k.clone(), v.clone())));
    hosts
}

#[cfg(test)]
mod tests;
