#[test]
fn port_mappings_become_rnet_mappings_or_named_errors() {
    let m: CniPortMapping = serde_json::from_str(
        r#"{"hostPort": 8080, "containerPort": 80, "protocol": "TCP", "hostIP": ""}"#,
    )
    .unwrap();
    assert_eq!(m.to_mapping().unwrap(), "8080:80".parse().unwrap());
    let u: CniPortMapping =
        serde_json::from_str(r#"{"hostPort": 53, "containerPort": 5353, "protocol": "udp"}"#)
            .unwrap();
    assert_eq!(u.to_mapping().unwrap(), "53:5353/udp".parse().unwrap());
    let bad = |j: &str| {
        serde_json::from_str::<CniPortMapping>(j)
            .unwrap()
            .to_mapping()
            .unwrap_err()
    };
    assert!(bad(r#"{"hostPort": 70000, "containerPort": 80}"#).contains("out of range"));
    assert!(bad(r#"{"hostPort": -1, "containerPort": 80}"#).contains("out of range"));
    assert!(bad(r#"{"hostPort": 0, "containerPort": 80}"#).contains("out of range"));
    assert!(bad(r#"{"hostPort": 1, "containerPort": 80, "protocol": "sctp"}"#).contains("sctp"));
    assert!(bad(r#"{"hostPort": 1, "containerPort": 80, "hostIP": "x"}"#).contains("hostIP"));
}
use super::*;

fn attached() -> Attached {
    Attached {
        host_ifname: "ve0a010002".into(),
        ifname: "eth0".into(),
        mac: "02:52:0a:01:00:02".into(),
        netns: "/run/netns/c1".into(),
        address: "10.1.0.2/24".into(),
        gateway: "10.1.0.1".into(),
        mtu: 1450,
    }
}

#[test]
fn versions_parse_and_order() {
    for v in SUPPORTED_VERSIONS {
        assert_eq!(Version::parse(v).unwrap().as_str(), v);
    }
    assert!(Version::parse("0.2.0").is_none());
    assert!(Version::V031 < Version::V040 && Version::V100 < Version::V110);
}

#[test]
fn result_shapes_per_version() {
    let r = add_result(Version::V031, None, &attached(), None);
    assert_eq!(r["cniVersion"], "0.3.1");
    assert_eq!(r["ips"][0]["version"], "4");
    assert_eq!(r["ips"][0]["interface"], 1);
    assert!(r["interfaces"][0].get("sandbox").is_none());
    assert_eq!(r["interfaces"][1]["sandbox"], "/run/netns/c1");
    assert!(r["interfaces"][1].get("mtu").is_none());
    assert!(r["routes"][0].get("mtu").is_none());
    let r = add_result(Version::V100, None, &attached(), None);
    assert!(r["ips"][0].get("version").is_none());
    assert!(r["routes"][0].get("advmss").is_none());
    let r = add_result(Version::V110, None, &attached(), None);
    assert_eq!(r["interfaces"][1]["mtu"], 1450);
    assert_eq!(r["routes"][0]["mtu"], 1450);
    assert_eq!(r["routes"][0]["advmss"], 1410);
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
}

#[test]
fn prev_result_is_kept_and_indexes_follow() {
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "other0"}],
        "ips": [{"address": "192.168.9.2/24", "interface": 0}],
        "dns": {"nameservers": ["192.168.9.1"]},
    });
    let r = add_result(
        Version::V100,
        Some(&prev),
        &attached(),
        Some(&json!({"nameservers": ["10.1.0.1"]})),
    );
    assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(r["ips"][0]["address"], "192.168.9.2/24");
    assert_eq!(r["ips"][1]["interface"], 2);
    assert_eq!(
        r["dns"]["nameservers"][0], "192.168.9.1",
        "prevResult's dns wins"
    );
}

#[test]
fn attachment_ids_are_valid_and_distinct() {
    let cid = "a".repeat(64);
    let id = attachment_id(&cid, "eth0");
    assert_eq!(id, format!("{cid}_eth0"));
    assert!(id.parse::<crate::model::EndpointId>().is_ok());
    // '_' in the ifname: the hash form, so (a_b, c) and (a, b_c) differ.
    assert_ne!(attachment_id("a_b", "c"), attachment_id("a", "b_c"));
    assert!(attachment_id("a", "b_c").starts_with("cni-"));
    let long = "b".repeat(126);
    assert!(attachment_id(&long, "eth0").starts_with("cni-"));
    assert!(attachment_id(&long, "eth0")
        .parse::<crate::model::EndpointId>()
        .is_ok());
    assert!(attachment_id("c1", "net@1")
        .parse::<crate::model::EndpointId>()
        .is_ok());
}

#[test]
fn cni_args_parse() {
    let a = parse_cni_args("IgnoreUnknown=1;IP=10.1.0.9;K8S_POD_NAME=x").unwrap();
    assert_eq!(a[1], ("IP".into(), "10.1.0.9".into()));
    assert!(parse_cni_args("").unwrap().is_empty());
    assert_eq!(parse_cni_args("IP").unwrap_err().code, code::INVALID_ENV);
}

#[test]
fn names_and_errors() {
    assert!(valid_name("abc-1.2_3"));
    assert!(!valid_name("-abc"));
    assert!(!valid_name(""));
    let e = CniError::new(code::TRY_AGAIN_LATER, "later").with_details("d");
    assert_eq!(
        e.to_json("1.1.0"),
        json!({"cniVersion": "1.1.0", "code": 11, "msg": "later", "details": "d"})
    );
    assert_eq!(version_result(Some("0.4.0"))["cniVersion"], "0.4.0");
    assert_eq!(version_result(None)["supportedVersions"][4], "1.1.0");
}
