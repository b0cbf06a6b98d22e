//! Pure reconciliation: desired kernel state (from store records) against observed kernel
//! state (read back through netlink) gives a list of findings, each a line for a person
//! (`rnet doctor`) and, where the daemon can fix it, the repair to apply.
//!
//! The same diff runs at start-up, periodically, and on demand, so a daemon restart, a
//! device deleted by hand, or a crash halfway through an attach all end the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::api::types::DriftLine;
use crate::dataplane::netlink::{LinkState, SandboxState};
use crate::dataplane::spec::{EndpointSpec, SandboxMarker, SandboxSpec, BRIDGE};
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
mod tests {
    use super::*;
    use crate::dataplane::spec::host_ifname;
    use crate::model::{Mac, Network, Vni};
    use std::path::Path;

    fn network() -> Network {
        Network {
            id: "00000000000000aa".parse().unwrap(),
            name: "blue".parse().unwrap(),
            vni: Vni::new(42).unwrap(),
            subnet: "10.1.0.0/24".parse().unwrap(),
            gateway: "10.1.0.1".parse().unwrap(),
            mtu: 1450,
            encryption: Default::default(),
            allow_overlap: false,
            egress: true,
            internal: false,
        }
    }

    fn desired(n_eps: u8) -> DesiredNetwork {
        let net = network();
        let sandbox =
            SandboxSpec::for_network(&net, Path::new("/run/rnet"), "198.18.0.1".parse().unwrap());
        let endpoints = (0..n_eps)
            .map(|i| {
                let ip: std::net::Ipv4Addr = format!("10.1.0.{}", i + 2).parse().unwrap();
                let ep = Endpoint {
                    network_id: "00000000000000aa".parse().unwrap(),
                    network: net.name.clone(),
                    id: format!("w{i}").parse().unwrap(),
                    ip: ipnetwork::Ipv4Network::new(ip, 24).unwrap(),
                    mac: Mac::from_ipv4(ip),
                    host: "h1".into(),
                    ifname: "eth0".parse().unwrap(),
                    netns: "/x".into(),
                    netns_inode: 1,
                    host_ifname: host_ifname(ip),
                    created: 0,
                    origin: Default::default(),
                    owner: None,
                    mtu: None,
                    name: None,
                    aliases: Vec::new(),
                    ports: Vec::new(),
                };
                let spec = EndpointSpec::for_endpoint(&net, &ep);
                (ep, spec)
            })
            .collect();
        DesiredNetwork {
            name: "blue".into(),
            sandbox,
            endpoints,
        }
    }

    fn link(index: u32, name: &str, kind: &str) -> LinkState {
        LinkState {
            index,
            name: name.into(),
            up: true,
            mtu: 1450,
            kind: Some(kind.into()),
            ..Default::default()
        }
    }

    /// The kernel state a correct sandbox has.
    fn healthy(d: &DesiredNetwork) -> SandboxState {
        let mut links = vec![LinkState {
            alias: Some(d.sandbox.marker.alias()),
            ..link(2, BRIDGE, "bridge")
        }];
        links.push(LinkState {
            vni: Some(42),
            learning: Some(false),
            proxy: Some(true),
            port: Some(4789),
            controller: Some(2),
            link_netnsid: Some(HOST_NSID),
            ..link(3, "vx-blue", "vxlan")
        });
        for (i, (ep, _)) in d.endpoints.iter().enumerate() {
            links.push(LinkState {
                controller: Some(2),
                ..link(10 + i as u32, &ep.host_ifname, "veth")
            });
        }
        SandboxState {
            links,
            addresses: vec![(2, d.sandbox.gateway)],
            host_nsid: Some(HOST_NSID),
            tunnel_nsid: Some(TUNNEL_NSID),
        }
    }

    const HOST_NSID: i32 = 0;
    const TUNNEL_NSID: i32 = 1;

    fn run(
        d: &DesiredNetwork,
        state: Option<SandboxState>,
        extra: Option<(PathBuf, SandboxState)>,
    ) -> Vec<Finding> {
        let mut observed = Observed::default();
        if let Some(s) = state {
            observed.sandboxes.insert(d.sandbox.netns.clone(), s);
        }
        if let Some((p, s)) = extra {
            observed.sandboxes.insert(p, s);
        }
        let known: BTreeSet<PathBuf> = [d.sandbox.netns.clone()].into();
        diff(std::slice::from_ref(d), &observed, &known)
    }

