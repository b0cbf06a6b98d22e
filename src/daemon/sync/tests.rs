use super::*;
use crate::model::Mac;

fn kv(key: String, value: Vec<u8>) -> KeyValue {
    KeyValue {
        key,
        value,
        create_revision: 1,
        mod_revision: 1,
        lease: 0,
    }
}

fn host(id: &str, underlay: &str, renewed: u64) -> Vec<u8> {
    serde_json::to_vec(&HostRecord {
        renewed,
        ..HostRecord::plain(id, underlay)
    })
    .unwrap()
}

#[test]
fn renewals_are_not_relevant_but_arrivals_and_departures_are() {
    let mut c = Cache::default();
    let put = |k: String, v: Vec<u8>| Event {
        kind: EventKind::Put,
        kv: kv(k, v),
    };
    assert!(c.apply(2, &[put(keys::host("h2"), host("h2", "198.18.0.12", 1))]));
    assert!(
        !c.apply(3, &[put(keys::host("h2"), host("h2", "198.18.0.12", 2))]),
        "a renewal changes no table"
    );
    assert!(c.apply(
        4,
        &[Event {
            kind: EventKind::Delete,
            kv: kv(keys::host("h2"), vec![])
        }]
    ));
    assert_eq!(c.revision, 4);
    assert!(c.presence.is_empty());
    assert!(
        !c.apply(5, &[put(keys::host("h3"), b"garbage".to_vec())]),
        "undecodable records are ignored"
    );
}

fn network(name: &str, subnet: &str) -> Vec<u8> {
    let subnet: ipnetwork::Ipv4Network = subnet.parse().unwrap();
    serde_json::to_vec(&Network {
        name: name.parse().unwrap(),
        id: "00000000000000aa".parse().unwrap(),
        vni: crate::model::Vni::new(7).unwrap(),
        subnet,
        gateway: std::net::Ipv4Addr::from(u32::from(subnet.network()) + 1),
        mtu: 1450,
        encryption: Default::default(),
        allow_overlap: false,
        egress: true,
        internal: false,
    })
    .unwrap()
}

fn endpoint(net: &str, ip: &str, host: &str) -> Endpoint {
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    Endpoint {
        network: net.parse().unwrap(),
        network_id: "00000000000000aa".parse().unwrap(),
        id: format!("id-{ip}").parse().unwrap(),
        ip: ipnetwork::Ipv4Network::new(ip, 24).unwrap(),
        mac: Mac::from_ipv4(ip),
        host: host.into(),
        ifname: "eth0".parse().unwrap(),
        netns: String::new(),
        netns_inode: 0,
        host_ifname: crate::dataplane::spec::host_ifname(ip),
        created: 0,
        origin: Default::default(),
        owner: None,
        mtu: None,
        name: None,
        aliases: Vec::new(),
        ports: Vec::new(),
    }
}

fn ep_kv(e: &Endpoint, rev: Revision) -> KeyValue {
    KeyValue {
        mod_revision: rev,
        ..kv(
            keys::endpoint(e.network.as_str(), e.ip.ip()),
            serde_json::to_vec(e).unwrap(),
        )
    }
}

fn put(kv: KeyValue) -> Event {
    Event {
        kind: EventKind::Put,
        kv,
    }
}

fn own_h1() -> Own {
    Own {
        host_id: "h1".into(),
        underlay: Some("198.18.0.11".parse().unwrap()),
    }
}

