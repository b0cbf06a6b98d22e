//! rnetd: the per-host daemon. Opens the store, finds the underlay, registers the host's
//! presence under a lease, reconciles the kernel with the records (at start and then
//! periodically), and serves the API until told to stop. Stopping leaves the datapath alone:
//! workloads keep talking while no daemon runs.

pub mod access;
pub mod docker_plugin;
pub mod http;
pub mod journal;
pub mod liveness;
mod memory;
pub mod metrics;
mod presence;
pub mod serve;
pub mod service;
mod socket;
pub mod sync;
#[cfg(test)]
mod test_store;

use std::future::Future;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::dataplane::Netlink;
use crate::error::{Error, Result};
use crate::model::{HostRecord, Mac};
use crate::paths::netns_dir;
use crate::store::etcd::{EtcdSecurity, EtcdStore};
use crate::store::{EmbeddedStore, Store, StoreError};
use crate::wireguard::{self, WgConfig, WireGuard};
use presence::keep_presence;
pub use service::{HostConfig, Service};

/// MAC kind byte for VTEPs (see `Mac::from_name`).
const VTEP_MAC_KIND: u8 = 0x56;

/// Everything rnetd is told on its command line.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    /// `embedded`, `etcd://HOST:PORT[,HOST:PORT...]` (or `http://…`), or `https://…` (TLS).
    pub store: String,
    /// TLS files and user for etcd.
    pub etcd: EtcdSecurity,
    /// The deadline of every call to etcd (unused by the embedded store).
    pub store_timeout: Duration,
    pub host_id: String,
    pub underlay: Option<Ipv4Addr>,
    pub lease_ttl: Duration,
    pub resync_interval: Duration,
    /// How long a host whose presence expired may stay silent before its entries go.
    pub probe_window: Duration,
    /// UDP port of the WireGuard tunnel.
    pub wireguard_port: u16,
    /// Let the userspace tunnel's device hand over TCP super-packets and take merged ones
    /// (see `wireguard::offload` and `wireguard::gather`).
    pub wireguard_tun_offload: bool,
    /// Rotate the WireGuard key this often (None: only when asked).
    pub wireguard_rotate_every: Option<Duration>,
    /// Start a new IPsec sending epoch (new SA keys) this often.
    pub ipsec_rotate_every: Duration,
    /// Start IPsec mode even where the ESP probe fails (tests of the control plane only).
    pub ipsec_assume_esp: bool,
    /// Kernel WireGuard, boringtun, or whichever this kernel allows.
    pub wireguard_backend: wireguard::BackendChoice,
    /// Where to serve Docker's network-driver and IPAM-driver protocols (None: not at all).
    pub docker_plugin: Option<docker_plugin::PluginConfig>,
    /// Who may use the API socket (the Docker plugin socket is root's alone: dockerd is root).
    pub api_access: access::Access,
    /// Timeouts and the connection limit of both sockets.
    pub limits: serve::Limits,
    /// Serve Prometheus metrics over plain HTTP on this TCP address (None: not at all).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where the networks' DNS servers forward other names (empty: /etc/resolv.conf's).
    pub dns_upstream: Vec<std::net::SocketAddr>,
    /// The local Docker engine's API socket, for containers' DNS names (None: no names).
    pub docker_engine: Option<PathBuf>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Internal(format!("{what} {}: {e}", path.display()))
}

