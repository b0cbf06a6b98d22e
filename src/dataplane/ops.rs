//! The kernel operations the service needs, as one trait: `Netlink` does them for real,
//! `fake::FakeDataplane` (tests) records them against a model of what exists.
//!
//! The service decides; this is everything it asks the kernel to do or to tell. Keeping the
//! list here (and nowhere else) is what lets the service's decisions be tested without root.

use std::future::Future;
use std::path::{Path, PathBuf};

use futures::future::{BoxFuture, FutureExt};

use super::netlink::{delete_link_blocking, DataplaneError, LinkState, Netlink, SandboxState};
use super::spec::{EndpointSpec, SandboxSpec, UplinkSpec};
use super::state::WorkloadLink;
use crate::nat::{nft::NftError, RuleImage, Ruleset};
use crate::netns::{self, NetNs};
use crate::peers::{TableDiff, Tables};

type Result<T> = std::result::Result<T, DataplaneError>;

/// What the service asks of the kernel. Every future is `Send`, so the service's own futures
/// stay `Send` for `tokio::spawn`.
pub trait Dataplane: Send + Sync + 'static {
    // ----- namespaces and sandboxes -----

    /// Whether a network namespace is bind-mounted at `path` (a sandbox, the tunnel's).
    fn netns_present(&self, path: &Path) -> bool;

    /// The entries of the sandbox directory `dir` (sandboxes and the tunnel namespace).
    fn netns_entries(&self, dir: &Path) -> Vec<PathBuf>;

    /// Make the sandbox exist as `spec` says; a sandbox this call created is gone again if
    /// it fails.
    fn ensure_sandbox(&self, spec: &SandboxSpec) -> impl Future<Output = Result<()>> + Send;

    /// Remove a sandbox (its VXLAN device at once, the namespace when nothing holds it).
    fn remove_sandbox(&self, path: &Path) -> impl Future<Output = Result<()>> + Send;

    /// Drop the connections cached for the namespace at `path`.
    fn forget_sandbox(&self, path: &Path);

    /// Read back a sandbox; None if it does not exist.
    fn observe_sandbox(
        &self,
        path: &Path,
        tunnel: Option<&Path>,
    ) -> impl Future<Output = Result<Option<SandboxState>>> + Send;

    // ----- endpoints -----

    /// Build an endpoint's veth pair, its workload end inside `workload`; on failure nothing
    /// of it is left.
    fn attach(
        &self,
        sandbox: &SandboxSpec,
        ep: &EndpointSpec,
        workload: &NetNs,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Build an endpoint's veth pair with its workload end `peer` left in this daemon's
    /// namespace (Docker moves it).
    fn attach_for_move(
        &self,
        sandbox: &SandboxSpec,
        ep: &EndpointSpec,
        peer: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Delete an endpoint's veth pair by its sandbox-side name (absent is fine).
    fn detach(&self, sandbox: &Path, host_ifname: &str) -> impl Future<Output = Result<()>> + Send;

    /// As `detach`, the deletion itself finishing in the background.
    fn detach_in_background(
        &self,
        sandbox: &Path,
        host_ifname: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Enslave a sandbox-side veth to the bridge and bring it up.
    fn fix_veth(
        &self,
        sandbox: &Path,
        host_ifname: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Link `name` of a sandbox, if both exist.
    fn sandbox_link(
        &self,
        sandbox: &Path,
        name: &str,
    ) -> impl Future<Output = Result<Option<LinkState>>> + Send;

    /// Link `ifname` of a workload namespace, if it exists.
    fn workload_link(
        &self,
        workload: &NetNs,
        ifname: &str,
    ) -> impl Future<Output = Result<Option<LinkState>>> + Send;

    /// Interface `ifname` of a workload namespace with its addresses and default routes.
    fn inspect_workload(
        &self,
        workload: &NetNs,
        ifname: &str,
    ) -> impl Future<Output = Result<Option<WorkloadLink>>> + Send;

    /// The deletion of link `index` of the namespace at `netns`, to run on its own (it does
    /// not borrow the dataplane); an absent namespace or link is fine.
    fn delete_link_later(&self, netns: PathBuf, index: u32) -> BoxFuture<'static, Result<()>>;

    // ----- peer tables -----

    /// A sandbox's VXLAN device index and its FDB and neighbour entries; None if either
    /// is missing.
    fn observe_tables(
        &self,
        sandbox: &Path,
        vxlan: &str,
    ) -> impl Future<Output = Result<Option<(u32, Tables)>>> + Send;

    /// Apply a table difference; returns how many entries the kernel refused.
    fn apply_tables(
        &self,
        sandbox: &Path,
        ifindex: u32,
        diff: &TableDiff,
    ) -> impl Future<Output = Result<usize>> + Send;

    // ----- egress -----

    /// What is wrong with a network's uplink, None when it is as `spec` says.
    fn check_uplink(
        &self,
        spec: &UplinkSpec,
    ) -> impl Future<Output = Result<Option<String>>> + Send;

    fn ensure_uplink(&self, spec: &UplinkSpec) -> impl Future<Output = Result<()>> + Send;

    /// The host-side ends of every rnet uplink.
    fn uplinks(&self) -> impl Future<Output = Result<Vec<LinkState>>> + Send;

    fn remove_uplink(&self, host_ifname: &str) -> impl Future<Output = Result<()>> + Send;

    /// The rules of the host's rnet NAT table; None when there is no such table.
    fn observe_nat(
        &self,
    ) -> impl Future<Output = std::result::Result<Option<Vec<RuleImage>>, NftError>> + Send;

    /// Replace the host's rnet NAT table with `rs` (none at all when `rs` is empty).
    fn program_nat(
        &self,
        rs: &Ruleset,
    ) -> impl Future<Output = std::result::Result<(), NftError>> + Send;

    // ----- tunnel -----

    /// Delete device `ifname` of the namespace at `netns`, if it exists.
    fn remove_tunnel_device(
        &self,
        netns: &Path,
        ifname: &str,
    ) -> impl Future<Output = Result<()>> + Send;
}

fn joined(e: tokio::task::JoinError) -> NftError {
    NftError::Malformed(format!("nftables task: {e}"))
}

/// The real thing: every operation is `Netlink`'s method of the same name.
impl Dataplane for Netlink {
    fn netns_present(&self, path: &Path) -> bool {
        netns::is_mounted(path)
    }

    fn netns_entries(&self, dir: &Path) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries.filter_map(|e| e.ok()).map(|e| e.path()).collect()
    }

    fn ensure_sandbox(&self, spec: &SandboxSpec) -> impl Future<Output = Result<()>> + Send {
        Netlink::ensure_sandbox(self, spec)
    }

    fn remove_sandbox(&self, path: &Path) -> impl Future<Output = Result<()>> + Send {
        Netlink::remove_sandbox(self, path)
    }

    fn forget_sandbox(&self, path: &Path) {
        Netlink::forget_sandbox(self, path)
    }

    fn observe_sandbox(
        &self,
        path: &Path,
        tunnel: Option<&Path>,
    ) -> impl Future<Output = Result<Option<SandboxState>>> + Send {
        Netlink::observe_sandbox(self, path, tunnel)
    }

    fn attach(
        &self,
        sandbox: &SandboxSpec,
        ep: &EndpointSpec,
        workload: &NetNs,
    ) -> impl Future<Output = Result<()>> + Send {
        Netlink::attach(self, sandbox, ep, workload)
    }

    fn attach_for_move(
        &self,
        sandbox: &SandboxSpec,
        ep: &EndpointSpec,
        peer: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        Netlink::attach_for_move(self, sandbox, ep, peer)
    }

    fn detach(&self, sandbox: &Path, host_ifname: &str) -> impl Future<Output = Result<()>> + Send {
        Netlink::detach(self, sandbox, host_ifname)
    }

    fn detach_in_background(
        &self,
        sandbox: &Path,
        host_ifname: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        Netlink::detach_in_background(self, sandbox, host_ifname)
    }

    fn fix_veth(
        &self,
        sandbox: &Path,
        host_ifname: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        Netlink::fix_veth(self, sandbox, host_ifname)
    }

    fn sandbox_link(
        &self,
        sandbox: &Path,
        name: &str,
    ) -> impl Future<Output = Result<Option<LinkState>>> + Send {
        Netlink::sandbox_link(self, sandbox, name)
    }

    fn workload_link(
        &self,
        workload: &NetNs,
        ifname: &str,
    ) -> impl Future<Output = Result<Option<LinkState>>> + Send {
        Netlink::workload_link(self, workload, ifname)
    }

    fn inspect_workload(
        &self,
        workload: &NetNs,
        ifname: &str,
    ) -> impl Future<Output = Result<Option<WorkloadLink>>> + Send {
        Netlink::inspect_workload(self, workload, ifname)
    }

    fn delete_link_later(&self, netns: PathBuf, index: u32) -> BoxFuture<'static, Result<()>> {
        // The kernel waits for an RCU grace period inside the call: never on a tokio worker.
        async move {
            tokio::task::spawn_blocking(move || delete_link_blocking(&netns, index))
                .await
                .map_err(|e| DataplaneError::Netlink {
                    op: "deleting a link in the background".into(),
                    msg: e.to_string(),
                    errno: None,
                })?
        }
        .boxed()
    }

    fn observe_tables(
        &self,
        sandbox: &Path,
        vxlan: &str,
    ) -> impl Future<Output = Result<Option<(u32, Tables)>>> + Send {
        Netlink::observe_tables(self, sandbox, vxlan)
    }

    fn apply_tables(
        &self,
        sandbox: &Path,
        ifindex: u32,
        diff: &TableDiff,
    ) -> impl Future<Output = Result<usize>> + Send {
        Netlink::apply_tables(self, sandbox, ifindex, diff)
    }

    fn check_uplink(
        &self,
        spec: &UplinkSpec,
    ) -> impl Future<Output = Result<Option<String>>> + Send {
        Netlink::check_uplink(self, spec)
    }

    fn ensure_uplink(&self, spec: &UplinkSpec) -> impl Future<Output = Result<()>> + Send {
        Netlink::ensure_uplink(self, spec)
    }

    fn uplinks(&self) -> impl Future<Output = Result<Vec<LinkState>>> + Send {
        Netlink::uplinks(self)
    }

    fn remove_uplink(&self, host_ifname: &str) -> impl Future<Output = Result<()>> + Send {
        Netlink::remove_uplink(self, host_ifname)
    }

    async fn observe_nat(&self) -> std::result::Result<Option<Vec<RuleImage>>, NftError> {
        // Netlink sockets of this thread's namespace: the host's (rnetd runs in it).
        tokio::task::spawn_blocking(crate::nat::nft::observe)
            .await
            .map_err(joined)?
    }

    async fn program_nat(&self, rs: &Ruleset) -> std::result::Result<(), NftError> {
        let rs = rs.clone();
        tokio::task::spawn_blocking(move || crate::nat::nft::program(&rs))
            .await
            .map_err(joined)?
    }

    fn remove_tunnel_device(
        &self,
        netns: &Path,
        ifname: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        Netlink::remove_tunnel_device(self, netns, ifname)
    }
}
