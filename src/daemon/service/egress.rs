//! Egress and published ports on this host: the uplinks and the `ip rnet` NAT table, kept in
//! line with the records (by the attach that needs it, the detach that releases published
//! ports, a network's removal, and any store change that alters what egress needs), and
//! audited (and repaired) by every reconcile and `rnet doctor`. An uplink lives as long as
//! its network's sandbox.
//!
//! What should exist is pure (`nat::desired`, `nat::wants_uplink`); this module reads the
//! kernel back, compares, and applies. The table is always replaced whole, in one batch.

use std::collections::BTreeSet;

use super::records::Records;
use super::Service;
use crate::api::types::DriftLine;
use crate::dataplane::spec::UplinkSpec;
use crate::dataplane::Dataplane;
use crate::error::{Error, Result};
use crate::model::{Endpoint, Network, NetworkId, PortMapping};
use crate::nat::{self, nft, Drift, Ruleset};
use crate::reconcile::{Finding, Repair};
use crate::store::Store;
use crate::validate;

/// The drift lines of the NAT table are filed under this "network".
const HOST: &str = "host";

fn finding(network: &str, kind: &str, object: String, detail: String) -> Finding {
    Finding {
        line: DriftLine {
            network: network.to_string(),
            kind: kind.to_string(),
            object,
            detail,
        },
        repair: Repair::Egress,
    }
}

fn nft_error(e: nft::NftError) -> Error {
    Error::Internal(format!("programming the NAT table: {e}"))
}

/// What egress needs, as computed from the watched cache: the table and the uplink names.
pub(super) type Seen = (Ruleset, Vec<String>);

impl<S: Store, D: Dataplane> Service<S, D> {
    /// On a store change: run the egress pass if what egress needs changed (a published
    /// port released, by this host or another, a network was removed elsewhere). Cheap
    /// otherwise: pure code on the cache, no kernel and no store round trip.
    pub(super) async fn egress_on_change(&self) {
        let (networks, local) = {
            let cache = self.shared.read();
            if !cache.synced {
                return;
            }
            let networks: Vec<Network> = cache.networks.values().cloned().collect();
            let local: Vec<Endpoint> = cache
                .endpoints
                .values()
                .filter(|e| e.host == self.cfg.host_id)
                .cloned()
                .collect();
            (networks, local)
        };
        let sandboxes = self.sandboxes_here(&networks);
        let uplinks = networks
            .iter()
            .filter(|n| nat::wants_uplink(n, &sandboxes))
            .map(|n| crate::dataplane::spec::uplink_ifname(&n.id))
            .collect();
        let seen = (nat::desired(&networks, &local, &sandboxes), uplinks);
        let changed = {
            let mut last = self.egress_seen.lock().expect("poisoned");
            let changed = last.as_ref() != Some(&seen);
            *last = Some(seen);
            changed
        };
        if changed {
            self.sync_egress().await;
        }
    }