/// Run the daemon until `shutdown` completes.
pub async fn run(
    cfg: DaemonConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    // Peers check every record's host against the same rule: a host whose own id fails it
    // would find its own records skipped everywhere.
    crate::validate::host_id(&cfg.host_id)
        .map_err(|e| Error::Invalid(format!("--host-id: {e}")))?;
    // Before anything is made: a kernel backend that cannot exist stops the daemon here.
    if cfg.wireguard_backend == wireguard::BackendChoice::Kernel {
        wireguard::kernel::probe()
            .map_err(|e| Error::Unsupported(format!("--wireguard-backend kernel: {e}")))?;
    }
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| io_err("creating state dir", &cfg.state_dir, e))?;
    std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io_err("securing state dir", &cfg.state_dir, e))?;
    let ns_dir = netns_dir(&cfg.run_dir);
    std::fs::create_dir_all(&ns_dir).map_err(|e| io_err("creating run dir", &ns_dir, e))?;
    // Bound before anything is published or programmed: a wrong address stops the daemon
    // having changed nothing.
    let metrics_listener = match cfg.metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Error::Invalid(format!("--metrics-addr {addr}: cannot listen there: {e}"))
            })?;
            Some(listener)
        }
        None => None,
    };
    match cfg.store.as_str() {
        "embedded" => {
            let store = EmbeddedStore::open(&cfg.state_dir.join("store.redb"))?;
            run_with_store(cfg, store, metrics_listener, shutdown).await
        }
        url if ["etcd://", "http://", "https://"]
            .iter()
            .any(|s| url.starts_with(s)) =>
        {
            if let Some(why) =
                crate::store::etcd::lease_lapse_risk(cfg.store_timeout, cfg.lease_ttl)
            {
                tracing::warn!("{why}");
            }
            let store = open_etcd(url, &cfg.etcd, cfg.store_timeout).await?;
            run_with_store(cfg, store, metrics_listener, shutdown).await
        }
        other => Err(Error::Invalid(format!(
            "unknown store {other:?}: use \"embedded\", etcd://HOST:PORT[,HOST:PORT...] or https://HOST:PORT[,...]"
        ))),
    }
}

/// Connect to etcd and check the connection once: what waiting cannot fix (a refused
/// certificate or user, plain HTTP to a TLS etcd) stops the daemon now; an etcd that
/// is merely down is waited for, as always.
async fn open_etcd(
    url: &str,
    security: &EtcdSecurity,
    call_timeout: Duration,
) -> Result<EtcdStore> {
    if security.user.is_some() || security.has_tls_files() {
        tracing::info!(store = url, tls = security.has_tls_files(), user = ?security.user.as_ref().map(|u| &u.name), "connecting to etcd");
    }
    let endpoints = EtcdStore::parse_url(url)?;
    let store = EtcdStore::connect_with_timeout(&endpoints, security, call_timeout).await?;
    match store.preflight().await {
        Ok(()) => {}
        Err(StoreError::Unavailable(why)) => {
            tracing::warn!(error = %why, "etcd is not reachable yet; starting anyway")
        }
        Err(e) => return Err(e.into()),
    }
    Ok(store)
}

