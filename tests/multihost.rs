//! Several hosts, one overlay: `rnet lab` hosts with their own rnetd on the lab's real etcd,
//! workloads in test-made namespaces, checked with pings, TCP transfers and the kernel's tables.
mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::lab::Lab;
use common::{wait_until, Workload};
use serde_json::Value;

/// Short leases and windows keep fault tests quick; --resync 2 makes the daemon re-read the
/// kernel often enough for the hand-deleted-entry test.
const FAST: &[&str] = &["--lease-ttl", "2", "--probe-window", "2", "--resync", "2"];

fn attach(lab: &Lab, host: &str, net: &str, w: &Workload, extra: &[&str]) -> String {
    let path = w.path().display().to_string();
    let mut args = vec!["attach", net, "--netns", &path];
    args.extend_from_slice(extra);
    let ep = lab.host_rnet_json(host, &args);
    ep["ip"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

fn wait_ping(w: &Workload, ip: &str, within: Duration) {
    wait_until(&format!("{} reaches {ip}", w.tag()), within, || {
        w.ping(ip, 1)
    });
}

fn no_drift(lab: &Lab, hosts: &[&str]) {
    for h in hosts {
        wait_until(&format!("no drift on {h}"), Duration::from_secs(10), || {
            lab.host_rnet(h, &["doctor"]).status.success()
        });
    }
}

/// A 5-per-second ping running in the background; `finish` returns its summary line.
struct Pinger(std::process::Child);

impl Pinger {
    fn start(w: &Workload, ip: &str, count: u32) -> Pinger {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", w.path().display()))
            .args([
                "--",
                "ping",
                "-n",
                "-q",
                "-i",
                "0.2",
                "-W",
                "1",
                "-c",
                &count.to_string(),
                ip,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Pinger(child)
    }

    fn finish(self) -> String {
        String::from_utf8_lossy(&self.0.wait_with_output().unwrap().stdout).into_owned()
    }
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn three_hosts_talk_networks_stay_isolated_and_mtu_is_exact() {
    let lab = Lab::up(3, FAST);
    lab.host_rnet_ok("h1", &["create", "blue", "--subnet", "10.80.0.0/24"]);
    lab.host_rnet_ok(
        "h2",
        &[
            "create",
            "red",
            "--subnet",
            "10.80.0.0/24",
            "--allow-overlap",
        ],
    );
    let ws: Vec<Workload> = (1..=3).map(|i| Workload::new(&format!("w{i}"))).collect();
    let ips: Vec<String> = ws
        .iter()
        .enumerate()
        .map(|(i, w)| attach(&lab, &format!("h{}", i + 1), "blue", w, &[]))
        .collect();
    for (i, w) in ws.iter().enumerate() {
        for (j, ip) in ips.iter().enumerate() {
            if i != j {
                wait_ping(w, ip, Duration::from_secs(5));
            }
        }
    }
    // TCP across hosts: 20 MB from h2's workload to h1's.
    let mut server = Command::new("nsenter")
        .arg(format!("--net={}", ws[0].path().display()))
        .args(["--", "iperf3", "-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("iperf3 server up", Duration::from_secs(5), || {
        ws[1]
            .exec(&["bash", "-c", &format!("exec 3<>/dev/tcp/{}/5201", ips[0])])
            .status
            .success()
    });
    let out = ws[1].exec(&["iperf3", "-c", &ips[0], "-n", "20M"]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "TCP transfer across hosts: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // red overlaps blue's subnet: its workloads reach each other, never blue's.
    let (r1, r2) = (Workload::new("r1"), Workload::new("r2"));
    let rip1 = attach(&lab, "h1", "red", &r1, &["--ip", "10.80.0.200"]);
    let rip2 = attach(&lab, "h2", "red", &r2, &["--ip", "10.80.0.201"]);
    wait_ping(&r1, &rip2, Duration::from_secs(5));
    assert!(!r2.ping(&ips[0], 2), "red must not reach blue's {}", ips[0]);
    assert!(!ws[0].ping(&rip1, 2), "blue must not reach red's {rip1}");
    // MTU: underlay 1500 - 50; a full-size DF packet crosses, one byte more fails at the sender.
    let link = String::from_utf8_lossy(&ws[0].exec(&["ip", "-o", "link", "show", "eth0"]).stdout)
        .into_owned();
    assert!(link.contains(" mtu 1450 "), "{link}");
    assert!(
        ws[0]
            .exec(&["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", &ips[1]])
            .status
            .success(),
        "1422-byte DF ping crosses hosts"
    );
    let big = ws[0].exec(&[
        "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1423", &ips[1],
    ]);
    assert!(!big.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&big.stdout),
        String::from_utf8_lossy(&big.stderr)
    );
    assert!(
        text.contains("message too long"),
        "EMSGSIZE at the sender, not a silent drop: {text}"
    );
    no_drift(&lab, &["h1", "h2", "h3"]);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_killed_daemon_is_daemon_down_not_gone_and_loses_no_ping() {
    let lab = Lab::up(2, FAST);
    lab.host_rnet_ok("h1", &["create", "k9", "--subnet", "10.81.0.0/24"]);
    let (a, b) = (Workload::new("a"), Workload::new("b"));
    attach(&lab, "h1", "k9", &a, &[]);
    let ipb = attach(&lab, "h2", "k9", &b, &[]);
    let t0 = Instant::now();
    wait_ping(&a, &ipb, Duration::from_secs(5));
    eprintln!(
        "convergence: attach on h2 -> reachable from h1 in {:?}",
        t0.elapsed()
    );
    // 5 pings a second for 10 s; h2's daemon is down for over three lease TTLs of it.
    let pinger = Pinger::start(&a, &ipb, 50);
    let answered = a.snmp("Icmp", "InEchoReps");
    wait_until(
        "pings answered before the kill",
        Duration::from_secs(5),
        || a.snmp("Icmp", "InEchoReps") > answered,
    );
    lab.ok(&["stop", "h2", "--kill"]);
    wait_until("h1 sees h2 as daemon down", Duration::from_secs(8), || {
        lab.host_rnet_json("h1", &["peers"])
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["host"] == "h2" && p["state"] == "daemon-down")
    });
    std::thread::sleep(Duration::from_secs(6)); // 3 x lease TTL with the daemon down: the point of the test
    let peers = lab.host_rnet_ok("h1", &["peers"]);
    assert!(peers.contains("daemon down"), "{peers}");
    lab.ok(&["start", "h2"]);
    let summary = Pinger::finish(pinger);
    assert!(
        summary.contains(" 0% packet loss"),
        "pings lost while h2's daemon was down:\n{summary}"
    );
    no_drift(&lab, &["h1", "h2"]);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_lost_host_is_dropped_after_ttl_and_window_then_gc_frees_its_addresses() {
    let lab = Lab::up(3, FAST);
    lab.host_rnet_ok("h1", &["create", "loss", "--subnet", "10.82.0.0/24"]);
    let ws: Vec<Workload> = (1..=3).map(|i| Workload::new(&format!("l{i}"))).collect();
    for (i, w) in ws.iter().enumerate() {
        attach(&lab, &format!("h{}", i + 1), "loss", w, &[]);
    }
    let sandbox = |h: &str| common::sandbox_in(&lab.dir().join(h).join("run"), "loss");
    let h3_entries = |h: &str| {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", sandbox(h).display()))
            .args(["--", "bridge", "fdb", "show", "dev", "vx-loss"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .matches("dst 198.18.0.13")
            .count()
    };
    wait_until("h1 has h3's entries", Duration::from_secs(5), || {
        h3_entries("h1") == 2
    });
    let refused = lab.host_rnet("h1", &["gc", "--host", "h3"]);
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("is live"),
        "gc refuses a live host"
    );
    lab.ok(&["stop", "h3", "--kill"]);
    lab.ok(&["link", "h3", "down"]);
    let t0 = Instant::now();
    for h in ["h1", "h2"] {
        wait_until(
            &format!("{h} drops h3's entries"),
            // Lease 2 s, window 2 s; the rest is slack for a loaded CI host (3.5-4 s here).
            Duration::from_secs(2 + 2 + 8),
            || h3_entries(h) == 0,
        );
    }
    eprintln!(
        "h3's entries dropped {:?} after its daemon and link went (lease 2 s + window 2 s)",
        t0.elapsed()
    );
    let gc = lab.host_rnet_json("h1", &["gc", "--host", "h3"]);
    assert_eq!(gc["released"].as_array().unwrap().len(), 1);
    let eps = lab.host_rnet_json("h2", &["endpoints", "loss"]);
    assert!(
        eps.as_array().unwrap().iter().all(|e| e["host"] != "h3"),
        "{eps}"
    );
    no_drift(&lab, &["h1", "h2"]);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn an_etcd_outage_keeps_traffic_refuses_attaches_and_converges_after() {
    let lab = Lab::up(3, FAST);
    lab.host_rnet_ok("h1", &["create", "etcd", "--subnet", "10.83.0.0/24"]);
    let (a, b) = (Workload::new("a"), Workload::new("b"));
    attach(&lab, "h1", "etcd", &a, &[]);
    let ipb = attach(&lab, "h2", "etcd", &b, &[]);
    let c = Workload::new("c");
    attach(&lab, "h3", "etcd", &c, &[]);
    wait_ping(&a, &ipb, Duration::from_secs(5));
    let pinger = Pinger::start(&a, &ipb, 175); // 35 s
    lab.ok(&["etcd", "stop"]);
    let stopped = Instant::now();
    let late = Workload::new("late");
    let out = lab.host_rnet(
        "h1",
        &["attach", "etcd", "--netns", late.path().to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("store unavailable"),
        "attach during the outage: {err}"
    );
    assert_eq!(late.links(), vec!["lo".to_string()], "nothing half-built");
    std::thread::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed())); // the outage under test
    lab.ok(&["etcd", "start"]);
    let summary = Pinger::finish(pinger);
    assert!(
        summary.contains(" 0% packet loss"),
        "established traffic during the outage:\n{summary}"
    );
    let iplate = {
        let mut ip = None;
        wait_until("attach works again", Duration::from_secs(15), || {
            let out = lab.host_rnet(
                "h1",
                &[
                    "-o",
                    "json",
                    "attach",
                    "etcd",
                    "--netns",
                    late.path().to_str().unwrap(),
                ],
            );
            ip = serde_json::from_slice::<Value>(&out.stdout).ok().map(|v| {
                v["ip"]
                    .as_str()
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
                    .to_string()
            });
            out.status.success()
        });
        ip.unwrap()
    };
    wait_ping(&c, &iplate, Duration::from_secs(10));
    no_drift(&lab, &["h1", "h2", "h3"]);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_daemon_behind_a_compaction_lists_again_and_misses_nothing() {
    let lab = Lab::up(2, FAST);
    lab.host_rnet_ok("h1", &["create", "cmp", "--subnet", "10.84.0.0/24"]);
    let (a, b) = (Workload::new("a"), Workload::new("b"));
    attach(&lab, "h2", "cmp", &b, &[]);
    attach(&lab, "h1", "cmp", &a, &[]);
    // Freeze h2's daemon and push enough data past it that etcd gives up streaming to its
    // watch (the stream's flow-control window and buffer fill, the watcher falls behind);
    // then compact the history it would need. Thawed, h2 cannot resume: it must re-list.
    let pid = std::fs::read_to_string(lab.dir().join("h2/rnetd.pid"))
        .unwrap()
        .trim()
        .parse::<i32>()
        .unwrap();
    let h2 = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(h2, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let late = Workload::new("late");
    let iplate = attach(&lab, "h1", "cmp", &late, &[]);
    let flood = "v=$(head -c 60000 /dev/zero | tr '\\0' x); for i in $(seq 200); do etcdctl --endpoints 198.18.0.1:2379 put /rnet/v1/junk/$i \"$v\" >/dev/null || exit 1; done";
    lab.exec_ok("h1", &["bash", "-c", flood]);
    let status = lab.exec_ok(
        "h1",
        &[
            "etcdctl",
            "--endpoints",
            "198.18.0.1:2379",
            "endpoint",
            "status",
            "-w",
            "json",
        ],
    );
    let rev = serde_json::from_str::<Value>(&status).unwrap()[0]["Status"]["header"]["revision"]
        .as_i64()
        .unwrap();
    lab.exec_ok(
        "h1",
        &[
            "etcdctl",
            "--endpoints",
            "198.18.0.1:2379",
            "compact",
            &rev.to_string(),
        ],
    );
    lab.exec_ok(
        "h1",
        &[
            "etcdctl",
            "--endpoints",
            "198.18.0.1:2379",
            "del",
            "--prefix",
            "/rnet/v1/junk/",
        ],
    );
    nix::sys::signal::kill(h2, nix::sys::signal::Signal::SIGCONT).unwrap();
    wait_ping(&b, &iplate, Duration::from_secs(30));
    // The ping can pass on flooding alone: the re-list is what this test is about.
    let log = || std::fs::read_to_string(lab.dir().join("h2/rnetd.log")).unwrap_or_default();
    wait_until(
        "h2 to re-list after the compaction",
        Duration::from_secs(30),
        || log().contains("compacted; listing again"),
    );
    no_drift(&lab, &["h1", "h2"]);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_hand_deleted_fdb_entry_is_reported_and_restored() {
    let lab = Lab::up(2, FAST);
    lab.host_rnet_ok("h1", &["create", "fdb", "--subnet", "10.85.0.0/24"]);
    let (a, b) = (Workload::new("a"), Workload::new("b"));
    attach(&lab, "h1", "fdb", &a, &[]);
    let ipb = attach(&lab, "h2", "fdb", &b, &[]);
    wait_ping(&a, &ipb, Duration::from_secs(5));
    let mac = lab
        .host_rnet_json("h2", &["endpoints", "fdb"])
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["host"] == "h2")
        .unwrap()["mac"]
        .as_str()
        .unwrap()
        .to_string();
    let sandbox = common::sandbox_in(&lab.dir().join("h1/run"), "fdb");
    let del = Command::new("nsenter")
        .arg(format!("--net={}", sandbox.display()))
        .args([
            "--",
            "bridge",
            "fdb",
            "del",
            &mac,
            "dev",
            "vx-fdb",
            "dst",
            "198.18.0.12",
            "self",
        ])
        .status()
        .unwrap();
    assert!(del.success());
    let out = lab.host_rnet("h1", &["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains(&format!("missing: fdb {mac} -> 198.18.0.12")),
        "{text}"
    );
    no_drift(&lab, &["h1"]); // restored by the daemon's own resync, nobody asked
    wait_ping(&a, &ipb, Duration::from_secs(5));
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn three_hosts_attaching_at_once_get_distinct_addresses() {
    let lab = Lab::up(3, FAST);
    lab.host_rnet_ok("h1", &["create", "many", "--subnet", "10.86.0.0/24"]);
    lab.host_rnet_ok("h1", &["create", "few", "--subnet", "10.87.0.0/29"]);
    let ws: Vec<Workload> = (0..150).map(|i| Workload::new(&format!("m{i}"))).collect();
    let results: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = ws
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let lab = &lab;
                s.spawn(move || {
                    lab.host_rnet(
                        &format!("h{}", i % 3 + 1),
                        &[
                            "-o",
                            "json",
                            "attach",
                            "many",
                            "--netns",
                            w.path().to_str().unwrap(),
                        ],
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips: Vec<String> = results
        .iter()
        .map(|o| {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            serde_json::from_slice::<Value>(&o.stdout).unwrap()["ip"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 150, "150 distinct addresses");
    // /29: 5 endpoint addresses for 9 requests from 3 hosts.
    let few: Vec<Workload> = (0..9).map(|i| Workload::new(&format!("f{i}"))).collect();
    let outs: Vec<Output> = std::thread::scope(|s| {
        let hs: Vec<_> = few
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let lab = &lab;
                s.spawn(move || {
                    lab.host_rnet(
                        &format!("h{}", i % 3 + 1),
                        &["attach", "few", "--netns", w.path().to_str().unwrap()],
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 5);
    for o in outs.iter().filter(|o| !o.status.success()) {
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains("no free address") && e.contains("5 of 5"), "{e}");
    }
}
