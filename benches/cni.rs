//! CNI ADD and DEL latency of rnet-cni next to the reference `bridge` plugin with `host-local`
//! IPAM (Debian containernetworking-plugins), measured in the same run on one simulated host.
//!
//! Both plugins are exec'd exactly as a runtime does (CNI_* variables, configuration on
//! stdin) from a thread that has entered the host's namespace, so the bridge plugin builds
//! its bridge there, as it would in a real host namespace. Every container is a fresh
//! namespace: all are added first (alternating plugins), then each is deleted and its
//! namespace removed right after, as a runtime does.
//!
//! Run with `make bench` (as root). Prints a markdown section on stdout.
#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cni::Plugin;
use common::{Host, Workload};
use rnet::progress::{Plain, Progress};
use serde_json::{json, Value};

const BRIDGE: &str = "/usr/lib/cni/bridge";

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// ADD and DEL latencies of one plugin.
#[derive(Default)]
struct Timings {
    add: Vec<Duration>,
    del: Vec<Duration>,
}

impl Timings {
    fn row(&mut self) -> [f64; 4] {
        [
            ms(percentile(&mut self.add, 0.5)),
            ms(percentile(&mut self.add, 0.95)),
            ms(percentile(&mut self.del, 0.5)),
            ms(percentile(&mut self.del, 0.95)),
        ]
    }
}

/// One plugin under test: how to call it, with which configuration, and its timings.
struct Contender {
    label: &'static str,
    plugin: Plugin,
    conf: Value,
    t: Timings,
}

impl Contender {
    fn add(&mut self, cid: &str, netns: &Path) {
        let t0 = Instant::now();
        let out = self.plugin.add(&self.conf, cid, netns, "eth0", "");
        self.t.add.push(t0.elapsed());
        assert_eq!(out.status, 0, "{} ADD: {out:?}", self.label);
    }

    fn del(&mut self, cid: &str, netns: &Path) {
        let t0 = Instant::now();
        let out = self.plugin.del(&self.conf, cid, Some(netns), "eth0");
        self.t.del.push(t0.elapsed());
        assert_eq!(out.status, 0, "{} DEL: {out:?}", self.label);
    }
}

/// Containers added (then deleted) at once in the parallel phase, as a runtime starting
/// several pods together runs their plugins.
const WIDTH: usize = 8;

/// Run `call` for every container, `WIDTH` at a time, each on a thread of its own (threads
/// spawned here share the caller's network namespace); the latency of each call.
fn in_parallel(
    label: &str,
    containers: &[(String, &Path)],
    call: impl Fn(&str, &Path) -> common::cni::CniCall + Sync,
) -> Vec<Duration> {
    let mut took = Vec::new();
    for batch in containers.chunks(WIDTH) {
        std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .map(|(cid, netns)| {
                    let call = &call;
                    s.spawn(move || {
                        let t0 = Instant::now();
                        let out = call(cid, netns);
                        assert_eq!(out.status, 0, "{label} {cid}: {out:?}");
                        t0.elapsed()
                    })
                })
                .collect();
            took.extend(handles.into_iter().map(|h| h.join().expect("plugin call")));
        });
    }
    took
}

/// rnet-cni's and the reference's percentiles, and their ratios.
fn print_table(rnet: &mut Timings, reference: &mut Timings) {
    let (r, b) = (rnet.row(), reference.row());
    println!("| plugin | ADD p50 ms | ADD p95 ms | DEL p50 ms | DEL p95 ms |");
    println!("|---|---|---|---|---|");
    for (label, v) in [("rnet-cni", r), ("bridge + host-local", b)] {
        println!(
            "| {label} | {:.2} | {:.2} | {:.2} | {:.2} |",
            v[0], v[1], v[2], v[3]
        );
    }
    let ratios: Vec<String> = (0..4).map(|i| format!("{:.2}x", r[i] / b[i])).collect();
    println!("| rnet-cni / reference | {} |", ratios.join(" | "));
}

