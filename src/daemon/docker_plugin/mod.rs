//! The Docker plugin server: libnetwork's remote network driver and remote IPAM driver on
//! `<docker-plugin-dir>/<name>.sock`, a second axum router next to the API's.
//!
//! Every call answers at once from local state where it can (activation, capabilities,
//! pools, gateways, networks the store watch already knows); a call that must write the
//! store (addresses, endpoint records) runs in its own task and Docker gets an answer within
//! [`DEADLINE`] whatever the store does: dockerd waits for its plugins, and a plugin that
//! hangs hangs container starts (moby/libnetwork#813). Work that finishes after Docker was
//! told it failed is undone, so a slow store leaks nothing.
//!
//! Errors travel as the protocol says: `{"Err": …}` from the network driver, `{"Error": …}`
//! from the IPAM driver, both with HTTP 200 (libnetwork reads the field; a non-200 status
//! would make Docker's plugin client show the raw body). Unknown methods get HTTP 404, which
//! Docker reads as "optional method not implemented".

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

use super::service::{Service, Versioned};
use crate::dataplane::{Dataplane, Netlink};
use crate::error::{Error, Result};
use crate::libnetwork::state::{Binding, State as DriverState};
use crate::model::Network;
use crate::store::Store;

mod driver;
mod engine_names;
mod http;
mod ipam;

pub use http::router;

/// The longest a Docker call waits for the store (and the kernel) before it is answered.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// The plugin name Docker knows rnet by (`-d rnet --ipam-driver rnet`).
pub const DEFAULT_NAME: &str = "rnet";
/// The state file, in the daemon's state dir.
const STATE_FILE: &str = "docker.json";

/// Where the plugin socket goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginConfig {
    pub dir: PathBuf,
    /// The socket is `<dir>/<name>.sock`, and Docker's driver name is `<name>`.
    pub name: String,
}

impl PluginConfig {
    /// From rnetd's flags: `none` turns the plugin off.
    pub fn from_flags(dir: &str, name: &str) -> Result<Option<PluginConfig>> {
        if dir == "none" || dir.is_empty() {
            return Ok(None);
        }
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return Err(Error::Invalid(format!(
                "Docker plugin name {name:?} may only contain letters, digits, '_', '.' and '-'"
            )));
        }
        Ok(Some(PluginConfig {
            dir: PathBuf::from(dir),
            name: name.to_string(),
        }))
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join(format!("{}.sock", self.name))
    }
}

type Undo<T> = Box<dyn FnOnce(T) -> BoxFuture<'static, ()> + Send>;

/// The driver: the service, the local state, and the Docker endpoints this process has seen.
pub struct Plugin<S: Store, D: Dataplane = Netlink> {
    service: Arc<Service<S, D>>,
    state: Mutex<DriverState>,
    state_path: PathBuf,
    /// By Docker endpoint id: the record as last written (saves a store read per call; after
    /// a restart the store's id index finds them again).
    endpoints: Mutex<HashMap<String, Versioned>>,
    deadline: Duration,
    /// The local Docker engine's API socket, asked for containers' names after a Join.
    engine: Option<PathBuf>,
}

impl<S: Store, D: Dataplane> Plugin<S, D> {
    /// Load the local state from `state_dir` (an unreadable file is moved aside: the daemon
    /// must come up; the Docker networks it named need creating again).
    pub fn open(service: Arc<Service<S, D>>, state_dir: &Path) -> Plugin<S, D> {
        let state_path = state_dir.join(STATE_FILE);
        let state = match DriverState::load(&state_path) {
            Ok(s) => s,
            Err(e) => {
                let aside = state_path.with_extension("json.bad");
                tracing::error!(error = %e, file = %state_path.display(), moved_to = %aside.display(),
                    "unreadable Docker driver state; starting empty");
                let _ = std::fs::rename(&state_path, &aside);
                DriverState::default()
            }
        };
        tracing::info!(
            networks = state.networks.len(),
            pools = state.pools.len(),
            "Docker driver state loaded"
        );
        Plugin {
            service,
            state: Mutex::new(state),
            state_path,
            endpoints: Mutex::new(HashMap::new()),
            deadline: DEADLINE,
            engine: None,
        }
    }

