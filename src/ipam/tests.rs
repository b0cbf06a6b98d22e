use super::*;

#[test]
fn requested_mac_and_mtu() {
    let net = plan_network(&req("blue", "10.1.0.0/24"), &[], 1450).unwrap();
    let ok = |s: &str| check_requested_mac(&net, s.parse().unwrap());
    assert!(ok("02:00:00:00:00:01").is_ok());
    assert!(ok("00:00:00:00:00:00").is_err());
    assert!(ok("ff:ff:ff:ff:ff:ff").is_err());
    assert!(ok("01:00:5e:00:00:01").is_err());
    assert!(ok("02:52:0a:01:00:05").is_err(), "derived for 10.1.0.5");
    assert!(
        ok("02:52:0a:02:00:05").is_ok(),
        "derived for another subnet"
    );
    assert!(check_requested_mtu(&net, 1400).is_ok());
    assert!(check_requested_mtu(&net, 1450).is_ok());
    assert!(check_requested_mtu(&net, 1451).is_err());
    assert!(check_requested_mtu(&net, 67).is_err());
}

#[test]
fn ipsec_costs_the_esp_overhead_in_mtu() {
    let enc = NetworkRequest {
        encryption: Some(Encryption::Ipsec),
        ..req("sec", "10.9.0.0/24")
    };
    let net = plan_network(&enc, &[], 1450).unwrap();
    assert_eq!(
        (net.encryption, net.mtu),
        (Encryption::Ipsec, 1410),
        "1500 - 50 - 40"
    );
    let e = plan_network(
        &NetworkRequest {
            mtu: Some(1411),
            ..enc
        },
        &[],
        1450,
    )
    .unwrap_err();
    assert!(e.to_string().contains("40-byte ESP"), "{e}");
}

#[test]
fn encryption_is_fixed_and_costs_the_wireguard_overhead_in_mtu() {
    let enc = NetworkRequest {
        encryption: Some(Encryption::Wireguard),
        ..req("sec", "10.9.0.0/24")
    };
    let net = plan_network(&enc, &[], 1450).unwrap();
    assert_eq!(net.encryption, Encryption::Wireguard);
    assert_eq!(net.mtu, 1390, "1500 - 50 - 60");
    let e = plan_network(
        &NetworkRequest {
            mtu: Some(1400),
            ..enc.clone()
        },
        &[],
        1450,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("60-byte WireGuard"), "{e}");
    // Asked again without saying: the same network; asked with another value: refused.
    let again = plan_network(&req("sec", "10.9.0.0/24"), std::slice::from_ref(&net), 1450);
    assert_eq!(again.unwrap(), net);
    let plain = NetworkRequest {
        encryption: Some(Encryption::None),
        ..req("sec", "10.9.0.0/24")
    };
    let e = plan_network(&plain, std::slice::from_ref(&net), 1450)
        .unwrap_err()
        .to_string();
    assert!(e.contains("encryption wireguard vs none"), "{e}");
}

fn req(name: &str, subnet: &str) -> NetworkRequest {
    NetworkRequest {
        name: name.into(),
        subnet: subnet.into(),
        ..Default::default()
    }
}

fn net(name: &str, subnet: &str, vni: u32) -> Network {
    let mut r = req(name, subnet);
    r.vni = Some(vni);
    plan_network(&r, &[], 1450).unwrap()
}

#[test]
fn defaults_are_filled_in() {
    let n = plan_network(&req("blue", "10.1.0.0/24"), &[], 1450).unwrap();
    assert_eq!(n.gateway, "10.1.0.1".parse::<Ipv4Addr>().unwrap());
    assert_eq!(n.mtu, 1450);
    assert_eq!(n.vni.get(), AUTO_VNI_BASE);
}

#[test]
fn bad_subnets_are_named() {
    for (s, want) in [
        ("10.1.0.0", "not an IPv4 CIDR"),
        ("10.1.0.0/33", "not an IPv4 CIDR"),
        ("banana", "not an IPv4 CIDR"),
        ("10.1.0.5/24", "did you mean 10.1.0.0/24"),
        ("10.1.0.0/31", "too small"),
    ] {
        let e = plan_network(&req("a", s), &[], 1450)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{s}: {e}");
    }
}

#[test]
fn gateway_must_be_inside() {
    let mut r = req("a", "10.1.0.0/24");
    r.gateway = Some("10.2.0.1".into());
    assert!(plan_network(&r, &[], 1450)
        .unwrap_err()
        .to_string()
        .contains("not a host address"));
    r.gateway = Some("10.1.0.255".into());
    assert!(plan_network(&r, &[], 1450).is_err());
    r.gateway = Some("10.1.0.254".into());
    assert!(plan_network(&r, &[], 1450).is_ok());
}