async fn run_with_store<S: Store>(
    cfg: DaemonConfig,
    store: S,
    metrics_listener: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let dp = Netlink::new()?;
    let address = match cfg.underlay {
        Some(a) => a,
        None => dp.default_route_source().await?.ok_or_else(|| {
            Error::Invalid(
                "no --underlay given and no default route to take its source address from".into(),
            )
        })?,
    };
    let underlay = dp.underlay(address).await?;
    let shared = Arc::new(sync::Shared::new(crate::validate::Own {
        host_id: cfg.host_id.clone(),
        underlay: Some(address),
    }));
    let wireguard = start_wireguard(&cfg, &dp, address, underlay.mtu, shared.clone()).await;
    let ipsec = start_ipsec(&cfg, &wireguard).await;
    let record = HostRecord {
        id: cfg.host_id.clone(),
        underlay: address,
        vtep_mac: Mac::from_name(VTEP_MAC_KIND, &cfg.host_id),
        started: now_secs(),
        renewed: now_secs(),
        wireguard: wireguard.as_ref().ok().map(|w| w.info()),
        ipsec: ipsec.as_ref().ok().map(|i| i.info()),
    };
    let (record_tx, record_rx) = tokio::sync::watch::channel(record);
    let host = HostConfig {
        host_id: cfg.host_id.clone(),
        run_dir: cfg.run_dir.clone(),
        underlay,
        store_name: cfg.store.clone(),
    };
    let liveness = Arc::new(liveness::Liveness::new(cfg.probe_window));
    let upstreams = match cfg.dns_upstream.is_empty() {
        true => crate::dns::resolv::host_nameservers(Path::new("/etc/resolv.conf")),
        false => cfg.dns_upstream.clone(),
    };
    tracing::info!(
        ?upstreams,
        "DNS: other names are forwarded to these resolvers"
    );
    let dns = Arc::new(crate::dns::Servers::new(shared.clone(), upstreams));
    let service = Arc::new(
        Service::new(
            store.clone(),
            dp,
            host,
            shared.clone(),
            liveness.clone(),
            service::Tunnel {
                wireguard,
                record: record_tx,
                ipsec,
            },
        )
        .with_dns(dns),
    );
    // Docker waits for its plugins: answer on the plugin socket before anything slow.
    let plugin_socket = match &cfg.docker_plugin {
        Some(p) => {
            let socket = p.socket();
            let listener = socket::bind(&socket, &access::Access::root_only()).await?;
            let plugin = Arc::new(
                docker_plugin::Plugin::open(service.clone(), &cfg.state_dir)
                    .with_engine(cfg.docker_engine.clone()),
            );
            tracing::info!(socket = %socket.display(), name = %p.name, "serving Docker's network and IPAM driver protocols");
            tokio::spawn(serve::serve(
                listener,
                docker_plugin::router(plugin),
                access::Access::root_only(),
                cfg.limits,
                std::future::pending(),
            ));
            Some(socket)
        }
        None => None,
    };
    tokio::spawn(keep_presence(store.clone(), record_rx, cfg.lease_ttl));
    tokio::spawn(sync::run(store, shared.clone()));
    liveness::spawn_prober(cfg.host_id.clone(), liveness, shared.clone());
    if let Some(listener) = metrics_listener {
        tokio::spawn(serve_metrics(
            listener,
            service.clone(),
            shared.clone(),
            cfg.host_id.clone(),
        ));
    }
    match service.reconcile(true).await {
        Ok(f) => {
            metrics::get().reconciled(f.len(), true);
            tracing::info!(findings = f.len(), "start-up reconcile done");
            memory::give_back();
        }
        Err(e) => tracing::warn!(error = %e, "start-up reconcile failed; will retry"),
    }
    tokio::spawn(periodic_reconcile(service.clone(), cfg.resync_interval));
    tokio::spawn(program_peers(service.clone(), shared, cfg.resync_interval));
    if let Some(every) = cfg.wireguard_rotate_every {
        tokio::spawn(rotate_keys(service.clone(), every));
    }
    let listener = socket::bind(&cfg.socket, &cfg.api_access).await?;
    tracing::info!(socket = %cfg.socket.display(), host = %cfg.host_id, underlay = %address, mtu = underlay.mtu, "rnetd serving");
    // The socket listens: connections from here on are answered once serve() accepts them.
    notify_systemd(sd_notify::NotifyState::Ready);
    serve::serve(
        listener,
        http::router(service.clone()),
        cfg.api_access.clone(),
        cfg.limits,
        shutdown,
    )
    .await;
    notify_systemd(sd_notify::NotifyState::Stopping);
    service.release_tunnel_namespace().await;
    let _ = std::fs::remove_file(&cfg.socket);
    if let Some(socket) = plugin_socket {
        let _ = std::fs::remove_file(socket);
    }
    tracing::info!("rnetd stopped; the datapath is left as it is");
    Ok(())
}

/// Serve `GET /metrics` (anything else: 404) until the process ends.
async fn serve_metrics<S: Store>(
    listener: tokio::net::TcpListener,
    service: Arc<Service<S>>,
    shared: Arc<sync::Shared>,
    host_id: String,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    let scrape = move || {
        let sample = {
            let cache = shared.cache.read().expect("cache poisoned");
            metrics::Sample {
                local_endpoints: cache
                    .endpoints
                    .values()
                    .filter(|e| e.host == host_id)
                    .count(),
                bad_records: cache.bad.len(),
                store_revision: cache.revision,
                peers: Vec::new(),
                drops: None,
            }
        };
        let sample = metrics::Sample {
            peers: service.peers(),
            drops: service.wireguard_drops(),
            ..sample
        };
        let text = metrics::get().render(&sample);
        (
            [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
            text,
        )
    };
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || std::future::ready(scrape())),
    );
    serve::serve_tcp(listener, app, serve::Limits::default()).await;
}

/// Tell systemd (Type=notify) about the daemon's state; nothing without $NOTIFY_SOCKET.
/// A failure only costs systemd's view of the daemon, so it is logged, not fatal.
fn notify_systemd(state: sd_notify::NotifyState) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "notifying systemd failed");
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Start the WireGuard tunnel. Where it cannot run (no TUN, port taken) the daemon still
/// serves plain networks; creating or attaching to an encrypted one then fails with the reason.
async fn start_wireguard(
    cfg: &DaemonConfig,
    dp: &Netlink,
    address: Ipv4Addr,
    mtu: u32,
    shared: Arc<sync::Shared>,
) -> std::result::Result<WireGuard, String> {
    let wg_cfg = WgConfig {
        host_id: cfg.host_id.clone(),
        key_file: cfg.state_dir.join(wireguard::KEY_FILE),
        identity_file: cfg.state_dir.join(wireguard::identity::IDENTITY_FILE),
        pins_file: cfg.state_dir.join(wireguard::pins::PINS_FILE),
        netns: wireguard::tunnel_netns(&cfg.run_dir),
        underlay: address,
        underlay_mtu: mtu,
        port: cfg.wireguard_port,
        tun_offload: cfg.wireguard_tun_offload,
    };
    let on_change = Arc::new(move || shared.changed.notify_one());
    WireGuard::start(wg_cfg, cfg.wireguard_backend, dp, on_change)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "WireGuard is unavailable: encrypted networks cannot be used on this host");
            e.to_string()
        })
}

