//! The single-host overlay end to end: rnetd inside a test-made host namespace with the
//! embedded store, driven through the `rnet` CLI, checked with real pings and the kernel's
//! own view (`ip`).
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{in_netns_ok, links_in, mounts_under, wait_until, Host, Workload};
use nix::sys::signal::Signal;
use serde_json::Value;

fn ip_of(ep: &Value) -> String {
    ep["ip"]
        .as_str()
        .expect("ip")
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

fn attach(h: &Host, net: &str, w: &Workload, id: &str) -> Value {
    h.rnet_json(&[
        "attach",
        net,
        "--netns",
        w.path().to_str().unwrap(),
        "--id",
        id,
    ])
}

/// The one-line error of a failed CLI call; asserts the call failed.
fn fails(h: &Host, args: &[&str]) -> String {
    let out = h.rnet(args);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(
        !out.status.success(),
        "`rnet {}` should fail but succeeded: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "error should be one line: {stderr:?}"
    );
    stderr
}

fn started_host(tag: &str) -> Host {
    let mut h = Host::new(tag);
    h.start_daemon();
    h
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn workloads_on_one_network_talk_and_networks_are_isolated() {
    let h = started_host("iso");
    h.rnet_ok(&["create", "blue", "--subnet", "10.20.0.0/24"]);
    h.rnet_ok(&[
        "create",
        "red",
        "--subnet",
        "10.20.0.0/24",
        "--allow-overlap",
    ]);
    let (a, b, c) = (Workload::new("a"), Workload::new("b"), Workload::new("c"));
    let ea = attach(&h, "blue", &a, "a");
    let eb = attach(&h, "blue", &b, "b");
    let ec = attach(&h, "red", &c, "c");
    assert_eq!(ea["network"], "blue");
    assert_eq!(ea["ip"], "10.20.0.2/24");
    assert_eq!(ea["mac"], "02:52:0a:14:00:02");
    assert_eq!(ea["ifname"], "eth0");
    assert_eq!(ea["netns"], a.path().to_str().unwrap());
    assert_eq!(
        ec["ip"], "10.20.0.2/24",
        "overlapping networks allocate independently"
    );
    assert!(a.ping(&ip_of(&eb), 2), "a -> b on the same network");
    assert!(b.ping(&ip_of(&ea), 2), "b -> a");
    // c has a's address on another network: its ping must stay inside red's sandbox.
    assert!(!c.ping("10.20.0.3", 2), "red must not reach blue's b");
    let link = a.exec(&["ip", "-o", "link", "show", "eth0"]);
    assert!(
        String::from_utf8_lossy(&link.stdout).contains(" mtu 1450 "),
        "underlay 1500 - 50: {link:?}"
    );
    // The sandbox speaks no IPv6: no end of a veth pair, nor the bridge, announces itself to
    // the workloads and the other hosts.
    let sandbox = common::sandbox_in(&h.run_dir(), "blue");
    let v6 = in_netns_ok(&sandbox, &["ip", "-6", "-o", "addr", "show"]);
    assert_eq!(v6.trim(), "", "IPv6 addresses in the sandbox");
    let listed = h.rnet_json(&["endpoints", "blue"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    h.rnet_ok(&["detach", "blue", "--id", "b"]);
    assert!(
        !b.links().contains(&"eth0".to_string()),
        "detach removes the workload's eth0"
    );
    assert!(!a.ping("10.20.0.3", 1));
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn attach_by_pid_and_detach_by_pid_and_netns() {
    let h = started_host("pid");
    h.rnet_ok(&["create", "net1", "--subnet", "10.21.0.0/24"]);
    let mut sleeper = Command::new("unshare")
        .args(["--net", "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn unshare");
    let pid = sleeper.id().to_string();
    // unshare execs sleep after creating the namespace; wait until the pid's netns differs.
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    wait_until("sleeper in its own netns", Duration::from_secs(5), || {
        std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .map(|l| l != own)
            .unwrap_or(false)
    });
    let ep = h.rnet_json(&["attach", "net1", "--pid", &pid, "--ifname", "net0"]);
    assert_eq!(ep["ifname"], "net0");
    let w = Workload::new("peer");
    let ew = attach(&h, "net1", &w, "peer");
    assert!(
        w.ping(&ip_of(&ep), 2),
        "workload reaches the pid-attached process"
    );
    h.rnet_ok(&["detach", "net1", "--pid", &pid]);
    h.rnet_ok(&["detach", "net1", "--netns", w.path().to_str().unwrap()]);
    assert_eq!(h.rnet_json(&["endpoints", "net1"]), serde_json::json!([]));
    assert!(!w.links().contains(&"eth0".to_string()));
    let _ = ew;
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn run_passes_exit_codes_and_cleans_up() {
    let h = started_host("run");
    h.rnet_ok(&["create", "runnet", "--subnet", "10.22.0.0/24"]);
    let w = Workload::new("target");
    let ew = attach(&h, "runnet", &w, "target");
    let target = ip_of(&ew);
    let script =
        format!("test \"$(hostname)\" = web1 && ping -c1 -W2 {target} >/dev/null && exit 7");
    let out = h.rnet(&[
        "run",
        "runnet",
        "--hostname",
        "web1",
        "--name",
        "job",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "workload's exit code passes through: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = h.rnet(&["run", "runnet", "--", "/nonexistent/binary"]);
    assert_eq!(out.status.code(), Some(127));
    // stdout passes through
    let out = h.rnet(&[
        "run",
        "runnet",
        "--",
        "sh",
        "-c",
        "cat /sys/class/net/eth0/address",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("02:52:0a:16:00:"),
        "{out:?}"
    );
    // A workload killed by a signal: rnet reports 128+signal and still detaches.
    let out = h.rnet(&["run", "runnet", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(137));
    let eps = h.rnet_json(&["endpoints", "runnet"]);
    assert_eq!(
        eps.as_array().unwrap().len(),
        1,
        "only the attached target remains: {eps}"
    );
    // A failed attach (address in use) never runs the workload.
    let out = h.rnet(&[
        "run", "runnet", "--ip", &target, "--", "sh", "-c", "echo ran",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ran"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in use"));
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn kill_9_and_restart_lose_no_ping() {
    let mut h = started_host("k9");
    h.rnet_ok(&["create", "k9", "--subnet", "10.23.0.0/24"]);
    let (a, b) = (Workload::new("a"), Workload::new("b"));
    attach(&h, "k9", &a, "a");
    let eb = attach(&h, "k9", &b, "b");
    let before = h.rnet_json(&["endpoints"]);
    // 5 pings a second across the kill and restart.
    let pinger = Command::new("nsenter")
        .arg(format!("--net={}", a.path().display()))
        .args([
            "--",
            "ping",
            "-n",
            "-q",
            "-i",
            "0.2",
            "-c",
            "25",
            "-W",
            "1",
            &ip_of(&eb),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        "pings answered before the kill",
        Duration::from_secs(5),
        || a.snmp("Icmp", "InEchoReps") > 0,
    );
    h.kill_daemon(Signal::SIGKILL);
    // The daemon stays down for a while (what is tested: the kernel forwards without it).
    std::thread::sleep(Duration::from_millis(1000));
    h.start_daemon();
    let out = pinger.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 0% packet loss"),
        "pings lost across kill -9 and restart:\n{text}"
    );
    assert_eq!(
        h.rnet_json(&["endpoints"]),
        before,
        "same endpoints after restart"
    );
    let status = h.rnet_json(&["status"]);
    assert_eq!(
        status["last_reconcile_changes"], 0,
        "restart reconcile changed nothing: {status}"
    );
    h.rnet_ok(&["doctor"]);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn doctor_reports_and_repairs_drift() {
    let h = started_host("doc");
    h.rnet_ok(&["create", "doc", "--subnet", "10.24.0.0/24"]);
    let (a, b) = (Workload::new("a"), Workload::new("b"));
    attach(&h, "doc", &a, "a");
    let eb = attach(&h, "doc", &b, "b");
    let sandbox = common::sandbox_in(&h.run_dir(), "doc");
    // Break things by hand: learning on the VXLAN device, a stray veth.
    in_netns_ok(
        &sandbox,
        &["ip", "link", "set", "vx-doc", "type", "vxlan", "learning"],
    );
    in_netns_ok(
        &sandbox,
        &[
            "ip", "link", "add", "vestray", "type", "veth", "peer", "name", "vestray1",
        ],
    );
    let out = h.rnet(&["doctor"]);
    assert_eq!(out.status.code(), Some(1), "drift means exit 1");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("stray: veth vestray"), "{text}");
    assert!(text.contains("wrong: vxlan vx-doc"), "{text}");
    h.rnet_ok(&["doctor", "--repair"]);
    h.rnet_ok(&["doctor"]);
    assert!(a.ping(&ip_of(&eb), 1));
}

/// The links of namespace `ns` enslaved to its bridge.
fn bridge_ports(ns: &std::path::Path) -> Vec<String> {
    common::parse_ip_o_link(&in_netns_ok(
        ns,
        &["ip", "-o", "link", "show", "master", "br0"],
    ))
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn an_attach_replaces_a_stale_veth_and_follows_a_rebuilt_bridge() {
    let h = started_host("stv");
    h.rnet_ok(&["create", "stv", "--subnet", "10.28.0.0/24"]);
    let (a, b) = (Workload::new("a"), Workload::new("b"));
    // The first attach notes the bridge's index.
    attach(&h, "stv", &a, "a");
    let sandbox = common::sandbox_in(&h.run_dir(), "stv");
    // A leftover veth under the name b's address will take, and a bridge rebuilt by hand
    // (a new index) behind the daemon's back.
    let stale = rnet::dataplane::spec::host_ifname("10.28.0.9".parse().unwrap());
    in_netns_ok(
        &sandbox,
        &[
            "ip", "link", "add", &stale, "type", "veth", "peer", "name", "stale1",
        ],
    );
    in_netns_ok(&sandbox, &["ip", "link", "del", "br0"]);
    in_netns_ok(&sandbox, &["ip", "link", "add", "br0", "type", "bridge"]);
    in_netns_ok(&sandbox, &["ip", "link", "set", "br0", "up"]);
    let eb = h.rnet_json(&[
        "attach",
        "stv",
        "--netns",
        b.path().to_str().unwrap(),
        "--id",
        "b",
        "--ip",
        "10.28.0.9",
    ]);
    assert_eq!(ip_of(&eb), "10.28.0.9");
    assert_eq!(
        bridge_ports(&sandbox),
        vec![stale.clone()],
        "b's veth (the stale one's name) is a port of the new bridge"
    );
    let links = links_in(&sandbox);
    assert!(!links.contains(&"stale1".to_string()), "{links:?}");
    assert_eq!(
        b.ipv4_addrs("eth0"),
        vec!["10.28.0.9".parse::<std::net::Ipv4Addr>().unwrap()]
    );
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn bad_input_is_refused_and_changes_nothing() {
    let h = started_host("bad");
    h.rnet_ok(&["create", "good", "--subnet", "10.25.0.0/24", "--vni", "500"]);
    h.rnet_ok(&["create", "tiny", "--subnet", "10.26.0.0/30"]);
    let w = Workload::new("w");
    attach(&h, "tiny", &w, "only");
    let w3 = Workload::new("w3");
    attach(&h, "good", &w3, "w3");
    let snapshot = |h: &Host| {
        (
            h.rnet_json(&["ls"]),
            h.rnet_json(&["endpoints"]),
            links_in(&h.netns_path()),
            links_in(&common::sandbox_in(&h.run_dir(), "good")),
            links_in(&common::sandbox_in(&h.run_dir(), "tiny")),
        )
    };
    let before = snapshot(&h);
    let w2 = Workload::new("w2");
    let w2p = w2.path().to_str().unwrap().to_string();
    let wp = w.path().to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["create", "x", "--subnet", "10.27.0.0/33"],
            "not an IPv4 CIDR",
        ),
        (
            vec!["create", "x", "--subnet", "banana"],
            "not an IPv4 CIDR",
        ),
        (
            vec![
                "create",
                "x",
                "--subnet",
                "10.27.0.0/24",
                "--gateway",
                "10.28.0.1",
            ],
            "not a host address of subnet",
        ),
        (
            vec!["create", "x", "--subnet", "10.25.0.0/16"],
            "overlaps subnet 10.25.0.0/24 of network good",
        ),
        (
            vec!["create", "good", "--subnet", "10.29.0.0/24"],
            "already exists with other options",
        ),
        (
            vec!["create", "x", "--subnet", "10.27.0.0/24", "--vni", "500"],
            "VNI 500 is already used by network good",
        ),
        (
            vec![
                "create",
                "x",
                "--subnet",
                "10.27.0.0/24",
                "--vni",
                "16777216",
            ],
            "out of range",
        ),
        (
            vec!["create", "waytoolongname", "--subnet", "10.27.0.0/24"],
            "at most 12",
        ),
        (
            vec!["create", "bad/name", "--subnet", "10.27.0.0/24"],
            "contains '/'",
        ),
        (
            vec!["attach", "good", "--netns", "/run/netns/rnt-does-not-exist"],
            "does not exist",
        ),
        (
            vec!["attach", "good", "--netns", "/etc/hostname"],
            "is not a network namespace",
        ),
        (
            vec!["attach", "good", "--pid", "4000000"],
            "process 4000000 does not exist",
        ),
        (
            vec!["attach", "good", "--netns", &w2p, "--ip", "10.99.0.2"],
            "outside subnet",
        ),
        (
            vec!["attach", "good", "--netns", &w2p, "--ip", "10.25.0.1"],
            "is the gateway",
        ),
        (
            vec!["attach", "tiny", "--netns", &w2p, "--ip", "10.26.0.2"],
            "already in use",
        ),
        (vec!["attach", "tiny", "--netns", &w2p], "no free address"),
        (
            vec![
                "attach",
                "good",
                "--netns",
                &w2p,
                "--ifname",
                "averyveryverylongifname",
            ],
            "at most 15",
        ),
        (
            vec!["attach", "nonet", "--netns", &w2p],
            "network nonet does not exist",
        ),
        (
            vec!["attach", "good", "--netns", &wp],
            "interface eth0 already exists",
        ),
        (vec!["rm", "tiny"], "still has 1 endpoint"),
        (
            vec!["detach", "good", "--id", "nobody"],
            "no endpoint with id nobody",
        ),
    ];
    for (args, want) in &cases {
        let err = fails(&h, args);
        assert!(
            err.contains(want),
            "`rnet {}`: expected {want:?} in {err:?}",
            args.join(" ")
        );
    }
    // Idempotent: the same network with the same options.
    h.rnet_ok(&["create", "good", "--subnet", "10.25.0.0/24", "--vni", "500"]);
    h.rnet_ok(&["create", "good", "--subnet", "10.25.0.0/24"]);
    assert_eq!(snapshot(&h), before, "failed requests changed state");
    assert_eq!(
        w2.links(),
        vec!["lo".to_string()],
        "no half-built interface in the workload"
    );
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn api_rejects_malformed_and_huge_bodies_and_cli_names_a_dead_daemon() {
    let h = started_host("api");
    let client = rnet::api::Client::new(h.socket());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, body) = rt
        .block_on(client.raw(
            hyper::Method::POST,
            "/v1/networks",
            Some(b"{\"name\": \"x\", ".to_vec()),
        ))
        .unwrap();
    assert_eq!(status.as_u16(), 400);
    assert!(
        String::from_utf8_lossy(&body).contains("malformed JSON request body"),
        "{body:?}"
    );
    let (status, body) = rt
        .block_on(client.raw(
            hyper::Method::POST,
            "/v1/attach",
            Some(br#"{"network":"x","bogus":1}"#.to_vec()),
        ))
        .unwrap();
    assert_eq!(status.as_u16(), 400, "{body:?}");
    // A 3 MiB body: the daemon answers once the 1 MiB limit is crossed and stops reading, so
    // write from a thread (its writes may fail once the daemon hangs up) and read the answer,
    // which stays readable on a unix socket after the peer closed.
    let answer = huge_post(&h.socket(), "/v1/networks", 3 * 1024 * 1024);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("larger than"), "{answer}");
    let (status, _) = rt
        .block_on(client.raw(hyper::Method::GET, "/v2/whatever", None))
        .unwrap();
    assert_eq!(status.as_u16(), 404);
    assert_eq!(h.rnet_json(&["ls"]), serde_json::json!([]));
    // A socket nobody serves.
    let out = Command::new(env!("CARGO_BIN_EXE_rnet"))
        .args(["--socket", "/tmp/rnet-no-such.sock", "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rnetd is not running") && err.contains("start it"),
        "{err}"
    );
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn rm_and_stop_leave_nothing_behind() {
    let mut h = started_host("clean");
    let host_links_before = links_in(&h.netns_path());
    h.rnet_ok(&["create", "c1", "--subnet", "10.30.0.0/24"]);
    h.rnet_ok(&["create", "c2", "--subnet", "10.31.0.0/24"]);
    let (a, b) = (Workload::new("a"), Workload::new("b"));
    attach(&h, "c1", &a, "a");
    attach(&h, "c2", &b, "b");
    let mounts = mounts_under(&h.run_dir());
    let sandboxes = mounts
        .iter()
        .filter(|m| {
            m.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("sb-"))
        })
        .count();
    assert_eq!(sandboxes, 2, "one sandbox per network: {mounts:?}");
    assert_eq!(
        mounts.len(),
        3,
        "and the host's tunnel namespace: {mounts:?}"
    );
    h.rnet_ok(&["rm", "c1", "--force"]);
    h.rnet_ok(&["detach", "c2", "--id", "b"]);
    h.rnet_ok(&["rm", "c2"]);
    let status = h.kill_daemon(Signal::SIGTERM);
    assert!(status.success(), "clean shutdown on SIGTERM: {status:?}");
    assert_eq!(mounts_under(&h.run_dir()), Vec::<std::path::PathBuf>::new());
    let leftover: Vec<_> = std::fs::read_dir(h.run_dir().join("netns"))
        .unwrap()
        .collect();
    assert!(leftover.is_empty(), "no namespace files left: {leftover:?}");
    assert_eq!(
        links_in(&h.netns_path()),
        host_links_before,
        "no links left in the host namespace"
    );
    assert_eq!(a.links(), vec!["lo".to_string()]);
    assert_eq!(b.links(), vec!["lo".to_string()]);
    assert!(!h.socket().exists(), "socket removed on shutdown");
}

/// POST `len` bytes to `path` on the API socket over a plain unix stream; the raw answer.
fn huge_post(socket: &std::path::Path, path: &str, len: usize) -> String {
    use std::io::{Read, Write};
    let stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    let mut writer = stream.try_clone().unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nhost: rnetd\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n");
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(&vec![b' '; len]);
    });
    let mut answer = Vec::new();
    let mut reader = stream;
    reader
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 4096];
    // Headers and the small JSON body arrive together; stop once the body is in.
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&answer).contains("\"}") {
            break;
        }
    }
    let _ = reader.shutdown(std::net::Shutdown::Both);
    let _ = sender.join();
    String::from_utf8_lossy(&answer).into_owned()
}
