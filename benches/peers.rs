//! Multi-host control-plane benchmarks on an `rnet lab` with a real etcd:
//!
//! - convergence: attach on h1 → first ICMP echo reply seen from a workload on h2,
//!   p50/p99 over N endpoints;
//! - programming rate: 10,000 remote endpoints written straight into etcd → all their FDB and
//!   neighbour entries programmed on h1, next to `bridge -batch` + `ip -batch` adding the
//!   same entries (the floor), with rnetd's RSS at that size.
//!
//! Run with `make bench` (as root). Prints markdown on stdout.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rnet::api::types::{AttachRequest, DetachRequest, DetachResponse, NetworkRequest};
use rnet::api::Client;
use rnet::dataplane::Netlink;
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
    let n: usize = std::env::var("RNET_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let entries: usize = std::env::var("RNET_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
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
    let sb = sandbox.clone();
    let id = net.id.clone();
    let (written, live) = h1
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(write_and_wait(entries, &sb, &id))
        })
        .unwrap();
    let rss = lab.daemon_rss_kib("h1");
    let cold = cold_start(lab, entries, &sandbox);
    let floor = batch_floor(entries);
    let s = |d: Duration| d.as_secs_f64();
    println!("### Programming rate ({entries} remote endpoints)\n");
    println!("| what | seconds | / floor |\n|---|---|---|");
    println!(
        "| floor: `bridge -batch` + `ip -batch` adding the same {} entries | {:.3} | 1.00 |",
        2 * entries + 1,
        s(floor)
    );
    println!(
        "| rnet, cold: rnetd start → store listed → all entries programmed | {:.3} | {:.2} |",
        s(cold),
        s(cold) / s(floor)
    );
    println!(
        "| rnet, live: first etcd write → all entries programmed (the writes alone: {:.3} s, {} txns of 100, {} in flight) | {:.3} | {:.2} |",
        s(written),
        entries.div_ceil(100),
        writers(),
        s(live),
        s(live) / s(floor)
    );
    println!(
        "\nProgramming lag after the last write: {:.3} s. rnetd RSS on h1 at that size: {:.1} MiB (target < 50 MiB). Target for rnet / floor: ≤ 1.5x.\n",
        s(live) - s(written),
        rss as f64 / 1024.0
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

/// Runs inside h1's namespace (etcd is reachable from there). Returns how long the writes
/// took and how long until everything was programmed, both from the first write.
async fn write_and_wait(
    entries: usize,
    sandbox: &Path,
    network_id: &NetworkId,
) -> (Duration, Duration) {
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
    let mut writes = futures::stream::iter(txns)
        .map(|ops| {
            let store = store.clone();
            async move { store.txn(vec![], ops).await }
        })
        .buffer_unordered(writers());
    while let Some(done) = writes.next().await {
        assert!(done.unwrap().succeeded);
    }
    let written = t0.elapsed();
    (written, wait_programmed(entries, sandbox, t0).await)
}

/// Transactions the live programming bench keeps in flight (`RNET_BENCH_WRITERS`, default 8).
fn writers() -> usize {
    std::env::var("RNET_BENCH_WRITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(8)
}

/// How long a convergence round may take before the bench gives up (a hang, not a figure).
const PROGRAM_DEADLINE: Duration = Duration::from_secs(300);

/// Poll the VXLAN device's tables until they hold every entry; time since `t0`.
async fn wait_programmed(entries: usize, sandbox: &Path, t0: Instant) -> Duration {
    let dp = Netlink::new().unwrap();
    loop {
        if let Ok(Some((_, t))) = dp.observe_tables(sandbox, "vx-conv").await {
            if t.neigh.len() >= entries && t.fdb.len() > entries {
                return t0.elapsed();
            }
        }
        assert!(
            t0.elapsed() < PROGRAM_DEADLINE,
            "{entries} entries not programmed within {PROGRAM_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
    let t0 = Instant::now();
    run(Command::new(RNET).args(["lab", "start", "h1", "--name", &lab.name]));
    let h1 = NetNs::open(&lab.netns("h1")).unwrap();
    let sandbox = sandbox.to_path_buf();
    h1.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(wait_programmed(entries, &sandbox, t0))
    })
    .unwrap()
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
