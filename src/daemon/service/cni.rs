//! What the CNI plugin needs of the service beyond a plain attach: an attach that answers
//! with the network too, an idempotent release keyed by the attachment's endpoint id, a
//! check of the kernel against the record, a readiness answer, and garbage collection.
//!
//! # Teardown order on DEL
//!
//! Deleting a veth makes the kernel wait for an RCU grace period inside the netlink call
//! (≈ 36 ms here), while the namespace a runtime drops right after DEL takes the veth with
//! it almost for free. So DEL frees the address in the store first (the part that must
//! be done before answering: the runtime may ADD another container right away), reads the
//! sandbox-side veth's index, answers, and deletes that index on a blocking thread of its
//! own. The interface is gone a few tens of milliseconds after DEL answers, or as soon as
//! the runtime removes the namespace, whichever is first. Deleting by index, not by name,
//! keeps a late deletion from hitting a new veth that took the released address's name.
//! An ADD for the same (namespace, interface) waits for a pending deletion first, so a
//! runtime that reuses a namespace never sees "interface exists". `rnet detach` (the CLI)
//! keeps deleting synchronously.

use super::Versioned;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

use super::Service;
use crate::api::types::{
    AttachRequest, CniAttachment, CniCheckRequest, CniDelRequest, CniDelResponse, CniGcRequest,
    CniGcResponse, CniStatus,
};
use crate::daemon::access::Caller;
use crate::dataplane::Dataplane;
use crate::error::{Error, Result};
use crate::ipam;
use crate::model::{Endpoint, Mac, Network, Origin};
use crate::netns::{NetNs, Opener};
use crate::store::{keys, Compare, Revision, Store, TxnOp};
use crate::validate;

type Pending = Shared<BoxFuture<'static, ()>>;
type DpResult<T> = std::result::Result<T, crate::dataplane::DataplaneError>;

/// Veth deletions running in the background, by (workload namespace inode, interface name).
#[derive(Default)]
pub(super) struct Teardowns {
    pending: Arc<Mutex<HashMap<(u64, String), Pending>>>,
}

impl Teardowns {
    /// Run `deletion` (of a veth, `Dataplane::delete_link_later`) on its own; `key` names the
    /// workload interface going away, for `wait`.
    fn spawn(&self, key: (u64, String), deletion: BoxFuture<'static, DpResult<()>>) {
        let task = tokio::spawn(async move {
            if let Err(e) = deletion.await {
                tracing::warn!(error = %e, "background veth deletion failed; the reconcile will retry");
            }
        });
        let done: Pending = task.map(|_| ()).boxed().shared();
        self.pending
            .lock()
            .expect("poisoned")
            .insert(key.clone(), done.clone());
        let pending = self.pending.clone();
        tokio::spawn(async move {
            done.clone().await;
            let mut map = pending.lock().expect("poisoned");
            if map.get(&key).is_some_and(|p| p.ptr_eq(&done)) {
                map.remove(&key);
            }
        });
    }

    /// Wait until no deletion of interface `ifname` of the namespace at `netns` is pending.
    async fn wait(&self, netns: &str, ifname: &str) {
        if self.pending.lock().expect("poisoned").is_empty() {
            return;
        }
        let Ok(ns) = NetNs::open_untrusted(Path::new(netns), Opener::Trusted).await else {
            return;
        };
        let key = (ns.inode(), ifname.to_string());
        let pending = self.pending.lock().expect("poisoned").get(&key).cloned();
        if let Some(p) = pending {
            p.await;
        }
    }
}

impl<S: Store, D: Dataplane> Service<S, D> {
    /// A requested MAC must be a usable unicast address that no endpoint of the network has.
    /// (Checked against a listing: two concurrent attaches asking for the same MAC can both
    /// pass; runtimes hand out distinct MACs, this catches mistakes.)
    pub(super) async fn check_mac_free(&self, net: &Network, mac: Mac) -> Result<()> {
        ipam::check_requested_mac(net, mac)?;
        let eps = self.endpoints(Some(net.name.as_str())).await?;
        match eps.iter().find(|e| e.mac == mac) {
            Some(other) => Err(Error::Conflict(format!(
                "MAC address {mac} is already used by endpoint {} on network {}",
                other.id, net.name
            ))),
            None => Ok(()),
        }
    }

    /// CNI ADD: attach, and answer with the network as well.
    pub async fn cni_add(&self, req: &AttachRequest, caller: Caller) -> Result<CniAttachment> {
        if let (Some(netns), Some(ifname)) = (&req.netns, &req.ifname) {
            self.teardowns.wait(netns, ifname).await;
        }
        // The answer carries the network record the attach read (at the revision its
        // allocation compared).
        let (endpoint, network) = self.attach_to(req, caller).await?;
        Ok(CniAttachment { endpoint, network })
    }

