//! Multi-host control-plane benchmarks on an `rnet lab` with a real etcd:
//!
//! - convergence: attach on h1 → first ICMP echo reply seen from a workload on h2,
//!   p50/p99 over N endpoints;
//! - programming rate: 10,000 remote endpoints written straight into etcd → all their FDB and
//!   neighbour entries programmed on h1, next to `bridge -batch` + `ip -batch` adding the
//!   same entries (the floor), with rnetd's RSS at that size.
//!
//! Run with `make bench` (as root). Prints markdown on stdout.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{env_count, median_min_max};
use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rnet::api::types::{AttachRequest, DetachRequest, DetachResponse, NetworkRequest};
use rnet::api::Client;
use rnet::dataplane::{tables, Netlink};
use rnet::icmp::IcmpSocket;
use rnet::model::{Endpoint, HostRecord, Mac, Network, NetworkId};
use rnet::netns::NetNs;
use rnet::progress::{Plain, Progress};
use rnet::store::etcd::EtcdStore;
use rnet::store::{keys, Store, TxnOp};

const RNET: &str = env!("CARGO_BIN_EXE_rnet");

/// An `rnet lab` that is taken down on drop.
struct Lab {
    name: String,
}

impl Lab {
    fn up(hosts: u32) -> Lab {
        let name = format!("bp{}", std::process::id());
        run(Command::new(RNET).args(["lab", "up", "--hosts", &hosts.to_string(), "--name", &name]));
        Lab { name }
    }

    fn dir(&self) -> PathBuf {
        Path::new("/run/rnet/lab").join(&self.name)
    }

    fn client(&self, host: &str) -> Client {
        Client::new(self.dir().join(host).join("rnetd.sock"))
    }

    fn netns(&self, host: &str) -> PathBuf {
        self.dir().join("netns").join(host)
    }

