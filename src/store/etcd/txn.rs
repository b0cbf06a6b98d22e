//! Transactions: the trait's compares and writes as one etcd `Txn`, the current
//! values of a failed one, and which lease of a refused one was missing.

use etcd_client::{CompareOp, LeaseTimeToLiveOptions, Txn, TxnOpResponse};

use super::convert::{key_value, put_options};
use super::EtcdStore;
use crate::store::{Compare, KeyValue, LeaseId, StoreError, StoreResult, TxnOp};

fn compare_key(cmp: &Compare) -> &str {
    let (Compare::Absent(key) | Compare::ModRevision(key, _) | Compare::Value(key, _)) = cmp;
    key
}

/// The etcd compares equivalent to one trait compare (see the module docs).
pub(super) fn etcd_compares(cmp: &Compare) -> Vec<etcd_client::Compare> {
    use etcd_client::Compare as C;
    match cmp {
        Compare::Absent(key) => vec![C::create_revision(key.as_str(), CompareOp::Equal, 0)],
        Compare::ModRevision(key, rev) if *rev > 0 => {
            vec![C::mod_revision(key.as_str(), CompareOp::Equal, *rev)]
        }
        Compare::ModRevision(key, rev) => vec![
            C::create_revision(key.as_str(), CompareOp::Greater, 0),
            C::mod_revision(key.as_str(), CompareOp::Equal, *rev),
        ],
        Compare::Value(key, value) => {
            vec![C::value(key.as_str(), CompareOp::Equal, value.clone())]
        }
    }
}

fn etcd_op(op: TxnOp) -> etcd_client::TxnOp {
    match op {
        TxnOp::Put { key, value, lease } => {
            etcd_client::TxnOp::put(key, value, put_options(lease.unwrap_or(0)))
        }
        TxnOp::Delete { key } => etcd_client::TxnOp::delete(key, None),
    }
}

pub(super) fn etcd_txn(compares: &[Compare], ops: Vec<TxnOp>) -> Txn {
    let when: Vec<_> = compares.iter().flat_map(etcd_compares).collect();
    let reads: Vec<_> = compares
        .iter()
        .map(|c| etcd_client::TxnOp::get(compare_key(c), None))
        .collect();
    Txn::new()
        .when(when)
        .and_then(ops.into_iter().map(etcd_op).collect::<Vec<_>>())
        .or_else(reads)
}

/// The current value of each compared key, from the failure branch's reads.
pub(super) fn current_values(
    responses: Vec<TxnOpResponse>,
    expected: usize,
) -> StoreResult<Vec<Option<KeyValue>>> {
    if responses.len() != expected {
        return Err(StoreError::Backend(format!(
            "etcd txn failure branch answered {} reads, expected {expected}",
            responses.len()
        )));
    }
    responses
        .into_iter()
        .map(|r| match r {
            TxnOpResponse::Get(get) => Ok(get.kvs().first().map(key_value)),
            other => Err(StoreError::Backend(format!(
                "etcd txn failure branch answered {other:?} to a read"
            ))),
        })
        .collect()
}

/// The distinct leases the puts of `ops` attach keys to, in order.
pub(super) fn leases_of(ops: &[TxnOp]) -> Vec<LeaseId> {
    let mut leases = Vec::new();
    for op in ops {
        if let TxnOp::Put {
            lease: Some(id), ..
        } = op
        {
            if *id != 0 && !leases.contains(id) {
                leases.push(*id);
            }
        }
    }
    leases
}

impl EtcdStore {
    /// etcd does not say which lease of a txn was missing: with several, ask.
    pub(super) async fn missing_lease(&self, leases: &[LeaseId]) -> LeaseId {
        for &id in leases.iter().take(leases.len().saturating_sub(1)) {
            let what = format!("looking up lease {id:#x}");
            let ttl = self
                .call(&what, id, move |mut c| async move {
                    c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new()))
                        .await
                })
                .await;
            // etcd answers TTL -1 for an unknown lease.
            if matches!(ttl, Ok(ref r) if r.ttl() < 0)
                || matches!(ttl, Err(StoreError::LeaseNotFound(_)))
            {
                return id;
            }
        }
        leases.last().copied().unwrap_or(0)
    }
}
