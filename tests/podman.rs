//! A real runtime: podman (Debian's, CNI backend, runc) runs containers on a CNI network of
//! type rnet-cni, inside a simulated host's namespace where that host's rnetd runs.
//!
//! Podman gets a private setup in a temp dir (storage root and runroot, CNI config dir, a
//! containers.conf through CONTAINERS_CONF), so it neither reads nor touches the machine's.
//! No registry is reachable: the image is imported from a tarball of Debian's static busybox.
//! Facts of this machine the setup encodes: podman needs runc (crun fails here) and fixed
//! nofile/nproc limits in its containers.
mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::cni::rnet_cni;
use common::{mounts_under, output_with_timeout, wait_until, Host, Workload};
use serde_json::{json, Value};

const IMAGE: &str = "localhost/rnet-busybox:latest";
const TIMEOUT: Duration = Duration::from_secs(120);
/// The page the image's httpd serves.
const WEB_PAGE: &str = "rnet-podman-web\n";

/// Says what is missing instead of failing halfway (scripts/deps.sh installs all of it).
fn require_tools() {
    for tool in ["/usr/bin/podman", "/usr/sbin/runc", "/usr/lib/cni/loopback"] {
        assert!(
            Path::new(tool).exists() || Path::new(&tool.replace("/usr/sbin", "/usr/bin")).exists(),
            "{tool} is missing: run scripts/deps.sh (podman, runc, containernetworking-plugins)"
        );
    }
    let ldd = Command::new("ldd").arg("/bin/busybox").output();
    let text = ldd
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_default();
    assert!(
        text.contains("not a dynamic executable") || text.contains("statically linked"),
        "/bin/busybox must be Debian's busybox-static (the image has no libc): {text}"
    );
}

/// A podman of its own, run inside `host`'s network namespace.
struct Podman {
    dir: tempfile::TempDir,
    hostns: PathBuf,
}

