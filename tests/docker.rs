//! rnet as Docker's libnetwork network driver and IPAM driver.
//!
//! - The plugin socket, spoken to with HTTP requests as dockerd sends them (no Docker needed).
//! - A real Docker engine (Debian's docker.io, started by the test inside a test host's
//!   namespace): a container on a `-d rnet --ipam-driver rnet` network pings a workload that
//!   `rnet attach` put on the same rnet network, and Docker's next Join after an rnetd restart
//!   works.
//! - Two lab hosts over etcd, each with its own Docker engine: containers and `rnet run`
//!   workloads on one rnet network reach each other across hosts.
mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::docker::{DockerPlugin, Dockerd};
use common::lab::Lab;
use common::{wait_until, Host, Workload};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// An HTTP/1.1 POST on the plugin socket, with the headers dockerd's plugin client sends;
/// returns the status and the JSON body.
fn call(socket: &Path, method: &str, body: &str) -> (u16, Value) {
    let mut s =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "POST /{method} HTTP/1.1\r\nHost: plugin\r\nUser-Agent: Go-http-client/1.1\r\n\
         Content-Type: application/vnd.docker.plugins.v1.2+json\r\n\
         Accept: application/vnd.docker.plugins.v1.2+json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/vnd.docker.plugins.v1+json"),
        "{method}: {head}"
    );
    let value = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    (status, value)
}

