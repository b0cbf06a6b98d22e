//! Attach + detach latency of rnet on one simulated host, next to the floor: the same
//! veth + address + route + bridge work done with `ip` commands, measured in the same run.
//!
//! Run with `make bench` (as root). Prints a markdown section on stdout.
#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Host, Workload};
use rnet::api::types::{AttachRequest, DetachRequest, DetachResponse};
use rnet::api::Client;
use rnet::model::Endpoint;
use rnet::progress::{Plain, Progress};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

struct Series {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Series {
    fn row(&mut self) -> (Duration, Duration) {
        (
            percentile(&mut self.samples, 0.5),
            percentile(&mut self.samples, 0.95),
        )
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?}");
}

fn main() {
    let n: usize = std::env::var("RNET_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    // Steps on stderr: a spinner on a terminal (make bench), plain lines otherwise.
    let mut progress = Progress::new(Plain::Stderr);
    progress.step("attach: starting rnetd");
    let mut host = Host::new("bench");
    host.start_daemon();
    host.rnet_ok(&["create", "bench", "--subnet", "10.40.0.0/16"]);
    let client = Client::new(host.socket());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut attach = Series {
        name: "rnet attach (API)",
        samples: vec![],
    };
    let mut detach = Series {
        name: "rnet detach (API)",
        samples: vec![],
    };
    let mut both = Series {
        name: "rnet attach + detach (API)",
        samples: vec![],
    };
    let mut cli = Series {
        name: "rnet attach + detach (CLI processes)",
        samples: vec![],
    };
    // Warm-up: the first attach creates the sandbox.
    let warm = Workload::new("warm");
    host.rnet_ok(&[
        "attach",
        "bench",
        "--netns",
        warm.path().to_str().unwrap(),
        "--id",
        "warm",
    ]);
    for i in 0..n {
        progress.count("attach: attach + detach (API, then CLI)", i, n);
        let w = Workload::new("b");
        let req = AttachRequest {
            network: "bench".into(),
            netns: Some(w.path().display().to_string()),
            id: Some(format!("b{i}")),
            ..Default::default()
        };
        let t0 = Instant::now();
        let _ep: Endpoint = rt
            .block_on(client.post("/v1/attach", &req))
            .expect("attach");
        let t1 = Instant::now();
        let det = DetachRequest {
            network: "bench".into(),
            id: Some(format!("b{i}")),
            ..Default::default()
        };
        let _: DetachResponse = rt
            .block_on(client.post("/v1/detach", &det))
            .expect("detach");
        let t2 = Instant::now();
        attach.samples.push(t1 - t0);
        detach.samples.push(t2 - t1);
        both.samples.push(t2 - t0);
        let p = w.path().display().to_string();
        let t0 = Instant::now();
        rnet_cli(
            &host,
            &["attach", "bench", "--netns", &p, "--id", &format!("c{i}")],
        );
        rnet_cli(&host, &["detach", "bench", "--id", &format!("c{i}")]);
        cli.samples.push(t0.elapsed());
    }
    progress.step("attach: the floor (a veth pair by `ip`)");
    let mut floor = floor_series(&host, n);
    progress.finish();
    let mut rows = [attach, detach, both, cli];
    println!("### Attach and detach latency (one host, {n} workloads)\n");
    println!("| what | p50 ms | p95 ms |\n|---|---|---|");
    let (fp50, fp95) = floor.row();
    for s in rows.iter_mut() {
        let (p50, p95) = s.row();
        println!("| {} | {} | {} |", s.name, ms(p50), ms(p95));
    }
    println!(
        "| floor: same veth + address + route + bridge work with `ip` | {} | {} |",
        ms(fp50),
        ms(fp95)
    );
    let (b50, b95) = rows[2].row();
    println!(
        "\nrnet attach + detach over the `ip` floor: p50 {:.2}x, p95 {:.2}x (rnet also records the endpoint in its store).",
        b50.as_secs_f64() / fp50.as_secs_f64(),
        b95.as_secs_f64() / fp95.as_secs_f64()
    );
}

/// One CLI process, waited for directly (the harness polls, which would blur the timing).
fn rnet_cli(host: &Host, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_rnet"))
        .arg("--socket")
        .arg(host.socket())
        .args(args)
        .output()
        .expect("run rnet");
    assert!(
        out.status.success(),
        "rnet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The same kernel work with one `ip` process per step, in a scratch namespace of the host.
fn floor_series(host: &Host, n: usize) -> Series {
    let hostns = host.netns_name().to_string();
    ip(&["-n", &hostns, "link", "add", "flbr0", "type", "bridge"]);
    ip(&["-n", &hostns, "link", "set", "flbr0", "up"]);
    let mut s = Series {
        name: "floor",
        samples: vec![],
    };
    for _ in 0..n {
        let w = Workload::new("f");
        let t0 = Instant::now();
        ip(&[
            "-n",
            &hostns,
            "link",
            "add",
            "flv0",
            "mtu",
            "1450",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            w.name(),
        ]);
        ip(&[
            "-n", &hostns, "link", "set", "flv0", "master", "flbr0", "up",
        ]);
        ip(&["-n", w.name(), "addr", "add", "10.41.0.2/16", "dev", "eth0"]);
        ip(&["-n", w.name(), "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            w.name(),
            "route",
            "add",
            "default",
            "via",
            "10.41.0.1",
            "dev",
            "eth0",
        ]);
        ip(&["-n", &hostns, "link", "del", "flv0"]);
        s.samples.push(t0.elapsed());
    }
    s
}
