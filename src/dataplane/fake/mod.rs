//! A recording fake of the dataplane, for tests of the service without root.
//!
//! It records every call in order, keeps a model of what would exist in the kernel
//! (sandboxes with their bridge, VXLAN device, veths and peer tables; workload interfaces;
//! uplinks; the NAT table), reads that model back the way `Netlink` reads the kernel (so
//! the reconcile finds no drift in a sandbox the fake built), and can be told to fail the
//! Nth call or every call of one operation, or to hold an operation until released.
//! Interface indices are unique across the whole model, like nothing in a real kernel, so
//! a deletion by index needs no namespace.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ipnetwork::Ipv4Network;
use tokio::sync::Semaphore;

use super::netlink::{DataplaneError, LinkState, WorkloadLink};
use super::spec::{EndpointSpec, SandboxMarker, SandboxSpec, BRIDGE};
use crate::nat::RuleImage;
use crate::peers::{TableDiff, Tables};

mod dataplane;

type Result<T> = std::result::Result<T, DataplaneError>;

/// How a sandbox knows the host namespace and the tunnel namespace (`link_netnsid`).
pub const HOST_NSID: i32 = 0;
pub const TUNNEL_NSID: i32 = 1;

/// One recorded call: the operation and what it was about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub op: &'static str,
    pub target: String,
}

/// The operations that change the model (the others only read it).
pub const MUTATING: &[&str] = &[
    "ensure_sandbox",
    "remove_sandbox",
    "attach",
    "attach_for_move",
    "detach",
    "detach_in_background",
    "fix_veth",
    "delete_link_later",
    "apply_tables",
    "ensure_uplink",
    "remove_uplink",
    "program_nat",
    "remove_tunnel_device",
];

/// The other end of a sandbox-side veth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// In a workload namespace (by inode), under this name.
    Workload(u64, String),
    /// Left in the daemon's namespace for Docker to move, under this name.
    Host(String),
}

/// One sandbox as the fake holds it.
#[derive(Clone, Debug, Default)]
pub struct FakeSandbox {
    pub links: BTreeMap<String, LinkState>,
    pub addresses: Vec<(u32, Ipv4Network)>,
    pub tables: Tables,
    /// By sandbox-side veth name.
    pub peers: BTreeMap<String, Peer>,
}

/// What the fake says exists.
#[derive(Debug, Default)]
pub struct Model {
    pub calls: Vec<Call>,
    pub sandboxes: BTreeMap<PathBuf, FakeSandbox>,
    /// Namespaces other than sandboxes that exist (the tunnel's).
    pub namespaces: BTreeSet<PathBuf>,
    /// Workload interfaces by (namespace inode, name).
    pub workload: BTreeMap<(u64, String), WorkloadLink>,
    /// Workload ends left in the daemon's namespace (Docker's Join).
    pub host_peers: BTreeSet<String>,
    /// Uplinks by host-side name, with the sandbox they lead to.
    pub uplinks: BTreeMap<String, PathBuf>,
    pub nat: Option<Vec<RuleImage>>,
    next_index: u32,
    fail_call: BTreeSet<usize>,
    fail_op: BTreeSet<&'static str>,
    holds: HashMap<&'static str, Arc<Semaphore>>,
}

impl Model {
    fn index(&mut self) -> u32 {
        self.next_index += 1;
        self.next_index + 1 // 1 is every namespace's lo
    }

    /// Remove a sandbox-side veth and its other end.
    pub fn remove_veth(&mut self, sandbox: &Path, name: &str) {
        let Some(sb) = self.sandboxes.get_mut(sandbox) else {
            return;
        };
        sb.links.remove(name);
        match sb.peers.remove(name) {
            Some(Peer::Workload(inode, ifname)) => {
                self.workload.remove(&(inode, ifname));
            }
            Some(Peer::Host(peer)) => {
                self.host_peers.remove(&peer);
            }
            None => {}
        }
    }

