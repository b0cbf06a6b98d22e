//! Reconcile repair decisions: drift made in the fake's model is found and repaired, with
//! exactly the repairs it needs; what is in line is not touched, and a record this daemon
//! did not attach is never plugged into a namespace.

use super::*;
use crate::daemon::access::Caller;
use crate::dataplane::spec::BRIDGE;

/// A host with three endpoints on network `rec`, the calls forgotten.
async fn three() -> (Harness, Network, Vec<Endpoint>) {
    let h = Harness::new().await;
    let net = h.network("rec", "10.76.0.0/24").await;
    let mut eps = Vec::new();
    for ifname in ["eth0", "eth1", "eth2"] {
        eps.push(
            h.svc
                .attach(&attach_req("rec", ifname), Caller::ROOT)
                .await
                .unwrap(),
        );
    }
    h.dp.clear_calls();
    (h, net, eps)
}

fn sandbox_of(h: &Harness, net: &Network) -> PathBuf {
    h.svc.sandbox_spec(net).netns
}

#[tokio::test]
async fn a_host_in_line_has_no_findings_and_nothing_is_changed() {
    let (h, _, _) = three().await;
    let findings = h.svc.reconcile(true).await.unwrap();
    assert!(findings.is_empty(), "{findings:?}");
    assert!(h.dp.mutations().is_empty(), "{:?}", h.dp.mutations());
}

#[tokio::test]
async fn a_reconcile_lists_the_networks_and_every_host_s_endpoints_once() {
    let (h, _, _) = three().await;
    h.svc.reconcile(true).await.unwrap();
    let lists: Vec<String> =
        h.dp.calls()
            .into_iter()
            .filter(|c| c.op == "store.list")
            .map(|c| c.target)
            .collect();
    // Both passes (sandboxes, egress) work from one read: at 50,000 endpoints a list of
    // every host's endpoints takes most of a second.
    let count = |prefix: &str| lists.iter().filter(|p| *p == prefix).count();
    assert_eq!(count(keys::NETWORKS), 1, "{lists:?}");
    assert_eq!(count(keys::ENDPOINTS), 1, "{lists:?}");
}

#[tokio::test]
async fn drift_is_repaired_with_exactly_the_repairs_it_needs() {
    let (h, net, eps) = three().await;
    let sandbox = sandbox_of(&h, &net);
    let ghost = spec::sandbox_path(
        &h.svc.cfg.run_dir,
        "ghost",
        &"0123456789abcdef".parse().unwrap(),
    );
    h.dp.with(|m| {
        let sb = m.sandboxes.get_mut(&sandbox).unwrap();
        // eps[0]: its veth down and out of the bridge.
        let l = sb.links.get_mut(&eps[0].host_ifname).unwrap();
        l.up = false;
        l.controller = None;
        // A veth no endpoint owns.
        let mut stray = sb.links[&eps[0].host_ifname].clone();
        stray.name = "vedeadbeef".into();
        stray.index = 999;
        sb.links.insert(stray.name.clone(), stray);
        // A sandbox of a network that does not exist.
        m.sandboxes.insert(ghost.clone(), Default::default());
    });
    // eps[1]: its veth pair deleted by hand.
    h.dp.with(|m| m.remove_veth(&sandbox, &eps[1].host_ifname));

    let findings = h.svc.reconcile(true).await.unwrap();
    let repairs: BTreeSet<String> = findings.iter().map(|f| format!("{:?}", f.repair)).collect();
    let wanted = [
        Repair::FixVeth {
            sandbox: sandbox.clone(),
            host_ifname: eps[0].host_ifname.clone(),
        },
        Repair::Reattach {
            network: "rec".into(),
            ip: eps[1].ip.ip(),
        },
        Repair::RemoveVeth {
            sandbox: sandbox.clone(),
            host_ifname: "vedeadbeef".into(),
        },
        Repair::RemoveSandbox {
            path: ghost.clone(),
        },
    ];
    assert_eq!(findings.len(), wanted.len(), "{findings:#?}");
    assert_eq!(repairs, wanted.iter().map(|r| format!("{r:?}")).collect());
    let done: BTreeSet<(&str, String)> =
        h.dp.mutations()
            .into_iter()
            .map(|c| (c.op, c.target))
            .collect();
    let expected: BTreeSet<(&str, String)> = [
        ("fix_veth", eps[0].host_ifname.clone()),
        ("ensure_sandbox", sandbox.display().to_string()),
        ("attach", eps[1].host_ifname.clone()),
        ("detach", "vedeadbeef".into()),
        ("remove_sandbox", ghost.display().to_string()),
    ]
    .into();
    assert_eq!(done, expected);
    assert_eq!(h.dp.mutations().len(), expected.len());
    // eps[2] was never touched; everything is in line again.
    assert!(!h.dp.calls().iter().any(|c| c.op != "observe_sandbox"
        && c.op != "sandbox_link"
        && c.target == eps[2].host_ifname));
    h.dp.with(|m| {
        let sb = &m.sandboxes[&sandbox];
        let bridge = sb.links[BRIDGE].index;
        let l = &sb.links[&eps[0].host_ifname];
        assert!(l.up && l.controller == Some(bridge));
        assert!(sb.links.contains_key(&eps[1].host_ifname));
        assert!(!sb.links.contains_key("vedeadbeef"));
        assert!(!m.sandboxes.contains_key(&ghost));
        assert_eq!(m.workload.len(), 3);
    });
    h.dp.clear_calls();
    assert!(h.svc.reconcile(false).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_missing_vxlan_device_rebuilds_the_sandbox_and_leaves_the_veths() {
    let (h, net, _) = three().await;
    let sandbox = sandbox_of(&h, &net);
    let vxlan = net.name.vxlan_ifname();
    h.dp.with(|m| m.sandboxes.get_mut(&sandbox).unwrap().links.remove(&vxlan));
    let findings = h.svc.reconcile(true).await.unwrap();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(
        findings[0].repair,
        Repair::EnsureSandbox {
            network: "rec".into()
        }
    );
    let ops: Vec<&str> = h.dp.mutations().iter().map(|c| c.op).collect();
    assert_eq!(ops, ["ensure_sandbox"]);
    assert!(h
        .dp
        .with(|m| m.sandboxes[&sandbox].links.contains_key(&vxlan)));
    assert_eq!(h.dp.with(|m| m.veths().len()), 3);
}

#[tokio::test]
async fn a_record_this_daemon_did_not_attach_is_reported_but_never_plugged_in() {
    let (h, net, _) = three().await;
    // A record naming this host and the test's namespace, written by someone else.
    let mut planted = endpoint(&net, "planted", Ipv4Addr::new(10, 76, 0, 99));
    planted.netns = WORKLOAD.into();
    planted.netns_inode = workload_inode();
    planted.ifname = "eth9".parse().unwrap();
    h.store
        .put(
            &keys::endpoint("rec", planted.ip.ip()),
            to_json(&planted),
            None,
        )
        .await
        .unwrap();
    let findings = h.svc.reconcile(true).await.unwrap();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(
        findings[0].repair,
        Repair::Reattach {
            network: "rec".into(),
            ip: planted.ip.ip()
        }
    );
    assert!(h.dp.mutations().is_empty(), "{:?}", h.dp.mutations());
    assert_eq!(h.dp.with(|m| m.workload.len()), 3);
}
