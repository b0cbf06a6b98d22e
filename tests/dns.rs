//! Cluster DNS through real sockets: names of workloads on other lab hosts resolve at the
//! gateway inside the sandbox as soon as their attach returns, go NXDOMAIN when they leave,
//! garbage is dropped and counted while valid queries still answer, other names are forwarded
//! to an upstream the test runs, and bad names are refused before anything is allocated.
mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::lab::Lab;
use common::{udp_socket_in, wait_until, Host, Workload};
use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;

static IDS: AtomicU16 = AtomicU16::new(1);

fn query(name: &str, rtype: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(IDS.fetch_add(1, Ordering::Relaxed))
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m.to_vec().unwrap()
}

/// Ask `server`:53 over UDP; the answer, or None when none came within `wait`.
fn ask(sock: &UdpSocket, server: Ipv4Addr, name: &str, wait: Duration) -> Option<Message> {
    let q = query(name, RecordType::A);
    let id = u16::from_be_bytes([q[0], q[1]]);
    sock.send_to(&q, (server, 53)).unwrap();
    let end = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        let left = end.checked_duration_since(Instant::now())?;
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let Ok(n) = sock.recv(&mut buf) else {
            return None;
        };
        match Message::from_vec(&buf[..n]) {
            Ok(m) if m.id() == id => return Some(m),
            _ => continue, // a late answer to an earlier try
        }
    }
}

fn addresses(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers()
        .iter()
        .filter_map(|r| r.data().as_a().map(|a| a.0.to_string()))
        .collect();
    v.sort();
    v
}

/// The addresses `name` resolves to, polled until `want` or `within` passes; returns the
/// time it took.
fn resolves_to(
    sock: &UdpSocket,
    server: Ipv4Addr,
    name: &str,
    want: &[&str],
    within: Duration,
) -> Duration {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < within {
        if let Some(m) = ask(sock, server, name, Duration::from_millis(50)) {
            if m.response_code() == ResponseCode::NoError && addresses(&m) == want {
                return start.elapsed();
            }
            last = Some((m.response_code(), addresses(&m)));
        }
    }
    panic!("{name} did not resolve to {want:?} within {within:?}; last answer {last:?}");
}

fn nxdomain_within(sock: &UdpSocket, server: Ipv4Addr, name: &str, within: Duration) {
    wait_until(&format!("{name} is NXDOMAIN"), within, || {
        ask(sock, server, name, Duration::from_millis(200))
            .is_some_and(|m| m.response_code() == ResponseCode::NXDomain && m.answers().is_empty())
    });
}

/// No answer at all from the server (it is down).
fn no_answer(sock: &UdpSocket, server: Ipv4Addr) {
    assert!(
        ask(sock, server, "alpha", Duration::from_millis(300)).is_none(),
        "the DNS server still answers with its daemon dead"
    );
}

