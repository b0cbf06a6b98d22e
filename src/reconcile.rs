//! Pure reconciliation: desired kernel state (from store records) against observed kernel
//! state (read back through netlink) gives a list of findings, each a line for a person
//! (`rnet doctor`) and, where the daemon can fix it, the repair to apply.
//!
//! The same diff runs at start-up, periodically, and on demand, so a daemon restart, a
//! device deleted by hand, or a crash halfway through an attach all end the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::api::types::DriftLine;
use crate::dataplane::spec::{EndpointSpec, SandboxMarker, SandboxSpec, BRIDGE};
use crate::dataplane::state::{LinkState, SandboxState};
use crate::model::Endpoint;

/// One network as it should be on this host.
#[derive(Clone, Debug)]
pub struct DesiredNetwork {
    pub name: String,
    pub sandbox: SandboxSpec,
    /// This host's endpoints of the network.
    pub endpoints: Vec<(Endpoint, EndpointSpec)>,
}

/// What the kernel has, as read back.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// State of each sandbox that exists, by bind-mount path.
    pub sandboxes: BTreeMap<PathBuf, SandboxState>,
}

/// How the daemon can set a finding right.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repair {
    /// Create or re-configure the network's sandbox, bridge and VXLAN device.
    EnsureSandbox { network: String },
    /// Remove a sandbox no network wants.
    RemoveSandbox { path: PathBuf },
    /// Delete a veth no endpoint owns.
    RemoveVeth {
        sandbox: PathBuf,
        host_ifname: String,
    },
    /// Enslave a veth to the bridge and bring it up.
    FixVeth {
        sandbox: PathBuf,
        host_ifname: String,
    },
    /// Re-create an endpoint's veth pair (if its workload namespace is still there).
    Reattach {
        network: String,
        ip: std::net::Ipv4Addr,
    },
    /// Re-program the network's FDB and neighbour entries from the kernel's actual state.
    SyncPeers { network: String },
    /// Re-build uplinks and re-program the host's NAT table (the egress pass does it).
    Egress,
}

/// One line per missing or stray peer-table entry of `network`.
pub fn peer_findings(network: &str, d: &crate::peers::TableDiff) -> Vec<Finding> {
    let repair = || Repair::SyncPeers {
        network: network.to_string(),
    };
    let fdb = |e: &crate::peers::FdbEntry| {
        if e.is_flood() {
            format!("fdb flood -> {}", e.dst)
        } else {
            format!("fdb {} -> {}", e.mac, e.dst)
        }
    };
    let neigh = |e: &crate::peers::NeighEntry| format!("neigh {} -> {}", e.ip, e.mac);
    let mut out = Vec::new();
    out.extend(
        d.add_fdb
            .iter()
            .map(|e| finding(network, "missing", fdb(e), String::new(), repair())),
    );
    out.extend(
        d.del_fdb
            .iter()
            .map(|e| finding(network, "stray", fdb(e), String::new(), repair())),
    );
    out.extend(
        d.add_neigh
            .iter()
            .map(|e| finding(network, "missing", neigh(e), String::new(), repair())),
    );
    out.extend(
        d.del_neigh
            .iter()
            .map(|e| finding(network, "stray", neigh(e), String::new(), repair())),
    );
    out
}

/// One difference, with its repair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub line: DriftLine,
    pub repair: Repair,
}

fn finding(network: &str, kind: &str, object: String, detail: String, repair: Repair) -> Finding {
    Finding {
        line: DriftLine {
            network: network.to_string(),
            kind: kind.to_string(),
            object,
            detail,
        },
        repair,
    }
}

/// Compare desired with observed. `known_sandboxes` are the sandbox paths of all networks
/// in the store: one of them is never stray, even with no local endpoint.
pub fn diff(
    desired: &[DesiredNetwork],
    observed: &Observed,
    known_sandboxes: &BTreeSet<PathBuf>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for want in desired {
        match observed.sandboxes.get(&want.sandbox.netns) {
            None => {
                out.push(finding(
                    &want.name,
                    "missing",
                    "sandbox".into(),
                    want.sandbox.netns.display().to_string(),
                    Repair::EnsureSandbox {
                        network: want.name.clone(),
                    },
                ));
                for (ep, _) in &want.endpoints {
                    out.push(reattach(want, ep, "missing", "sandbox is missing".into()));
                }
            }
            Some(have) => diff_sandbox(want, have, &mut out),
        }
    }
    for path in observed.sandboxes.keys() {
        let wanted =
            desired.iter().any(|d| &d.sandbox.netns == path) || known_sandboxes.contains(path);
        if !wanted {
            out.push(finding(
                "-",
                "stray",
                "sandbox".into(),
                format!("{} (no such network)", path.display()),
                Repair::RemoveSandbox { path: path.clone() },
            ));
        }
    }
    out
}

fn reattach(want: &DesiredNetwork, ep: &Endpoint, kind: &str, detail: String) -> Finding {
    finding(
        &want.name,
        kind,
        format!("veth {} ({} {})", ep.host_ifname, ep.id, ep.ip),
        detail,
        Repair::Reattach {
            network: want.name.clone(),
            ip: ep.ip.ip(),
        },
    )
}

