//! Attach: check the request, open the workload's namespace, make sure of the network's
//! sandbox, take an address (`allocate`), build the veth pair; a failure undoes the address.

use std::path::Path;

use ipnetwork::Ipv4Network;

use super::{generate_id, now_secs, Service};
use crate::api::types::AttachRequest;
use crate::daemon::access::{self, Caller};
use crate::dataplane::spec::EndpointSpec;
use crate::dataplane::Dataplane;
use crate::error::{Error, Result};
use crate::ipam;
use crate::model::{DnsName, Endpoint, EndpointId, IfName, Mac, Network};
use crate::netns::{self, NetNs, Opener};
use crate::store::Store;

impl<S: Store, D: Dataplane> Service<S, D> {
    /// Attach a workload to a network.
    pub async fn attach(&self, req: &AttachRequest, caller: Caller) -> Result<Endpoint> {
        Ok(self.attach_to(req, caller).await?.0)
    }

    /// Attach, and return the network's record as well.
    pub(super) async fn attach_to(
        &self,
        req: &AttachRequest,
        caller: Caller,
    ) -> Result<(Endpoint, Network)> {
        let ifname: IfName = req.ifname.as_deref().unwrap_or("eth0").parse()?;
        let id: EndpointId = match &req.id {
            Some(id) => id.parse()?,
            None => generate_id(),
        };
        let requested_ip = req
            .ip
            .as_deref()
            .map(|s| ipam::parse_ip("address", s))
            .transpose()?;
        let requested_mac = req.mac.as_deref().map(str::parse::<Mac>).transpose()?;
        if req.owner.as_ref().is_some_and(|o| o.len() > 128) {
            return Err(Error::Invalid("owner is longer than 128 characters".into()));
        }
        let (name, aliases) = dns_names(req)?;
        let opener = Opener::for_uid(caller.uid);
        // Both reads at once (each waits on a blocking thread); their errors in this order,
        // the caller's access checked before anything of the network is told.
        let (workload, net) = tokio::join!(
            open_workload(req.netns.as_deref(), req.pid, opener),
            self.network_at(&req.network)
        );
        let (workload, netns_name) = workload?;
        access::check_may_attach(&workload, caller)?;
        let (net, net_rev) = net?;
        if let Some(ip) = requested_ip {
            ipam::check_requested(&net, ip)?;
        }
        if let Some(mtu) = req.mtu {
            ipam::check_requested_mtu(&net, mtu)?;
        }
        if let Some(mac) = requested_mac {
            self.check_mac_free(&net, mac).await?;
        }
        let ports_held = self.check_ports(&net, &req.ports, None).await?;
        let _guard = self.kernel.read().await;
        self.ensure_sandbox(&net).await?;
        let template = Endpoint {
            network: net.name.clone(),
            network_id: net.id.clone(),
            id,
            ip: Ipv4Network::new(net.gateway, net.subnet.prefix()).expect("valid prefix"),
            // All zeros: allocate derives it from the address.
            mac: requested_mac.unwrap_or(Mac([0; 6])),
            host: self.cfg.host_id.clone(),
            ifname,
            netns: netns_name,
            netns_inode: workload.inode(),
            host_ifname: String::new(),
            created: now_secs(),
            origin: req.origin.unwrap_or_default(),
            owner: req.owner.clone(),
            mtu: req.mtu.filter(|m| *m != net.mtu),
            name,
            aliases,
            ports: req.ports.clone(),
        };
        let (held, durable) = self
            .allocate_staged(&net, template, requested_ip, Some(net_rev))
            .await?;
        // The kernel side is built while the store syncs the allocation to disk; the attach
        // answers only once both are done.
        let sandbox = self.sandbox_spec(&net);
        let spec = EndpointSpec::for_endpoint(&net, &held.ep);
        // The journal entry is written meanwhile too (and taken back if the attach fails).
        let (built, durable, ()) =
            tokio::join!(self.dp.attach(&sandbox, &spec, &workload), durable, async {
                self.journal_record(&held.ep)
            });
        if built.is_err() || durable.is_err() {
            self.journal.forget(&held.ep);
        }
        if let Err(e) = built {
            self.release(&held).await;
            return Err(e.into());
        }
        if let Err(e) = durable {
            // Not on disk: nothing may use the address. The store refuses writes after a
            // failed sync, so only the kernel side is undone.
            if let Err(undo) = self.dp.detach(&sandbox.netns, &spec.host_ifname).await {
                tracing::warn!(error = %undo, id = %held.ep.id, "removing the veth of an allocation that failed to sync");
            }
            return Err(e.into());
        }
        let ep = held.ep;
        drop(ports_held);
        self.egress_after_attach(&net, &ep).await;
        tracing::info!(network = %net.name, id = %ep.id, ip = %ep.ip, "attached");
        Ok((ep, net))
    }