fn ip_of(ep: &Value) -> String {
    ep["ip"].as_str().unwrap().split('/').next().unwrap().into()
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_name_on_h3_resolves_on_h1_at_once_is_pinged_and_goes_nxdomain_when_removed() {
    let lab = Lab::up(3, &["--resync", "2"]);
    let net = lab.host_rnet_json("h1", &["create", "blue", "--subnet", "10.81.0.0/24"]);
    let gw: Ipv4Addr = net["gateway"].as_str().unwrap().parse().unwrap();
    // The asking workload on h1: attaching it builds h1's sandbox and its DNS server.
    let q = Workload::new("q");
    lab.attach("h1", "blue", &q.path());
    let sock = udp_socket_in(&q.path(), "0.0.0.0:0");
    nxdomain_within(&sock, gw, "web.blue.", Duration::from_secs(5));

    let web3 = Workload::new("web3");
    let path3 = web3.path().display().to_string();
    let args = [
        "attach", "blue", "--netns", &path3, "--name", "web", "--alias", "www",
    ];
    let ep3 = lab.host_rnet_json("h3", &args);
    // Measured from the attach command's return on h3 to the answer on h1.
    let took = resolves_to(
        &sock,
        gw,
        "web.blue.",
        &[&ip_of(&ep3)],
        Duration::from_secs(3),
    );
    eprintln!("web resolved on h1 {took:?} after its attach on h3 returned");
    assert!(
        took < Duration::from_millis(100),
        "web resolved on h1 {took:?} after its attach on h3 returned"
    );
    resolves_to(&sock, gw, "www", &[&ip_of(&ep3)], Duration::from_secs(1));

    // A workload launched by `rnet run` on h1 resolves and pings it by its short name,
    // through the resolv.conf rnet run bind-mounts; the host's own file is untouched.
    let host_resolv = std::fs::read("/etc/resolv.conf").ok();
    let script = "grep -q '^nameserver 10.81.0.1$' /etc/resolv.conf && getent hosts web && ping -c 1 -W 2 web";
    let mut pinged = String::new();
    wait_until(
        "a workload on h1 pings web by name",
        Duration::from_secs(10),
        || {
            let out = lab.exec(
                "h1",
                &[
                    "rnet", "run", "blue", "--name", "client", "--", "sh", "-c", script,
                ],
            );
            pinged = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            out.status.success()
        },
    );
    eprintln!("rnet run on h1:\n{pinged}");
    assert!(pinged.contains(&ip_of(&ep3)), "{pinged}");
    assert_eq!(std::fs::read("/etc/resolv.conf").ok(), host_resolv);

    // Two endpoints of one name: both addresses.
    let web2 = Workload::new("web2");
    let path2 = web2.path().display().to_string();
    let ep2 = lab.host_rnet_json(
        "h2",
        &["attach", "blue", "--netns", &path2, "--name", "web"],
    );
    let mut both = [ip_of(&ep2), ip_of(&ep3)];
    both.sort();
    let both: Vec<&str> = both.iter().map(String::as_str).collect();
    resolves_to(&sock, gw, "web", &both, Duration::from_secs(2));

    // Removed names: gone from the answers at once (one watch event away).
    let id3 = ep3["id"].as_str().unwrap();
    lab.host_rnet_ok("h3", &["detach", "blue", "--id", id3]);
    resolves_to(
        &sock,
        gw,
        "web.blue",
        &[&ip_of(&ep2)],
        Duration::from_millis(500),
    );
    nxdomain_within(&sock, gw, "www.blue", Duration::from_millis(500));
    let id2 = ep2["id"].as_str().unwrap();
    lab.host_rnet_ok("h2", &["detach", "blue", "--id", id2]);
    nxdomain_within(&sock, gw, "web.blue", Duration::from_millis(500));
}

/// A tiny upstream resolver in the host's namespace: every A query gets 192.0.2.7; the names
/// asked are recorded. Stopped on drop.
struct Upstream {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Upstream {
    fn start(host: &Host) -> Upstream {
        let sock = udp_socket_in(&host.netns_path(), &format!("{}:0", host.underlay()));
        let addr = sock.local_addr().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let (asked, stop) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let (seen, done) = (Arc::clone(&asked), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !done.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let question = q.queries()[0].clone();
                let seen_name: &Mutex<Vec<String>> = &seen;
                seen_name.lock().unwrap().push(question.name().to_ascii());
                let mut r = Message::new();
                r.set_id(q.id())
                    .set_message_type(MessageType::Response)
                    .set_recursion_desired(true)
                    .set_recursion_available(true)
                    .add_query(question.clone())
                    .add_answer(Record::from_rdata(
                        question.name().clone(),
                        60,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
                    ));
                let _ = sock.send_to(&r.to_vec().unwrap(), peer);
            }
        });
        Upstream {
            addr,
            asked,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP connection made from inside the namespace at `netns`.
fn tcp_in(netns: &Path, to: SocketAddr) -> TcpStream {
    let netns = netns.to_path_buf();
    thread::spawn(move || {
        let ns = std::fs::File::open(&netns).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap()
    })
    .join()
    .unwrap()
}

fn dns_status(h: &Host) -> Value {
    h.rnet_json(&["status"])["dns"].clone()
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn garbage_is_dropped_and_counted_other_names_are_forwarded_and_bad_names_refused() {
    let mut h = Host::new("dns");
    // Started before the daemon, on the host's underlay address: rnetd forwards from there.
    let up = Upstream::start(&h);
    h.start_daemon_with(&["--dns-upstream", &up.addr.to_string()]);
    let net = h.rnet_json(&["create", "green", "--subnet", "10.82.0.0/24"]);
    let gw: Ipv4Addr = net["gateway"].as_str().unwrap().parse().unwrap();
    let w = Workload::new("w");
    let ep = h.rnet_json(&[
        "attach",
        "green",
        "--netns",
        w.path().to_str().unwrap(),
        "--name",
        "alpha",
    ]);
    let sock = udp_socket_in(&w.path(), "0.0.0.0:0");
    resolves_to(&sock, gw, "alpha", &[&ip_of(&ep)], Duration::from_secs(2));
    assert_eq!(dns_status(&h)["malformed"], 0);

    // Garbage over UDP: random bytes, a truncated header, 50 questions, a response.
    let server = SocketAddr::from((gw, 53));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut random = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let noise: Vec<u8> = (0..300).map(|_| random() as u8).collect();
    sock.send_to(&noise, server).unwrap();
    sock.send_to(&[0x12, 0x34, 0x01, 0x00, 0x00], server)
        .unwrap();
    let mut fifty = Message::new();
    fifty.set_id(7);
    for i in 0..50 {
        fifty.add_query(Query::query(
            Name::from_ascii(format!("n{i}.green.")).unwrap(),
            RecordType::A,
        ));
    }
    sock.send_to(&fifty.to_vec().unwrap(), server).unwrap();
    let mut response = Message::from_vec(&query("alpha", RecordType::A)).unwrap();
    response.set_message_type(MessageType::Response);
    sock.send_to(&response.to_vec().unwrap(), server).unwrap();
    // Over TCP: a length prefix far beyond any query closes the connection unanswered.
    let mut conn = tcp_in(&w.path(), server);
    conn.write_all(&[0xff, 0xff, 1, 2, 3]).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "the server answered garbage over TCP: {rest:?}"
    );
    wait_until(
        "5 malformed queries counted",
        Duration::from_secs(2),
        || dns_status(&h)["malformed"] == 5,
    );
    // None of them was answered: the next datagram is the answer to a valid query.
    resolves_to(
        &sock,
        gw,
        "alpha.green.",
        &[&ip_of(&ep)],
        Duration::from_secs(1),
    );

    // A flood of garbage does not stop valid answers.
    for _ in 0..5000 {
        let n = (random() % 512) as usize;
        let junk: Vec<u8> = (0..n).map(|_| random() as u8).collect();
        let _ = sock.send_to(&junk, server);
    }
    resolves_to(&sock, gw, "alpha", &[&ip_of(&ep)], Duration::from_secs(2));
    assert!(dns_status(&h)["malformed"].as_u64().unwrap() > 5);

    // A valid query over TCP answers.
    let mut conn = tcp_in(&w.path(), server);
    let q = query("alpha.green", RecordType::A);
    conn.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
    conn.write_all(&q).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).unwrap();
    let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
    conn.read_exact(&mut answer).unwrap();
    assert_eq!(
        addresses(&Message::from_vec(&answer).unwrap()),
        [ip_of(&ep)]
    );

    // Names that are not the network's go to the upstream; answers keep the client's id.
    let m = ask(&sock, gw, "outside.example.", Duration::from_secs(3)).expect("forwarded answer");
    assert_eq!(addresses(&m), ["192.0.2.7"]);
    assert!(up
        .asked
        .lock()
        .unwrap()
        .iter()
        .any(|n| n == "outside.example."));
    // A name of the network's zone is never forwarded, even when unknown.
    let m = ask(&sock, gw, "nobody.green.", Duration::from_secs(2)).unwrap();
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    assert!(!up
        .asked
        .lock()
        .unwrap()
        .iter()
        .any(|n| n.starts_with("nobody")));
    assert_eq!(dns_status(&h)["forwarded"], 1);

    // A daemon killed and started again serves the sandbox it finds (its sockets died with it).
    h.kill_daemon(nix::sys::signal::Signal::SIGKILL);
    no_answer(&sock, gw);
    h.start_daemon_with(&["--dns-upstream", &up.addr.to_string()]);
    resolves_to(&sock, gw, "alpha", &[&ip_of(&ep)], Duration::from_secs(5));

    // Bad names are refused with the reason, and nothing is allocated or built.
    let before = h
        .rnet_json(&["endpoints", "green"])
        .as_array()
        .unwrap()
        .len();
    let w2 = Workload::new("w2");
    let long = "a".repeat(300);
    for (bad, says) in [
        ("a..b", "empty label"),
        (long.as_str(), "at most 253"),
        ("Alpha", "'A'"),
        ("älpha", "'ä'"),
    ] {
        let out = h.rnet(&[
            "attach",
            "green",
            "--netns",
            w2.path().to_str().unwrap(),
            "--name",
            bad,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "--name {bad:?}: {err}"
        );
        let out = h.rnet(&[
            "attach",
            "green",
            "--netns",
            w2.path().to_str().unwrap(),
            "--alias",
            bad,
        ]);
        assert!(!out.status.success(), "--alias {bad:?} was taken");
    }
    assert_eq!(
        h.rnet_json(&["endpoints", "green"])
            .as_array()
            .unwrap()
            .len(),
        before
    );
    assert!(!w2.links().iter().any(|l| l == "eth0"), "{:?}", w2.links());

    // The server goes with the network's sandbox.
    assert_eq!(dns_status(&h)["servers"], 1);
    h.rnet_ok(&["rm", "green", "--force"]);
    assert_eq!(dns_status(&h)["servers"], 0);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn cni_names_the_endpoint_after_the_pod_and_returns_the_networks_dns() {
    let mut h = Host::new("dnscni");
    h.start_daemon();
    h.rnet_ok(&["create", "pods", "--subnet", "10.83.0.0/24"]);
    let cni = common::cni::Plugin::rnet(&h.socket());
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "pods", "type": "rnet-cni"});
    let (w1, w2) = (Workload::new("p1"), Workload::new("p2"));
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=frontend-7d4b9";
    let r = cni.add(&conf, "c0ffee01", &w1.path(), "eth0", args).ok();
    assert_eq!(r["dns"]["nameservers"], serde_json::json!(["10.83.0.1"]));
    assert_eq!(r["dns"]["search"], serde_json::json!(["pods"]));
    // No pod name: the container id (shortened to a DNS label) is the name.
    let cid = "ab".repeat(32);
    cni.add(&conf, &cid, &w2.path(), "eth0", "").ok();
    let eps = h.rnet_json(&["endpoints", "pods"]);
    let names: Vec<&str> = eps
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(names.contains(&"frontend-7d4b9"), "{eps}");
    assert!(names.contains(&&cid[..12]), "{eps}");
    let sock = udp_socket_in(&w2.path(), "0.0.0.0:0");
    let ip1 = r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    resolves_to(
        &sock,
        "10.83.0.1".parse().unwrap(),
        "frontend-7d4b9.pods",
        &[&ip1],
        Duration::from_secs(2),
    );
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn docker_containers_get_their_names_and_aliases_and_resolve_rnet_names_through_dns_flag() {
    use common::docker::{DockerPlugin, Dockerd};
    let mut h = Host::new("dnsdk");
    let docker = Dockerd::start(&h.netns_path());
    let plugin = DockerPlugin::socket_dir();
    let mut args = plugin.rnetd_args();
    args.extend([
        "--docker-socket".into(),
        docker.socket().display().to_string(),
    ]);
    h.start_daemon_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    h.rnet_ok(&["create", "blue", "--subnet", "10.84.0.0/24"]);
    let w = Workload::new("w");
    let wep = h.rnet_json(&[
        "attach",
        "blue",
        "--netns",
        w.path().to_str().unwrap(),
        "--name",
        "rw",
    ]);
    let image = docker.busybox();
    let d = plugin.name();
    docker.ok(&[
        "network",
        "create",
        "-d",
        d,
        "--ipam-driver",
        d,
        "--subnet",
        "10.84.0.0/24",
        "dnet",
    ]);
    let args = [
        "run",
        "-d",
        "--name",
        "Web",
        "--network",
        "dnet",
        "--network-alias",
        "www",
    ];
    docker.ok(&[&args[..], &[image, "sleep", "600"]].concat());
    let cip = docker.container_ip("Web", "dnet");
    // The engine is asked after the Join: the names land in the record a moment later.
    let sock = udp_socket_in(&w.path(), "0.0.0.0:0");
    let gw: Ipv4Addr = "10.84.0.1".parse().unwrap();
    resolves_to(&sock, gw, "web.blue", &[&cip], Duration::from_secs(10));
    resolves_to(&sock, gw, "www.blue", &[&cip], Duration::from_secs(1));
    // A container pointed at the network's DNS (`--dns <gateway>`) finds rnet's names: Docker's
    // embedded resolver forwards what it does not know there.
    let out = docker.ok(&[
        "run",
        "--rm",
        "--network",
        "dnet",
        "--dns",
        "10.84.0.1",
        image,
        "nslookup",
        "rw.blue",
    ]);
    assert!(out.contains(&ip_of(&wep)), "{out}");
    // The container goes: so does its name.
    docker.ok(&["rm", "-f", "Web"]);
    nxdomain_within(&sock, gw, "web.blue", Duration::from_secs(5));
    docker.ok(&["network", "rm", "dnet"]);
}
