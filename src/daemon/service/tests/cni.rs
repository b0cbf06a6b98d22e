//! CNI GC releases exactly the stale attachments: this host's, made by the CNI plugin under
//! the owner asked about, and not among the valid ones. Nothing else is touched.

use super::*;
use crate::api::types::CniGcRequest;
use crate::daemon::access::Caller;
use crate::model::Origin;

fn cni_req(id: &str, ifname: &str, owner: &str, origin: Origin) -> AttachRequest {
    AttachRequest {
        id: Some(id.into()),
        owner: Some(owner.into()),
        origin: Some(origin),
        ..attach_req("pods", ifname)
    }
}

#[tokio::test]
async fn gc_releases_only_stale_attachments_of_its_owner_on_this_host() {
    let h = Harness::new().await;
    let net = h.network("pods", "10.75.0.0/24").await;
    let mut made = HashMap::new();
    for (id, ifname, owner, origin) in [
        ("live", "eth0", "k8s", Origin::Cni),
        ("stale", "eth1", "k8s", Origin::Cni),
        ("other-owner", "eth2", "podman", Origin::Cni),
        ("by-hand", "eth3", "k8s", Origin::Cli),
    ] {
        let ep = h
            .svc
            .attach(&cni_req(id, ifname, owner, origin), Caller::ROOT)
            .await
            .unwrap();
        made.insert(id, ep);
    }
    // Another host's CNI attachment of the same owner, not in this host's valid list.
    let mut remote = endpoint(&net, "remote", Ipv4Addr::new(10, 75, 0, 200));
    remote.host = "h2".into();
    remote.origin = Origin::Cni;
    remote.owner = Some("k8s".into());
    h.store
        .put(
            &keys::endpoint("pods", remote.ip.ip()),
            to_json(&remote),
            None,
        )
        .await
        .unwrap();
    h.dp.clear_calls();

    let gc = CniGcRequest {
        network: "pods".into(),
        owner: "k8s".into(),
        valid: vec!["live".into()],
    };
    let released = h.svc.cni_gc(&gc).await.unwrap().released;
    let ids: Vec<&str> = released.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["stale"]);

    let left: BTreeSet<String> = h
        .svc
        .endpoints(Some("pods"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id.to_string())
        .collect();
    assert_eq!(
        left,
        ["by-hand", "live", "other-owner", "remote"]
            .map(String::from)
            .into()
    );
    // The stale veth goes in the background; the others stay, untouched.
    let stale = made["stale"].host_ifname.clone();
    eventually("the stale veth to go", || {
        h.dp.with(|m| !m.veths().iter().any(|(_, n)| *n == stale))
    })
    .await;
    let veths: BTreeSet<String> = h.dp.with(|m| m.veths().into_iter().map(|v| v.1).collect());
    let kept: BTreeSet<String> = ["live", "other-owner", "by-hand"]
        .iter()
        .map(|id| made[id].host_ifname.clone())
        .collect();
    assert_eq!(veths, kept);
    let mutations = h.dp.mutations();
    assert_eq!(mutations.len(), 1, "{mutations:?}");
    assert_eq!(mutations[0].op, "delete_link_later");
    // Asked again, nothing more goes.
    assert!(h.svc.cni_gc(&gc).await.unwrap().released.is_empty());
}

#[tokio::test]
async fn gc_of_a_network_that_does_not_exist_is_a_no_op() {
    let h = Harness::new().await;
    let gc = CniGcRequest {
        network: "nowhere".into(),
        owner: "k8s".into(),
        valid: vec![],
    };
    assert!(h.svc.cni_gc(&gc).await.unwrap().released.is_empty());
    assert!(h.dp.mutations().is_empty());
}
