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
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt};
use ipnetwork::Ipv4Network;
use tokio::sync::Semaphore;

use super::netlink::{DataplaneError, LinkState, SandboxState, WorkloadLink};
use super::ops::Dataplane;
use super::spec::UPLINK_SANDBOX_IFNAME;
use super::spec::{EndpointSpec, SandboxMarker, SandboxSpec, UplinkSpec, BRIDGE};
use crate::nat::{nft, nft::NftError, RuleImage, Ruleset};
use crate::netns::NetNs;
use crate::peers::{TableDiff, Tables};

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
            && l.link_netnsid == Some(nsid)
    };
    let vx = match sb.links.get(&spec.vxlan) {
        Some(l) if wanted(l) => l.clone(),
        _ => LinkState {
            vni: Some(spec.vni),
            learning: Some(false),
            proxy: Some(true),
            port: Some(spec.port),
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

impl Dataplane for FakeDataplane {
    fn netns_present(&self, path: &Path) -> bool {
        self.with(|m| m.sandboxes.contains_key(path) || m.namespaces.contains(path))
    }

    fn netns_entries(&self, dir: &Path) -> Vec<PathBuf> {
        self.with(|m| {
            m.sandboxes
                .keys()
                .chain(m.namespaces.iter())
                .filter(|p| p.parent() == Some(dir))
                .cloned()
                .collect()
        })
    }

    fn ensure_sandbox(&self, spec: &SandboxSpec) -> impl Future<Output = Result<()>> + Send {
        let spec = spec.clone();
        self.op(
            "ensure_sandbox",
            spec.netns.display().to_string(),
            move |m| fill(m, &spec),
        )
    }

    fn remove_sandbox(&self, path: &Path) -> impl Future<Output = Result<()>> + Send {
        let path = path.to_path_buf();
        self.op("remove_sandbox", path.display().to_string(), move |m| {
            for name in m
                .sandboxes
                .get(&path)
                .map(|s| s.peers.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
            {
                m.remove_veth(&path, &name);
            }
            m.uplinks.retain(|_, sb| *sb != path);
            m.sandboxes.remove(&path);
            Ok(())
        })
    }

    fn forget_sandbox(&self, path: &Path) {
        self.with(|m| {
            m.calls.push(Call {
                op: "forget_sandbox",
                target: path.display().to_string(),
            })
        });
    }

    fn observe_sandbox(
        &self,
        path: &Path,
        tunnel: Option<&Path>,
    ) -> impl Future<Output = Result<Option<SandboxState>>> + Send {
        let (path, tunnel) = (path.to_path_buf(), tunnel.is_some());
        self.op("observe_sandbox", path.display().to_string(), move |m| {
            Ok(m.sandboxes.get(&path).map(|sb| SandboxState {
                links: sb.links.values().cloned().collect(),
                addresses: sb.addresses.clone(),
                host_nsid: Some(HOST_NSID),
                tunnel_nsid: tunnel.then_some(TUNNEL_NSID),
            }))
        })
    }

    fn attach(
        &self,
        sandbox: &SandboxSpec,
        ep: &EndpointSpec,
        workload: &NetNs,
    ) -> impl Future<Output = Result<()>> + Send {
        let (sandbox, ep, inode) = (sandbox.clone(), ep.clone(), workload.inode());
        self.op("attach", ep.host_ifname.clone(), move |m| {
            let key = (inode, ep.ifname.clone());
            if m.workload.contains_key(&key) {
                return Err(DataplaneError::IfaceExists {
                    ifname: ep.ifname.clone(),
                    netns: format!("inode {inode}"),
                });
            }
            add_veth(m, &sandbox, &ep, Peer::Workload(inode, ep.ifname.clone()))?;
            let mut l = link(m.index(), &ep.ifname, "veth", ep.mtu);
            l.mac = Some(ep.mac);
            let wl = WorkloadLink {
                link: l,
                addresses: vec![ep.address],
                default_gateways: vec![ep.gateway],
            };
            m.workload.insert(key, wl);
            Ok(())
        })
    }

    fn attach_for_move(
        &self,
        sandbox: &SandboxSpec,
        ep: &EndpointSpec,
        peer: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        let (sandbox, ep, peer) = (sandbox.clone(), ep.clone(), peer.to_string());
        self.op("attach_for_move", ep.host_ifname.clone(), move |m| {
            // A stale peer of the name goes first, with its pair.
            let stale: Vec<(PathBuf, String)> = m
                .sandboxes
                .iter()
                .flat_map(|(p, sb)| {
                    sb.peers
                        .iter()
                        .filter(|(_, v)| **v == Peer::Host(peer.clone()))
                        .map(move |(n, _)| (p.clone(), n.clone()))
                })
                .collect();
            for (p, n) in stale {
                m.remove_veth(&p, &n);
            }
            add_veth(m, &sandbox, &ep, Peer::Host(peer.clone()))?;
            m.host_peers.insert(peer);
            Ok(())
        })
    }

    fn detach(&self, sandbox: &Path, host_ifname: &str) -> impl Future<Output = Result<()>> + Send {
        let (sandbox, name) = (sandbox.to_path_buf(), host_ifname.to_string());
        self.op("detach", name.clone(), move |m| {
            m.remove_veth(&sandbox, &name);
            Ok(())
        })
    }

    fn detach_in_background(
        &self,
        sandbox: &Path,
        host_ifname: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        let (sandbox, name) = (sandbox.to_path_buf(), host_ifname.to_string());
        self.op("detach_in_background", name.clone(), move |m| {
            m.remove_veth(&sandbox, &name);
            Ok(())
        })
    }

    fn fix_veth(
        &self,
        sandbox: &Path,
        host_ifname: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        let (sandbox, name) = (sandbox.to_path_buf(), host_ifname.to_string());
        self.op("fix_veth", name.clone(), move |m| {
            let sb = m
                .sandboxes
                .get_mut(&sandbox)
                .ok_or_else(|| no_sandbox(&sandbox))?;
            let bridge = sb.links.get(BRIDGE).map(|b| b.index);
            let l = sb
                .links
                .get_mut(&name)
                .ok_or_else(|| injected("finding", &name))?;
            l.controller = bridge;
            l.up = true;
            Ok(())
        })
    }

    fn sandbox_link(
        &self,
        sandbox: &Path,
        name: &str,
    ) -> impl Future<Output = Result<Option<LinkState>>> + Send {
        let (sandbox, name) = (sandbox.to_path_buf(), name.to_string());
        self.op("sandbox_link", name.clone(), move |m| {
            Ok(m.sandboxes
                .get(&sandbox)
                .and_then(|sb| sb.links.get(&name).cloned()))
        })
    }

    fn workload_link(
        &self,
        workload: &NetNs,
        ifname: &str,
    ) -> impl Future<Output = Result<Option<LinkState>>> + Send {
        let key = (workload.inode(), ifname.to_string());
        self.op("workload_link", ifname.to_string(), move |m| {
            Ok(m.workload.get(&key).map(|w| w.link.clone()))
        })
    }

    fn inspect_workload(
        &self,
        workload: &NetNs,
        ifname: &str,
    ) -> impl Future<Output = Result<Option<WorkloadLink>>> + Send {
        let key = (workload.inode(), ifname.to_string());
        self.op("inspect_workload", ifname.to_string(), move |m| {
            Ok(m.workload.get(&key).cloned())
        })
    }

    fn delete_link_later(&self, netns: PathBuf, index: u32) -> BoxFuture<'static, Result<()>> {
        let me = self.clone();
        async move {
            me.enter("delete_link_later", format!("{} #{index}", netns.display()))
                .await?;
            me.with(|m| {
                let in_sandbox = m.sandboxes.iter().find_map(|(p, sb)| {
                    sb.links
                        .values()
                        .find(|l| l.index == index)
                        .map(|l| (p.clone(), l.name.clone()))
                });
                let in_workload = m.workload.iter().find_map(|(k, w)| {
                    (w.link.index == index).then(|| Peer::Workload(k.0, k.1.clone()))
                });
                let pair = in_sandbox.or_else(|| {
                    let peer = in_workload?;
                    m.sandboxes.iter().find_map(|(p, sb)| {
                        sb.peers
                            .iter()
                            .find(|(_, v)| **v == peer)
                            .map(|(n, _)| (p.clone(), n.clone()))
                    })
                });
                if let Some((p, n)) = pair {
                    m.remove_veth(&p, &n);
                }
            });
            Ok(())
        }
        .boxed()
    }

    fn observe_tables(
        &self,
        sandbox: &Path,
        vxlan: &str,
    ) -> impl Future<Output = Result<Option<(u32, Tables)>>> + Send {
        let (sandbox, vxlan) = (sandbox.to_path_buf(), vxlan.to_string());
        self.op("observe_tables", sandbox.display().to_string(), move |m| {
            Ok(m.sandboxes.get(&sandbox).and_then(|sb| {
                let dev = sb.links.get(&vxlan)?;
                Some((dev.index, sb.tables.clone()))
            }))
        })
    }

    fn apply_tables(
        &self,
        sandbox: &Path,
        _ifindex: u32,
        diff: &TableDiff,
    ) -> impl Future<Output = Result<usize>> + Send {
        let (sandbox, diff) = (sandbox.to_path_buf(), diff.clone());
        self.op("apply_tables", sandbox.display().to_string(), move |m| {
            let sb = m
                .sandboxes
                .get_mut(&sandbox)
                .ok_or_else(|| no_sandbox(&sandbox))?;
            apply_diff(&mut sb.tables, &diff);
            Ok(0)
        })
    }

    fn check_uplink(
        &self,
        spec: &UplinkSpec,
    ) -> impl Future<Output = Result<Option<String>>> + Send {
        let spec = spec.clone();
        self.op("check_uplink", spec.host_ifname.clone(), move |m| {
            let inside = m
                .sandboxes
                .get(&spec.sandbox)
                .is_some_and(|sb| sb.links.contains_key(UPLINK_SANDBOX_IFNAME));
            Ok((!inside || !m.uplinks.contains_key(&spec.host_ifname))
                .then(|| format!("{} is missing", spec.host_ifname)))
        })
    }

    fn ensure_uplink(&self, spec: &UplinkSpec) -> impl Future<Output = Result<()>> + Send {
        let spec = spec.clone();
        self.op("ensure_uplink", spec.host_ifname.clone(), move |m| {
            let index = m.index();
            let sb = m
                .sandboxes
                .get_mut(&spec.sandbox)
                .ok_or_else(|| no_sandbox(&spec.sandbox))?;
            sb.links
                .entry(UPLINK_SANDBOX_IFNAME.into())
                .or_insert_with(|| link(index, UPLINK_SANDBOX_IFNAME, "veth", spec.mtu));
            m.uplinks
                .insert(spec.host_ifname.clone(), spec.sandbox.clone());
            Ok(())
        })
    }

    fn uplinks(&self) -> impl Future<Output = Result<Vec<LinkState>>> + Send {
        self.op("uplinks", String::new(), |m| {
            Ok(m.uplinks
                .keys()
                .enumerate()
                .map(|(i, n)| link(1000 + i as u32, n, "veth", 1500))
                .collect())
        })
    }

    fn remove_uplink(&self, host_ifname: &str) -> impl Future<Output = Result<()>> + Send {
        let name = host_ifname.to_string();
        self.op("remove_uplink", name.clone(), move |m| {
            if let Some(sb) = m
                .uplinks
                .remove(&name)
                .and_then(|p| m.sandboxes.get_mut(&p))
            {
                sb.links.remove(UPLINK_SANDBOX_IFNAME);
            }
            Ok(())
        })
    }

    async fn observe_nat(&self) -> std::result::Result<Option<Vec<RuleImage>>, NftError> {
        self.enter("observe_nat", String::new())
            .await
            .map_err(|e| NftError::Malformed(e.to_string()))?;
        Ok(self.with(|m| m.nat.clone()))
    }

    async fn program_nat(&self, rs: &Ruleset) -> std::result::Result<(), NftError> {
        self.enter("program_nat", format!("{} rules", rs.rules.len()))
            .await
            .map_err(|e| NftError::Malformed(e.to_string()))?;
        let images = if rs.is_empty() {
            None
        } else {
            Some(nft::images(rs)?)
        };
        self.with(|m| m.nat = images);
        Ok(())
    }

    fn remove_tunnel_device(
        &self,
        netns: &Path,
        ifname: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        self.op(
            "remove_tunnel_device",
            format!("{} {ifname}", netns.display()),
            |_| Ok(()),
        )
    }
}

/// The address of the workload side of a fake endpoint, for assertions.
pub fn workload_address(m: &Model, inode: u64, ifname: &str) -> Option<Ipv4Addr> {
    m.workload
        .get(&(inode, ifname.to_string()))
        .and_then(|w| w.addresses.first().map(|a| a.ip()))
}
