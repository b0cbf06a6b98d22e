//! The Vagrant lab (vagrant/) with Vagrant's docker provider, run the way vagrant/README.md
//! tells users to: `vagrant up --provider=docker` brings up three nodes (one container each,
//! etcd on node1, rnetd on every node, running the binaries this build made), every node's
//! `rnet peers` sees the others, workloads on one rnet network ping each other across nodes
//! with VXLAN on the lab network, a halted node drops out while the others keep talking, and
//! `vagrant destroy -f` removes the containers and the lab network.
//!
//! Docker is a dockerd of this test (tests/common/docker.rs) in a network namespace of its own:
//! the lab's bridge and every node live there, never in the root namespace. Vagrant's home and
//! machine state are in a temp dir, so nothing reaches /root/.vagrant.d or vagrant/.vagrant.
//! The lab's image is built once per machine by vagrant/docker-setup.sh (cached under
//! /var/cache/rnet/vagrant); later runs only import it.
mod common;

use std::net::SocketAddrV4;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::docker::{require_docker, Dockerd};
use common::pcap::Capture;
use common::{output_with_timeout, wait_until, Workload};
use serde_json::Value;

const NODES: u32 = 3;
/// The lab network's /24 (RNET_SUBNET): inside 198.18.0.0/15, and not the Vagrantfile's
/// default, so the test also shows the setting is honoured.
const SUBNET: &str = "198.19.56";
/// The lab's Docker network, also the prefix of the node containers' names.
const LAB: &str = "rnt-vagrant";
/// `vagrant up` (the first run on a machine also builds the image: about a minute).
const UP: Duration = Duration::from_secs(600);
/// Any other vagrant or docker call.
const CALL: Duration = Duration::from_secs(120);
/// Nodes see each other, and workloads each other, within this.
const CONVERGE: Duration = Duration::from_secs(60);

/// The Vagrant lab of this test, aimed at `dockerd`; Drop runs `vagrant destroy -f` (the
/// Dockerd, dropped after it, then removes whatever is left and stops the engine).
struct VagrantLab<'a> {
    dockerd: &'a Dockerd,
    dir: tempfile::TempDir,
    up: bool,
}

impl<'a> VagrantLab<'a> {
    fn new(dockerd: &'a Dockerd) -> VagrantLab<'a> {
        assert!(
            Path::new("/usr/bin/vagrant").exists(),
            "this test needs vagrant (run scripts/deps.sh as root)"
        );
        let dir = tempfile::Builder::new()
            .prefix("rnt-vagrant-")
            .tempdir()
            .expect("vagrant temp dir");
        VagrantLab {
            dockerd,
            dir,
            up: false,
        }
    }

    /// `vagrant ARGS…` in vagrant/, with this lab's settings.
    fn command(&self, args: &[&str]) -> Command {
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_rnetd"))
            .parent()
            .expect("binary dir");
        let mut cmd = Command::new("vagrant");
        cmd.args(args)
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("vagrant"))
            .env("VAGRANT_HOME", self.dir.path().join("home"))
            .env("VAGRANT_DOTFILE_PATH", self.dir.path().join("machines"))
            .env("VAGRANT_CHECKPOINT_DISABLE", "1")
            .env("VAGRANT_NO_COLOR", "1")
            .env_remove("VAGRANT_DEFAULT_PROVIDER")
            .env(
                "DOCKER_HOST",
                format!("unix://{}", self.dockerd.socket().display()),
            )
            .env("RNET_NODES", NODES.to_string())
            .env("RNET_SUBNET", SUBNET)
            .env("RNET_DOCKER_NETWORK", LAB)
            .env("RNET_BIN_DIR", bin_dir);
        cmd
    }

    fn run(&self, args: &[&str], timeout: Duration) -> Output {
        output_with_timeout(&mut self.command(args), timeout)
    }

