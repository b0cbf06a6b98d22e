//! `rnet lab up --vm`: image, namespace and bridge, one QEMU per guest, then etcd on h1 and
//! rnetd everywhere through the agents. On any failure `down` removes what was built.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::client::{self, ExecSpec};
use super::{image, qemu, Accel, VmHost, VmLabConfig, ETCD_PORT, GUEST_LOG_DIR};
use crate::lab::config::SWITCH_ADDRESS;
use crate::lab::{down, net, runtime, LabError, LabPaths, POLL};
use crate::netns::NetNs;

/// How long a guest may take from QEMU's start to its agent answering (TCG is slow).
const BOOT_DEADLINE: Duration = Duration::from_secs(180);
/// How long etcd and each rnetd get to come up in the guests.
const SERVICE_DEADLINE: Duration = Duration::from_secs(120);
/// How long one agent probe may take.
const PROBE: Duration = Duration::from_secs(3);

/// What `lab up --vm` was asked for.
#[derive(Clone, Debug)]
pub struct VmUpOptions {
    pub hosts: u32,
    pub lease_ttl: u64,
    /// None: KVM when a probe guest runs on it, else TCG.
    pub accel: Option<Accel>,
    /// Where images are cached.
    pub image_root: PathBuf,
    /// The directory of rnet binaries shared into the guests (default: beside this rnet).
    pub bin_dir: Option<PathBuf>,
}

/// One started guest, for the closing table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VmUpHost {
    pub id: String,
    pub underlay: String,
    pub qemu_pid: u32,
}

