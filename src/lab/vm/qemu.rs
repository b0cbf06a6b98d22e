//! Starting QEMU: the command line (pure), the launch inside the lab namespace, and the probe
//! that decides between KVM and TCG.
//!
//! KVM can be present and still not run guests: on this project's nested machines `/dev/kvm`
//! opens, `-cpu host` aborts on an MSR the outer hypervisor refuses, and other CPU models start
//! but the guest never prints a line. So the probe boots the kernel for real and waits for its
//! first console line; only a guest that speaks counts as a working KVM.

use std::fs::{self, File};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Accel, ImageFiles, VmHost, VmLabConfig};
use crate::lab::{LabError, POLL};

/// How long the KVM probe waits for the kernel's first console line.
const PROBE_DEADLINE: Duration = Duration::from_secs(8);
/// The 9p mount tag of the shared rnet binaries (the guest's init mounts it).
const BIN_TAG: &str = "rnetbin";

/// `-accel` and `-cpu` for `accel`.
fn accel_args(accel: Accel) -> [&'static str; 4] {
    match accel {
        Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
        // max: every feature TCG emulates, AES-NI included.
        Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
    }
}

/// The kernel command line of guest `h`.
pub(super) fn kernel_append(h: &VmHost) -> String {
    format!(
        "console=ttyS0 root=/dev/vda rw init=/sbin/rnet-init panic=-1 quiet \
         rnet.host={} rnet.addr={}",
        h.id, h.underlay
    )
}

/// QEMU's arguments for guest `h` of `cfg` (daemonized; the pid file says which process).
pub(super) fn args(cfg: &VmLabConfig, h: &VmHost) -> Vec<String> {
    let p = |p: &Path| p.to_string_lossy().into_owned();
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("rnet-lab-{}-{}", cfg.name, h.id),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
    ];
    a.extend(accel_args(cfg.accel).map(String::from));
    a.extend([
        "-smp".into(),
        "1".into(),
        "-m".into(),
        cfg.memory_mib.to_string(),
        "-kernel".into(),
        p(&cfg.image.kernel),
        "-initrd".into(),
        p(&cfg.image.initrd),
        "-append".into(),
        kernel_append(h),
        "-drive".into(),
        format!("file={},if=virtio,format=qcow2,cache=unsafe", p(&h.overlay)),
        "-netdev".into(),
        format!("tap,id=net0,ifname={},script=no,downscript=no", h.id),
        "-device".into(),
        format!("virtio-net-pci,netdev=net0,mac={}", h.mac),
        "-virtfs".into(),
        format!(
            "local,path={},mount_tag={BIN_TAG},security_model=none,readonly=on",
            p(&cfg.bin_dir)
        ),
        "-device".into(),
        "virtio-serial-pci".into(),
        "-serial".into(),
        format!("file:{}", p(&h.console)),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", p(&h.qmp)),
        "-daemonize".into(),
        "-pidfile".into(),
        p(&h.pid_file),
    ]);
    for (k, sock) in h.agents.iter().enumerate() {
        a.extend([
            "-chardev".into(),
            format!("socket,id=agent{k},path={},server=on,wait=off", p(sock)),
            "-device".into(),
            format!(
                "virtserialport,chardev=agent{k},name={}{k}",
                super::proto::PORT_PREFIX
            ),
        ]);
    }
    a
}

