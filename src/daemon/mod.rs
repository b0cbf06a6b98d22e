//! rnetd: the per-host daemon. Opens the store, finds the underlay, registers the host's
//! presence under a lease, reconciles the kernel with the records (at start and then
//! periodically), and serves the API until told to stop. Stopping leaves the datapath alone:
//! workloads keep talking while no daemon runs.

pub mod docker;
pub mod http;
pub mod liveness;
pub mod service;
pub mod sync;

use std::future::Future;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;

use crate::dataplane::spec::netns_dir;
use crate::dataplane::Netlink;
use crate::error::{Error, Result};
use crate::model::{HostRecord, Mac};
use crate::store::{keys, EmbeddedStore, LeaseId, Store, StoreError};
pub use service::{HostConfig, Service};

/// MAC kind byte for VTEPs (see `Mac::from_name`).
const VTEP_MAC_KIND: u8 = 0x56;

/// Everything rnetd is told on its command line.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    /// `embedded`, or `etcd://HOST:PORT[,HOST:PORT...]`.
    pub store: String,
    pub host_id: String,
    pub underlay: Option<Ipv4Addr>,
    pub lease_ttl: Duration,
    pub resync_interval: Duration,
    /// How long a host whose presence expired may stay silent before its entries go.
    pub probe_window: Duration,
    /// Where to serve Docker's network-driver and IPAM-driver protocols (None: not at all).
    pub docker_plugin: Option<docker::PluginConfig>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Internal(format!("{what} {}: {e}", path.display()))
}

/// Run the daemon until `shutdown` completes.
pub async fn run(
    cfg: DaemonConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| io_err("creating state dir", &cfg.state_dir, e))?;
    std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io_err("securing state dir", &cfg.state_dir, e))?;
    let ns_dir = netns_dir(&cfg.run_dir);
    std::fs::create_dir_all(&ns_dir).map_err(|e| io_err("creating run dir", &ns_dir, e))?;
    match cfg.store.as_str() {
        "embedded" => {
            let store = EmbeddedStore::open(&cfg.state_dir.join("store.redb"))?;
            run_with_store(cfg, store, shutdown).await
        }
        url if url.starts_with("etcd://") => {
            let endpoints = crate::store::etcd::EtcdStore::parse_url(url)?;
            let store = crate::store::etcd::EtcdStore::connect(&endpoints).await?;
            run_with_store(cfg, store, shutdown).await
        }
        other => Err(Error::Invalid(format!(
            "unknown store {other:?}: use \"embedded\" or etcd://HOST:PORT[,HOST:PORT...]"
        ))),
    }
}

async fn run_with_store<S: Store>(
    cfg: DaemonConfig,
    store: S,
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
    let host = HostConfig {
        host_id: cfg.host_id.clone(),
        run_dir: cfg.run_dir.clone(),
        underlay,
        store_name: cfg.store.clone(),
    };
    let shared = Arc::new(sync::Shared::default());
    let liveness = Arc::new(liveness::Liveness::new(cfg.probe_window));
    let service = Arc::new(Service::new(
        store.clone(),
        dp,
        host,
        shared.clone(),
        liveness.clone(),
    ));
    let record = HostRecord {
        id: cfg.host_id.clone(),
        underlay: address,
        vtep_mac: Mac::from_name(VTEP_MAC_KIND, &cfg.host_id),
        started: now_secs(),
        renewed: now_secs(),
    };
    // Docker waits for its plugins: answer on the plugin socket before anything slow.
    let plugin_socket = match &cfg.docker_plugin {
        Some(p) => {
            let socket = p.socket();
            let listener = bind_socket(&socket).await?;
            let plugin = Arc::new(docker::Plugin::open(service.clone(), &cfg.state_dir));
            tracing::info!(socket = %socket.display(), name = %p.name, "serving Docker's network and IPAM driver protocols");
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, docker::router(plugin)).await {
                    tracing::error!(error = %e, "Docker plugin server stopped");
                }
            });
            Some(socket)
        }
        None => None,
    };
    tokio::spawn(keep_presence(store.clone(), record, cfg.lease_ttl));
    tokio::spawn(sync::run(store, shared.clone()));
    liveness::spawn_prober(cfg.host_id.clone(), liveness, shared.clone());
    match service.reconcile(true).await {
        Ok(f) => tracing::info!(findings = f.len(), "start-up reconcile done"),
        Err(e) => tracing::warn!(error = %e, "start-up reconcile failed; will retry"),
    }
    tokio::spawn(periodic_reconcile(service.clone(), cfg.resync_interval));
    tokio::spawn(program_peers(service.clone(), shared, cfg.resync_interval));
    let listener = bind_socket(&cfg.socket).await?;
    tracing::info!(socket = %cfg.socket.display(), host = %cfg.host_id, underlay = %address, mtu = underlay.mtu, "rnetd serving");
    axum::serve(listener, http::router(service))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::Internal(format!("serving the API: {e}")))?;
    let _ = std::fs::remove_file(&cfg.socket);
    if let Some(socket) = plugin_socket {
        let _ = std::fs::remove_file(socket);
    }
    tracing::info!("rnetd stopped; the datapath is left as it is");
    Ok(())
}

