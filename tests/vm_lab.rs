//! `rnet lab up --vm` end to end: QEMU guests running Debian 12's kernel come up with etcd and
//! rnetd, `lab exec` carries exit codes and bytes both ways, the guests' kernel has ESP and
//! WireGuard, an rnet network joins workloads across guests, a cut link isolates a guest until
//! restored, and `lab down` leaves nothing (also after a crash lost the lab's configuration).
//!
//! One lab serves the whole scenario: each boot costs tens of seconds under TCG.
mod common;

use std::net::SocketAddrV4;
use std::path::Path;
use std::time::{Duration, Instant};

use common::lab::unique_name;
use common::pcap::Capture;
use common::vmlab::{processes_naming, VmLab};
use common::{mounts_under, wait_until};

/// Deadline for anything that crosses the guests' network under TCG.
const NET_DEADLINE: Duration = Duration::from_secs(120);

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn two_guests_run_rnet_across_a_cuttable_link_and_leave_nothing_behind() {
    let Some(mut lab) = VmLab::up(2) else { return };
    eprintln!("vm lab up took {:.1} s", lab.up_time.as_secs_f64());
    let dir = lab.dir();

    every_guest_is_healthy(&lab);
    exec_round_trips_status_and_bytes(&lab);
    guest_kernel_has_esp_and_wireguard(&lab);
    rnetd_gets_the_store_deadline_of_its_accelerator(&lab);
    rnetd_restarts_with_other_flags(&lab);
    workloads_ping_across_guests(&lab);
    a_workload_that_cannot_attach_fails_where_it_starts(&lab);
    a_cut_link_isolates_until_restored(&lab);
    down_after_a_crash_leaves_nothing(&mut lab, &dir);
}

fn every_guest_is_healthy(lab: &VmLab) {
    let s = lab.status();
    assert_eq!(s["vm"], true, "{s}");
    let hosts = s["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 2);
    for h in hosts {
        for key in ["alive", "agent", "api", "link_up"] {
            assert_eq!(h[key], true, "{key} of {h}");
        }
    }
    // Both daemons registered in the one etcd on h1: each sees the other as a live peer.
    wait_until("h2 to see h1 live", NET_DEADLINE, || {
        let peers = lab.rnet_ok("h2", &["peers"]);
        peers
            .lines()
            .any(|l| l.starts_with("h1 ") && l.contains(" live "))
    });
}

fn exec_round_trips_status_and_bytes(lab: &VmLab) {
    let out = lab.exec(
        "h1",
        &["sh", "-c", "printf 'a\\000b\\n'; echo oops >&2; exit 7"],
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(out.stdout, b"a\0b\n");
    assert_eq!(out.stderr, b"oops\n");
    assert_eq!(lab.exec_ok("h2", &["hostname"]).trim(), "h2");

    let input: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let out = lab.exec_stdin("h2", &["cat"], &input);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout == input,
        "stdin did not round-trip ({} bytes back)",
        out.stdout.len()
    );

    // Hostile cases: a missing program, a hung one, an unknown guest.
    assert_eq!(
        lab.exec("h1", &["/no/such/program"]).status.code(),
        Some(127)
    );
    let t = Instant::now();
    let hung = lab.rnet_lab(&["exec", "--timeout", "2", "h1", "--", "sleep", "60"]);
    assert_eq!(hung.status.code(), Some(124), "{hung:?}");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "timeout not enforced"
    );
    let bad = lab.exec("h9", &["true"]);
    assert_eq!(bad.status.code(), Some(125));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("no host h9") && err.contains("h1, h2"),
        "{err}"
    );
}

fn guest_kernel_has_esp_and_wireguard(lab: &VmLab) {
    let out = lab.exec_ok(
        "h1",
        &[
            "sh",
            "-c",
            "modprobe esp4 && modprobe wireguard && cat /proc/modules",
        ],
    );
    assert!(out.lines().any(|l| l.starts_with("esp4 ")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("wireguard ")), "{out}");
}

/// rnetd's command line in guest `host`, arguments separated by spaces.
fn rnetd_cmdline(lab: &VmLab, host: &str) -> String {
    lab.exec_ok(
        host,
        &["sh", "-c", "tr '\\0' ' ' < /proc/$(pgrep -x rnetd)/cmdline"],
    )
}

/// Emulated guests (TCG) answer etcd calls slowly: their rnetd gets a longer store deadline,
/// KVM guests the default.
fn rnetd_gets_the_store_deadline_of_its_accelerator(lab: &VmLab) {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.dir().join("vm.json")).unwrap()).unwrap();
    for h in ["h1", "h2"] {
        let args = rnetd_cmdline(lab, h);
        match cfg["accel"].as_str() {
            Some("tcg") => assert!(args.contains("--store-timeout 15 "), "{h}: {args}"),
            Some("kvm") => assert!(!args.contains("--store-timeout"), "{h}: {args}"),
            other => panic!("vm.json names no accelerator: {other:?}"),
        }
    }
}