#[test]
fn invalid_records_are_kept_out_and_listed_until_fixed_or_deleted() {
    let mut c = Cache::new(own_h1());
    let good = endpoint("blue", "10.9.0.5", "h2");
    let outside = endpoint("blue", "10.99.0.5", "h2");
    let mut multicast = endpoint("blue", "10.9.0.6", "h2");
    multicast.mac = "01:00:5e:00:00:06".parse().unwrap();
    // Endpoints sort before networks in a list: the load must still check them against it.
    c.load(
        &[
            ep_kv(&good, 3),
            ep_kv(&outside, 4),
            ep_kv(&multicast, 5),
            kv(keys::host("h3"), host("h3", "127.0.0.1", 1)),
            kv(keys::host_info("h4"), host("h4", "198.18.0.11", 1)),
            kv(keys::host_info("h2"), host("h2", "198.18.0.12", 1)),
            kv(keys::network("junk"), b"{not json".to_vec()),
            kv(keys::network("blue"), network("blue", "10.9.0.0/24")),
            kv("/rnet/v1/endpoint-ids/blue/x".into(), b"garbage".to_vec()),
            kv("/rnet/v1/future/thing".into(), b"anything".to_vec()),
        ],
        9,
    );
    assert_eq!(c.endpoints_of("blue").cloned().collect::<Vec<_>>(), [good]);
    assert_eq!(c.networks.keys().collect::<Vec<_>>(), ["blue"]);
    assert!(c.presence.is_empty());
    assert_eq!(c.host_info.keys().collect::<Vec<_>>(), ["h2"]);
    let bad: Vec<String> = c.bad.values().map(|b| b.rejected.to_string()).collect();
    assert_eq!(bad.len(), 6, "{bad:#?}");
    for want in [
        "endpoint /rnet/v1/endpoints/blue/10.99.0.5: address 10.99.0.5 is outside subnet",
        "endpoint /rnet/v1/endpoints/blue/10.9.0.6: MAC address 01:00:5e:00:00:06 is a multicast",
        "host /rnet/v1/hosts/h3: underlay 127.0.0.1 is a loopback address",
        "host-info /rnet/v1/host-info/h4: underlay 198.18.0.11 is this host's (h1) own address",
        "network /rnet/v1/networks/junk: undecodable record",
        "endpoint-id index /rnet/v1/endpoint-ids/blue/x: the value \"garbage\"",
    ] {
        assert!(
            bad.iter().any(|b| b.starts_with(want)),
            "{want} in {bad:#?}"
        );
    }
    // Fixed: used again. Deleted: forgotten.
    let fixed = endpoint("blue", "10.9.0.6", "h2");
    assert!(c.apply(10, &[put(ep_kv(&fixed, 10))]));
    assert_eq!(c.endpoints_of("blue").count(), 2);
    assert!(!c
        .bad
        .contains_key(&keys::endpoint("blue", "10.9.0.6".parse().unwrap())));
    c.apply(
        11,
        &[Event {
            kind: EventKind::Delete,
            kv: kv(keys::network("junk"), vec![]),
        }],
    );
    assert!(!c.bad.contains_key(&keys::network("junk")));
    assert_eq!(c.bad.len(), 4);
    // A relist finds what the store holds now, no more.
    c.load(&[kv(keys::network("junk"), b"{not json".to_vec())], 12);
    assert_eq!(c.bad.keys().collect::<Vec<_>>(), [&keys::network("junk")]);
    assert!(c.logged.is_empty());
    assert!(c.endpoints.is_empty() && c.held.is_empty());
}

#[test]
fn a_record_that_turns_bad_takes_its_valid_predecessor_out() {
    let mut c = Cache::new(own_h1());
    c.load(
        &[
            kv(keys::network("blue"), network("blue", "10.9.0.0/24")),
            kv(keys::host("h2"), host("h2", "198.18.0.12", 1)),
            ep_kv(&endpoint("blue", "10.9.0.5", "h2"), 2),
        ],
        2,
    );
    assert_eq!(c.endpoints_of("blue").count(), 1);
    let mut moved = endpoint("blue", "10.9.0.5", "h2");
    moved.ip = "10.9.0.6/24".parse().unwrap();
    moved.host_ifname = crate::dataplane::spec::host_ifname(moved.ip.ip());
    // Written under the old key, .5.
    let key = keys::endpoint("blue", "10.9.0.5".parse().unwrap());
    let mut wrong = ep_kv(&moved, 3);
    wrong.key = key.clone();
    assert!(c.apply(4, &[put(wrong)]));
    assert!(!c.endpoints.contains_key(&key));
    assert!(c.bad[&key].rejected.reason.contains("its key 10.9.0.5"));
    assert!(c.apply(5, &[put(kv(keys::host("h2"), host("h2", "127.0.0.1", 2)))]));
    assert!(
        c.presence.is_empty(),
        "a loopback underlay replaces no valid record"
    );
}

