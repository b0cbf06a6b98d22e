//! `--encrypt ipsec` on a kernel with ESP: two QEMU guests (Debian 12's kernel) of the VM
//! lab. Only ESP crosses the lab's wire for the network (no UDP to the IPsec VXLAN port, no
//! cleartext VXLAN of its VNI); ping and iperf3 go through; a tampered SA key fails
//! authentication and rnetd puts the right key back; a killed peer's flows are blocked (and
//! counted), never sent in clear, and resume on a new epoch after its restart without an
//! outbound SA installed twice; rotation every 10 s under a 5/s ping loses nothing.
//!
//! One lab serves the whole scenario: each boot costs tens of seconds under TCG.
mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use common::pcap::{Capture, Captured};
use common::vmlab::VmLab;
use common::wait_until;

const NET_DEADLINE: Duration = Duration::from_secs(120);
const H1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const H2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
/// The IPsec networks' VXLAN port (`rnet::model::IPSEC_VXLAN_PORT`).
const IPSEC_PORT: u16 = rnet::model::IPSEC_VXLAN_PORT;
const W1: &str = "10.78.0.10";
const W2: &str = "10.78.0.20";

/// One ESP SA of rnet's as `ip xfrm state` shows it in a guest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Sa {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    spi: u32,
}

fn sas(lab: &VmLab, host: &str) -> Vec<Sa> {
    let out = lab.exec_ok(host, &["ip", "xfrm", "state"]);
    let mut found = Vec::new();
    let mut addrs = None;
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["src", s, "dst", d, ..] if !line.starts_with('\t') => {
                addrs = Some((s.parse().unwrap(), d.parse().unwrap()))
            }
            ["proto", "esp", "spi", spi, ..] => {
                let (src, dst) = addrs.expect("spi before addresses");
                let spi = u32::from_str_radix(spi.trim_start_matches("0x"), 16).unwrap();
                found.push(Sa { src, dst, spi });
            }
            _ => {}
        }
    }
    found.sort();
    found
}

/// Host leases lost so far, in both guests' rnetd logs.
fn lease_lapses(lab: &VmLab) -> usize {
    ["h1", "h2"]
        .iter()
        .map(|h| {
            let log = lab.guest_log(h, "rnetd");
            log.matches("host lease lost").count() + log.matches("not found").count()
        })
        .sum()
}

/// The XFRM drop counters a lossy rotation would raise, per guest.
fn rotation_counters(lab: &VmLab) -> Vec<(&'static str, Vec<(&'static str, u64)>)> {
    ["h1", "h2"]
        .into_iter()
        .map(|host| {
            let names = [
                "XfrmInNoStates",
                "XfrmInStateProtoError",
                "XfrmInStateSeqError",
                "XfrmInTmplMismatch",
                "XfrmOutNoStates",
                "XfrmOutPolBlock",
            ];
            (host, names.map(|n| (n, xfrm_stat(lab, host, n))).to_vec())
        })
        .collect()
}

fn xfrm_stat(lab: &VmLab, host: &str, name: &str) -> u64 {
    let out = lab.exec_ok(host, &["cat", "/proc/net/xfrm_stat"]);
    out.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(name)).then(|| w.next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {name} in xfrm_stat:\n{out}"))
}

/// `rnet run sec --ip IP -- ARGV…` in `host`: a one-shot workload.
fn run_in(lab: &VmLab, host: &str, ip: &str, argv: &[&str]) -> std::process::Output {
    let mut full = vec!["rnet", "run", "sec", "--ip", ip, "--"];
    full.extend_from_slice(argv);
    lab.exec(host, &full)
}

/// Received count of a `ping -q` summary.
fn received(out: &std::process::Output) -> (u32, u32) {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {out:?}"));
    let n = |i: usize| line.split_whitespace().nth(i).unwrap().parse().unwrap();
    (n(0), n(3))
}