impl Podman {
    fn new(host: &Host, conflists: &[Value]) -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("rnt-podman-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        let netd = d.join("net.d");
        fs::create_dir_all(&netd).unwrap();
        fs::create_dir_all(d.join("tmp")).unwrap();
        for list in conflists {
            let name = list["name"].as_str().unwrap();
            fs::write(netd.join(format!("{name}.conflist")), list.to_string()).unwrap();
        }
        let bin_dir = rnet_cni().parent().unwrap().to_path_buf();
        let conf = format!(
            r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin}", "/usr/lib/cni"]
network_config_dir = "{netd}"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
tmp_dir = "{d}/tmp"
"#,
            bin = bin_dir.display(),
            netd = netd.display(),
            d = d.display(),
        );
        fs::write(d.join("containers.conf"), conf).unwrap();
        let p = Podman {
            dir,
            hostns: host.netns_path(),
        };
        p.import_busybox();
        p
    }

    /// `podman ARGS` in the host namespace; the raw output.
    fn run(&self, args: &[&str]) -> Output {
        let d = self.dir.path();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.hostns.display()))
            .arg("--")
            .arg("podman")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", d.join("containers.conf"));
        output_with_timeout(&mut cmd, TIMEOUT)
    }

    /// `podman ARGS`, asserted to succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An image made of /bin/busybox and its applets, imported from a tarball.
    fn import_busybox(&self) {
        let rootfs = self.dir.path().join("rootfs");
        for sub in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
            fs::create_dir_all(rootfs.join(sub)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "ping", "ip", "sleep", "cat", "true", "httpd", "nslookup",
        ] {
            symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        // What `httpd -h /www` serves.
        fs::create_dir_all(rootfs.join("www")).unwrap();
        fs::write(rootfs.join("www/index.html"), WEB_PAGE).unwrap();
        let tar = self.dir.path().join("busybox.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("run tar");
        assert!(st.success(), "tar of the busybox rootfs");
        self.ok(&["import", tar.to_str().unwrap(), IMAGE]);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first (their CNI DEL needs rnetd, which the Host outlives us with),
        // then whatever podman left mounted under its root.
        let _ = self.run(&["rm", "--all", "--force", "--time", "0"]);
        for m in mounts_under(self.dir.path()).iter().rev() {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn endpoint_ids(h: &Host, net: &str) -> Vec<String> {
    let mut ids: Vec<String> = h
        .rnet_json(&["endpoints", net])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn podman_containers_on_an_rnet_cni_network_talk() {
    require_tools();
    let mut h = Host::new("podman");
    h.start_daemon();
    h.rnet_ok(&["create", "pnet", "--subnet", "10.69.0.0/24"]);
    // A workload attached by the CLI on the same rnet network.
    let w = Workload::new("cli");
    let ep = h.rnet_json(&[
        "attach",
        "pnet",
        "--netns",
        w.path().to_str().unwrap(),
        "--id",
        "cli",
    ]);
    let cli_ip = ep["ip"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "pnet",
        "plugins": [{
            "type": "rnet-cni",
            "socket": h.socket(),
            "capabilities": {"ips": true, "mac": true},
        }],
    });
    let podman = Podman::new(&h, &[conflist]);
    let nets = podman.ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(nets.contains("pnet rnet-cni"), "{nets}");
    // Container a, with an address and a MAC asked for (the ips/mac capabilities).
    podman.ok(&[
        "run",
        "-d",
        "--name",
        "a",
        "--network",
        "pnet",
        "--ip",
        "10.69.0.50",
        "--mac-address",
        "0a:58:0a:45:00:32",
        IMAGE,
        "sleep",
        "600",
    ]);
    let addr = podman.ok(&["exec", "a", "ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(addr.contains("inet 10.69.0.50/24"), "{addr}");
    let link = podman.ok(&["exec", "a", "ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains("0a:58:0a:45:00:32"), "{link}");
    let ids = endpoint_ids(&h, "pnet");
    assert_eq!(ids.len(), 2, "{ids:?}");
    let eps = h.rnet_json(&["endpoints", "pnet"]);
    let a = eps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] != "cli")
        .unwrap()
        .clone();
    assert_eq!(a["origin"], "cni");
    assert_eq!(a["owner"], "pnet");
    assert_eq!(a["ip"], "10.69.0.50/24");
    // Container b (gets the lowest free address) pings a; a pings the CLI workload and back.
    let out = podman.ok(&[
        "run",
        "--rm",
        "--network",
        "pnet",
        IMAGE,
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        "10.69.0.50",
    ]);
    assert!(out.contains("2 packets received"), "{out}");
    let out = podman.ok(&["exec", "a", "ping", "-c", "2", "-W", "2", &cli_ip]);
    assert!(out.contains("2 packets received"), "{out}");
    assert!(
        w.ping("10.69.0.50", 2),
        "the CLI workload reaches the podman container"
    );
    // b's DEL released its address; removing a releases a's.
    wait_until("b's endpoint released", Duration::from_secs(20), || {
        endpoint_ids(&h, "pnet").len() == 2
    });
    podman.ok(&["rm", "--force", "--time", "0", "a"]);
    wait_until("a's endpoint released", Duration::from_secs(20), || {
        endpoint_ids(&h, "pnet") == ["cli"]
    });
    let sandbox = common::sandbox_in(&h.run_dir(), "pnet");
    wait_until(
        "only the CLI workload's veth left",
        Duration::from_secs(20),
        || {
            common::links_in(&sandbox)
                .iter()
                .filter(|l| l.starts_with("ve"))
                .count()
                == 1
        },
    );
    drop(podman);
    h.kill_daemon(nix::sys::signal::Signal::SIGTERM);
}

/// A namespace outside the host: a veth to the host namespace (198.19.254.2/30 here,
/// .1 there) and a route to the host's underlay address through it, so what it sends to the
/// host arrives from outside, as a client on the host's network would.
fn outside_client(h: &Host) -> Workload {
    let w = Workload::new("outside");
    let host_side = format!("oc{}", std::process::id() % 100_000);
    let ns = w.name();
    let run = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "-n",
        ns,
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        &host_side,
        "netns",
        h.netns_name(),
    ]);
    run(&["-n", ns, "addr", "add", "198.19.254.2/30", "dev", "eth0"]);
    run(&["-n", ns, "link", "set", "eth0", "up"]);
    let hn = h.netns_name();
    run(&[
        "-n",
        hn,
        "addr",
        "add",
        "198.19.254.1/30",
        "dev",
        &host_side,
    ]);
    run(&["-n", hn, "link", "set", &host_side, "up"]);
    let ul = format!("{}/32", h.underlay());
    run(&["-n", ns, "route", "add", &ul, "via", "198.19.254.1"]);
    w
}

/// An HTTP GET of `/` at `addr` from the namespace of `w`: the body, or None when nothing
/// answered (a connection refused or timed out, or no complete response).
fn fetch(w: &Workload, addr: &str) -> Option<String> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let netns = w.path();
    std::thread::spawn(move || {
        let ns = fs::File::open(&netns).expect("open netns");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (_, body) = text.split_once("\r\n\r\n")?;
        Some(body.to_string())
    })
    .join()
    .unwrap()
}

/// The host's `table ip rnet` as nft lists it ("" when there is none).
fn rnet_table(h: &Host) -> String {
    let out = h.exec(&["nft", "list", "table", "ip", "rnet"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn podman_publishes_ports_and_names_through_rnet_cni() {
    require_tools();
    let mut h = Host::new("podport");
    h.start_daemon();
    h.rnet_ok(&["create", "ppub", "--subnet", "10.70.0.0/24"]);
    let client = outside_client(&h);
    // Podman hands `-p` to every plugin of the list that declares the capability (libcni's
    // runtimeConfig injection), not only to `portmap`.
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "ppub",
        "plugins": [{
            "type": "rnet-cni",
            "socket": h.socket(),
            "capabilities": {"portMappings": true},
        }],
    });
    let podman = Podman::new(&h, &[conflist]);
    podman.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "8080:80",
        "--network",
        "ppub",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let eps = h.rnet_json(&["endpoints", "ppub"]);
    let eps = eps.as_array().unwrap();
    assert_eq!(eps.len(), 1, "{eps:?}");
    let web = &eps[0];
    let web_ip = web["ip"].as_str().unwrap().split('/').next().unwrap();
    assert_eq!(web["ports"][0]["host_port"], 8080, "{web}");
    assert_eq!(web["ports"][0]["container_port"], 80, "{web}");
    // Podman passes the container's name as K8S_POD_NAME; rnet-cni records it.
    assert_eq!(web["name"], "web", "{web}");

    // From outside the host, to the host's address: the container's httpd answers.
    let url = format!("{}:8080", h.underlay());
    let mut body = None;
    wait_until(
        "the published port answers",
        Duration::from_secs(10),
        || {
            body = fetch(&client, &url);
            body.is_some()
        },
    );
    assert_eq!(body.as_deref(), Some(WEB_PAGE));
    assert!(rnet_table(&h).contains("dport 8080"), "{}", rnet_table(&h));

    // Another container resolves the first by name at the network's gateway; podman wrote
    // the ADD result's `dns` (gateway first, the network as search domain) into resolv.conf.
    let out = podman.ok(&[
        "run",
        "--rm",
        "--network",
        "ppub",
        IMAGE,
        "sh",
        "-c",
        "cat /etc/resolv.conf; nslookup web 10.70.0.1",
    ]);
    assert!(out.contains("search ppub"), "{out}");
    assert!(
        out.lines().find(|l| l.starts_with("nameserver")) == Some("nameserver 10.70.0.1"),
        "{out}"
    );
    assert!(out.contains(&format!("Address: {web_ip}")), "{out}");

    // Hostile: a second container asking for the same host port is refused, nothing left.
    let out = podman.run(&[
        "run",
        "-d",
        "--name",
        "clash",
        "-p",
        "8080:81",
        "--network",
        "ppub",
        IMAGE,
        "sleep",
        "600",
    ]);
    assert!(!out.status.success(), "a second -p 8080 was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already published by endpoint"), "{err}");
    assert_eq!(endpoint_ids(&h, "ppub").len(), 1);

    // Removing the container closes the port and leaves no DNAT rule.
    podman.ok(&["rm", "--force", "--time", "0", "web"]);
    wait_until("web's endpoint released", Duration::from_secs(20), || {
        endpoint_ids(&h, "ppub").is_empty()
    });
    assert_eq!(fetch(&client, &url), None, "the port still answers");
    let out = podman.run(&[
        "run",
        "--rm",
        "--network",
        "ppub",
        IMAGE,
        "nslookup",
        "web.ppub",
        "10.70.0.1",
    ]);
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("NXDOMAIN"),
        "a removed name still resolves: {text}"
    );
    // The table itself stays with the network's sandbox (its masquerade and the forward
    // rule accepting `ct status dnat`); no translation is left in it.
    wait_until("no DNAT rule left", Duration::from_secs(5), || {
        !rnet_table(&h).contains("dnat to")
    });
    drop(podman);
    h.kill_daemon(nix::sys::signal::Signal::SIGTERM);
}