/// Build the VM lab `paths` names.
pub fn up(
    paths: &LabPaths,
    opts: &VmUpOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<(VmLabConfig, Vec<VmUpHost>), LabError> {
    let started = Instant::now();
    super::check_count(opts.hosts)?;
    let qemu_bin = qemu::find_qemu()?;
    let bin_dir = resolve_bin_dir(opts.bin_dir.as_deref())?;
    let files = image::ensure(&opts.image_root, progress)?;
    crate::lab::up::claim_dir(paths)?;
    let result =
        choose_accel(opts.accel, &qemu_bin, &files, paths.dir(), progress).and_then(|accel| {
            let cfg = VmLabConfig::plan(
                paths,
                opts.hosts,
                accel,
                files,
                qemu_bin,
                bin_dir,
                opts.lease_ttl,
            )?;
            let hosts = build(&cfg, paths, progress)?;
            Ok((cfg, hosts))
        });
    match result {
        Ok(r) => {
            progress(&format!(
                "lab up in {:.1} s ({})",
                started.elapsed().as_secs_f64(),
                r.0.accel.as_str()
            ));
            Ok(r)
        }
        Err(e) => {
            progress("failed; tearing down what was built");
            if let Err(d) = down::down(paths, &mut |_| {}) {
                progress(&format!("teardown failed too: {d}"));
            }
            Err(e)
        }
    }
}

fn choose_accel(
    asked: Option<Accel>,
    qemu_bin: &Path,
    files: &super::ImageFiles,
    scratch: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Accel, LabError> {
    if let Some(a) = asked {
        return Ok(a);
    }
    match qemu::kvm_works(qemu_bin, files, scratch) {
        Ok(()) => {
            progress("accel: KVM runs guests here");
            Ok(Accel::Kvm)
        }
        Err(why) => {
            progress(&format!("accel: TCG (KVM unusable: {why})"));
            Ok(Accel::Tcg)
        }
    }
}

fn build(
    cfg: &VmLabConfig,
    paths: &LabPaths,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<VmUpHost>, LabError> {
    cfg.save()?;
    let netns_dir = paths.netns_dir();
    fs::create_dir(&netns_dir).map_err(LabError::io("creating", &netns_dir))?;
    let rt = runtime()?;
    let switch = NetNs::create(&cfg.netns)?;
    let bridge_addr = ipnetwork::Ipv4Network::new(SWITCH_ADDRESS, 24).expect("valid prefix");
    rt.block_on(net::build_switch(&switch, bridge_addr))?;
    progress(&format!(
        "switch: namespace {}, bridge br0",
        cfg.netns.display()
    ));
    let mut out = Vec::new();
    for h in &cfg.hosts {
        fs::create_dir_all(&h.dir).map_err(LabError::io("creating", &h.dir))?;
        make_overlay(&cfg.image.base, &h.overlay)?;
        let pid = qemu::launch(cfg, h)?;
        rt.block_on(net::enslave(&switch, &h.id))?;
        progress(&format!(
            "{}: QEMU started (pid {pid}, {}), tap {} on br0",
            h.id,
            cfg.accel.as_str(),
            h.id
        ));
        out.push(VmUpHost {
            id: h.id.clone(),
            underlay: h.underlay.ip().to_string(),
            qemu_pid: pid,
        });
    }
    for h in &cfg.hosts {
        let t = Instant::now();
        wait_agent(h)?;
        progress(&format!(
            "{}: agent answers (boot took {:.1} s more)",
            h.id,
            t.elapsed().as_secs_f64()
        ));
    }
    start_services(cfg, &switch, progress)?;
    Ok(out)
}

/// `qemu-img create -f qcow2 -F qcow2 -b BASE OVERLAY`: the guest's disposable disk.
fn make_overlay(base: &Path, overlay: &Path) -> Result<(), LabError> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(overlay)
        .output()
        .map_err(LabError::io("running qemu-img for", overlay))?;
    if out.status.success() {
        return Ok(());
    }
    Err(LabError::Runtime(format!(
        "qemu-img create {}: {}",
        overlay.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

fn wait_agent(h: &VmHost) -> Result<(), LabError> {
    let end = Instant::now() + BOOT_DEADLINE;
    while !client::answers(h, PROBE) {
        let alive = crate::lab::process::running(&h.pid_file, &h.pid_file).is_some();
        if !alive || Instant::now() >= end {
            let reason = if alive {
                format!("did not answer within {} s", BOOT_DEADLINE.as_secs())
            } else {
                "exited before its agent answered".into()
            };
            return Err(LabError::Start {
                what: format!("guest {}", h.id),
                reason,
                tail: crate::lab::process::log_tail(&h.console, 20),
                log: h.console.clone(),
            });
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// etcd on h1 (reachable on its underlay address), then rnetd on every guest.
fn start_services(
    cfg: &VmLabConfig,
    switch: &NetNs,
    progress: &mut dyn FnMut(&str),
) -> Result<(), LabError> {
    let h1 = &cfg.hosts[0];
    detach(h1, etcd_argv(h1), "etcd.log")?;
    let addr = SocketAddr::new(h1.underlay.ip().into(), ETCD_PORT);
    let reachable = switch.run(move || wait_tcp(addr))?;
    if !reachable {
        return Err(LabError::Start {
            what: "etcd in guest h1".into(),
            reason: format!("did not accept connections on {addr}"),
            log: PathBuf::from(format!("{}:{GUEST_LOG_DIR}/etcd.log", h1.id)),
            tail: guest_tail(h1, "etcd.log"),
        });
    }
    progress(&format!("h1: etcd accepts connections on {addr}"));
    for h in &cfg.hosts {
        detach(h, rnetd_argv(cfg, h), "rnetd.log")?;
    }
    for h in &cfg.hosts {
        wait_rnetd(h)?;
        progress(&format!("{}: rnetd answers", h.id));
    }
    Ok(())
}

/// etcd's command line in guest `h`: clients on its underlay address and loopback.
fn etcd_argv(h: &VmHost) -> Vec<String> {
    let ip = h.underlay.ip();
    let peer = "http://127.0.0.1:2380";
    [
        "etcd",
        "--name",
        &h.id,
        "--data-dir",
        "/var/lib/rnet-lab/etcd",
        "--listen-client-urls",
        &format!("http://{ip}:{ETCD_PORT},http://127.0.0.1:{ETCD_PORT}"),
        "--advertise-client-urls",
        &format!("http://{ip}:{ETCD_PORT}"),
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        &format!("{}={peer}", h.id),
    ]
    .map(String::from)
    .to_vec()
}

/// rnetd's command line in guest `h` (default socket, state and run dirs of the guest).
fn rnetd_argv(cfg: &VmLabConfig, h: &VmHost) -> Vec<String> {
    let mut argv: Vec<String> = [
        "rnetd",
        "--host-id",
        &h.id,
        "--underlay",
        &h.underlay.ip().to_string(),
        "--store",
        &cfg.store,
        "--docker-plugin-dir",
        "none",
        "--lease-ttl",
        &cfg.lease_ttl.to_string(),
    ]
    .map(String::from)
    .to_vec();
    if let Some(secs) = cfg.store_timeout {
        argv.extend(["--store-timeout".to_string(), secs.to_string()]);
    }
    argv
}

fn detach(h: &VmHost, argv: Vec<String>, log: &str) -> Result<(), LabError> {
    let spec = ExecSpec {
        argv,
        timeout: PROBE,
        detach: Some(format!("{GUEST_LOG_DIR}/{log}")),
        ..Default::default()
    };
    let r = client::exec(h, &spec)?;
    if r.status == 0 {
        return Ok(());
    }
    Err(LabError::Runtime(format!(
        "guest {}: starting {}: {}",
        h.id,
        spec.argv[0],
        String::from_utf8_lossy(&r.stderr).trim()
    )))
}

fn wait_tcp(addr: SocketAddr) -> bool {
    let end = Instant::now() + SERVICE_DEADLINE;
    while Instant::now() < end {
        if TcpStream::connect_timeout(&addr, PROBE).is_ok() {
            return true;
        }
        std::thread::sleep(POLL * 5);
    }
    false
}

/// Wait until `rnet status` succeeds in guest `h`.
fn wait_rnetd(h: &VmHost) -> Result<(), LabError> {
    let end = Instant::now() + SERVICE_DEADLINE;
    let spec = ExecSpec {
        argv: vec!["rnet".into(), "status".into()],
        timeout: Duration::from_secs(20),
        ..Default::default()
    };
    loop {
        if client::exec(h, &spec).is_ok_and(|r| r.status == 0) {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(LabError::Start {
                what: format!("rnetd in guest {}", h.id),
                reason: format!("did not answer within {} s", SERVICE_DEADLINE.as_secs()),
                log: PathBuf::from(format!("{}:{GUEST_LOG_DIR}/rnetd.log", h.id)),
                tail: guest_tail(h, "rnetd.log"),
            });
        }
        std::thread::sleep(POLL * 10);
    }
}

/// The last lines of a guest log, read through the agent (empty when unreachable).
fn guest_tail(h: &VmHost, log: &str) -> String {
    let spec = ExecSpec {
        argv: vec![
            "tail".into(),
            "-n".into(),
            "20".into(),
            format!("{GUEST_LOG_DIR}/{log}"),
        ],
        timeout: PROBE,
        ..Default::default()
    };
    client::exec(h, &spec)
        .map(|r| String::from_utf8_lossy(&r.stdout).into_owned())
        .unwrap_or_default()
}

fn resolve_bin_dir(given: Option<&Path>) -> Result<PathBuf, LabError> {
    let dir = match given {
        Some(d) => std::path::absolute(d).map_err(LabError::io("resolving", d))?,
        None => crate::lab::exe_dir()?,
    };
    for bin in ["rnet", "rnetd"] {
        if !dir.join(bin).is_file() {
            return Err(LabError::Invalid(format!(
                "{bin} not found in {}, the directory shared into the guests; build it (cargo build --bins) or pass --bin-dir",
                dir.display()
            )));
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::super::test_plan;
    use super::*;

    /// A two-guest plan with a 7 s lease.
    fn plan(accel: Accel) -> VmLabConfig {
        test_plan(2, accel, 7).unwrap()
    }

    #[test]
    fn services_listen_on_the_guest_underlay() {
        let cfg = plan(Accel::Tcg);
        let e = etcd_argv(&cfg.hosts[0]).join(" ");
        assert!(e.contains("--listen-client-urls http://198.18.0.11:2379,http://127.0.0.1:2379"));
        let r = rnetd_argv(&cfg, &cfg.hosts[1]).join(" ");
        assert!(r.contains("--host-id h2 --underlay 198.18.0.12 --store etcd://198.18.0.11:2379"));
        assert!(r.contains("--lease-ttl 7"), "{r}");
    }

    #[test]
    fn tcg_guests_give_rnetd_a_longer_store_deadline_and_kvm_guests_the_default() {
        let tcg = plan(Accel::Tcg);
        for h in &tcg.hosts {
            let r = rnetd_argv(&tcg, h).join(" ");
            assert!(r.ends_with("--lease-ttl 7 --store-timeout 15"), "{r}");
        }
        let kvm = plan(Accel::Kvm);
        for h in &kvm.hosts {
            let r = rnetd_argv(&kvm, h).join(" ");
            assert!(!r.contains("--store-timeout"), "{r}");
            assert!(r.ends_with("--lease-ttl 7"), "{r}");
        }
    }

    #[test]
    fn a_bin_dir_without_rnetd_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("rnet"), b"").unwrap();
        let e = resolve_bin_dir(Some(tmp.path())).unwrap_err().to_string();
        assert!(e.contains("rnetd not found"), "{e}");
    }
}