    fn vxlan_mut(s: &mut SandboxState) -> &mut LinkState {
        s.links.iter_mut().find(|l| l.name == "vx-blue").unwrap()
    }

    #[test]
    fn vxlan_socket_in_the_wrong_namespace_is_rebuilt() {
        let d = desired(1);
        // A plain network's device whose socket sits in the tunnel namespace, and one whose
        // socket is in the sandbox itself (no link netns): neither is trusted.
        for socket in [Some(TUNNEL_NSID), None] {
            let mut s = healthy(&d);
            vxlan_mut(&mut s).link_netnsid = socket;
            let f = run(&d, Some(s), None);
            assert_eq!(f.len(), 1, "{f:?}");
            assert!(f[0].line.detail.contains("not in the host namespace"));
            assert_eq!(
                f[0].repair,
                Repair::EnsureSandbox {
                    network: "blue".into()
                }
            );
        }
        // An encrypted network's device must have its socket in the tunnel namespace.
        let mut enc = d.clone();
        enc.sandbox.vtep_netns = Some("/run/rnet/netns/wg".into());
        enc.sandbox.marker.encryption = crate::model::Encryption::Wireguard;
        let s = healthy(&enc);
        let f = run(&enc, Some(s.clone()), None);
        assert!(
            f[0].line.detail.contains("not in the tunnel namespace"),
            "{f:?}"
        );
        let mut ok = s;
        vxlan_mut(&mut ok).link_netnsid = Some(TUNNEL_NSID);
        assert_eq!(run(&enc, Some(ok), None), vec![]);
    }

    #[test]
    fn sandbox_marked_encrypted_is_refused_for_a_plain_record() {
        let d = desired(0);
        let mut s = healthy(&d);
        s.links[0].alias = Some(
            SandboxMarker {
                encryption: crate::model::Encryption::Wireguard,
                ..d.sandbox.marker.clone()
            }
            .alias(),
        );
        let f = run(&d, Some(s), None);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].line.kind, "refused");
        assert!(f[0].line.detail.contains("never turned off"));
    }

    #[test]
    fn healthy_sandbox_has_no_findings() {
        let d = desired(2);
        assert_eq!(run(&d, Some(healthy(&d)), None), vec![]);
    }

    #[test]
    fn missing_sandbox_needs_sandbox_and_every_endpoint() {
        let d = desired(2);
        let f = run(&d, None, None);
        assert_eq!(f.len(), 3);
        assert_eq!(
            f[0].repair,
            Repair::EnsureSandbox {
                network: "blue".into()
            }
        );
        assert!(matches!(f[1].repair, Repair::Reattach { .. }));
    }

    #[test]
    fn wrong_vxlan_and_stray_veth_and_missing_veth() {
        let d = desired(2);
        let mut s = healthy(&d);
        s.links[1].learning = Some(true);
        s.links.retain(|l| l.name != d.endpoints[1].0.host_ifname);
        s.links.push(link(99, "ve0a0000ff", "veth"));
        let f = run(&d, Some(s), None);
        let kinds: Vec<(&str, &str)> = f
            .iter()
            .map(|x| (x.line.kind.as_str(), x.line.object.as_str()))
            .collect();
        assert!(kinds.contains(&("wrong", "vxlan vx-blue")), "{kinds:?}");
        assert!(f
            .iter()
            .any(|x| x.line.kind == "missing" && matches!(x.repair, Repair::Reattach { .. })));
        assert!(f.iter().any(|x| x.repair
            == Repair::RemoveVeth {
                sandbox: d.sandbox.netns.clone(),
                host_ifname: "ve0a0000ff".into()
            }));
    }

    #[test]
    fn stray_sandbox_of_unknown_network_is_removed() {
        let d = desired(0);
        let stray = PathBuf::from("/run/rnet/netns/sb-gone");
        let f = run(
            &d,
            Some(healthy(&d)),
            Some((stray.clone(), SandboxState::default())),
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].repair, Repair::RemoveSandbox { path: stray });
    }
}
