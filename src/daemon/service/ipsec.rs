//! The service's side of IPsec mode: whether it can run, programming XFRM from the peers'
//! records on every peer pass, and what `rnet peers`, `rnet status` and `rnet doctor` say.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::Service;
use crate::api::types::DriftLine;
use crate::dataplane::Dataplane;
use crate::error::{Error, Result};
use crate::ipsec::{Ipsec, IpsecStatus, PeerInput, PeerIpsec};
use crate::model::HostRecord;
use crate::store::Store;

impl<S: Store, D: Dataplane> Service<S, D> {
    /// IPsec, to `what`; a clear error naming the missing kernel feature where it cannot run.
    pub(super) fn require_ipsec(&self, what: &str) -> Result<&Arc<Ipsec>> {
        self.tunnel
            .ipsec
            .as_ref()
            .map_err(|why| Error::Unsupported(format!("cannot {what}: {why}")))
    }

    /// The live peers IPsec keys with: admitted by their pinned identity (as for
    /// WireGuard), with a public key and an IPsec part in their record.
    fn ipsec_peers(&self) -> Vec<PeerInput> {
        let Ok(wg) = &self.tunnel.wireguard else {
            return Vec::new();
        };
        let cache = self.shared.cache.read().expect("cache poisoned");
        if !cache.synced {
            return Vec::new();
        }
        let me = self.cfg.host_id.as_str();
        let (admitted, _refused) = wg.pins().admit(me, cache.presence.values());
        admitted
            .into_iter()
            .filter(|h| h.id != me)
            .filter_map(|h| {
                let info = h.ipsec.clone()?;
                let public =
                    crate::wireguard::keys::parse_public(&h.wireguard.as_ref()?.public_key).ok()?;
                Some(PeerInput {
                    id: h.id.clone(),
                    underlay: h.underlay,
                    info,
                    shared: wg.shared_secret(&public),
                })
            })
            .collect()
    }

    /// Whether any network of the cluster uses IPsec (else rnet keeps no XFRM state).
    fn ipsec_in_use(&self) -> bool {
        let cache = self.shared.cache.read().expect("cache poisoned");
        cache
            .networks
            .values()
            .any(|n| n.encryption == crate::model::Encryption::Ipsec)
    }

    /// One IPsec programming pass (on the peer loop); publishes this host's epoch and
    /// acknowledgements when they change.
    pub async fn sync_ipsec(&self) {
        let Ok(ipsec) = &self.tunnel.ipsec else {
            return;
        };
        let peers = self.ipsec_peers();
        if !self.shared.cache.read().expect("cache poisoned").synced {
            return;
        }
        let enabled = self.ipsec_in_use();
        let (ipsec, me) = (
            ipsec.clone(),
            (self.cfg.host_id.clone(), self.cfg.underlay.address),
        );
        let now = super::now_secs();
        let changed = tokio::task::spawn_blocking(move || {
            let changed = ipsec.sync((&me.0, me.1), &peers, now, enabled);
            (changed, ipsec.info())
        })
        .await;
        match changed {
            Ok((true, info)) => self.tunnel.record.send_modify(|r| r.ipsec = Some(info)),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "IPsec pass failed"),
        }
    }

    /// The peers whose SAs are installed both ways (empty without IPsec).
    pub fn ipsec_ready(&self) -> BTreeSet<String> {
        match &self.tunnel.ipsec {
            Ok(i) => i.ready_peers(),
            Err(_) => BTreeSet::new(),
        }
    }

    /// The IPsec state with `host` as `rnet peers` shows it (None: no IPsec here, or `host`
    /// is this host).
    pub(super) fn ipsec_peer(&self, host: &HostRecord) -> Option<PeerIpsec> {
        let ipsec = self.tunnel.ipsec.as_ref().ok()?;
        if host.id == self.cfg.host_id {
            return None;
        }
        ipsec.peer_status(&host.id).or_else(|| {
            Some(PeerIpsec {
                note: Some(match (&host.ipsec, &host.wireguard) {
                    (None, _) => {
                        "its record has no IPsec part (no ESP in its kernel, or an older rnetd)"
                            .into()
                    }
                    (_, None) => "its record has no X25519 key to derive IPsec keys from".into(),
                    _ => self
                        .tunnel_problems
                        .lock()
                        .expect("poisoned")
                        .get(&host.id)
                        .cloned()
                        .unwrap_or_else(|| "no live host record: no SAs".into()),
                }),
                ..Default::default()
            })
        })
    }

    /// IPsec's part of `rnet status`.
    pub(super) fn ipsec_status(&self) -> IpsecStatus {
        match &self.tunnel.ipsec {
            Ok(i) => i.status(super::now_secs()),
            Err(why) => IpsecStatus {
                available: false,
                error: Some(why.clone()),
                ..Default::default()
            },
        }
    }

    /// `rnet doctor`: XFRM states and policies missing or extra against what this host
    /// wants now (its own SAs and policies only: reqid and port tell them apart).
    pub(super) async fn ipsec_drift(&self) -> Vec<DriftLine> {
        let Ok(ipsec) = &self.tunnel.ipsec else {
            return Vec::new();
        };
        let peers = self.ipsec_peers();
        let enabled = self.ipsec_in_use();
        let (ipsec, me) = (
            ipsec.clone(),
            (self.cfg.host_id.clone(), self.cfg.underlay.address),
        );
        let now = super::now_secs();
        let ops =
            tokio::task::spawn_blocking(move || ipsec.drift((&me.0, me.1), &peers, now, enabled))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
        let line = |object: String, detail: String| DriftLine {
            network: "-".into(),
            kind: "ipsec".into(),
            object,
            detail,
        };
        match ops {
            Ok(ops) => ops
                .iter()
                .map(|op| {
                    let (object, detail) = crate::ipsec::describe(op);
                    line(object, detail)
                })
                .collect(),
            Err(e) => vec![line("xfrm".into(), e)],
        }
    }
}
