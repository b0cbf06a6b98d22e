//! Detach: choose the endpoints (by id, namespace path or PID; a non-root caller only in
//! namespaces it owns), delete their veth pairs, release their records.

use std::path::Path;

use super::{Service, Versioned};
use crate::api::types::{DetachRequest, DetachResponse};
use crate::daemon::access;
use crate::dataplane::Dataplane;
use crate::error::{Error, Result};
use crate::model::Network;
use crate::netns::{self, NetNs, Opener};
use crate::store::Store;

impl<S: Store, D: Dataplane> Service<S, D> {
    /// Detach endpoints chosen by id, namespace path or PID.
    /// A caller other than root detaches only endpoints in network namespaces it owns.
    pub async fn detach(
        &self,
        req: &DetachRequest,
        caller: access::Caller,
    ) -> Result<DetachResponse> {
        let net = self.network(&req.network).await?;
        let opener = Opener::for_uid(caller.uid);
        let chosen = self.select_endpoints(&net, req, opener).await?;
        if caller.uid != 0 {
            for v in &chosen {
                let gone = || {
                    Error::Forbidden(format!(
                        "uid {} may not detach endpoint {}: its network namespace is gone, and only root may release it",
                        caller.uid, v.ep.id
                    ))
                };
                match NetNs::open_untrusted(Path::new(&v.ep.netns), opener).await {
                    Ok(ns) if ns.inode() == v.ep.netns_inode => {
                        access::check_may_attach(&ns, caller)?
                    }
                    Ok(_)
                    | Err(crate::netns::NetnsError::NotFound { .. })
                    | Err(crate::netns::NetnsError::NotNetns { .. }) => return Err(gone()),
                    // Busy, a timeout: say so, not that the namespace is gone.
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let _guard = self.kernel.read().await;
        for v in &chosen {
            self.detach_one(&net, v).await?;
        }
        // Published ports close before detach answers; an uplink no longer needed goes with
        // the store watch's pass (`egress_on_change`), off the caller's path.
        if chosen.iter().any(|v| !v.ep.ports.is_empty()) {
            self.sync_egress().await;
        }
        Ok(DetachResponse {
            detached: chosen.into_iter().map(|v| v.ep).collect(),
        })
    }

    pub(super) async fn select_endpoints(
        &self,
        net: &Network,
        req: &DetachRequest,
        opener: Opener,
    ) -> Result<Vec<Versioned>> {
        let all = self.versioned_endpoints(Some(net.name.as_str())).await?;
        let chosen: Vec<Versioned> = match (&req.id, &req.netns, req.pid) {
            (Some(id), None, None) => all.into_iter().filter(|v| v.ep.id.as_str() == id).collect(),
            (None, Some(_), None) | (None, None, Some(_)) => {
                let path = req.netns.clone().unwrap_or_else(|| {
                    netns::pid_netns_path(req.pid.unwrap_or(0))
                        .display()
                        .to_string()
                });
                let inode = match req.pid {
                    Some(pid) => NetNs::of_pid_untrusted(pid, opener).await?.inode(),
                    None => NetNs::open_untrusted(Path::new(&path), opener)
                        .await
                        .map(|n| n.inode())
                        .unwrap_or(0),
                };
                all.into_iter()
                    .filter(|v| (inode != 0 && v.ep.netns_inode == inode) || v.ep.netns == path)
                    .collect()
            }
            _ => {
                return Err(Error::Invalid(
                    "detach needs exactly one of id, netns or pid".into(),
                ))
            }
        };
        if chosen.is_empty() {
            let what = req
                .id
                .as_ref()
                .map(|i| format!("id {i}"))
                .or(req.netns.as_ref().map(|n| format!("netns {n}")))
                .unwrap_or_else(|| format!("pid {}", req.pid.unwrap_or(0)));
            return Err(Error::NotFound(format!(
                "no endpoint with {what} on network {}",
                net.name
            )));
        }
        if let Some(remote) = chosen.iter().find(|v| v.ep.host != self.cfg.host_id) {
            return Err(Error::Conflict(format!(
                "endpoint {} lives on host {}; detach it there",
                remote.ep.id, remote.ep.host
            )));
        }
        Ok(chosen)
    }

    pub(super) async fn detach_one(&self, net: &Network, v: &Versioned) -> Result<()> {
        let ep = &v.ep;
        if ep.host == self.cfg.host_id {
            self.dp
                .detach(&self.sandbox_spec(net).netns, &ep.host_ifname)
                .await?;
            self.journal.forget(ep);
        }
        if !self.release(v).await {
            return Err(Error::Conflict(format!(
                "endpoint {} ({}) on network {} changed while it was being detached; not released",
                ep.id, ep.ip, net.name
            )));
        }
        tracing::info!(network = %net.name, id = %ep.id, ip = %ep.ip, "detached");
        Ok(())
    }
}
