use ipnetwork::Ipv4Network;

use super::*;
use crate::dataplane::spec;
use crate::model::{Encryption, Endpoint, HostRecord, Network, Vni, WireguardInfo};
use crate::store::keys;

fn net() -> Network {
    Network {
        name: "blue".parse().unwrap(),
        id: "00000000000000aa".parse().unwrap(),
        vni: Vni::new(42).unwrap(),
        subnet: "10.9.0.0/24".parse().unwrap(),
        gateway: "10.9.0.1".parse().unwrap(),
        mtu: 1450,
        encryption: Encryption::None,
        allow_overlap: false,
        egress: true,
        internal: false,
    }
}

fn ep(ip: &str) -> Endpoint {
    let addr: Ipv4Addr = ip.parse().unwrap();
    Endpoint {
        network: "blue".parse().unwrap(),
        network_id: "00000000000000aa".parse().unwrap(),
        id: "ep-1".parse().unwrap(),
        ip: Ipv4Network::new(addr, 24).unwrap(),
        mac: Mac::from_ipv4(addr),
        host: "h2".into(),
        ifname: "eth0".parse().unwrap(),
        netns: "/run/netns/w".into(),
        netns_inode: 7,
        host_ifname: spec::host_ifname(addr),
        created: 1,
        origin: Default::default(),
        owner: None,
        mtu: None,
        name: None,
        aliases: Vec::new(),
        ports: Vec::new(),
    }
}

fn host_rec(id: &str, underlay: &str) -> HostRecord {
    HostRecord {
        started: 1,
        renewed: 1,
        ..HostRecord::plain(id, underlay)
    }
}