    /// As `run`, asserted to succeed; returns stdout.
    fn ok(&self, args: &[&str], timeout: Duration) -> String {
        let out = self.run(args, timeout);
        assert!(
            out.status.success(),
            "`vagrant {}` failed ({}).\nstdout:\n{}\nstderr:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn up(&mut self) {
        self.up = true;
        self.ok(&["up", "--provider=docker"], UP);
    }

    /// `vagrant docker-exec -t NODE -- ARGV…`, the README's way into a node. (-t: Debian's
    /// vagrant 2.3.4 on Ruby 3.1 fails on docker-exec without it.)
    fn exec(&self, node: &str, argv: &[&str]) -> Output {
        let mut args = vec!["docker-exec", "-t", node, "--"];
        args.extend_from_slice(argv);
        self.run(&args, CALL)
    }

    /// The node's container name (the Vagrantfile names them NETWORK-nodeN).
    fn container(node: &str) -> String {
        format!("{LAB}-{node}")
    }

    /// `docker exec CONTAINER ARGV…` on `node`, for polling (no Vagrant start-up per call).
    fn docker_exec(&self, node: &str, argv: &[&str]) -> Output {
        let container = Self::container(node);
        let mut args = vec!["exec", container.as_str()];
        args.extend_from_slice(argv);
        self.dockerd.docker(&args)
    }

    /// `rnet -o json ARGS…` on `node`, or None if it failed or printed no JSON.
    fn rnet_json(&self, node: &str, args: &[&str]) -> Option<Value> {
        let mut argv = vec!["rnet", "-o", "json"];
        argv.extend_from_slice(args);
        let out = self.docker_exec(node, &argv);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// One ping from a fresh workload on `node`'s network `net` to `ip`.
    fn ping(&self, node: &str, net: &str, ip: &str) -> bool {
        self.docker_exec(
            node,
            &[
                "rnet", "run", net, "--", "ping", "-n", "-q", "-c1", "-W1", ip,
            ],
        )
        .status
        .success()
    }

    /// The tail of a node's output (provision.sh, etcd, rnetd), for failure messages.
    fn logs(&self, node: &str) -> String {
        let out = self
            .dockerd
            .docker(&["logs", "--tail", "40", &Self::container(node)]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for VagrantLab<'_> {
    fn drop(&mut self) {
        if !self.up {
            return;
        }
        if thread::panicking() {
            for i in 1..=NODES {
                let node = format!("node{i}");
                eprintln!("--- {node} (docker logs, tail) ---\n{}", self.logs(&node));
            }
        }
        // Never panics: a destroy that fails or hangs leaves the rest to Dockerd's Drop.
        let mut cmd = self.command(&["destroy", "-f"]);
        if let Ok(mut child) = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
            let end = Instant::now() + CALL;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < end {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn peer_states(peers: &Value) -> Vec<(String, String)> {
    let mut states: Vec<(String, String)> = peers
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
                    (s("host"), s("state"))
                })
                .collect()
        })
        .unwrap_or_default();
    states.sort();
    states
}

/// What `node`'s `rnet peers` should say while every node is up.
fn all_live(node: &str) -> Vec<(String, String)> {
    (1..=NODES)
        .map(|i| {
            let host = format!("node{i}");
            let state = if host == node { "self" } else { "live" };
            (host, state.to_string())
        })
        .collect()
}

/// The interface in the namespace at `netns` whose peer is `node`'s eth0 (its veth end on the
/// lab bridge): a capture there sees the node's traffic, which the bridge device itself does not.
fn lab_port_of(lab: &VagrantLab, netns: &Path, node: &str) -> String {
    let out = lab.docker_exec(node, &["cat", "/sys/class/net/eth0/iflink"]);
    let index = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success() && !index.is_empty(), "{out:?}");
    let links = output_with_timeout(
        Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["--", "ip", "-o", "link"]),
        CALL,
    );
    String::from_utf8_lossy(&links.stdout)
        .lines()
        .find(|l| l.split(':').next().map(str::trim) == Some(index.as_str()))
        .and_then(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .unwrap_or_else(|| panic!("no interface {index} in the engine's namespace"))
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn vagrant_docker_lab_nodes_peer_and_workloads_ping_across_nodes() {
    require_docker();
    let start = Instant::now();
    // The engine's namespace: a bare one, holding the lab bridge once Vagrant made it.
    let engine_ns = Workload::new("vagrant-engine");
    let dockerd = Dockerd::start(&engine_ns.path());
    let mut lab = VagrantLab::new(&dockerd);

    // A bad setting is refused before anything is made.
    let out = output_with_timeout(
        lab.command(&["up", "--provider=docker"])
            .env("RNET_SUBNET", "198.19.300"),
        CALL,
    );
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RNET_SUBNET must be three octets"), "{err}");
    assert_eq!(
        dockerd.ok(&["ps", "-aq"]),
        "",
        "a refused up created containers"
    );

    lab.up();
    let up_took = start.elapsed();
    let status = lab.ok(&["status", "--machine-readable"], CALL);
    for i in 1..=NODES {
        assert!(
            status.contains(&format!("node{i},state,running")),
            "node{i} is not running:\n{status}"
        );
    }
    let subnet = dockerd.ok(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
        LAB,
    ]);
    assert_eq!(subnet, format!("{SUBNET}.0/24"));

    // Every node's rnetd registered through node1's etcd and sees the others.
    for i in 1..=NODES {
        let node = format!("node{i}");
        let want = all_live(&node);
        let end = Instant::now() + CONVERGE;
        loop {
            let seen = lab
                .rnet_json(&node, &["peers"])
                .map(|p| peer_states(&p))
                .unwrap_or_default();
            if seen == want {
                break;
            }
            assert!(
                Instant::now() < end,
                "{node}'s peers after {CONVERGE:?}: {seen:?}, want {want:?}\n{}",
                lab.logs(&node)
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
    // The README's command shows the same.
    let out = lab.exec("node2", &["rnet", "peers"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for i in 1..=NODES {
        let addr = format!("{SUBNET}.{}", 10 + i);
        assert!(
            table.contains(&format!("node{i}")) && table.contains(&addr),
            "{table}"
        );
    }

    // A network and one long-lived workload on node1 and on node3.
    let out = lab.exec(
        "node1",
        &["rnet", "create", "blue", "--subnet", "10.1.0.0/24"],
    );
    assert!(out.status.success(), "{out:?}");
    for (node, ip) in [("node1", "10.1.0.10"), ("node3", "10.1.0.30")] {
        let container = VagrantLab::container(node);
        dockerd.ok(&[
            "exec", "-d", &container, "rnet", "run", "blue", "--ip", ip, "--", "sleep", "3600",
        ]);
    }
    wait_until("both workloads in node2's view of blue", CONVERGE, || {
        lab.rnet_json("node2", &["inspect", "blue"])
            .and_then(|v| v["endpoints"].as_array().map(|e| e.len()))
            == Some(2)
    });
    let vni = lab
        .rnet_json("node1", &["inspect", "blue"])
        .expect("inspect blue")["vni"]
        .as_u64()
        .expect("blue's VNI") as u32;

    // Pings across nodes, the first pair captured on node1's port of the lab bridge.
    let port = lab_port_of(&lab, &engine_ns.path(), "node1");
    let node1: SocketAddrV4 = format!("{SUBNET}.11:9").parse().unwrap();
    let capture = Capture::start(&engine_ns.path(), &port, node1);
    wait_until("node2 → node1's workload", CONVERGE, || {
        lab.ping("node2", "blue", "10.1.0.10")
    });
    let out = lab.exec(
        "node2",
        &[
            "rnet",
            "run",
            "blue",
            "--",
            "ping",
            "-c3",
            "-W1",
            "10.1.0.10",
        ],
    );
    assert!(out.status.success(), "README ping failed: {out:?}");
    let captured = capture.finish();
    assert!(
        captured.vxlan_vnis().contains(&vni),
        "no VXLAN frames of VNI {vni} on node1's lab port: {:?}",
        captured.vxlan_vnis()
    );
    wait_until("node1 → node3's workload", CONVERGE, || {
        lab.ping("node1", "blue", "10.1.0.30")
    });
    wait_until("node3 → node1's workload", CONVERGE, || {
        lab.ping("node3", "blue", "10.1.0.10")
    });
    // No workload has this address: a ping that succeeded anyway would prove nothing above.
    assert!(!lab.ping("node2", "blue", "10.1.0.99"));

    // A node that goes away: the others notice, its workload is unreachable, and the rest
    // keep talking.
    lab.ok(&["halt", "node3"], CALL);
    wait_until("node1 no longer sees node3 live", CONVERGE, || {
        lab.rnet_json("node1", &["peers"])
            .map(|p| {
                peer_states(&p)
                    .iter()
                    .all(|(h, s)| h != "node3" || s != "live")
            })
            .unwrap_or(false)
    });
    assert!(!lab.ping("node1", "blue", "10.1.0.30"));
    wait_until(
        "node2 → node1's workload with node3 gone",
        CONVERGE,
        || lab.ping("node2", "blue", "10.1.0.10"),
    );

    let checks_took = start.elapsed() - up_took;
    let destroy_start = Instant::now();
    lab.ok(&["destroy", "-f"], CALL);
    lab.up = false;
    assert_eq!(
        dockerd.ok(&["ps", "-aq"]),
        "",
        "containers left after destroy"
    );
    let networks = dockerd.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!networks.lines().any(|n| n == LAB), "{networks}");
    assert!(
        !Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("vagrant/.vagrant")
            .exists(),
        "vagrant wrote its machine state into the repository"
    );
    eprintln!(
        "vagrant lab: up {up_took:?}, checks {checks_took:?}, destroy {:?}, total {:?}",
        destroy_start.elapsed(),
        start.elapsed()
    );
}
