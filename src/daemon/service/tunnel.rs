//! The service's side of the encrypted overlay: which peers the tunnel keeps, which hosts
//! encrypted traffic may go to, peers' pinned identities, key rotation, and what
//! `rnet peers` / `rnet doctor` say.

use std::collections::BTreeSet;

use super::Service;
use crate::api::types::{DriftLine, TrustResponse};
use crate::dataplane::Dataplane;
use crate::error::{Error, Result};
use crate::model::{Encryption, HostRecord, Network, WireguardInfo};
use crate::store::Store;
use crate::wireguard::{plan, TunnelStatus, WireGuard};

/// The tunnel as the service sees it.
pub struct Tunnel {
    /// The running tunnel, or why it could not start.
    pub wireguard: std::result::Result<WireGuard, String>,
    /// This host's record as `keep_presence` publishes it.
    pub record: tokio::sync::watch::Sender<HostRecord>,
    /// IPsec mode, or why it cannot run here (e.g. no ESP in the kernel).
    pub ipsec: std::result::Result<std::sync::Arc<crate::ipsec::Ipsec>, String>,
}

impl<S: Store, D: Dataplane> Service<S, D> {
    /// The tunnel, to `what` (e.g. "create encrypted network x"); a clear error where there
    /// is none.
    fn require_tunnel(&self, what: &str) -> Result<&WireGuard> {
        self.tunnel.wireguard.as_ref().map_err(|why| {
            Error::Unsupported(format!(
                "cannot {what}: WireGuard is unavailable on this host ({why})"
            ))
        })
    }

    /// Check that a network's encryption can work here before anything is built.
    pub(super) fn check_encryption(&self, net: &str, enc: Encryption, doing: &str) -> Result<()> {
        match enc {
            Encryption::None => Ok(()),
            Encryption::Wireguard => self
                .require_tunnel(&format!("{doing} encrypted network {net}"))
                .map(|_| ()),
            Encryption::Ipsec => self
                .require_ipsec(&format!("{doing} IPsec network {net}"))
                .map(|_| ()),
        }
    }

    /// Keep one tunnel per live peer host, as the store's host records say, for the hosts
    /// whose records match their pinned identity (the others get none: fail closed).
    pub fn sync_tunnels(&self) {
        let Ok(wg) = &self.tunnel.wireguard else {
            return;
        };
        // Runs on every peer pass: read the presence records in place, without a snapshot.
        let (specs, problems) = {
            let cache = self.shared.cache.read().expect("cache poisoned");
            if !cache.synced {
                return;
            }
            let (admitted, mut refused) =
                wg.pins().admit(&self.cfg.host_id, cache.presence.values());
            let (specs, problems) = plan::wanted(&self.cfg.host_id, &wg.public(), admitted);
            refused.extend(problems);
            (specs, refused)
        };
        wg.set_peers(specs);
        *self.tunnel_problems.lock().expect("poisoned") = problems;
    }

