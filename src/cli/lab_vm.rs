//! `rnet lab …` on a VM lab: the same subcommands as the netns lab, printed the same way; the
//! work is in `crate::lab::vm`.

use std::io::{Read, Write};
use std::time::Duration;

use clap::ValueEnum;

use super::lab::{progress, with_progress, ExecArgs, LabCommand, LinkState, UpArgs};
use super::output::{print_json, Table};
use super::Format;
use crate::lab::exec::EXIT_LAB_FAILED;
use crate::lab::vm::client::{self, ExecSpec};
use crate::lab::vm::status::VmLabStatus;
use crate::lab::vm::{self, Accel, VmLabConfig, VmUpOptions};
use crate::lab::{LabError, LabPaths};

/// How long a guest command may run unless `--timeout` says otherwise.
const DEFAULT_TIMEOUT_SECS: u64 = 600;

/// `--accel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

/// `rnet lab up --vm`.
pub(super) fn up(fmt: Format, paths: &LabPaths, a: &UpArgs) -> Result<(), LabError> {
    let opts = VmUpOptions {
        hosts: a.hosts,
        lease_ttl: a.lease_ttl,
        accel: match a.accel {
            AccelArg::Auto => None,
            AccelArg::Kvm => Some(Accel::Kvm),
            AccelArg::Tcg => Some(Accel::Tcg),
        },
        image_root: a.image_dir.clone(),
        bin_dir: a.bin_dir.clone(),
    };
    let (cfg, hosts) = with_progress(progress(fmt), |p| vm::up(paths, &opts, p))?;
    if fmt == Format::Json {
        let out = serde_json::json!({
            "name": cfg.name, "dir": cfg.dir, "vm": true, "accel": cfg.accel, "hosts": hosts
        });
        print_json(&out);
        return Ok(());
    }
    println!(
        "VM lab {} is up ({} guest(s), {}):",
        cfg.name,
        hosts.len(),
        cfg.accel.as_str()
    );
    let mut t = Table::new(&["HOST", "UNDERLAY", "QEMU PID"]);
    for h in hosts {
        t.row(vec![h.id, h.underlay, h.qemu_pid.to_string()]);
    }
    t.print();
    Ok(())
}

/// Every subcommand but up, down and exec on a VM lab.
pub(super) fn dispatch(fmt: Format, paths: &LabPaths, cmd: &LabCommand) -> Result<(), LabError> {
    match cmd {
        LabCommand::Status => {
            let s = vm::status::status(paths)?;
            match fmt {
                Format::Json => print_json(&s),
                Format::Table => print_status(&s),
            }
            Ok(())
        }
        LabCommand::Link { host, state } => {
            let cfg = VmLabConfig::load(paths)?;
            vm::set_link(&cfg, host, *state == LinkState::Up)?;
            let word = if *state == LinkState::Up { "up" } else { "down" };
            println!("guest {host}: NIC link {word}");
            Ok(())
        }
        LabCommand::Up(_) => Err(LabError::Exists {
            name: paths.name().to_string(),
            dir: paths.dir().to_path_buf(),
        }),
        _ => Err(LabError::Invalid(format!(
            "lab {} is a VM lab: stop, start and etcd are not available there; use `rnet lab exec HOST -- …`",
            paths.name()
        ))),
    }
}

fn print_status(s: &VmLabStatus) {
    let yes_no = |b: bool, y: &str, n: &str| if b { y } else { n }.to_string();
    println!("VM lab {} at {} ({})", s.name, s.dir.display(), s.accel);
    let mut t = Table::new(&["HOST", "UNDERLAY", "QEMU", "AGENT", "RNETD", "LINK", "ETCD"]);
    for h in &s.hosts {
        let qemu = match h.qemu_pid {
            Some(p) if h.alive => p.to_string(),
            _ => "dead".into(),
        };
        t.row(vec![
            h.id.clone(),
            h.underlay.clone(),
            qemu,
            yes_no(h.agent, "answers", "no"),
            yes_no(h.api, "answers", "no"),
            yes_no(h.link_up, "up", "down"),
            yes_no(h.etcd, "yes", "-"),
        ]);
    }
    t.print();
}

/// `rnet lab exec HOST -- CMD` on a VM lab: the command's exit status, stdout and stderr.
pub(super) fn exec(paths: &LabPaths, a: &ExecArgs) -> i32 {
    match run_exec(paths, a) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rnet: error: {e}");
            EXIT_LAB_FAILED
        }
    }
}

fn run_exec(paths: &LabPaths, a: &ExecArgs) -> Result<i32, LabError> {
    let cfg = VmLabConfig::load(paths)?;
    let h = cfg.host(&a.host)?;
    let mut stdin = Vec::new();
    if a.stdin {
        std::io::stdin()
            .read_to_end(&mut stdin)
            .map_err(|e| LabError::Runtime(format!("reading stdin: {e}")))?;
    }
    let spec = ExecSpec {
        argv: a.command.clone(),
        stdin,
        timeout: Duration::from_secs(a.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS)),
        detach: a.detach.clone(),
    };
    let r = client::exec(h, &spec)?;
    if let Some(pid) = r.pid {
        println!("{pid}");
    }
    let _ = std::io::stdout().write_all(&r.stdout);
    let _ = std::io::stderr().write_all(&r.stderr);
    Ok(r.status)
}
