//! Addresses: taken by create-if-absent on the address key (and the endpoint id's), so no
//! two callers anywhere get one; released only if the record is still the version read.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::{to_json, Service, Versioned};
use crate::dataplane::{spec, Dataplane};
use crate::error::{Error, Result};
use crate::ipam;
use crate::model::{fnv1a, Endpoint, Mac, Network};
use crate::store::{keys, Compare, Revision, Staged, Store, StoreResult, TxnOp};

/// Resolves once an allocation is on disk.
pub(super) type Durable = futures::future::BoxFuture<'static, StoreResult<()>>;

/// Lost races an allocation tolerates before giving up (each is a store round trip).
pub(super) const MAX_ALLOCATION_ATTEMPTS: usize = 256;

impl<S: Store, D: Dataplane> Service<S, D> {
    /// Take an address: the requested one, or the lowest free one, by create-if-absent on
    /// its key (and on the endpoint id's key), so no two callers anywhere get the same.
    /// Returns the record with the revision it was written at (what a release compares).
    /// With `net_rev`, the network's record must still be the one read at that revision.
    pub(super) async fn allocate(
        &self,
        net: &Network,
        ep: Endpoint,
        requested: Option<Ipv4Addr>,
        net_rev: Option<Revision>,
    ) -> Result<Versioned> {
        let (held, durable) = self.allocate_staged(net, ep, requested, net_rev).await?;
        durable.await?;
        Ok(held)
    }

    /// As `allocate`, returning once the address is taken (no other caller can get it),
    /// with what resolves once that is on disk: nothing may report the address as held
    /// before it has resolved (see `Store::txn_staged`).
    pub(super) async fn allocate_staged(
        &self,
        net: &Network,
        mut ep: Endpoint,
        requested: Option<Ipv4Addr>,
        net_rev: Option<Revision>,
    ) -> Result<(Versioned, Durable)> {
        let name = net.name.as_str();
        // The addresses are the keys: no need to decode the records.
        let taken: BTreeSet<Ipv4Addr> = match requested {
            Some(_) => BTreeSet::new(),
            None => {
                let (kvs, _) = self.store.list(&keys::endpoints_of(name)).await?;
                kvs.iter()
                    .filter_map(|kv| match keys::classify(&kv.key) {
                        keys::Key::Endpoint(_, ip) => Some(ip),
                        _ => None,
                    })
                    .collect()
            }
        };
        let seed = fnv1a(format!("{}/{}", self.cfg.host_id, ep.id).as_bytes());
        // Candidates are computed as they are tried, never listed: a /8 has 16.7 million.
        let candidates: Box<dyn Iterator<Item = Ipv4Addr> + Send> = match requested {
            Some(ip) => Box::new(std::iter::once(ip)),
            None => Box::new(ipam::candidates(net, &taken, seed)),
        };
        let requested_mac = (!ep.mac.is_zero()).then_some(ep.mac);
        for (attempt, ip) in candidates.enumerate() {
            if attempt >= MAX_ALLOCATION_ATTEMPTS {
                return Err(Error::Conflict(format!(
                    "network {name}: lost the race for {attempt} free addresses in a row; try again"
                )));
            }
            ep.ip = Ipv4Network::new(ip, net.subnet.prefix()).expect("valid prefix");
            ep.mac = requested_mac.unwrap_or_else(|| Mac::from_ipv4(ip));
            ep.host_ifname = spec::host_ifname(ip);
            let Staged {
                result: txn,
                durable,
            } = self
                .store
                .txn_staged(
                    [
                        Compare::Absent(keys::endpoint(name, ip)),
                        Compare::Absent(keys::endpoint_id(name, ep.id.as_str())),
                    ]
                    .into_iter()
                    .chain(net_rev.map(|rev| Compare::ModRevision(keys::network(name), rev)))
                    .collect(),
                    vec![
                        TxnOp::Put {
                            key: keys::endpoint(name, ip),
                            value: to_json(&ep),
                            lease: None,
                        },
                        TxnOp::Put {
                            key: keys::endpoint_id(name, ep.id.as_str()),
                            value: ip.to_string().into_bytes(),
                            lease: None,
                        },
                    ],
                )
                .await?;
            if txn.succeeded {
                let held = Versioned {
                    ep,
                    rev: txn.revision,
                };
                return Ok((held, durable));
            }
            // What a lost race read must be on disk before it is acted on.
            durable.await?;
            if net_rev.is_some()
                && txn
                    .current
                    .get(2)
                    .is_some_and(|c| c.as_ref().map(|kv| kv.mod_revision) != net_rev)
            {
                return Err(Error::Conflict(format!(
                    "network {name} was removed or changed while attaching; try again"
                )));
            }
            if txn.current.get(1).is_some_and(|c| c.is_some()) {
                return Err(Error::Conflict(format!(
                    "endpoint id {} is already in use on network {name}",
                    ep.id
                )));
            }
            if requested.is_some() {
                return Err(Error::Conflict(format!(
                    "address {ip} is already in use on network {name}"
                )));
            }
        }
        let used = self.endpoints(Some(name)).await?.len();
        Err(Error::Exhausted(format!(
            "network {name} has no free address: {used} of {} in use in subnet {}",
            ipam::capacity(net),
            net.subnet
        )))
    }

    /// Delete an endpoint's records if they are still the version read (rollback, detach,
    /// gc, rm --force): a release that comes late must never free a newer allocation of the
    /// same address. Returns whether it deleted them.
    pub(super) async fn release(&self, v: &Versioned) -> bool {
        let ep = &v.ep;
        let name = ep.network.as_str();
        let key = keys::endpoint(name, ep.ip.ip());
        let ops = vec![
            TxnOp::Delete { key: key.clone() },
            TxnOp::Delete {
                key: keys::endpoint_id(name, ep.id.as_str()),
            },
        ];
        match self
            .store
            .txn(vec![Compare::ModRevision(key, v.rev)], ops)
            .await
        {
            Ok(txn) if txn.succeeded => true,
            Ok(_) => {
                tracing::warn!(id = %ep.id, ip = %ep.ip, "endpoint record changed since it was read; not released");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, id = %ep.id, "releasing endpoint records failed");
                false
            }
        }
    }
}
