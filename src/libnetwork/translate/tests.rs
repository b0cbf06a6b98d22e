use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::*;
use crate::ipam::NetworkRequest;
use crate::libnetwork::protocol::IpamData;
use crate::libnetwork::protocol::{
    CreateNetworkRequest, EndpointInterface, RequestPoolRequest, GATEWAY_ADDRESS_TYPE,
    GENERIC_OPTIONS, REQUEST_ADDRESS_TYPE,
};
use crate::model::{Endpoint, Mac, Network};
use serde_json::json;

fn net(name: &str, subnet: &str, vni: u32) -> Network {
    ipam::plan_network(
        &NetworkRequest {
            name: name.into(),
            subnet: subnet.into(),
            vni: Some(vni),
            ..Default::default()
        },
        &[],
        1450,
    )
    .unwrap()
}

fn create_req(pool: &str, gw: &str, space: &str, generic: Value) -> CreateNetworkRequest {
    let mut options = BTreeMap::new();
    options.insert(GENERIC_OPTIONS.to_string(), generic);
    options.insert("com.docker.network.enable_ipv6".into(), json!(false));
    CreateNetworkRequest {
        network_id: "abc".into(),
        options,
        ipv4_data: vec![IpamData {
            address_space: space.into(),
            pool: pool.into(),
            gateway: gw.into(),
            aux_addresses: Default::default(),
        }],
        ipv6_data: vec![],
    }
}

#[test]
fn plan_reads_pool_gateway_and_options() {
    let p = plan_network(&create_req(
        "10.1.0.0/24",
        "10.1.0.1/24",
        LOCAL_ADDRESS_SPACE,
        json!({"rnet.network": "blue", "rnet.vni": "77", "com.docker.network.driver.mtu": "1400"}),
    ))
    .unwrap();
    assert_eq!(p.name.unwrap().as_str(), "blue");
    assert_eq!(p.subnet.to_string(), "10.1.0.0/24");
    assert_eq!(p.gateway, Some("10.1.0.1".parse().unwrap()));
    assert_eq!((p.vni, p.mtu), (Some(77), Some(1400)));
    assert!(p.rnet_ipam);
    let p = plan_network(&create_req(
        "172.18.0.0/16",
        "172.18.0.1/16",
        "LocalDefault",
        Value::Null,
    ))
    .unwrap();
    assert!(!p.rnet_ipam);
    assert_eq!(p.name, None);
}

#[test]
fn plan_refuses_what_rnet_cannot_do() {
    let mut r = create_req("10.1.0.0/24", "", LOCAL_ADDRESS_SPACE, json!({}));
    r.ipv6_data = r.ipv4_data.clone();
    assert!(plan_network(&r)
        .unwrap_err()
        .to_string()
        .contains("IPv4 only"));
    let mut r = create_req("10.1.0.0/24", "", LOCAL_ADDRESS_SPACE, json!({}));
    r.ipv4_data.push(r.ipv4_data[0].clone());
    assert!(plan_network(&r)
        .unwrap_err()
        .to_string()
        .contains("2 IPv4 pools"));
    let r = create_req(
        "10.1.0.0/24",
        "",
        LOCAL_ADDRESS_SPACE,
        json!({"rnet.netwrk": "x"}),
    );
    assert!(plan_network(&r)
        .unwrap_err()
        .to_string()
        .contains("unknown option rnet.netwrk"));
    let r = create_req(
        "10.1.0.0/24",
        "",
        LOCAL_ADDRESS_SPACE,
        json!({"rnet.network": "way-too-long-name"}),
    );
    assert!(matches!(plan_network(&r), Err(Error::Invalid(_))));
    let r = create_req("10.1.0.5/24", "", LOCAL_ADDRESS_SPACE, json!({}));
    assert!(plan_network(&r)
        .unwrap_err()
        .to_string()
        .contains("host bits"));
}

#[test]
fn derived_names_fit_and_differ() {
    let a = derived_name("10.100.200.0/24".parse().unwrap());
    assert_eq!(a.as_str(), "dk0a64c80018");
    let b = derived_name("10.100.200.0/25".parse().unwrap());
    assert_ne!(a, b);
}

