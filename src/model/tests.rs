use super::*;

#[test]
fn network_name_rules() {
    assert!("blue".parse::<NetworkName>().is_ok());
    assert!("a.b_c-1".parse::<NetworkName>().is_ok());
    let long = "abcdefghijklm"; // 13 > 12
    let e = long.parse::<NetworkName>().unwrap_err().0;
    assert!(e.contains("at most 12"), "{e}");
    assert!("-x".parse::<NetworkName>().is_err());
    assert!("a b".parse::<NetworkName>().is_err());
    assert!("a/b".parse::<NetworkName>().is_err());
    assert!("".parse::<NetworkName>().is_err());
    assert_eq!(
        "red".parse::<NetworkName>().unwrap().vxlan_ifname(),
        "vx-red"
    );
}

#[test]
fn ifname_rules() {
    assert!("eth0".parse::<IfName>().is_ok());
    assert!("abcdefghijklmnop".parse::<IfName>().is_err());
    assert!("a/b".parse::<IfName>().is_err());
    assert!("a b".parse::<IfName>().is_err());
    assert!("..".parse::<IfName>().is_err());
}

#[test]
fn vni_range() {
    assert!(Vni::new(0).is_err());
    assert!(Vni::new(1).is_ok());
    assert!(Vni::new(VNI_MAX).is_ok());
    assert!(Vni::new(VNI_MAX + 1).is_err());
}

#[test]
fn mac_parse_and_derive() {
    let m = Mac::from_ipv4("10.1.2.3".parse().unwrap());
    assert_eq!(m.to_string(), "02:52:0a:01:02:03");
    assert_eq!(m.to_string().parse::<Mac>().unwrap(), m);
    assert!("02:52:0a:01:02".parse::<Mac>().is_err());
    assert!("zz:52:0a:01:02:03".parse::<Mac>().is_err());
    assert_eq!(Mac::from_name(0x56, "h1"), Mac::from_name(0x56, "h1"));
    assert_ne!(Mac::from_name(0x56, "h1"), Mac::from_name(0x56, "h2"));
}

#[test]
fn records_round_trip_json() {
    let n = Network {
        id: "00000000000000aa".parse().unwrap(),
        name: "blue".parse().unwrap(),
        vni: Vni::new(42).unwrap(),
        subnet: "10.1.0.0/24".parse().unwrap(),
        gateway: "10.1.0.1".parse().unwrap(),
        mtu: 1450,
        encryption: Encryption::None,
        allow_overlap: false,
        egress: true,
        internal: false,
    };
    let s = serde_json::to_string(&n).unwrap();
    assert_eq!(serde_json::from_str::<Network>(&s).unwrap(), n);
    assert!(serde_json::from_str::<Network>(&s.replace("42", "0")).is_err());
    // A record written before egress existed: egress on, not internal.
    let old = s.replace(",\"egress\":true,\"internal\":false", "");
    assert!(!old.contains("egress"), "{old}");
    assert_eq!(serde_json::from_str::<Network>(&old).unwrap(), n);
}

#[test]
fn port_mappings_parse_and_refuse() {
    let m: PortMapping = "8080:80".parse().unwrap();
    assert_eq!(
        (m.host_port, m.container_port, m.proto, m.host_ip),
        (8080, 80, Proto::Tcp, None)
    );
    let u: PortMapping = "198.18.0.1:53:5353/udp".parse().unwrap();
    assert_eq!(u.proto, Proto::Udp);
    assert_eq!(u.host_ip, Some("198.18.0.1".parse().unwrap()));
    assert_eq!(u.to_string().parse::<PortMapping>().unwrap(), u);
    for bad in [
        "0:80",
        "8080:0",
        "70000:80",
        "80:65536",
        "80:80/sctp",
        "80",
        "a:80",
        "x:1:2",
    ] {
        assert!(bad.parse::<PortMapping>().is_err(), "{bad} accepted");
    }
    assert!("70000:80"
        .parse::<PortMapping>()
        .unwrap_err()
        .0
        .contains("out of range"));
    assert!("80:80/sctp"
        .parse::<PortMapping>()
        .unwrap_err()
        .0
        .contains("sctp"));
    assert!(m.clashes(&"8080:81".parse().unwrap()));
    assert!(!m.clashes(&"8080:80/udp".parse().unwrap()));
    assert!(m.clashes(&"1.2.3.4:8080:9".parse().unwrap()));
    let a: PortMapping = "1.2.3.4:8080:9".parse().unwrap();
    assert!(!a.clashes(&"1.2.3.5:8080:9".parse().unwrap()));
}

#[test]
fn dns_name_rules() {
    for ok in ["web", "web-1", "a.b.c", "x1", &"a".repeat(63)] {
        assert!(ok.parse::<DnsName>().is_ok(), "{ok}");
    }
    let label64 = "a".repeat(64);
    let long = ["abcdefghij"; 26].join("."); // 285 bytes
    for (bad, says) in [
        ("a..b", "empty label"),
        ("", "empty"),
        (".a", "empty label"),
        ("a.", "empty label"),
        (label64.as_str(), "at most 63"),
        (long.as_str(), "at most 253"),
        ("Web", "'W'"),
        ("wéb", "'é'"),
        ("a_b", "'_'"),
        ("-a", "'-'"),
        ("a-", "'-'"),
        ("a b", "' '"),
        ("10.0.0.1", "all-digit"),
    ] {
        let e = bad.parse::<DnsName>().unwrap_err().0;
        assert!(e.contains(says), "{bad:?}: {e}");
    }
    assert_eq!(DnsName::lenient("My-Box").unwrap().as_str(), "my-box");
    assert!(DnsName::lenient("my_box").is_none());
}

#[test]
fn an_endpoint_record_without_names_still_reads() {
    let old = r#"{"network":"blue","network_id":"00000000000000aa","id":"e1","ip":"10.0.0.2/24",
        "mac":"02:52:0a:00:00:02","host":"h1","ifname":"eth0","netns":"/x","host_ifname":"ve0a000002","created":1}"#;
    let ep: Endpoint = serde_json::from_str(old).unwrap();
    assert_eq!(ep.name, None);
    assert!(ep.aliases.is_empty());
    let named = old.replace(r#""created":1"#, r#""created":1,"name":"Web""#);
    assert!(serde_json::from_str::<Endpoint>(&named).is_err());
}
