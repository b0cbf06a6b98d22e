//! `rnetd --wireguard-backend` on this machine's kernel, which has no WireGuard module:
//! `kernel` stops rnetd at once, naming the missing module, having made nothing; `auto`
//! falls back to boringtun and says so in `rnet status`. (The kernel backend itself runs in
//! the VM lab: tests/vm_wireguard.rs.)
mod common;

use std::process::Command;
use std::time::Duration;

use common::{links_in, output_with_timeout, Host};

/// Whether this kernel has WireGuard (then the fallback cases cannot be shown here).
fn kernel_has_wireguard() -> bool {
    if rnet::wireguard::kernel::probe().is_ok() {
        eprintln!(
            "\n*** SKIPPED: this kernel has WireGuard; the VM lab tests the kernel backend ***\n"
        );
        return true;
    }
    false
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_forced_kernel_backend_without_the_module_stops_rnetd_naming_it_and_makes_nothing() {
    common::require_root();
    if kernel_has_wireguard() {
        return;
    }
    let host = Host::new("wgkern");
    let before = links_in(&host.netns_path());
    let (sock, state, run) = (host.socket(), host.state_dir(), host.run_dir());
    let underlay = host.underlay().to_string();
    let netns = format!("--net={}", host.netns_path().display());
    let mut cmd = Command::new("nsenter");
    cmd.args([netns.as_str(), "--", env!("CARGO_BIN_EXE_rnetd")])
        .arg("--socket")
        .arg(&sock)
        .arg("--state-dir")
        .arg(&state)
        .arg("--run-dir")
        .arg(&run)
        .args([
            "--host-id",
            "wgkern",
            "--underlay",
            &underlay,
            "--docker-plugin-dir",
            "none",
            "--wireguard-backend",
            "kernel",
        ]);
    let out = output_with_timeout(&mut cmd, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "rnetd started without the module: {err}"
    );
    assert!(
        err.contains("--wireguard-backend kernel") && err.contains("no wireguard module"),
        "{err}"
    );
    assert!(!state.exists(), "{} was made", state.display());
    assert!(
        !run.join("netns").exists(),
        "a namespace directory was made"
    );
    assert!(!sock.exists(), "a socket was made");
    assert_eq!(links_in(&host.netns_path()), before, "a link was made");

    // A backend that does not exist is refused by name too.
    let out = output_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_rnetd")).args(["--wireguard-backend", "wg-go"]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wg-go") && err.contains("auto, kernel, userspace"),
        "{err}"
    );
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn auto_falls_back_to_boringtun_and_status_says_so() {
    common::require_root();
    if kernel_has_wireguard() {
        return;
    }
    let mut host = Host::new("wgauto");
    host.start_daemon(); // --wireguard-backend auto is the default
    let wg = &host.rnet_json(&["status"])["wireguard"];
    assert_eq!(wg["available"], true, "{wg}");
    assert_eq!(wg["backend"], "userspace", "{wg}");
    let text = host.rnet_ok(&["status"]);
    assert!(
        text.contains("WireGuard (userspace (boringtun)): port"),
        "{text}"
    );
    // The userspace TAP device is the tunnel device: no kernel WireGuard device was left
    // behind.
    let tunnel_ns = host.run_dir().join("netns").join("wg");
    let links = Command::new("nsenter")
        .arg(format!("--net={}", tunnel_ns.display()))
        .args(["ip", "-d", "link", "show", "rnet-wg0"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(links.contains("tun type tap"), "{links}");
    assert!(!links.contains("wireguard"), "{links}");

    // Forced userspace is the same, and so is a restart over the previous run's state.
    host.kill_daemon(nix::sys::signal::Signal::SIGTERM);
    host.start_daemon_with(&["--wireguard-backend", "userspace"]);
    assert_eq!(
        host.rnet_json(&["status"])["wireguard"]["backend"],
        "userspace"
    );
    host.kill_daemon(nix::sys::signal::Signal::SIGTERM);
}
