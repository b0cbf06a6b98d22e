//! The `rnet` command line: clap definitions, and one function per subcommand that turns
//! its flags into an API call and prints the answer (a table, or JSON with `-o json`).

pub mod docs;
mod endpoints;
mod health;
pub mod lab;
mod lab_vm;
mod networks;
pub mod output;
mod peers;
pub mod run;
pub mod watch;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::api::{Client, ClientError, DEFAULT_SOCKET};
use crate::model::Encryption;
use endpoints::{attach, detach, endpoints};
use health::{doctor, status};
use networks::{create, inspect, ls, rm};
use peers::{gc, peers, peers_rows, rotate_key, trust};

/// Container overlay networking: manage networks and attach workloads through rnetd.
#[derive(Parser, Debug)]
#[command(name = "rnet", version, about)]
pub struct Cli {
    /// The rnetd API socket.
    #[arg(long, global = true, env = "RNET_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a network (idempotent for the same options).
    Create(CreateArgs),
    /// List networks.
    Ls,
    /// Show one network and its endpoints.
    Inspect { name: String },
    /// Remove a network (refused while it has endpoints, unless --force).
    Rm {
        name: String,
        /// Detach its endpoints first.
        #[arg(long)]
        force: bool,
    },
    /// The same network commands, grouped: `rnet network create|ls|inspect|rm`.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Attach a workload's network namespace to a network.
    Attach(AttachArgs),
    /// Detach endpoints from a network.
    Detach(DetachArgs),
    /// List endpoints (of one network, or all).
    Endpoints { network: Option<String> },
    /// Run a command in new namespaces attached to a network; detach when it exits.
    Run(run::RunArgs),
    /// Show the daemon's status.
    Status,
    /// List the hosts this daemon knows, with their state.
    Peers {
        /// Approve HOST's changed identity key or underlay: pin what the store says now
        /// (its WireGuard tunnel then comes up).
        #[arg(long, value_name = "HOST", conflicts_with = "watch")]
        trust: Option<String>,
        /// Refresh every --interval, top-style, until Ctrl-C: new rows marked +, changed ~.
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes of --watch (0.1 to 86400, fractions allowed).
        #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = watch::parse_interval, requires = "watch", allow_negative_numbers = true)]
        interval: std::time::Duration,
        /// The same as `-o json`; with --watch, one JSON document per line per refresh.
        #[arg(long)]
        json: bool,
    },
    /// Release the endpoints of a host that is gone.
    Gc {
        /// The host whose endpoints to release.
        #[arg(long)]
        host: String,
        /// Also if the host still answers probes (its daemon is down, its workloads may run).
        #[arg(long)]
        force: bool,
    },
    /// Compare the kernel with the records; exit 1 on any drift.
    Doctor {
        /// Repair what differs now (the daemon also does so periodically).
        #[arg(long)]
        repair: bool,
    },
    /// Replace this host's WireGuard key; peers pick up the new public key from the store.
    RotateKey,
    /// Simulated multi-host labs on this machine: `rnet lab up|down|status|exec|…`.
    Lab(lab::LabArgs),
    /// Print the shell completion script for bash, zsh or fish.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write rnet's man pages (rnet.1, rnet-SUBCOMMAND.1) into DIR; `rnetd --man DIR` writes rnetd's.
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a network (idempotent for the same options).
    Create(CreateArgs),
    /// List networks.
    Ls,
    /// Show one network and its endpoints.
    Inspect { name: String },
    /// Remove a network (refused while it has endpoints, unless --force).
    Rm {
        name: String,
        /// Detach its endpoints first.
        #[arg(long)]
        force: bool,
    },
}

fn parse_encryption(s: &str) -> Result<Encryption, String> {
    s.parse().map_err(|e: crate::model::Invalid| e.0)
}

