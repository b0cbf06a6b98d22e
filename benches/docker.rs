//! What rnet costs a `docker run`: `docker run --rm --network <rnet network> IMAGE true`
//! against `--network none` (and against a network of Docker's own bridge driver, for
//! reference), interleaved in the same run on one simulated host, with a real Docker engine
//! (Debian's docker.io) and rnetd serving the libnetwork driver and IPAM driver.
//!
//! Run with `make bench` (as root). Prints a markdown section on stdout.
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::docker::{DockerPlugin, Dockerd};
use common::Host;
use rnet::progress::{Plain, Progress};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// One `docker run --rm --network NET IMAGE true`, timed around the CLI process.
fn run(docker: &Dockerd, network: &str, image: &str) -> Duration {
    let mut cmd = docker.command(&["run", "--rm", "--network", network, image, "true"]);
    let t0 = Instant::now();
    let out = cmd.output().expect("run docker");
    let took = t0.elapsed();
    assert!(
        out.status.success(),
        "docker run --network {network}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn main() {
    let n: usize = std::env::var("RNET_BENCH_DOCKER_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    // rnetd logs how long it took to answer each Docker call; that is rnet's own share.
    std::env::set_var("RUST_LOG", "info,rnet::daemon::docker_plugin=debug");
    let mut progress = Progress::new(Plain::Stderr);
    progress.step("docker: starting rnetd and dockerd");
    let mut host = Host::new("dkbench");
    let plugin = DockerPlugin::socket_dir();
    let args = plugin.rnetd_args();
    host.start_daemon_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let docker = Dockerd::start(&host.netns_path());
    let image = docker.busybox();
    let d = plugin.name();
    docker.ok(&[
        "network",
        "create",
        "-d",
        d,
        "--ipam-driver",
        d,
        "--subnet",
        "10.65.0.0/24",
        "rnetnet",
    ]);
    docker.ok(&[
        "network",
        "create",
        "-d",
        "bridge",
        "--subnet",
        "10.66.0.0/24",
        "bridgenet",
    ]);
    let nets = ["none", "rnetnet", "bridgenet"];
    progress.step("docker: warm-up runs");
    // Warm-up: image layers, the rnet sandbox, Docker's caches.
    for net in nets {
        for _ in 0..3 {
            run(&docker, net, image);
        }
    }
    let log_start = host.daemon_log().len();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); nets.len()];
    for k in 0..n {
        progress.count("docker: `docker run` on each network", k, n);
        for (i, net) in nets.iter().enumerate() {
            samples[i].push(run(&docker, net, image));
        }
    }
    progress.finish();
    let mut in_rnet = rnet_share(&host.daemon_log()[log_start..]);
    assert_eq!(in_rnet.len(), n, "one group of plugin calls per rnet run");
    let mut resolver = resolver_setup(n);
    let stats: Vec<(Duration, Duration)> = samples
        .iter_mut()
        .map(|s| (percentile(s, 0.5), percentile(s, 0.95)))
        .collect();
    let row = |what: &str, (p50, p95): (Duration, Duration)| {
        println!("| {what} | {} | {} |", secs(p50), secs(p95));
    };
    println!("### `docker run --rm IMAGE true` (one host, {n} runs each, interleaved)\n");
    println!("| network | p50 s | p95 s |\n|---|---|---|");
    row("`--network none`", stats[0]);
    row(
        "`--network` on rnet (`-d rnet --ipam-driver rnet`)",
        stats[1],
    );
    row(
        "… of which Docker waited for rnetd's answers (all plugin calls of the run)",
        (
            percentile(&mut in_rnet, 0.5),
            percentile(&mut in_rnet, 0.95),
        ),
    );
    row(
        "`--network` on Docker's own bridge driver (reference)",
        stats[2],
    );
    row(
        "Docker's DNS resolver set-up alone: its 11 `iptables` runs in a fresh namespace",
        (
            percentile(&mut resolver, 0.5),
            percentile(&mut resolver, 0.95),
        ),
    );
    let added = stats[1].0.as_secs_f64() - stats[0].0.as_secs_f64();
    let bridge = stats[2].0.as_secs_f64() - stats[0].0.as_secs_f64();
    println!(
        "\nrnet adds {added:.3} s to a `docker run` at p50 (target: at most 0.100 s; {}); \
         Docker's own bridge driver adds {bridge:.3} s on the same engine. Every container on a \
         user-defined Docker network, whatever its driver, gets Docker's embedded DNS resolver, \
         which Docker sets up with the eleven `iptables` runs of the last row. \
         Docker {} with `--iptables=false --bridge=none`, busybox image built with `docker import`.",
        if added <= 0.1 { "met" } else { "not met" },
        docker.ok(&["version", "-f", "{{.Server.Version}}"])
    );
    drop(docker);
}

/// Per `docker run` on the rnet network, the time rnetd took to answer Docker's calls (from
/// its debug log): each run's calls start with the IPAM's RequestAddress.
fn rnet_share(log: &str) -> Vec<Duration> {
    let mut runs: Vec<Duration> = Vec::new();
    for line in log.lines().filter(|l| l.contains("Docker call answered")) {
        let micros: u64 = line
            .split("micros=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no micros in {line}"));
        if line.contains("IpamDriver.RequestAddress") || runs.is_empty() {
            runs.push(Duration::ZERO);
        }
        *runs.last_mut().expect("a run") += Duration::from_micros(micros);
    }
    runs
}

/// What Docker's embedded DNS resolver set-up costs: the eleven `iptables` commands dockerd
/// runs inside every new container namespace on a user-defined network (as traced on this
/// engine), run by one shell in a fresh namespace.
fn resolver_setup(n: usize) -> Vec<Duration> {
    const RULES: &[&str] = &[
        "-L -n",
        "-t nat -C OUTPUT -d 127.0.0.11 -j DOCKER_OUTPUT",
        "-t nat -N DOCKER_OUTPUT",
        "-t nat -I OUTPUT -d 127.0.0.11 -j DOCKER_OUTPUT",
        "-t nat -C POSTROUTING -d 127.0.0.11 -j DOCKER_POSTROUTING",
        "-t nat -N DOCKER_POSTROUTING",
        "-t nat -I POSTROUTING -d 127.0.0.11 -j DOCKER_POSTROUTING",
        "-t nat -I DOCKER_OUTPUT -d 127.0.0.11 -p udp --dport 53 -j DNAT --to-destination 127.0.0.11:40001",
        "-t nat -I DOCKER_POSTROUTING -s 127.0.0.11 -p udp --sport 40001 -j SNAT --to-source :53",
        "-t nat -I DOCKER_OUTPUT -d 127.0.0.11 -p tcp --dport 53 -j DNAT --to-destination 127.0.0.11:40002",
        "-t nat -I DOCKER_POSTROUTING -s 127.0.0.11 -p tcp --sport 40002 -j SNAT --to-source :53",
    ];
    let script: String = RULES
        .iter()
        .map(|r| format!("iptables --wait {r} >/dev/null 2>&1; "))
        .collect();
    (0..n)
        .map(|_| {
            let w = common::Workload::new("resolver");
            let mut cmd = std::process::Command::new("nsenter");
            cmd.arg(format!("--net={}", w.path().display()))
                .args(["--", "sh", "-c", &script]);
            let t0 = Instant::now();
            let st = cmd.status().expect("run iptables");
            let took = t0.elapsed();
            assert!(st.success(), "iptables script");
            took
        })
        .collect()
}
