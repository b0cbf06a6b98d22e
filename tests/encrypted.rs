//! Encrypted networks (`--encrypt wireguard`) on `rnet lab` hosts: what crosses the lab
//! switch is only WireGuard, before a handshake and after a peer dies nothing of the network
//! leaves in clear, peers' identities are pinned on first sight (a forged key gets no
//! traffic and rnet says why; a re-installed or moved host waits for `rnet peers --trust`),
//! a tampered record is written back by its own host, keys rotate under a running transfer,
//! garbage and replays are dropped harmlessly, TCP segmentation offload packets a workload
//! forged neither stop the tunnel nor leave in clear, and where the tunnel cannot run the
//! encrypted path fails loudly and changes nothing.
mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::lab::Lab;
use common::pcap::Capture;
use common::{udp_socket_in, wait_until, Host, Workload};
use serde_json::Value;

const FAST: &[&str] = &["--lease-ttl", "2", "--probe-window", "2", "--resync", "2"];
const MARKER: &str = "RNET-SECRET-MARKER-5f1c9e";
/// Where a capture's closing sentinel goes: host h1's underlay, across the lab switch.
const SENTINEL_TO: std::net::SocketAddrV4 =
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(198, 18, 0, 11), 9);

/// An encrypted and a plain network on a 2-host lab.
fn two_networks(lab: &Lab) -> (u32, u32) {
    let sec = lab.host_rnet_json(
        "h1",
        &[
            "create",
            "sec",
            "--subnet",
            "10.90.0.0/24",
            "--encrypt",
            "wireguard",
        ],
    );
    assert_eq!(sec["encryption"], "wireguard");
    assert_eq!(sec["mtu"], 1390, "1500 - 50 (VXLAN) - 60 (WireGuard)");
    let plain = lab.host_rnet_json("h1", &["create", "plain", "--subnet", "10.91.0.0/24"]);
    (
        sec["vni"].as_u64().unwrap() as u32,
        plain["vni"].as_u64().unwrap() as u32,
    )
}

/// Both networks, and workload a on h1 and b on h2 of the encrypted one, talking; returns
/// the encrypted network's VNI, the workloads and b's address.
fn encrypted_pair(lab: &Lab) -> (u32, Workload, Workload, String) {
    let (sec, _) = two_networks(lab);
    let (a, b) = (Workload::new("a"), Workload::new("b"));
    lab.attach("h1", "sec", &a.path());
    let ipb = lab.attach("h2", "sec", &b.path());
    wait_ping(&a, &ipb, Duration::from_secs(10));
    (sec, a, b, ipb)
}

fn wait_ping(w: &Workload, ip: &str, within: Duration) {
    wait_until(&format!("{} reaches {ip}", w.tag()), within, || {
        w.ping(ip, 1)
    });
}

/// Send `bytes` bytes of MARKER lines over TCP from `from` to `to_ip`:5000, received by a
/// server in `to`; returns the byte count the server got.
/// Send `bytes` of the marker text from `from` to `to` over TCP and check that they all
/// arrived unaltered (a digest of the stream on both ends: a workload's TCP does not check
/// the segments the tunnel merged, whose checksums the kernel was told to trust); returns
/// the count.
fn transfer(from: &Workload, to: &Workload, to_ip: &str, bytes: usize) -> usize {
    let server = Command::new("nsenter")
        .arg(format!("--net={}", to.path().display()))
        .args(["--", "sh", "-c", "busybox nc -l -p 5000 | sha256sum"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let source = format!("yes {MARKER} | head -c {bytes}");
    let script = format!("{source} > /dev/tcp/{to_ip}/5000");
    wait_until(
        "the transfer connects and completes",
        Duration::from_secs(30),
        || from.exec(&["bash", "-c", &script]).status.success(),
    );
    let out = server.wait_with_output().expect("server output");
    let sent = Command::new("sh")
        .args(["-c", &format!("{source} | sha256sum")])
        .output()
        .expect("sha256sum");
    let digest = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .split_whitespace()
            .next()
            .map(String::from)
    };
    assert_eq!(
        digest(&out.stdout),
        digest(&sent.stdout),
        "the {bytes} bytes arrived altered or cut short"
    );
    bytes
}

fn peer<'a>(peers: &'a Value, host: &str) -> &'a Value {
    peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["host"] == host)
        .unwrap_or_else(|| panic!("no peer {host} in {peers}"))
}