    /// `rnet peers --trust HOST`: pin HOST's identity and underlay to what its live record
    /// says now (an operator approving a re-installed or moved host); its tunnel follows.
    pub fn trust_peer(&self, host: &str) -> Result<TrustResponse> {
        let wg = self.require_tunnel(&format!("trust host {host}"))?;
        if host == self.cfg.host_id {
            return Err(Error::Invalid(format!(
                "host {host} is this host; only peers are pinned"
            )));
        }
        let record = self
            .shared
            .cache
            .read()
            .expect("cache poisoned")
            .presence
            .get(host)
            .cloned()
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "host {host} has no live record in the store: nothing to trust"
                ))
            })?;
        let pin = wg.pins().trust(&record).map_err(Error::Conflict)?;
        self.sync_tunnels();
        Ok(TrustResponse {
            host: host.to_string(),
            pin: pin.into(),
        })
    }

    /// Hosts with a live WireGuard session.
    pub fn tunnels_up(&self) -> BTreeSet<String> {
        match &self.tunnel.wireguard {
            Ok(wg) => wg.up_hosts(),
            Err(_) => BTreeSet::new(),
        }
    }

    /// The hosts `net`'s entries may point at: for an encrypted network, only those whose
    /// tunnel is up (fail closed: no session, no FDB entry, no traffic).
    pub(super) fn allowed_peers(
        &self,
        net: &Network,
        reachable: &BTreeSet<String>,
        up: &BTreeSet<String>,
    ) -> BTreeSet<String> {
        match net.encryption {
            Encryption::None => reachable.clone(),
            Encryption::Wireguard => reachable.intersection(up).cloned().collect(),
            // Fail closed as for WireGuard: entries only toward peers with SAs both ways
            // (the catch-all block policy drops anything else, and counts it).
            Encryption::Ipsec => reachable
                .intersection(&self.ipsec_ready())
                .cloned()
                .collect(),
        }
    }

    /// The tunnel to `host` as `rnet peers` shows it.
    pub(super) fn tunnel_status(&self, host: &HostRecord) -> Option<TunnelStatus> {
        let wg = self.tunnel.wireguard.as_ref().ok()?;
        if host.id == self.cfg.host_id {
            return None;
        }
        if let Some(s) = wg.status(&host.id) {
            return Some(s);
        }
        let problem = self
            .tunnel_problems
            .lock()
            .expect("poisoned")
            .get(&host.id)
            .cloned()
            .or_else(|| wg.stranger_problem(host.underlay))
            .or_else(|| Some("no live host record: no tunnel".into()));
        Some(TunnelStatus {
            up: false,
            since_handshake: None,
            tx_bytes: 0,
            rx_bytes: 0,
            key_age: None,
            problem,
            backend: Some(wg.backend()),
        })
    }

    /// What the tunnel dropped, by reason (None: no tunnel runs here).
    pub fn wireguard_drops(&self) -> Option<crate::wireguard::DropCounters> {
        self.tunnel
            .wireguard
            .as_ref()
            .ok()
            .and_then(|wg| wg.drops())
    }

    /// The tunnel's part of `rnet status`.
    pub(super) fn wireguard_status(&self) -> crate::api::types::WireguardStatus {
        match &self.tunnel.wireguard {
            Ok(wg) => {
                let info = wg.info();
                crate::api::types::WireguardStatus {
                    available: true,
                    error: None,
                    backend: Some(wg.backend().into()),
                    public_key: Some(info.public_key),
                    port: Some(info.port),
                    identity: info.identity,
                    drops: wg.drops().unwrap_or_default().into(),
                    tun_offload: wg.tun_offload().map(Into::into),
                }
            }
            Err(why) => crate::api::types::WireguardStatus {
                available: false,
                error: Some(why.clone()),
                ..Default::default()
            },
        }
    }

    /// `rnet rotate-key`: a new static key, used at once and published to the store.
    pub fn rotate_key(&self) -> Result<WireguardInfo> {
        let wg = self.require_tunnel("rotate the WireGuard key")?;
        let info = wg
            .rotate_key()
            .map_err(|e| Error::Internal(format!("rotating the WireGuard key: {e}")))?;
        self.tunnel
            .record
            .send_modify(|r| r.wireguard = Some(info.clone()));
        Ok(info)
    }

    /// On a clean stop: drop the tunnel namespace unless an encrypted network has a sandbox
    /// here (its VXLAN socket lives in it; a restarted daemon takes it up again). A kernel
    /// WireGuard device goes first: the namespace itself dies in the kernel's own time, and
    /// until then the device would hold the WireGuard port on the underlay.
    pub async fn release_tunnel_namespace(&self) {
        let Ok(wg) = &self.tunnel.wireguard else {
            return;
        };
        // Sandboxes outlive their last endpoint: any encrypted one here keeps its VXLAN
        // socket in the tunnel namespace.
        let keep = {
            let cache = self.shared.read();
            !cache.synced
                || cache.networks.values().any(|n| {
                    n.encryption == Encryption::Wireguard
                        && self.dp.netns_present(&self.sandbox_spec(n).netns)
                })
        };
        if keep {
            return;
        }
        if wg.backend() == crate::wireguard::Backend::Kernel {
            if let Err(e) = self
                .dp
                .remove_tunnel_device(wg.netns(), crate::wireguard::TUN_NAME)
                .await
            {
                tracing::warn!(error = %e, "removing the kernel WireGuard device failed");
            }
            self.dp.forget_sandbox(wg.netns());
        }
        if let Err(e) = crate::netns::remove(wg.netns()) {
            tracing::warn!(error = %e, "removing the tunnel namespace failed");
        }
    }

    /// Doctor lines for encrypted networks: every peer that holds endpoints of one of this
    /// host's encrypted networks but has no WireGuard session.
    pub(super) fn tunnel_drift(&self) -> Vec<DriftLine> {
        let cache = self.shared.read();
        let me = self.cfg.host_id.as_str();
        let up = self.tunnels_up();
        // A refused identity is drift whether or not the host holds endpoints yet.
        let mut lines: Vec<DriftLine> = match &self.tunnel.wireguard {
            Ok(wg) => wg
                .pins()
                .refused()
                .into_iter()
                .map(|(host, why)| DriftLine {
                    network: "-".into(),
                    kind: "tunnel".into(),
                    object: format!("peer {host}"),
                    detail: format!("host {host} is refused as a WireGuard peer: {why}"),
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        for net in cache.networks.values() {
            if net.encryption != Encryption::Wireguard {
                continue;
            }
            let eps: Vec<_> = cache
                .endpoints_of(net.name.as_str())
                .filter(|e| e.network_id == net.id)
                .collect();
            if !eps.iter().any(|e| e.host == me) {
                continue;
            }
            let peers: BTreeSet<&str> = eps
                .iter()
                .map(|e| e.host.as_str())
                .filter(|h| *h != me && !up.contains(*h))
                .collect();
            for host in peers {
                let why = cache
                    .presence
                    .get(host)
                    .and_then(|h| self.tunnel_status(h))
                    .and_then(|s| s.problem)
                    .unwrap_or_else(|| match &self.tunnel.wireguard {
                        Err(why) => format!("WireGuard is unavailable on this host ({why})"),
                        Ok(_) if cache.presence.contains_key(host) => "no handshake yet".into(),
                        Ok(_) => "its daemon is not live".into(),
                    });
                lines.push(DriftLine {
                    network: net.name.to_string(),
                    kind: "tunnel".into(),
                    object: format!("peer {host}"),
                    detail: format!(
                        "no WireGuard session with {host}, so its endpoints get no traffic: {why}"
                    ),
                });
            }
        }
        lines
    }
}
