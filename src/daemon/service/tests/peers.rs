//! Peer passes planned from the cache's journal: after a few remote changes the pass
//! programs just them (no read-back of the tables), and what it leaves in the kernel is what
//! a full pass, which reads the kernel and plans from scratch, would want.

use super::*;
use crate::daemon::access::Caller;
use crate::store::{Event, EventKind};

fn host_record(id: &str, underlay: &str) -> Vec<u8> {
    serde_json::to_vec(&HostRecord::plain(id, underlay)).unwrap()
}

fn put(key: String, value: Vec<u8>) -> Event {
    Event {
        kind: EventKind::Put,
        kv: KeyValue {
            key,
            value,
            create_revision: 1,
            mod_revision: 1,
            lease: 0,
        },
    }
}

fn remote(net: &Network, host: &str, ip: Ipv4Addr) -> Event {
    let mut ep = endpoint(net, &format!("r{}", u32::from(ip) & 0xffff), ip);
    ep.host = host.into();
    put(
        keys::endpoint(net.name.as_str(), ip),
        serde_json::to_vec(&ep).unwrap(),
    )
}

fn delete(key: String) -> Event {
    Event {
        kind: EventKind::Delete,
        kv: KeyValue {
            key,
            value: Vec::new(),
            create_revision: 0,
            mod_revision: 0,
            lease: 0,
        },
    }
}

#[tokio::test]
async fn a_pass_after_a_few_changes_programs_only_them_and_leaves_what_a_full_pass_wants() {
    let h = Harness::new().await;
    let net = h.network("pp", "10.77.0.0/16").await;
    h.svc
        .attach(&attach_req("pp", "eth0"), Caller::ROOT)
        .await
        .unwrap();
    let ip = |i: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 77, 1, 0)) + i);
    // The watch's view: this host's records, two live peers, 40 endpoints on h2.
    let (kvs, rev) = h.store.inner.list(keys::ROOT).await.unwrap();
    let mut events = Vec::new();
    for (id, underlay) in [("h2", "198.18.0.12"), ("h3", "198.18.0.13")] {
        events.push(put(keys::host_info(id), host_record(id, underlay)));
        events.push(put(keys::host(id), host_record(id, underlay)));
    }
    events.extend((0..40).map(|i| remote(&net, "h2", ip(i))));
    {
        let mut cache = h.svc.shared.cache.write().unwrap();
        cache.load(&kvs, rev);
        cache.apply(rev + 1, &events);
    }
    h.svc.sync_peers(false).await.unwrap();
    let tables = || {
        h.dp.with(|m| m.sandboxes[&h.svc.sandbox_spec(&net).netns].tables.clone())
    };
    assert_eq!(tables().neigh.len(), 40);

    // Three go, three come (on h3), one moves from h2 to h3.
    let mut changes: Vec<Event> = (0..3)
        .map(|i| delete(keys::endpoint("pp", ip(i))))
        .collect();
    changes.extend((40..43).map(|i| remote(&net, "h3", ip(i))));
    changes.push(remote(&net, "h3", ip(10)));
    h.svc.shared.cache.write().unwrap().apply(rev + 2, &changes);
    h.dp.clear_calls();
    let programmed = h.svc.sync_peers(false).await.unwrap();
    let ops: Vec<&str> = h.dp.calls().iter().map(|c| c.op).collect();
    assert!(
        !ops.contains(&"observe_tables"),
        "planned from the journal, not from a read-back: {ops:?}"
    );
    // 3 neighbours and 3 MACs out, 3 + 3 in, the moved MAC re-pointed, h3's flood entry.
    assert_eq!(programmed, 14, "{ops:?}");

    let t = tables();
    assert_eq!(t.neigh.len(), 40);
    assert!(t.fdb.contains(&crate::peers::FdbEntry {
        mac: Mac::from_ipv4(ip(10)),
        dst: "198.18.0.13".parse().unwrap()
    }));
    let findings = h.svc.peer_pass(true, false, None).await.unwrap();
    assert!(
        findings.is_empty(),
        "a full pass wants nothing else: {findings:?}"
    );
}