/// Bind the API socket, replacing a stale one but never a live daemon's.
async fn bind_socket(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(Error::Conflict(format!(
                "another rnetd is already serving {}",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| io_err("removing stale socket", path, e))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating socket dir", dir, e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io_err("binding", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| io_err("setting mode of", path, e))?;
    Ok(listener)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Keep the host's presence alive under a lease, renewing the record (with the time) every
/// third of the TTL. When the lease is lost (expired during a store outage, store
/// restarted) grant a new one and publish everything this host owns again: the presence
/// record and the durable host record (endpoints are durable and need nothing).
async fn keep_presence<S: Store>(store: S, mut record: HostRecord, ttl: Duration) {
    let ttl_secs = ttl.as_secs().max(1) as i64;
    let mut lease: Option<LeaseId> = None;
    loop {
        record.renewed = now_secs();
        lease = match lease {
            None => publish(&store, &record, ttl_secs).await,
            Some(id) => match store.lease_keep_alive(id).await {
                Ok(_) => renew(&store, &record, id).await,
                Err(StoreError::LeaseNotFound(_)) => {
                    tracing::warn!("host lease lost; registering again");
                    publish(&store, &record, ttl_secs).await
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing host lease failed");
                    Some(id)
                }
            },
        };
        tokio::time::sleep(ttl / 3).await;
    }
}

async fn renew<S: Store>(store: &S, record: &HostRecord, lease: LeaseId) -> Option<LeaseId> {
    let value = serde_json::to_vec(record).expect("host record serializes");
    match store.put(&keys::host(&record.id), value, Some(lease)).await {
        Ok(_) => Some(lease),
        Err(StoreError::LeaseNotFound(_)) => None,
        Err(e) => {
            tracing::warn!(error = %e, "renewing host record failed");
            Some(lease)
        }
    }
}

async fn publish<S: Store>(store: &S, record: &HostRecord, ttl: i64) -> Option<LeaseId> {
    let value = serde_json::to_vec(record).expect("host record serializes");
    let id = match store.lease_grant(ttl).await {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(error = %e, "granting host lease failed");
            return None;
        }
    };
    let durable = store
        .put(&keys::host_info(&record.id), value.clone(), None)
        .await;
    match durable.and(store.put(&keys::host(&record.id), value, Some(id)).await) {
        Ok(_) => {
            tracing::info!(host = %record.id, lease = id, "host registered");
            Some(id)
        }
        Err(e) => {
            tracing::warn!(error = %e, "publishing host record failed");
            None
        }
    }
}

/// Program peer tables whenever the store's view or a peer's liveness changes, reading the
/// kernel back every `resync`.
async fn program_peers<S: Store>(
    service: Arc<Service<S>>,
    shared: Arc<sync::Shared>,
    resync: Duration,
) {
    let mut last_full = std::time::Instant::now();
    let mut last_reachable = None;
    let mut dirty = true;
    loop {
        tokio::select! {
            _ = shared.changed.notified() => dirty = true,
            _ = tokio::time::sleep(liveness::PROBE_INTERVAL) => {}
        }
        let full = last_full.elapsed() >= resync;
        let reachable = service.reachable();
        if !dirty && !full && last_reachable.as_ref() == Some(&reachable) {
            continue;
        }
        match service.sync_peers(full).await {
            Ok(_) => {
                dirty = false;
                last_reachable = Some(reachable);
                if full {
                    last_full = std::time::Instant::now();
                }
            }
            Err(e) => tracing::warn!(error = %e, "programming peer tables failed; will retry"),
        }
    }
}

async fn periodic_reconcile<S: Store>(service: Arc<Service<S>>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = service.reconcile(true).await {
            tracing::warn!(error = %e, "periodic reconcile failed");
        }
    }
}
