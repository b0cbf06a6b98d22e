//! rnet-cni driven as a runtime drives it (CNI_* variables, configuration on stdin) against
//! a real rnetd in a simulated host: every operation, every result format, every error class.
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cni::Plugin;
use common::{links_in, wait_until, Host, Workload};
use serde_json::{json, Value};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn started_host(tag: &str) -> Host {
    let mut h = Host::new(tag);
    h.start_daemon();
    h
}

fn conf(version: &str, name: &str) -> Value {
    json!({"cniVersion": version, "name": name, "type": "rnet-cni"})
}

/// The sandbox-side veths (named `ve<hex address>`).
fn sandbox_veths(h: &Host, net: &str) -> Vec<String> {
    let Some(path) = common::find_sandbox(&h.run_dir(), net) else {
        return Vec::new();
    };
    links_in(&path)
        .into_iter()
        .filter(|l| l.starts_with("ve"))
        .collect()
}

fn endpoints(h: &Host, net: &str) -> Vec<Value> {
    h.rnet_json(&["endpoints", net]).as_array().unwrap().clone()
}

fn wait_gone(w: &Workload, ifname: &str) {
    wait_until(
        &format!("{ifname} gone from {}", w.name()),
        Duration::from_secs(10),
        || !w.links().iter().any(|l| l == ifname),
    );
}

