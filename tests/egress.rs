//! Egress and published ports on `rnet lab` hosts, against a lab "internet": a namespace on
//! the lab switch holding 198.19.0.1 (outside the hosts' underlay /24), which only the host
//! namespaces are given a route to. Its listeners answer each connection with the source
//! address they saw, so a test can tell a masqueraded packet from one that leaked through.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use common::lab::Lab;
use common::{wait_until, ChildGuard, Workload};

/// The lab internet's address (on its `lo`) and its address on the lab switch.
const INTERNET: &str = "198.19.0.1";
const INTERNET_ON_SWITCH: &str = "198.18.0.250";

/// Run `f` on a fresh thread inside the namespace at `netns` (sockets made there stay there).
fn in_ns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let netns = netns.to_path_buf();
    thread::spawn(move || {
        let ns = std::fs::File::open(&netns).expect("open netns");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lab internet: a namespace plugged into the switch, echo listeners on 198.19.0.1
/// (TCP 7000, UDP 7001) answering with the peer's address, and a route to it on every host.
struct Internet {
    ns: Workload,
}

impl Internet {
    fn new(lab: &Lab, hosts: &[&str]) -> Internet {
        let ns = Workload::new("internet");
        let port = format!("inet{}", std::process::id() % 100_000);
        let switch = format!("--net={}", lab.switch_netns().display());
        run(&[
            "nsenter",
            &switch,
            "--",
            "ip",
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]);
        run(&[
            "nsenter", &switch, "--", "ip", "link", "set", &port, "master", "br0", "up",
        ]);
        let n = ns.name();
        run(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            &format!("{INTERNET_ON_SWITCH}/24"),
            "dev",
            "eth0",
        ]);
        run(&["ip", "-n", n, "link", "set", "eth0", "up"]);
        run(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            &format!("{INTERNET}/32"),
            "dev",
            "lo",
        ]);
        for h in hosts {
            lab.exec_ok(
                h,
                &[
                    "ip",
                    "route",
                    "add",
                    "198.19.0.0/24",
                    "via",
                    INTERNET_ON_SWITCH,
                ],
            );
        }
        let path = ns.path();
        let tcp = in_ns(&path, || {
            TcpListener::bind((INTERNET, 7000)).expect("bind tcp")
        });
        thread::spawn(move || {
            for mut c in tcp.incoming().flatten() {
                let peer = c
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let _ = c.write_all(format!("{peer}\n").as_bytes());
            }
        });
        let udp = in_ns(&path, || {
            UdpSocket::bind((INTERNET, 7001)).expect("bind udp")
        });
        thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((_, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(from.ip().to_string().as_bytes(), from);
            }
        });
        Internet { ns }
    }

    fn path(&self) -> PathBuf {
        self.ns.path()
    }
}

/// From the namespace at `netns`: connect to `addr` and read what it says (None: no answer).
fn tcp_ask(netns: &Path, addr: &str) -> Option<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    in_ns(netns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text.trim().to_string())
    })
}

