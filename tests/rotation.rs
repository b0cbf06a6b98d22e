//! WireGuard key rotation under load, make-before-break: each tunnel keeps its old session
//! until the session under the new key has a handshake, so a running iperf3 flow across an
//! encrypted network loses no moment while both hosts rotate their keys.
mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::Lab;
use common::{wait_until, ChildGuard, Workload};
use serde_json::Value;

const FAST: &[&str] = &["--lease-ttl", "2", "--probe-window", "2", "--resync", "2"];
/// iperf3's reporting interval: a pause of a TCP retransmission timeout (200 ms at least)
/// or longer leaves an interval empty.
const INTERVAL: &str = "0.2";

fn peer_tunnel(lab: &Lab, from: &str, to: &str) -> Value {
    let peers = lab.host_rnet_json(from, &["peers"]);
    peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["host"] == to)
        .unwrap_or_else(|| panic!("no peer {to} in {peers}"))["tunnel"]
        .clone()
}

/// Rotate `host`'s key and wait until `other` has taken the new one and both tunnels are up.
fn rotate(lab: &Lab, host: &str, other: &str) -> Duration {
    let at = Instant::now();
    let info = lab.host_rnet_json(host, &["rotate-key"]);
    let key = info["public_key"]
        .as_str()
        .expect("new public key")
        .to_string();
    wait_until(
        &format!("{other} accepts {host}'s new key {key}"),
        Duration::from_secs(20),
        || {
            lab.log(other)
                .lines()
                .any(|l| l.contains("accepted a new WireGuard key") && l.contains(&key))
                && peer_tunnel(lab, host, other)["up"] == true
                && peer_tunnel(lab, other, host)["up"] == true
        },
    );
    at.elapsed()
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn an_iperf3_flow_loses_no_interval_while_both_hosts_rotate_their_keys() {
    let lab = Lab::up(2, FAST);
    lab.host_rnet_json(
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
    let (a, b) = (Workload::new("a"), Workload::new("b"));
    lab.attach("h1", "sec", &a.path());
    let ipb = lab.attach("h2", "sec", &b.path());
    wait_until("a reaches b", Duration::from_secs(10), || a.ping(&ipb, 1));
    let _server = ChildGuard(
        Command::new("nsenter")
            .arg(format!("--net={}", b.path().display()))
            .args(["--", "iperf3", "-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("iperf3 server listens", Duration::from_secs(10), || {
        a.exec(&["bash", "-c", &format!("exec 3<>/dev/tcp/{ipb}/5201")])
            .status
            .success()
    });
    let client = Command::new("nsenter")
        .arg(format!("--net={}", a.path().display()))
        .args(["--", "iperf3", "-c", &ipb, "-t", "14", "-b", "100M"])
        .args(["-i", INTERVAL, "-J"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut client = ChildGuard(client);
    // The flow runs before the first rotation: h1 has sent a few MB through the tunnel.
    let sent = |lab: &Lab| {
        peer_tunnel(lab, "h1", "h2")["tx_bytes"]
            .as_u64()
            .unwrap_or(0)
    };
    let base = sent(&lab);
    wait_until("the flow runs", Duration::from_secs(10), || {
        sent(&lab) > base + 5_000_000
    });
    let took = [rotate(&lab, "h1", "h2"), rotate(&lab, "h2", "h1")];
    assert!(
        client.0.try_wait().unwrap().is_none(),
        "the flow ended before both rotations did ({took:?}); nothing was shown"
    );
    let mut out = Vec::new();
    client
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    assert!(
        client.0.wait().unwrap().success(),
        "iperf3 failed: {}",
        String::from_utf8_lossy(&out)
    );
    let report: Value = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("iperf3 output: {e}: {}", String::from_utf8_lossy(&out)));
    let rates: Vec<f64> = report["intervals"]
        .as_array()
        .unwrap_or_else(|| panic!("no intervals in {report}"))
        .iter()
        .map(|i| i["sum"]["bits_per_second"].as_f64().unwrap())
        .collect();
    eprintln!(
        "rotations took {took:?}; {} intervals of {INTERVAL} s, slowest {:.1} Mbit/s",
        rates.len(),
        rates.iter().cloned().fold(f64::INFINITY, f64::min) / 1e6
    );
    let empty: Vec<usize> = (0..rates.len()).filter(|i| rates[*i] == 0.0).collect();
    assert!(
        empty.is_empty(),
        "intervals {empty:?} (of {INTERVAL} s) carried nothing: {rates:?}"
    );
    assert!(
        rates.len() >= 60,
        "only {} intervals: {rates:?}",
        rates.len()
    );
}
