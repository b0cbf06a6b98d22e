//! Creating and removing networks: one transaction writes the record and its VNI index
//! (create-if-absent on both), and a removal compares the record it read.

use std::collections::BTreeSet;

use super::{bad_record_error, to_json, Service};
use crate::api::types::{NetworkRequest, RemoveResponse};
use crate::dataplane::Dataplane;
use crate::error::{Error, Result};
use crate::ipam;
use crate::model::Network;
use crate::store::{keys, Compare, Store, TxnOp};
use crate::validate;

impl<S: Store, D: Dataplane> Service<S, D> {
    /// Create a network, or return the existing one if asked again with the same options.
    pub async fn create_network(&self, req: &NetworkRequest) -> Result<Network> {
        if let Some(enc) = req.encryption {
            self.check_encryption(&req.name, enc, "create")?;
        }
        let mut held_vnis = BTreeSet::new();
        for _ in 0..5 {
            let existing = self.networks().await?;
            let net = ipam::plan_network_avoiding(req, &existing, self.max_mtu(), &held_vnis)?;
            if existing.contains(&net) {
                return Ok(net);
            }
            let name = net.name.as_str();
            let txn = self
                .store
                .txn(
                    vec![
                        Compare::Absent(keys::network(name)),
                        Compare::Absent(keys::vni(net.vni.get())),
                    ],
                    vec![
                        TxnOp::Put {
                            key: keys::network(name),
                            value: to_json(&net),
                            lease: None,
                        },
                        TxnOp::Put {
                            key: keys::vni(net.vni.get()),
                            value: name.as_bytes().to_vec(),
                            lease: None,
                        },
                    ],
                )
                .await?;
            if txn.succeeded {
                tracing::info!(network = name, vni = %net.vni, subnet = %net.subnet, "network created");
                return Ok(net);
            }
            // The name's record exists but is not a valid network: say so, do not retry.
            if let Some(Some(kv)) = txn.current.first() {
                if let Err(r) = validate::network(&kv.key, &kv.value) {
                    return Err(bad_record_error(&r));
                }
            }
            // The VNI's index entry exists with no valid network behind it: never pick it
            // again (asked for explicitly, it is a conflict).
            // (Read the networks again first: a create racing this one may have written both
            // keys since `existing` was read.)
            if txn.current.get(1).is_some_and(|c| c.is_some())
                && !self.networks().await?.iter().any(|n| n.vni == net.vni)
            {
                if req.vni.is_some() {
                    return Err(Error::Conflict(format!(
                        "VNI {} is held by an index entry ({}) with no valid network record; remove the entry or choose another VNI",
                        net.vni,
                        keys::vni(net.vni.get())
                    )));
                }
                held_vnis.insert(net.vni.get());
            }
            // Someone else wrote one of the keys in the meantime: plan again against the news.
        }
        Err(Error::Conflict(format!(
            "network {} is being changed concurrently; try again",
            req.name
        )))
    }

    /// Remove a network; with `force`, detach its endpoints first.
    pub async fn remove_network(&self, name: &str, force: bool) -> Result<RemoveResponse> {
        let (net, net_rev) = self.network_at(name).await?;
        let eps = self.versioned_endpoints(Some(name)).await?;
        if !eps.is_empty() && !force {
            let ids: Vec<String> = eps.iter().take(5).map(|e| e.ep.id.to_string()).collect();
            return Err(Error::Conflict(format!(
                "network {name} still has {} endpoint(s) ({}{}); detach them or use --force",
                eps.len(),
                ids.join(", "),
                if eps.len() > 5 { ", ..." } else { "" }
            )));
        }
        let _guard = self.kernel.read().await;
        let mut detached = Vec::new();
        for v in eps {
            self.detach_one(&net, &v).await?;
            detached.push(v.ep);
        }
        let txn = self
            .store
            .txn(
                // Only the network read above: one re-created meanwhile is not removed.
                vec![Compare::ModRevision(keys::network(name), net_rev)],
                vec![
                    TxnOp::Delete {
                        key: keys::network(name),
                    },
                    TxnOp::Delete {
                        key: keys::vni(net.vni.get()),
                    },
                ],
            )
            .await?;
        if !txn.succeeded {
            return Err(Error::Conflict(format!(
                "network {name} was changed or re-created while it was being removed; not removed"
            )));
        }
        self.ensured.lock().expect("poisoned").remove(&net.id);
        self.programmed.lock().await.remove(&net.id);
        self.journal.forget_network(&net.id);
        self.stop_dns(&net.id).await;
        self.dp
            .remove_sandbox(&self.sandbox_spec(&net).netns)
            .await?;
        self.sync_egress().await;
        tracing::info!(network = name, "network removed");
        Ok(RemoveResponse {
            removed: name.to_string(),
            detached,
        })
    }
}
