//! The endpoint steps of Docker's libnetwork driver (`daemon::docker_plugin`), each its own call.
//!
//! Docker splits an attach in steps, each its own call: the IPAM driver hands out an address
//! before any container exists (`RequestAddress`), the network driver is then told about the
//! endpoint (`CreateEndpoint`), creates the interface (`Join`), and Docker itself moves that
//! interface into the container. So an endpoint record here goes through states an `rnet
//! attach` never shows:
//!
//! ```text
//! held     id docker-ipam-…, no netns   RequestAddress (create-if-absent on the address key)
//! created  id = Docker's endpoint id    CreateEndpoint (the id index moves with it)
//! joined   netns = Docker's SandboxKey  Join (record first, then the veth, under the kernel lock)
//! created                               Leave (record first, then the veth goes)
//! held / gone                           DeleteEndpoint (held again if Docker's IPAM is rnet's)
//! gone                                  ReleaseAddress
//! ```
//!
//! A record without a netns has nothing in the kernel (the reconcile leaves it alone). Every
//! change is a compare-and-swap on the record's revision, so no two writers interleave.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnetwork::Ipv4Network;

use super::{now_secs, to_json, Service, Versioned};
use crate::dataplane::spec::EndpointSpec;
use crate::dataplane::Dataplane;
use crate::error::{Error, Result};
use crate::ipam;
use crate::model::{Endpoint, EndpointId, Mac, Network};
use crate::netns::{NetNs, Opener};
use crate::store::{keys, Compare, Store, TxnOp};

/// The record of an endpoint that is not (or no longer) in a container.
fn unjoined(e: &Endpoint) -> Endpoint {
    Endpoint {
        netns: String::new(),
        netns_inode: 0,
        ports: Vec::new(),
        ..e.clone()
    }
}

impl<S: Store, D: Dataplane> Service<S, D> {
    /// Take an address for Docker with no container yet: `requested`, or the lowest free one,
    /// by the same create-if-absent as every attach, so no two hosts hold one address.
    pub async fn hold_address(
        &self,
        net: &Network,
        id: EndpointId,
        requested: Option<Ipv4Addr>,
    ) -> Result<Versioned> {
        if let Some(ip) = requested {
            ipam::check_requested(net, ip)?;
        }
        let template = Endpoint {
            network: net.name.clone(),
            network_id: net.id.clone(),
            id,
            ip: Ipv4Network::new(net.gateway, net.subnet.prefix()).expect("valid prefix"),
            mac: Mac([0; 6]),
            host: self.cfg.host_id.clone(),
            ifname: "eth0".parse().expect("valid name"),
            netns: String::new(),
            netns_inode: 0,
            host_ifname: String::new(),
            created: now_secs(),
            origin: crate::model::Origin::Docker,
            owner: None,
            mtu: None,
            name: None,
            aliases: Vec::new(),
            ports: Vec::new(),
        };
        let held = self.allocate(net, template, requested, None).await?;
        tracing::info!(network = %net.name, id = %held.ep.id, ip = %held.ep.ip, "address held for Docker");
        Ok(held)
    }

    /// Rewrite an endpoint record as `change` says, compare-and-swap on its revision; the id
    /// index moves with the id. When the record changed meanwhile but is still the same
    /// endpoint, try again on the news.
    pub async fn update_endpoint(
        &self,
        cur: Versioned,
        change: impl Fn(&Endpoint) -> Endpoint,
    ) -> Result<Versioned> {
        let mut cur = cur;
        for _ in 0..3 {
            let new = change(&cur.ep);
            if new == cur.ep {
                return Ok(cur);
            }
            let (net, ip) = (cur.ep.network.as_str(), cur.ep.ip.ip());
            let key = keys::endpoint(net, ip);
            let mut compares = vec![if cur.rev > 0 {
                Compare::ModRevision(key.clone(), cur.rev)
            } else {
                Compare::Value(key.clone(), to_json(&cur.ep))
            }];
            let mut ops = vec![TxnOp::Put {
                key,
                value: to_json(&new),
                lease: None,
            }];
            if new.id != cur.ep.id {
                compares.push(Compare::Absent(keys::endpoint_id(net, new.id.as_str())));
                ops.push(TxnOp::Delete {
                    key: keys::endpoint_id(net, cur.ep.id.as_str()),
                });
                ops.push(TxnOp::Put {
                    key: keys::endpoint_id(net, new.id.as_str()),
                    value: ip.to_string().into_bytes(),
                    lease: None,
                });
            }
            let txn = self.store.txn(compares, ops).await?;
            if txn.succeeded {
                return Ok(Versioned {
                    ep: new,
                    rev: txn.revision,
                });
            }
            if txn.current.get(1).is_some_and(|c| c.is_some()) {
                return Err(Error::Conflict(format!(
                    "endpoint id {} is already in use on network {net}",
                    new.id
                )));
            }
            let Some(Some(kv)) = txn.current.first() else {
                return Err(Error::NotFound(format!(
                    "the record of endpoint {} ({ip} on {net}) is gone",
                    cur.ep.id
                )));
            };
            let now = crate::validate::endpoint_alone(&kv.key, &kv.value)
                .map_err(|r| self.reject(kv.mod_revision, r))?;
            if now.id != cur.ep.id || now.host != cur.ep.host {
                return Err(Error::Conflict(format!(
                    "address {ip} on {net} now belongs to endpoint {} on host {}",
                    now.id, now.host
                )));
            }
            cur = Versioned {
                ep: now,
                rev: kv.mod_revision,
            };
        }
        Err(Error::Conflict(format!(
            "the record of endpoint {} is being changed concurrently; try again",
            cur.ep.id
        )))
    }