#[test]
fn same_name_same_options_is_idempotent() {
    let a = net("a", "10.1.0.0/24", 100);
    let again = plan_network(&req("a", "10.1.0.0/24"), std::slice::from_ref(&a), 1450).unwrap();
    assert_eq!(again, a);
    let e = plan_network(&req("a", "10.2.0.0/24"), &[a], 1450).unwrap_err();
    assert!(
        matches!(e, PlanError::Conflict(ref m) if m.contains("subnet")),
        "{e}"
    );
}

#[test]
fn vni_and_overlap_conflicts() {
    let a = net("a", "10.1.0.0/16", 100);
    let mut r = req("b", "10.2.0.0/24");
    r.vni = Some(100);
    assert!(plan_network(&r, std::slice::from_ref(&a), 1450)
        .unwrap_err()
        .to_string()
        .contains("VNI 100"));
    let e = plan_network(&req("b", "10.1.5.0/24"), std::slice::from_ref(&a), 1450).unwrap_err();
    assert!(e.to_string().contains("overlaps"), "{e}");
    let mut r = req("b", "10.1.5.0/24");
    r.allow_overlap = true;
    let b = plan_network(&r, std::slice::from_ref(&a), 1450).unwrap();
    assert_ne!(b.vni, a.vni);
    r.vni = Some(VNI_MAX + 1);
    assert!(plan_network(&r, &[a], 1450)
        .unwrap_err()
        .to_string()
        .contains("out of range"));
}

#[test]
fn mtu_bounds() {
    let mut r = req("a", "10.1.0.0/24");
    r.mtu = Some(1500);
    assert!(plan_network(&r, &[], 1450)
        .unwrap_err()
        .to_string()
        .contains("MTU 1500"));
    r.mtu = Some(1400);
    assert_eq!(plan_network(&r, &[], 1450).unwrap().mtu, 1400);
}

#[test]
fn candidates_visit_every_free_address_once_lowest_first() {
    for subnet in ["10.1.0.0/30", "10.1.0.0/29", "10.1.0.0/24"] {
        let n = net("a", subnet, 5);
        let taken: BTreeSet<Ipv4Addr> = ["10.1.0.3".parse().unwrap()].into();
        let free: Vec<Ipv4Addr> = free_addresses(&n, &taken).collect();
        for seed in [0u64, 3, 99, u64::MAX] {
            let order: Vec<Ipv4Addr> = candidates(&n, &taken, seed).collect();
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, free, "{subnet} seed {seed}");
            assert_eq!(order.first(), free.first(), "lowest first");
        }
    }
    let n = net("a", "10.1.0.0/24", 5);
    let none = BTreeSet::new();
    assert_ne!(
        candidates(&n, &none, 10).nth(1),
        candidates(&n, &none, 100).nth(1),
        "seeds spread the second try"
    );
}

#[test]
fn the_largest_allowed_subnet_allocates_without_listing_its_space() {
    // A /8: 16.7 million addresses. The first candidates come at once, whatever the seed.
    let n = net("big", "10.0.0.0/8", 5);
    let taken: BTreeSet<Ipv4Addr> = ["10.0.0.2".parse().unwrap()].into();
    let first: Vec<Ipv4Addr> = candidates(&n, &taken, u64::MAX / 3).take(3).collect();
    assert_eq!(first[0], "10.0.0.3".parse::<Ipv4Addr>().unwrap());
    assert!(first
        .iter()
        .all(|ip| n.subnet.contains(*ip) && !taken.contains(ip)));
    assert_eq!(capacity(&n), (1 << 24) - 3);
}

#[test]
fn subnets_larger_than_the_limit_are_refused() {
    for s in ["0.0.0.0/0", "10.0.0.0/7", "128.0.0.0/1"] {
        let e = parse_subnet(s).unwrap_err().to_string();
        assert!(e.contains("too large") && e.contains("/8"), "{s}: {e}");
    }
    assert!(parse_subnet("10.0.0.0/8").is_ok());
}

#[test]
fn addresses() {
    let n = net("a", "10.1.0.0/29", 5);
    let taken: BTreeSet<Ipv4Addr> = ["10.1.0.2".parse().unwrap()].into();
    let free: Vec<String> = free_addresses(&n, &taken).map(|i| i.to_string()).collect();
    assert_eq!(free, ["10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]);
    assert_eq!(capacity(&n), 5);
    assert!(check_requested(&n, "10.1.0.1".parse().unwrap())
        .unwrap_err()
        .0
        .contains("gateway"));
    assert!(check_requested(&n, "10.1.0.7".parse().unwrap())
        .unwrap_err()
        .0
        .contains("broadcast"));
    assert!(check_requested(&n, "10.9.0.2".parse().unwrap())
        .unwrap_err()
        .0
        .contains("outside"));
    assert!(check_requested(&n, "10.1.0.3".parse().unwrap()).is_ok());
}