/// From the namespace at `netns`: one datagram to the UDP echo, its answer (None: none).
fn udp_ask(netns: &Path) -> Option<String> {
    in_ns(netns, || {
        let s = UdpSocket::bind("0.0.0.0:0").ok()?;
        s.set_read_timeout(Some(Duration::from_millis(700))).ok()?;
        s.send_to(b"who", (INTERNET, 7001)).ok()?;
        let mut buf = [0u8; 64];
        let (n, _) = s.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

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

/// The host's rnet table as `nft` lists it (None: there is none).
fn rnet_table(lab: &Lab, host: &str) -> Option<String> {
    let out = lab.exec(host, &["nft", "list", "table", "ip", "rnet"]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn uplinks(lab: &Lab, host: &str) -> Vec<String> {
    lab.exec_ok(host, &["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .filter(|n| n.starts_with("rnu"))
        .collect()
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn workloads_reach_the_internet_masqueraded_and_no_egress_reaches_nothing() {
    let lab = Lab::up(2, &[]);
    let hosts = ["h1", "h2"];
    let internet = Internet::new(&lab, &hosts);
    lab.host_rnet_ok("h1", &["create", "out", "--subnet", "10.91.0.0/24"]);
    lab.host_rnet_ok(
        "h1",
        &["create", "shut", "--subnet", "10.92.0.0/24", "--no-egress"],
    );
    lab.host_rnet_ok("h1", &["create", "other", "--subnet", "10.93.0.0/24"]);
    let ws: Vec<Workload> = hosts
        .iter()
        .map(|h| Workload::new(&format!("o{h}")))
        .collect();
    for (i, (h, w)) in hosts.iter().zip(&ws).enumerate() {
        attach(&lab, h, "out", w, &[]);
        let underlay = format!("198.18.0.{}", 11 + i);
        // The listener sees the host's underlay address: masqueraded, not the overlay's.
        assert_eq!(
            tcp_ask(&w.path(), &format!("{INTERNET}:7000")).as_deref(),
            Some(underlay.as_str()),
            "{h} tcp"
        );
        assert_eq!(
            udp_ask(&w.path()).as_deref(),
            Some(underlay.as_str()),
            "{h} udp"
        );
    }
    let table = rnet_table(&lab, "h1").expect("h1 has an rnet table");
    assert!(
        table.contains("masquerade") && table.contains("10.91.0.0/24"),
        "{table}"
    );

    // No egress: no uplink for the network, nothing reached.
    let shut = Workload::new("shut");
    attach(&lab, "h1", "shut", &shut, &[]);
    assert_eq!(tcp_ask(&shut.path(), &format!("{INTERNET}:7000")), None);
    assert_eq!(udp_ask(&shut.path()), None);
    assert!(!rnet_table(&lab, "h1").unwrap().contains("10.92.0.0/24"));
    assert_eq!(uplinks(&lab, "h1").len(), 1, "{:?}", uplinks(&lab, "h1"));

    // Two egress networks on one host never reach each other through it.
    let other = Workload::new("other");
    let other_ip = attach(&lab, "h1", "other", &other, &[]);
    assert_eq!(uplinks(&lab, "h1").len(), 2);
    assert!(
        !ws[0].ping(&other_ip, 2),
        "out reached other through the host"
    );
    assert!(udp_ask(&other.path()).is_some());

    // doctor: a table deleted by hand is drift, and --repair restores it.
    lab.exec_ok("h1", &["nft", "delete", "table", "ip", "rnet"]);
    let out = lab.host_rnet("h1", &["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("nft table ip rnet"),
        "{text}"
    );
    lab.host_rnet_ok("h1", &["doctor", "--repair"]);
    lab.host_rnet_ok("h1", &["doctor"]);
    assert!(udp_ask(&ws[0].path()).is_some());

    // Removing the networks leaves no rule and no uplink behind.
    for net in ["out", "shut", "other"] {
        lab.host_rnet_ok("h1", &["rm", net, "--force"]);
    }
    for h in hosts {
        wait_until(&format!("{h} clean"), Duration::from_secs(5), || {
            rnet_table(&lab, h).is_none() && uplinks(&lab, h).is_empty()
        });
    }
    drop(internet);
}

/// `rnet run -p HOST:PORT NET -- sh -c "echo TEXT | busybox nc -l -p PORT"` against `host`.
fn run_published(
    lab: &Lab,
    host: &str,
    net: &str,
    publish: &str,
    port: &str,
    text: &str,
) -> ChildGuard {
    let sock = lab.dir().join(host).join("rnetd.sock");
    let script = format!("echo {text} | busybox nc -l -p {port}");
    let child = Command::new(env!("CARGO_BIN_EXE_rnet"))
        .arg("--socket")
        .arg(sock)
        .args([
            "run", net, "--name", "web", "-p", publish, "--", "sh", "-c", &script,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rnet run");
    ChildGuard(child)
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_published_port_reaches_the_workload_refuses_clashes_and_goes_with_it() {
    let lab = Lab::up(1, &[]);
    let internet = Internet::new(&lab, &["h1"]);
    lab.host_rnet_ok("h1", &["create", "web", "--subnet", "10.94.0.0/24"]);
    lab.host_rnet_ok(
        "h1",
        &["create", "inner", "--subnet", "10.95.0.0/24", "--internal"],
    );
    let mut web = run_published(&lab, "h1", "web", "8080:80", "80", "hello-from-web");
    wait_until("web attached", Duration::from_secs(10), || {
        rnet_table(&lab, "h1").is_some_and(|t| t.contains("dport 8080"))
    });
    let before = rnet_table(&lab, "h1").unwrap();

    // Hostile: the same host port again is refused by name and changes nothing.
    let w = Workload::new("clash");
    let path = w.path().display().to_string();
    let out = lab.host_rnet("h1", &["attach", "web", "--netns", &path, "-p", "8080:81"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("8080/tcp is already published by endpoint web"),
        "{err}"
    );
    let out = lab.host_rnet(
        "h1",
        &["attach", "inner", "--netns", &path, "-p", "9090:90"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("internal"), "{err}");
    for bad in ["0:80", "70000:80", "80:80/sctp"] {
        let out = lab.host_rnet("h1", &["attach", "web", "--netns", &path, "-p", bad]);
        assert!(!out.status.success(), "-p {bad} accepted");
    }
    // The daemon checks too, not only the CLI's parser.
    let body = format!(
        r#"{{"network":"web","netns":"{path}","ports":[{{"host_port":70000,"container_port":80}}]}}"#
    );
    let sock = lab.dir().join("h1/rnetd.sock");
    let out = Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(&sock)
        .args([
            "-H",
            "content-type: application/json",
            "-d",
            &body,
            "http://rnet/v1/attach",
        ])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.contains("out of range"), "{answer}");
    assert_eq!(
        lab.host_rnet_json("h1", &["endpoints", "web"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(rnet_table(&lab, "h1").unwrap(), before);
    assert!(w.links().iter().all(|l| l == "lo"), "{:?}", w.links());

    // From the internet to the host's address: the workload answers.
    let mut said = None;
    wait_until("published port answers", Duration::from_secs(10), || {
        said = tcp_ask(&internet.path(), "198.18.0.11:8080").filter(|s| !s.is_empty());
        said.is_some()
    });
    assert_eq!(said.as_deref(), Some("hello-from-web"));
    // The workload (nc) exits after one connection, rnet run detaches: the rule is gone.
    wait_until("rnet run exits", Duration::from_secs(10), || {
        web.0.try_wait().unwrap().is_some()
    });
    wait_until("rule gone", Duration::from_secs(5), || {
        rnet_table(&lab, "h1").is_none_or(|t| !t.contains("8080"))
    });
    // The uplink lives as long as the network's sandbox, so the next workload does not
    // wait for it to be built again.
    assert_eq!(uplinks(&lab, "h1").len(), 1, "{:?}", uplinks(&lab, "h1"));
}

/// A TCP listener inside `netns` on port `port` answering every connection with `text`.
fn serve_in(netns: &Path, port: u16, text: &'static str) {
    let l = in_ns(netns, move || {
        TcpListener::bind(("0.0.0.0", port)).expect("bind")
    });
    thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(format!("{text}\n").as_bytes());
        }
    });
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn cni_port_mappings_from_runtime_config_are_published_and_released() {
    use common::cni::Plugin;
    use serde_json::json;
    let mut h = common::Host::new("cniport");
    h.start_daemon();
    h.rnet_ok(&["create", "cnip", "--subnet", "10.96.0.0/24"]);
    let cni = Plugin::rnet(&h.socket());
    let conf = |maps: serde_json::Value| {
        json!({"cniVersion": "1.1.0", "name": "cnip", "type": "rnet-cni",
               "runtimeConfig": {"portMappings": maps}})
    };
    let w = Workload::new("cniweb");
    let ok = conf(json!([{"hostPort": 8081, "containerPort": 80, "protocol": "tcp"}]));
    cni.add(&ok, "c1", &w.path(), "eth0", "").ok();
    serve_in(&w.path(), 80, "cni-web");
    // From the host itself to its own address: the output chain's DNAT.
    let target = format!("{}:8081", h.underlay());
    assert_eq!(
        tcp_ask(&h.netns_path(), &target).as_deref(),
        Some("cni-web")
    );

    // Hostile: the same host port for another container, and out-of-range ports.
    let other = Workload::new("cniother");
    let clash = conf(json!([{"hostPort": 8081, "containerPort": 81}]));
    let out = cni.add(&clash, "c2", &other.path(), "eth0", "");
    assert_ne!(out.status, 0);
    assert!(
        out.stdout.contains("already published by endpoint"),
        "{out:?}"
    );
    let msg = cni
        .add(
            &conf(json!([{"hostPort": 70000, "containerPort": 80}])),
            "c3",
            &other.path(),
            "eth0",
            "",
        )
        .err(7);
    assert!(msg.contains("out of range"), "{msg}");
    assert!(
        other.links().iter().all(|l| l == "lo"),
        "{:?}",
        other.links()
    );

    cni.del(&ok, "c1", Some(&w.path()), "eth0").ok();
    assert_eq!(tcp_ask(&h.netns_path(), &target), None);
    let netns = format!("--net={}", h.netns_path().display());
    let table = || {
        let out = Command::new("nsenter")
            .args([netns.as_str(), "--", "nft", "list", "table", "ip", "rnet"])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // The published port is gone with its container; the network's masquerade stays with
    // its sandbox until the network is removed.
    let left = table().expect("the table stays while the sandbox does");
    assert!(
        !left.contains("8081") && left.contains("10.96.0.0/24"),
        "{left}"
    );
    h.rnet_ok(&["rm", "cnip", "--force"]);
    wait_until("no rnet table", Duration::from_secs(5), || {
        table().is_none()
    });
}
