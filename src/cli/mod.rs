//! The `rnet` command line: clap definitions, and one function per subcommand that turns
//! its flags into an API call and prints the answer (a table, or JSON with `-o json`).

pub mod docs;
pub mod lab;
mod lab_vm;
pub mod output;
pub mod run;
pub mod watch;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::api::types::{
    AttachRequest, DetachRequest, DetachResponse, DoctorReport, GcRequest, GcResponse,
    NetworkDetail, NetworkRequest, NetworkSummary, PeerInfo, RemoveResponse, Status, TrustResponse,
};
use crate::api::{Client, ClientError, DEFAULT_SOCKET};
use crate::model::{Encryption, Endpoint, Network, WireguardInfo};
use output::{print_json, Table};

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

async fn create(client: &Client, fmt: Format, a: &CreateArgs) -> Result<(), Failure> {
    let req = NetworkRequest {
        name: a.name.clone(),
        subnet: a.subnet.clone(),
        gateway: a.gateway.clone(),
        vni: a.vni,
        mtu: a.mtu,
        allow_overlap: a.allow_overlap,
        encryption: a.encrypt,
        no_egress: a.no_egress,
        internal: a.internal,
    };
    let net: Network = client.post("/v1/networks", &req).await?;
    match fmt {
        Format::Json => print_json(&net),
        Format::Table => networks_table(&[(net, None)]).print(),
    }
    Ok(())
}

fn networks_table(nets: &[(Network, Option<usize>)]) -> Table {
    let mut t = Table::new(&[
        "NAME",
        "VNI",
        "SUBNET",
        "GATEWAY",
        "MTU",
        "EGRESS",
        "ENDPOINTS",
    ]);
    for (n, eps) in nets {
        t.row(vec![
            n.name.to_string(),
            n.vni.to_string(),
            n.subnet.to_string(),
            n.gateway.to_string(),
            n.mtu.to_string(),
            egress_column(n).into(),
            eps.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
        ]);
    }
    t
}

fn egress_column(n: &Network) -> &'static str {
    match (n.internal, n.egress) {
        (true, _) => "internal",
        (false, true) => "yes",
        (false, false) => "no",
    }
}