fn peer_ipsec(lab: &VmLab, host: &str, peer: &str) -> serde_json::Value {
    let peers = lab.rnet_json(host, &["peers"]);
    let p = peers
        .as_array()
        .or_else(|| peers["peers"].as_array())
        .expect("peers array")
        .iter()
        .find(|p| p["host"] == peer || p["id"] == peer)
        .unwrap_or_else(|| panic!("no {peer} in {peers}"))
        .clone();
    p["ipsec"].clone()
}

fn installed(lab: &VmLab, host: &str, peer: &str) -> bool {
    peer_ipsec(lab, host, peer)["installed"] == true
}

/// ESP packets between the two guests seen in a capture: their SPIs.
fn esp_spis(seen: &Captured) -> BTreeSet<u32> {
    seen.frames
        .iter()
        .filter(|ip| ip.len() >= 28 && ip[9] == 50)
        .filter(|ip| {
            let s = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let d = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (s == H1 && d == H2) || (s == H2 && d == H1)
        })
        .map(|ip| {
            let ihl = (ip[0] & 0x0f) as usize * 4;
            u32::from_be_bytes(ip[ihl..ihl + 4].try_into().unwrap())
        })
        .collect()
}

/// Nothing of the network in clear: no UDP to the IPsec port, no VXLAN with its VNI.
fn assert_nothing_in_clear(seen: &Captured, vni: u32, what: &str) {
    let clear: Vec<_> = seen
        .udp()
        .into_iter()
        .filter(|u| u.dport == IPSEC_PORT || u.sport == IPSEC_PORT)
        .collect();
    assert!(
        clear.is_empty(),
        "{what}: cleartext UDP {IPSEC_PORT}: {clear:?}"
    );
    let vnis = seen.vxlan_vnis();
    assert!(!vnis.contains(&vni), "{what}: cleartext VXLAN of VNI {vni}");
}