    /// Make the sandbox exist (once per process per network; the reconcile checks it later),
    /// with the peers known so far programmed before any workload's interface exists: its
    /// first ARP then finds its answer instead of waiting a second for the kernel's retry.
    pub(super) async fn ensure_sandbox(&self, net: &Network) -> Result<()> {
        self.check_encryption(net.name.as_str(), net.encryption, "attach to")?;
        let id = net.id.clone();
        let spec = self.sandbox_spec(net);
        let ensured = || {
            self.ensured.lock().expect("poisoned").get(&id) == Some(&net.encryption)
                && self.dp.netns_present(&spec.netns)
        };
        if ensured() {
            return Ok(());
        }
        let lock = self
            .sandbox_locks
            .lock()
            .expect("poisoned")
            .entry(id.clone())
            .or_default()
            .clone();
        let _held = lock.lock().await;
        if ensured() {
            return Ok(());
        }
        self.remove_stale_sandboxes(net).await?;
        self.dp.ensure_sandbox(&spec).await?;
        self.ensured
            .lock()
            .expect("poisoned")
            .insert(id.clone(), net.encryption);
        self.start_dns(net).await;
        if let Err(e) = self.peer_pass(false, true, Some(net)).await {
            tracing::warn!(network = %net.name, error = %e, "programming a new sandbox's peers failed; the next pass retries");
        }
        Ok(())
    }

    /// Note an endpoint this daemon attached (see `journal`); a failure only costs the
    /// reconcile's ability to rebuild it, so it is logged, not returned.
    pub(super) fn journal_record(&self, ep: &Endpoint) {
        if let Err(e) = self.journal.record(ep) {
            tracing::warn!(error = %e, id = %ep.id, "recording an attachment in the run directory failed; the reconcile will not rebuild it");
        }
    }

    /// Remove the sandboxes of networks that no longer exist before building `net`'s: one
    /// left by an earlier network of the same name (or VNI) holds a VXLAN device that the
    /// new one would clash with, and must never be mistaken for it.
    ///
    /// The directory is read before the store: a sandbox built meanwhile for another network
    /// (attaches to other networks run alongside) has its record in the store by then. A
    /// sandbox whose network has any record, valid or not, is kept.
    pub(super) async fn remove_stale_sandboxes(&self, net: &Network) -> Result<()> {
        let sandboxes = self.sandbox_paths();
        let (_, present) = self.network_records().await?;
        for (path, _, id) in sandboxes {
            if id != net.id && !present.contains(id.as_str()) {
                tracing::info!(sandbox = %path.display(), "removing the sandbox of a network that no longer exists");
                self.ensured.lock().expect("poisoned").remove(&id);
                self.programmed.lock().await.remove(&id);
                self.journal.forget_network(&id);
                self.stop_dns(&id).await;
                self.dp.remove_sandbox(&path).await?;
            }
        }
        Ok(())
    }
}

/// The DNS name and aliases a request asks for, checked (nothing is allocated for a bad one).
fn dns_names(req: &AttachRequest) -> Result<(Option<DnsName>, Vec<DnsName>)> {
    let name = req.name.as_deref().map(str::parse::<DnsName>).transpose()?;
    if req.aliases.len() > DnsName::MAX_ALIASES {
        return Err(Error::Invalid(format!(
            "{} aliases given; at most {} are allowed",
            req.aliases.len(),
            DnsName::MAX_ALIASES
        )));
    }
    let aliases = req
        .aliases
        .iter()
        .map(|a| a.parse::<DnsName>())
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((name, aliases))
}

/// Open the workload's namespace from a path or a PID (exactly one), off the runtime's
/// workers and with a deadline: a caller's path may be anything (a FIFO, a hung mount).
async fn open_workload(
    netns: Option<&str>,
    pid: Option<u32>,
    opener: Opener,
) -> Result<(NetNs, String)> {
    match (netns, pid) {
        (Some(path), None) => Ok((
            NetNs::open_untrusted(Path::new(path), opener).await?,
            path.to_string(),
        )),
        (None, Some(pid)) => Ok((
            NetNs::of_pid_untrusted(pid, opener).await?,
            netns::pid_netns_path(pid).display().to_string(),
        )),
        _ => Err(Error::Invalid(
            "attach needs exactly one of netns (a path) or pid".into(),
        )),
    }
}
