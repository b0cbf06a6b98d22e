//! Running rnetd as an operator does: Prometheus metrics on --metrics-addr, readiness
//! told to systemd.
mod common;

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::lab::Lab;
use common::{wait_until, ChildGuard, Host, Workload};

const METRICS_PORT: u16 = 9464;

/// `GET /metrics` from inside the host's namespace; None when nothing answers.
fn scrape(h: &Host) -> Option<String> {
    let url = format!("http://{}:{METRICS_PORT}/metrics", h.underlay());
    let out = h.exec(&["curl", "-sS", "--fail", "--max-time", "5", &url]);
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).expect("metrics are UTF-8"))
}

/// The value of the sample line `name` (exact series, labels included).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .parse()
        .expect("sample value is a number")
}

/// Checks the exposition text's shape: every sample belongs to a family declared with
/// `# TYPE`, and the text ends with `# EOF`.
fn assert_exposition_format(text: &str) {
    let mut families = Vec::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "unexpected type in {l:?}"
            );
            families.push(name.to_string());
        } else if l.starts_with('#') {
            assert!(
                l.starts_with("# HELP ") || l == "# EOF" || l.starts_with("# UNIT "),
                "bad comment line {l:?}"
            );
        } else {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(
                families.iter().any(|f| name.starts_with(f.as_str())),
                "sample {l:?} has no # TYPE"
            );
            let v = l.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "sample {l:?} has no number");
        }
    }
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end");
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn metrics_count_attaches_and_endpoints() {
    let mut h = Host::new("met");
    let addr = format!("{}:{METRICS_PORT}", h.underlay());
    h.start_daemon_with(&["--metrics-addr", &addr]);
    let before = scrape(&h).expect("metrics answer once the API does");
    assert_exposition_format(&before);
    assert_eq!(value(&before, "rnet_endpoints"), 0.0);
    assert_eq!(value(&before, "rnet_attach_duration_seconds_count"), 0.0);
    // The start-up reconcile has been counted.
    assert!(value(&before, "rnet_reconcile_runs_total") >= 1.0);
    assert!(value(&before, "rnet_store_lists_total") >= 1.0);

    h.rnet_ok(&["create", "blue", "--subnet", "10.30.0.0/24"]);
    let (a, b) = (Workload::new("ma"), Workload::new("mb"));
    for (w, id) in [(&a, "a"), (&b, "b")] {
        h.rnet_ok(&[
            "attach",
            "blue",
            "--netns",
            w.path().to_str().unwrap(),
            "--id",
            id,
        ]);
    }
    // The endpoint gauge follows the watch: poll.
    let mut text = String::new();
    wait_until("rnet_endpoints reads 2", Duration::from_secs(5), || {
        text = scrape(&h).unwrap();
        value(&text, "rnet_endpoints") == 2.0
    });
    assert_exposition_format(&text);
    assert_eq!(value(&text, "rnet_attach_duration_seconds_count"), 2.0);
    assert!(value(&text, "rnet_attach_duration_seconds_sum") > 0.0);
    assert!(value(&text, "rnet_store_watch_events_total") >= 3.0);

    // A refused attach is timed and counted as a failure.
    let out = h.rnet(&[
        "attach",
        "nosuchnet",
        "--netns",
        a.path().to_str().unwrap(),
        "--id",
        "x",
    ]);
    assert!(!out.status.success());
    h.rnet_ok(&["detach", "blue", "--id", "b"]);
    wait_until("rnet_endpoints reads 1", Duration::from_secs(5), || {
        text = scrape(&h).unwrap();
        value(&text, "rnet_endpoints") == 1.0
    });
    assert_eq!(value(&text, "rnet_attach_duration_seconds_count"), 3.0);
    assert_eq!(value(&text, "rnet_attach_failures_total"), 1.0);
    assert_eq!(value(&text, "rnet_detach_duration_seconds_count"), 1.0);
    assert_eq!(value(&text, "rnet_detach_failures_total"), 0.0);
    // Single host: no peers in any state, but every state has its series.
    for state in ["live", "daemon_down", "gone"] {
        assert_eq!(
            value(&text, &format!("rnet_peers{{state=\"{state}\"}}")),
            0.0
        );
    }
    assert_eq!(value(&text, "rnet_bad_records"), 0.0);

    // doctor counts as a reconcile run.
    let runs = value(&text, "rnet_reconcile_runs_total");
    h.rnet_ok(&["doctor"]);
    let text = scrape(&h).unwrap();
    assert_eq!(value(&text, "rnet_reconcile_runs_total"), runs + 1.0);

    // Anything but /metrics is not found.
    let url = format!("http://{addr}/other");
    let out = h.exec(&["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", &url]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn metrics_are_off_by_default() {
    let mut h = Host::new("mof");
    h.start_daemon();
    assert!(
        scrape(&h).is_none(),
        "something answers on the metrics port of a daemon started without --metrics-addr"
    );
    // Nothing listens on TCP at all in the host's namespace.
    let out = h.exec(&["ss", "-Htln"]);
    assert!(out.status.success());
    let listening = String::from_utf8_lossy(&out.stdout);
    assert!(
        listening.trim().is_empty(),
        "TCP listeners without --metrics-addr:\n{listening}"
    );
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_bad_metrics_addr_is_refused_clearly() {
    let h = Host::new("mbad");
    let (sock, state, run) = (h.socket(), h.state_dir(), h.run_dir());
    let rnetd = |addr: &str| {
        let out = h.exec(&[
            env!("CARGO_BIN_EXE_rnetd"),
            "--socket",
            sock.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--run-dir",
            run.to_str().unwrap(),
            "--host-id",
            "mbad",
            "--underlay",
            &h.underlay().to_string(),
            "--docker-plugin-dir",
            "none",
            "--metrics-addr",
            addr,
        ]);
        assert!(
            !out.status.success(),
            "rnetd started with --metrics-addr {addr}"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Not an address at all.
    let err = rnetd("localhost-ish");
    assert!(err.contains("--metrics-addr"), "{err}");
    assert!(err.contains("invalid socket address"), "{err}");
    // An address this host does not have (TEST-NET-2: never routed).
    let err = rnetd("198.51.100.7:9464");
    assert!(
        err.contains("--metrics-addr 198.51.100.7:9464: cannot listen there"),
        "{err}"
    );
    assert!(!sock.exists(), "the API socket was bound anyway");
}

/// Receives one datagram from `sock` within `within`; None on timeout.
fn recv_within(sock: &UnixDatagram, within: Duration) -> Option<String> {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    match sock.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(e) => panic!("reading the notify socket: {e}"),
    }
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn rnetd_tells_systemd_it_is_ready_once_the_api_answers() {
    let h = Host::new("sdn");
    let notify_path = h.dir().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    let (sock, state, run) = (h.socket(), h.state_dir(), h.run_dir());
    let underlay = h.underlay().to_string();
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", h.netns_path().display()))
        .arg("--")
        .args([
            env!("CARGO_BIN_EXE_rnetd"),
            "--socket",
            sock.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--run-dir",
            run.to_str().unwrap(),
            "--host-id",
            "sdn",
            "--underlay",
            &underlay,
            "--docker-plugin-dir",
            "none",
        ])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut daemon = ChildGuard(cmd.spawn().expect("spawn rnetd"));
    let msg = recv_within(&notify, Duration::from_secs(20)).expect("no READY=1 within 20 s");
    assert!(
        msg.lines().any(|l| l == "READY=1"),
        "first notification is not READY=1: {msg:?}"
    );
    // Ready means ready: the API answers now, without a retry.
    let out = h.rnet(&["status"]);
    assert!(
        out.status.success(),
        "`rnet status` failed right after READY=1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Stopping is announced too.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let msg = recv_within(&notify, Duration::from_secs(20)).expect("no STOPPING=1 on SIGTERM");
    assert!(msg.lines().any(|l| l == "STOPPING=1"), "{msg:?}");
    let status = daemon.0.wait().unwrap();
    assert!(status.success(), "rnetd exited with {status}");
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_notify_socket_nobody_reads_does_not_stop_rnetd() {
    let mut h = Host::new("sdx");
    let gone = h.dir().join("no-such-dir/notify.sock");
    let env = format!("NOTIFY_SOCKET={}", gone.display());
    // The harness asserts the daemon starts and answers.
    h.start_daemon_wrapped(&["env", &env], &[]);
    wait_until(
        "the failed notification is logged",
        Duration::from_secs(5),
        || h.daemon_log().contains("notifying systemd failed"),
    );
}

/// `GET /metrics` of lab host `host` (its rnetd listens on 0.0.0.0:9464 of its namespace).
fn scrape_lab(lab: &Lab, host: &str) -> String {
    let url = format!("http://127.0.0.1:{METRICS_PORT}/metrics");
    lab.exec_ok(host, &["curl", "-sS", "--fail", "--max-time", "5", &url])
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn metrics_show_peers_per_state_and_wireguard_per_peer() {
    // The lab starts rnetd with its own flags: a wrapper adds --metrics-addr.
    let dir = tempfile::tempdir().unwrap();
    // Written by a child process, never opened for writing by this one: a process that
    // another test forks while this one holds a write descriptor would keep it open until
    // its exec, and executing the script meanwhile fails with ETXTBSY.
    let wrapper = dir.path().join("rnetd-with-metrics");
    let script = format!(
        "#!/bin/sh\nexec {} \"$@\" --metrics-addr 0.0.0.0:{METRICS_PORT}\n",
        env!("CARGO_BIN_EXE_rnetd")
    );
    let st = Command::new("sh")
        .args([
            "-c",
            "printf '%s' \"$1\" > \"$2\" && chmod 755 \"$2\"",
            "sh",
        ])
        .arg(&script)
        .arg(&wrapper)
        .status()
        .unwrap();
    assert!(st.success(), "writing {}", wrapper.display());
    let wrapper = wrapper.to_str().unwrap();
    let lab = Lab::up(
        2,
        &[
            "--lease-ttl",
            "2",
            "--probe-window",
            "2",
            "--resync",
            "2",
            "--rnetd",
            wrapper,
        ],
    );
    lab.host_rnet_ok(
        "h1",
        &[
            "create",
            "sec",
            "--subnet",
            "10.93.0.0/24",
            "--encrypt",
            "wireguard",
        ],
    );
    let (a, b) = (Workload::new("pa"), Workload::new("pb"));
    lab.attach("h1", "sec", &a.path());
    let ipb = lab.attach("h2", "sec", &b.path());
    wait_until(
        "a reaches b through the tunnel",
        Duration::from_secs(10),
        || a.ping(&ipb, 1),
    );
    let text = scrape_lab(&lab, "h1");
    assert_exposition_format(&text);
    assert_eq!(value(&text, "rnet_peers{state=\"live\"}"), 1.0);
    assert_eq!(value(&text, "rnet_peers{state=\"daemon_down\"}"), 0.0);
    assert_eq!(value(&text, "rnet_endpoints"), 1.0);
    assert_eq!(value(&text, "rnet_wireguard_tunnel_up{peer=\"h2\"}"), 1.0);
    assert!(value(&text, "rnet_wireguard_tx_bytes{peer=\"h2\"}") > 0.0);
    assert!(value(&text, "rnet_wireguard_rx_bytes{peer=\"h2\"}") > 0.0);
    assert!(value(&text, "rnet_wireguard_seconds_since_handshake{peer=\"h2\"}") >= 0.0);
    assert_eq!(
        value(&text, "rnet_wireguard_drops{reason=\"malformed\"}"),
        0.0
    );
    assert!(
        !text.contains("peer=\"h1\""),
        "a series for this host itself"
    );

    // h2's daemon stops (its workload keeps answering probes): daemon down, not gone.
    lab.ok(&["stop", "h2"]);
    let mut text = String::new();
    wait_until(
        "h1 counts h2 as daemon down",
        Duration::from_secs(15),
        || {
            text = scrape_lab(&lab, "h1");
            value(&text, "rnet_peers{state=\"daemon_down\"}") == 1.0
        },
    );
    assert_eq!(value(&text, "rnet_peers{state=\"live\"}"), 0.0);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn silent_metrics_clients_cannot_hold_the_metrics_port() {
    use std::io::Read;
    let mut h = Host::new("mslow");
    let addr = format!("{}:{METRICS_PORT}", h.underlay());
    h.start_daemon_with(&["--metrics-addr", &addr]);
    wait_until("metrics answer", Duration::from_secs(10), || {
        scrape(&h).is_some()
    });
    // 40 connections that never send a byte, from another address of the host than the
    // scraper's (a source may hold only a few).
    let other = "198.18.254.77";
    assert!(h
        .exec(&["ip", "addr", "add", &format!("{other}/32"), "dev", "lo"])
        .status
        .success());
    let target: std::net::SocketAddr = addr.parse().unwrap();
    let ns = rnet::netns::NetNs::open(&h.netns_path()).unwrap();
    let silent: Vec<std::net::TcpStream> = ns
        .run(move || (0..40).map(|_| connect_from(other, target)).collect())
        .unwrap();
    let started = std::time::Instant::now();
    assert!(
        scrape(&h).is_some(),
        "a scrape is answered among silent clients"
    );
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    // The server closes them: beyond the first few at once, those within the header timeout.
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 64];
        assert!(
            matches!(s.read(&mut buf), Ok(0) | Err(_)),
            "a silent metrics connection got data"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(40));
}

/// A TCP connection to `to` from local address `from` (bound before connecting).
fn connect_from(from: &str, to: std::net::SocketAddr) -> std::net::TcpStream {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let local: std::net::SocketAddrV4 = format!("{from}:0").parse().unwrap();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(local),
    )
    .unwrap();
    let std::net::SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to)).unwrap();
    std::net::TcpStream::from(fd)
}
