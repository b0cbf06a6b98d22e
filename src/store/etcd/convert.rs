//! Mapping etcd's answers to the trait's: errors, revisions, keys and values, and
//! the put options of a lease.

use std::fmt;

use etcd_client::{PutOptions, ResponseHeader};
use tonic::Code;

use super::Inner;
use crate::store::{KeyValue, LeaseId, Revision, StoreError, StoreResult};

/// etcd's message for an unknown lease (`rpctypes.ErrLeaseNotFound`); etcd-client
/// says "lease not found" when opening a keep-alive stream for one.
const LEASE_NOT_FOUND: &str = "lease not found";

impl Inner {
    pub(super) fn unavailable(&self, what: &str, why: impl fmt::Display) -> StoreError {
        StoreError::Unavailable(format!("etcd {}: {what}: {why}", self.label))
    }

    /// Translate an etcd-client error (see the module docs).
    pub(super) fn error(&self, what: &str, lease: LeaseId, err: etcd_client::Error) -> StoreError {
        use etcd_client::Error as E;
        match &err {
            E::GRpcStatus(status) if status.message().contains(LEASE_NOT_FOUND) => {
                StoreError::LeaseNotFound(lease)
            }
            E::GRpcStatus(status) if is_unavailable(status) => self.unavailable(what, &err),
            E::LeaseKeepAliveError(msg) if msg == LEASE_NOT_FOUND => {
                StoreError::LeaseNotFound(lease)
            }
            E::TransportError(_)
            | E::IoError(_)
            | E::WatchError(_)
            | E::LeaseKeepAliveError(_)
            | E::EndpointError(_) => self.unavailable(what, &err),
            _ => StoreError::Backend(format!("etcd {}: {what}: {err}", self.label)),
        }
    }
}

/// Whether a gRPC status means "etcd cannot be reached or cannot answer now": the
/// codes etcd and tonic use for that, or an `Unknown` status made on this side from
/// a broken connection (it carries the transport error as its source; one sent by
/// etcd has none).
fn is_unavailable(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => true,
        Code::Unknown => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

pub(super) fn revision_of(header: Option<&ResponseHeader>) -> StoreResult<Revision> {
    header
        .map(ResponseHeader::revision)
        .ok_or_else(|| StoreError::Backend("etcd answered without a response header".into()))
}

pub(super) fn key_value(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

pub(super) fn put_options(lease: LeaseId) -> Option<PutOptions> {
    (lease != 0).then(|| PutOptions::new().with_lease(lease))
}