fn capture(lab: &VmLab) -> Capture {
    let sentinel: SocketAddrV4 = "198.18.0.11:9".parse().unwrap();
    Capture::start(&lab.netns(), "br0", sentinel)
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn ipsec_network_runs_encrypted_across_two_guests_through_rotation_kill_and_tamper() {
    let t0 = Instant::now();
    let Some(lab) = VmLab::up(2) else { return };
    eprintln!("vm lab up took {:.1} s", lab.up_time.as_secs_f64());
    // IPsec keys come from the WireGuard host key, whose loading opens the TUN device:
    // the guests' init does not load `tun`, so rnetd restarts after it.
    for h in ["h1", "h2"] {
        lab.exec_ok(h, &["modprobe", "tun"]);
        lab.restart_rnetd(h, &[]);
        let st = lab.rnet_json(h, &["status"]);
        assert_eq!(st["ipsec"]["available"], true, "{h}: {st}");
    }
    let vni = encrypted_ping_and_iperf_show_only_esp(&lab);
    eprintln!(
        "[{:.0} s] encrypted traffic done",
        t0.elapsed().as_secs_f64()
    );
    a_tampered_key_fails_authentication_until_rnetd_restores_it(&lab);
    eprintln!("[{:.0} s] tamper done", t0.elapsed().as_secs_f64());
    a_killed_peer_is_blocked_then_resumes_on_a_new_epoch(&lab, vni);
    eprintln!("[{:.0} s] killed peer done", t0.elapsed().as_secs_f64());
    rotation_every_10s_under_ping_loses_nothing(&lab, vni);
    eprintln!("[{:.0} s] rotation done", t0.elapsed().as_secs_f64());
}

fn encrypted_ping_and_iperf_show_only_esp(lab: &VmLab) -> u32 {
    let net = lab.rnet_json(
        "h1",
        &[
            "network",
            "create",
            "sec",
            "--subnet",
            "10.78.0.0/24",
            "--encrypt",
            "ipsec",
        ],
    );
    let vni = net["vni"].as_u64().expect("vni") as u32;
    lab.run_workload("h1", "w1", "sec", W1, &["iperf3", "-s"]);
    lab.run_workload("h2", "w2", "sec", W2, &["sleep", "3600"]);
    wait_until("SAs installed both ways", NET_DEADLINE, || {
        installed(lab, "h1", "h2") && installed(lab, "h2", "h1")
    });
    // The SPIs the two hosts agree on: h1's outbound is h2's newest inbound, and back.
    let (a, b) = (peer_ipsec(lab, "h1", "h2"), peer_ipsec(lab, "h2", "h1"));
    let newest_in = |p: &serde_json::Value| p["inbound_spis"].as_array().unwrap().last().cloned();
    assert_eq!(Some(a["outbound_spi"].clone()), newest_in(&b), "{a} / {b}");
    assert_eq!(Some(b["outbound_spi"].clone()), newest_in(&a), "{a} / {b}");

    let cap = capture(lab);
    let ping = run_in(
        lab,
        "h2",
        "10.78.0.21",
        &["ping", "-q", "-c", "5", "-i", "0.2", "-W", "3", W1],
    );
    assert_eq!(received(&ping), (5, 5), "h2 -> h1: {ping:?}");
    let ping = run_in(
        lab,
        "h1",
        "10.78.0.11",
        &["ping", "-q", "-c", "5", "-i", "0.2", "-W", "3", W2],
    );
    assert_eq!(received(&ping), (5, 5), "h1 -> h2: {ping:?}");
    let iperf = run_in(
        lab,
        "h2",
        "10.78.0.22",
        &["iperf3", "-c", W1, "-t", "5", "-J"],
    );
    assert!(iperf.status.success(), "iperf3: {iperf:?}");
    let j: serde_json::Value = serde_json::from_slice(&iperf.stdout).expect("iperf3 JSON");
    let bps = j["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    let bytes = j["end"]["sum_received"]["bytes"].as_u64().unwrap();
    eprintln!(
        "iperf3 through IPsec (TCG): {:.1} Mbit/s, {bytes} bytes",
        bps / 1e6
    );
    assert!(bytes > 0);
    let seen = cap.finish();
    let esp = seen
        .frames
        .iter()
        .filter(|ip| ip.len() > 20 && ip[9] == 50)
        .count();
    eprintln!("capture: {esp} ESP packets, SPIs {:x?}", esp_spis(&seen));
    assert!(
        esp as u64 > bytes / 1500,
        "only {esp} ESP packets for {bytes} bytes"
    );
    let spis = esp_spis(&seen);
    for p in [&a, &b] {
        let out = p["outbound_spi"].as_u64().unwrap() as u32;
        assert!(
            spis.contains(&out),
            "SPI {out:#x} not on the wire: {spis:x?}"
        );
    }
    assert_nothing_in_clear(&seen, vni, "ping + iperf3");
    vni
}

/// h2's inbound SA from h1 gets another key by hand: h1's packets fail authentication on h2
/// (counted), until rnetd, which compares the kernel's keys with the derived ones, puts the
/// right key back (keeping the replay state), and traffic flows again.
fn a_tampered_key_fails_authentication_until_rnetd_restores_it(lab: &VmLab) {
    // Stop h2's rnetd (SIGTERM leaves the SAs) so the tampered key stays long enough to count.
    lab.exec_ok(
        "h2",
        &[
            "sh",
            "-c",
            "pkill -x rnetd; while pgrep -x rnetd >/dev/null; do sleep 0.2; done",
        ],
    );
    let inbound = sas(lab, "h2")
        .into_iter()
        .find(|s| s.src == H1)
        .expect("h2 has an SA from h1");
    let spi = format!("{:#010x}", inbound.spi);
    let bad_key = format!("0x{}", "5a".repeat(36));
    // `ip xfrm state update` keeps a valid SA's key: delete it and add it with another.
    let sh = format!(
        "ip xfrm state delete src 198.18.0.11 dst 198.18.0.12 proto esp spi {spi} && \\
         ip xfrm state add src 198.18.0.11 dst 198.18.0.12 proto esp spi {spi} \\
         reqid 0x726e6574 mode transport replay-window 32 \\
         sel src 198.18.0.11/32 dst 198.18.0.12/32 proto 17 dport 4799 \\
         aead 'rfc4106(gcm(aes))' {bad_key} 128"
    );
    lab.exec_ok("h2", &["sh", "-c", &sh]);
    let before = xfrm_stat(lab, "h2", "XfrmInStateProtoError");
    let ping = run_in(
        lab,
        "h1",
        "10.78.0.12",
        &["ping", "-q", "-c", "3", "-W", "1", W2],
    );
    assert_eq!(received(&ping).1, 0, "a wrong key still decrypts: {ping:?}");
    let after = xfrm_stat(lab, "h2", "XfrmInStateProtoError");
    eprintln!("tampered key: XfrmInStateProtoError {before} -> {after}");
    assert!(
        after > before,
        "authentication failures not counted ({before} -> {after})"
    );

    // rnetd restarts (same epoch of h1, so the same SA id) and must fix the key.
    let t = Instant::now();
    lab.restart_rnetd("h2", &[]);
    wait_until("h1 -> h2 to work again", NET_DEADLINE, || {
        received(&run_in(
            lab,
            "h1",
            "10.78.0.12",
            &["ping", "-q", "-c", "1", "-W", "2", W2],
        ))
        .1 == 1
    });
    eprintln!(
        "tampered key repaired, traffic back after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let log = lab.guest_log("h2", "rnetd");
    assert!(log.contains("key differs"), "no repair logged:\n{log}");
    // `doctor` plans like the loop, so it may name the step the loop is about to take
    // (h2's new epoch just acknowledged): it must settle clean.
    wait_until("h2's doctor to be clean", NET_DEADLINE, || {
        lab.rnet("h2", &["doctor"]).status.success()
    });
}

/// `kill -9` of h2's rnetd: once its presence expires h1 removes its SAs and policies, so
/// h1's flows to h2 hit the block (counted), nothing crosses in clear; a restart starts a new
/// epoch and traffic resumes, with h1 never installing the same outbound SA twice.
fn a_killed_peer_is_blocked_then_resumes_on_a_new_epoch(lab: &VmLab, vni: u32) {
    let out_before: BTreeSet<u32> = sas(lab, "h1")
        .iter()
        .filter(|s| s.dst == H2)
        .map(|s| s.spi)
        .collect();
    let epoch_before = lab.rnet_json("h2", &["status"])["ipsec"]["epoch"].clone();
    lab.exec_ok("h2", &["pkill", "-9", "-x", "rnetd"]);
    wait_until("h1 to drop h2's SAs", NET_DEADLINE, || {
        !sas(lab, "h1").iter().any(|s| s.src == H2 || s.dst == H2)
    });
    let blocked_before = xfrm_stat(lab, "h1", "XfrmOutPolBlock");
    let cap = capture(lab);
    // h1's flow to h2's underlay on the IPsec port: what the VXLAN device would send.
    let out = lab.exec(
        "h1",
        &[
            "sh",
            "-c",
            "echo clear | timeout 3 nc -u -w1 198.18.0.12 4799; exit 0",
        ],
    );
    let ping = run_in(
        lab,
        "h1",
        "10.78.0.13",
        &["ping", "-q", "-c", "3", "-W", "1", W2],
    );
    assert_eq!(
        received(&ping).1,
        0,
        "h2's workload reachable without SAs: {ping:?}"
    );
    let seen = cap.finish();
    assert_nothing_in_clear(&seen, vni, "killed peer");
    assert!(
        !seen.contains(b"clear\n"),
        "a datagram to port 4799 left in clear"
    );
    let blocked = xfrm_stat(lab, "h1", "XfrmOutPolBlock");
    eprintln!("killed peer: XfrmOutPolBlock {blocked_before} -> {blocked} ({out:?})");
    assert!(blocked > blocked_before, "blocked flows not counted");

    let t = Instant::now();
    lab.restart_rnetd("h2", &[]);
    wait_until("h1 -> h2 to resume", NET_DEADLINE, || {
        received(&run_in(
            lab,
            "h1",
            "10.78.0.13",
            &["ping", "-q", "-c", "1", "-W", "2", W2],
        ))
        .1 == 1
    });
    eprintln!(
        "killed peer: traffic back {:.1} s after restart",
        t.elapsed().as_secs_f64()
    );
    let epoch_after = lab.rnet_json("h2", &["status"])["ipsec"]["epoch"].clone();
    assert_ne!(epoch_before, epoch_after, "h2 restarted on its old epoch");
    let out_after: BTreeSet<u32> = sas(lab, "h1")
        .iter()
        .filter(|s| s.dst == H2)
        .map(|s| s.spi)
        .collect();
    assert!(
        out_after.is_disjoint(&out_before),
        "h1 re-installed an outbound SA it used before (nonce reuse): {out_before:x?} / {out_after:x?}"
    );
}

/// Both daemons rotate every 10 s; a 30 s ping at 5/s crosses several rotations of both.
fn rotation_every_10s_under_ping_loses_nothing(lab: &VmLab, vni: u32) {
    for h in ["h1", "h2"] {
        lab.restart_rnetd(h, &["--ipsec-rotate-every", "10"]);
    }
    wait_until("SAs installed both ways", NET_DEADLINE, || {
        installed(lab, "h1", "h2") && installed(lab, "h2", "h1")
    });
    let first: BTreeSet<Sa> = sas(lab, "h1").into_iter().collect();
    let counters_before = rotation_counters(lab);
    let cap = capture(lab);
    let ping = run_in(
        lab,
        "h2",
        "10.78.0.23",
        &["ping", "-q", "-c", "150", "-i", "0.2", "-W", "3", W1],
    );
    let seen = cap.finish();
    let (sent, got) = received(&ping);
    // Which side dropped, if any: an SPI with no SA (an inbound SA removed too early), or
    // outbound blocked / without a state (an outbound switch too early).
    for ((host, before), (_, after)) in counters_before.iter().zip(rotation_counters(lab)) {
        let grew: Vec<String> = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| a.1 > b.1)
            .map(|(b, a)| format!("{} +{}", b.0, a.1 - b.1))
            .collect();
        eprintln!("rotation: {host} xfrm_stat grew: {grew:?}");
    }
    // A lapsed lease tears the peer's SAs down (fail closed): name it if pings were lost.
    let lapses = lease_lapses(lab);
    if got < sent && lapses > 0 {
        eprintln!("rotation: {lapses} host lease lapse(s) in the rnetd logs");
    }
    let spis = esp_spis(&seen);
    eprintln!(
        "rotation: {got}/{sent} pings answered, {} SPIs on the wire: {spis:x?}",
        spis.len()
    );
    assert_eq!((sent, got), (150, 150), "pings lost across rotations");
    // Two directions, at least three epochs each in 30 s of 10 s rotations.
    assert!(spis.len() >= 6, "SPIs changed too rarely: {spis:x?}");
    assert_nothing_in_clear(&seen, vni, "rotation");
    // Old SAs go after the grace (half the period: 5 s): the first ones are gone and at
    // most the current and one retiring inbound SA per peer remain.
    wait_until("the first SAs to go", Duration::from_secs(30), || {
        let now = sas(lab, "h1");
        now.iter().all(|s| !first.contains(s)) && now.iter().filter(|s| s.dst == H1).count() <= 2
    });
}