fn own() -> Own {
    Own {
        host_id: "h1".into(),
        underlay: Some("198.18.0.11".parse().unwrap()),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn net_err(n: &Network) -> String {
    network(&keys::network("blue"), &json(n))
        .unwrap_err()
        .to_string()
}

fn ep_err(key_ip: &str, e: &Endpoint) -> String {
    let key = keys::endpoint("blue", key_ip.parse().unwrap());
    endpoint(&key, &json(e), Some(&net()))
        .unwrap_err()
        .to_string()
}

fn host_err(key: &str, h: &HostRecord) -> String {
    host(key, &json(h), &own()).unwrap_err().to_string()
}

#[test]
fn a_sound_network_passes() {
    assert_eq!(
        network(&keys::network("blue"), &json(&net())).unwrap(),
        net()
    );
}

#[test]
fn a_network_must_match_its_key() {
    let e = network(&keys::network("red"), &json(&net()))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "network /rnet/v1/networks/red: the record is of network \"blue\", its key of \"red\""
    );
    let e = network("/rnet/v1/networks/blue/x", &json(&net())).unwrap_err();
    assert!(e.reason.contains("does not name a network"), "{e}");
}

#[test]
fn a_network_vni_subnet_gateway_and_mtu_are_checked() {
    // A VNI out of range does not even decode.
    let raw = String::from_utf8(json(&net()))
        .unwrap()
        .replace("\"vni\":42", "\"vni\":16777216");
    let e = network(&keys::network("blue"), raw.as_bytes()).unwrap_err();
    assert!(
        e.reason.contains("undecodable") && e.reason.contains("VNI"),
        "{e}"
    );

    let mut n = net();
    n.subnet = "10.9.0.5/24".parse().unwrap();
    assert!(net_err(&n).contains("host bits set"));
    n.subnet = "16.0.0.0/4".parse().unwrap();
    n.gateway = "16.0.0.1".parse().unwrap();
    assert!(net_err(&n).contains("outside /8../30"), "{}", net_err(&n));
    n.subnet = "10.9.0.0/31".parse().unwrap();
    n.gateway = "10.9.0.1".parse().unwrap();
    assert!(net_err(&n).contains("outside /8../30"));
    let mut n = net();
    n.gateway = "10.8.0.1".parse().unwrap();
    assert!(net_err(&n).contains("gateway 10.8.0.1 is not a host address"));
    n.gateway = "10.9.0.255".parse().unwrap();
    assert!(net_err(&n).contains("not a host address"));
    let mut n = net();
    n.mtu = 10;
    assert!(net_err(&n).contains("MTU 10 is out of range"));
    n.mtu = u32::MAX;
    assert!(net_err(&n).contains("out of range"));
}

#[test]
fn garbage_and_huge_records_are_rejected_with_the_key() {
    let key = keys::network("blue");
    let e = network(&key, b"{not json").unwrap_err().to_string();
    assert!(
        e.starts_with("network /rnet/v1/networks/blue: undecodable record"),
        "{e}"
    );
    let huge = vec![b' '; MAX_RECORD_BYTES + 1];
    let e = network(&key, &huge).unwrap_err();
    assert!(e.reason.contains("at most 65536"), "{e}");
    // A huge number, a negative one, deep nesting.
    let raw = String::from_utf8(json(&net()))
        .unwrap()
        .replace("\"mtu\":1450", "\"mtu\":99999999999999999999");
    assert!(network(&key, raw.as_bytes()).is_err());
    let raw = String::from_utf8(json(&net()))
        .unwrap()
        .replace("\"mtu\":1450", "\"mtu\":-1");
    assert!(network(&key, raw.as_bytes()).is_err());
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(network(&key, deep.as_bytes()).is_err());
    let e = endpoint_alone(&keys::endpoint("blue", "10.9.0.5".parse().unwrap()), b"").unwrap_err();
    assert!(e.reason.contains("undecodable"), "{e}");
}

#[test]
fn a_long_or_control_character_key_is_shown_escaped_and_short() {
    let key = format!("{}x\n{}", keys::NETWORKS, "y".repeat(10_000));
    let e = network(&key, b"{}").unwrap_err().to_string();
    assert!(!e.contains('\n'), "{e}");
    assert!(e.len() < 1000, "{}", e.len());
}

#[test]
fn an_endpoint_of_an_earlier_network_of_the_same_name_is_rejected() {
    let key = keys::endpoint("blue", "10.9.0.5".parse().unwrap());
    let stale = Endpoint {
        network_id: "00000000000000ff".parse().unwrap(),
        ..ep("10.9.0.5")
    };
    let e = endpoint(&key, &json(&stale), Some(&net())).unwrap_err();
    assert!(e.reason.contains("earlier network"), "{e}");
}

#[test]
fn a_sound_endpoint_passes() {
    let key = keys::endpoint("blue", "10.9.0.5".parse().unwrap());
    assert_eq!(
        endpoint(&key, &json(&ep("10.9.0.5")), Some(&net())).unwrap(),
        ep("10.9.0.5")
    );
}

#[test]
fn an_endpoint_must_match_its_key() {
    assert!(ep_err("10.9.0.6", &ep("10.9.0.5"))
        .contains("the record holds address 10.9.0.5, its key 10.9.0.6"));
    let mut e = ep("10.9.0.5");
    e.network = "red".parse().unwrap();
    assert!(ep_err("10.9.0.5", &e).contains("on network \"red\", its key on \"blue\""));
    let e = endpoint_alone("/rnet/v1/endpoints/blue/garbage", &json(&ep("10.9.0.5"))).unwrap_err();
    assert!(
        e.reason.contains("not endpoints/<network>/<address>"),
        "{e}"
    );
}

#[test]
fn an_endpoint_address_must_be_a_host_address_of_its_subnet_but_not_the_gateway() {
    assert_eq!(
        ep_err("10.9.0.1", &ep("10.9.0.1")),
        "endpoint /rnet/v1/endpoints/blue/10.9.0.1: address 10.9.0.1 is the network's gateway"
    );
    assert!(ep_err("10.99.0.5", &ep("10.99.0.5"))
        .contains("address 10.99.0.5 is outside subnet 10.9.0.0/24 of network blue"));
    assert!(ep_err("10.9.0.0", &ep("10.9.0.0")).contains("network or broadcast"));
    assert!(ep_err("10.9.0.255", &ep("10.9.0.255")).contains("network or broadcast"));
    let mut e = ep("10.9.0.5");
    e.ip = "10.9.0.5/16".parse().unwrap();
    assert!(ep_err("10.9.0.5", &e).contains("prefix length /16 differs from the network's /24"));
}

#[test]
fn an_endpoint_mac_must_be_unicast() {
    let mut e = ep("10.9.0.5");
    e.mac = "01:00:5e:00:00:01".parse().unwrap();
    assert!(ep_err("10.9.0.5", &e).contains("MAC address 01:00:5e:00:00:01 is a multicast"));
    e.mac = "ff:ff:ff:ff:ff:ff".parse().unwrap();
    assert!(ep_err("10.9.0.5", &e).contains("multicast"));
    e.mac = Mac([0; 6]);
    assert!(ep_err("10.9.0.5", &e).contains("all zeros"));
}

#[test]
fn an_endpoints_dns_names_are_checked() {
    let key = keys::endpoint("blue", "10.9.0.5".parse().unwrap());
    let mut e = ep("10.9.0.5");
    e.name = Some("web".parse().unwrap());
    e.aliases = (0..16).map(|i| format!("a{i}").parse().unwrap()).collect();
    assert!(endpoint(&key, &json(&e), Some(&net())).is_ok());
    e.aliases.push("one-more".parse().unwrap());
    assert!(ep_err("10.9.0.5", &e).contains("17 DNS aliases; at most 16"));
    // A name DNS cannot carry, written into the store by hand, does not even decode.
    for bad in ["Web", "a..b", "x_y"] {
        let raw = String::from_utf8(json(&ep("10.9.0.5")))
            .unwrap()
            .replace("\"created\"", &format!("\"name\":\"{bad}\",\"created\""));
        let err = endpoint_alone(&key, raw.as_bytes()).unwrap_err();
        assert!(err.reason.contains("undecodable"), "{bad}: {err}");
    }
}

#[test]
fn an_endpoint_host_ifname_netns_owner_and_mtu_are_checked() {
    let mut e = ep("10.9.0.5");
    e.host = "evil host".into();
    assert!(ep_err("10.9.0.5", &e).contains("is not a host name"));
    e.host = String::new();
    assert!(ep_err("10.9.0.5", &e).contains("is not a host name"));
    e.host = "h".repeat(65);
    assert!(ep_err("10.9.0.5", &e).contains("is not a host name"));
    let mut e = ep("10.9.0.5");
    e.host_ifname = "vx-blue".into();
    assert!(ep_err("10.9.0.5", &e).contains("host interface \"vx-blue\" is not \"ve0a090005\""));
    let mut e = ep("10.9.0.5");
    e.netns = "relative/path".into();
    assert!(ep_err("10.9.0.5", &e).contains("not an absolute path"));
    e.netns = format!("/{}", "a".repeat(NETNS_PATH_MAX));
    assert!(ep_err("10.9.0.5", &e).contains("not an absolute path"));
    e.netns = "/run/netns/a\0b".into();
    assert!(ep_err("10.9.0.5", &e).contains("not an absolute path"));
    e.netns = String::new(); // an address held for Docker
    assert!(endpoint(
        &keys::endpoint("blue", "10.9.0.5".parse().unwrap()),
        &json(&e),
        Some(&net())
    )
    .is_ok());
    let mut e = ep("10.9.0.5");
    e.owner = Some("o".repeat(OWNER_MAX + 1));
    assert!(ep_err("10.9.0.5", &e).contains("owner is longer"));
    let mut e = ep("10.9.0.5");
    e.mtu = Some(1500);
    assert!(ep_err("10.9.0.5", &e).contains("MTU 1500 is above the network's 1450"));
    e.mtu = Some(12);
    assert!(ep_err("10.9.0.5", &e).contains("MTU 12 is out of range"));
    // An interface name the kernel would refuse does not even decode.
    let raw = String::from_utf8(json(&ep("10.9.0.5")))
        .unwrap()
        .replace("\"eth0\"", "\"../../etc\"");
    let e = endpoint_alone(
        &keys::endpoint("blue", "10.9.0.5".parse().unwrap()),
        raw.as_bytes(),
    )
    .unwrap_err();
    assert!(e.reason.contains("undecodable"), "{e}");
}

#[test]
fn an_endpoint_of_an_unknown_network_is_not_used() {
    let key = keys::endpoint("blue", "10.9.0.5".parse().unwrap());
    let e = endpoint(&key, &json(&ep("10.9.0.5")), None).unwrap_err();
    assert_eq!(e.reason, "network blue has no valid record");
}

#[test]
fn endpoint_id_and_vni_indexes_are_checked() {
    assert_eq!(
        endpoint_id_index("/rnet/v1/endpoint-ids/blue/ep-1", b"10.9.0.5").unwrap(),
        "10.9.0.5".parse::<Ipv4Addr>().unwrap()
    );
    let e = endpoint_id_index("/rnet/v1/endpoint-ids/blue/ep-1", b"not-an-ip").unwrap_err();
    assert_eq!(
        e.to_string(),
        "endpoint-id index /rnet/v1/endpoint-ids/blue/ep-1: the value \"not-an-ip\" is not an IPv4 address"
    );
    assert!(endpoint_id_index("/rnet/v1/endpoint-ids/blue", b"10.9.0.5").is_err());
    assert!(endpoint_id_index("/rnet/v1/endpoint-ids/blue/a b", b"10.9.0.5").is_err());
    assert!(endpoint_id_index("/rnet/v1/endpoint-ids/blue/ep", &[0xff, 0xfe]).is_err());
    assert!(endpoint_id_index("/rnet/v1/endpoint-ids/blue/ep", &[b'1'; 1000]).is_err());
    assert!(vni_index("/rnet/v1/vnis/42", b"blue").is_ok());
    assert!(vni_index("/rnet/v1/vnis/0", b"blue").is_err());
    assert!(vni_index("/rnet/v1/vnis/x", b"blue").is_err());
    assert!(vni_index("/rnet/v1/vnis/42", b"bad name!").is_err());
}

#[test]
fn a_sound_host_record_passes_presence_and_info() {
    let h = host_rec("h2", "198.18.0.12");
    assert_eq!(host(&keys::host("h2"), &json(&h), &own()).unwrap(), h);
    assert_eq!(host(&keys::host_info("h2"), &json(&h), &own()).unwrap(), h);
    // Its own record with its own underlay is sound too.
    let me = host_rec("h1", "198.18.0.11");
    assert!(host(&keys::host("h1"), &json(&me), &own()).is_ok());
}

#[test]
fn a_host_record_must_match_its_key() {
    let h = host_rec("h2", "198.18.0.12");
    assert_eq!(
        host_err(&keys::host("h3"), &h),
        "host /rnet/v1/hosts/h3: the record is of host \"h2\", its key of \"h3\""
    );
    assert!(host_err(&keys::host_info("a b"), &h).starts_with("host-info "));
}

#[test]
fn a_host_underlay_must_be_a_unicast_address_and_not_ours() {
    for (addr, why) in [
        ("127.0.0.1", "loopback"),
        ("127.8.9.1", "loopback"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("255.255.255.255", "broadcast"),
        ("198.18.0.11", "this host's (h1) own address"),
    ] {
        let e = host_err(&keys::host_info("h2"), &host_rec("h2", addr));
        assert!(
            e.contains(&format!("underlay {addr} is")) && e.contains(why),
            "{e}"
        );
    }
}

#[test]
fn a_host_vtep_mac_and_wireguard_key_are_checked() {
    let mut h = host_rec("h2", "198.18.0.12");
    h.vtep_mac = "33:33:00:00:00:01".parse().unwrap();
    assert!(host_err(&keys::host("h2"), &h)
        .contains("VTEP MAC address 33:33:00:00:00:01 is a multicast"));
    let mut h = host_rec("h2", "198.18.0.12");
    let key = crate::wireguard::keys::encode_public(&boringtun::x25519::PublicKey::from([7u8; 32]));
    h.wireguard = Some(WireguardInfo {
        public_key: key.clone(),
        port: 51820,
        key_created: 1,
        identity: None,
        signature: None,
    });
    assert!(host(&keys::host("h2"), &json(&h), &own()).is_ok());
    h.wireguard.as_mut().unwrap().public_key = "AAAA".into();
    assert!(host_err(&keys::host("h2"), &h).contains("WireGuard public key: a key is 32 bytes"));
    h.wireguard.as_mut().unwrap().public_key = "%%%".into();
    assert!(host_err(&keys::host("h2"), &h).contains("not base64"));
    h.wireguard.as_mut().unwrap().public_key = key;
    let ipsec = crate::model::IpsecInfo {
        aead: crate::model::Aead::AesGcm,
        epoch: 1,
        acks: [("h1".to_string(), 255u32)].into(),
    };
    h.ipsec = Some(ipsec.clone());
    assert!(host_err(&keys::host("h2"), &h).contains("reserved SPI 255"));
    h.ipsec.as_mut().unwrap().acks.clear();
    let wg = h.wireguard.take();
    assert!(host_err(&keys::host("h2"), &h).contains("no X25519 key"));
    h.wireguard = wg;
    h.ipsec = None;
    h.wireguard.as_mut().unwrap().port = 0;
    assert!(host_err(&keys::host("h2"), &h).contains("port is 0"));
}

#[test]
fn egress_and_ports_are_checked() {
    let mut n = net();
    n.internal = true;
    assert!(check_network("blue", &n).unwrap_err().contains("internal"));
    n.egress = false;
    assert!(check_network("blue", &n).is_ok());
    let mut e = ep("10.9.0.5");
    e.ports = vec!["8080:80".parse().unwrap()];
    assert!(check_endpoint("blue", "10.9.0.5".parse().unwrap(), &e).is_ok());
    // A record can carry what the parser refuses: checked again here.
    e.ports[0].host_port = 70000;
    assert!(check_endpoint("blue", "10.9.0.5".parse().unwrap(), &e)
        .unwrap_err()
        .contains("out of range"));
    e.ports = vec!["8080:80".parse().unwrap(), "8080:81".parse().unwrap()];
    assert!(check_endpoint("blue", "10.9.0.5".parse().unwrap(), &e)
        .unwrap_err()
        .contains("same host port"));
    e.ports = (1..=65)
        .map(|p| format!("{p}:80").parse().unwrap())
        .collect();
    assert!(check_endpoint("blue", "10.9.0.5".parse().unwrap(), &e)
        .unwrap_err()
        .contains("at most 64"));
}

#[test]
fn host_ids_are_host_names() {
    assert!(host_id("h1").is_ok());
    assert!(host_id("node-1.example.com").is_ok());
    assert!(host_id("").is_err());
    assert!(host_id("-x").is_err());
    assert!(host_id("a/b").is_err());
    assert!(host_id("a\nb").is_err());
    assert!(host_id(&"a".repeat(64)).is_ok());
    assert!(host_id(&"a".repeat(65)).is_err());
}
