//! Allocation: create-if-absent on the address key, retried past lost races, bounded, and
//! never taking an address in a network that changed meanwhile.

use super::*;
use crate::daemon::access::Caller;

/// What `attach` hands `allocate`: the gateway as a placeholder address, no MAC yet.
fn template(net: &Network, id: &str) -> Endpoint {
    Endpoint {
        ip: Ipv4Network::new(net.gateway, net.subnet.prefix()).unwrap(),
        mac: Mac([0; 6]),
        host_ifname: String::new(),
        ..endpoint(net, id, net.gateway)
    }
}

#[tokio::test]
async fn an_attach_that_loses_the_race_for_an_address_takes_the_next_one() {
    let h = Harness::new().await;
    h.network("race", "10.70.0.0/24").await;
    h.store.steal(2);
    let ep = h
        .svc
        .attach(&attach_req("race", "eth0"), Caller::ROOT)
        .await
        .unwrap();
    let stolen = h.store.stolen();
    assert_eq!(stolen.len(), 2, "two races were lost: {stolen:?}");
    assert!(!stolen.contains(&ep.ip.ip()), "{} was taken by h2", ep.ip);
    // The winners keep their addresses; ours is recorded once, and wired.
    let eps = h.svc.endpoints(Some("race")).await.unwrap();
    assert_eq!(eps.len(), 3, "{eps:?}");
    for ip in &stolen {
        assert!(eps.iter().any(|e| e.ip.ip() == *ip && e.host == "h2"));
    }
    let veths = h.dp.with(|m| m.veths());
    assert_eq!(veths.len(), 1);
    assert_eq!(veths[0].1, ep.host_ifname);
}

#[tokio::test]
async fn a_requested_address_that_is_taken_is_a_conflict_not_a_retry() {
    let h = Harness::new().await;
    h.network("asked", "10.71.0.0/24").await;
    let mut req = attach_req("asked", "eth0");
    req.ip = Some("10.71.0.9".into());
    h.store.steal(1);
    let e = h.svc.attach(&req, Caller::ROOT).await.unwrap_err();
    assert!(
        matches!(&e, Error::Conflict(m) if m.contains("10.71.0.9 is already in use")),
        "{e}"
    );
    assert_eq!(h.store.stolen(), vec![Ipv4Addr::new(10, 71, 0, 9)]);
    let eps = h.svc.endpoints(Some("asked")).await.unwrap();
    assert_eq!(eps.len(), 1, "only the winner's record: {eps:?}");
    assert!(h.dp.with(|m| m.veths().is_empty() && m.workload.is_empty()));
}

#[tokio::test]
async fn losing_every_race_gives_up_after_a_bounded_number_of_tries() {
    let h = Harness::new().await;
    h.network("busy", "10.72.0.0/16").await;
    h.store.steal(usize::MAX);
    let e = h
        .svc
        .attach(&attach_req("busy", "eth0"), Caller::ROOT)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Conflict(m) if m.contains(&format!("lost the race for {MAX_ALLOCATION_ATTEMPTS} free addresses"))),
        "{e}"
    );
    assert_eq!(h.store.stolen().len(), MAX_ALLOCATION_ATTEMPTS);
    assert!(h.dp.with(|m| m.veths().is_empty()));
}

#[tokio::test]
async fn a_full_network_says_so_and_keeps_nothing_of_the_refused_attach() {
    let h = Harness::new().await;
    // A /29: six addresses, one the gateway's.
    h.network("small", "10.73.0.0/29").await;
    for i in 0..5 {
        let ifname = format!("eth{i}");
        h.svc
            .attach(&attach_req("small", &ifname), Caller::ROOT)
            .await
            .unwrap();
    }
    let before = h.endpoint_keys().await;
    let e = h
        .svc
        .attach(&attach_req("small", "eth5"), Caller::ROOT)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Exhausted(m) if m.contains("network small has no free address: 5 of 5 in use")),
        "{e}"
    );
    assert_eq!(h.endpoint_keys().await, before);
    assert_eq!(h.dp.with(|m| m.veths().len()), 5);
}

#[tokio::test]
async fn create_steps_over_orphaned_vnis_and_names_an_invalid_record() {
    let h = Harness::new().await;
    let svc = &h.svc;
    // A VNI index entry whose network record is gone or broken holds its VNI.
    let orphan = ipam::AUTO_VNI_BASE;
    svc.store()
        .put(&keys::vni(orphan), b"lost".to_vec(), None)
        .await
        .unwrap();
    let net = svc
        .create_network(&request("fresh", "10.66.0.0/24"))
        .await
        .unwrap();
    assert_eq!(
        net.vni.get(),
        orphan + 1,
        "the orphaned VNI is stepped over"
    );
    let mut explicit = request("explicit", "10.66.1.0/24");
    explicit.vni = Some(orphan);
    let e = svc.create_network(&explicit).await.unwrap_err().to_string();
    assert!(e.contains("no valid network record"), "{e}");
    // An invalid record under the name asked for is named, not retried.
    svc.store()
        .put(&keys::network("broken"), b"{not json".to_vec(), None)
        .await
        .unwrap();
    let e = svc
        .create_network(&request("broken", "10.66.2.0/24"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/rnet/v1/networks/broken") && e.contains("undecodable"),
        "{e}"
    );
}

#[tokio::test]
async fn no_address_is_taken_in_a_network_removed_or_recreated_meanwhile() {
    let h = Harness::new().await;
    let svc = &h.svc;
    svc.create_network(&request("gone", "10.69.0.0/24"))
        .await
        .unwrap();
    let (net, rev) = svc.network_at("gone").await.unwrap();
    // Removed and created again between the attach's read and its allocation.
    svc.store().delete(&keys::network("gone")).await.unwrap();
    svc.store().delete(&keys::vni(net.vni.get())).await.unwrap();
    svc.create_network(&request("gone", "10.69.0.0/24"))
        .await
        .unwrap();
    let e = svc
        .allocate(&net, template(&net, "late"), None, Some(rev))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("removed or changed while attaching"), "{e}");
    assert!(svc.endpoints(Some("gone")).await.unwrap().is_empty());
    // Read afresh, it goes through.
    let (net, rev) = svc.network_at("gone").await.unwrap();
    assert!(svc
        .allocate(&net, template(&net, "fresh"), None, Some(rev))
        .await
        .is_ok());
}

#[tokio::test]
async fn a_late_release_never_frees_a_newer_allocation_of_the_same_address() {
    let h = Harness::new().await;
    let svc = &h.svc;
    let net = h.network("late", "10.65.0.0/24").await;
    let a = svc
        .allocate(&net, template(&net, "a"), None, None)
        .await
        .unwrap();
    assert!(svc.release(&a).await, "the first release frees it");
    // The lowest free address again: the same one, for another endpoint.
    let b = svc
        .allocate(&net, template(&net, "b"), None, None)
        .await
        .unwrap();
    assert_eq!(a.ep.ip, b.ep.ip);
    // A detach of `a` that read its record before the first release comes late.
    assert!(!svc.release(&a).await, "a late release is refused");
    let left = svc.endpoints(Some("late")).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id.as_str(), "b", "b keeps its address");
    assert!(svc.release(&b).await);
    assert!(svc.endpoints(Some("late")).await.unwrap().is_empty());
}