#[test]
fn a_network_that_turns_bad_or_goes_takes_its_endpoints_out_until_it_is_back() {
    let mut c = Cache::new(own_h1());
    c.load(
        &[
            kv(keys::network("blue"), network("blue", "10.9.0.0/24")),
            ep_kv(&endpoint("blue", "10.9.0.5", "h2"), 2),
            ep_kv(&endpoint("blue", "10.9.0.6", "h2"), 2),
        ],
        2,
    );
    assert_eq!(c.endpoints_of("blue").count(), 2);
    // The network's subnet is rewritten: its endpoints no longer fit.
    assert!(c.apply(
        3,
        &[put(kv(
            keys::network("blue"),
            network("blue", "10.7.0.0/24")
        ))]
    ));
    assert_eq!(c.endpoints_of("blue").count(), 0);
    assert_eq!(c.bad.len(), 2);
    let rev = c.bad.values().next().unwrap().revision;
    // Garbage: they stay out, for another reason.
    assert!(c.apply(4, &[put(kv(keys::network("blue"), b"[]".to_vec()))]));
    assert!(c
        .bad
        .values()
        .filter(|b| b.rejected.kind == validate::Kind::Endpoint)
        .all(|b| b.rejected.reason == "network blue has no valid record" && b.revision == 4));
    assert_ne!(rev, 4);
    // Back as it was: they are used again.
    assert!(c.apply(
        5,
        &[put(kv(
            keys::network("blue"),
            network("blue", "10.9.0.0/24")
        ))]
    ));
    assert_eq!(c.endpoints_of("blue").count(), 2);
    assert!(c.bad.is_empty(), "{:?}", c.bad);
    // Deleted: its endpoints are held (and listed) until it returns.
    assert!(c.apply(
        6,
        &[Event {
            kind: EventKind::Delete,
            kv: kv(keys::network("blue"), vec![]),
        }]
    ));
    assert_eq!(c.endpoints_of("blue").count(), 0);
    assert_eq!(c.bad.len(), 2);
}

#[test]
fn endpoints_of_one_network_do_not_leak_into_a_prefix_sibling() {
    let mut c = Cache::default();
    let ep = |net: &str, ip: &str| {
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        let e = Endpoint {
            network_id: "00000000000000aa".parse().unwrap(),
            network: net.parse().unwrap(),
            id: "x".parse().unwrap(),
            ip: ipnetwork::Ipv4Network::new(ip, 24).unwrap(),
            mac: Mac::from_ipv4(ip),
            host: "h1".into(),
            ifname: "eth0".parse().unwrap(),
            netns: String::new(),
            netns_inode: 0,
            host_ifname: crate::dataplane::spec::host_ifname(ip),
            created: 0,
            origin: Default::default(),
            owner: None,
            mtu: None,
            name: None,
            aliases: Vec::new(),
            ports: Vec::new(),
        };
        kv(keys::endpoint(net, ip), serde_json::to_vec(&e).unwrap())
    };
    c.load(
        &[
            kv(keys::network("a"), network("a", "10.0.0.0/24")),
            kv(keys::network("a2"), network("a2", "10.0.0.0/24")),
            ep("a", "10.0.0.2"),
            ep("a2", "10.0.0.3"),
            ep("a", "10.0.0.4"),
        ],
        9,
    );
    assert_eq!(c.endpoints_of("a").count(), 2);
    assert_eq!(c.endpoints_of("a2").count(), 1);
    assert!(c.synced);
}

