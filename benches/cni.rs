//! CNI ADD and DEL latency of rnet-cni next to the reference `bridge` plugin with `host-local`
//! IPAM (Debian containernetworking-plugins), measured in the same run on one simulated host.
//!
//! Both plugins are exec'd exactly as a runtime does (CNI_* variables, configuration on
//! stdin) from a thread that has entered the host's namespace, so the bridge plugin builds
//! its bridge there, as it would in a real host namespace. Every container is a fresh
//! namespace: all are added first (alternating plugins), then each is deleted and its
//! namespace removed right after, as a runtime does. Five rounds (`RNET_BENCH_ROUNDS`) of
//! that, one at a time and 8 at once; each ratio is taken within its round.
//!
//! Run with `make bench` (as root). Prints a markdown section on stdout.
#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cni::Plugin;
use common::{env_count, median_min_max, Host, Workload};
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
    fn row(&mut self) -> Row {
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

/// The four figures of a table row: ADD p50, ADD p95, DEL p50, DEL p95.
type Row = [f64; 4];

/// One round's rows: [rnet-cni, reference], one at a time and `WIDTH` at once.
struct Round {
    sequential: [Row; 2],
    parallel: [Row; 2],
}

/// Both plugins' medians over the rounds (ms), and the ratio's median (min–max) over the
/// rounds, each round's ratio taken within that round.
fn print_table(rows: &[[Row; 2]]) {
    println!("| plugin | ADD p50 ms | ADD p95 ms | DEL p50 ms | DEL p95 ms |");
    println!("|---|---|---|---|---|");
    for (k, label) in ["rnet-cni", "bridge + host-local"].iter().enumerate() {
        let cells: Vec<String> = (0..4)
            .map(|i| {
                let (median, _, _) = median_min_max(rows.iter().map(|r| r[k][i]).collect());
                format!("{median:.2}")
            })
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
    let ratios: Vec<String> = (0..4)
        .map(|i| {
            let (median, lo, hi) = median_min_max(rows.iter().map(|r| r[0][i] / r[1][i]).collect());
            format!("{median:.2}x ({lo:.2}–{hi:.2})")
        })
        .collect();
    println!("| rnet-cni / reference | {} |", ratios.join(" | "));
}

/// One round: `n` containers added one at a time (the plugins taking turns), then deleted
/// one at a time, each namespace removed right after its DEL; then `n` more `WIDTH` at once,
/// the plugins taking turns batch by batch.
fn round(rnet: &mut Contender, bridge: &mut Contender, n: usize) -> Round {
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
    let sequential = [rnet.t.row(), bridge.t.row()];
    let ws: Vec<(Workload, Workload)> = (0..n)
        .map(|_| (Workload::new("pr"), Workload::new("pb")))
        .collect();
    let (pr, pb): (Vec<_>, Vec<_>) = ws
        .iter()
        .enumerate()
        .map(|(i, (wr, wb))| ((format!("pr{i}"), wr.path()), (format!("pb{i}"), wb.path())))
        .unzip();
    let pr: Vec<(String, &Path)> = pr.iter().map(|(c, p)| (c.clone(), p.as_path())).collect();
    let pb: Vec<(String, &Path)> = pb.iter().map(|(c, p)| (c.clone(), p.as_path())).collect();
    let mut par = [Timings::default(), Timings::default()];
    let (r, b) = (&*rnet, &*bridge);
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
    let [pr, pb] = &mut par;
    Round {
        sequential,
        parallel: [pr.row(), pb.row()],
    }
}

fn main() {
    let n = env_count("RNET_BENCH_N", 100);
    let rounds = env_count("RNET_BENCH_ROUNDS", 5);
    assert!(
        Path::new(BRIDGE).exists(),
        "{BRIDGE} is missing: install containernetworking-plugins (scripts/deps.sh)"
    );
    let mut progress = Progress::new(Plain::Stderr);
    progress.step("cni: starting rnetd");
    let mut host = Host::new("cnibench");
    // Where a real host keeps it: rnetd's run directory (the journal of its attachments) is
    // on /run, a tmpfs; host-local's data directory stays on disk, as /var/lib/cni is.
    host.run_dir_on_tmpfs();
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
    let mut done = Vec::new();
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
            for k in 1..=rounds {
                progress.step(&format!(
                    "cni: round {k} of {rounds}: ADD and DEL of {n} containers one at a time, \
                     then {n} {WIDTH} at once, rnet-cni and bridge taking turns"
                ));
                done.push(round(&mut rnet, &mut bridge, n));
            }
        });
    });
    progress.finish();
    println!(
        "### CNI ADD and DEL latency (one host, {n} containers a round, each a fresh namespace; \
         median (min–max) over {rounds} rounds)\n"
    );
    println!("rnet-cni {linking}. One at a time:\n");
    print_table(&done.iter().map(|r| r.sequential).collect::<Vec<_>>());
    println!("\n{WIDTH} containers at once, the plugins taking turns batch by batch:\n");
    print_table(&done.iter().map(|r| r.parallel).collect::<Vec<_>>());
    println!(
        "\nEach ratio is taken within its round. Target (issue 13): rnet-cni's ADD at most 0.33x \
         and its DEL at most 0.2x the reference's, p50 and p95, one at a time and {WIDTH} at \
         once. rnet-cni also records the endpoint in rnetd's store (on disk) and in its run \
         directory (a tmpfs, as /run is); host-local records it in its data directory (on \
         disk). rnet-cni's DEL frees the address before answering and deletes the veth pair in the background (the kernel spends an \
         RCU grace period on a veth deletion), while `bridge` deletes it before answering."
    );
}