/// A call that must succeed: HTTP 200 and no `Err`/`Error` in the body.
fn ok(socket: &Path, method: &str, body: Value) -> Value {
    let (status, v) = call(socket, method, &body.to_string());
    assert_eq!(status, 200, "{method} {body}: {v}");
    assert!(
        v.get("Err").is_none() && v.get("Error").is_none(),
        "{method} {body} failed: {v}"
    );
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn endpoints(host: &Host, network: &str) -> Vec<Value> {
    host.rnet_json(&["inspect", network])["endpoints"]
        .as_array()
        .unwrap()
        .clone()
}

fn ip_only(cidr: &str) -> String {
    cidr.split('/').next().unwrap().to_string()
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn plugin_socket_speaks_libnetwork_and_ipam() {
    let mut host = Host::new("dkp");
    let plugin = DockerPlugin::socket_dir();
    host.start_daemon_with(&strs(&plugin.rnetd_args()));
    let sock = plugin.path().to_path_buf();

    // Activation and capabilities.
    assert_eq!(
        ok(&sock, "Plugin.Activate", Value::Null),
        json!({"Implements": ["NetworkDriver", "IpamDriver"]})
    );
    let caps = ok(&sock, "NetworkDriver.GetCapabilities", Value::Null);
    assert_eq!(caps["Scope"], "local");
    assert_eq!(caps["ConnectivityScope"], "global");
    assert_eq!(
        ok(&sock, "IpamDriver.GetCapabilities", Value::Null),
        json!({"RequiresMACAddress": false, "RequiresRequestReplay": false})
    );
    let spaces = ok(&sock, "IpamDriver.GetDefaultAddressSpaces", Value::Null);
    let space = spaces["LocalDefaultAddressSpace"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(spaces["GlobalDefaultAddressSpace"].is_string());
    // Unknown and swarm-only methods: 404, which Docker reads as "not implemented".
    assert_eq!(call(&sock, "NetworkDriver.AllocateNetwork", "{}").0, 404);
    assert_eq!(call(&sock, "Nonsense.Method", "{}").0, 404);

    // IPAM: a pool, identical requests give identical answers; a gateway.
    let pool_req = json!({"AddressSpace": space, "Pool": "10.62.0.0/24", "SubPool": "", "Options": {}, "V6": false});
    let pool = ok(&sock, "IpamDriver.RequestPool", pool_req.clone());
    assert_eq!(pool, ok(&sock, "IpamDriver.RequestPool", pool_req));
    assert_eq!(pool["Pool"], "10.62.0.0/24");
    let pool_id = pool["PoolID"].as_str().unwrap().to_string();
    let gw = ok(
        &sock,
        "IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
    );
    assert_eq!(gw["Address"], "10.62.0.1/24");
    // IPAM errors use "Error".
    let (status, e) = call(
        &sock,
        "IpamDriver.RequestPool",
        &json!({"AddressSpace": space, "Pool": "", "V6": false}).to_string(),
    );
    assert_eq!(status, 200);
    assert!(e["Error"].as_str().unwrap().contains("--subnet"), "{e}");

    // The network, as Docker creates it after the IPAM calls.
    let nid = "d".repeat(64);
    ok(
        &sock,
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": nid, "Options": {"com.docker.network.enable_ipv6": false,
               "com.docker.network.generic": {}},
               "IPv4Data": [{"AddressSpace": space, "Pool": "10.62.0.0/24", "Gateway": "10.62.0.1/24"}],
               "IPv6Data": null}),
    );
    let rnet_net = "dk0a3e000018"; // named after the subnet: the same on every host
    assert_eq!(
        host.rnet_json(&["inspect", rnet_net])["subnet"],
        "10.62.0.0/24"
    );

    // An address, held before any container exists (nothing in the kernel for it).
    let addr = ok(
        &sock,
        "IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": null}),
    )["Address"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(addr, "10.62.0.2/24");
    let eps = endpoints(&host, rnet_net);
    assert_eq!(eps.len(), 1);
    assert!(eps[0]["id"].as_str().unwrap().starts_with("docker-ipam-"));
    assert_eq!(eps[0]["netns"], "");

    // Driver errors use "Err".
    let (status, e) = call(
        &sock,
        "NetworkDriver.CreateEndpoint",
        &json!({"NetworkID": "nope", "EndpointID": "x", "Interface": {"Address": addr}})
            .to_string(),
    );
    assert_eq!(status, 200);
    assert!(e["Err"].as_str().unwrap().contains("nope"), "{e}");
    let (_, e) = call(&sock, "NetworkDriver.Join", "{not json");
    assert!(e["Err"].as_str().unwrap().contains("malformed"), "{e}");

    // The endpoint: Docker gave the address; rnet adds only the MAC.
    let eid = "e".repeat(64);
    let created = ok(
        &sock,
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": nid, "EndpointID": eid,
               "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""},
               "Options": {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}}),
    );
    assert_eq!(
        created,
        json!({"Interface": {"MacAddress": "02:52:0a:3e:00:02"}})
    );
    assert_eq!(endpoints(&host, rnet_net)[0]["id"], eid.as_str());
    let info = ok(
        &sock,
        "NetworkDriver.EndpointOperInfo",
        json!({"NetworkID": nid, "EndpointID": eid}),
    );
    assert_eq!(info["Value"]["rnet.address"], addr.as_str());

    // Join: a veth whose free end waits in rnetd's (the host's) namespace.
    let container = Workload::new("container");
    let joined = ok(
        &sock,
        "NetworkDriver.Join",
        json!({"NetworkID": nid, "EndpointID": eid,
               "SandboxKey": container.path().display().to_string(), "Options": {}}),
    );
    assert_eq!(joined["InterfaceName"]["DstPrefix"], "eth");
    assert_eq!(joined["Gateway"], "10.62.0.1");
    assert_eq!(joined["DisableGatewayService"], true);
    let src = joined["InterfaceName"]["SrcName"]
        .as_str()
        .unwrap()
        .to_string();
    let link = host.exec(&["ip", "-o", "link", "show", &src]);
    let link = String::from_utf8_lossy(&link.stdout).into_owned();
    assert!(
        link.contains("02:52:0a:3e:00:02") && link.contains("mtu 1450"),
        "{src} in the host namespace: {link}"
    );
    // What Docker then does: move it, rename it, address it, route via the gateway.
    let cns = container.path().display().to_string();
    for argv in [
        vec!["ip", "link", "set", &src, "netns", &cns],
        vec![
            "ip",
            "-n",
            container.name(),
            "link",
            "set",
            &src,
            "name",
            "eth0",
        ],
        vec![
            "ip",
            "-n",
            container.name(),
            "addr",
            "add",
            &addr,
            "dev",
            "eth0",
        ],
        vec!["ip", "-n", container.name(), "link", "set", "eth0", "up"],
        vec![
            "ip",
            "-n",
            container.name(),
            "route",
            "add",
            "default",
            "via",
            "10.62.0.1",
        ],
    ] {
        let out = host.exec(&argv);
        assert!(
            out.status.success(),
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let w = Workload::new("w");
    let wip = ip_only(
        host.rnet_json(&[
            "attach",
            rnet_net,
            "--netns",
            &w.path().display().to_string(),
        ])["ip"]
            .as_str()
            .unwrap(),
    );
    assert_ne!(wip, "10.62.0.2");
    assert!(container.ping(&wip, 3), "container -> rnet workload {wip}");
    assert!(w.ping("10.62.0.2", 3), "rnet workload -> container");
    assert!(container.ping("10.62.0.1", 1), "container -> gateway");
    host.rnet_ok(&["doctor"]);

    // rnetd restarts; Docker does not replay anything, and the endpoint is still known.
    host.kill_daemon(Signal::SIGTERM);
    assert!(
        !sock.exists(),
        "rnetd removes its plugin socket when it stops"
    );
    host.start_daemon_with(&strs(&plugin.rnetd_args()));
    assert!(container.ping(&wip, 3), "datapath survives the restart");
    let info = ok(
        &sock,
        "NetworkDriver.EndpointOperInfo",
        json!({"NetworkID": nid, "EndpointID": eid}),
    );
    assert_eq!(info["Value"]["rnet.address"], addr.as_str());

    // Leave: the veth goes; the address stays held for the IPAM until ReleaseAddress.
    ok(
        &sock,
        "NetworkDriver.RevokeExternalConnectivity",
        json!({"NetworkID": nid, "EndpointID": eid}),
    );
    ok(
        &sock,
        "NetworkDriver.Leave",
        json!({"NetworkID": nid, "EndpointID": eid}),
    );
    wait_until(
        "the container's veth is gone",
        Duration::from_secs(5),
        || !container.links().contains(&"eth0".to_string()),
    );
    ok(
        &sock,
        "NetworkDriver.DeleteEndpoint",
        json!({"NetworkID": nid, "EndpointID": eid}),
    );
    let held: Vec<Value> = endpoints(&host, rnet_net)
        .into_iter()
        .filter(|e| e["ip"] == addr.as_str())
        .collect();
    assert_eq!(held.len(), 1);
    assert!(
        held[0]["id"].as_str().unwrap().starts_with("docker-ipam-"),
        "{held:?}"
    );
    // Deleting twice is fine.
    ok(
        &sock,
        "NetworkDriver.DeleteEndpoint",
        json!({"NetworkID": nid, "EndpointID": eid}),
    );
    ok(
        &sock,
        "IpamDriver.ReleaseAddress",
        json!({"PoolID": pool_id, "Address": ip_only(&addr)}),
    );
    // Only the rnet workload is left; ReleaseAddress of its address is refused quietly.
    ok(
        &sock,
        "IpamDriver.ReleaseAddress",
        json!({"PoolID": pool_id, "Address": wip}),
    );
    let left = endpoints(&host, rnet_net);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(ip_only(left[0]["ip"].as_str().unwrap()), wip);

    ok(
        &sock,
        "NetworkDriver.DeleteNetwork",
        json!({"NetworkID": nid}),
    );
    ok(&sock, "IpamDriver.ReleasePool", json!({"PoolID": pool_id}));
    ok(&sock, "IpamDriver.ReleasePool", json!({"PoolID": pool_id}));
    let state: Value =
        serde_json::from_slice(&std::fs::read(host.state_dir().join("docker.json")).unwrap())
            .unwrap();
    assert_eq!(state, json!({"networks": {}, "pools": {}}));
    host.rnet_ok(&["doctor"]);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn docker_container_reaches_rnet_workload_and_joins_after_restart() {
    let mut host = Host::new("dk");
    let plugin = DockerPlugin::socket_dir();
    host.start_daemon_with(&strs(&plugin.rnetd_args()));
    host.rnet_ok(&["create", "blue", "--subnet", "10.63.0.0/24"]);
    let w = Workload::new("w");
    let wip = ip_only(
        host.rnet_json(&["attach", "blue", "--netns", &w.path().display().to_string()])["ip"]
            .as_str()
            .unwrap(),
    );
    let docker = Dockerd::start(&host.netns_path());
    let image = docker.busybox();
    let d = plugin.name();

    // rnet's IPAM needs the subnet: Docker shows rnet's reason.
    let out = docker.docker(&["network", "create", "-d", d, "--ipam-driver", d, "nosubnet"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--subnet"), "{err}");

    // The Docker network is rnet network blue (found by its subnet).
    docker.ok(&[
        "network",
        "create",
        "-d",
        d,
        "--ipam-driver",
        d,
        "--subnet",
        "10.63.0.0/24",
        "dnet",
    ]);
    // A container pings the rnet workload, and is pinged by it.
    docker.ok(&[
        "run",
        "--rm",
        "--network",
        "dnet",
        image,
        "ping",
        "-c",
        "3",
        "-W",
        "2",
        &wip,
    ]);
    docker.ok(&[
        "run",
        "-d",
        "--name",
        "c1",
        "--network",
        "dnet",
        image,
        "sleep",
        "600",
    ]);
    let c1 = docker.container_ip("c1", "dnet");
    assert!(c1.starts_with("10.63.0."), "{c1}");
    assert!(w.ping(&c1, 3), "rnet workload -> container c1 ({c1})");
    let route = docker.ok(&["exec", "c1", "ip", "route"]);
    assert!(route.contains("default via 10.63.0.1"), "{route}");
    let links = docker.ok(&["exec", "c1", "ip", "-o", "link"]);
    assert!(
        !links.contains("eth1"),
        "no docker_gwbridge interface: {links}"
    );
    let eps = endpoints(&host, "blue");
    assert!(
        eps.iter().any(|e| ip_only(e["ip"].as_str().unwrap()) == c1
            && e["netns"].as_str().unwrap().contains("/netns/")),
        "c1's endpoint in rnet's records: {eps:?}"
    );
    host.rnet_ok(&["doctor"]);

    // rnetd restarts. Docker's next Join on the existing network works, c1 keeps talking.
    host.kill_daemon(Signal::SIGTERM);
    host.start_daemon_with(&strs(&plugin.rnetd_args()));
    assert!(w.ping(&c1, 3), "c1 reachable across the rnetd restart");
    docker.ok(&[
        "run",
        "--rm",
        "--network",
        "dnet",
        image,
        "sh",
        "-c",
        &format!("ping -c 2 -W 2 {wip} && ping -c 2 -W 2 {c1}"),
    ]);

    // Removing the containers and the network gives every Docker address back.
    docker.ok(&["rm", "-f", "c1"]);
    docker.ok(&["network", "rm", "dnet"]);
    let left: Vec<String> = endpoints(&host, "blue")
        .iter()
        .map(|e| ip_only(e["ip"].as_str().unwrap()))
        .collect();
    assert_eq!(left, vec![wip.clone()]);
    wait_until("no veth left behind", Duration::from_secs(5), || {
        host.rnet(&["doctor"]).status.success()
    });
}

/// An rnetd for a lab host, started by the test with the lab's flags plus a Docker plugin
/// (the lab starts its daemons with `--docker-plugin-dir none`); killed on drop.
struct DockerRnetd {
    child: Child,
}

impl DockerRnetd {
    fn replace(lab: &Lab, host: &str, plugin: &DockerPlugin) -> DockerRnetd {
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(lab.dir().join("lab.json")).unwrap()).unwrap();
        let h = cfg["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["id"] == host)
            .unwrap()
            .clone();
        let mut args: Vec<String> = h["rnetd_args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        args.extend(plugin.rnetd_args());
        lab.ok(&["stop", host]);
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(h["log"].as_str().unwrap())
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", h["netns"].as_str().unwrap()))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_rnetd"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = DockerRnetd { child };
        let socket = PathBuf::from(h["socket"].as_str().unwrap());
        wait_until(
            &format!("{host}'s rnetd with the Docker plugin answers"),
            Duration::from_secs(15),
            || {
                plugin.path().exists()
                    && Command::new(env!("CARGO_BIN_EXE_rnet"))
                        .arg("--socket")
                        .arg(&socket)
                        .arg("status")
                        .output()
                        .is_ok_and(|o| o.status.success())
            },
        );
        d
    }
}

impl Drop for DockerRnetd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lab_netns(lab: &Lab, host: &str) -> PathBuf {
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(lab.dir().join("lab.json")).unwrap()).unwrap();
    let h = cfg["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == host)
        .unwrap()
        .clone();
    PathBuf::from(h["netns"].as_str().unwrap())
}

/// `rnet run` on a lab host, in the background.
fn rnet_run(lab: &Lab, host: &str, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rnet"))
        .arg("--socket")
        .arg(lab.dir().join(host).join("rnetd.sock"))
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn docker_containers_and_rnet_run_workloads_across_lab_hosts() {
    let lab = Lab::up(
        2,
        &["--lease-ttl", "2", "--probe-window", "2", "--resync", "2"],
    );
    // h1's Docker finds its rnetd by a .spec discovery file, h2's by a .json one (both made
    // from the examples in plugin-spec/docker/).
    let p1 = DockerPlugin::spec_file("rnet.spec", &lab.dir().join("h1").join("docker"));
    let p2 = DockerPlugin::spec_file("rnet.json", &lab.dir().join("h2").join("docker"));
    let _r1 = DockerRnetd::replace(&lab, "h1", &p1);
    let _r2 = DockerRnetd::replace(&lab, "h2", &p2);
    let d1 = Dockerd::start(&lab_netns(&lab, "h1"));
    let d2 = Dockerd::start(&lab_netns(&lab, "h2"));
    let image = d1.busybox();
    d2.busybox();
    // The same `docker network create` on both hosts: one rnet network.
    for (d, p) in [(&d1, &p1), (&d2, &p2)] {
        d.ok(&[
            "network",
            "create",
            "-d",
            p.name(),
            "--ipam-driver",
            p.name(),
            "--subnet",
            "10.64.0.0/24",
            "-o",
            "rnet.network=mh",
            "shared",
        ]);
    }
    d1.ok(&[
        "run",
        "-d",
        "--name",
        "ca",
        "--network",
        "shared",
        image,
        "sleep",
        "600",
    ]);
    d2.ok(&[
        "run",
        "-d",
        "--name",
        "cb",
        "--network",
        "shared",
        image,
        "sleep",
        "600",
    ]);
    let (a, b) = (
        d1.container_ip("ca", "shared"),
        d2.container_ip("cb", "shared"),
    );
    assert_ne!(a, b, "two hosts never hand out one address");
    // An `rnet run` workload on h2 that stays up, at a known address.
    let mut stay = rnet_run(
        &lab,
        "h2",
        &["mh", "--ip", "10.64.0.200", "--", "sleep", "600"],
    );
    let reach = |from: &Dockerd, c: &str, ip: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if from
                .docker(&["exec", c, "ping", "-c", "1", "-W", "1", ip])
                .status
                .success()
            {
                return true;
            }
        }
        false
    };
    assert!(
        reach(&d1, "ca", "10.64.0.200"),
        "container a on h1 -> rnet run workload on h2"
    );
    assert!(
        reach(&d1, "ca", &b),
        "container a on h1 -> container b on h2 ({b})"
    );
    assert!(
        reach(&d2, "cb", &a),
        "container b on h2 -> container a on h1 ({a})"
    );
    // And an `rnet run` workload on h2 pings the container on h1.
    let ping = rnet_run(&lab, "h2", &["mh", "--", "ping", "-c", "3", "-W", "2", &a]);
    let out = ping.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "rnet run on h2 -> container a on h1: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(stay.id() as i32),
        Signal::SIGTERM,
    );
    let _ = stay.wait();
    drop(d2);
    drop(d1);
}

/// A client namespace wired to `host` by a veth pair (host side 198.19.1.1/30, client
/// 198.19.1.2/30 with its default route through the host): traffic from outside.
fn outside_client(host: &Host) -> Workload {
    let client = Workload::new("outside");
    let h = format!("--net={}", host.netns_path().display());
    let run = |argv: &[&str]| {
        let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "nsenter",
        &h,
        "--",
        "ip",
        "link",
        "add",
        "cl0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        client.name(),
    ]);
    run(&[
        "nsenter",
        &h,
        "--",
        "ip",
        "addr",
        "add",
        "198.19.1.1/30",
        "dev",
        "cl0",
    ]);
    run(&["nsenter", &h, "--", "ip", "link", "set", "cl0", "up"]);
    let c = client.name();
    run(&["ip", "-n", c, "addr", "add", "198.19.1.2/30", "dev", "eth0"]);
    run(&["ip", "-n", c, "link", "set", "eth0", "up"]);
    run(&[
        "ip",
        "-n",
        c,
        "route",
        "add",
        "default",
        "via",
        "198.19.1.1",
    ]);
    client
}

/// What the listener at `addr` says to a connection from `netns` (None: no connection).
fn tcp_read_from(netns: &Path, addr: &str) -> Option<String> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&netns).expect("open netns");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text.trim().to_string()).filter(|t| !t.is_empty())
    })
    .join()
    .unwrap()
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn docker_run_publish_reaches_the_container_from_outside_and_goes_with_it() {
    let mut host = Host::new("dkp");
    let plugin = DockerPlugin::socket_dir();
    host.start_daemon_with(&strs(&plugin.rnetd_args()));
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
        "10.67.0.0/24",
        "-o",
        "rnet.network=pnet",
        "pnet",
    ]);
    let client = outside_client(&host);
    let serve = "while true; do echo hello-docker | nc -l -p 80; done";
    docker.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "pnet",
        "-p",
        "8080:80",
        image,
        "sh",
        "-c",
        serve,
    ]);
    let target = format!("{}:8080", host.underlay());
    let mut said = None;
    wait_until("published port answers", Duration::from_secs(10), || {
        said = tcp_read_from(&client.path(), &target);
        said.is_some()
    });
    assert_eq!(said.as_deref(), Some("hello-docker"));
    let eps = endpoints(&host, "pnet");
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(
        eps[0]["ports"],
        json!([{"host_port": 8080, "container_port": 80, "proto": "tcp"}])
    );

    // A second container asking for the same host port: Docker reports rnet's refusal.
    let out = docker.docker(&[
        "run",
        "-d",
        "--name",
        "web2",
        "--network",
        "pnet",
        "-p",
        "8080:81",
        image,
        "sleep",
        "60",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already published"),
        "{err}"
    );

    // docker network create --internal reaches the driver as an internal rnet network.
    docker.ok(&[
        "network",
        "create",
        "--internal",
        "-d",
        d,
        "--ipam-driver",
        d,
        "--subnet",
        "10.68.0.0/24",
        "-o",
        "rnet.network=inner",
        "inner",
    ]);
    let inner = host.rnet_json(&["inspect", "inner"]);
    assert_eq!(
        (inner["internal"].clone(), inner["egress"].clone()),
        (json!(true), json!(false)),
        "{inner}"
    );

    docker.ok(&["rm", "-f", "web"]);
    wait_until("port closed", Duration::from_secs(10), || {
        tcp_read_from(&client.path(), &target).is_none()
    });
    let h = format!("--net={}", host.netns_path().display());
    let table = Command::new("nsenter")
        .args([h.as_str(), "--", "nft", "list", "ruleset"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&table.stdout).contains("8080"));
    host.rnet_ok(&["doctor"]);
}
