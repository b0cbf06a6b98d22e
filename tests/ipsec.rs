//! IPsec mode (`--encrypt ipsec`) on this machine's kernel, which has XFRM but no ESP
//! (no esp4): rnetd says so, creating or attaching to an IPsec network fails naming the
//! missing kernel feature and changes nothing, and the XFRM programming this kernel accepts
//! (the catch-all block policies, the per-peer ESP policies, their removal) is done through
//! rnet's own netlink code and read back with `ip xfrm`. On a kernel with ESP the same tests
//! check the opposite (IPsec available), so neither case passes by asserting nothing.
mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use common::Host;
use rnet::ipsec::plan::{self, Book, Me, Op, Peer};
use rnet::ipsec::xfrm::{self, Action, Dir, PolicySpec, Xfrm};
use rnet::ipsec::Aead;
use rnet::model::IpsecInfo;
use serde_json::Value;

/// Whether this kernel runs ESP (rnet's own probe, in a throwaway namespace).
fn kernel_has_esp() -> bool {
    rnet::ipsec::probe::probe(true).is_ok()
}

/// `ip xfrm ARGS` in the namespace at `netns` (inspection only).
fn ip_xfrm_in(netns: &Path, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["--", "ip", "xfrm"])
        .args(args)
        .output()
        .expect("run ip xfrm");
    assert!(out.status.success(), "ip xfrm {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const NO_ESP: &str =
    "the kernel has no ESP support (esp4 module): IPsec mode cannot run on this host";

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn without_esp_creating_an_ipsec_network_fails_naming_esp_and_creates_nothing() {
    let mut host = Host::new("ipsec-create");
    host.start_daemon();
    let status = host.rnet_json(&["status"]);
    let ipsec = &status["ipsec"];
    if kernel_has_esp() {
        eprintln!("NOTE: this kernel has ESP; checking that IPsec mode is available instead");
        assert_eq!(ipsec["available"], true, "{ipsec}");
        let net = host.rnet_json(&[
            "create",
            "sec",
            "--subnet",
            "10.94.0.0/24",
            "--encrypt",
            "ipsec",
        ]);
        assert_eq!(net["encryption"], "ipsec");
        return;
    }
    assert_eq!(ipsec["available"], false, "{ipsec}");
    assert_eq!(ipsec["error"], NO_ESP, "{ipsec}");
    let human = host.rnet_ok(&["status"]);
    assert!(
        human.contains(&format!("IPsec: unavailable ({NO_ESP})")),
        "{human}"
    );

    let out = host.rnet(&[
        "create",
        "sec",
        "--subnet",
        "10.94.0.0/24",
        "--encrypt",
        "ipsec",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "created: {out:?}");
    assert!(
        err.contains(&format!("cannot create IPsec network sec: {NO_ESP}")),
        "{err}"
    );
    assert_eq!(
        host.rnet_json(&["ls"]),
        Value::Array(vec![]),
        "nothing created"
    );
    // Nothing of IPsec reached the host's kernel either.
    assert_eq!(ip_xfrm_in(&host.netns_path(), &["policy"]), "");
    assert_eq!(ip_xfrm_in(&host.netns_path(), &["state"]), "");
    // Plain and WireGuard networks still work on this host.
    host.rnet_ok(&["create", "clear", "--subnet", "10.95.0.0/24"]);
    // A typo is told apart from a missing kernel feature.
    let out = host.rnet(&[
        "create",
        "x",
        "--subnet",
        "10.96.0.0/24",
        "--encrypt",
        "ipsecc",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"none\", \"wireguard\" or \"ipsec\""));
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn without_esp_attaching_to_an_ipsec_network_made_elsewhere_fails_and_leaves_nothing() {
    if kernel_has_esp() {
        eprintln!("NOTE: this kernel has ESP; the no-ESP attach refusal cannot be shown here");
        assert!(rnet::ipsec::probe::probe(false).is_ok());
        return;
    }
    // The record a host with ESP made, as the store holds it.
    let mut host = Host::new("ipsec-attach");
    std::fs::create_dir_all(host.state_dir()).unwrap();
    let net = rnet::model::Network {
        name: "sec".parse().unwrap(),
        id: "00000000000000ab".parse().unwrap(),
        vni: rnet::model::Vni::new(4242).unwrap(),
        subnet: "10.97.0.0/24".parse().unwrap(),
        gateway: "10.97.0.1".parse().unwrap(),
        mtu: 1410,
        encryption: rnet::model::Encryption::Ipsec,
        allow_overlap: false,
        egress: true,
        internal: false,
    };
    {
        use rnet::store::{keys, EmbeddedStore, Store};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = EmbeddedStore::open(&host.state_dir().join("store.redb")).unwrap();
            store
                .put(
                    &keys::network("sec"),
                    serde_json::to_vec(&net).unwrap(),
                    None,
                )
                .await
                .unwrap();
            store
                .put(&keys::vni(4242), b"sec".to_vec(), None)
                .await
                .unwrap();
        });
    }
    host.start_daemon();
    let ls = host.rnet_json(&["ls"]);
    assert!(ls.to_string().contains("\"encryption\":\"ipsec\""), "{ls}");
    let w = host.new_workload("w");
    let path = w.path().display().to_string();
    let out = host.rnet(&["attach", "sec", "--netns", &path]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "attached: {out:?}");
    assert!(
        err.contains(&format!("cannot attach to IPsec network sec: {NO_ESP}")),
        "{err}"
    );
    assert_eq!(host.rnet_json(&["endpoints", "sec"]), Value::Array(vec![]));
    assert_eq!(
        w.links(),
        vec!["lo".to_string()],
        "nothing left in the workload"
    );
    assert!(
        common::find_sandbox(&host.run_dir(), "sec").is_none(),
        "no sandbox"
    );
    assert_eq!(ip_xfrm_in(&host.netns_path(), &["policy"]), "");
}

/// Run `f` on a thread in a fresh network namespace (gone when the thread ends).
fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        f()
    })
    .join()
    .expect("test thread")
}