/// On the paused clock: a store that is down is listed again after 100 ms, doubling to
/// 1 s, and once it is back the cache is loaded within that second.
#[tokio::test(start_paused = true)]
async fn a_store_that_is_down_is_retried_at_doubling_delays_up_to_a_second() {
    use crate::daemon::test_store::PausedStore;
    use tokio::time::Instant;
    let store = PausedStore::new();
    store
        .put(&keys::host_info("h2"), host("h2", "198.18.0.12", 1), None)
        .await
        .unwrap();
    store.set_down(true);
    let shared = Arc::new(Shared {
        cache: RwLock::new(Cache::default()),
        changed: Notify::new(),
    });
    let task = tokio::spawn(run(store.clone(), shared.clone()));
    tokio::time::sleep(Duration::from_millis(4200)).await; // the schedule is what is tested
    let lists = store.calls("list");
    let gaps: Vec<u64> = lists
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis() as u64)
        .collect();
    assert_eq!(gaps, [100, 200, 400, 800, 1000, 1000]);
    assert!(!shared.read().synced);

    store.set_down(false);
    let back = Instant::now();
    tokio::time::timeout(Duration::from_secs(1), shared.changed.notified())
        .await
        .expect("the cache is loaded within a second of the store's return");
    assert!(back.elapsed() <= Duration::from_secs(1));
    let cache = shared.read();
    assert!(cache.synced);
    assert!(cache.host_info.contains_key("h2"));
    task.abort();
}

#[test]
fn every_change_to_the_used_endpoints_is_journalled_once_for_the_peer_programmer() {
    let mut c = Cache::new(own_h1());
    let (a, b) = (
        endpoint("blue", "10.9.0.5", "h2"),
        endpoint("blue", "10.9.0.6", "h2"),
    );
    let key = |e: &Endpoint| keys::endpoint(e.network.as_str(), e.ip.ip());
    c.load(
        &[
            kv(keys::network("blue"), network("blue", "10.9.0.0/24")),
            kv(keys::network("red"), network("red", "10.8.0.0/24")),
            ep_kv(&a, 2),
        ],
        2,
    );
    let generation = c.generation;
    assert!(
        c.take_touched(None).is_empty(),
        "a list starts a new generation instead"
    );
    c.apply(
        3,
        &[
            put(ep_kv(&b, 3)),
            put(ep_kv(&endpoint("red", "10.8.0.5", "h2"), 3)),
        ],
    );
    // The same record again changes nothing; a record that does not fit is not used.
    let stray = endpoint("blue", "10.7.0.9", "h2");
    c.apply(4, &[put(ep_kv(&b, 4)), put(ep_kv(&stray, 4))]);
    assert_eq!(
        c.take_touched(Some("blue")),
        [key(&b)].into(),
        "one network's changes, and only the used ones"
    );
    assert_eq!(c.take_touched(None).len(), 1, "red's change is still there");
    assert!(c.take_touched(None).is_empty(), "taken once");
    // A network change that takes endpoints out or lets them in touches each.
    c.apply(
        5,
        &[put(kv(
            keys::network("blue"),
            network("blue", "10.7.0.0/24"),
        ))],
    );
    assert_eq!(c.take_touched(None), [key(&a), key(&b), key(&stray)].into());
    c.apply(
        6,
        &[Event {
            kind: EventKind::Delete,
            kv: kv(key(&a), vec![]),
        }],
    );
    assert!(
        c.take_touched(None).is_empty(),
        "a held endpoint going was not used"
    );
    c.apply(
        7,
        &[put(kv(
            keys::network("blue"),
            network("blue", "10.9.0.0/24"),
        ))],
    );
    assert_eq!(c.take_touched(None), [key(&b), key(&stray)].into());
    c.apply(8, &[put(kv(key(&b), b"garbage".to_vec()))]);
    assert_eq!(c.take_touched(None), [key(&b)].into(), "gone bad: out");
    assert_eq!(c.generation, generation);
    c.load(&[], 9);
    assert_eq!(c.generation, generation + 1);
}