fn endpoints_table(eps: &[Endpoint]) -> Table {
    let mut t = Table::new(&[
        "NETWORK", "ID", "NAMES", "IP", "MAC", "IFNAME", "HOST", "NETNS", "PORTS",
    ]);
    for e in eps {
        let names: Vec<&str> = e.dns_names().map(|n| n.as_str()).collect();
        t.row(vec![
            e.network.to_string(),
            e.id.to_string(),
            if names.is_empty() {
                "-".to_string()
            } else {
                names.join(",")
            },
            e.ip.to_string(),
            e.mac.to_string(),
            e.ifname.to_string(),
            e.host.clone(),
            e.netns.clone(),
            e.ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    t
}

async fn ls(client: &Client, fmt: Format) -> Result<(), Failure> {
    let nets: Vec<NetworkSummary> = client.get("/v1/networks").await?;
    match fmt {
        Format::Json => print_json(&nets),
        Format::Table => {
            let rows: Vec<(Network, Option<usize>)> = nets
                .into_iter()
                .map(|n| (n.network, Some(n.endpoints)))
                .collect();
            networks_table(&rows).print()
        }
    }
    Ok(())
}

async fn inspect(client: &Client, fmt: Format, name: &str) -> Result<(), Failure> {
    let d: NetworkDetail = client
        .get(&format!("/v1/networks/{}", path_segment(name)))
        .await?;
    match fmt {
        Format::Json => print_json(&d),
        Format::Table => {
            networks_table(&[(d.network.clone(), Some(d.endpoints.len()))]).print();
            if !d.endpoints.is_empty() {
                println!();
                endpoints_table(&d.endpoints).print();
            }
        }
    }
    Ok(())
}

async fn rm(client: &Client, fmt: Format, name: &str, force: bool) -> Result<(), Failure> {
    let path = format!(
        "/v1/networks/{}{}",
        path_segment(name),
        if force { "?force=true" } else { "" }
    );
    let r: RemoveResponse = client.delete(&path).await?;
    match fmt {
        Format::Json => print_json(&r),
        Format::Table => {
            println!(
                "removed network {} ({} endpoint(s) detached)",
                r.removed,
                r.detached.len()
            )
        }
    }
    Ok(())
}

async fn attach(client: &Client, fmt: Format, a: &AttachArgs) -> Result<(), Failure> {
    let req = AttachRequest {
        network: a.network.clone(),
        netns: a.netns.clone(),
        pid: a.pid,
        ifname: Some(a.ifname.clone()),
        ip: a.ip.clone(),
        id: a.id.clone(),
        mac: a.mac.clone(),
        name: a.name.clone(),
        aliases: a.aliases.clone(),
        ports: a.publish.clone(),
        ..Default::default()
    };
    let ep: Endpoint = client.post("/v1/attach", &req).await?;
    match fmt {
        Format::Json => print_json(&ep),
        Format::Table => endpoints_table(&[ep]).print(),
    }
    Ok(())
}

async fn detach(client: &Client, fmt: Format, a: &DetachArgs) -> Result<(), Failure> {
    let req = DetachRequest {
        network: a.network.clone(),
        id: a.id.clone(),
        netns: a.netns.clone(),
        pid: a.pid,
    };
    let r: DetachResponse = client.post("/v1/detach", &req).await?;
    match fmt {
        Format::Json => print_json(&r),
        Format::Table => endpoints_table(&r.detached).print(),
    }
    Ok(())
}

async fn endpoints(client: &Client, fmt: Format, network: Option<&str>) -> Result<(), Failure> {
    let path = match network {
        Some(n) => format!("/v1/endpoints?network={}", path_segment(n)),
        None => "/v1/endpoints".to_string(),
    };
    let eps: Vec<Endpoint> = client.get(&path).await?;
    match fmt {
        Format::Json => print_json(&eps),
        Format::Table => endpoints_table(&eps).print(),
    }
    Ok(())
}

async fn status(client: &Client, fmt: Format) -> Result<(), Failure> {
    let s: Status = client.get("/v1/status").await?;
    match fmt {
        Format::Json => print_json(&s),
        Format::Table => {
            let mut t = Table::new(&[
                "HOST",
                "UNDERLAY",
                "MTU",
                "STORE",
                "NETWORKS",
                "LOCAL ENDPOINTS",
                "VERSION",
            ]);
            t.row(vec![
                s.host_id,
                s.underlay.to_string(),
                s.underlay_mtu.to_string(),
                s.store,
                s.networks.to_string(),
                s.local_endpoints.to_string(),
                s.version,
            ]);
            t.print();
            let wg = &s.wireguard;
            match (&wg.public_key, &wg.error) {
                (Some(key), _) => println!(
                    "WireGuard ({}): port {}, public key {key}, identity {}; {}",
                    wg.backend
                        .map(|b| b.to_string())
                        .unwrap_or_else(|| "backend unknown".into()),
                    wg.port.unwrap_or_default(),
                    wg.identity.as_deref().unwrap_or("-"),
                    match wg.backend {
                        Some(crate::api::types::Backend::Kernel) => {
                            "drop reasons are not counted by the kernel backend".to_string()
                        }
                        _ => format!(
                            "dropped {} malformed, {} rejected, {} spoofed, {} with no peer",
                            wg.drops.malformed,
                            wg.drops.rejected,
                            wg.drops.spoofed,
                            wg.drops.no_peer
                        ),
                    }
                ),
                (None, Some(why)) => println!("WireGuard: unavailable ({why})"),
                (None, None) => {}
            }
            let dns = &s.dns;
            println!(
                "DNS: {} server(s), upstream {}; answered {}, forwarded {}, forward failed {}, dropped {} malformed",
                dns.servers,
                if dns.upstreams.is_empty() { "none".to_string() } else { dns.upstreams.join(" ") },
                dns.answered,
                dns.forwarded,
                dns.forward_failed,
                dns.malformed
            );
            let ip = &s.ipsec;
            match (&ip.aead, &ip.error) {
                (Some(aead), _) => println!(
                    "IPsec: {aead}, epoch {:#x}, next rotation in {}s{}",
                    ip.epoch.unwrap_or_default(),
                    ip.next_rotation_secs.unwrap_or_default(),
                    if ip.failures.is_empty() {
                        String::new()
                    } else {
                        format!("; last pass failed: {}", ip.failures.join("; "))
                    }
                ),
                (None, Some(why)) => println!("IPsec: unavailable ({why})"),
                (None, None) => {}
            }
            if s.bad_records > 0 {
                println!(
                    "Invalid store records skipped: {} (`rnet doctor` names them)",
                    s.bad_records
                );
            }
        }
    }
    Ok(())
}

async fn doctor(client: &Client, fmt: Format, repair: bool) -> Result<(), Failure> {
    if repair {
        let r: DoctorReport = client.post("/v1/reconcile", &()).await?;
        match fmt {
            Format::Json => print_json(&r),
            Format::Table => {
                for d in &r.drift {
                    // An invalid record is the store's to fix: the daemon only skips it.
                    let doing = if d.kind == "invalid" {
                        "left"
                    } else {
                        "repairing"
                    };
                    println!(
                        "{doing} {} {}: {} {}",
                        d.network, d.kind, d.object, d.detail
                    );
                }
                println!(
                    "{} difference(s) found and repaired where possible",
                    r.drift.len()
                );
            }
        }
        return Ok(());
    }
    let r: DoctorReport = client.get("/v1/doctor").await?;
    match fmt {
        Format::Json => print_json(&r),
        Format::Table if r.drift.is_empty() => {
            println!("no drift ({} network(s) checked)", r.networks_checked)
        }
        Format::Table => {
            for d in &r.drift {
                println!("{} {}: {} {}", d.network, d.kind, d.object, d.detail);
            }
        }
    }
    let invalid = r.drift.iter().filter(|d| d.kind == "invalid").count();
    let differences = r.drift.len() - invalid;
    let message = match (differences, invalid) {
        (0, 0) => return Ok(()),
        (d, 0) => format!("{d} difference(s) between records and kernel"),
        (0, i) => format!("{i} invalid record(s) in the store, skipped"),
        (d, i) => format!(
            "{d} difference(s) between records and kernel; {i} invalid record(s) in the store, skipped"
        ),
    };
    Err(Failure { message, code: 1 })
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

/// One peer's IPsec state in a line: SPIs both ways and what is missing.
fn ipsec_words(ip: &crate::api::types::PeerIpsec) -> String {
    let spis = |v: &[u32]| {
        v.iter()
            .map(|s| format!("{s:#010x}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut s = format!(
        "{}; out {}; in {}",
        if ip.installed {
            "installed"
        } else {
            "not installed"
        },
        ip.outbound_spi.map_or("-".into(), |s| format!("{s:#010x}")),
        if ip.inbound_spis.is_empty() {
            "-".into()
        } else {
            spis(&ip.inbound_spis)
        },
    );
    if let (Some(aead), Some(e)) = (ip.aead, ip.peer_epoch) {
        s.push_str(&format!("; {aead}, peer epoch {e:#x}"));
    }
    if let Some(note) = &ip.note {
        s.push_str(&format!(" ({note})"));
    }
    s
}

/// `--json`, a subcommand's shorthand for `-o json`.
fn json_if(json: bool, fmt: Format) -> Format {
    if json {
        Format::Json
    } else {
        fmt
    }
}

async fn peers(client: &Client, fmt: Format) -> Result<(), Failure> {
    let peers: Vec<PeerInfo> = client.get("/v1/peers").await?;
    match fmt {
        Format::Json => print_json(&peers),
        Format::Table => {
            let (headers, rows, problems) = peers_rows(&peers);
            let mut t = Table::new(&headers);
            for row in rows {
                t.row(row);
            }
            t.print();
            if let Some(backend) = peers
                .iter()
                .find_map(|p| p.tunnel.as_ref().and_then(|t| t.backend))
            {
                println!("WireGuard backend: {backend}");
            }
            for p in problems {
                println!("{p}");
            }
        }
    }
    Ok(())
}

/// The peers table's headers and rows, and the tunnel problems to print below it.
fn peers_rows(peers: &[PeerInfo]) -> (Vec<&'static str>, Vec<Vec<String>>, Vec<String>) {
    let headers = vec![
        "HOST",
        "STATE",
        "UNDERLAY",
        "RENEWED",
        "ENDPOINTS",
        "TUNNEL",
        "HANDSHAKE",
        "TX",
        "RX",
        "KEY AGE",
    ];
    let ago = |s: Option<u64>| s.map(|s| format!("{s}s ago")).unwrap_or_else(|| "-".into());
    let mut problems = Vec::new();
    let mut rows = Vec::new();
    for p in peers {
        let tunnel = p.tunnel.as_ref();
        if let Some(problem) = tunnel.and_then(|t| t.problem.as_ref()) {
            problems.push(format!("{}: {problem}", p.host));
        }
        if let Some(ip) = &p.ipsec {
            problems.push(format!("{}: IPsec {}", p.host, ipsec_words(ip)));
        }
        rows.push(vec![
            p.host.clone(),
            p.state.to_string(),
            p.underlay.to_string(),
            ago(p.renewed_ago),
            p.endpoints.to_string(),
            match tunnel {
                None => "-".into(),
                Some(t) if t.up => "up".into(),
                Some(_) => "down".into(),
            },
            ago(tunnel.and_then(|t| t.since_handshake)),
            tunnel
                .map(|t| t.tx_bytes.to_string())
                .unwrap_or_else(|| "-".into()),
            tunnel
                .map(|t| t.rx_bytes.to_string())
                .unwrap_or_else(|| "-".into()),
            tunnel
                .and_then(|t| t.key_age)
                .map(|s| format!("{s}s"))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    (headers, rows, problems)
}

async fn trust(client: &Client, fmt: Format, host: &str) -> Result<(), Failure> {
    let path = format!("/v1/peers/{}/trust", path_segment(host));
    let r: TrustResponse = client.post(&path, &()).await?;
    match fmt {
        Format::Json => print_json(&r),
        Format::Table => println!(
            "host {} pinned: identity {}, underlay {}, WireGuard key {}",
            r.host, r.pin.identity, r.pin.underlay, r.pin.public_key
        ),
    }
    Ok(())
}

async fn rotate_key(client: &Client, fmt: Format) -> Result<(), Failure> {
    let info: WireguardInfo = client.post("/v1/wireguard/rotate-key", &()).await?;
    match fmt {
        Format::Json => print_json(&info),
        Format::Table => println!("new public key {}", info.public_key),
    }
    Ok(())
}

async fn gc(client: &Client, fmt: Format, host: &str, force: bool) -> Result<(), Failure> {
    let req = GcRequest {
        host: host.to_string(),
        force,
    };
    let r: GcResponse = client.post("/v1/gc", &req).await?;
    match fmt {
        Format::Json => print_json(&r),
        Format::Table => println!(
            "released {} endpoint(s) of host {}",
            r.released.len(),
            r.host
        ),
    }
    Ok(())
}