#[test]
fn choice_by_name_by_subnet_or_new() {
    let blue = net("blue", "10.1.0.0/24", 10);
    let red = net("red", "10.2.0.0/24", 11);
    let nets = vec![blue.clone(), red.clone()];
    let plan = |name: Option<&str>, subnet: &str| NetworkPlan {
        name: name.map(|n| n.parse().unwrap()),
        subnet: subnet.parse().unwrap(),
        gateway: None,
        mtu: None,
        vni: None,
        encryption: None,
        rnet_ipam: true,
        internal: false,
    };
    // By name.
    assert_eq!(
        choose_network(&plan(Some("blue"), "10.1.0.0/24"), &nets).unwrap(),
        Choice::Existing(blue.clone())
    );
    // By subnet.
    assert_eq!(
        choose_network(&plan(None, "10.2.0.0/24"), &nets).unwrap(),
        Choice::Existing(red.clone())
    );
    // New, named after the subnet; the same on every host.
    match choose_network(&plan(None, "10.3.0.0/24"), &nets).unwrap() {
        Choice::Create(r) => {
            assert_eq!(r.name, "dk0a03000018");
            assert_eq!(r.subnet, "10.3.0.0/24");
        }
        other => panic!("{other:?}"),
    }
    // New, by name.
    assert_eq!(
        choose_network(&plan(Some("green"), "10.4.0.0/24"), &nets)
            .unwrap()
            .name(),
        "green"
    );
    // A named network with another subnet is a conflict, naming both.
    let e = choose_network(&plan(Some("blue"), "10.9.0.0/24"), &nets).unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "{e}");
    assert!(e.to_string().contains("10.1.0.0/24"), "{e}");
    // Two rnet networks with the subnet: ambiguous without a name.
    let mut twin = net("twin", "10.1.0.0/24", 12);
    twin.allow_overlap = true;
    let nets2 = vec![blue.clone(), twin];
    let e = choose_network(&plan(None, "10.1.0.0/24"), &nets2).unwrap_err();
    assert!(e.to_string().contains("blue, twin"), "{e}");
}

#[test]
fn compatibility_checks_what_docker_fixed() {
    let blue = net("blue", "10.1.0.0/24", 10);
    let mut p = NetworkPlan {
        name: None,
        subnet: blue.subnet,
        gateway: Some(blue.gateway),
        mtu: None,
        vni: None,
        encryption: None,
        rnet_ipam: false,
        internal: false,
    };
    assert!(check_compatible(&blue, &p).is_ok());
    p.gateway = Some("10.1.0.254".parse().unwrap());
    let e = check_compatible(&blue, &p).unwrap_err().to_string();
    assert!(e.contains("gateway 10.1.0.1 (Docker: 10.1.0.254)"), "{e}");
    p.gateway = None;
    p.mtu = Some(1000);
    assert!(check_compatible(&blue, &p).is_err());
}

#[test]
fn pool_ids_round_trip_and_are_deterministic() {
    let req = RequestPoolRequest {
        address_space: LOCAL_ADDRESS_SPACE.into(),
        pool: "10.1.0.0/24".into(),
        ..Default::default()
    };
    let a = plan_pool(&req, &[]).unwrap();
    assert_eq!(a, plan_pool(&req, &[]).unwrap());
    assert_eq!(a.id(), "rnet:10.1.0.0/24");
    assert_eq!(PoolRef::parse(&a.id()).unwrap(), a);
    let mut named = req.clone();
    named.options.insert(NETWORK_OPTION.into(), "blue".into());
    let b = plan_pool(&named, &[]).unwrap();
    assert_eq!(b.id(), "rnet:10.1.0.0/24:blue");
    assert_eq!(PoolRef::parse(&b.id()).unwrap(), b);
    assert!(PoolRef::parse("LocalDefault/10.1.0.0/24").is_err());
    assert!(PoolRef::parse("rnet:nonsense").is_err());
}

#[test]
fn pool_requests_rnet_cannot_serve() {
    let base = RequestPoolRequest {
        pool: "10.1.0.0/24".into(),
        ..Default::default()
    };
    let mut r = base.clone();
    r.v6 = true;
    assert!(plan_pool(&r, &[]).is_err());
    let mut r = base.clone();
    r.sub_pool = "10.1.0.0/25".into();
    assert!(plan_pool(&r, &[])
        .unwrap_err()
        .to_string()
        .contains("--ip-range"));
    let r = RequestPoolRequest::default();
    assert!(plan_pool(&r, &[])
        .unwrap_err()
        .to_string()
        .contains("--subnet"));
    // No --subnet, but the IPAM option names an existing network: its subnet.
    let blue = net("blue", "10.1.0.0/24", 10);
    let mut r = RequestPoolRequest::default();
    r.options.insert(NETWORK_OPTION.into(), "blue".into());
    assert_eq!(
        plan_pool(&r, std::slice::from_ref(&blue)).unwrap().subnet,
        blue.subnet
    );
    let mut r = base.clone();
    r.pool = "10.7.0.0/24".into();
    r.options.insert(NETWORK_OPTION.into(), "blue".into());
    assert!(matches!(plan_pool(&r, &[blue]), Err(Error::Conflict(_))));
}

