//! Egress and published ports on this host: the uplinks and the `ip rnet` NAT table, kept in
//! line with the records after every attach, detach and network removal, and audited (and
//! repaired) by every reconcile and `rnet doctor`.
//!
//! What should exist is pure (`nat::desired`, `nat::wants_uplink`); this module reads the
//! kernel back, compares, and applies. The table is always replaced whole, in one batch.

use super::Service;
use crate::api::types::DriftLine;
use crate::dataplane::spec::UplinkSpec;
use crate::dataplane::Dataplane;
use crate::error::{Error, Result};
use crate::model::{Endpoint, Network, PortMapping};
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
    /// On a store change: run the egress pass if what egress needs changed (another host
    /// released this host's endpoint, a network was removed elsewhere). Cheap otherwise:
    /// pure code on the cache, no kernel and no store round trip.
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
        let uplinks = networks
            .iter()
            .filter(|n| nat::wants_uplink(n, &local))
            .map(|n| crate::dataplane::spec::uplink_ifname(&n.id))
            .collect();
        let seen = (nat::desired(&networks, &local), uplinks);
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
        match self.egress_pass(true).await {
            Ok(f) if !f.is_empty() => {
                tracing::debug!(changes = f.len(), "egress programmed")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "programming egress failed; the next reconcile retries")
            }
        }
    }

    /// Compare the uplinks and the NAT table with the records; with `apply`, repair them.
    pub(super) async fn egress_pass(&self, apply: bool) -> Result<Vec<Finding>> {
        let _one_at_a_time = self.egress_lock.lock().await;
        let (networks, _) = self.network_records().await?;
        let local = self.local_endpoints().await?;
        let mut findings = self.uplink_pass(&networks, &local, apply).await?;
        findings.extend(
            self.table_pass(&nat::desired(&networks, &local), apply)
                .await?,
        );
        Ok(findings)
    }

    async fn uplink_pass(
        &self,
        networks: &[Network],
        local: &[Endpoint],
        apply: bool,
    ) -> Result<Vec<Finding>> {
        let wanted: Vec<(&Network, UplinkSpec)> = networks
            .iter()
            .filter(|n| nat::wants_uplink(n, local))
            .map(|n| (n, UplinkSpec::for_network(n, &self.cfg.run_dir)))
            .collect();
        let mut out = Vec::new();
        for (net, spec) in &wanted {
            // No sandbox yet: the sandbox pass builds it, and the next pass its uplink.
            if !self.dp.netns_present(&spec.sandbox) {
                continue;
            }
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
        Drift::TableStray => finding(HOST, "stray", table, "no local endpoint needs it".into()),
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