fn main() {
    let n: usize = std::env::var("RNET_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    assert!(
        Path::new(BRIDGE).exists(),
        "{BRIDGE} is missing: install containernetworking-plugins (scripts/deps.sh)"
    );
    let mut progress = Progress::new(Plain::Stderr);
    progress.step("cni: starting rnetd");
    let mut host = Host::new("cnibench");
    host.start_daemon();
    host.rnet_ok(&["create", "cbench", "--subnet", "10.80.0.0/16"]);
    let ipam_dir = tempfile::tempdir().expect("host-local data dir");
    // `make bench` gives the statically linked plugin that `make install` installs; alone,
    // this bench measures the one cargo built.
    let mut plugin = Plugin::rnet(&host.socket());
    if let Some(path) = std::env::var_os("RNET_CNI_PLUGIN") {
        plugin.path = path.into();
    }
    let linking = if common::cni::is_static(&plugin.path) {
        "linked statically (as `make install` and the package install it)"
    } else {
        "linked dynamically (as cargo builds it)"
    };
    let mut rnet = Contender {
        label: "rnet-cni",
        plugin,
        conf: json!({"cniVersion": "1.0.0", "name": "cbench", "type": "rnet-cni"}),
        t: Timings::default(),
    };
    let mut bridge = Contender {
        label: "bridge + host-local",
        plugin: Plugin {
            path: BRIDGE.into(),
            cni_path: "/usr/lib/cni".into(),
            env: vec![],
        },
        conf: json!({
            "cniVersion": "1.0.0", "name": "refbench", "type": "bridge",
            "bridge": "cnibr0", "isGateway": true, "ipMasq": false, "mtu": 1450,
            "ipam": {"type": "host-local", "subnet": "10.81.0.0/16",
                     "dataDir": ipam_dir.path()},
        }),
        t: Timings::default(),
    };
    let hostns = host.netns_path();
    // The parallel phase's timings: [rnet-cni, bridge].
    let mut par = [Timings::default(), Timings::default()];
    progress.step(&format!(
        "cni: ADD and DEL of {n} containers, rnet-cni and bridge"
    ));
    std::thread::scope(|s| {
        s.spawn(|| {
            // This thread (and the plugins it forks) lives in the host's namespace.
            rnet::netns::NetNs::open(&hostns)
                .and_then(|ns| ns.enter())
                .expect("enter the host namespace");
            // Warm-up (not measured): rnet's sandbox and the reference bridge get created.
            let (wr, wb) = (Workload::new("warm"), Workload::new("warm"));
            rnet.add("warm", &wr.path());
            bridge.add("warm", &wb.path());
            rnet.del("warm", &wr.path());
            bridge.del("warm", &wb.path());
            drop((wr, wb));
            rnet.t = Timings::default();
            bridge.t = Timings::default();
            let ws: Vec<(Workload, Workload)> = (0..n)
                .map(|_| (Workload::new("r"), Workload::new("b")))
                .collect();
            for (i, (wr, wb)) in ws.iter().enumerate() {
                rnet.add(&format!("r{i}"), &wr.path());
                bridge.add(&format!("b{i}"), &wb.path());
            }
            for (i, (wr, wb)) in ws.into_iter().enumerate() {
                rnet.del(&format!("r{i}"), &wr.path());
                drop(wr);
                bridge.del(&format!("b{i}"), &wb.path());
                drop(wb);
            }
            // WIDTH containers at once, the plugins taking turns batch by batch.
            let ws: Vec<(Workload, Workload)> = (0..n)
                .map(|_| (Workload::new("pr"), Workload::new("pb")))
                .collect();
            let (pr, pb): (Vec<_>, Vec<_>) = ws
                .iter()
                .enumerate()
                .map(|(i, (wr, wb))| ((format!("pr{i}"), wr.path()), (format!("pb{i}"), wb.path())))
                .unzip();
            let pr: Vec<(String, &Path)> =
                pr.iter().map(|(c, p)| (c.clone(), p.as_path())).collect();
            let pb: Vec<(String, &Path)> =
                pb.iter().map(|(c, p)| (c.clone(), p.as_path())).collect();
            let (r, b) = (&rnet, &bridge);
            for (rc, bc) in pr.chunks(WIDTH).zip(pb.chunks(WIDTH)) {
                par[0].add.extend(in_parallel(r.label, rc, |c, ns| {
                    r.plugin.add(&r.conf, c, ns, "eth0", "")
                }));
                par[1].add.extend(in_parallel(b.label, bc, |c, ns| {
                    b.plugin.add(&b.conf, c, ns, "eth0", "")
                }));
            }
            for (rc, bc) in pr.chunks(WIDTH).zip(pb.chunks(WIDTH)) {
                par[0].del.extend(in_parallel(r.label, rc, |c, ns| {
                    r.plugin.del(&r.conf, c, Some(ns), "eth0")
                }));
                par[1].del.extend(in_parallel(b.label, bc, |c, ns| {
                    b.plugin.del(&b.conf, c, Some(ns), "eth0")
                }));
            }
            drop(ws);
        });
    });
    progress.finish();
    println!("### CNI ADD and DEL latency (one host, {n} containers, each a fresh namespace)\n");
    println!("rnet-cni {linking}.\n");
    print_table(&mut rnet.t, &mut bridge.t);
    println!(
        "\n{WIDTH} containers at once ({n} each, the plugins taking turns batch by batch), the \
         latency of each call:\n"
    );
    let [pr, pb] = &mut par;
    print_table(pr, pb);
    println!(
        "\nTarget: rnet-cni ADD and DEL p50 at most 0.5x the reference's. rnet-cni also records \
         the endpoint in rnetd's store; its DEL frees the address before answering and deletes \
         the veth pair in the background (the kernel spends an RCU grace period on a veth \
         deletion), while `bridge` deletes it before answering."
    );
}