/// `ip xfrm ARGS` in this thread's namespace.
fn ip_xfrm(args: &[&str]) -> String {
    let out = Command::new("ip")
        .arg("xfrm")
        .args(args)
        .output()
        .expect("ip xfrm");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const ME: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// One pass of the plan against the kernel; returns the refused changes.
fn pass(book: &mut Book, x: &mut Xfrm, peer_info: Option<&IpsecInfo>) -> Vec<(Op, i32)> {
    pass_between(book, x, ME, peer_info.map(|i| (PEER, i)))
}

/// As `pass`, for this host at `me` and a peer at the given address.
fn pass_between(
    book: &mut Book,
    x: &mut Xfrm,
    me: Ipv4Addr,
    peer: Option<(Ipv4Addr, &IpsecInfo)>,
) -> Vec<(Op, i32)> {
    let seen = x.observe().expect("dump");
    let me = Me {
        id: "h1",
        underlay: me,
        epoch: 1 << 16,
        aead: Aead::AesGcm,
    };
    let peers: Vec<Peer<'_>> = peer
        .map(|(underlay, info)| Peer {
            id: "h2",
            underlay,
            info,
            shared: [3; 32],
        })
        .into_iter()
        .collect();
    let plan = book.plan(1000, 300, &me, &peers, &seen);
    plan::diff(&plan, &seen)
        .into_iter()
        .filter_map(|op| {
            rnet::ipsec::apply(x, op.clone())
                .err()
                .map(|e| (op, e.errno))
        })
        .collect()
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn xfrm_policies_are_installed_and_removed_through_netlink_and_sas_fail_closed_without_esp() {
    common::require_root();
    let esp = kernel_has_esp();
    in_fresh_netns(move || {
        // Someone else's policy (another port) is never touched.
        ip_xfrm(&[
            "policy",
            "add",
            "src",
            "198.18.0.1/32",
            "dst",
            "198.18.0.9/32",
            "proto",
            "udp",
            "dport",
            "500",
            "dir",
            "out",
            "action",
            "block",
        ]);
        let mut x = Xfrm::open().expect("xfrm socket");
        let mut book = Book::default();
        // A peer whose record acknowledges this host's SA: the plan wants SAs both ways.
        let info = IpsecInfo {
            aead: Aead::AesGcm,
            epoch: 2 << 16,
            acks: Default::default(),
        };
        let refused = pass(&mut book, &mut x, Some(&info));
        let seen = x.observe().unwrap();
        // The catch-all blocks and the inbound ESP policy exist; no outbound ESP policy
        // (nothing acknowledged yet), so the flow to the peer is blocked.
        assert!(
            seen.policies.contains(&PolicySpec::block_all(Dir::Out)),
            "{seen:?}"
        );
        assert!(
            seen.policies.contains(&PolicySpec::block_all(Dir::In)),
            "{seen:?}"
        );
        let esp_in = PolicySpec {
            dir: Dir::In,
            src: Some(PEER),
            dst: Some(ME),
            action: Action::Esp,
        };
        assert!(seen.policies.contains(&esp_in), "{seen:?}");
        assert!(!seen
            .policies
            .iter()
            .any(|p| p.dir == Dir::Out && p.action == Action::Esp));
        let text = ip_xfrm(&["policy"]);
        assert!(text.contains("src 0.0.0.0/0 dst 0.0.0.0/0 proto udp dport 4799 \n\tdir out action block priority 1000"), "{text}");
        assert!(
            text.contains(
                "src 198.18.0.2/32 dst 198.18.0.1/32 proto udp dport 4799 \n\tdir in priority 100"
            ),
            "{text}"
        );
        assert!(
            text.contains("proto esp reqid 1919837556 mode transport"),
            "{text}"
        );
        if esp {
            assert!(refused.is_empty(), "{refused:?}");
            assert_eq!(seen.sas.len(), 1, "the inbound SA");
        } else {
            // The inbound SA is refused exactly as the probe found (ENOSYS: the AEAD is
            // looked up before the missing ESP type), and nothing else was.
            assert_eq!(refused.len(), 1, "{refused:?}");
            assert!(
                matches!(refused[0], (Op::AddSa(_), libc::ENOSYS)),
                "{refused:?}"
            );
            assert!(seen.sas.is_empty());
            assert_eq!(ip_xfrm(&["state"]), "");
        }
        // A second pass changes nothing more (with ESP) or retries only the SA (without).
        let again = pass(&mut book, &mut x, Some(&info));
        assert_eq!(again.len(), refused.len());

        // A tampered policy (the block turned into an allow) is put back.
        let blk = PolicySpec::block_all(Dir::Out);
        rnet::ipsec::apply(&mut x, Op::DelPolicy(blk)).unwrap();
        assert!(!x.observe().unwrap().policies.contains(&blk));
        pass(&mut book, &mut x, Some(&info));
        assert!(x.observe().unwrap().policies.contains(&blk));

        // The peer goes: its policies go, the blocks and the foreign policy stay.
        let refused = pass(&mut book, &mut x, None);
        assert!(refused.is_empty(), "{refused:?}");
        let seen = x.observe().unwrap();
        assert_eq!(
            seen.policies,
            vec![
                PolicySpec::block_all(Dir::In),
                PolicySpec::block_all(Dir::Out)
            ]
        );
        assert!(
            ip_xfrm(&["policy"]).contains("dport 500"),
            "foreign policy kept"
        );
        // Deleting what is not there says so (ENOENT), it is not silently ignored.
        let gone = PolicySpec {
            dir: Dir::Out,
            src: Some(ME),
            dst: Some(PEER),
            action: Action::Esp,
        };
        let e = rnet::ipsec::apply(&mut x, Op::DelPolicy(gone)).unwrap_err();
        assert_eq!(e.errno, libc::ENOENT, "{e}");
        let _ = xfrm::REQID;
    });
}

/// XfrmOutPolBlock / XfrmInPolBlock of the namespace at `netns`.
fn blocked(netns: &Path, counter: &str) -> u64 {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["--", "cat", "/proc/net/xfrm_stat"])
        .output()
        .expect("read xfrm_stat");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(counter)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {counter} in {text}"))
}

/// Program the plan of host `me` (with `peer`, or none: just the catch-all blocks) in the
/// namespace at `netns`; returns the refused changes.
fn program(netns: &Path, me: Ipv4Addr, peer: Option<Ipv4Addr>) -> Vec<(Op, i32)> {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&netns).expect("open netns");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let mut x = Xfrm::open().expect("xfrm socket");
        let info = IpsecInfo {
            aead: Aead::AesGcm,
            epoch: 2 << 16,
            acks: Default::default(),
        };
        pass_between(&mut Book::default(), &mut x, me, peer.map(|p| (p, &info)))
    })
    .join()
    .unwrap()
}

