//! Checks the integration-test harness itself (tests/common), without an rnetd: if these fail,
//! every other root test's failure is suspect.
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    links_in, mounts_under, parse_ip_o_link, snmp_counter, unescape_mountinfo, wait_until, Host,
};

/// Names under /run/netns, as `ip netns list` prints them.
fn netns_names() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn parses_ip_link_and_mountinfo_text() {
    let text = "1: lo: <LOOPBACK,UP> mtu 65536\n5: veth1@if4: <BROADCAST> mtu 1450\n";
    assert_eq!(parse_ip_o_link(text), ["lo", "veth1"]);
    assert_eq!(unescape_mountinfo(r"/tmp/a\040b\134c"), r"/tmp/a b\c");
    assert_eq!(unescape_mountinfo(r"/plain\x"), r"/plain\x");
}

#[test]
fn reads_one_counter_of_proc_net_snmp() {
    let text = "Icmp: InMsgs InErrors InEchoReps\nIcmp: 7 0 5\n\
                IcmpMsg: InType0\nIcmpMsg: 5\n\
                Tcp: RtoAlgorithm InSegs\nTcp: 1 1234\n";
    assert_eq!(snmp_counter(text, "Icmp", "InEchoReps"), 5);
    assert_eq!(snmp_counter(text, "Tcp", "InSegs"), 1234);
    assert_eq!(snmp_counter(text, "Tcp", "OutSegs"), 0);
    assert_eq!(snmp_counter(text, "Udp", "InDatagrams"), 0);
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: run with --features root-tests"
)]
fn host_has_underlay_and_workload_netns_is_removed_on_drop() {
    let host = Host::new("self");
    let out = host.exec(&["ip", "-4", "-o", "addr"]);
    assert!(out.status.success(), "ip addr in host netns failed");
    let addrs = String::from_utf8_lossy(&out.stdout);
    let want = format!("inet {}/15", host.underlay());
    assert!(
        addrs.contains(&want),
        "no `{want}` on the host; got:\n{addrs}"
    );
    assert!(addrs
        .lines()
        .any(|l| l.contains(" ul0 ") && l.contains(&want)));
    let octets = host.underlay().octets();
    assert!(
        octets[0] == 198 && (octets[1] & 0xfe) == 18,
        "underlay outside 198.18.0.0/15"
    );

    let links = links_in(&host.netns_path());
    assert!(
        links.iter().any(|l| l == "ul0") && links.iter().any(|l| l == "lo"),
        "{links:?}"
    );
    let route = host.exec(&["ip", "-4", "route", "show", "default"]);
    assert!(String::from_utf8_lossy(&route.stdout).contains("dev ul0"));

    let w = host.new_workload("w");
    let (name, path) = (w.name().to_string(), w.path());
    assert!(path.exists() && netns_names().contains(&name));
    assert_eq!(w.links(), ["lo"], "a fresh workload has only lo");
    // The workload is isolated: the host's underlay is unreachable from it.
    assert!(!w.ping(&host.underlay().to_string(), 1));
    drop(w);
    assert!(!path.exists(), "{} still exists after drop", path.display());
    assert!(!netns_names().contains(&name));

    let host_path = host.netns_path();
    drop(host);
    assert!(!host_path.exists(), "host netns survived drop");
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: run with --features root-tests"
)]
fn host_drop_unmounts_run_dir_and_removes_temp_dir() {
    let host = Host::new("mnt");
    let dir = host.dir().to_path_buf();
    // Stand in for rnetd's namespace bind mounts: a netns file bind-mounted under the run dir.
    let target = host.run_dir().join("netns").join("sandbox");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::File::create(&target).unwrap();
    nix::mount::mount(
        Some(&host.netns_path()),
        &target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind-mount a netns file");
    assert_eq!(
        mounts_under(&host.run_dir()),
        [target.canonicalize().unwrap()]
    );

    drop(host);
    assert!(
        mounts_under(Path::new(&dir)).is_empty(),
        "mounts left under {}",
        dir.display()
    );
    assert!(!dir.exists(), "{} not removed", dir.display());
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: run with --features root-tests"
)]
fn two_hosts_get_distinct_netns_and_underlays() {
    let (a, b) = (Host::new("a"), Host::new("b"));
    assert_ne!(a.netns_name(), b.netns_name());
    assert_ne!(a.underlay(), b.underlay());
}

#[test]
fn wait_until_polls_then_times_out() {
    let mut n = 0;
    wait_until("three polls", Duration::from_secs(5), || {
        n += 1;
        n == 3
    });
    assert_eq!(n, 3);
    let panicked =
        std::panic::catch_unwind(|| wait_until("never", Duration::from_millis(50), || false));
    let msg = *panicked
        .expect_err("must time out")
        .downcast::<String>()
        .unwrap();
    assert!(msg.contains("never"), "{msg}");
}