#[test]
fn pool_network_prefers_name_then_binding_then_subnet() {
    let blue = net("blue", "10.1.0.0/24", 10);
    let mut twin = net("twin", "10.1.0.0/24", 11);
    twin.allow_overlap = true;
    let nets = vec![blue.clone(), twin.clone()];
    let pool = PoolRef {
        subnet: blue.subnet,
        network: None,
    };
    let none = BTreeSet::new();
    assert!(pool_network(&pool, &none, &nets).is_err());
    let bound: BTreeSet<String> = ["twin".to_string()].into();
    assert_eq!(
        pool_network(&pool, &bound, &nets).unwrap(),
        Choice::Existing(twin.clone())
    );
    let both: BTreeSet<String> = ["twin".to_string(), "blue".to_string()].into();
    assert!(pool_network(&pool, &both, &nets).is_err());
    let named = PoolRef {
        subnet: blue.subnet,
        network: Some("blue".parse().unwrap()),
    };
    assert_eq!(
        pool_network(&named, &both, &nets).unwrap(),
        Choice::Existing(blue)
    );
}

#[test]
fn gateway_answers() {
    let blue = net("blue", "10.1.0.0/24", 10);
    let pool = PoolRef {
        subnet: blue.subnet,
        network: None,
    };
    assert_eq!(
        gateway_for(&pool, None, Some(&blue)).unwrap().to_string(),
        "10.1.0.1/24"
    );
    assert_eq!(
        gateway_for(&pool, None, None).unwrap().to_string(),
        "10.1.0.1/24"
    );
    let asked = Some("10.1.0.254".parse().unwrap());
    assert_eq!(
        gateway_for(&pool, asked, None).unwrap().to_string(),
        "10.1.0.254/24"
    );
    assert!(gateway_for(&pool, asked, Some(&blue)).is_err());
    assert!(gateway_for(&pool, Some("10.1.0.255".parse().unwrap()), None).is_err());
    let mut o = BTreeMap::new();
    assert!(!is_gateway_request(&o));
    o.insert(REQUEST_ADDRESS_TYPE.into(), GATEWAY_ADDRESS_TYPE.into());
    assert!(is_gateway_request(&o));
}

fn endpoint() -> Endpoint {
    Endpoint {
        network_id: "00000000000000aa".parse().unwrap(),
        network: "blue".parse().unwrap(),
        id: reservation_id(7),
        ip: "10.1.0.5/24".parse().unwrap(),
        mac: Mac::from_ipv4("10.1.0.5".parse().unwrap()),
        host: "h1".into(),
        ifname: "eth0".parse().unwrap(),
        netns: String::new(),
        netns_inode: 0,
        host_ifname: "ve0a010005".into(),
        created: 0,
        origin: crate::model::Origin::Docker,
        owner: None,
        mtu: None,
        name: None,
        aliases: Vec::new(),
        ports: Vec::new(),
    }
}

#[test]
fn create_endpoint_answers_only_what_docker_left_empty() {
    let ep = endpoint();
    let given = EndpointInterface {
        address: "10.1.0.5/24".into(),
        ..Default::default()
    };
    let r = create_endpoint_response(&given, &ep);
    assert_eq!(
        r.interface,
        Some(EndpointInterface {
            mac_address: "02:52:0a:01:00:05".into(),
            ..Default::default()
        })
    );
    let all = EndpointInterface {
        address: "10.1.0.5/24".into(),
        mac_address: "02:00:00:00:00:01".into(),
        ..Default::default()
    };
    assert_eq!(create_endpoint_response(&all, &ep).interface, None);
    let r = create_endpoint_response(&EndpointInterface::default(), &ep);
    assert_eq!(r.interface.unwrap().address, "10.1.0.5/24");
    assert_eq!(
        requested_interface(&all).unwrap(),
        (
            Some("10.1.0.5".parse().unwrap()),
            Some("02:00:00:00:00:01".parse().unwrap())
        )
    );
    let v6 = EndpointInterface {
        address_ipv6: "fd00::2/64".into(),
        ..Default::default()
    };
    assert!(requested_interface(&v6).is_err());
}

#[test]
fn join_gives_the_veth_and_the_gateway() {
    let blue = net("blue", "10.1.0.0/24", 10);
    let peer = peer_ifname("blue", "10.1.0.5".parse().unwrap());
    assert!(peer.len() <= 15 && peer.starts_with("rd"));
    assert_ne!(peer, peer_ifname("twin", "10.1.0.5".parse().unwrap()));
    let j = join_response(&blue, &peer);
    assert_eq!(j.interface_name.src_name, peer);
    assert_eq!(j.interface_name.dst_prefix, "eth");
    assert_eq!(j.gateway, "10.1.0.1");
    assert!(j.disable_gateway_service);
}

#[test]
fn reservations_are_told_apart() {
    let mut ep = endpoint();
    assert!(is_reservation(&ep));
    ep.id = endpoint_id(&"ab".repeat(32)).unwrap();
    assert!(!is_reservation(&ep));
    assert!(endpoint_id("").is_err());
    assert_eq!(oper_info(&ep)["rnet.address"], json!("10.1.0.5/24"));
    assert_eq!(
        parse_address("a", "10.1.0.5/24").unwrap(),
        Some("10.1.0.5".parse().unwrap())
    );
    assert_eq!(parse_address("a", "").unwrap(), None);
    assert!(parse_address("a", "x").is_err());
}
