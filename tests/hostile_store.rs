//! Records written straight into the lab's etcd by someone who is not rnet (any etcd writer is
//! not root on every host): each is skipped and reported, none stops listing, creating,
//! attaching or traffic, and none reaches the kernel.
mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::lab::Lab;
use common::{wait_until, Workload};
use serde_json::{json, Value};

const FAST: &[&str] = &["--lease-ttl", "2", "--probe-window", "2", "--resync", "2"];
const ETCD: &str = "198.18.0.1:2379";
const H1_UNDERLAY: &str = "198.18.0.11";
const H2_UNDERLAY: &str = "198.18.0.12";

fn put(lab: &Lab, key: &str, value: &str) {
    lab.exec_ok("h1", &["etcdctl", "--endpoints", ETCD, "put", key, value]);
}

/// An endpoint record as rnet writes it, with the fields a test bends.
fn endpoint_record(ip: &str, mac: &str, host: &str) -> Value {
    let addr: Ipv4Addr = ip.split('/').next().unwrap().parse().unwrap();
    json!({
        "network": "good", "id": format!("hostile-{}", addr.octets()[3]), "ip": ip,
        "mac": mac, "host": host, "ifname": "eth0", "netns": "", "netns_inode": 0,
        "host_ifname": format!("ve{:08x}", u32::from(addr)), "created": 0,
    })
}

fn host(id: &str, underlay: &str) -> String {
    json!({"id": id, "underlay": underlay, "vtep_mac": "02:56:00:00:00:99", "started": 0, "renewed": 0})
        .to_string()
}

fn attach(lab: &Lab, h: &str, net: &str, w: &Workload) -> (String, String) {
    let path = w.path().display().to_string();
    let ep = lab.host_rnet_json(h, &["attach", net, "--netns", &path]);
    let ip = ep["ip"].as_str().unwrap().split('/').next().unwrap();
    (ip.to_string(), ep["mac"].as_str().unwrap().to_string())
}

fn wait_ping(w: &Workload, ip: &str) {
    wait_until(
        &format!("{} reaches {ip}", w.tag()),
        Duration::from_secs(10),
        || w.ping(ip, 1),
    );
}