fn tunnel_up(lab: &Lab, from: &str, to: &str) -> bool {
    peer(&lab.host_rnet_json(from, &["peers"]), to)["tunnel"]["up"] == true
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn encrypted_traffic_crosses_the_switch_only_inside_wireguard_beside_a_plain_network() {
    let lab = Lab::up(2, FAST);
    let (sec, plain) = two_networks(&lab);
    let (a, b, c, d) = (
        Workload::new("a"),
        Workload::new("b"),
        Workload::new("c"),
        Workload::new("d"),
    );
    lab.attach("h1", "sec", &a.path());
    let ipb = lab.attach("h2", "sec", &b.path());
    lab.attach("h1", "plain", &c.path());
    let ipd = lab.attach("h2", "plain", &d.path());
    wait_ping(&a, &ipb, Duration::from_secs(10));
    wait_ping(&c, &ipd, Duration::from_secs(10));

    let cap = Capture::start(&lab.switch_netns(), "any", SENTINEL_TO);
    assert_eq!(transfer(&c, &d, &ipd, 20_000), 20_000);
    assert_eq!(transfer(&a, &b, &ipb, 4_000_000), 4_000_000);
    assert!(a.ping(&ipb, 3));
    let seen = cap.finish();

    let vnis = seen.vxlan_vnis();
    assert!(
        vnis.contains(&plain),
        "the plain network's VXLAN is visible (so the capture would show it): {vnis:?}; ports seen: {:?}",
        seen.udp().iter().map(|u| (u.sport, u.dport)).collect::<std::collections::BTreeSet<_>>()
    );
    eprintln!(
        "captured {} IPv4 packets, {} bytes",
        seen.frames.len(),
        seen.raw.len()
    );
    assert!(
        !vnis.contains(&sec),
        "{} VXLAN packets of the encrypted network crossed in clear",
        vnis.iter().filter(|v| **v == sec).count()
    );
    let wg = seen.wireguard();
    assert!(wg.len() > 100, "only {} WireGuard datagrams", wg.len());
    // The marker crossed in clear on the plain network only: the search works, and finds
    // nothing of the 4 MB sent over the encrypted one.
    let plain_frames: usize = seen
        .udp()
        .iter()
        .filter(|u| u.dport == 4789 && String::from_utf8_lossy(&u.payload).contains(MARKER))
        .count();
    assert!(plain_frames > 0, "marker not found in plain VXLAN frames");
    let in_wireguard = wg
        .iter()
        .filter(|u| String::from_utf8_lossy(&u.payload).contains(MARKER))
        .count();
    assert_eq!(
        in_wireguard, 0,
        "the marker appeared inside WireGuard datagrams"
    );

    let peers = lab.host_rnet_json("h1", &["peers"]);
    let t = &peer(&peers, "h2")["tunnel"];
    assert_eq!(t["up"], true, "{t}");
    assert!(t["tx_bytes"].as_u64().unwrap() > 4_000_000, "{t}");
    // The 4 MB left h1's TUN device as TCP super-packets inside VXLAN (this kernel offers the
    // offload), cut by rnetd: the byte count above shows every segment arrived intact.
    let wg = &lab.host_rnet_json("h1", &["status"])["wireguard"];
    assert_eq!(wg["tun_offload"]["tso"], true, "{wg}");
    assert!(
        wg["tun_offload"]["super_packets"].as_u64().unwrap() > 10,
        "{wg}"
    );
    assert_eq!(wg["drops"]["bad_offload"], 0, "{wg}");
    // On h2 the segments went into the kernel merged again (TCP super-packets inside VXLAN
    // on h2's tunnel device), and reached the workload whole: the byte count again.
    let wg2 = &lab.host_rnet_json("h2", &["status"])["wireguard"];
    assert!(wg2["tun_offload"]["merged"].as_u64().unwrap() > 10, "{wg2}");
    assert!(
        t["since_handshake"].is_u64() && t["key_age"].is_u64(),
        "{t}"
    );
    for h in ["h1", "h2"] {
        let out = lab.host_rnet(h, &["doctor"]);
        assert!(out.status.success(), "{h}: {out:?}");
    }
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn nothing_leaves_in_clear_after_a_peer_dies_or_before_the_handshake_after_its_restart() {
    let lab = Lab::up(2, FAST);
    let (sec, a, b, ipb) = encrypted_pair(&lab);

    let cap = Capture::start(&lab.switch_netns(), "any", SENTINEL_TO);
    lab.ok(&["stop", "h2", "--kill"]);
    wait_until("h1's tunnel to h2 is gone", Duration::from_secs(15), || {
        !tunnel_up(&lab, "h1", "h2")
    });
    // Both directions try: h1 toward b, b toward a (its daemon is dead, its kernel is not).
    assert!(!a.ping(&ipb, 5), "b answered with its tunnel down");
    let ipa = a.ipv4_addrs("eth0")[0].to_string();
    assert!(!b.ping(&ipa, 5));
    lab.ok(&["start", "h2"]);
    wait_ping(&a, &ipb, Duration::from_secs(15));
    let seen = cap.finish();
    let vnis = seen.vxlan_vnis();
    assert!(
        !vnis.contains(&sec),
        "encrypted network's VXLAN in clear while its tunnel was down or coming up: {vnis:?}"
    );
    assert!(
        !seen.wireguard().is_empty(),
        "the restarted peer's handshake crossed the switch"
    );
}

/// `etcdctl` against the lab's etcd, run on h1; returns stdout.
fn etcdctl(lab: &Lab, args: &[&str]) -> String {
    let base = ["etcdctl", "--endpoints", "198.18.0.1:2379"];
    lab.exec_ok("h1", &[base.as_slice(), args].concat())
}

/// `host`'s presence record as the store holds it.
fn presence_record(lab: &Lab, host: &str) -> Value {
    let get = etcdctl(
        lab,
        &["get", &format!("/rnet/v1/hosts/{host}"), "-w", "json"],
    );
    let kv = &serde_json::from_str::<Value>(&get).unwrap()["kvs"][0];
    serde_json::from_slice(&base64_decode(kv["value"].as_str().unwrap())).unwrap()
}

/// A host's rnetd stopped with SIGSTOP (so it cannot put its own record back), thawed on drop.
struct Frozen(nix::unistd::Pid);

impl Frozen {
    fn new(lab: &Lab, host: &str) -> Frozen {
        let pid = std::fs::read_to_string(lab.dir().join(host).join("rnetd.pid")).unwrap();
        let pid = nix::unistd::Pid::from_raw(pid.trim().parse().unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// Why `from` has no tunnel to `to`, once it says something `accept`s.
fn wait_problem(lab: &Lab, from: &str, to: &str, accept: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    wait_until(
        &format!("{from} refuses {to} for the expected reason"),
        Duration::from_secs(30),
        || {
            let peers = lab.host_rnet_json(from, &["peers"]);
            let t = &peer(&peers, to)["tunnel"];
            last = t["problem"].as_str().unwrap_or_default().to_string();
            t["up"] == false && accept(&last)
        },
    );
    last
}

fn doctor_fails_naming(lab: &Lab, host: &str, what: &str) {
    let doctor = lab.host_rnet(host, &["doctor"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        doctor.status.code() == Some(1) && text.contains(what),
        "{host}'s doctor: {doctor:?}"
    );
}

/// `etcdctl` against the lab's etcd (plain: the lab runs without TLS).
const ETCDCTL: [&str; 3] = ["etcdctl", "--endpoints", "198.18.0.1:2379"];

/// Host h2's presence record as etcd holds it: (lease, record).
fn h2_presence(lab: &Lab) -> (i64, Value) {
    let get = lab.exec_ok(
        "h1",
        &[
            ETCDCTL.as_slice(),
            &["get", "/rnet/v1/hosts/h2", "-w", "json"],
        ]
        .concat(),
    );
    let kv = &serde_json::from_str::<Value>(&get).unwrap()["kvs"][0];
    let value = String::from_utf8(base64_decode(kv["value"].as_str().unwrap())).unwrap();
    (
        kv["lease"].as_i64().unwrap(),
        serde_json::from_str(&value).unwrap(),
    )
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_forged_key_is_refused_against_the_pin_nothing_is_sent_to_it_and_rnet_says_why() {
    let lab = Lab::up(2, FAST);
    let (sec, a, _b, ipb) = encrypted_pair(&lab);
    let record = presence_record(&lab, "h2");
    let real = record["wireguard"]["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    // h2's own daemon would put its record back: freeze it, and keep the forged records
    // under a lease of the attacker's own, so they outlive h2's.
    let frozen = Frozen::new(&lab, "h2");
    let granted = etcdctl(&lab, &["lease", "grant", "300"]);
    let lease = granted.split_whitespace().nth(1).unwrap().to_string();
    let put = |record: &Value| {
        etcdctl(
            &lab,
            &[
                "put",
                "/rnet/v1/hosts/h2",
                &record.to_string(),
                &format!("--lease={lease}"),
            ],
        )
    };

    // A store writer's own WireGuard key for h2, under h2's identity and old signature.
    let fake = rnet::wireguard::keys::HostKey::generate().public_b64();
    let mut forged = record.clone();
    forged["wireguard"]["public_key"] = Value::String(fake.clone());
    put(&forged);
    let problem = wait_problem(&lab, "h1", "h2", |p| {
        p.contains(&fake) && p.contains("does not verify")
    });
    assert!(
        problem.contains(&format!("it offers WireGuard key {fake}, pinned is {real}")),
        "{problem}"
    );
    // Fail closed: no session, and nothing at all goes to the refused host.
    let cap = Capture::start(&lab.switch_netns(), "any", SENTINEL_TO);
    assert!(!a.ping(&ipb, 6), "traffic reached the forged key's host");
    let seen = cap.finish();
    assert!(!seen.vxlan_vnis().contains(&sec));
    let h2: std::net::Ipv4Addr = "198.18.0.12".parse().unwrap();
    let sent = seen.wireguard().iter().filter(|u| u.dst == h2).count();
    assert_eq!(
        sent, 0,
        "h1 sent {sent} WireGuard datagrams to the refused host"
    );
    let table = lab.host_rnet_ok("h1", &["peers"]);
    assert!(
        table.contains("down")
            && table.contains(&format!(
                "h2: refused the store's record: it offers WireGuard key {fake}"
            )),
        "{table}"
    );
    doctor_fails_naming(&lab, "h1", "host h2 is refused as a WireGuard peer");
    assert!(
        lab.log("h1").contains("WireGuard peer refused"),
        "h1 does not log the refusal:\n{}",
        lab.log("h1")
    );

    // Re-signed under an identity of the writer's own: the signature is valid, the identity
    // is not the pinned one, so only an operator could accept it.
    let mut info: rnet::model::WireguardInfo =
        serde_json::from_value(record["wireguard"].clone()).unwrap();
    info.public_key = fake.clone();
    let theirs = rnet::wireguard::identity::Identity::generate();
    theirs.sign("h2", h2, &mut info);
    let mut resigned = record.clone();
    resigned["wireguard"] = serde_json::to_value(&info).unwrap();
    put(&resigned);
    let problem = wait_problem(&lab, "h1", "h2", |p| p.contains(&theirs.public_b64()));
    assert!(
        problem.contains("is not the pinned") && problem.contains("rnet peers --trust h2"),
        "{problem}"
    );
    assert!(!a.ping(&ipb, 2));

    // h2's daemon thawed publishes its own record again: it matches the pin, so h1 takes it
    // back with no operator.
    drop(frozen);
    wait_ping(&a, &ipb, Duration::from_secs(30));
    assert!(tunnel_up(&lab, "h1", "h2"));
    wait_until(
        "h1's doctor is clean again",
        Duration::from_secs(20),
        || lab.host_rnet("h1", &["doctor"]).status.success(),
    );
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_reinstalled_or_moved_host_is_refused_across_a_restart_until_an_operator_trusts_it() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::up(2, FAST);
    let (_, a, _b, ipb) = encrypted_pair(&lab);
    let pins = lab.dir().join("h1/state/pinned-peers.json");
    let mode = std::fs::metadata(&pins).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let first_identity = presence_record(&lab, "h2")["wireguard"]["identity"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(std::fs::read_to_string(&pins)
        .unwrap()
        .contains(&first_identity));

    // h2 re-installed (its keys gone) while h1's daemon is down: h1 comes back with its pins.
    lab.ok(&["stop", "h1"]);
    lab.ok(&["stop", "h2"]);
    for f in ["identity.key", "wireguard.key", "pinned-peers.json"] {
        std::fs::remove_file(lab.dir().join("h2/state").join(f)).unwrap();
    }
    lab.ok(&["start", "h2"]);
    lab.ok(&["start", "h1"]);
    let problem = wait_problem(&lab, "h1", "h2", |p| p.contains("identity key"));
    assert!(
        problem.contains(&format!("is not the pinned {first_identity}"))
            && problem.contains("rnet peers --trust h2"),
        "{problem}"
    );
    assert!(!a.ping(&ipb, 3), "traffic reached the unapproved host");
    doctor_fails_naming(&lab, "h1", "host h2 is refused as a WireGuard peer");

    // The operator compares the identity h1 is offered with what h2 itself says.
    let new_identity = lab.host_rnet_json("h2", &["status"])["wireguard"]["identity"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(problem.contains(&new_identity), "{problem}");
    let out = lab.host_rnet_ok("h1", &["peers", "--trust", "h2"]);
    assert!(
        out.contains(&format!("host h2 pinned: identity {new_identity}")),
        "{out}"
    );
    wait_ping(&a, &ipb, Duration::from_secs(20));
    wait_until("h1's doctor is clean", Duration::from_secs(20), || {
        lab.host_rnet("h1", &["doctor"]).status.success()
    });
    assert!(std::fs::read_to_string(&pins)
        .unwrap()
        .contains(&new_identity));

    // h2 moved to another underlay address: its record is validly signed by the pinned
    // identity, but a new underlay needs the operator too.
    lab.exec_ok("h2", &["ip", "addr", "add", "198.18.0.22/24", "dev", "ul0"]);
    let config = lab.dir().join("lab.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let mut cfg: Value = serde_json::from_str(&text).unwrap();
    for arg in cfg["hosts"][1]["rnetd_args"].as_array_mut().unwrap() {
        if arg == "198.18.0.12" {
            *arg = Value::String("198.18.0.22".into());
        }
    }
    std::fs::write(&config, cfg.to_string()).unwrap();
    lab.ok(&["stop", "h2"]);
    lab.ok(&["start", "h2"]);
    wait_problem(&lab, "h1", "h2", |p| {
        p.contains("its underlay 198.18.0.22 is not the pinned 198.18.0.12")
    });
    lab.host_rnet_ok("h1", &["peers", "--trust", "h2"]);
    wait_until(
        "h1's tunnel to the moved h2 is up",
        Duration::from_secs(20),
        || tunnel_up(&lab, "h1", "h2"),
    );
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_tampered_key_is_written_back_by_its_host_and_nothing_leaves_in_clear() {
    let lab = Lab::up(2, FAST);
    let (sec, a, b, ipb) = encrypted_pair(&lab);

    // Replace h2's public key in its presence record with another valid key, keeping the lease.
    let (lease, mut record) = h2_presence(&lab);
    let real = record["wireguard"]["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let forged = rnet::wireguard::keys::HostKey::generate().public_b64();
    record["wireguard"]["public_key"] = Value::String(forged.clone());
    let cap = Capture::start(&lab.switch_netns(), "any", SENTINEL_TO);
    lab.exec_ok(
        "h1",
        &[
            ETCDCTL.as_slice(),
            &[
                "put",
                "/rnet/v1/hosts/h2",
                &record.to_string(),
                &format!("--lease={lease:x}"),
            ],
        ]
        .concat(),
    );

    // h2 notices at its next renewal, says so naming the key, and writes its record back:
    // no operator step (restart, rotate-key) is needed.
    wait_until(
        "h2 writes its real key back",
        Duration::from_secs(10),
        || h2_presence(&lab).1["wireguard"]["public_key"] == real.as_str(),
    );
    let log = lab.log("h2");
    assert!(
        log.contains("changed by someone else")
            && log.contains("/rnet/v1/hosts/h2")
            && log.contains("its WireGuard public key is not this host's"),
        "h2 does not say its record was altered:\n{log}"
    );
    wait_ping(&a, &ipb, Duration::from_secs(20));
    assert!(tunnel_up(&lab, "h1", "h2"));
    let ipa = a.ipv4_addrs("eth0")[0].to_string();
    assert!(b.ping(&ipa, 3));
    let seen = cap.finish();
    assert!(
        !seen.vxlan_vnis().contains(&sec),
        "the encrypted network's VXLAN crossed the switch in clear while h2's key was forged"
    );
    assert!(!seen.wireguard().is_empty());
    assert_ne!(forged, real);
}

/// What a daemon logs when it takes a peer's rotated key.
const ACCEPTED_KEY: &str = "accepted a new WireGuard key signed by the host's pinned identity";

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn key_rotation_under_a_running_transfer_lets_it_complete() {
    let lab = Lab::up(2, FAST);
    let (_, a, b, ipb) = encrypted_pair(&lab);
    let server = Command::new("nsenter")
        .arg(format!("--net={}", b.path().display()))
        .args(["--", "iperf3", "-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = common::ChildGuard(server);
    wait_until("iperf3 server listens", Duration::from_secs(10), || {
        a.exec(&["bash", "-c", &format!("exec 3<>/dev/tcp/{ipb}/5201")])
            .status
            .success()
    });
    let client = Command::new("nsenter")
        .arg(format!("--net={}", a.path().display()))
        .args(["--", "iperf3", "-c", &ipb, "-t", "8", "-b", "200M", "-J"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let keys_before: Vec<String> = ["h1", "h2"]
        .iter()
        .map(|h| lab.host_rnet_json(h, &["status"])["wireguard"]["public_key"].to_string())
        .collect();
    // Each rotation comes mid-transfer (the point of the test): once data flows, and once
    // h2 has taken h1's new key and data flows again. 1000 segments is about 1.4 MB of the
    // 200 MB transfer.
    let flowing = |since: u64| b.snmp("Tcp", "InSegs") >= since + 1000;
    let start = b.snmp("Tcp", "InSegs");
    wait_until("the transfer flows", Duration::from_secs(5), || {
        flowing(start)
    });
    lab.host_rnet_ok("h1", &["rotate-key"]);
    let rotated = b.snmp("Tcp", "InSegs");
    wait_until(
        "h2 takes h1's new key and the transfer goes on",
        Duration::from_secs(5),
        || lab.log("h2").contains(ACCEPTED_KEY) && flowing(rotated),
    );
    lab.host_rnet_ok("h2", &["rotate-key"]);
    let out = client.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "iperf3 failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = report["end"]["sum_received"]["bytes"]
        .as_f64()
        .unwrap_or_else(|| panic!("no byte count in {report}"));
    // 8 s at 200 Mbit/s is 200 MB; each rotation may stall it for a handshake and TCP's
    // retransmission timer, not for the rest of the transfer.
    assert!(bytes > 50e6, "only {bytes} bytes arrived");
    eprintln!("{bytes} bytes arrived across two key rotations");
    for (h, before) in ["h1", "h2"].iter().zip(&keys_before) {
        let now = lab.host_rnet_json(h, &["status"])["wireguard"]["public_key"].to_string();
        assert_ne!(&now, before, "{h}'s key did not change");
    }
    assert!(tunnel_up(&lab, "h1", "h2") && tunnel_up(&lab, "h2", "h1"));
    // Each side took the other's new key on its pinned identity's signature, no operator.
    for (h, other) in [("h1", "h2"), ("h2", "h1")] {
        assert!(
            lab.log(h).contains(ACCEPTED_KEY) && !lab.log(h).contains("WireGuard peer refused"),
            "{h} on {other}'s rotation:\n{}",
            lab.log(h)
        );
    }
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn garbage_and_replayed_datagrams_are_dropped_and_the_tunnel_stays_up() {
    let lab = Lab::up(2, FAST);
    let (_, a, _b, ipb) = encrypted_pair(&lab);
    let cap = Capture::start(&lab.switch_netns(), "any", SENTINEL_TO);
    assert!(a.ping(&ipb, 10));
    let recorded = cap.finish().wireguard();
    assert!(
        recorded.len() >= 20,
        "{} datagrams recorded",
        recorded.len()
    );

    let socket = udp_socket_in(&lab.switch_netns(), "0.0.0.0:0");
    let mut sent = 0;
    let mut seed = 0x9e37_79b9_u32;
    for target in ["198.18.0.11:51820", "198.18.0.12:51820"] {
        let to: SocketAddr = target.parse().unwrap();
        for len in [
            0usize, 1, 3, 4, 16, 31, 32, 91, 92, 93, 147, 148, 149, 500, 1400, 1472,
        ] {
            for first in [0u8, 1, 2, 3, 4, 255] {
                let mut d: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 17;
                        seed ^= seed << 5;
                        seed as u8
                    })
                    .collect();
                if len >= 4 {
                    d[..4].copy_from_slice(&[first, 0, 0, 0]);
                }
                socket.send_to(&d, to).unwrap();
                sent += 1;
            }
        }
    }
    // Oversized data messages aimed at live receiver indexes (peer index in the upper 24
    // bits, session counter in the lower 8): longer than any datagram a peer sends.
    for target in ["198.18.0.11:51820", "198.18.0.12:51820"] {
        let to: SocketAddr = target.parse().unwrap();
        for peer_index in 1u32..=4 {
            for session in 0u32..8 {
                for len in [9300usize, 30000, 65000] {
                    let mut d = vec![0u8; len];
                    d[0] = 4;
                    d[4..8].copy_from_slice(&((peer_index << 8) | session).to_le_bytes());
                    socket.send_to(&d, to).unwrap();
                    sent += 1;
                }
            }
        }
    }
    for u in &recorded {
        for _ in 0..3 {
            socket
                .send_to(&u.payload, SocketAddr::new(u.dst.into(), u.dport))
                .unwrap();
            sent += 1;
        }
    }
    eprintln!("sent {sent} garbage and replayed datagrams");
    wait_until(
        "both daemons counted the drops",
        Duration::from_secs(10),
        || {
            ["h1", "h2"].iter().all(|h| {
                let drops = &lab.host_rnet_json(h, &["status"])["wireguard"]["drops"];
                drops["malformed"].as_u64().unwrap() > 0 && drops["rejected"].as_u64().unwrap() > 0
            })
        },
    );
    assert!(a.ping(&ipb, 3), "the tunnel broke");
    assert!(tunnel_up(&lab, "h1", "h2") && tunnel_up(&lab, "h2", "h1"));
    for h in ["h1", "h2"] {
        assert!(
            !lab.log(h).contains("panicked"),
            "{h} panicked:\n{}",
            lab.log(h)
        );
    }
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn where_the_tunnel_cannot_run_encrypted_networks_fail_loudly_and_change_nothing() {
    let mut host = Host::new("wgfail");
    // A port someone else holds on the underlay.
    let squatter = udp_socket_in(&host.netns_path(), &format!("{}:0", host.underlay()));
    let port = squatter.local_addr().unwrap().port().to_string();
    host.start_daemon_with(&["--wireguard-port", &port]);
    let wg = &host.rnet_json(&["status"])["wireguard"];
    assert_eq!(wg["available"], false, "{wg}");
    assert!(wg["error"].as_str().unwrap().contains("in use"), "{wg}");
    let out = host.rnet(&[
        "create",
        "enc",
        "--subnet",
        "10.92.0.0/24",
        "--encrypt",
        "wireguard",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot create encrypted network enc: WireGuard is unavailable")
            && err.contains("in use"),
        "{err}"
    );
    assert_eq!(
        host.rnet_json(&["ls"]),
        Value::Array(vec![]),
        "nothing created"
    );
    host.rnet_ok(&["create", "clear", "--subnet", "10.93.0.0/24"]);

    // An encrypted network made while the tunnel worked, attached to while it does not.
    host.kill_daemon(nix::sys::signal::Signal::SIGTERM);
    host.start_daemon();
    host.rnet_ok(&[
        "create",
        "enc",
        "--subnet",
        "10.92.0.0/24",
        "--encrypt",
        "wireguard",
    ]);
    host.kill_daemon(nix::sys::signal::Signal::SIGTERM);
    host.start_daemon_with(&["--wireguard-port", &port]);
    let w = host.new_workload("w");
    let path = w.path().display().to_string();
    let out = host.rnet(&["attach", "enc", "--netns", &path]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot attach to encrypted network enc"),
        "{err}"
    );
    assert_eq!(host.rnet_json(&["endpoints", "enc"]), Value::Array(vec![]));
    assert_eq!(
        w.links(),
        vec!["lo".to_string()],
        "no interface was left in the workload"
    );
    assert!(
        common::find_sandbox(&host.run_dir(), "enc").is_none(),
        "no sandbox was built"
    );

    // No TUN device: the daemon runs where /dev/net/tun does not exist.
    host.kill_daemon(nix::sys::signal::Signal::SIGTERM);
    host.start_daemon_wrapped(
        &[
            "unshare",
            "-m",
            "--",
            "sh",
            "-c",
            "mount -t tmpfs none /dev/net && exec \"$@\"",
            "sh",
        ],
        &[],
    );
    let wg = &host.rnet_json(&["status"])["wireguard"];
    assert!(
        wg["error"].as_str().unwrap().contains("/dev/net/tun"),
        "{wg}"
    );
    let out = host.rnet(&[
        "create",
        "enc2",
        "--subnet",
        "10.94.0.0/24",
        "--encrypt",
        "wireguard",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/dev/net/tun"));
    host.kill_daemon(nix::sys::signal::Signal::SIGTERM);
    drop(squatter);
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_configured_interval_rotates_the_key_and_the_key_file_stays_private() {
    use std::os::unix::fs::PermissionsExt;
    let mut host = Host::new("wgrot");
    host.start_daemon_with(&["--wireguard-rotate-every", "1"]);
    let first = host.rnet_json(&["status"])["wireguard"]["public_key"].clone();
    assert!(first.is_string(), "{first}");
    wait_until(
        "the key rotates on schedule",
        Duration::from_secs(10),
        || host.rnet_json(&["status"])["wireguard"]["public_key"] != first,
    );
    let key_file = host.state_dir().join("wireguard.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    host.kill_daemon(nix::sys::signal::Signal::SIGTERM);
    assert!(
        !host
            .daemon_log()
            .contains(std::fs::read_to_string(&key_file).unwrap().trim()),
        "the private key reached the log"
    );
}

/// A frame with a virtio-net header, sent from inside a workload through a packet socket
/// (PACKET_VNET_HDR): how a workload hands its kernel a "TSO" packet with headers of its
/// choosing, which the tunnel's TUN device then hands rnetd uncut.
fn send_with_vnet_header(w: &Workload, frames: Vec<Vec<u8>>) -> usize {
    let netns = w.path();
    common::made_in(&netns, move || {
        // SAFETY: plain socket calls on a descriptor owned here and closed at the end.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let on: libc::c_int = 1;
            let r = libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_VNET_HDR,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
            assert_eq!(r, 0, "PACKET_VNET_HDR: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(c"eth0".as_ptr()) as i32;
            addr.sll_halen = 6;
            let mut accepted = 0;
            for f in &frames {
                let n = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                // The workload's own kernel refuses some of them outright: fine.
                if n >= 0 {
                    accepted += 1;
                }
            }
            libc::close(fd);
            accepted
        }
    })
}

/// The MAC address of `w`'s eth0 (from `ip`: /sys shows the namespace that mounted it).
fn mac_of(w: &Workload) -> [u8; 6] {
    let out = w.exec(&["ip", "-o", "link", "show", "eth0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text
        .split_whitespace()
        .skip_while(|t| *t != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {text:?}"));
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("MAC byte"))
        .collect();
    bytes.try_into().expect("six bytes")
}

/// The ones' complement sum of `data` (16-bit big-endian words) and `acc`, folded.
fn fold16(data: &[u8], acc: u32) -> u16 {
    let mut sum = data
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .fold(acc, |a, w| a + w);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A TCP/IPv4 frame from `src` to `dst` behind a virtio-net header asking for TCP
/// segmentation into `mss`-byte segments; `ihl` and `doff` in 32-bit words (options zero).
#[allow(clippy::too_many_arguments)]
fn tso_frame(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    ihl: usize,
    doff: usize,
    payload: usize,
    mss: u16,
    gso_type: u8,
) -> Vec<u8> {
    let (ip_len, tcp_len) = (ihl * 4, doff * 4);
    let mut f = vec![0u8; 10 + 14 + ip_len + tcp_len];
    let hdr_len = (14 + ip_len + tcp_len) as u16;
    f[0] = 1; // NEEDS_CSUM
    f[1] = gso_type;
    f[2..4].copy_from_slice(&hdr_len.to_ne_bytes());
    f[4..6].copy_from_slice(&mss.to_ne_bytes());
    f[6..8].copy_from_slice(&((14 + ip_len) as u16).to_ne_bytes());
    f[8..10].copy_from_slice(&16u16.to_ne_bytes());
    let e = &mut f[10..];
    e[..6].copy_from_slice(&macs.1);
    e[6..12].copy_from_slice(&macs.0);
    e[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut e[14..];
    ip[0] = 0x40 | ihl as u8;
    let total = (ip_len + tcp_len + payload) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let sum = !fold16(&ip[..ip_len], 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    // The TCP checksum left partial, as NEEDS_CSUM wants it: the pseudo-header's sum.
    let pseudo = fold16(&ip[12..20], 6 + (tcp_len + payload) as u32);
    let tcp = &mut ip[ip_len..];
    tcp[16..18].copy_from_slice(&pseudo.to_be_bytes());
    tcp[..4].copy_from_slice(&[0x9c, 0x40, 0x13, 0x89]);
    tcp[12] = (doff as u8) << 4;
    tcp[13] = 0x18;
    tcp[14] = 0x10;
    f.extend(MARKER.bytes().cycle().take(payload));
    f
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn forged_segmentation_offload_packets_from_a_workload_neither_stop_the_tunnel_nor_leave_in_clear()
{
    let lab = Lab::up(2, FAST);
    let (sec, a, b, ipb) = encrypted_pair(&lab);
    let ipa = a.ipv4_addrs("eth0")[0].octets();
    let dst: std::net::Ipv4Addr = ipb.parse().unwrap();
    let macs = (mac_of(&a), mac_of(&b));
    let before = lab.host_rnet_json("h1", &["status"])["wireguard"].clone();
    assert_eq!(before["tun_offload"]["tso"], true, "{before}");
    eprintln!("h1 before the forged frames: {before}");

    let cap = Capture::start(&lab.switch_netns(), "any", SENTINEL_TO);
    let frame = |ihl, doff, payload, mss, gso| {
        tso_frame(macs, ipa, dst.octets(), ihl, doff, payload, mss, gso)
    };
    let mut frames = vec![
        // Well-formed: cut into wire packets like any other.
        frame(5, 5, 20_000, 1000, 1),
        // Tiny segments: 3,000 one-byte packets.
        frame(5, 5, 3000, 1, 1),
        // IPv4 and TCP options, the longest headers there are.
        frame(15, 15, 8000, 900, 1),
        // Segments larger than the tunnel's MTU.
        frame(5, 5, 30_000, 9000, 1),
        // A TCP segmentation request on a UDP packet; on IPv6 (TCPV6) for an IPv4 one.
        {
            let mut f = frame(5, 5, 5000, 1000, 1);
            f[10 + 14 + 9] = 17;
            f
        },
        frame(5, 5, 5000, 1000, 4),
        // ECN and UDP segmentation, never switched on for the tunnel.
        frame(5, 5, 5000, 1000, 0x81),
        frame(5, 5, 5000, 1000, 5),
    ];
    // Lying lengths: an IPv4 total length short of the frame, a header length past it.
    let mut short_total = frame(5, 5, 6000, 1000, 1);
    short_total[10 + 14 + 2..10 + 14 + 4].copy_from_slice(&100u16.to_be_bytes());
    frames.push(short_total);
    let mut doff_past = frame(5, 5, 10, 4, 1);
    doff_past[10 + 14 + 20 + 12] = 0xf0;
    frames.push(doff_past);

    // What the workload's kernel took crossed, encrypted: the well-formed frame's 20,000
    // bytes at least. (The kernel checks packets with a user's virtio-net header itself and
    // refuses some; rnetd's checks of what it is handed are unit-tested in
    // wireguard::offload, forged offsets and random bytes.)
    let tx = |lab: &Lab| {
        peer(&lab.host_rnet_json("h1", &["peers"]), "h2")["tunnel"]["tx_bytes"]
            .as_u64()
            .unwrap()
    };
    let tx_before = tx(&lab);
    let accepted = send_with_vnet_header(&a, frames);
    eprintln!("the workload's kernel took {accepted} of the forged frames");
    assert!(accepted >= 1, "not even the well-formed frame was sent");
    wait_until(
        "the forged frames' bytes crossed the tunnel",
        Duration::from_secs(10),
        || tx(&lab) > tx_before + 20_000,
    );
    // Some reached rnetd uncut (the kernel passes what its own checks accept), and were
    // cut there.
    let cut = &lab.host_rnet_json("h1", &["status"])["wireguard"]["tun_offload"];
    eprintln!(
        "super-packets cut by h1 before the forged frames and after: {} {}",
        before["tun_offload"]["super_packets"], cut["super_packets"]
    );
    assert!(
        cut["super_packets"].as_u64() > before["tun_offload"]["super_packets"].as_u64(),
        "no forged frame reached the splitter: {cut}"
    );
    assert!(a.ping(&ipb, 3), "the tunnel broke");
    assert_eq!(transfer(&a, &b, &ipb, 1_000_000), 1_000_000);
    let seen = cap.finish();
    assert!(
        !seen.vxlan_vnis().contains(&sec),
        "VXLAN of the encrypted network crossed in clear"
    );
    let clear = seen
        .udp()
        .iter()
        .filter(|u| String::from_utf8_lossy(&u.payload).contains(MARKER))
        .count();
    assert_eq!(clear, 0, "the forged payload crossed the switch in clear");
    assert!(tunnel_up(&lab, "h1", "h2") && tunnel_up(&lab, "h2", "h1"));
    let wg = &lab.host_rnet_json("h1", &["status"])["wireguard"];
    eprintln!("h1 after the forged frames: {wg}");
    for h in ["h1", "h2"] {
        assert!(
            !lab.log(h).contains("panicked"),
            "{h} panicked:\n{}",
            lab.log(h)
        );
    }
}