/// A VXLAN datagram (VNI 42) carrying a broadcast ARP frame.
fn vxlan_datagram() -> Vec<u8> {
    let mut d = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
    d.extend([0xff; 6]);
    d.extend([0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    d.extend([0; 28]);
    d
}

fn rx_packets(host: &Host, dev: &str) -> u64 {
    let out = Command::new("ip")
        .args([
            "-n",
            host.netns_name(),
            "-j",
            "-s",
            "link",
            "show",
            "dev",
            dev,
        ])
        .output()
        .expect("ip link");
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("no {dev}: {out:?}"));
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .expect("rx packets")
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn cleartext_vxlan_to_the_ipsec_port_is_dropped_on_the_way_in_even_from_a_peer() {
    let host = Host::new("ipsec-in");
    let ns_name = host.netns_name().to_string();
    let me = host.underlay();
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    // The underlay's other end goes into a namespace of its own: the peer (and a stranger).
    let other = common::Workload::new("peer");
    let o = other.name().to_string();
    let peer = Ipv4Addr::new(198, 19, 255, 1);
    let stranger = Ipv4Addr::new(198, 19, 255, 2);
    ip(&["-n", &ns_name, "link", "set", "ul0p", "netns", &o]);
    ip(&[
        "-n",
        &o,
        "addr",
        "add",
        &format!("{peer}/15"),
        "dev",
        "ul0p",
    ]);
    ip(&[
        "-n",
        &o,
        "addr",
        "add",
        &format!("{stranger}/15"),
        "dev",
        "ul0p",
    ]);
    ip(&["-n", &o, "link", "set", "ul0p", "up"]);
    let local = me.to_string();
    for (dev, port) in [("vxsec", "4799"), ("vxplain", "4789")] {
        ip(&[
            "-n", &ns_name, "link", "add", dev, "type", "vxlan", "id", "42", "dstport", port,
            "local", &local, "dev", "ul0",
        ]);
        ip(&["-n", &ns_name, "link", "set", dev, "up"]);
    }
    let refused = program(&host.netns_path(), me, Some(peer));
    assert!(
        refused.iter().all(|(op, _)| matches!(op, Op::AddSa(_))),
        "{refused:?}"
    );
    let frame = vxlan_datagram();
    let send = |from: Ipv4Addr, port: u16| {
        let s = common::udp_socket_in(&other.path(), &format!("{from}:0"));
        for _ in 0..3 {
            s.send_to(&frame, (me, port)).expect("send");
        }
    };
    // Control: the same datagrams reach a plain VXLAN device.
    send(peer, 4789);
    common::wait_until(
        "plain VXLAN receives",
        std::time::Duration::from_secs(10),
        || rx_packets(&host, "vxplain") >= 3,
    );
    // From the peer's own address, in clear: refused by its ESP policy's template.
    let ns = host.netns_path();
    let (mismatch, block) = (
        blocked(&ns, "XfrmInTmplMismatch"),
        blocked(&ns, "XfrmInPolBlock"),
    );
    send(peer, 4799);
    common::wait_until(
        "cleartext from the peer is refused",
        std::time::Duration::from_secs(10),
        || blocked(&ns, "XfrmInTmplMismatch") >= mismatch + 3,
    );
    // From anyone else: the catch-all block.
    send(stranger, 4799);
    common::wait_until(
        "cleartext from a stranger is blocked",
        std::time::Duration::from_secs(10),
        || blocked(&ns, "XfrmInPolBlock") >= block + 3,
    );
    assert_eq!(
        rx_packets(&host, "vxsec"),
        0,
        "nothing reached the IPsec-port VXLAN device"
    );
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn the_catch_all_blocks_drop_and_count_vxlan_on_the_ipsec_port_and_leave_4789_alone() {
    let host = Host::new("ipsec-block");
    let ns = host.netns_path();
    let ns_name = host.netns_name().to_string();
    assert!(program(&ns, host.underlay(), None).is_empty());
    let ip = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["-n", &ns_name])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    let local = host.underlay().to_string();
    // A VXLAN device toward an absent peer on the underlay (the IPsec-port one is made
    // second: once up, it sends IPv6 neighbour discovery of its own, which is blocked too).
    let vxlan = |dev: &str, port: &str, addr: &str| {
        ip(&[
            "link",
            "add",
            dev,
            "type",
            "vxlan",
            "id",
            "42",
            "dstport",
            port,
            "remote",
            "198.18.200.1",
            "local",
            &local,
            "dev",
            "ul0",
        ]);
        ip(&["addr", "add", addr, "dev", dev]);
        ip(&["link", "set", dev, "up"]);
    };
    // Plain: ARP for a neighbour is sent, and no policy blocks it.
    vxlan("vxplain", "4789", "10.98.1.1/24");
    let before = blocked(&ns, "XfrmOutPolBlock");
    host.exec(&["ping", "-c", "2", "-W", "1", "10.98.1.2"]);
    assert_eq!(
        blocked(&ns, "XfrmOutPolBlock"),
        before,
        "4789 is not blocked"
    );
    vxlan("vxsec", "4799", "10.98.0.1/24");
    // IPsec port: every frame the VXLAN device sends is refused by the block policy and
    // counted — dropped where it is made, never sent in the clear.
    common::wait_until(
        "the IPsec-port flow is blocked",
        std::time::Duration::from_secs(10),
        || {
            host.exec(&["ping", "-c", "1", "-W", "1", "10.98.0.2"]);
            blocked(&ns, "XfrmOutPolBlock") > before
        },
    );
    // A socket of anyone's on the host is refused too (EPERM), not silently dropped.
    let s = common::udp_socket_in(&ns, &format!("{local}:0"));
    let e = s.send_to(b"clear", "198.18.200.1:4799").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    s.send_to(b"clear", "198.18.200.1:4789")
        .expect("the plain port is open");
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn rnetd_programs_the_blocks_builds_ipsec_sandboxes_on_their_port_and_restores_a_removed_block() {
    let mut host = Host::new("ipsec-daemon");
    // A block left over from an earlier run of rnet's.
    assert!(program(&host.netns_path(), host.underlay(), None).is_empty());
    // The control plane without ESP: SAs could not be installed, so flows stay blocked.
    host.start_daemon_with(&["--ipsec-assume-esp", "--resync", "1"]);
    let ipsec = host.rnet_json(&["status"])["ipsec"].clone();
    assert_eq!(ipsec["available"], true, "{ipsec}");
    assert!(ipsec["epoch"].as_u64().unwrap() > 1 << 16, "{ipsec}");
    let ns = host.netns_path();
    let blocks = |text: &str| {
        text.contains("dport 4799 \n\tdir out action block priority 1000")
            && text.contains("dport 4799 \n\tdir in action block priority 1000")
    };
    // No IPsec network in the cluster: rnet keeps no XFRM state (port 4799 is left alone).
    common::wait_until(
        "rnetd removes its leftover policies",
        std::time::Duration::from_secs(10),
        || ip_xfrm_in(&ns, &["policy"]).is_empty(),
    );
    let net = host.rnet_json(&[
        "create",
        "sec",
        "--subnet",
        "10.94.0.0/24",
        "--encrypt",
        "ipsec",
    ]);
    assert_eq!(
        (net["encryption"].as_str(), net["mtu"].as_u64()),
        (Some("ipsec"), Some(1410))
    );
    common::wait_until(
        "rnetd installs the catch-all blocks",
        std::time::Duration::from_secs(10),
        || blocks(&ip_xfrm_in(&ns, &["policy"])),
    );
    let w = host.new_workload("w");
    let path = w.path().display().to_string();
    host.rnet_ok(&["attach", "sec", "--netns", &path]);
    let sandbox = common::sandbox_in(&host.run_dir(), "sec");
    let out = Command::new("nsenter")
        .arg(format!("--net={}", sandbox.display()))
        .args(["--", "ip", "-d", "link", "show", "vx-sec"])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&out.stdout);
    assert!(link.contains("dstport 4799"), "{link}");
    assert!(
        link.contains("link-netns") || link.contains("link-netnsid"),
        "socket in the host namespace: {link}"
    );
    let doctor = host.rnet(&["doctor"]);
    assert!(doctor.status.success(), "{doctor:?}");

    // Someone removes the outbound block: rnetd puts it back within its peer loop.
    let out = Command::new("ip")
        .args([
            "-n",
            host.netns_name(),
            "xfrm",
            "policy",
            "del",
            "src",
            "0.0.0.0/0",
            "dst",
            "0.0.0.0/0",
            "proto",
            "udp",
            "dport",
            "4799",
            "dir",
            "out",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    common::wait_until(
        "rnetd puts the block back",
        std::time::Duration::from_secs(10),
        || blocks(&ip_xfrm_in(&ns, &["policy"])),
    );
    // The last IPsec network goes: so does all of rnet's XFRM state.
    host.rnet_ok(&["detach", "sec", "--netns", &path]);
    host.rnet_ok(&["rm", "sec"]);
    common::wait_until(
        "rnetd removes its policies",
        std::time::Duration::from_secs(10),
        || ip_xfrm_in(&ns, &["policy"]).is_empty(),
    );
}

/// The record `host` publishes, as h1 reads it from the lab's etcd.
fn presence(lab: &common::lab::Lab, host: &str) -> Value {
    let key = format!("/rnet/v1/hosts/{host}");
    let out = lab.exec_ok(
        "h1",
        &[
            "etcdctl",
            "--endpoints",
            "198.18.0.1:2379",
            "get",
            &key,
            "--print-value-only",
        ],
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn in_a_lab_whose_kernel_refuses_sas_ipsec_peers_stay_blocked_and_say_why() {
    if kernel_has_esp() {
        eprintln!("NOTE: this kernel has ESP; SAs would install, so the refusal cannot be shown");
        return;
    }
    // The control plane runs (--ipsec-assume-esp); the kernel refuses every SA.
    let fast = ["--lease-ttl", "2", "--probe-window", "2", "--resync", "2"];
    let lab = common::lab::Lab::up_with_env(2, &fast, &[("RNET_IPSEC_ASSUME_ESP", "true")]);
    lab.host_rnet_ok(
        "h1",
        &[
            "create",
            "sec",
            "--subnet",
            "10.94.0.0/24",
            "--encrypt",
            "ipsec",
        ],
    );
    lab.host_rnet_ok("h1", &["create", "plain", "--subnet", "10.95.0.0/24"]);
    let (a, b, c, d) = (
        common::Workload::new("a"),
        common::Workload::new("b"),
        common::Workload::new("c"),
        common::Workload::new("d"),
    );
    lab.attach("h1", "sec", &a.path());
    let ipb = lab.attach("h2", "sec", &b.path());
    lab.attach("h1", "plain", &c.path());
    let ipd = lab.attach("h2", "plain", &d.path());
    // Each host publishes its IPsec part: an epoch, and no acknowledgement (no SA exists).
    for h in ["h1", "h2"] {
        let rec = presence(&lab, h);
        assert!(rec["ipsec"]["epoch"].as_u64().unwrap() > 1 << 16, "{rec}");
        assert_eq!(rec["ipsec"]["acks"], serde_json::json!({}), "{rec}");
    }
    // h1 says why h2 gets nothing, per peer and in its status.
    common::wait_until(
        "h1 reports the refused SAs",
        std::time::Duration::from_secs(10),
        || {
            let peers = lab.host_rnet_json("h1", &["peers"]);
            let h2 = peers
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["host"] == "h2")
                .cloned();
            h2.is_some_and(|p| {
                p["ipsec"]["installed"] == false
                    && p["ipsec"]["note"].as_str().is_some_and(|n| {
                        n.contains("the kernel refused its SAs")
                            && n.contains("Function not implemented")
                    })
            })
        },
    );
    let human = lab.host_rnet_ok("h1", &["peers"]);
    assert!(
        human.contains("h2: IPsec not installed; out -; in -"),
        "{human}"
    );
    assert!(!lab.host_rnet_json("h1", &["status"])["ipsec"]["failures"]
        .as_array()
        .unwrap()
        .is_empty());
    // The plain network talks; the IPsec one does not, and nothing of it goes in clear:
    // h1 keeps only the blocks and h2's inbound ESP policy, and no FDB entry names h2.
    common::wait_until(
        "the plain network talks",
        std::time::Duration::from_secs(10),
        || c.ping(&ipd, 1),
    );
    assert!(!a.ping(&ipb, 2));
    let pol = lab.exec_ok("h1", &["ip", "xfrm", "policy"]);
    assert!(
        pol.contains(
            "src 198.18.0.12/32 dst 198.18.0.11/32 proto udp dport 4799 \n\tdir in priority 100"
        ),
        "{pol}"
    );
    assert!(
        !pol.contains("dst 198.18.0.12/32 proto udp dport 4799 \n\tdir out"),
        "{pol}"
    );
    assert!(pol.contains("dir out action block priority 1000"), "{pol}");
    // doctor names the missing SAs as drift.
    let doctor = lab.host_rnet("h1", &["doctor"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(1), "{doctor:?}");
    assert!(text.contains("SA 198.18.0.12 -> 198.18.0.11 spi"), "{text}");
}
