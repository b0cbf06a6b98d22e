//! The service: the single orchestrator of store and kernel on one host. Every front door
//! (API, Docker driver, CNI through the API) ends in these methods.
//!
//! Attach = (1) create the endpoint record if its address key is absent (the allocation),
//! (2) make sure the network's sandbox exists, (3) build the veth pair; on failure, undo
//! (3) and (1). Detach is the reverse. A reconcile, excluded from running at the same time
//! as attaches and detaches by one lock, repairs whatever drifted.
//!
//! The kernel is reached only through `D: Dataplane` (`Netlink`, or the recording fake in
//! the tests). One file per job: `records` (reading the store), `networks`, `attach`,
//! `allocate`, `detach`, `reconcile` (and `rnet doctor`), `peers` (peer tables, `rnet
//! peers`, `rnet gc`), `libnetwork_endpoints` (Docker's steps), `cni`, `egress`, `dns`,
//! `tunnel` and `ipsec`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::RwLock;

use super::liveness::Liveness;
use super::sync::Shared;
use crate::dataplane::spec::{self, SandboxSpec};
use crate::dataplane::{Dataplane, Netlink, Underlay};
use crate::error::Error;
use crate::model::{Encryption, EndpointId, Network, NetworkId};
use crate::store::{Revision, Store};
use crate::validate::Rejected;
use peers::Programmed;

mod allocate;
mod attach;
mod cni;
mod detach;
mod dns;
mod egress;
mod ipsec;
mod libnetwork_endpoints;
mod networks;
mod peers;
mod reconcile;
mod records;
mod tunnel;
pub use records::Versioned;
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
    programmed: tokio::sync::Mutex<HashMap<NetworkId, Programmed>>,
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
    /// The networks whose uplink and masquerade the last egress pass left in place: an
    /// attach to one of them without published ports changes nothing egress needs.
    egress_ready: Mutex<std::collections::BTreeSet<NetworkId>>,
}

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
            egress_ready: Mutex::default(),
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
}

#[cfg(test)]
mod tests;