/// Start guest `h` inside the lab namespace. Returns once QEMU has daemonized (its tap exists).
pub(super) fn launch(cfg: &VmLabConfig, h: &VmHost) -> Result<u32, LabError> {
    let netns: OwnedFd = File::open(&cfg.netns)
        .map_err(LabError::io("opening network namespace", &cfg.netns))?
        .into();
    let log = h.dir.join("qemu.log");
    let out = File::create(&log).map_err(LabError::io("creating", &log))?;
    let err = out.try_clone().map_err(LabError::io("duplicating", &log))?;
    let mut cmd = Command::new(&cfg.qemu);
    cmd.args(args(cfg, h))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let fd = netns.as_raw_fd();
    // SAFETY: between fork and exec the closure makes one async-signal-safe system call
    // (setns) on a descriptor that stays open until exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().map_err(LabError::io("starting", &cfg.qemu))?;
    if !status.success() {
        return Err(LabError::Start {
            what: format!("QEMU of guest {}", h.id),
            reason: format!("failed to start ({status})"),
            tail: crate::lab::process::log_tail(&log, 20),
            log,
        });
    }
    crate::lab::process::read_pid(&h.pid_file)
        .ok_or_else(|| LabError::Runtime(format!("QEMU of guest {} wrote no pid file", h.id)))
}

/// The qemu-system-x86_64 binary, or an error naming the package.
pub(super) fn find_qemu() -> Result<PathBuf, LabError> {
    super::image::which("qemu-system-x86_64").ok_or_else(|| {
        LabError::Invalid(
            "qemu-system-x86_64 not found; install Debian's qemu-system-x86 (scripts/deps.sh)"
                .into(),
        )
    })
}

/// Whether KVM runs guests here: boot `image`'s kernel under KVM (no disk, no network) and
/// wait for its first console line. `why` receives the reason when it does not.
pub(super) fn kvm_works(qemu: &Path, image: &ImageFiles, scratch: &Path) -> Result<(), String> {
    if File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Err("/dev/kvm cannot be opened".into());
    }
    let console = scratch.join("kvm-probe.log");
    let mut child = Command::new(qemu)
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(accel_args(Accel::Kvm))
        .args(["-m", "128", "-kernel"])
        .arg(&image.kernel)
        .args(["-append", "console=ttyS0 panic=-1", "-serial"])
        .arg(format!("file:{}", console.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", qemu.display()))?;
    let end = Instant::now() + PROBE_DEADLINE;
    let outcome = loop {
        let text = fs::read_to_string(&console).unwrap_or_default();
        if text.contains("Linux version") {
            break Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            let first = err.lines().next().unwrap_or("").to_string();
            break Err(format!("QEMU with KVM exited ({status}): {first}"));
        }
        if Instant::now() >= end {
            break Err(format!(
                "a KVM guest printed nothing in {} s",
                PROBE_DEADLINE.as_secs()
            ));
        }
        std::thread::sleep(POLL);
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = fs::remove_file(&console);
    outcome
}

#[cfg(test)]
mod tests {
    use super::super::{test_plan, Accel, VmLabConfig};
    use super::*;

    fn cfg(accel: Accel) -> VmLabConfig {
        test_plan(2, accel, 10).unwrap()
    }

    #[test]
    fn guests_boot_the_kernel_directly_with_their_identity() {
        let c = cfg(Accel::Tcg);
        let a = args(&c, &c.hosts[1]).join(" ");
        assert!(a.contains("-accel tcg -cpu max"), "{a}");
        assert!(
            a.contains("-kernel /i/vmlinuz -initrd /i/initrd.img"),
            "{a}"
        );
        assert!(a.contains("rnet.host=h2 rnet.addr=198.18.0.12/24"), "{a}");
        assert!(a.contains("ifname=h2,script=no"), "{a}");
        assert!(a.contains("path=/bin/dir,mount_tag=rnetbin,security_model=none,readonly=on"));
        assert!(a.contains("name=rnet.agent.3"), "{a}");
        assert!(
            a.contains("-daemonize -pidfile /run/rnet/lab/v/h2/qemu.pid"),
            "{a}"
        );
        // Only the tap: no user-mode network to the outside world.
        assert_eq!(a.matches("-netdev").count(), 1, "{a}");
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let c = cfg(Accel::Kvm);
        assert!(args(&c, &c.hosts[0])
            .join(" ")
            .contains("-accel kvm -cpu host"));
    }
}