    /// Name Docker's containers (DNS) from the engine's API at `socket` (None: not at all).
    pub fn with_engine(mut self, socket: Option<PathBuf>) -> Self {
        self.engine = socket;
        self
    }

    /// Change the local state and write it out.
    fn change_state<T>(&self, f: impl FnOnce(&mut DriverState) -> T) -> Result<T> {
        let mut state = self.state.lock().expect("state poisoned");
        let mut next = state.clone();
        let out = f(&mut next);
        if next != *state {
            next.save(&self.state_path).map_err(|e| {
                Error::Internal(format!("writing {}: {e}", self.state_path.display()))
            })?;
            *state = next;
        }
        Ok(out)
    }

    fn binding(&self, network_id: &str) -> Result<Binding> {
        self.state
            .lock()
            .expect("state poisoned")
            .networks
            .get(network_id)
            .cloned()
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "rnet knows no Docker network {network_id} (was it created with -d rnet on this host?)"
                ))
            })
    }

    /// Run `op` in its own task; answer within the deadline. If `op` succeeds only after the
    /// caller was answered, `undo` takes its result back.
    async fn bounded<T, F>(&self, what: &'static str, op: F, undo: Option<Undo<T>>) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let result = op.await;
            if let Err(Ok(late)) = tx.send(result) {
                tracing::warn!(
                    call = what,
                    "finished after Docker was told it failed; undoing"
                );
                if let Some(undo) = undo {
                    undo(late).await;
                }
            }
        });
        match tokio::time::timeout(self.deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Internal(format!("{what} was abandoned"))),
            Err(_) => Err(Error::Store(crate::store::StoreError::Unavailable(
                format!(
                "rnetd could not finish {what} within {:?} (is the store reachable?); try again",
                self.deadline
            ),
            ))),
        }
    }

    /// Every network: the watched cache when it has synced, else the store (bounded).
    async fn networks_now(&self) -> Result<Vec<Network>> {
        if let Some(n) = self.service.cached_networks() {
            return Ok(n);
        }
        let service = self.service.clone();
        self.bounded(
            "listing networks",
            async move { service.networks().await },
            None,
        )
        .await
    }

    /// The record of a Docker endpoint: as last written by this process, else by its id in the store.
    async fn endpoint(&self, b: &Binding, endpoint_id: &str) -> Result<Option<Versioned>> {
        if let Some(v) = self
            .endpoints
            .lock()
            .expect("endpoints poisoned")
            .get(endpoint_id)
        {
            return Ok(Some(v.clone()));
        }
        let (service, net, id) = (
            self.service.clone(),
            b.network.to_string(),
            endpoint_id.to_string(),
        );
        self.bounded(
            "looking up the endpoint",
            async move { service.endpoint_by_id(&net, &id).await },
            None,
        )
        .await
    }

    fn remember(&self, endpoint_id: &str, v: Option<Versioned>) {
        let mut map = self.endpoints.lock().expect("endpoints poisoned");
        match v {
            Some(v) => map.insert(endpoint_id.to_string(), v),
            None => map.remove(endpoint_id),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_flags() {
        assert_eq!(PluginConfig::from_flags("none", "rnet").unwrap(), None);
        let p = PluginConfig::from_flags("/run/docker/plugins", "rnet")
            .unwrap()
            .unwrap();
        assert_eq!(p.socket(), PathBuf::from("/run/docker/plugins/rnet.sock"));
        assert!(PluginConfig::from_flags("/x", "a/b").is_err());
        assert!(PluginConfig::from_flags("/x", "").is_err());
    }
}