    /// Every sandbox-side veth of endpoints, as (sandbox, name).
    pub fn veths(&self) -> Vec<(PathBuf, String)> {
        self.sandboxes
            .iter()
            .flat_map(|(p, sb)| sb.peers.keys().map(move |n| (p.clone(), n.clone())))
            .collect()
    }
}

/// Held operations wait for this to open.
pub struct Gate(Arc<Semaphore>);

impl Gate {
    /// Let every waiting and later call through.
    pub fn open(&self) {
        self.0.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

/// The fake; clones share one model.
#[derive(Clone, Default)]
pub struct FakeDataplane {
    model: Arc<Mutex<Model>>,
}

fn injected(op: &str, target: &str) -> DataplaneError {
    DataplaneError::Netlink {
        op: format!("{op} {target}"),
        msg: "injected failure".into(),
        errno: None,
    }
}

fn no_sandbox(path: &Path) -> DataplaneError {
    DataplaneError::Netlink {
        op: format!("opening sandbox {}", path.display()),
        msg: "No such file or directory".into(),
        errno: Some(2),
    }
}

fn link(index: u32, name: &str, kind: &str, mtu: u32) -> LinkState {
    LinkState {
        index,
        name: name.to_string(),
        up: true,
        mtu,
        kind: Some(kind.to_string()),
        ..Default::default()
    }
}

impl FakeDataplane {
    pub fn new() -> Self {
        Self::default()
    }

    /// Look at or change the model (e.g. to make drift).
    pub fn with<T>(&self, f: impl FnOnce(&mut Model) -> T) -> T {
        f(&mut self.model.lock().expect("fake poisoned"))
    }

    pub fn calls(&self) -> Vec<Call> {
        self.with(|m| m.calls.clone())
    }

    /// The recorded calls that change something.
    pub fn mutations(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| MUTATING.contains(&c.op))
            .collect()
    }

    pub fn clear_calls(&self) {
        self.with(|m| m.calls.clear());
    }

    /// Fail the call with this index in `calls()` (counting from the first call ever).
    pub fn fail_call(&self, n: usize) {
        self.with(|m| m.fail_call.insert(n));
    }

    /// Fail every call of `op` until `clear_faults`.
    pub fn fail_op(&self, op: &'static str) {
        self.with(|m| m.fail_op.insert(op));
    }

    pub fn clear_faults(&self) {
        self.with(|m| {
            m.fail_call.clear();
            m.fail_op.clear();
        });
    }

    /// Make every call of `op` wait (after it is recorded, before it acts) until the gate
    /// returned opens.
    pub fn hold(&self, op: &'static str) -> Gate {
        let sem = Arc::new(Semaphore::new(0));
        self.with(|m| m.holds.insert(op, sem.clone()));
        Gate(sem)
    }

    /// Record a step of another fake (e.g. a store wrapper) in this one's sequence, so one
    /// index counts every step of an operation; true when that step is to fail.
    pub fn step(&self, op: &'static str, target: String) -> bool {
        self.record(op, target).0
    }

    fn record(&self, op: &'static str, target: String) -> (bool, Option<Arc<Semaphore>>) {
        self.with(|m| {
            let n = m.calls.len();
            let fail = m.fail_call.contains(&n) || m.fail_op.contains(op);
            m.calls.push(Call { op, target });
            (fail, m.holds.get(op).cloned())
        })
    }

    /// Record a call and apply the faults and holds set for it.
    async fn enter(&self, op: &'static str, target: String) -> Result<()> {
        let (fail, hold) = self.record(op, target.clone());
        if let Some(sem) = hold {
            let _ = sem.acquire().await;
        }
        if fail {
            return Err(injected(op, &target));
        }
        Ok(())
    }

    /// An operation that may fail or wait, then acts on the model.
    async fn op<T>(
        &self,
        op: &'static str,
        target: String,
        act: impl FnOnce(&mut Model) -> Result<T>,
    ) -> Result<T> {
        self.enter(op, target).await?;
        self.with(act)
    }

    /// A namespace at `path` exists from now on (the tunnel's).
    pub fn add_namespace(&self, path: &Path) {
        self.with(|m| m.namespaces.insert(path.to_path_buf()));
    }
}

/// The infrastructure of a sandbox as `Netlink::ensure_sandbox` leaves it.
fn fill(m: &mut Model, spec: &SandboxSpec) -> Result<()> {
    let existing = m.sandboxes.get(&spec.netns).cloned().unwrap_or_default();
    let mut sb = existing;
    let bridge = match sb.links.get(BRIDGE) {
        Some(b) => b.clone(),
        None => {
            let mut b = link(m.index(), BRIDGE, "bridge", spec.mtu);
            b.mac = Some(spec.bridge_mac);
            b
        }
    };
    if let Some(have) = bridge.alias.as_deref().and_then(SandboxMarker::parse) {
        if let Some(why) = have.refuses(&spec.marker) {
            return Err(DataplaneError::SandboxRefused {
                path: spec.netns.display().to_string(),
                why,
            });
        }
    }
    let bridge = LinkState {
        alias: Some(spec.marker.alias()),
        up: true,
        mtu: spec.mtu,
        ..bridge
    };
    if !sb.addresses.contains(&(bridge.index, spec.gateway)) {
        sb.addresses.push((bridge.index, spec.gateway));
    }
    let nsid = match spec.vtep_netns {
        None => HOST_NSID,
        Some(_) => TUNNEL_NSID,
    };
    let wanted = |l: &LinkState| {
        l.vni == Some(spec.vni)
            && l.learning == Some(false)
            && l.proxy == Some(true)
            && l.port == Some(spec.port)
            && (spec.vtep_netns.is_none() || l.udp_csum == Some(false))
            && l.link_netnsid == Some(nsid)
    };
    let vx = match sb.links.get(&spec.vxlan) {
        Some(l) if wanted(l) => l.clone(),
        _ => LinkState {
            vni: Some(spec.vni),
            learning: Some(false),
            proxy: Some(true),
            port: Some(spec.port),
            // The kernel's default is on; encrypted networks' devices turn it off.
            udp_csum: Some(spec.vtep_netns.is_none()),
            link_netnsid: Some(nsid),
            ..link(m.index(), &spec.vxlan, "vxlan", spec.mtu)
        },
    };
    let vx = LinkState {
        controller: Some(bridge.index),
        up: true,
        mtu: spec.mtu,
        ..vx
    };
    sb.links.insert(BRIDGE.into(), bridge);
    sb.links.insert(spec.vxlan.clone(), vx);
    m.sandboxes.insert(spec.netns.clone(), sb);
    Ok(())
}

/// A new sandbox-side veth for `ep`, its other end `peer` (a stale one of the name goes).
fn add_veth(m: &mut Model, sandbox: &SandboxSpec, ep: &EndpointSpec, peer: Peer) -> Result<()> {
    m.remove_veth(&sandbox.netns, &ep.host_ifname);
    let index = m.index();
    let sb = m
        .sandboxes
        .get_mut(&sandbox.netns)
        .ok_or_else(|| no_sandbox(&sandbox.netns))?;
    let bridge = sb
        .links
        .get(BRIDGE)
        .ok_or_else(|| DataplaneError::Netlink {
            op: format!("finding {BRIDGE}"),
            msg: "no such device".into(),
            errno: Some(19),
        })?;
    let mut l = link(index, &ep.host_ifname, "veth", ep.mtu);
    l.controller = Some(bridge.index);
    sb.links.insert(ep.host_ifname.clone(), l);
    sb.peers.insert(ep.host_ifname.clone(), peer);
    Ok(())
}

fn apply_diff(t: &mut Tables, d: &TableDiff) {
    for e in &d.del_fdb {
        t.fdb.remove(e);
    }
    for e in &d.del_neigh {
        t.neigh.remove(e);
    }
    t.fdb.extend(d.add_fdb.iter().cloned());
    t.neigh.extend(d.add_neigh.iter().cloned());
}