fn parse_port(s: &str) -> Result<crate::model::PortMapping, String> {
    s.parse().map_err(|e: crate::model::Invalid| e.0)
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    pub name: String,
    /// IPv4 subnet in CIDR form, e.g. 10.1.0.0/24.
    #[arg(long)]
    pub subnet: String,
    /// Gateway address (default: the subnet's first address).
    #[arg(long)]
    pub gateway: Option<String>,
    /// VXLAN network identifier (default: the lowest free one from 4096).
    #[arg(long)]
    pub vni: Option<u32>,
    /// MTU of the workloads' interfaces (default: underlay MTU - 50).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Allow this subnet to overlap other networks' (each network has its own sandbox).
    #[arg(long)]
    pub allow_overlap: bool,
    /// Encrypt traffic between hosts: `none`, `wireguard` (rnetd's userspace tunnel) or
    /// `ipsec` (kernel ESP; needs esp4 in the kernel). Fixed for the network's life.
    #[arg(long, value_name = "none|wireguard|ipsec", value_parser = parse_encryption)]
    pub encrypt: Option<Encryption>,
    /// Workloads reach nothing beyond the overlay (default: they reach the host's networks
    /// and beyond, masqueraded to the host's address).
    #[arg(long)]
    pub no_egress: bool,
    /// As Docker's --internal: no egress and no published ports.
    #[arg(long)]
    pub internal: bool,
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    pub network: String,
    /// Path of the workload's network namespace (e.g. /run/netns/x).
    #[arg(long, conflicts_with = "pid", required_unless_present = "pid")]
    pub netns: Option<String>,
    /// PID of a process in the workload's network namespace.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Interface name inside the workload.
    #[arg(long, default_value = "eth0")]
    pub ifname: String,
    /// Address to take (default: the lowest free one).
    #[arg(long)]
    pub ip: Option<String>,
    /// Endpoint id (default: generated).
    #[arg(long)]
    pub id: Option<String>,
    /// MAC address of the workload interface (unicast; default: derived from the address).
    #[arg(long)]
    pub mac: Option<String>,
    /// DNS name the network's resolver answers for the workload (lowercase RFC 1123).
    #[arg(long)]
    pub name: Option<String>,
    /// Another DNS name for it (repeatable).
    #[arg(long = "alias", value_name = "NAME")]
    pub aliases: Vec<String>,
    /// Publish a port of this host: `[HOST_IP:]HOST_PORT:PORT[/tcp|/udp]` (repeatable).
    #[arg(short = 'p', long = "publish", value_name = "HOST_PORT:PORT", value_parser = parse_port)]
    pub publish: Vec<crate::model::PortMapping>,
}

#[derive(Args, Debug)]
pub struct DetachArgs {
    pub network: String,
    #[arg(long, conflicts_with_all = ["netns", "pid"], required_unless_present_any = ["netns", "pid"])]
    pub id: Option<String>,
    #[arg(long, conflicts_with = "pid")]
    pub netns: Option<String>,
    #[arg(long)]
    pub pid: Option<u32>,
}

/// Why a command failed, and with which exit status.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: i32,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure {
            message: e.to_string(),
            code: 1,
        }
    }
}

/// Run every subcommand but `run` (which must fork before any runtime exists).
pub async fn exec(cli: &Cli) -> Result<(), Failure> {
    let client = Client::new(&cli.socket);
    let fmt = cli.output;
    match &cli.command {
        Command::Create(a) | Command::Network(NetworkCommand::Create(a)) => {
            create(&client, fmt, a).await
        }
        Command::Ls | Command::Network(NetworkCommand::Ls) => ls(&client, fmt).await,
        Command::Inspect { name } | Command::Network(NetworkCommand::Inspect { name }) => {
            inspect(&client, fmt, name).await
        }
        Command::Rm { name, force } | Command::Network(NetworkCommand::Rm { name, force }) => {
            rm(&client, fmt, name, *force).await
        }
        Command::Attach(a) => attach(&client, fmt, a).await,
        Command::Detach(a) => detach(&client, fmt, a).await,
        Command::Endpoints { network } => endpoints(&client, fmt, network.as_deref()).await,
        Command::Status => status(&client, fmt).await,
        Command::Peers {
            trust: Some(host),
            json,
            ..
        } => trust(&client, json_if(*json, fmt), host).await,
        Command::Peers {
            watch: true,
            interval,
            json,
            ..
        } => watch::watch(&client, json_if(*json, fmt) == Format::Json, *interval).await,
        Command::Peers { json, .. } => peers(&client, json_if(*json, fmt)).await,
        Command::RotateKey => rotate_key(&client, fmt).await,
        Command::Gc { host, force } => gc(&client, fmt, host, *force).await,
        Command::Doctor { repair } => doctor(&client, fmt, *repair).await,
        Command::Run(_) => unreachable!("`rnet run` is dispatched before the runtime starts"),
        Command::Lab(_) => unreachable!("`rnet lab` is dispatched before the runtime starts"),
        Command::Completions { shell } => {
            docs::completions(*shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => {
            docs::rnet_man_pages(dir).map_err(|message| Failure { message, code: 1 })?;
            Ok(())
        }
    }
}

/// Percent-encode a user-supplied name for a URL path or query (names are validated by
/// the daemon; this only keeps the URL well formed whatever was typed).
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `--json`, a subcommand's shorthand for `-o json`.
fn json_if(json: bool, fmt: Format) -> Format {
    if json {
        Format::Json
    } else {
        fmt
    }
}