/// Program peer tables whenever the store's view or a peer's liveness changes, reading the
/// kernel back every `resync`.
async fn program_peers<S: Store>(
    service: Arc<Service<S>>,
    shared: Arc<sync::Shared>,
    resync: Duration,
) {
    let mut last_full = tokio::time::Instant::now();
    let mut last_reachable = None;
    let mut dirty = true;
    loop {
        tokio::select! {
            _ = shared.changed.notified() => dirty = true,
            _ = tokio::time::sleep(liveness::PROBE_INTERVAL) => {}
        }
        let full = last_full.elapsed() >= resync;
        service.sync_tunnels();
        service.sync_ipsec().await;
        let reachable = (
            service.reachable(),
            service.tunnels_up(),
            service.ipsec_ready(),
        );
        if !dirty && !full && last_reachable.as_ref() == Some(&reachable) {
            continue;
        }
        log_reachability_changes(last_reachable.as_ref().map(|r| &r.0), &reachable.0);
        match service.sync_peers(full).await {
            Ok(changes) => {
                if changes >= memory::BURST {
                    memory::give_back();
                }
                dirty = false;
                last_reachable = Some(reachable);
                if full {
                    last_full = tokio::time::Instant::now();
                }
            }
            Err(e) => tracing::warn!(error = %e, "programming peer tables failed; will retry"),
        }
    }
}

/// Say which peers' entries are about to be programmed or removed: a host dropped or
/// back is something an operator (or a failing test) needs to see in the log.
fn log_reachability_changes(
    before: Option<&std::collections::BTreeSet<String>>,
    now: &std::collections::BTreeSet<String>,
) {
    let Some(before) = before else { return };
    for host in before.difference(now) {
        tracing::info!(peer = %host, "peer gone (no presence, no probe answer for the window); removing its entries");
    }
    for host in now.difference(before) {
        tracing::info!(peer = %host, "peer reachable; programming its entries");
    }
}

/// Probe the kernel for ESP and start IPsec mode. Where it cannot run (no ESP, no host key)
/// the daemon still serves everything else, and IPsec networks are refused with the reason.
async fn start_ipsec(
    cfg: &DaemonConfig,
    wireguard: &std::result::Result<WireGuard, String>,
) -> std::result::Result<Arc<crate::ipsec::Ipsec>, String> {
    if let Err(why) = wireguard {
        // IPsec keys come from the WireGuard host key, checked against the same pins.
        return Err(format!(
            "IPsec mode needs this host's X25519 key and pinned peers, which failed to load: {why}"
        ));
    }
    let (every, assume) = (cfg.ipsec_rotate_every.as_secs(), cfg.ipsec_assume_esp);
    let started =
        tokio::task::spawn_blocking(move || crate::ipsec::Ipsec::start(every, now_secs(), assume))
            .await
            .unwrap_or_else(|e| Err(format!("the ESP probe failed: {e}")));
    match &started {
        Ok(i) => {
            tracing::info!(aead = %i.info().aead, epoch = i.info().epoch, "IPsec mode available")
        }
        Err(why) => tracing::warn!("IPsec mode unavailable: {why}"),
    }
    started.map(Arc::new)
}

/// `--wireguard-rotate-every`: a new host key on a schedule.
async fn rotate_keys<S: Store>(service: Arc<Service<S>>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = service.rotate_key() {
            tracing::warn!(error = %e, "scheduled WireGuard key rotation failed");
        }
    }
}

async fn periodic_reconcile<S: Store>(service: Arc<Service<S>>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match service.reconcile(true).await {
            Ok(f) => metrics::get().reconciled(f.len(), true),
            Err(e) => tracing::warn!(error = %e, "periodic reconcile failed"),
        }
    }
}
