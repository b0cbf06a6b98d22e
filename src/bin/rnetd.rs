//! `rnetd`: the per-host daemon. Flags → DaemonConfig → tracing → daemon::run until SIGTERM/SIGINT.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rnet::daemon::access::Access;
use rnet::daemon::docker_plugin::PluginConfig;
use rnet::daemon::{self, DaemonConfig};
use rnet::store::etcd::{EtcdSecurity, EtcdUser};

/// The etcd user's password (with `--etcd-user USER`); never logged.
const PASSWORD_ENV: &str = "RNET_ETCD_PASSWORD";

/// The rnet per-host daemon: keeps this host's overlay networks in the kernel in line
/// with the store, and serves the rnet API.
#[derive(Parser, Debug)]
#[command(name = "rnetd", version, about, args_override_self = true)]
struct Flags {
    /// API socket: root's alone (mode 0600), or root:GROUP mode 0660 with --api-group.
    #[arg(long, env = "RNET_SOCKET", default_value = rnet::api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Also let members of this group use the API socket (they may attach only network
    /// namespaces they own; root may attach any).
    #[arg(long, env = "RNET_API_GROUP", value_name = "NAME")]
    api_group: Option<String>,
    /// Persistent state: the embedded store, keys.
    #[arg(long, env = "RNET_STATE_DIR", default_value = "/var/lib/rnet")]
    state_dir: PathBuf,
    /// Runtime state: namespace bind mounts live under RUN_DIR/netns (never /run/netns).
    #[arg(long, env = "RNET_RUN_DIR", default_value = "/run/rnet")]
    run_dir: PathBuf,
    /// The store: `embedded` (single host, on local disk), `etcd://HOST:PORT[,HOST:PORT...]`
    /// (plain HTTP; `http://…` also works), or `https://HOST:PORT[,HOST:PORT...]` (TLS).
    #[arg(long, env = "RNET_STORE", default_value = "embedded")]
    store: String,
    /// PEM CA bundle that signed etcd's server certificate (https:// stores; default: the
    /// system's roots).
    #[arg(long, env = "RNET_ETCD_CACERT", value_name = "FILE")]
    etcd_cacert: Option<PathBuf>,
    /// PEM client certificate for etcd's --client-cert-auth (its common name is the etcd
    /// user); needs --etcd-key.
    #[arg(long, env = "RNET_ETCD_CERT", value_name = "FILE")]
    etcd_cert: Option<PathBuf>,
    /// PEM private key of --etcd-cert.
    #[arg(long, env = "RNET_ETCD_KEY", value_name = "FILE")]
    etcd_key: Option<PathBuf>,
    /// etcd user (etcd auth): USER, with the password in $RNET_ETCD_PASSWORD, or
    /// USER:PASSWORD (visible to `ps`: prefer the variable).
    #[arg(
        long,
        env = "RNET_ETCD_USER",
        value_name = "USER[:PASSWORD]",
        hide_env_values = true
    )]
    etcd_user: Option<String>,
    /// Seconds each call to etcd may take before it fails as unavailable (1 to 300; raise
    /// it for an etcd on a slow or emulated machine).
    #[arg(
        long,
        env = "RNET_STORE_TIMEOUT",
        value_name = "SECS",
        default_value = "3",
        value_parser = rnet::store::etcd::parse_call_timeout
    )]
    store_timeout: Duration,
    /// This host's id (default: the hostname).
    #[arg(long, env = "RNET_HOST_ID")]
    host_id: Option<String>,
    /// Underlay address (VTEP source; default: the source address of the default route).
    #[arg(long, env = "RNET_UNDERLAY")]
    underlay: Option<Ipv4Addr>,
    /// Seconds the host's presence record outlives a silent daemon.
    #[arg(long, env = "RNET_LEASE_TTL", default_value_t = 10)]
    lease_ttl: u64,
    /// Seconds between full reconciles of kernel state with the records.
    #[arg(long, env = "RNET_RESYNC", default_value_t = 30)]
    resync: u64,
    /// Seconds a host whose presence expired may stay silent to probes before its entries go.
    #[arg(long, env = "RNET_PROBE_WINDOW", default_value_t = 3)]
    probe_window: u64,
    /// Directory for the Docker plugin socket (libnetwork remote network driver and IPAM
    /// driver), created if missing; `none` turns the plugin off.
    #[arg(
        long,
        env = "RNET_DOCKER_PLUGIN_DIR",
        default_value = "/run/docker/plugins"
    )]
    docker_plugin_dir: String,
    /// The plugin's name: the socket is DIR/NAME.sock and Docker's driver is `-d NAME --ipam-driver NAME`.
    #[arg(
        long,
        env = "RNET_DOCKER_PLUGIN_NAME",
        default_value = rnet::daemon::docker_plugin::DEFAULT_NAME
    )]
    docker_plugin_name: String,
    /// The local Docker engine's API socket, asked for containers' names and aliases (DNS)
    /// after a Join; `none`: Docker containers get no names.
    #[arg(
        long,
        env = "RNET_DOCKER_SOCKET",
        default_value = "/var/run/docker.sock"
    )]
    docker_socket: String,
    /// UDP port of this host's WireGuard tunnel (encrypted networks), on the underlay address.
    #[arg(long, env = "RNET_WIREGUARD_PORT", default_value_t = rnet::wireguard::DEFAULT_PORT)]
    wireguard_port: u16,
    /// Let the userspace tunnel's device hand over TCP packets of up to 64 KB inside VXLAN
    /// (cut by rnetd before encryption), and take the ones rnetd merges from received
    /// segments, where the kernel can (Linux 6.17 and later); `false`: the kernel cuts and
    /// merges them.
    #[arg(long, env = "RNET_WIREGUARD_TUN_OFFLOAD", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    wireguard_tun_offload: bool,
    /// Replace this host's WireGuard key every SECS seconds (0: only on `rnet rotate-key`).
    #[arg(
        long,
        env = "RNET_WIREGUARD_ROTATE_EVERY",
        default_value_t = 0,
        value_name = "SECS"
    )]
    wireguard_rotate_every: u64,
    /// Start a new IPsec epoch (new SA keys, make-before-break) every SECS seconds.
    #[arg(
        long,
        env = "RNET_IPSEC_ROTATE_EVERY",
        default_value_t = rnet::ipsec::DEFAULT_ROTATE_EVERY,
        value_name = "SECS"
    )]
    ipsec_rotate_every: u64,
    /// Start IPsec mode even where the kernel has no ESP, for tests of the control plane:
    /// its SAs fail to install and every IPsec flow stays blocked (never sent in clear).
    #[arg(long, env = "RNET_IPSEC_ASSUME_ESP", hide = true)]
    ipsec_assume_esp: bool,
    /// WireGuard implementation for encrypted networks: `auto` uses the kernel's wireguard
    /// module where it exists and boringtun (userspace) elsewhere; `kernel` refuses to
    /// start without the module.
    #[arg(
        long,
        env = "RNET_WIREGUARD_BACKEND",
        value_enum,
        default_value_t = rnet::wireguard::BackendChoice::Auto
    )]
    wireguard_backend: rnet::wireguard::BackendChoice,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (plain HTTP, no authentication:
    /// bind it to an address only the scraper reaches). Off unless given.
    #[arg(long, env = "RNET_METRICS_ADDR", value_name = "ADDR:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Where the networks' DNS servers forward names that are not the network's: IP or
    /// IP:PORT, repeatable (comma-separated in the environment). Default: the nameservers of /etc/resolv.conf as rnetd starts.
    #[arg(
        long = "dns-upstream",
        env = "RNET_DNS_UPSTREAM",
        value_name = "ADDR",
        value_delimiter = ',',
        value_parser = rnet::dns::resolv::parse_upstream
    )]
    dns_upstream: Vec<std::net::SocketAddr>,
    /// Write rnetd's man page (rnetd.1) into DIR and exit (for packaging).
    #[arg(long, value_name = "DIR", hide = true)]
    man: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    if let Some(dir) = &flags.man {
        use clap::CommandFactory;
        rnet::cli::docs::write_man_pages(Flags::command(), dir).map_err(anyhow::Error::msg)?;
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let host_id = match flags.host_id {
        Some(h) => h,
        None => nix::unistd::gethostname()
            .context("reading the hostname for --host-id")?
            .to_string_lossy()
            .into_owned(),
    };
    let etcd = EtcdSecurity {
        ca_cert: flags.etcd_cacert,
        cert: flags.etcd_cert,
        key: flags.etcd_key,
        user: flags
            .etcd_user
            .as_deref()
            .map(|u| EtcdUser::parse(u, std::env::var(PASSWORD_ENV).ok()))
            .transpose()?,
    };
    let cfg = DaemonConfig {
        socket: flags.socket,
        state_dir: flags.state_dir,
        run_dir: flags.run_dir,
        store: flags.store,
        etcd,
        store_timeout: flags.store_timeout,
        host_id,
        underlay: flags.underlay,
        lease_ttl: Duration::from_secs(flags.lease_ttl),
        resync_interval: Duration::from_secs(flags.resync.max(1)),
        probe_window: Duration::from_secs(flags.probe_window),
        wireguard_port: flags.wireguard_port,
        wireguard_tun_offload: flags.wireguard_tun_offload,
        wireguard_rotate_every: (flags.wireguard_rotate_every > 0)
            .then(|| Duration::from_secs(flags.wireguard_rotate_every)),
        ipsec_rotate_every: Duration::from_secs(flags.ipsec_rotate_every),
        ipsec_assume_esp: flags.ipsec_assume_esp,
        wireguard_backend: flags.wireguard_backend,
        docker_plugin: PluginConfig::from_flags(
            &flags.docker_plugin_dir,
            &flags.docker_plugin_name,
        )
        .context("--docker-plugin-name")?,
        api_access: match &flags.api_group {
            Some(name) => Access::for_group_name(name)?,
            None => Access::root_only(),
        },
        limits: Default::default(),
        metrics_addr: flags.metrics_addr,
        dns_upstream: flags.dns_upstream,
        docker_engine: (flags.docker_socket != "none" && !flags.docker_socket.is_empty())
            .then(|| PathBuf::from(&flags.docker_socket)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime
        .block_on(daemon::run(cfg, shutdown_signal()))
        .context("rnetd failed")
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_timeout_defaults_to_the_store_default_and_refuses_nonsense() {
        let flags = Flags::try_parse_from(["rnetd"]).unwrap();
        assert_eq!(flags.store_timeout, rnet::store::etcd::DEFAULT_CALL_TIMEOUT);
        let flags = Flags::try_parse_from(["rnetd", "--store-timeout", "15"]).unwrap();
        assert_eq!(flags.store_timeout, Duration::from_secs(15));
        for (bad, why) in [("0", "at least 1 second"), ("301", "300 s allowed")] {
            let e = Flags::try_parse_from(["rnetd", "--store-timeout", bad])
                .unwrap_err()
                .to_string();
            assert!(e.contains("--store-timeout") && e.contains(why), "{e}");
        }
    }
}
