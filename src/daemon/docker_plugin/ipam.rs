//! The remote IPAM driver's calls (`IpamDriver.*`): pools map to rnet networks, addresses
//! are held as reservation records until an endpoint adopts them.

use std::sync::Arc;

use rand_core::{OsRng, RngCore};

use super::{Plugin, Undo};
use crate::daemon::service::Versioned;
use crate::dataplane::Dataplane;
use crate::error::{Error, Result};
use crate::libnetwork::protocol::{
    ReleaseAddressRequest, ReleasePoolRequest, RequestAddressRequest, RequestAddressResponse,
    RequestPoolRequest, RequestPoolResponse,
};
use crate::libnetwork::translate::{self, Choice, PoolRef};
use crate::store::Store;

impl<S: Store, D: Dataplane> Plugin<S, D> {
    pub(super) async fn request_pool(
        &self,
        req: RequestPoolRequest,
    ) -> Result<RequestPoolResponse> {
        let networks = self.networks_now().await?;
        let pool = translate::plan_pool(&req, &networks)?;
        let id = pool.id();
        let count = self.change_state(|s| s.acquire_pool(&id))?;
        tracing::info!(pool = %id, count, "IPAM pool requested");
        Ok(RequestPoolResponse {
            pool_id: id,
            pool: pool.subnet.to_string(),
            data: Default::default(),
        })
    }

    pub(super) async fn release_pool(&self, req: ReleasePoolRequest) -> Result<serde_json::Value> {
        PoolRef::parse(&req.pool_id)?;
        let left = self.change_state(|s| s.release_pool(&req.pool_id))?;
        tracing::info!(pool = %req.pool_id, left = ?left, "IPAM pool released");
        Ok(serde_json::json!({}))
    }

    /// The rnet network a pool allocates from (created if absent when `create`).
    async fn pool_network(&self, pool: &PoolRef) -> Result<Choice> {
        let bound = self
            .state
            .lock()
            .expect("state poisoned")
            .ipam_bindings(pool.subnet);
        translate::pool_network(pool, &bound, &self.networks_now().await?)
    }

    pub(super) async fn request_address(
        self: Arc<Self>,
        req: RequestAddressRequest,
    ) -> Result<RequestAddressResponse> {
        let pool = PoolRef::parse(&req.pool_id)?;
        let requested = translate::parse_address("address", &req.address)?;
        let choice = self.pool_network(&pool).await?;
        if translate::is_gateway_request(&req.options) {
            let existing = match &choice {
                Choice::Existing(n) => Some(n),
                Choice::Create(_) => None,
            };
            let gw = translate::gateway_for(&pool, requested, existing)?;
            return Ok(RequestAddressResponse {
                address: gw.to_string(),
                data: Default::default(),
            });
        }
        let service = self.service.clone();
        // The reservation's id: random, so concurrent requests never share one.
        let seed = OsRng.next_u64();
        let op = async move {
            let net = match choice {
                Choice::Existing(n) => n,
                Choice::Create(r) => service.create_network(&r).await?,
            };
            service
                .hold_address(&net, translate::reservation_id(seed), requested)
                .await
        };
        let service = self.service.clone();
        let undo: Undo<Versioned> = Box::new(move |v| {
            Box::pin(async move {
                let _ = service.delete_endpoint(&v).await;
            })
        });
        let v = self.bounded("RequestAddress", op, Some(undo)).await?;
        Ok(RequestAddressResponse {
            address: v.ep.ip.to_string(),
            data: Default::default(),
        })
    }

    pub(super) async fn release_address(
        &self,
        req: ReleaseAddressRequest,
    ) -> Result<serde_json::Value> {
        let pool = PoolRef::parse(&req.pool_id)?;
        let Some(ip) = translate::parse_address("address", &req.address)? else {
            return Err(Error::Invalid("ReleaseAddress without an Address".into()));
        };
        let net = match self.pool_network(&pool).await {
            Ok(Choice::Existing(n)) => n,
            _ => return Ok(serde_json::json!({})), // no such network: nothing is held
        };
        if ip == net.gateway {
            return Ok(serde_json::json!({}));
        }
        let service = self.service.clone();
        let op = async move {
            match service.endpoint_at(net.name.as_str(), ip).await? {
                Some(v) if v.ep.host == service.host_id() && translate::is_reservation(&v.ep) => {
                    service.delete_endpoint(&v).await
                }
                Some(v) => {
                    tracing::warn!(ip = %ip, id = %v.ep.id, host = %v.ep.host,
                        "ReleaseAddress for an address Docker's IPAM does not hold here; left alone");
                    Ok(())
                }
                None => Ok(()),
            }
        };
        self.bounded("ReleaseAddress", op, None).await?;
        Ok(serde_json::json!({}))
    }
}