/// Tests of other features restart a guest's rnetd with their own flags (e.g. another
/// encryption backend); the restarted daemon must be the one with the new flag.
fn rnetd_restarts_with_other_flags(lab: &VmLab) {
    let before = rnetd_cmdline(lab, "h2");
    lab.restart_rnetd("h2", &["--resync", "17"]);
    let args = rnetd_cmdline(lab, "h2");
    // The restarted daemon keeps `lab up`'s flags (the store deadline among them).
    assert!(args.starts_with(&before), "{before} -> {args}");
    assert!(
        args.contains("--host-id h2") && args.ends_with("--resync 17 "),
        "{args}"
    );
}

fn workloads_ping_across_guests(lab: &VmLab) {
    lab.rnet_ok(
        "h1",
        &["network", "create", "vnet", "--subnet", "10.77.0.0/24"],
    );
    lab.run_workload("h1", "w1", "vnet", "10.77.0.10", &["sleep", "3600"]);
    let argv = [
        "rnet",
        "run",
        "vnet",
        "--ip",
        "10.77.0.20",
        "--",
        "ping",
        "-c",
        "3",
        "-W",
        "3",
        "10.77.0.10",
    ];
    // The lab's L2 is capturable from the machine: the pings cross br0 as VXLAN.
    let sentinel: SocketAddrV4 = "198.18.0.11:9".parse().unwrap();
    let cap = Capture::start(&lab.netns(), "br0", sentinel);
    let out = lab.exec("h2", &argv);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cross-guest ping failed: {out:?}");
    assert!(text.contains("3 received"), "{text}");
    let seen = cap.finish();
    assert!(seen.vxlan_vnis().contains(&4096), "{:?}", seen.vxlan_vnis());
}

/// A workload whose attach fails (here: an address outside the network) stops the test
/// where it was started, naming it and showing why, not at a later check of the network.
fn a_workload_that_cannot_attach_fails_where_it_starts(lab: &VmLab) {
    eprintln!("(the next panic is expected)");
    let started = std::time::Instant::now();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        lab.run_workload("h2", "stray", "vnet", "10.99.0.5", &["sleep", "3600"])
    }));
    let took = started.elapsed();
    let payload = caught.expect_err("a workload outside the subnet was started");
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        msg.contains("h2: workload stray (rnet run vnet --ip 10.99.0.5") && msg.contains("exited"),
        "{msg}"
    );
    // Its log, rnet run's own error, is in the message.
    assert!(msg.contains("address 10.99.0.5 is outside subnet"), "{msg}");
    assert!(took < NET_DEADLINE, "noticed only after {took:?}");
}

fn a_cut_link_isolates_until_restored(lab: &VmLab) {
    assert!(lab.ping("h2", "198.18.0.11"));
    lab.link("h2", false);
    assert!(
        !lab.ping("h2", "198.18.0.11"),
        "h2 still reaches h1 with its link down"
    );
    assert!(
        !lab.ping("h1", "198.18.0.12"),
        "h1 still reaches h2's cut link"
    );
    assert_eq!(lab.status()["hosts"][1]["link_up"], false);
    lab.link("h2", true);
    wait_until("h2 to reach h1 again", NET_DEADLINE, || {
        lab.ping("h2", "198.18.0.11")
    });
    assert_eq!(lab.status()["hosts"][1]["link_up"], true);
}

/// A crash that lost `vm.json` must not strand a QEMU: `down` finds them by pid file. Then
/// nothing is left: no QEMU, no mount (the lab namespace and its bridge and taps), no directory;
/// and a second `down` is a no-op.
fn down_after_a_crash_leaves_nothing(lab: &mut VmLab, dir: &Path) {
    let needle = dir.display().to_string();
    assert_eq!(processes_naming(&needle).len(), 2, "two QEMUs expected");
    std::fs::remove_file(dir.join("vm.json")).unwrap();
    let out = lab.down();
    assert!(out.contains("stopped QEMU of guest h1"), "{out}");
    wait_until("every QEMU to exit", Duration::from_secs(30), || {
        processes_naming(&needle).is_empty()
    });
    assert!(mounts_under(dir).is_empty(), "{:?}", mounts_under(dir));
    assert!(!dir.exists(), "{} still exists", dir.display());
    let again = lab.rnet_lab(&["down"]);
    assert!(again.status.success(), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to remove"));
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn bad_vm_lab_requests_fail_clearly_and_build_nothing() {
    common::require_root();
    let name = unique_name();
    let dir = Path::new("/run/rnet/lab").join(&name);
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rnet"))
            .args(["lab", "--name", &name])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["up", "--accel", "tcg"]);
    assert!(!out.status.success(), "--accel without --vm accepted");
    assert!(!dir.exists());
    let out = run(&["up", "--vm", "--hosts", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--hosts must be between 1 and 16"), "{err}");
    assert!(!dir.exists(), "a refused lab left {}", dir.display());
    if let Some(why) = common::vmlab::qemu_missing() {
        eprintln!("\n*** SKIPPED the rest: {why} ***\n");
        return;
    }
    let out = run(&["up", "--vm", "--bin-dir", "/nonexistent", "--hosts", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rnet not found in /nonexistent"), "{err}");
    assert!(!dir.exists());
}