    /// Delete an endpoint record (and its id index) if it is still the version given.
    pub async fn delete_endpoint(&self, cur: &Versioned) -> Result<()> {
        let (net, ip) = (cur.ep.network.as_str(), cur.ep.ip.ip());
        let key = keys::endpoint(net, ip);
        let compare = if cur.rev > 0 {
            Compare::ModRevision(key.clone(), cur.rev)
        } else {
            Compare::Value(key.clone(), to_json(&cur.ep))
        };
        let txn = self
            .store
            .txn(
                vec![compare],
                vec![
                    TxnOp::Delete { key },
                    TxnOp::Delete {
                        key: keys::endpoint_id(net, cur.ep.id.as_str()),
                    },
                ],
            )
            .await?;
        if !txn.succeeded && txn.current.first().is_some_and(|c| c.is_some()) {
            return Err(Error::Conflict(format!(
                "address {ip} on {net} changed meanwhile; not released"
            )));
        }
        tracing::info!(network = net, id = %cur.ep.id, ip = %cur.ep.ip, "Docker address released");
        Ok(())
    }

    /// Docker's Join: record the container's namespace, then build the veth pair with its
    /// workload end (`peer`) left in this daemon's namespace for Docker to move.
    pub async fn docker_join(
        &self,
        net: &Network,
        cur: Versioned,
        sandbox_key: &str,
        peer: &str,
    ) -> Result<Versioned> {
        let inode = NetNs::open_untrusted(Path::new(sandbox_key), Opener::Trusted)
            .await
            .map(|n| n.inode())
            .unwrap_or(0);
        let _guard = self.kernel.read().await;
        self.ensure_sandbox(net).await?;
        let joined = self
            .update_endpoint(cur, |e| Endpoint {
                netns: sandbox_key.to_string(),
                netns_inode: inode,
                ..e.clone()
            })
            .await?;
        let spec = EndpointSpec::for_endpoint(net, &joined.ep);
        if let Err(e) = self
            .dp
            .attach_for_move(&self.sandbox_spec(net), &spec, peer)
            .await
        {
            if let Err(undo) = self.update_endpoint(joined, unjoined).await {
                tracing::warn!(error = %undo, "undoing a failed Join's record");
            }
            return Err(e.into());
        }
        self.journal_record(&joined.ep);
        tracing::info!(network = %net.name, ip = %joined.ep.ip, peer, "joined for Docker");
        Ok(joined)
    }

    /// Docker's ProgramExternalConnectivity (ports given) and RevokeExternalConnectivity (none):
    /// the endpoint's record says which ports it publishes, then the NAT table follows.
    pub async fn docker_publish(
        &self,
        net: &Network,
        cur: Versioned,
        ports: Vec<crate::model::PortMapping>,
    ) -> Result<Versioned> {
        if cur.ep.ports == ports {
            return Ok(cur);
        }
        let held = self
            .check_ports(net, &ports, Some(cur.ep.id.as_str()))
            .await?;
        let _guard = self.kernel.read().await;
        let done = self
            .update_endpoint(cur, |e| Endpoint {
                ports: ports.clone(),
                ..e.clone()
            })
            .await?;
        drop(held);
        // Docker hears of a failure (and undoes the container's start); the next reconcile
        // would retry it anyway.
        self.egress_pass(true, None).await?;
        tracing::info!(network = %net.name, id = %done.ep.id, ports = done.ep.ports.len(), "published ports for Docker");
        Ok(done)
    }

    /// Docker's Leave: the record first (so a reconcile never rebuilds what is going), then
    /// the veth pair, whose deletion the kernel finishes in the background (Docker waits for
    /// Leave while a container stops).
    pub async fn docker_leave(&self, net: &Network, cur: Versioned) -> Result<Versioned> {
        let _guard = self.kernel.read().await;
        let left = self.update_endpoint(cur, unjoined).await?;
        self.journal.forget(&left.ep);
        self.dp
            .detach_in_background(&self.sandbox_spec(net).netns, &left.ep.host_ifname)
            .await?;
        Ok(left)
    }

    /// Docker's DeleteEndpoint: the veth goes (if Leave did not take it); the address is held
    /// again under `hold` (rnet's IPAM releases it later) or released now.
    pub async fn docker_delete_endpoint(
        &self,
        net: &Network,
        cur: Versioned,
        hold: Option<EndpointId>,
    ) -> Result<()> {
        let _guard = self.kernel.read().await;
        self.journal.forget(&cur.ep);
        if !cur.ep.netns.is_empty() {
            // Docker never sent Leave (or it failed): the veth is still there.
            self.dp
                .detach(&self.sandbox_spec(net).netns, &cur.ep.host_ifname)
                .await?;
        }
        match hold {
            Some(id) => {
                self.update_endpoint(cur, |e| Endpoint {
                    id: id.clone(),
                    ..unjoined(e)
                })
                .await?;
            }
            None => self.delete_endpoint(&cur).await?,
        }
        Ok(())
    }
}