fn diff_sandbox(want: &DesiredNetwork, have: &SandboxState, out: &mut Vec<Finding>) {
    let ensure = || Repair::EnsureSandbox {
        network: want.name.clone(),
    };
    let spec = &want.sandbox;
    let bridge = have.link(BRIDGE);
    match bridge {
        None => out.push(finding(
            &want.name,
            "missing",
            format!("bridge {BRIDGE}"),
            String::new(),
            ensure(),
        )),
        Some(b) => {
            if let Some((kind, why)) = marker_problem(b, spec) {
                out.push(finding(
                    &want.name,
                    kind,
                    format!("bridge {BRIDGE}"),
                    why,
                    ensure(),
                ));
            }
            if let Some(why) = bridge_problem(b, spec) {
                out.push(finding(
                    &want.name,
                    "wrong",
                    format!("bridge {BRIDGE}"),
                    why,
                    ensure(),
                ));
            }
            if !have.addresses.contains(&(b.index, spec.gateway)) {
                out.push(finding(
                    &want.name,
                    "missing",
                    format!("address {} on {BRIDGE}", spec.gateway),
                    String::new(),
                    ensure(),
                ));
            }
        }
    }
    match have.link(&spec.vxlan) {
        None => out.push(finding(
            &want.name,
            "missing",
            format!("vxlan {}", spec.vxlan),
            format!("VNI {}", spec.vni),
            ensure(),
        )),
        Some(v) => {
            if let Some(why) = vxlan_socket_problem(v, spec, have) {
                out.push(finding(
                    &want.name,
                    "wrong",
                    format!("vxlan {}", spec.vxlan),
                    why,
                    ensure(),
                ));
            }
            if let Some(why) = vxlan_problem(v, spec, bridge.map(|b| b.index)) {
                out.push(finding(
                    &want.name,
                    "wrong",
                    format!("vxlan {}", spec.vxlan),
                    why,
                    ensure(),
                ));
            }
        }
    }
    diff_veths(want, have, bridge.map(|b| b.index), out);
}

/// A bridge marked for another network, or for encryption the spec would drop, is refused
/// (its repair fails loudly); an unmarked one is marked by the repair.
fn marker_problem(b: &LinkState, spec: &SandboxSpec) -> Option<(&'static str, String)> {
    match b.alias.as_deref().and_then(SandboxMarker::parse) {
        Some(have) => match have.refuses(&spec.marker) {
            Some(why) => Some(("refused", why)),
            None => (have != spec.marker).then(|| {
                (
                    "wrong",
                    format!("marked {:?}, want {:?}", have.alias(), spec.marker.alias()),
                )
            }),
        },
        None => Some(("wrong", "not marked with its network".into())),
    }
}

/// Where the VXLAN device's UDP socket lives must be where the spec says: the host's
/// namespace for a plain network, the tunnel's for an encrypted one.
fn vxlan_socket_problem(v: &LinkState, spec: &SandboxSpec, have: &SandboxState) -> Option<String> {
    let (want, where_) = match spec.vtep_netns {
        None => (have.host_nsid, "the host namespace"),
        Some(_) => (have.tunnel_nsid, "the tunnel namespace"),
    };
    (want.is_none() || v.link_netnsid != want).then(|| format!("its UDP socket is not in {where_}"))
}

fn bridge_problem(b: &LinkState, spec: &SandboxSpec) -> Option<String> {
    if !b.up {
        return Some("down".into());
    }
    (b.mtu != spec.mtu).then(|| format!("MTU {} (want {})", b.mtu, spec.mtu))
}

fn vxlan_problem(v: &LinkState, spec: &SandboxSpec, bridge: Option<u32>) -> Option<String> {
    let mut p = Vec::new();
    if v.vni != Some(spec.vni) {
        p.push(format!("VNI {:?} (want {})", v.vni, spec.vni));
    }
    if v.learning != Some(false) {
        p.push("learning on".into());
    }
    if v.proxy != Some(true) {
        p.push("ARP proxy off".into());
    }
    if v.port != Some(spec.port) {
        p.push(format!("port {:?} (want {})", v.port, spec.port));
    }
    if bridge.is_some() && v.controller != bridge {
        p.push(format!("not enslaved to {BRIDGE}"));
    }
    if !v.up {
        p.push("down".into());
    }
    if v.mtu != spec.mtu {
        p.push(format!("MTU {} (want {})", v.mtu, spec.mtu));
    }
    (!p.is_empty()).then(|| p.join(", "))
}

fn diff_veths(
    want: &DesiredNetwork,
    have: &SandboxState,
    bridge: Option<u32>,
    out: &mut Vec<Finding>,
) {
    let path = &want.sandbox.netns;
    for (ep, _) in &want.endpoints {
        match have.link(&ep.host_ifname) {
            None => out.push(reattach(want, ep, "missing", "veth pair is gone".into())),
            Some(l) if !l.up || (bridge.is_some() && l.controller != bridge) => out.push(finding(
                &want.name,
                "wrong",
                format!("veth {}", ep.host_ifname),
                if l.up {
                    format!("not enslaved to {BRIDGE}")
                } else {
                    "down".into()
                },
                Repair::FixVeth {
                    sandbox: path.clone(),
                    host_ifname: ep.host_ifname.clone(),
                },
            )),
            Some(_) => {}
        }
    }
    let owned: BTreeSet<&str> = want
        .endpoints
        .iter()
        .map(|(e, _)| e.host_ifname.as_str())
        .collect();
    for l in &have.links {
        // The uplink is the egress pass's (`daemon::service::egress`), not an endpoint's.
        if l.kind.as_deref() == Some("veth")
            && !owned.contains(l.name.as_str())
            && l.name != crate::dataplane::spec::UPLINK_SANDBOX_IFNAME
        {
            out.push(finding(
                &want.name,
                "stray",
                format!("veth {}", l.name),
                "no endpoint owns it".into(),
                Repair::RemoveVeth {
                    sandbox: path.clone(),
                    host_ifname: l.name.clone(),
                },
            ));
        }
    }
}

#[cfg(test)]
mod tests;