    fn daemon_rss_kib(&self, host: &str) -> u64 {
        let pid =
            std::fs::read_to_string(self.dir().join(host).join("rnetd.pid")).unwrap_or_default();
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(RNET)
            .args(["lab", "down", "--name", &self.name])
            .output();
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A workload namespace under /run/netns, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("rnb-{tag}-{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        Ns(name)
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn pct(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

fn main() {
    let n = env_count("RNET_BENCH_N", 100);
    let entries = env_count("RNET_BENCH_ENTRIES", 10_000);
    let mut progress = Progress::new(Plain::Stderr);
    progress.step("peers: lab up (2 hosts)");
    let lab = Lab::up(2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let req = NetworkRequest {
        name: "conv".into(),
        subnet: "10.70.0.0/16".into(),
        ..Default::default()
    };
    let net: Network = rt
        .block_on(lab.client("h1").post("/v1/networks", &req))
        .expect("create network");
    convergence(&lab, &rt, n, &mut progress);
    progress.step(&format!("peers: programming {entries} remote endpoints"));
    programming(&lab, &rt, entries, &net);
    progress.finish();
}

/// Attach on h1, then ping the new address from a workload on h2 every millisecond.
fn convergence(lab: &Lab, rt: &tokio::runtime::Runtime, n: usize, progress: &mut Progress) {
    let watcher = Ns::new("w2");
    let attach = |client: &Client, ns: &str, id: &str| -> Endpoint {
        let req = AttachRequest {
            network: "conv".into(),
            netns: Some(ns.into()),
            id: Some(id.into()),
            ..Default::default()
        };
        rt.block_on(client.post("/v1/attach", &req))
            .expect("attach")
    };
    attach(&lab.client("h2"), &watcher.path(), "watcher");
    let (tx, rx) = std::sync::mpsc::channel::<Ipv4Addr>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Duration>();
    let ns = NetNs::open(Path::new(&watcher.path())).unwrap();
    // A thread of its own inside the watcher's namespace, fed addresses to ping.
    std::thread::spawn(move || {
        ns.enter().expect("enter the watcher's namespace");
        let sock = IcmpSocket::open().expect("icmp socket");
        for ip in rx {
            let t0 = Instant::now();
            let mut seq = 0u16;
            while sock.probe(&[ip], seq, Duration::from_millis(1)).is_empty()
                && t0.elapsed() < Duration::from_secs(10)
            {
                seq = seq.wrapping_add(1);
            }
            done_tx.send(t0.elapsed()).unwrap();
        }
    });
    let mut samples = Vec::new();
    let h1 = lab.client("h1");
    for i in 0..n {
        progress.count(
            "peers: convergence, attach on h1 until h2 gets a reply",
            i,
            n,
        );
        let w = Ns::new(&format!("c{i}"));
        let t0 = Instant::now();
        let ep = attach(&h1, &w.path(), &format!("c{i}"));
        tx.send(ep.ip.ip()).unwrap();
        let waited = done_rx.recv().unwrap();
        assert!(waited < Duration::from_secs(10), "{} never answered", ep.ip);
        samples.push(t0.elapsed());
        let det = DetachRequest {
            network: "conv".into(),
            id: Some(format!("c{i}")),
            ..Default::default()
        };
        let _: DetachResponse = rt.block_on(h1.post("/v1/detach", &det)).expect("detach");
    }
    drop(tx);
    println!("### Convergence across two lab hosts ({n} endpoints)\n");
    println!("From the attach request on h1 to the first echo reply seen by a workload on h2 (probed every 1 ms):\n");
    println!("| p50 ms | p99 ms | max ms |\n|---|---|---|");
    let (p50, p99, max) = (
        pct(&mut samples, 0.5),
        pct(&mut samples, 0.99),
        pct(&mut samples, 1.0),
    );
    println!("| {p50:.1} | {p99:.1} | {max:.1} |\n");
    println!("Target: p99 < 100 ms. (Docker's overlay measured here: first reply 1.0 s after `docker run`.)\n");
}

/// Write `entries` remote endpoints for a fake live host into etcd and time h1's programming.
fn programming(lab: &Lab, rt: &tokio::runtime::Runtime, entries: usize, net: &Network) {
    let local = Ns::new("local");
    let req = AttachRequest {
        network: "conv".into(),
        netns: Some(local.path()),
        id: Some("local".into()),
        ..Default::default()
    };
    let _: Endpoint = rt
        .block_on(lab.client("h1").post("/v1/attach", &req))
        .expect("attach local");
    let sandbox = rnet::dataplane::spec::sandbox_path(&lab.dir().join("h1/run"), "conv", &net.id);
    let h1 = NetNs::open(&lab.netns("h1")).unwrap();
    fn in_h1<T: Send + 'static>(
        h1: &NetNs,
        work: impl FnOnce(&tokio::runtime::Runtime) -> T + Send + 'static,
    ) -> T {
        h1.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            work(&rt)
        })
        .unwrap()
    }
    // Rounds interleave the three measurements, so a busy moment of the machine falls on
    // all of them alike; each round starts from tables without the far entries.
    let mut rows = Vec::new();
    for _ in 0..rounds() {
        let heard = Announcements::listen(&sandbox, entries);
        let id = net.id.clone();
        let (t0, acked) = in_h1(&h1, move |rt| rt.block_on(write(entries, &id)));
        let live = heard.last(t0);
        let written = acked - t0;
        let rss = lab.daemon_rss_kib("h1");
        let cold = cold_start(lab, entries, &sandbox);
        let floor = batch_floor(entries);
        rows.push(Round {
            floor,
            cold,
            live,
            written,
            rss,
        });
        let (id, sb) = (net.id.clone(), sandbox.clone());
        in_h1(&h1, move |rt| rt.block_on(remove(entries, &id, &sb)));
    }
    print_programming(entries, &rows);
}

/// One round of the programming bench.
struct Round {
    floor: Duration,
    cold: Duration,
    live: Duration,
    /// The bench's own writes, from the first to the last acknowledged.
    written: Duration,
    rss: u64,
}

/// Rounds of the programming bench (`RNET_BENCH_ROUNDS`, default 5).
fn rounds() -> usize {
    env_count("RNET_BENCH_ROUNDS", 5)
}

fn print_programming(entries: usize, rows: &[Round]) {
    let s = |d: Duration| d.as_secs_f64();
    println!(
        "### Programming rate ({entries} remote endpoints, {} rounds: live, cold, floor)\n",
        rows.len()
    );
    println!(
        "Floor: `bridge -batch` + `ip -batch` adding the same {} entries to a fresh VXLAN device. \
         Cold: rnetd start → store listed → all entries programmed. Live: first etcd write → \
         all entries programmed ({} txns of 100, {} in flight); the writes alone are the \
         bench's own, lag is live minus writes.\n",
        2 * entries + 1,
        entries.div_ceil(100),
        writers(),
    );
    println!("| round | floor s | cold s | cold / floor | live s | live / floor | writes alone s | lag s | rnetd RSS MiB |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, r) in rows.iter().enumerate() {
        println!(
            "| {} | {:.3} | {:.3} | {:.2} | {:.3} | {:.2} | {:.3} | {:.3} | {:.1} |",
            i + 1,
            s(r.floor),
            s(r.cold),
            s(r.cold) / s(r.floor),
            s(r.live),
            s(r.live) / s(r.floor),
            s(r.written),
            s(r.live) - s(r.written),
            r.rss as f64 / 1024.0
        );
    }
    let spread = |f: &dyn Fn(&Round) -> f64| median_min_max(rows.iter().map(f).collect());
    let (live, live_lo, live_hi) = spread(&|r| s(r.live) / s(r.floor));
    let (cold, cold_lo, cold_hi) = spread(&|r| s(r.cold) / s(r.floor));
    let (lag, _, lag_hi) = spread(&|r| s(r.live) - s(r.written));
    let rss = rows.iter().map(|r| r.rss).max().unwrap_or(0) as f64 / 1024.0;
    println!(
        "\nMedian (min–max) over the floor: live {live:.2}x ({live_lo:.2}–{live_hi:.2}), cold \
         {cold:.2}x ({cold_lo:.2}–{cold_hi:.2}). Lag after the last write: median {lag:.3} s, \
         max {lag_hi:.3} s. rnetd RSS on h1, highest: {rss:.1} MiB. Target for rnet / floor: \
         ≤ 1.5x.\n"
    );
}

/// The first address of the far host's endpoints: above the few the convergence rounds take
/// from the bottom of 10.70.0.0/16, with room for 60,000 below its broadcast address.
const FAR_FIRST: Ipv4Addr = Ipv4Addr::new(10, 70, 4, 0);

fn fake_endpoint(i: usize, network_id: &NetworkId) -> Endpoint {
    assert!(i < 60_000, "10.70.0.0/16 holds no more far endpoints");
    let ip = Ipv4Addr::from(u32::from(FAR_FIRST) + i as u32);
    Endpoint {
        network: "conv".parse().unwrap(),
        network_id: network_id.clone(),
        id: format!("far{i}").parse().unwrap(),
        ip: ipnetwork::Ipv4Network::new(ip, 16).unwrap(),
        mac: Mac::from_ipv4(ip),
        host: "far".into(),
        ifname: "eth0".parse().unwrap(),
        netns: String::new(),
        netns_inode: 0,
        host_ifname: rnet::dataplane::spec::host_ifname(ip),
        created: 0,
        origin: Default::default(),
        owner: None,
        mtu: None,
        name: None,
        aliases: Vec::new(),
        ports: Vec::new(),
    }
}

/// Runs inside h1's namespace (etcd is reachable from there). Returns when the first write
/// was sent and when the last was acknowledged.
async fn write(entries: usize, network_id: &NetworkId) -> (Instant, Instant) {
    let store = EtcdStore::connect(&["198.18.0.1:2379".to_string()])
        .await
        .expect("etcd");
    let far = HostRecord {
        id: "far".into(),
        underlay: "198.18.0.99".parse().unwrap(),
        vtep_mac: Mac::from_name(0x56, "far"),
        started: 0,
        renewed: 0,
        wireguard: None,
        ipsec: None,
    };
    let lease = store.lease_grant(600).await.unwrap();
    // The records are made before the clock starts: hosts write records they already have,
    // and the time the bench takes to make 50,000 of them is neither etcd's nor rnetd's.
    let txns: Vec<Vec<TxnOp>> = (0..entries)
        .collect::<Vec<_>>()
        .chunks(100)
        .map(|chunk| {
            chunk
                .iter()
                .map(|&i| {
                    let ep = fake_endpoint(i, network_id);
                    TxnOp::Put {
                        key: keys::endpoint("conv", ep.ip.ip()),
                        value: serde_json::to_vec(&ep).unwrap(),
                        lease: None,
                    }
                })
                .collect()
        })
        .collect();
    let t0 = Instant::now();
    store
        .put(
            &keys::host_info("far"),
            serde_json::to_vec(&far).unwrap(),
            None,
        )
        .await
        .unwrap();
    store
        .put(
            &keys::host("far"),
            serde_json::to_vec(&far).unwrap(),
            Some(lease),
        )
        .await
        .unwrap();
    // Several transactions in flight, as several hosts attaching at once would write them:
    // one at a time, the writer (not rnetd) sets the pace.
    let mut writes = futures::stream::iter(txns)
        .map(|ops| {
            let store = store.clone();
            async move { store.txn(vec![], ops).await }
        })
        .buffer_unordered(writers());
    while let Some(done) = writes.next().await {
        assert!(done.unwrap().succeeded);
    }
    (t0, Instant::now())
}

/// Delete the far endpoints and wait until h1's kernel has dropped their entries.
async fn remove(entries: usize, network_id: &NetworkId, sandbox: &Path) {
    let store = EtcdStore::connect(&["198.18.0.1:2379".to_string()])
        .await
        .expect("etcd");
    for chunk in (0..entries).collect::<Vec<_>>().chunks(100) {
        let ops = chunk
            .iter()
            .map(|&i| TxnOp::Delete {
                key: keys::endpoint("conv", fake_endpoint(i, network_id).ip.ip()),
            })
            .collect();
        assert!(store.txn(vec![], ops).await.unwrap().succeeded);
    }
    let dp = Netlink::new().unwrap();
    let t0 = Instant::now();
    loop {
        if let Ok(Some((_, t))) = dp.observe_tables(sandbox, "vx-conv").await {
            if t.neigh.len() < 100 {
                return;
            }
        }
        assert!(
            t0.elapsed() < PROGRAM_DEADLINE,
            "the far entries were not removed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Transactions the live programming bench keeps in flight (`RNET_BENCH_WRITERS`, default 8).
fn writers() -> usize {
    env_count("RNET_BENCH_WRITERS", 8)
}

/// How long programming may take before the bench gives up (a hang, not a figure).
const PROGRAM_DEADLINE: Duration = Duration::from_secs(300);

/// A thread that hears the kernel announce (RTNLGRP_NEIGH) each far entry of h1's VXLAN
/// device, and notes when the last one came (within 2 ms). Waiting costs nothing while rnetd programs:
/// dumping 20,000 entries every few milliseconds instead would take a CPU and the rtnl lock
/// from rnetd, which the floor's run does not have to share.
struct Announcements(std::thread::JoinHandle<Instant>);

impl Announcements {
    /// Subscribe now (before anything is programmed); `entries`: the far endpoints to hear.
    fn listen(sandbox: &Path, entries: usize) -> Announcements {
        let (sock, ifindex) = NetNs::open(sandbox)
            .unwrap()
            .run(|| {
                let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
                sock.bind_auto()?;
                sock.add_membership(libc::RTNLGRP_NEIGH)?;
                // Room for every announcement, should the thread fall behind.
                nix::sys::socket::setsockopt(
                    &sock,
                    nix::sys::socket::sockopt::RcvBufForce,
                    &(256 << 20),
                )?;
                let query = rnet::dataplane::request::open_socket(Some(Duration::from_secs(5)))?;
                let ifindex = rnet::dataplane::request::link_index(&query, "vx-conv")
                    .map_err(std::io::Error::other)?
                    .expect("h1's sandbox has vx-conv");
                Ok::<_, std::io::Error>((sock, ifindex))
            })
            .unwrap()
            .expect("subscribing to neighbour announcements");
        let started = Instant::now();
        Announcements(std::thread::spawn(move || {
            let far = |i: usize| Ipv4Addr::from(u32::from(FAR_FIRST) + i as u32);
            let mut ips: std::collections::HashSet<Ipv4Addr> = (0..entries).map(far).collect();
            let mut macs: std::collections::HashSet<Mac> =
                (0..entries).map(|i| Mac::from_ipv4(far(i))).collect();
            let mut buf = Vec::with_capacity(1 << 20);
            while !ips.is_empty() || !macs.is_empty() {
                assert!(
                    started.elapsed() < PROGRAM_DEADLINE,
                    "{entries} entries not programmed within {PROGRAM_DEADLINE:?}: {} addresses and {} MACs missing",
                    ips.len(),
                    macs.len()
                );
                buf.clear();
                // Drained between naps, never waited on: a reader asleep in recv() would be
                // woken by every one of the 2 x entries announcements, at rnetd's expense
                // (the kernel wakes it from inside rnetd's writes). The last entry is noted
                // at most a nap late.
                match sock.recv(&mut buf, libc::MSG_DONTWAIT) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    Err(e) => panic!("reading neighbour announcements: {e}"),
                }
                for m in announced(&buf) {
                    match m.header.family {
                        AddressFamily::Bridge => {
                            if let Some(e) = tables::parse_fdb(&m, ifindex) {
                                macs.remove(&e.mac);
                            }
                        }
                        _ => {
                            if let Some(e) = tables::parse_neigh(&m, ifindex) {
                                ips.remove(&e.ip);
                            }
                        }
                    }
                }
            }
            Instant::now()
        }))
    }

    /// Time from `t0` to the last announcement.
    fn last(self, t0: Instant) -> Duration {
        self.0.join().expect("the announcement listener failed") - t0
    }
}

/// The new-neighbour messages of one netlink datagram.
fn announced(buf: &[u8]) -> impl Iterator<Item = NeighbourMessage> {
    rnet::dataplane::request::parse_datagram(buf)
        .into_iter()
        .filter_map(|m| match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(m)) => Some(m),
            _ => None,
        })
}

/// Stop h1's daemon, empty its VXLAN tables, start it again and time until it has
/// programmed everything (start-up, listing the store, programming).
fn cold_start(lab: &Lab, entries: usize, sandbox: &Path) -> Duration {
    run(Command::new(RNET).args(["lab", "stop", "h1", "--name", &lab.name]));
    let ns = format!("--net={}", sandbox.display());
    run(Command::new("nsenter").arg(&ns).args([
        "--",
        "ip",
        "neigh",
        "flush",
        "dev",
        "vx-conv",
        "nud",
        "permanent",
    ]));
    let fdb = run(Command::new("nsenter")
        .arg(&ns)
        .args(["--", "bridge", "fdb", "show", "dev", "vx-conv"]));
    let dels: String = fdb
        .lines()
        .filter(|l| l.contains(" dst "))
        .map(|l| {
            let mut w = l.split_whitespace();
            let mac = w.next().unwrap_or_default();
            let dst = l
                .split(" dst ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or_default();
            format!("fdb del {mac} dev vx-conv dst {dst} self\n")
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("del"), dels).unwrap();
    run(Command::new("nsenter")
        .arg(&ns)
        .args(["--", "bridge", "-batch"])
        .arg(dir.path().join("del")));
    let heard = Announcements::listen(sandbox, entries);
    let t0 = Instant::now();
    run(Command::new(RNET).args(["lab", "start", "h1", "--name", &lab.name]));
    heard.last(t0)
}

/// The same entries with one `bridge -batch` and one `ip -batch`, into a fresh VXLAN device.
fn batch_floor(entries: usize) -> Duration {
    let ns = Ns::new("floor");
    run(Command::new("ip").args([
        "-n",
        &ns.0,
        "link",
        "add",
        "vx",
        "type",
        "vxlan",
        "id",
        "9",
        "dstport",
        "4789",
        "nolearning",
        "proxy",
    ]));
    let dir = tempfile::tempdir().unwrap();
    let (fdb, neigh) = (dir.path().join("fdb"), dir.path().join("neigh"));
    let mut f = std::fs::File::create(&fdb).unwrap();
    let mut g = std::fs::File::create(&neigh).unwrap();
    writeln!(
        f,
        "fdb append 00:00:00:00:00:00 dev vx dst 198.18.0.99 self permanent"
    )
    .unwrap();
    for i in 0..entries {
        let ep = fake_endpoint(i, &NetworkId::random());
        writeln!(
            f,
            "fdb replace {} dev vx dst 198.18.0.99 self permanent",
            ep.mac
        )
        .unwrap();
        writeln!(
            g,
            "neigh replace {} lladdr {} dev vx nud permanent",
            ep.ip.ip(),
            ep.mac
        )
        .unwrap();
    }
    let t0 = Instant::now();
    run(Command::new("bridge")
        .args(["-n", &ns.0, "-batch"])
        .arg(&fdb));
    run(Command::new("ip").args(["-n", &ns.0, "-batch"]).arg(&neigh));
    t0.elapsed()
}
