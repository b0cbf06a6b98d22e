//! Docker containers' DNS names. libnetwork tells a remote driver neither the container's
//! name nor its aliases, so after a Join, off the request path, rnetd asks the local engine
//! (`--docker-socket`) which container holds the endpoint and writes its names into the
//! endpoint record (compare-and-swap on the record's revision). The engine lists the
//! container only once the Join it is waiting for has returned, so this polls, briefly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Plugin;
use crate::api::Client;
use crate::libnetwork::engine;
use crate::model::{DnsName, Endpoint};
use crate::store::Store;

/// How long after a Join the engine gets to list the container.
const ENGINE_WAIT: Duration = Duration::from_secs(10);
/// One engine call's deadline.
const ENGINE_CALL: Duration = Duration::from_secs(2);

impl<S: Store, D: crate::dataplane::Dataplane> Plugin<S, D> {
    /// Look up the container of Docker endpoint `endpoint_id` in the background and name
    /// the endpoint after it (nothing when no engine socket is configured).
    pub(super) fn name_from_engine(self: Arc<Self>, network_id: String, endpoint_id: String) {
        let Some(socket) = self.engine.clone() else {
            return;
        };
        tokio::spawn(async move {
            let engine = Client::new(socket);
            let Some((name, aliases)) = poll_names(&engine, &network_id, &endpoint_id).await else {
                return;
            };
            self.apply_names(&endpoint_id, name, aliases).await;
        });
    }

    /// Write the names into the endpoint record as last seen; the remembered version moves
    /// on only if nothing newer was remembered meanwhile (a Leave, a DeleteEndpoint).
    async fn apply_names(&self, endpoint_id: &str, name: Option<DnsName>, aliases: Vec<DnsName>) {
        let cur = self
            .endpoints
            .lock()
            .expect("endpoints poisoned")
            .get(endpoint_id)
            .cloned();
        let Some(cur) = cur else {
            return; // released meanwhile
        };
        let named = |e: &Endpoint| Endpoint {
            name: name.clone(),
            aliases: aliases.clone(),
            ..e.clone()
        };
        match self.service.update_endpoint(cur, named).await {
            Ok(v) => {
                tracing::info!(id = %v.ep.id, name = ?v.ep.name, aliases = v.ep.aliases.len(), "Docker container's DNS names recorded");
                let mut map = self.endpoints.lock().expect("endpoints poisoned");
                if let Some(known) = map.get_mut(endpoint_id) {
                    if known.rev < v.rev {
                        *known = v;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(endpoint = endpoint_id, error = %e, "recording a Docker container's DNS names failed")
            }
        }
    }
}

/// Ask the engine until it lists the endpoint's container (or [`ENGINE_WAIT`] passes).
async fn poll_names(
    engine: &Client,
    network_id: &str,
    endpoint_id: &str,
) -> Option<(Option<DnsName>, Vec<DnsName>)> {
    let end = Instant::now() + ENGINE_WAIT;
    let mut pause = Duration::from_millis(20);
    loop {
        match names_once(engine, network_id, endpoint_id).await {
            Ok(Some(found)) => return Some(found),
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "asking the Docker engine for a container's name")
            }
        }
        if Instant::now() + pause > end {
            tracing::warn!(endpoint = endpoint_id, socket = %engine.socket().display(),
                "the Docker engine did not list the endpoint's container; it has no DNS name");
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

async fn names_once(
    engine: &Client,
    network_id: &str,
    endpoint_id: &str,
) -> Result<Option<(Option<DnsName>, Vec<DnsName>)>, String> {
    let get = |path: String| async move {
        match tokio::time::timeout(ENGINE_CALL, engine.get::<Value>(&path)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("{path}: no answer within {ENGINE_CALL:?}")),
        }
    };
    let network = get(format!("/networks/{network_id}")).await?;
    let Some((container_id, name)) = engine::container_of(&network, endpoint_id) else {
        return Ok(None);
    };
    let container = get(format!("/containers/{container_id}/json")).await?;
    let aliases = engine::aliases_of(&container, endpoint_id);
    Ok(Some(engine::dns_names(&name, &aliases)))
}
