//! `rnet lab`: flags and printing for simulated multi-host labs; the work is in `crate::lab`.
//!
//! Dispatched before any tokio runtime exists: `lab exec` enters a namespace and execs in
//! place, and the other subcommands build the small runtimes they need themselves.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::output::{print_json, Table};
use super::{Cli, Format};
use crate::lab::control::{self, StopMode};
use crate::lab::status::LabStatus;
use crate::lab::{self, config, LabConfig, LabError, LabPaths, UpOptions};
use crate::progress::{Plain, Progress};

/// `rnet lab …`: every subcommand acts on the lab named by `--name`.
#[derive(Args, Debug)]
pub struct LabArgs {
    /// The lab's name; labs with different names coexist.
    #[arg(long, global = true, default_value = lab::DEFAULT_NAME)]
    pub name: String,
    /// The lab's directory (default: /run/rnet/lab/NAME).
    #[arg(long, global = true)]
    pub dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Build a lab: a switch namespace running etcd, and N host namespaces each running rnetd.
    Up(UpArgs),
    /// Remove every process, mount, namespace, link and file the lab made.
    Down,
    /// Show the lab's hosts, their daemons and etcd.
    Status,
    /// Run a command in a host's network namespace, with RNET_SOCKET set to its rnetd.
    Exec(ExecArgs),
    /// Stop a host's rnetd (SIGTERM, or SIGKILL with --kill) and wait until it is gone.
    Stop {
        host: String,
        /// SIGKILL, as `kill -9`.
        #[arg(long)]
        kill: bool,
    },
    /// Start a host's rnetd again with its saved flags and wait until it answers.
    Start { host: String },
    /// Stop or start the lab's etcd (same data dir).
    #[command(subcommand)]
    Etcd(EtcdCommand),
    /// Cut (down) or restore (up) a host's underlay link at the switch (VM lab: the guest's NIC).
    Link { host: String, state: LinkState },
    /// The VM lab's in-guest agent (started by the guest's init; not for people).
    #[command(hide = true)]
    Agent,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Number of hosts (h1 … hN).
    #[arg(long, default_value_t = 3)]
    pub hosts: u32,
    /// Seconds a host's record outlives a silent rnetd (rnetd's --lease-ttl).
    #[arg(long, default_value_t = 10)]
    pub lease_ttl: u64,
    /// rnetd's --probe-window in seconds (passed only when given).
    #[arg(long)]
    pub probe_window: Option<u64>,
    /// rnetd's --resync in seconds (passed only when given).
    #[arg(long)]
    pub resync: Option<u64>,
    /// The rnetd binary (default: the one beside this rnet).
    #[arg(long)]
    pub rnetd: Option<PathBuf>,
    /// The etcd binary (default: etcd on PATH).
    #[arg(long)]
    pub etcd: Option<PathBuf>,
    /// The store every rnetd uses.
    #[arg(long, default_value = config::DEFAULT_STORE)]
    pub store: String,
    /// Hosts are QEMU guests (Debian 12 kernels) instead of namespaces; etcd runs on h1.
    #[arg(long)]
    pub vm: bool,
    /// With --vm: the accelerator (auto: KVM when a probe guest runs on it, else TCG).
    #[arg(long, value_enum, default_value_t = super::lab_vm::AccelArg::Auto, requires = "vm")]
    pub accel: super::lab_vm::AccelArg,
    /// With --vm: where guest images are built and cached.
    #[arg(long, default_value = lab::vm::image::CACHE_ROOT, requires = "vm")]
    pub image_dir: PathBuf,
    /// With --vm: the directory of rnet binaries shared into the guests (default: beside this rnet).
    #[arg(long, requires = "vm")]
    pub bin_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// The host (h1 … hN).
    pub host: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    /// VM lab: send this command's stdin (read to its end first) to the guest command.
    #[arg(long)]
    pub stdin: bool,
    /// VM lab: start the command in the background, output appended to this guest file; prints its pid.
    #[arg(long, value_name = "GUEST_LOG")]
    pub detach: Option<String>,
    /// VM lab: kill the command after this many seconds (exit status 124; default 600).
    #[arg(long)]
    pub timeout: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum EtcdCommand {
    /// Stop the lab's etcd and wait until it is gone.
    Stop {
        /// SIGKILL instead of SIGTERM.
        #[arg(long)]
        kill: bool,
    },
    /// Start the lab's etcd again and wait until it accepts connections.
    Start,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LinkState {
    Up,
    Down,
}

/// Run one `rnet lab` subcommand; returns the process exit status. Call before any runtime.
pub fn run(cli: &Cli, args: &LabArgs) -> i32 {
    let paths = match LabPaths::new(&args.name, args.dir.as_deref()) {
        Ok(p) => p,
        Err(e) => return fail(&e, 1),
    };
    if let LabCommand::Agent = &args.command {
        let e = lab::vm::agent::run().expect_err("the agent returns only on failure");
        return fail(&e, 1);
    }
    if let LabCommand::Exec(a) = &args.command {
        if lab::vm::is_vm(&paths) {
            return super::lab_vm::exec(&paths, a);
        }
        if a.detach.is_some() || a.timeout.is_some() {
            let e = LabError::Invalid(format!(
                "--detach and --timeout are for VM labs; lab {} is a namespace lab (its commands run here: use your shell's `&` or timeout(1))",
                paths.name()
            ));
            return fail(&e, lab::exec::EXIT_LAB_FAILED);
        }
        let f = lab::exec::exec(&paths, &a.host, &a.command);
        return fail(&f.error, f.code);
    }
    match dispatch(cli.output, &paths, &args.command) {
        Ok(()) => 0,
        Err(e) => fail(&e, 1),
    }
}

fn fail(e: &LabError, code: i32) -> i32 {
    eprintln!("rnet: error: {e}");
    if let Some((log, tail)) = e.detail() {
        eprintln!("last lines of {}:", log.display());
        for line in tail.lines() {
            eprintln!("  | {line}");
        }
    }
    code
}

fn dispatch(fmt: Format, paths: &LabPaths, cmd: &LabCommand) -> Result<(), LabError> {
    if let LabCommand::Up(a) = cmd {
        if a.vm {
            return super::lab_vm::up(fmt, paths, a);
        }
    }
    if lab::vm::is_vm(paths) && !matches!(cmd, LabCommand::Down) {
        return super::lab_vm::dispatch(fmt, paths, cmd);
    }
    match cmd {
        LabCommand::Up(a) => up(fmt, paths, a),
        LabCommand::Down => down(fmt, paths),
        LabCommand::Status => status(fmt, paths),
        LabCommand::Exec(_) | LabCommand::Agent => {
            unreachable!("`lab exec` and `lab agent` are handled before dispatch")
        }
        LabCommand::Stop { host, kill } => stop(paths, host, *kill),
        LabCommand::Start { host } => start(paths, host),
        LabCommand::Etcd(c) => etcd(paths, c),
        LabCommand::Link { host, state } => link(paths, host, *state),
    }
}

/// Step lines: a spinner on a terminal (stderr); otherwise plain lines on stdout with tables,
/// on stderr when stdout carries JSON.
pub(super) fn progress(fmt: Format) -> Progress {
    Progress::new(match fmt {
        Format::Table => Plain::Stdout,
        Format::Json => Plain::Stderr,
    })
}

/// Runs `work` reporting its steps through `p`; the spinner ends with the outcome.
pub(super) fn with_progress<T>(
    mut p: Progress,
    work: impl FnOnce(&mut dyn FnMut(&str)) -> Result<T, LabError>,
) -> Result<T, LabError> {
    let result = work(&mut |line| p.step(line));
    match &result {
        Ok(_) => p.finish(),
        Err(_) => p.fail(),
    }
    result
}

fn up(fmt: Format, paths: &LabPaths, a: &UpArgs) -> Result<(), LabError> {
    let opts = UpOptions {
        hosts: a.hosts,
        lease_ttl: a.lease_ttl,
        probe_window: a.probe_window,
        resync: a.resync,
        rnetd: a.rnetd.clone(),
        etcd: a.etcd.clone(),
        store: a.store.clone(),
    };
    let (cfg, hosts) = with_progress(progress(fmt), |p| lab::up::up(paths, &opts, p))?;
    if fmt == Format::Json {
        let out = serde_json::json!({ "name": cfg.name, "dir": cfg.dir, "hosts": hosts });
        print_json(&out);
        return Ok(());
    }
    println!("lab {} is up ({} host(s)):", cfg.name, hosts.len());
    let mut t = Table::new(&["HOST", "UNDERLAY", "PID", "SOCKET"]);
    for h in hosts {
        let socket = h.socket.display().to_string();
        t.row(vec![h.id, h.underlay, h.pid.to_string(), socket]);
    }
    t.print();
    Ok(())
}

fn down(fmt: Format, paths: &LabPaths) -> Result<(), LabError> {
    let report = with_progress(progress(fmt), |p| lab::down::down(paths, p))?;
    match fmt {
        Format::Json => print_json(&report),
        Format::Table if !report.existed => println!(
            "no lab {} at {}: nothing to remove",
            paths.name(),
            paths.dir().display()
        ),
        Format::Table => println!("lab {} removed", paths.name()),
    }
    Ok(())
}

fn status(fmt: Format, paths: &LabPaths) -> Result<(), LabError> {
    let s = lab::status::status(paths)?;
    match fmt {
        Format::Json => print_json(&s),
        Format::Table => print_status(&s),
    }
    Ok(())
}

fn print_status(s: &LabStatus) {
    let yes_no = |b: bool, y: &str, n: &str| if b { y } else { n }.to_string();
    let pid = |p: Option<u32>| p.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
    println!("lab {} at {}", s.name, s.dir.display());
    let mut t = Table::new(&["ETCD", "PID", "PROCESS", "ANSWERS"]);
    t.row(vec![
        s.etcd.url.clone(),
        pid(s.etcd.pid),
        yes_no(s.etcd.alive, "alive", "dead"),
        yes_no(s.etcd.answers, "yes", "no"),
    ]);
    t.print();
    println!();
    let mut t = Table::new(&["HOST", "UNDERLAY", "NETNS", "LINK", "PID", "RNETD", "API"]);
    for h in &s.hosts {
        let link = h.link_up.map(|u| yes_no(u, "up", "down"));
        t.row(vec![
            h.id.clone(),
            h.underlay.clone(),
            yes_no(h.netns, "present", "missing"),
            link.unwrap_or_else(|| "missing".into()),
            pid(h.pid),
            yes_no(h.alive, "alive", "dead"),
            yes_no(h.api, "answers", "no"),
        ]);
    }
    t.print();
}

fn stop_mode(kill: bool) -> StopMode {
    if kill {
        StopMode::Kill
    } else {
        StopMode::Term
    }
}

fn stop(paths: &LabPaths, host: &str, kill: bool) -> Result<(), LabError> {
    let cfg = LabConfig::load(paths)?;
    match control::stop_host(&cfg, host, stop_mode(kill))? {
        Some(pid) => println!("stopped rnetd of host {host} (pid {pid})"),
        None => println!("rnetd of host {host} was not running"),
    }
    Ok(())
}

fn start(paths: &LabPaths, host: &str) -> Result<(), LabError> {
    let cfg = LabConfig::load(paths)?;
    let pid = control::start_host(&cfg, host)?;
    let socket = cfg.host(host)?.socket.display().to_string();
    println!("started rnetd of host {host} (pid {pid}); it answers on {socket}");
    Ok(())
}

fn etcd(paths: &LabPaths, cmd: &EtcdCommand) -> Result<(), LabError> {
    let cfg = LabConfig::load(paths)?;
    match cmd {
        EtcdCommand::Stop { kill } => match control::stop_etcd(&cfg, stop_mode(*kill))? {
            Some(pid) => println!("stopped the lab's etcd (pid {pid})"),
            None => println!("the lab's etcd was not running"),
        },
        EtcdCommand::Start => {
            let pid = control::start_etcd(&cfg)?;
            println!(
                "started the lab's etcd (pid {pid}) on {}",
                cfg.etcd.client_url
            );
        }
    }
    Ok(())
}

fn link(paths: &LabPaths, host: &str, state: LinkState) -> Result<(), LabError> {
    let cfg = LabConfig::load(paths)?;
    control::set_link(&cfg, host, state == LinkState::Up)?;
    let word = if state == LinkState::Up { "up" } else { "down" };
    println!("host {host}: underlay link {word} at the switch");
    Ok(())
}