    /// Delete an endpoint's records if the record is still the one read at `rev`; false if
    /// it changed in between (then it is no longer this endpoint to release).
    async fn release_at(&self, ep: &Endpoint, rev: Revision) -> Result<bool> {
        let name = ep.network.as_str();
        let key = keys::endpoint(name, ep.ip.ip());
        let txn = self
            .store
            .txn(
                vec![Compare::ModRevision(key.clone(), rev)],
                vec![
                    TxnOp::Delete { key },
                    TxnOp::Delete {
                        key: keys::endpoint_id(name, ep.id.as_str()),
                    },
                ],
            )
            .await?;
        Ok(txn.succeeded)
    }

    /// A released endpoint's veth pair: find it (sandbox side, else the workload side if
    /// `netns` is still the endpoint's namespace) and delete it in the background.
    async fn tear_down(&self, net: &Network, ep: &Endpoint, netns: Option<&str>) -> &'static str {
        let key = (ep.netns_inode, ep.ifname.to_string());
        let sandbox = self.sandbox_spec(net).netns;
        match self.dp.sandbox_link(&sandbox, &ep.host_ifname).await {
            Ok(Some(link)) => {
                let deletion = self.dp.delete_link_later(sandbox, link.index);
                self.teardowns.spawn(key, deletion);
                return "background";
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, id = %ep.id, "looking up the sandbox veth"),
        }
        let Some(path) = netns else {
            return "none";
        };
        let Ok(ns) = NetNs::open_untrusted(Path::new(path), Opener::Trusted).await else {
            return "none";
        };
        if ns.inode() != ep.netns_inode {
            return "none";
        }
        match self.dp.workload_link(&ns, ep.ifname.as_str()).await {
            Ok(Some(link)) => {
                let deletion = self.dp.delete_link_later(PathBuf::from(path), link.index);
                self.teardowns.spawn(key, deletion);
                "background"
            }
            _ => "none",
        }
    }

    /// CNI DEL: release attachment `id` if it exists; succeed when it does not, when its
    /// namespace is gone, when asked twice. Only endpoints CNI made on this host are released.
    pub async fn cni_del(&self, req: &CniDelRequest) -> Result<CniDelResponse> {
        let nothing = || CniDelResponse {
            released: None,
            teardown: "none".into(),
        };
        let net = match self.network(&req.network).await {
            Ok(n) => n,
            Err(Error::NotFound(_)) => return Ok(nothing()),
            Err(e) => return Err(e),
        };
        let Some(Versioned { ep, rev }) = self.endpoint_by_id(net.name.as_str(), &req.id).await?
        else {
            return Ok(nothing());
        };
        if ep.ifname.as_str() != req.ifname {
            return Ok(nothing());
        }
        self.check_cni_owned(&ep)?;
        let _guard = self.kernel.read().await;
        if !self.release_at(&ep, rev).await? {
            return Ok(nothing());
        }
        self.journal.forget(&ep);
        let teardown = self.tear_down(&net, &ep, req.netns.as_deref()).await;
        // Its published ports close before DEL answers (the rest follows the store watch).
        if !ep.ports.is_empty() {
            self.sync_egress().await;
        }
        tracing::info!(network = %net.name, id = %ep.id, ip = %ep.ip, teardown, "released (CNI DEL)");
        Ok(CniDelResponse {
            released: Some(ep),
            teardown: teardown.into(),
        })
    }

    /// Refuse to touch what another host or another front door made.
    fn check_cni_owned(&self, ep: &Endpoint) -> Result<()> {
        if ep.host != self.cfg.host_id {
            return Err(Error::Conflict(format!(
                "endpoint {} lives on host {}; only that host's plugin releases it",
                ep.id, ep.host
            )));
        }
        if ep.origin != Origin::Cni {
            return Err(Error::Conflict(format!(
                "endpoint {} was made by {}, not by the CNI plugin; use `rnet detach`",
                ep.id, ep.origin
            )));
        }
        Ok(())
    }

    /// CNI CHECK: the record exists and the workload's interface has the recorded MAC,
    /// MTU and address, is up, and has the default route via the gateway; the sandbox side
    /// of the pair exists. The error names everything that is wrong.
    pub async fn cni_check(
        &self,
        req: &CniCheckRequest,
        caller: crate::daemon::access::Caller,
    ) -> Result<CniAttachment> {
        let net = self.network(&req.network).await?;
        let ep = match self.endpoint_by_id(net.name.as_str(), &req.id).await? {
            Some(Versioned { ep, .. }) if ep.ifname.as_str() == req.ifname => ep,
            _ => {
                return Err(Error::NotFound(format!(
                    "rnetd has no record of attachment {} ({}) on network {}",
                    req.id, req.ifname, net.name
                )))
            }
        };
        self.check_cni_owned(&ep)?;
        let ns = NetNs::open_untrusted(Path::new(&req.netns), Opener::for_uid(caller.uid)).await?;
        if ep.netns_inode != 0 && ns.inode() != ep.netns_inode {
            return Err(Error::Conflict(format!(
                "endpoint {} was attached to another network namespace than {}",
                ep.id, req.netns
            )));
        }
        let mut problems = Vec::new();
        let ifname = ep.ifname.as_str();
        match self.dp.inspect_workload(&ns, ifname).await? {
            None => problems.push(format!(
                "interface {ifname} is missing from network namespace {}",
                req.netns
            )),
            Some(wl) => {
                let mtu = ep.mtu.unwrap_or(net.mtu);
                if wl.link.mac != Some(ep.mac) {
                    problems.push(format!(
                        "interface {ifname} has MAC {}, not {}",
                        wl.link.mac.map(|m| m.to_string()).unwrap_or_default(),
                        ep.mac
                    ));
                }
                if !wl.link.up {
                    problems.push(format!("interface {ifname} is down"));
                }
                if wl.link.mtu != mtu {
                    problems.push(format!(
                        "interface {ifname} has MTU {}, not {mtu}",
                        wl.link.mtu
                    ));
                }
                if !wl.addresses.contains(&ep.ip) {
                    problems.push(format!("interface {ifname} lacks address {}", ep.ip));
                }
                if !wl.default_gateways.contains(&net.gateway) {
                    problems.push(format!(
                        "no default route via {} through {ifname}",
                        net.gateway
                    ));
                }
            }
        }
        let sandbox = self.sandbox_spec(&net).netns;
        if self
            .dp
            .sandbox_link(&sandbox, &ep.host_ifname)
            .await?
            .is_none()
        {
            problems.push(format!(
                "the sandbox side {} of the veth pair is missing",
                ep.host_ifname
            ));
        }
        if !problems.is_empty() {
            return Err(Error::NotFound(format!(
                "attachment {} on network {}: {}",
                ep.id,
                net.name,
                problems.join("; ")
            )));
        }
        Ok(CniAttachment {
            endpoint: ep,
            network: net,
        })
    }

    /// CNI STATUS: the network exists, the store answers, and an address is free.
    pub async fn cni_status(&self, network: &str) -> Result<CniStatus> {
        let net = self.network(network).await?;
        let used = self.endpoints(Some(network)).await?.len() as u64;
        let capacity = ipam::capacity(&net);
        if used >= capacity {
            return Err(Error::Exhausted(format!(
                "network {network} has no free address: {used} of {capacity} in use"
            )));
        }
        Ok(CniStatus {
            network: network.to_string(),
            capacity,
            used,
        })
    }

    /// CNI GC: release this host's CNI endpoints of `owner` on the network whose ids are
    /// not among the valid ones. Keeps going past failures and reports them at the end.
    pub async fn cni_gc(&self, req: &CniGcRequest) -> Result<CniGcResponse> {
        let net = match self.network(&req.network).await {
            Ok(n) => n,
            Err(Error::NotFound(_)) => return Ok(CniGcResponse::default()),
            Err(e) => return Err(e),
        };
        let valid: HashSet<&str> = req.valid.iter().map(String::as_str).collect();
        let (kvs, _) = self
            .store
            .list(&keys::endpoints_of(net.name.as_str()))
            .await?;
        let _guard = self.kernel.read().await;
        let mut released = Vec::new();
        let mut failures = Vec::new();
        for kv in &kvs {
            let checked = validate::endpoint(&kv.key, &kv.value, Some(&net));
            let Some(ep) = self.valid(kv, checked) else {
                continue;
            };
            let stale = ep.host == self.cfg.host_id
                && ep.origin == Origin::Cni
                && ep.owner.as_deref() == Some(req.owner.as_str())
                && !valid.contains(ep.id.as_str());
            if !stale {
                continue;
            }
            match self.release_at(&ep, kv.mod_revision).await {
                Ok(true) => {
                    self.journal.forget(&ep);
                    self.tear_down(&net, &ep, None).await;
                    tracing::info!(network = %net.name, id = %ep.id, ip = %ep.ip, "released (CNI GC)");
                    released.push(ep);
                }
                Ok(false) => {}
                Err(e) => failures.push(format!("{}: {e}", ep.id)),
            }
        }
        if released.iter().any(|e| !e.ports.is_empty()) {
            self.sync_egress().await;
        }
        if !failures.is_empty() {
            return Err(Error::Internal(format!(
                "GC released {} endpoint(s) but failed on: {}",
                released.len(),
                failures.join("; ")
            )));
        }
        Ok(CniGcResponse { released })
    }
}
