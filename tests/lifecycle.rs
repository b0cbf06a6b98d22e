//! Trust and lifecycle regressions (issue 9): a network re-created under the same name gets a
//! sandbox of its own and never inherits the old one's (nor its clear-text VXLAN socket); a
//! hostile namespace path cannot hang the daemon; a subnet too large is refused and the
//! largest allowed one allocates without listing its space; releases compare revisions, so a
//! storm of attaches, duplicate detaches and gc on three hosts ends with no duplicate address
//! and no leaked link.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::lab::Lab;
use common::pcap::Capture;
use common::{links_in, sandbox_in, wait_until, Host, Workload};
use serde_json::Value;

/// Where a capture's closing sentinel goes: host h1's underlay, across the lab switch.
const SENTINEL_TO: std::net::SocketAddrV4 =
    std::net::SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 11), 9);

fn wait_ping(w: &Workload, ip: &str) {
    wait_until(
        &format!("{} reaches {ip}", w.tag()),
        Duration::from_secs(15),
        || w.ping(ip, 1),
    );
}

fn network_id(lab: &Lab, host: &str, net: &str) -> String {
    lab.host_rnet_json(host, &["inspect", net])["id"]
        .as_str()
        .expect("network id")
        .to_string()
}

/// The sandbox bind mounts of network `net` on `host` (all ids).
fn sandboxes_of(lab: &Lab, host: &str, net: &str) -> Vec<String> {
    let dir = lab.dir().join(host).join("run/netns");
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| n.starts_with(&format!("sb-{net}-")))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Both hosts had endpoints on NET; `rnet rm --force` then `rnet create` under the same name,
/// well within the resync period (the lab's default is 30 s, so no reconcile tidies up first).
fn recreate(lab: &Lab, extra: &[&str]) -> (String, String) {
    lab.host_rnet_ok("h1", &["create", "re", "--subnet", "10.61.0.0/24"]);
    let old = network_id(lab, "h1", "re");
    let (a, b) = (Workload::new("a0"), Workload::new("b0"));
    lab.attach("h1", "re", &a.path());
    let ipb = lab.attach("h2", "re", &b.path());
    wait_ping(&a, &ipb);
    lab.host_rnet_ok("h1", &["rm", "re", "--force"]);
    let mut args = vec!["create", "re", "--subnet", "10.61.0.0/24"];
    args.extend_from_slice(extra);
    lab.host_rnet_ok("h1", &args);
    let new = network_id(lab, "h1", "re");
    assert_ne!(old, new, "a re-created network has a new id");
    (old, new)
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_network_recreated_under_its_name_gets_new_sandboxes_and_works_across_hosts() {
    let lab = Lab::up(2, &[]);
    let (old, new) = recreate(&lab, &[]);
    let (c, d) = (Workload::new("c"), Workload::new("d"));
    lab.attach("h1", "re", &c.path());
    let ipd = lab.attach("h2", "re", &d.path());
    wait_ping(&c, &ipd);
    for h in ["h1", "h2"] {
        assert_eq!(
            sandboxes_of(&lab, h, "re"),
            vec![format!("sb-re-{new}")],
            "{h}: only the new network's sandbox (old id {old})"
        );
        let out = lab.host_rnet(h, &["doctor"]);
        assert!(
            out.status.success(),
            "{h}: doctor finds drift: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_network_recreated_encrypted_sends_nothing_in_clear() {
    let lab = Lab::up(2, &[]);
    let (_, new) = recreate(&lab, &["--encrypt", "wireguard"]);
    let vni = lab.host_rnet_json("h1", &["inspect", "re"])["vni"]
        .as_u64()
        .unwrap() as u32;
    let (c, d) = (Workload::new("c"), Workload::new("d"));
    lab.attach("h1", "re", &c.path());
    let ipd = lab.attach("h2", "re", &d.path());
    wait_ping(&c, &ipd);
    let cap = Capture::start(&lab.switch_netns(), "any", SENTINEL_TO);
    assert!(c.ping(&ipd, 20), "pings across the re-created network");
    let seen = cap.finish();
    let clear = seen.vxlan_vnis().iter().filter(|v| **v == vni).count();
    assert_eq!(
        clear, 0,
        "{clear} VXLAN frames of VNI {vni} crossed in clear"
    );
    assert!(
        seen.wireguard().len() >= 20,
        "the pings went inside WireGuard"
    );
    // Each host's sandbox for the new id has its VXLAN socket where it must be: doctor
    // checks it (a socket in the host namespace would be drift).
    for h in ["h1", "h2"] {
        assert_eq!(sandboxes_of(&lab, h, "re"), vec![format!("sb-re-{new}")]);
        let out = lab.host_rnet(h, &["doctor"]);
        assert!(
            out.status.success(),
            "{h}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn turning_encryption_off_in_the_store_is_refused_while_a_sandbox_exists() {
    let lab = Lab::up(2, &["--resync", "1"]);
    let net = lab.host_rnet_json(
        "h1",
        &[
            "create",
            "sec",
            "--subnet",
            "10.62.0.0/24",
            "--encrypt",
            "wireguard",
        ],
    );
    let vni = net["vni"].as_u64().unwrap() as u32;
    let (a, b) = (Workload::new("a"), Workload::new("b"));
    lab.attach("h1", "sec", &a.path());
    let ipb = lab.attach("h2", "sec", &b.path());
    wait_ping(&a, &ipb);
    // Anyone who can write etcd rewrites the record: same id, encryption "none".
    let mut record = net.clone();
    record["encryption"] = Value::from("none");
    lab.exec_ok(
        "h1",
        &[
            "etcdctl",
            "--endpoints",
            "http://198.18.0.1:2379",
            "put",
            "/rnet/v1/networks/sec",
            &record.to_string(),
        ],
    );
    // Reconciles run every second; doctor names the refusal, and nothing goes out in clear.
    wait_until(
        "doctor refuses the downgrade",
        Duration::from_secs(10),
        || {
            String::from_utf8_lossy(&lab.host_rnet("h1", &["doctor"]).stdout)
                .contains("never turned off")
        },
    );
    let cap = Capture::start(&lab.switch_netns(), "any", SENTINEL_TO);
    let _ = a.ping(&ipb, 10);
    let w = Workload::new("late");
    let refused = lab.host_rnet(
        "h1",
        &["attach", "sec", "--netns", &w.path().display().to_string()],
    );
    let seen = cap.finish();
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("never turned off"),
        "attach to the downgraded network is refused: {refused:?}"
    );
    let clear = seen.vxlan_vnis().iter().filter(|v| **v == vni).count();
    assert_eq!(
        clear, 0,
        "{clear} VXLAN frames of VNI {vni} crossed in clear"
    );
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_fifo_or_other_non_namespace_path_cannot_hang_the_daemon() {
    let mut h = Host::new("fifo");
    h.start_daemon();
    h.rnet_ok(&["create", "ff", "--subnet", "10.63.0.0/24"]);
    let fifo = h.dir().join("a-fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fifo_arg = fifo.display().to_string();
    // More hostile attaches at once than the daemon has runtime workers.
    let started = Instant::now();
    let outs: Vec<_> = thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|_| s.spawn(|| h.rnet(&["attach", "ff", "--netns", &fifo_arg])))
            .collect();
        let status = h.rnet(&["status"]);
        assert!(status.status.success(), "status answers meanwhile");
        hs.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered in {:?}",
        started.elapsed()
    );
    for out in outs {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("is not a network namespace"),
            "{out:?}"
        );
    }
    for bad in ["/dev/null", "/proc/self/ns/uts", "/etc/hostname"] {
        let out = h.rnet(&["attach", "ff", "--netns", bad]);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is not a network namespace"),
            "{bad}: {out:?}"
        );
    }
    assert_eq!(h.rnet_json(&["endpoints", "ff"]), Value::Array(vec![]));
    let w = Workload::new("ok");
    h.rnet_ok(&["attach", "ff", "--netns", &w.path().display().to_string()]);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn huge_subnets_are_refused_and_the_largest_allowed_allocates_at_once() {
    let mut h = Host::new("huge");
    h.start_daemon();
    for s in ["0.0.0.0/0", "10.0.0.0/7"] {
        let out = h.rnet(&["create", "big", "--subnet", s, "--allow-overlap"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("too large") && err.contains("/8"),
            "{s}: {out:?}"
        );
    }
    h.rnet_ok(&["create", "big", "--subnet", "10.0.0.0/8"]);
    let ws: Vec<Workload> = (0..3).map(|i| Workload::new(&format!("w{i}"))).collect();
    for w in &ws {
        let started = Instant::now();
        h.rnet_ok(&["attach", "big", "--netns", &w.path().display().to_string()]);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "attach on a /8 took {:?}",
            started.elapsed()
        );
    }
    let ips: BTreeSet<String> = h
        .rnet_json(&["endpoints", "big"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ip"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ips.len(), 3);
    assert!(h.rnet(&["status"]).status.success(), "daemon alive");
}

/// Addresses of `eth0` inside each kept workload, by workload.
fn kernel_addresses(kept: &[(String, Workload)]) -> BTreeMap<String, Vec<Ipv4Addr>> {
    kept.iter()
        .map(|(id, w)| (id.clone(), w.ipv4_addrs("eth0")))
        .collect()
}

fn veths_in(sandbox: &Path) -> Vec<String> {
    if !sandbox.exists() {
        return Vec::new();
    }
    links_in(sandbox)
        .into_iter()
        .filter(|l| l.starts_with("ve"))
        .collect()
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_storm_of_attach_duplicate_detach_and_gc_leaves_no_duplicate_and_no_leak() {
    const WORKERS_PER_HOST: usize = 2;
    const ROUNDS: usize = 12;
    let lab = Lab::up(3, &[]);
    // 29 addresses for up to 6 live workloads at a time: addresses are reused all the time.
    lab.host_rnet_ok("h1", &["create", "storm", "--subnet", "10.64.0.0/27"]);
    let net = lab.host_rnet_json("h1", &["inspect", "storm"]);
    // A host that is gone, with endpoint records for gc to release during the storm.
    for i in 0..3 {
        let ip = format!("10.64.0.{}", 28 + i);
        let ep = serde_json::json!({
            "network": "storm", "network_id": net["id"], "id": format!("ghost{i}"),
            "ip": format!("{ip}/27"), "mac": format!("02:52:0a:40:00:{:02x}", 28 + i),
            "host": "ghost", "ifname": "eth0", "netns": "", "host_ifname": "", "created": 0,
        });
        for (key, value) in [
            (format!("/rnet/v1/endpoints/storm/{ip}"), ep.to_string()),
            (format!("/rnet/v1/endpoint-ids/storm/ghost{i}"), ip.clone()),
        ] {
            lab.exec_ok(
                "h1",
                &[
                    "etcdctl",
                    "--endpoints",
                    "http://198.18.0.1:2379",
                    "put",
                    &key,
                    &value,
                ],
            );
        }
    }
    let kept: Mutex<Vec<(String, Workload)>> = Mutex::new(Vec::new());
    thread::scope(|s| {
        for host in ["h1", "h2", "h3"] {
            for worker in 0..WORKERS_PER_HOST {
                let (lab, kept) = (&lab, &kept);
                s.spawn(move || {
                    for round in 0..ROUNDS {
                        let w = Workload::new(&format!("{host}{worker}{round}"));
                        let path = w.path().display().to_string();
                        let out = lab
                            .host_rnet(host, &["-o", "json", "attach", "storm", "--netns", &path]);
                        if !out.status.success() {
                            // A full subnet is a fine answer in a storm; anything else is not.
                            let err = String::from_utf8_lossy(&out.stderr);
                            assert!(
                                err.contains("no free address") || err.contains("try again"),
                                "{host}: {err}"
                            );
                            continue;
                        }
                        let ep: Value = serde_json::from_slice(&out.stdout).unwrap();
                        let id = ep["id"].as_str().unwrap().to_string();
                        if round % 3 == 0 {
                            kept.lock().unwrap().push((id, w));
                            continue;
                        }
                        // The same detach twice at once: one of them must release nothing.
                        thread::scope(|d| {
                            for _ in 0..2 {
                                d.spawn(|| lab.host_rnet(host, &["detach", "storm", "--id", &id]));
                            }
                        });
                    }
                });
            }
        }
        s.spawn(|| {
            for i in 0..3 {
                let out =
                    lab.host_rnet(["h1", "h2", "h3"][i], &["gc", "--host", "ghost", "--force"]);
                assert!(out.status.success() || i > 0, "{out:?}");
            }
        });
    });
    let kept = kept.into_inner().unwrap();
    assert!(!kept.is_empty());
    // No two live workloads hold one address, and the store says exactly what the kernels do.
    let addrs = kernel_addresses(&kept);
    let mut seen = BTreeMap::new();
    for (id, ips) in &addrs {
        assert_eq!(ips.len(), 1, "workload {id} has {ips:?}");
        if let Some(other) = seen.insert(ips[0], id.clone()) {
            panic!("address {} is held by both {other} and {id}", ips[0]);
        }
    }
    let records: BTreeMap<String, String> = lab
        .host_rnet_json("h1", &["endpoints", "storm"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_string(),
                e["ip"]
                    .as_str()
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    let expected: BTreeMap<String, String> = addrs
        .iter()
        .map(|(id, ips)| (id.clone(), ips[0].to_string()))
        .collect();
    assert_eq!(
        records, expected,
        "store records = live workloads (ghosts gone)"
    );
    // Detach everything: no veth is left in any sandbox, no record in the store.
    for (id, _) in &kept {
        let host = lab
            .host_rnet_json("h1", &["endpoints", "storm"])
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id.as_str())
            .map(|e| e["host"].as_str().unwrap().to_string())
            .unwrap();
        lab.host_rnet_ok(&host, &["detach", "storm", "--id", id]);
    }
    assert_eq!(
        lab.host_rnet_json("h1", &["endpoints", "storm"]),
        Value::Array(vec![])
    );
    for h in ["h1", "h2", "h3"] {
        let sb = sandbox_in(&lab.dir().join(h).join("run"), "storm");
        assert_eq!(veths_in(&sb), Vec::<String>::new(), "{h}: leaked veths");
    }
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_store_record_cannot_make_the_reconcile_plug_a_namespace_into_an_overlay() {
    let lab = Lab::up(2, &["--resync", "1"]);
    let net = lab.host_rnet_json("h1", &["create", "fj", "--subnet", "10.68.0.0/24"]);
    // A workload h1 really attached: its lost veth pair is rebuilt by the reconcile.
    let w = Workload::new("real");
    let ip = lab.attach("h1", "fj", &w.path());
    let sandbox = sandbox_in(&lab.dir().join("h1/run"), "fj");
    let veth = format!("ve{:08x}", u32::from(ip.parse::<Ipv4Addr>().unwrap()));
    let del = std::process::Command::new("nsenter")
        .arg(format!("--net={}", sandbox.display()))
        .args(["--", "ip", "link", "del", &veth])
        .status()
        .unwrap();
    assert!(del.success());
    wait_until(
        "the real workload's veth is rebuilt",
        Duration::from_secs(10),
        || veths_in(&sandbox).contains(&veth),
    );
    // A forged record: this host, h1's own (host) namespace with its true inode, an address
    // of the network. The reconcile must never build it.
    let host_ns = lab.dir().join("netns/h1");
    let inode = std::fs::metadata(&host_ns)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let forged_ip: Ipv4Addr = "10.68.0.50".parse().unwrap();
    let forged = serde_json::json!({
        "network": "fj", "network_id": net["id"], "id": "forged",
        "ip": "10.68.0.50/24", "mac": "02:52:0a:44:00:32", "host": "h1", "ifname": "rnet9",
        "netns": host_ns.display().to_string(), "netns_inode": inode,
        "host_ifname": format!("ve{:08x}", u32::from(forged_ip)), "created": 0,
    });
    lab.exec_ok(
        "h2",
        &[
            "etcdctl",
            "--endpoints",
            "http://198.18.0.1:2379",
            "put",
            "/rnet/v1/endpoints/fj/10.68.0.50",
            &forged.to_string(),
        ],
    );
    wait_until(
        "h1 refuses to build the forged endpoint",
        Duration::from_secs(10),
        || {
            lab.log("h1")
                .contains("not rebuilding an endpoint this daemon did not attach")
        },
    );
    let host_links = links_in(&host_ns);
    assert!(
        !host_links.iter().any(|l| l == "rnet9"),
        "the host namespace got an overlay interface: {host_links:?}"
    );
    assert!(!veths_in(&sandbox).contains(&format!("ve{:08x}", u32::from(forged_ip))));
    // doctor shows it as drift rnet will not repair by itself.
    let out = lab.host_rnet("h1", &["doctor"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("forged"));
}
