//! Endpoints: a veth pair per workload, one end enslaved to the sandbox's bridge, the other
//! born in the workload's namespace (or, for Docker, left for the runtime to move), and the
//! reads a CNI CHECK and the reconcile make of the workload side.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::error::DataplaneError;
use super::netlink::Netlink;
use super::request::{
    self, add_link, addresses, connect, del_link, get_link, require_link, set_link,
};
use super::spec::{EndpointSpec, SandboxSpec, BRIDGE};
use super::state::{LinkState, WorkloadLink};
use super::workload::{self, BuildError};
use crate::netns::{self, NetNs, NetnsError};

type Result<T> = std::result::Result<T, DataplaneError>;

impl Netlink {
    /// Connect a workload namespace to a sandbox's bridge as `ep` says. On failure nothing
    /// of it is left behind.
    pub async fn attach(
        &self,
        sandbox: &SandboxSpec,
        ep: &EndpointSpec,
        workload: &NetNs,
    ) -> Result<()> {
        let sb_ns = NetNs::open(&sandbox.netns)?;
        let (mut bridge, mut cached) = self.bridge_index(&sandbox.netns).await?;
        let mut stale_removed = false;
        loop {
            let built = workload::build_in(workload, &sb_ns, bridge, ep.clone()).await;
            match built {
                Ok(()) => return Ok(()),
                Err(BuildError::Configure(e)) => {
                    let _ = self.detach(&sandbox.netns, &ep.host_ifname).await;
                    return Err(e);
                }
                Err(BuildError::Create(e)) if is_eexist(&e) => {
                    // The sandbox-side name is this endpoint's alone (derived from its
                    // address), so one that exists is a stale leftover: it is looked for
                    // only when the name clashes, not on every attach, removed, and the
                    // creation tried once more. A clash after that can only be the
                    // workload side's name.
                    let sb = self.sandbox(&sandbox.netns)?;
                    match get_link(&sb, &ep.host_ifname).await? {
                        Some(stale) if !stale_removed => {
                            del_link(&sb, stale.index, &ep.host_ifname).await?;
                            stale_removed = true;
                        }
                        _ => {
                            return Err(DataplaneError::IfaceExists {
                                ifname: ep.ifname.clone(),
                                netns: workload.path().display().to_string(),
                            })
                        }
                    }
                }
                Err(BuildError::Create(e)) if cached => {
                    // The bridge may have been rebuilt since its index was noted (its old
                    // index then names nothing, or no bridge): look again, and try once
                    // more if it moved.
                    self.forget_bridge(&sandbox.netns);
                    let (fresh, _) = self.bridge_index(&sandbox.netns).await?;
                    if fresh == bridge {
                        return Err(e);
                    }
                    (bridge, cached) = (fresh, false);
                }
                Err(BuildError::Create(e)) => return Err(e),
            }
        }
    }

    /// Build an endpoint's veth pair for a runtime that moves the workload end itself (Docker):
    /// the sandbox end enslaved to the bridge and up, the other end named `peer`, with the
    /// endpoint's MAC and MTU, left in this daemon's own network namespace for the runtime to
    /// move into the container. Stale links of either name are replaced.
    pub async fn attach_for_move(
        &self,
        sandbox: &SandboxSpec,
        ep: &EndpointSpec,
        peer: &str,
    ) -> Result<()> {
        let own = NetNs::of_pid(std::process::id())?;
        if let Some(stale) = get_link(&self.host, peer).await? {
            del_link(&self.host, stale.index, peer).await?;
        }
        let sb = self.sandbox(&sandbox.netns)?;
        if let Some(stale) = get_link(&sb, &ep.host_ifname).await? {
            del_link(&sb, stale.index, &ep.host_ifname).await?;
        }
        let bridge = require_link(&sb, BRIDGE).await?;
        let mut movable = ep.clone();
        movable.ifname = peer.to_string();
        add_link(
            &sb,
            workload::veth_message(&movable, bridge.index, None, own.as_raw_fd()),
            &format!("creating veth {} <-> {peer}", ep.host_ifname),
        )
        .await
    }

    /// Remove an endpoint's veth pair (both ends go together). Absent is fine.
    pub async fn detach(&self, sandbox: &Path, host_ifname: &str) -> Result<()> {
        if !netns::is_mounted(sandbox) {
            return Ok(());
        }
        let sb = self.sandbox(sandbox)?;
        if let Some(link) = get_link(&sb, host_ifname).await? {
            del_link(&sb, link.index, host_ifname).await?;
        }
        Ok(())
    }