    /// Refuse ports that `net` cannot publish or that another endpoint on this host already
    /// publishes; on success, the guard that keeps the check true until the caller's record
    /// is written (None when nothing is published).
    pub(super) async fn check_ports(
        &self,
        net: &Network,
        ports: &[PortMapping],
        except: Option<&str>,
    ) -> Result<Option<tokio::sync::MutexGuard<'_, ()>>> {
        if ports.is_empty() {
            return Ok(None);
        }
        validate::check_ports(ports).map_err(Error::Invalid)?;
        if net.internal {
            return Err(Error::Invalid(format!(
                "network {} is internal: it publishes no ports",
                net.name
            )));
        }
        if !net.egress {
            return Err(Error::Invalid(format!(
                "network {} has no egress (--no-egress): published ports need its uplink",
                net.name
            )));
        }
        let guard = self.ports_lock.lock().await;
        let local = self.local_endpoints().await?;
        if let Some((other, m)) = nat::port_conflict(&local, ports, except) {
            return Err(Error::Conflict(format!(
                "host port {}/{} is already published by endpoint {} ({}) on network {}",
                m.host_port,
                m.proto,
                other.id,
                other.ip.ip(),
                other.network
            )));
        }
        Ok(Some(guard))
    }

    /// Bring uplinks and the NAT table in line with the store now. A failure is logged, not
    /// returned: the attach or detach itself is done, and the next reconcile retries.
    pub(super) async fn sync_egress(&self) {
        match self.egress_pass(true, None).await {
            Ok(f) if !f.is_empty() => {
                tracing::debug!(changes = f.len(), "egress programmed")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "programming egress failed; the next reconcile retries")
            }
        }
    }

    /// After an attach: the egress pass, unless the new endpoint cannot change what egress
    /// needs (it publishes no ports, and its network has no egress or its uplink and
    /// masquerade are in place already). That saves two store lists and two kernel dumps on
    /// most attaches; the periodic reconcile still audits the whole.
    pub(super) async fn egress_after_attach(&self, net: &Network, ep: &Endpoint) {
        let unchanged = ep.ports.is_empty()
            && (!net.egress
                || net.internal
                || self
                    .egress_ready
                    .lock()
                    .expect("poisoned")
                    .contains(&net.id));
        if !unchanged {
            self.sync_egress().await;
        }
    }

    /// Compare the uplinks and the NAT table with the records; with `apply`, repair them.
    /// The records are read here, under the pass's lock (so passes apply in the order they
    /// read), unless the caller read them itself under the kernel's write lock (a reconcile).
    pub(super) async fn egress_pass(
        &self,
        apply: bool,
        records: Option<&Records>,
    ) -> Result<Vec<Finding>> {
        let _one_at_a_time = self.egress_lock.lock().await;
        let result = match records {
            Some(r) => self.egress_pass_locked(apply, r).await,
            None => match self.records().await {
                Ok(r) => self.egress_pass_locked(apply, &r).await,
                Err(e) => Err(e),
            },
        };
        if apply {
            let mut ready = self.egress_ready.lock().expect("poisoned");
            match &result {
                Ok((_, wanted)) => *ready = wanted.clone(),
                Err(_) => ready.clear(),
            }
        }
        result.map(|(findings, _)| findings)
    }

    /// The pass itself; also returns the networks that want an uplink.
    async fn egress_pass_locked(
        &self,
        apply: bool,
        records: &Records,
    ) -> Result<(Vec<Finding>, BTreeSet<NetworkId>)> {
        let (networks, local) = (&records.networks, &records.local);
        let sandboxes = self.sandboxes_here(networks);
        let mut findings = self.uplink_pass(networks, &sandboxes, apply).await?;
        findings.extend(
            self.table_pass(&nat::desired(networks, local, &sandboxes), apply)
                .await?,
        );
        let wanted = networks
            .iter()
            .filter(|n| nat::wants_uplink(n, &sandboxes))
            .map(|n| n.id.clone())
            .collect();
        Ok((findings, wanted))
    }

    /// The networks whose sandbox exists on this host.
    fn sandboxes_here(&self, networks: &[Network]) -> BTreeSet<NetworkId> {
        networks
            .iter()
            .filter(|n| self.dp.netns_present(&self.sandbox_spec(n).netns))
            .map(|n| n.id.clone())
            .collect()
    }

    async fn uplink_pass(
        &self,
        networks: &[Network],
        sandboxes: &BTreeSet<NetworkId>,
        apply: bool,
    ) -> Result<Vec<Finding>> {
        let wanted: Vec<(&Network, UplinkSpec)> = networks
            .iter()
            .filter(|n| nat::wants_uplink(n, sandboxes))
            .map(|n| (n, UplinkSpec::for_network(n, &self.cfg.run_dir)))
            .collect();
        let mut out = Vec::new();
        for (net, spec) in &wanted {
            let Some(problem) = self.dp.check_uplink(spec).await? else {
                continue;
            };
            out.push(finding(
                net.name.as_str(),
                "missing",
                format!("uplink {}", spec.host_ifname),
                problem,
            ));
            if apply {
                self.dp.ensure_uplink(spec).await?;
                tracing::info!(network = %net.name, uplink = %spec.host_ifname, "uplink ready");
            }
        }
        for link in self.dp.uplinks().await? {
            if wanted.iter().any(|(_, s)| s.host_ifname == link.name) {
                continue;
            }
            out.push(finding(
                HOST,
                "stray",
                format!("uplink {}", link.name),
                "no local egress network uses it".into(),
            ));
            if apply {
                self.dp.remove_uplink(&link.name).await?;
                tracing::info!(uplink = %link.name, "uplink removed");
            }
        }
        Ok(out)
    }

    async fn table_pass(&self, rs: &Ruleset, apply: bool) -> Result<Vec<Finding>> {
        let want = nft::images(rs).map_err(nft_error)?;
        let have = self.dp.observe_nat().await.map_err(nft_error)?;
        let drift = nat::audit(&want, have.as_deref());
        let out: Vec<Finding> = drift.iter().map(drift_finding).collect();
        if apply && !out.is_empty() {
            self.dp.program_nat(rs).await.map_err(nft_error)?;
        }
        Ok(out)
    }
}

fn drift_finding(d: &Drift) -> Finding {
    let table = format!("nft table ip {}", nat::TABLE);
    match d {
        Drift::TableMissing => finding(HOST, "missing", table, "the NAT table is gone".into()),
        Drift::TableStray => finding(
            HOST,
            "stray",
            table,
            "no egress network has its sandbox here".into(),
        ),
        Drift::Missing(r) => finding(HOST, "missing", rule_object(r), String::new()),
        Drift::Stray(r) => finding(HOST, "stray", rule_object(r), r.exprs.clone()),
        Drift::Changed { wanted, found } => finding(
            HOST,
            "wrong",
            rule_object(wanted),
            format!("has: {}", found.exprs),
        ),
    }
}

fn rule_object(r: &nat::RuleImage) -> String {
    if r.comment.is_empty() {
        format!("nft rule in {}", r.chain)
    } else {
        format!("nft rule in {}: {}", r.chain, r.comment)
    }
}