fn addr_of(result: &Value) -> String {
    let ips = result["ips"].as_array().expect("ips");
    ips.last().unwrap()["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn add_check_del_in_every_result_format() {
    let h = started_host("cnifmt");
    h.rnet_ok(&["create", "fmt", "--subnet", "10.60.0.0/24"]);
    let cni = Plugin::rnet(&h.socket());
    let peer = Workload::new("peer");
    let peer_ep = h.rnet_json(&[
        "attach",
        "fmt",
        "--netns",
        peer.path().to_str().unwrap(),
        "--id",
        "peer",
    ]);
    let peer_ip = peer_ep["ip"].as_str().unwrap().split('/').next().unwrap();
    for (i, version) in VERSIONS.iter().enumerate() {
        let w = Workload::new("c");
        let cid = format!("ctr{i}");
        let c = conf(version, "fmt");
        let r = cni.add(&c, &cid, &w.path(), "eth0", "").ok();
        assert_eq!(r["cniVersion"], *version);
        let ifs = r["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), 2, "{r}");
        assert!(ifs[0]["name"].as_str().unwrap().starts_with("ve"));
        assert!(ifs[0].get("sandbox").is_none(), "host side: {r}");
        assert_eq!(ifs[1]["name"], "eth0");
        assert_eq!(ifs[1]["sandbox"], w.path().to_str().unwrap());
        let mac = ifs[1]["mac"].as_str().unwrap();
        let ip = &r["ips"][0];
        assert_eq!(ip["interface"], 1);
        assert_eq!(ip["gateway"], "10.60.0.1");
        assert!(ip["address"].as_str().unwrap().ends_with("/24"));
        let route = &r["routes"][0];
        assert_eq!(route["dst"], "0.0.0.0/0");
        assert_eq!(route["gw"], "10.60.0.1");
        match *version {
            "0.3.0" | "0.3.1" | "0.4.0" => {
                assert_eq!(ip["version"], "4", "{r}");
                assert!(ifs[1].get("mtu").is_none() && route.get("mtu").is_none());
            }
            "1.0.0" => {
                assert!(ip.get("version").is_none(), "{r}");
                assert!(ifs[1].get("mtu").is_none() && route.get("advmss").is_none());
            }
            _ => {
                assert!(ip.get("version").is_none(), "{r}");
                assert_eq!(ifs[1]["mtu"], 1450);
                assert_eq!(route["mtu"], 1450);
                assert_eq!(route["advmss"], 1410);
            }
        }
        // The kernel agrees with the result.
        let addr = addr_of(&r);
        assert_eq!(
            w.ipv4_addrs("eth0"),
            vec![addr.parse::<std::net::Ipv4Addr>().unwrap()]
        );
        let link = String::from_utf8_lossy(&w.exec(&["ip", "-o", "link", "show", "eth0"]).stdout)
            .to_string();
        assert!(link.contains(mac), "{link}");
        // ARP on the overlay asks every 100 ms, ten times (set with the configuration).
        let neigh = w.exec(&[
            "cat",
            "/proc/sys/net/ipv4/neigh/eth0/retrans_time_ms",
            "/proc/sys/net/ipv4/neigh/eth0/mcast_solicit",
        ]);
        assert_eq!(String::from_utf8_lossy(&neigh.stdout), "100\n10\n");
        assert!(
            w.ping(peer_ip, 2),
            "{version}: container reaches the CLI workload"
        );
        if *version >= "0.4.0" {
            let out = cni.check(&c, &r, &cid, &w.path(), "eth0");
            assert_eq!(out.ok(), Value::Null, "CHECK prints nothing on success");
        }
        let eps = endpoints(&h, "fmt");
        let ep = eps
            .iter()
            .find(|e| e["ip"].as_str().unwrap().starts_with(&addr));
        let ep = ep.expect("endpoint recorded");
        assert_eq!(ep["origin"], "cni");
        assert_eq!(ep["owner"], "fmt");
        assert_eq!(ep["id"], format!("{cid}_eth0"));
        assert_eq!(cni.del(&c, &cid, Some(&w.path()), "eth0").ok(), Value::Null);
        wait_gone(&w, "eth0");
        assert_eq!(endpoints(&h, "fmt").len(), 1, "only the CLI peer is left");
    }
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn del_is_idempotent_and_best_effort() {
    let h = started_host("cnidel");
    h.rnet_ok(&["create", "del", "--subnet", "10.61.0.0/24"]);
    let cni = Plugin::rnet(&h.socket());
    let c = conf("1.1.0", "del");
    // DEL without ADD, with and without a namespace.
    let w = Workload::new("a");
    cni.del(&c, "never", Some(&w.path()), "eth0").ok();
    cni.del(&c, "never", None, "eth0").ok();
    // DEL twice.
    let r = cni.add(&c, "twice", &w.path(), "eth0", "").ok();
    let ip = addr_of(&r);
    cni.del(&c, "twice", Some(&w.path()), "eth0").ok();
    cni.del(&c, "twice", Some(&w.path()), "eth0").ok();
    wait_gone(&w, "eth0");
    assert!(endpoints(&h, "del").is_empty());
    // The address is free again: the next ADD may take it.
    let r2 = cni
        .add(&c, "again", &w.path(), "eth0", &format!("IP={ip}"))
        .ok();
    assert_eq!(addr_of(&r2), ip);
    cni.del(&c, "again", Some(&w.path()), "eth0").ok();
    // DEL with the namespace gone: the runtime removed it before DEL (and passes its stale
    // path, or nothing). The address is freed all the same, and no veth is left.
    let gone = Workload::new("gone");
    let path = gone.path();
    cni.add(&c, "gone1", &path, "eth0", "").ok();
    drop(gone);
    cni.del(&c, "gone1", Some(&path), "eth0").ok();
    let gone2 = Workload::new("gone2");
    let path2 = gone2.path();
    cni.add(&c, "gone2", &path2, "net1", "").ok();
    drop(gone2);
    cni.del(&c, "gone2", None, "net1").ok();
    assert!(endpoints(&h, "del").is_empty());
    wait_until("no veth left", Duration::from_secs(10), || {
        sandbox_veths(&h, "del").is_empty()
    });
    // DEL on a network that does not exist (removed meanwhile) succeeds: nothing to free.
    cni.del(&conf("1.1.0", "nosuch"), "x", None, "eth0").ok();
    // A CLI-made endpoint whose id happens to match is not CNI's to release.
    h.rnet_ok(&[
        "attach",
        "del",
        "--netns",
        w.path().to_str().unwrap(),
        "--id",
        "cli_eth0",
    ]);
    let msg = cni.del(&c, "cli", Some(&w.path()), "eth0").err(103);
    assert!(msg.contains("not by the CNI plugin"), "{msg}");
    assert_eq!(endpoints(&h, "del").len(), 1);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn add_honours_requested_ip_mac_and_mtu() {
    let h = started_host("cniarg");
    h.rnet_ok(&["create", "args", "--subnet", "10.62.0.0/24"]);
    let cni = Plugin::rnet(&h.socket());
    let c = conf("1.1.0", "args");
    // From `ip`, not /sys: nsenter --net keeps the test's sysfs, which shows its own eth0.
    let mac_of = |w: &Workload| {
        let out = w.exec(&["ip", "-o", "link", "show", "eth0"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut words = text.split_whitespace().skip_while(|w| *w != "link/ether");
        words.nth(1).unwrap_or_default().to_string()
    };
    // CNI_ARGS IP= and MAC= (unknown keys ignored, as runtimes send K8S_* ones).
    let w1 = Workload::new("a1");
    let r = cni
        .add(
            &c,
            "a1",
            &w1.path(),
            "eth0",
            "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.62.0.50;MAC=0A:58:0A:3E:00:32",
        )
        .ok();
    assert_eq!(r["ips"][0]["address"], "10.62.0.50/24");
    assert_eq!(r["interfaces"][1]["mac"], "0a:58:0a:3e:00:32");
    assert_eq!(mac_of(&w1), "0a:58:0a:3e:00:32");
    let ep = &endpoints(&h, "args")[0];
    assert_eq!(
        ep["mac"], "0a:58:0a:3e:00:32",
        "the record (and so peers) has it"
    );
    // The ips / mac capabilities through runtimeConfig, and args.cni.
    let w2 = Workload::new("a2");
    let mut c2 = c.clone();
    c2["runtimeConfig"] = json!({"ips": ["10.62.0.60/24"], "mac": "0a:58:0a:3e:00:3c"});
    let r = cni.add(&c2, "a2", &w2.path(), "eth0", "").ok();
    assert_eq!(r["ips"][0]["address"], "10.62.0.60/24");
    assert_eq!(mac_of(&w2), "0a:58:0a:3e:00:3c");
    let w3 = Workload::new("a3");
    let mut c3 = c.clone();
    c3["args"] = json!({"cni": {"ips": ["10.62.0.70"]}});
    let r = cni.add(&c3, "a3", &w3.path(), "eth0", "").ok();
    assert_eq!(r["ips"][0]["address"], "10.62.0.70/24");
    assert!(w1.ping("10.62.0.60", 2), "requested MACs are reachable");
    // Clashes: the same address, the same MAC, the same attachment, an existing interface.
    let w4 = Workload::new("a4");
    let msg = cni
        .add(&c, "a4", &w4.path(), "eth0", "IP=10.62.0.50")
        .err(103);
    assert!(msg.contains("already in use"), "{msg}");
    let msg = cni
        .add(&c, "a4", &w4.path(), "eth0", "MAC=0a:58:0a:3e:00:32")
        .err(103);
    assert!(msg.contains("MAC"), "{msg}");
    cni.add(&c, "a1", &w4.path(), "eth0", "").err(103);
    w4.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "x0",
    ]);
    let msg = cni.add(&c, "a4", &w4.path(), "eth0", "").err(103);
    assert!(msg.contains("already exists"), "{msg}");
    // Refused values: outside the subnet, a group MAC, an MTU above the network's.
    cni.add(&c, "a5", &w4.path(), "net1", "IP=10.99.0.5")
        .err(101);
    cni.add(&c, "a5", &w4.path(), "net1", "MAC=01:00:5e:00:00:01")
        .err(4);
    let mut big = c.clone();
    big["mtu"] = json!(9000);
    let msg = cni.add(&big, "a5", &w4.path(), "net1", "").err(101);
    assert!(msg.contains("MTU 9000"), "{msg}");
    // A lower MTU is applied and reported.
    let mut small = c.clone();
    small["mtu"] = json!(1400);
    let r = cni.add(&small, "a5", &w4.path(), "net1", "").ok();
    assert_eq!(r["interfaces"][1]["mtu"], 1400);
    assert_eq!(r["routes"][0]["advmss"], 1360);
    let link =
        String::from_utf8_lossy(&w4.exec(&["ip", "-o", "link", "show", "net1"]).stdout).to_string();
    assert!(link.contains(" mtu 1400 "), "{link}");
    assert_eq!(endpoints(&h, "args").len(), 4, "failed ADDs left nothing");
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn check_names_what_is_missing() {
    let h = started_host("cnichk");
    h.rnet_ok(&["create", "chk", "--subnet", "10.63.0.0/24"]);
    let cni = Plugin::rnet(&h.socket());
    let c = conf("1.0.0", "chk");
    let w = Workload::new("c");
    let r = cni.add(&c, "c1", &w.path(), "eth0", "").ok();
    cni.check(&c, &r, "c1", &w.path(), "eth0").ok();
    // A prevResult that does not match what rnet made.
    let mut wrong = r.clone();
    wrong["ips"][0]["address"] = json!("10.63.0.200/24");
    let msg = cni.check(&c, &wrong, "c1", &w.path(), "eth0").err(105);
    assert!(msg.contains("does not list address"), "{msg}");
    // The address removed by hand.
    let addr = r["ips"][0]["address"].as_str().unwrap();
    w.exec(&["ip", "addr", "del", addr, "dev", "eth0"]);
    let msg = cni.check(&c, &r, "c1", &w.path(), "eth0").err(105);
    assert!(msg.contains("lacks address"), "{msg}");
    assert!(msg.contains("no default route"), "{msg}");
    // The interface deleted by hand.
    w.exec(&["ip", "link", "del", "eth0"]);
    let msg = cni.check(&c, &r, "c1", &w.path(), "eth0").err(105);
    assert!(msg.contains("interface eth0 is missing"), "{msg}");
    // No record at all.
    let msg = cni.check(&c, &r, "c2", &w.path(), "eth0").err(105);
    assert!(msg.contains("no record"), "{msg}");
    // CHECK needs prevResult and a version that has CHECK.
    let out = cni.call(
        &[
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", w.path().to_str().unwrap()),
            ("CNI_IFNAME", "eth0"),
        ],
        &c.to_string(),
    );
    out.err(7);
    cni.check(&conf("0.3.1", "chk"), &r, "c1", &w.path(), "eth0")
        .err(1);
    cni.del(&c, "c1", Some(&w.path()), "eth0").ok();
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn status_reports_readiness() {
    let mut h = started_host("cnista");
    h.rnet_ok(&["create", "tiny", "--subnet", "10.64.0.0/30"]);
    let cni = Plugin::rnet(&h.socket());
    let status = |name: &str, version: &str| {
        cni.call(
            &[("CNI_COMMAND", "STATUS")],
            &conf(version, name).to_string(),
        )
    };
    assert_eq!(status("tiny", "1.1.0").ok(), Value::Null);
    let msg = status("absent", "1.1.0").err(50);
    assert!(msg.contains("does not exist"), "{msg}");
    status("tiny", "1.0.0").err(1);
    // A /30 has one endpoint address: once taken, the network cannot allocate.
    let w = Workload::new("t");
    cni.add(&conf("1.1.0", "tiny"), "t1", &w.path(), "eth0", "")
        .ok();
    let msg = status("tiny", "1.1.0").err(50);
    assert!(msg.contains("no free address"), "{msg}");
    let w2 = Workload::new("t2");
    cni.add(&conf("1.1.0", "tiny"), "t2", &w2.path(), "eth0", "")
        .err(104);
    cni.del(&conf("1.1.0", "tiny"), "t1", Some(&w.path()), "eth0")
        .ok();
    status("tiny", "1.1.0").ok();
    // rnetd down: STATUS says not available, ADD and DEL say try again later.
    h.kill_daemon(nix::sys::signal::Signal::SIGTERM);
    let msg = status("tiny", "1.1.0").err(50);
    assert!(msg.contains("not running"), "{msg}");
    cni.add(&conf("1.1.0", "tiny"), "t3", &w2.path(), "eth0", "")
        .err(11);
    cni.del(&conf("1.1.0", "tiny"), "t3", None, "eth0").err(11);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn gc_releases_only_stale_cni_attachments() {
    let h = started_host("cnigc");
    h.rnet_ok(&["create", "gc", "--subnet", "10.65.0.0/24"]);
    let cni = Plugin::rnet(&h.socket());
    let c = conf("1.1.0", "gc");
    let ws: Vec<Workload> = (0..3).map(|i| Workload::new(&format!("g{i}"))).collect();
    for (i, w) in ws.iter().enumerate() {
        cni.add(&c, &format!("g{i}"), &w.path(), "eth0", "").ok();
    }
    // Another runtime's configuration on the same rnet network, and a CLI workload.
    let mut other = c.clone();
    other["name"] = json!("other");
    other["network"] = json!("gc");
    let wo = Workload::new("o");
    cni.add(&other, "o1", &wo.path(), "eth0", "").ok();
    let wc = Workload::new("cli");
    h.rnet_ok(&[
        "attach",
        "gc",
        "--netns",
        wc.path().to_str().unwrap(),
        "--id",
        "cli",
    ]);
    let gc = |conf: &Value| {
        cni.call(
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
            &conf.to_string(),
        )
    };
    let ids = |h: &Host| {
        let mut v: Vec<String> = endpoints(h, "gc")
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let mut keep = c.clone();
    keep["cni.dev/valid-attachments"] = json!([{"containerID": "g0", "ifname": "eth0"}]);
    assert_eq!(gc(&keep).ok(), Value::Null);
    assert_eq!(ids(&h), ["cli", "g0_eth0", "o1_eth0"]);
    wait_gone(&ws[1], "eth0");
    wait_gone(&ws[2], "eth0");
    // The tagged 1.1.0 key alone, null meaning none.
    let mut none = c.clone();
    none["cni.dev/attachments"] = Value::Null;
    gc(&none).ok();
    assert_eq!(ids(&h), ["cli", "o1_eth0"]);
    // Without any list GC refuses rather than releasing everything.
    gc(&c).err(7);
    // GC needs CNI_PATH and 1.1.0.
    cni.call(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "")],
        &keep.to_string(),
    )
    .err(4);
    let mut old = keep.clone();
    old["cniVersion"] = json!("1.0.0");
    gc(&old).err(1);
    assert!(ws[0].links().iter().all(|l| l != "eth0"), "g0 was released");
    assert!(wo.links().iter().any(|l| l == "eth0"));
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn prev_result_passes_through_a_chain() {
    let h = started_host("cnichain");
    h.rnet_ok(&["create", "chain", "--subnet", "10.66.0.0/24"]);
    let cni = Plugin::rnet(&h.socket());
    let w = Workload::new("c");
    let mut c = conf("1.0.0", "chain");
    c["dns"] = json!({"nameservers": ["10.66.0.1"]});
    c["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "lo", "sandbox": w.path()}],
        "ips": [{"address": "127.0.0.1/8", "interface": 0}],
    });
    let r = cni.add(&c, "c1", &w.path(), "eth0", "").ok();
    assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(r["interfaces"][0]["name"], "lo");
    assert_eq!(r["ips"][0]["address"], "127.0.0.1/8");
    assert_eq!(
        r["ips"][1]["interface"], 2,
        "index of our eth0 in the merged list"
    );
    assert_eq!(r["dns"]["nameservers"][0], "10.66.0.1");
    cni.check(&c, &r, "c1", &w.path(), "eth0").ok();
    cni.del(&c, "c1", Some(&w.path()), "eth0").ok();
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn fifty_parallel_adds_then_dels_leave_nothing() {
    const N: usize = 50;
    let h = started_host("cnistress");
    h.rnet_ok(&["create", "stress", "--subnet", "10.67.0.0/24"]);
    let cni = Plugin::rnet(&h.socket());
    let c = conf("1.1.0", "stress");
    let ws: Vec<Workload> = (0..N).map(|i| Workload::new(&format!("s{i}"))).collect();
    let paths: Vec<PathBuf> = ws.iter().map(Workload::path).collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (cni, c) = (&cni, &c);
                s.spawn(move || cni.add(c, &format!("s{i}"), p, "eth0", "").ok())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addrs: Vec<String> = results.iter().map(addr_of).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), N, "distinct addresses");
    assert_eq!(endpoints(&h, "stress").len(), N);
    for (w, a) in ws.iter().zip(&results) {
        assert_eq!(
            w.ipv4_addrs("eth0"),
            vec![addr_of(a).parse::<std::net::Ipv4Addr>().unwrap()]
        );
    }
    std::thread::scope(|s| {
        for (i, p) in paths.iter().enumerate() {
            let (cni, c) = (&cni, &c);
            s.spawn(move || cni.del(c, &format!("s{i}"), Some(p), "eth0").ok());
        }
    });
    assert!(endpoints(&h, "stress").is_empty(), "every address released");
    wait_until(
        "no veth left in the sandbox",
        Duration::from_secs(30),
        || sandbox_veths(&h, "stress").is_empty(),
    );
    for w in &ws {
        assert!(
            !w.links().iter().any(|l| l == "eth0"),
            "{} leaks eth0",
            w.name()
        );
    }
}

/// plugin-spec/: the example configurations satisfy the schema, and the plugin takes them.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn plugin_spec_examples_validate_and_run() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugin-spec");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cni-config.schema.json")).unwrap())
            .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let mut examples: Vec<PathBuf> = std::fs::read_dir(dir.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conflist"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 2, "{examples:?}");
    // Bad configurations fail the schema.
    for bad in [
        json!({"cniVersion": "1.1.0", "name": "x", "plugins": [{"type": "rnet-cni", "mtu": 10}]}),
        json!({"cniVersion": "1.1.0", "name": "-x", "plugins": [{"type": "rnet-cni"}]}),
        json!({"cniVersion": "1.1.0", "name": "x", "plugins": [{"type": "rnet-cni", "ipam": {}}]}),
    ] {
        assert!(!validator.is_valid(&bad), "schema accepts {bad}");
    }
    let h = started_host("cnispec");
    let cni = Plugin::rnet(&h.socket());
    for (i, path) in examples.iter().enumerate() {
        let list: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&list)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        // Run its rnet-cni plugin object as a runtime would build the request.
        let plugin = list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["type"] == "rnet-cni")
            .expect("an rnet-cni plugin");
        let mut c = plugin.clone();
        let obj = c.as_object_mut().unwrap();
        obj.remove("capabilities");
        obj.remove("socket"); // the test's daemon, through RNET_SOCKET
        obj.insert("cniVersion".into(), list["cniVersion"].clone());
        obj.insert("name".into(), list["name"].clone());
        let net = c["network"]
            .as_str()
            .unwrap_or(list["name"].as_str().unwrap())
            .to_string();
        h.rnet_ok(&["create", &net, "--subnet", &format!("10.{}.0.0/24", 70 + i)]);
        let w = Workload::new("ex");
        let r = cni.add(&c, "ex", &w.path(), "eth0", "").ok();
        if list["cniVersion"].as_str().unwrap() >= "0.4.0" {
            cni.check(&c, &r, "ex", &w.path(), "eth0").ok();
        }
        cni.del(&c, "ex", Some(&w.path()), "eth0").ok();
    }
}

/// The plugin is a thin client: no etcd client, no store, no netlink in the binary.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn plugin_links_no_store_or_kernel_code() {
    let out = std::process::Command::new("nm")
        .arg("-C")
        .arg(common::cni::rnet_cni())
        .output()
        .expect("run nm (binutils)");
    assert!(out.status.success(), "nm: {out:?}");
    let symbols = String::from_utf8_lossy(&out.stdout);
    assert!(symbols.lines().count() > 1000, "nm listed the symbols");
    for crate_name in ["etcd_client", "tonic::", "redb::", "rtnetlink::", "axum::"] {
        let hits: Vec<&str> = symbols.lines().filter(|l| l.contains(crate_name)).collect();
        assert!(
            hits.is_empty(),
            "rnet-cni links {crate_name}: {:?}",
            &hits[..hits.len().min(3)]
        );
    }
}

/// VERSION, and the classes a runtime meets before rnetd is asked anything, through the binary.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn version_and_early_errors_through_the_binary() {
    let cni = Plugin::rnet(Path::new("/nonexistent/rnetd.sock"));
    for v in VERSIONS {
        let out = cni
            .call(
                &[("CNI_COMMAND", "VERSION")],
                &json!({"cniVersion": v}).to_string(),
            )
            .ok();
        assert_eq!(out["cniVersion"], v);
        assert_eq!(out["supportedVersions"], json!(VERSIONS));
    }
    let w = Workload::new("e");
    let ns = w.path().display().to_string();
    let add = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "e1"),
        ("CNI_NETNS", ns.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    cni.call(&add, "not json").err(6);
    cni.call(&add, r#"{"cniVersion": "1.1.0", "name": 5}"#)
        .err(6);
    let msg = cni.call(&add, &conf("0.2.0", "x").to_string()).err(1);
    assert!(msg.contains("0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"), "{msg}");
    cni.call(&[("CNI_COMMAND", "NOPE")], &conf("1.1.0", "x").to_string())
        .err(4);
    cni.call(&add[..3], &conf("1.1.0", "x").to_string()).err(4);
    let msg = cni.call(&add, &conf("1.1.0", "x").to_string()).err(11);
    assert!(msg.contains("not running"), "{msg}");
    // The error names the configuration's version when it has one.
    let e = cni.call(&add, &conf("0.4.0", "x").to_string()).json();
    assert_eq!(e["cniVersion"], "0.4.0");
}
