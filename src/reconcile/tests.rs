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
