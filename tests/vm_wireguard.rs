//! Kernel WireGuard in the VM lab: guest h1 runs the kernel backend (chosen by `auto`: its
//! Debian kernel has the module), guest h2 is forced to boringtun. They read the same store
//! records, handshake with each other, carry an encrypted network both ways, and the lab's
//! L2 sees only WireGuard for it (no VXLAN in clear). A key rotation on the kernel host is
//! followed by a fresh session. The guests run under TCG, so every deadline is generous.
mod common;

use std::net::SocketAddrV4;
use std::time::Duration;

use common::pcap::Capture;
use common::vmlab::VmLab;
use common::wait_until;
use serde_json::Value;

const NET_DEADLINE: Duration = Duration::from_secs(120);
const SUBNET: &str = "10.79.0.0/24";

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_kernel_wireguard_host_and_a_boringtun_host_carry_an_encrypted_network_both_ways() {
    let Some(lab) = VmLab::up(2) else { return };
    eprintln!("vm lab up took {:.1} s", lab.up_time.as_secs_f64());
    // The guests' init loads no TUN driver (nothing needed it before): boringtun needs
    // /dev/net/tun, which devtmpfs makes once the module is in.
    lab.exec_ok("h2", &["modprobe", "tun"]);
    lab.restart_rnetd("h2", &["--wireguard-backend", "userspace"]);

    // Each says which backend runs, in JSON and in the table.
    let backend = |h: &str| lab.rnet_json(h, &["status"])["wireguard"]["backend"].clone();
    assert_eq!(
        backend("h1"),
        "kernel",
        "{}",
        lab.rnet_ok("h1", &["status"])
    );
    assert_eq!(
        backend("h2"),
        "userspace",
        "{}",
        lab.rnet_ok("h2", &["status"])
    );
    assert!(lab
        .rnet_ok("h1", &["status"])
        .contains("WireGuard (kernel): port 51820"));
    assert!(lab
        .rnet_ok("h2", &["status"])
        .contains("WireGuard (userspace (boringtun))"));
    // The kernel device sits in the tunnel namespace, not beside the underlay.
    let links = lab.exec_ok(
        "h1",
        &[
            "nsenter",
            "--net=/run/rnet/netns/wg",
            "ip",
            "-d",
            "link",
            "show",
            "rnet-wg0",
        ],
    );
    assert!(links.contains("wireguard"), "{links}");

    lab.rnet_ok(
        "h1",
        &[
            "network",
            "create",
            "enc",
            "--subnet",
            SUBNET,
            "--encrypt",
            "wireguard",
        ],
    );
    let vni = find_number(&lab.rnet_json("h1", &["network", "inspect", "enc"]), "vni")
        .expect("the network's VNI");
    wait_until("both tunnels up", NET_DEADLINE, || {
        tunnel(&lab, "h1", "h2")["up"] == true && tunnel(&lab, "h2", "h1")["up"] == true
    });
    assert_eq!(tunnel(&lab, "h1", "h2")["backend"], "kernel");
    assert_eq!(tunnel(&lab, "h2", "h1")["backend"], "userspace");
    assert!(lab
        .rnet_ok("h1", &["peers"])
        .contains("WireGuard backend: kernel"));

    for (host, ip) in [("h1", "10.79.0.10"), ("h2", "10.79.0.20")] {
        let tag = format!("sleeper-{host}");
        lab.run_workload(host, &tag, "enc", ip, &["sleep", "3600"]);
    }

    let sentinel: SocketAddrV4 = "198.18.0.11:9".parse().unwrap();
    let cap = Capture::start(&lab.netns(), "br0", sentinel);
    // Kernel → boringtun, then boringtun → kernel.
    ping_from(&lab, "h1", "10.79.0.11", "10.79.0.20");
    ping_from(&lab, "h2", "10.79.0.21", "10.79.0.10");
    let seen = cap.finish();
    let wg = seen.wireguard();
    let (h1, h2) = ("198.18.0.11", "198.18.0.12");
    for (from, to) in [(h1, h2), (h2, h1)] {
        assert!(
            wg.iter()
                .any(|u| u.src.to_string() == from && u.dst.to_string() == to),
            "no WireGuard datagram {from} -> {to}"
        );
    }
    assert!(
        !seen.vxlan_vnis().contains(&(vni as u32)),
        "VXLAN of VNI {vni} crossed the lab's L2 in clear: {:?}",
        seen.vxlan_vnis()
    );
    assert!(seen.vxlan_vnis().is_empty(), "{:?}", seen.vxlan_vnis());

    // A rotated key on the kernel host: the boringtun host reads it from the store and a
    // new session carries traffic again.
    let before = lab.rnet_json("h1", &["status"])["wireguard"]["public_key"].clone();
    lab.rnet_ok("h1", &["rotate-key"]);
    let after = lab.rnet_json("h1", &["status"])["wireguard"]["public_key"].clone();
    assert_ne!(before, after, "rotate-key kept the key");
    wait_until("h2's tunnel to h1 up again", NET_DEADLINE, || {
        tunnel(&lab, "h2", "h1")["up"] == true && tunnel(&lab, "h1", "h2")["up"] == true
    });
    ping_from(&lab, "h2", "10.79.0.22", "10.79.0.10");
}

/// The tunnel from `from` to peer `to`, as `rnet peers -o json` on `from` says.
fn tunnel(lab: &VmLab, from: &str, to: &str) -> Value {
    let peers = lab.rnet_json(from, &["peers"]);
    peers
        .as_array()
        .expect("peers")
        .iter()
        .find(|p| p["host"] == to)
        .map(|p| p["tunnel"].clone())
        .unwrap_or(Value::Null)
}

/// A workload at `ip` on `host` pings `to` across the encrypted network until three echoes
/// come back (`-w`: at most 30 s). The workload is new, so the first echoes may be lost
/// while its record reaches the other host, which answers its ARP from that record only
/// then (under TCG that took over two seconds once).
fn ping_from(lab: &VmLab, host: &str, ip: &str, to: &str) {
    let argv = [
        "rnet", "run", "enc", "--ip", ip, "--", "ping", "-c", "3", "-w", "30", to,
    ];
    let out = lab.exec(host, &argv);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("3 received"),
        "{host} ({ip}) -> {to} failed: {out:?}"
    );
}

/// The first number under `key` anywhere in `v`.
fn find_number(v: &Value, key: &str) -> Option<u64> {
    match v {
        Value::Object(m) => m
            .get(key)
            .and_then(Value::as_u64)
            .or_else(|| m.values().find_map(|x| find_number(x, key))),
        Value::Array(a) => a.iter().find_map(|x| find_number(x, key)),
        _ => None,
    }
}
