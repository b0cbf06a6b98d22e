//! The fake's answers to the service: each call is recorded (and may fail or wait, as
//! the test set up), then reads or changes the model the way the kernel would.

use std::future::Future;
use std::path::{Path, PathBuf};

use futures::future::{BoxFuture, FutureExt};

use super::{add_veth, apply_diff, fill, injected, link, no_sandbox, Call, FakeDataplane, Peer};
use super::{HOST_NSID, TUNNEL_NSID};
use crate::dataplane::netlink::{DataplaneError, LinkState, SandboxState, WorkloadLink};
use crate::dataplane::ops::Dataplane;
use crate::dataplane::spec::{
    EndpointSpec, SandboxSpec, UplinkSpec, BRIDGE, UPLINK_SANDBOX_IFNAME,
};
use crate::nat::{nft, nft::NftError, RuleImage, Ruleset};
use crate::netns::NetNs;
use crate::peers::{TableDiff, Tables};

type Result<T> = std::result::Result<T, DataplaneError>;

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