/// Every FDB and neighbour entry in every sandbox namespace of host `h`.
fn kernel_tables(lab: &Lab, h: &str) -> String {
    let dir = lab.dir().join(h).join("run/netns");
    let mut text = String::new();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        for argv in [&["bridge", "fdb", "show"][..], &["ip", "neigh", "show"][..]] {
            text.push_str(&common::in_netns_ok(&entry.path(), argv));
        }
    }
    text
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn hostile_records_are_skipped_reported_and_never_programmed() {
    let lab = Lab::up(2, FAST);
    let good = lab.host_rnet_json("h1", &["create", "good", "--subnet", "10.90.0.0/24"]);
    // Records of network "good" as rnet writes them (its id included).
    let endpoint = |ip: &str, mac: &str, host: &str| {
        let mut v = endpoint_record(ip, mac, host);
        v["network_id"] = good["id"].clone();
        v
    };
    let (a, b) = (Workload::new("a"), Workload::new("b"));
    let (_, mac_a) = attach(&lab, "h1", "good", &a);
    let (ip_b, mac_b) = attach(&lab, "h2", "good", &b);
    wait_ping(&a, &ip_b);

    // Each is named by its key in `rnet doctor`; the last two only on the host whose
    // underlay they claim (the other host cannot tell them from a real host).
    let mut bad = vec![
        "/rnet/v1/networks/junk",
        "/rnet/v1/endpoints/good/10.99.0.5",
        "/rnet/v1/endpoints/good/10.90.0.77",
        "/rnet/v1/endpoints/good/10.90.0.66",
        "/rnet/v1/endpoints/good/10.90.0.1",
        "/rnet/v1/endpoints/good/garbage",
        "/rnet/v1/endpoint-ids/good/zzz",
        "/rnet/v1/hosts/h9",
        "/rnet/v1/host-info/h9",
        "/rnet/v1/endpoints/good/10.90.0.55",
    ];
    put(&lab, bad[0], "{not json");
    // Outside the subnet.
    let outside = endpoint("10.99.0.5/24", "02:bb:00:00:00:01", "h2");
    put(&lab, bad[1], &outside.to_string());
    // The record's address is not its key's.
    let moved = endpoint("10.90.0.78/24", "02:bb:00:00:00:02", "h2");
    put(&lab, bad[2], &moved.to_string());
    // A multicast MAC.
    let multicast = endpoint("10.90.0.66/24", "01:00:5e:00:00:42", "h2");
    put(&lab, bad[3], &multicast.to_string());
    // The network's gateway.
    let gateway = endpoint("10.90.0.1/24", "02:bb:00:00:00:06", "h2");
    put(&lab, bad[4], &gateway.to_string());
    // A record left by an earlier network of the same name (another id).
    let mut stale = endpoint("10.90.0.55/24", "02:bb:00:00:00:08", "h2");
    stale["network_id"] = Value::from("00000000000000ff");
    put(&lab, bad[9], &stale.to_string());
    // Garbage keys and index values.
    put(&lab, bad[5], "{}");
    put(&lab, bad[6], "not-an-ip");
    // A host on loopback, with a sound endpoint that would point the overlay at it.
    put(&lab, bad[7], &host("h9", "127.0.0.1"));
    put(&lab, bad[8], &host("h9", "127.0.0.1"));
    let on_h9 = endpoint("10.90.0.90/24", "02:bb:00:00:00:03", "h9");
    put(
        &lab,
        "/rnet/v1/endpoints/good/10.90.0.90",
        &on_h9.to_string(),
    );
    // Hosts claiming h1's and h2's underlay, each with a sound endpoint.
    put(&lab, "/rnet/v1/hosts/h8", &host("h8", H1_UNDERLAY));
    put(&lab, "/rnet/v1/host-info/h8", &host("h8", H1_UNDERLAY));
    put(&lab, "/rnet/v1/hosts/h7", &host("h7", H2_UNDERLAY));
    put(&lab, "/rnet/v1/host-info/h7", &host("h7", H2_UNDERLAY));
    let on_h8 = endpoint("10.90.0.88/24", "02:bb:00:00:00:04", "h8");
    put(
        &lab,
        "/rnet/v1/endpoints/good/10.90.0.88",
        &on_h8.to_string(),
    );
    let on_h7 = endpoint("10.90.0.87/24", "02:bb:00:00:00:05", "h7");
    put(
        &lab,
        "/rnet/v1/endpoints/good/10.90.0.87",
        &on_h7.to_string(),
    );

    // Listing goes on at once (it read the undecodable network and failed before).
    for h in ["h1", "h2"] {
        let nets = lab.host_rnet_json(h, &["ls"]);
        let names: Vec<&str> = nets
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["good"], "{h}: {nets}");
        let eps = lab.host_rnet_json(h, &["endpoints"]);
        let ips: Vec<&str> = eps
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["ip"].as_str().unwrap())
            .collect();
        for skipped in [
            "10.99.0.5/24",
            "10.90.0.78/24",
            "10.90.0.66/24",
            "10.90.0.1/24",
        ] {
            assert!(!ips.contains(&skipped), "{h} lists {skipped}: {ips:?}");
        }
        assert!(ips.contains(&"10.90.0.90/24"), "a sound record is listed");
    }
    lab.host_rnet_ok("h2", &["create", "other", "--subnet", "10.91.0.0/24"]);
    lab.host_rnet_ok("h1", &["create", "third", "--subnet", "10.92.0.0/24"]);

    // Status counts them, doctor names each (once the watch has seen them all).
    for (h, claim) in [("h1", "/rnet/v1/hosts/h8"), ("h2", "/rnet/v1/hosts/h7")] {
        let mut want = bad.clone();
        want.push(claim);
        let info_claim = claim.replace("/hosts/", "/host-info/");
        want.push(&info_claim);
        wait_until(
            &format!("{h} counts {} bad records", want.len()),
            Duration::from_secs(10),
            || lab.host_rnet_json(h, &["status"])["bad_records"] == want.len(),
        );
        let out = lab.host_rnet(h, &["doctor"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{h}: {text}");
        for key in &want {
            assert!(
                text.lines()
                    .any(|l| l.contains(" invalid: ") && l.contains(&format!(" record {key} "))),
                "{h} doctor names {key}:\n{text}"
            );
        }
        assert_eq!(text.lines().count(), want.len(), "{h}:\n{text}");
        let log = lab.log(h);
        assert!(
            log.contains("skipping an invalid store record")
                && log.contains("/rnet/v1/endpoints/good/10.90.0.1")
                && log.contains("is the network's gateway"),
            "{h} log names the record and the reason"
        );
        assert!(
            log.matches("/rnet/v1/endpoints/good/10.90.0.66").count() <= 2,
            "{h} warns about a record once, not on every listing:\n{log}"
        );
    }
    bad.clear();

    // Attaching (the allocator lists the garbage keys too) and traffic across hosts.
    let (c, d) = (Workload::new("c"), Workload::new("d"));
    let (ip_c, _) = attach(&lab, "h1", "good", &c);
    let (ip_d, _) = attach(&lab, "h2", "good", &d);
    let (e, f) = (Workload::new("e"), Workload::new("f"));
    let (ip_e, _) = attach(&lab, "h1", "other", &e);
    let (ip_f, _) = attach(&lab, "h2", "other", &f);
    wait_ping(&c, &ip_d);
    wait_ping(&d, &ip_c);
    wait_ping(&b, &ip_c);
    wait_ping(&e, &ip_f);
    wait_ping(&f, &ip_e);

    // The kernel holds nothing from a bad record, and what it holds is really read.
    let h1 = kernel_tables(&lab, "h1");
    let h2 = kernel_tables(&lab, "h2");
    assert!(h1.contains(&mac_b), "h1 holds b's entries:\n{h1}");
    assert!(h2.contains(&mac_a), "h2 holds a's entries:\n{h2}");
    for (h, tables, claimed) in [
        ("h1", &h1, ["02:bb:00:00:00:04", "10.90.0.88"]),
        ("h2", &h2, ["02:bb:00:00:00:05", "10.90.0.87"]),
    ] {
        for never in [
            "127.0.0.1",
            "02:bb:00:00:00:01",
            "10.99.0.5",
            "02:bb:00:00:00:02",
            "10.90.0.77",
            "10.90.0.78",
            "01:00:5e:00:00:42",
            "10.90.0.66",
            "02:bb:00:00:00:06",
            "02:bb:00:00:00:03",
            "10.90.0.90",
            "02:bb:00:00:00:08",
            "10.90.0.55",
            claimed[0],
            claimed[1],
        ] {
            assert!(!tables.contains(never), "{h} holds {never}:\n{tables}");
        }
    }
    // A record repaired by its writer is used again and leaves the list.
    let fixed = endpoint("10.90.0.66/24", "02:bb:00:00:00:07", "h2");
    put(
        &lab,
        "/rnet/v1/endpoints/good/10.90.0.66",
        &fixed.to_string(),
    );
    lab.exec_ok(
        "h1",
        &[
            "etcdctl",
            "--endpoints",
            ETCD,
            "del",
            "/rnet/v1/networks/junk",
        ],
    );
    wait_until("h1 counts 10 bad records", Duration::from_secs(10), || {
        lab.host_rnet_json("h1", &["status"])["bad_records"] == 10
    });
}