    /// As `detach`, without waiting for the kernel to finish: deleting a veth holds the caller
    /// for tens of milliseconds of RCU grace periods. The link is found now (by name) and
    /// deleted by index in the background, so a veth created later under the same name is
    /// never the one deleted.
    pub async fn detach_in_background(&self, sandbox: &Path, host_ifname: &str) -> Result<()> {
        if !netns::is_mounted(sandbox) {
            return Ok(());
        }
        let sb = self.sandbox(sandbox)?;
        let Some(link) = get_link(&sb, host_ifname).await? else {
            return Ok(());
        };
        let name = host_ifname.to_string();
        tokio::spawn(async move {
            if let Err(e) = del_link(&sb, link.index, &name).await {
                tracing::warn!(error = %e, veth = %name, "deleting a veth in the background failed; the reconcile removes it");
            }
        });
        Ok(())
    }

    /// Enslave a sandbox veth to the bridge and bring it up.
    pub async fn fix_veth(&self, sandbox: &Path, host_ifname: &str) -> Result<()> {
        let sb = self.sandbox(sandbox)?;
        let bridge = require_link(&sb, BRIDGE).await?;
        let link = require_link(&sb, host_ifname).await?;
        let msg = LinkUnspec::new_with_index(link.index)
            .controller(bridge.index)
            .up()
            .build();
        set_link(&sb, msg, &format!("attaching {host_ifname} to {BRIDGE}")).await
    }

    /// Whether the workload side of an endpoint is present and configured.
    pub async fn observe_workload(
        &self,
        workload: &NetNs,
        ifname: &str,
    ) -> Result<Option<(LinkState, Vec<Ipv4Network>)>> {
        let wl = connect(Some(workload))?;
        let Some(link) = get_link(&wl, ifname).await? else {
            return Ok(None);
        };
        let out = addresses(&wl, Some(link.index), "listing workload addresses").await?;
        Ok(Some((link, out.into_iter().map(|(_, a)| a).collect())))
    }

    /// The interface `ifname` of a workload namespace with its addresses and default routes;
    /// None if it does not exist.
    pub async fn inspect_workload(
        &self,
        workload: &NetNs,
        ifname: &str,
    ) -> Result<Option<WorkloadLink>> {
        let wl = connect(Some(workload))?;
        let Some(link) = get_link(&wl, ifname).await? else {
            return Ok(None);
        };
        let mut out = WorkloadLink {
            addresses: addresses(&wl, Some(link.index), "listing addresses")
                .await?
                .into_iter()
                .map(|(_, a)| a)
                .collect(),
            link,
            ..Default::default()
        };
        let mut routes = wl
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(m) = routes
            .try_next()
            .await
            .map_err(|e| DataplaneError::netlink("listing workload routes", e))?
        {
            let oif = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            let gw = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                _ => None,
            });
            if m.header.destination_prefix_length == 0 && oif == Some(out.link.index) {
                out.default_gateways.extend(gw);
            }
        }
        Ok(Some(out))
    }

    /// The index of interface `ifname` in a workload namespace, if it exists.
    pub async fn workload_link(&self, workload: &NetNs, ifname: &str) -> Result<Option<LinkState>> {
        get_link(&connect(Some(workload))?, ifname).await
    }
}

fn is_eexist(e: &DataplaneError) -> bool {
    matches!(
        e,
        DataplaneError::Netlink {
            errno: Some(libc::EEXIST),
            ..
        }
    )
}

/// Delete link `index` of the namespace at `netns`, blocking: `ip -n NS link del dev INDEX`.
/// Deleting a veth makes the kernel wait for an RCU grace period (tens of milliseconds) inside
/// the netlink call, so this runs on a thread of its own over a raw socket, never on a tokio
/// worker. An absent namespace or link is fine.
pub fn delete_link_blocking(netns: &Path, index: u32) -> Result<()> {
    let ns = match NetNs::open(netns) {
        Ok(ns) => ns,
        Err(NetnsError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let what = format!("deleting link {index} in {}", netns.display());
    ns.run(move || {
        // No receive timeout: the kernel's answer comes once the grace period is over.
        let sock = request::open_socket(None).map_err(DataplaneError::Socket)?;
        request::delete_link(&sock, index, what)
    })?
}
