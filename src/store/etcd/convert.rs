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
/// etcd's message for a wrong user name or password (`rpctypes.ErrAuthFailed`).
const AUTH_FAILED: &str = "authentication failed";

impl Inner {
    pub(super) fn unavailable(&self, what: &str, why: impl fmt::Display) -> StoreError {
        StoreError::Unavailable(format!("etcd {}: {what}: {why}", self.label))
    }

    /// Translate an etcd-client error (see the module docs).
    pub(super) fn error(&self, what: &str, lease: LeaseId, err: etcd_client::Error) -> StoreError {
        use etcd_client::Error as E;
        let detail = detail(&err);
        if let Some(hint) = self.tls_problem(&detail) {
            return StoreError::Backend(format!("etcd {}: {what}: {hint} ({detail})", self.label));
        }
        match &err {
            E::GRpcStatus(status) if status.message().contains(LEASE_NOT_FOUND) => {
                StoreError::LeaseNotFound(lease)
            }
            E::GRpcStatus(status) if is_unavailable(status) => self.unavailable(what, &detail),
            E::GRpcStatus(status) if status.message().contains(AUTH_FAILED) => {
                let user = self.user_name().unwrap_or("(none)");
                StoreError::Backend(format!(
                    "etcd {}: {what}: etcd refused user {user:?}: wrong user name or password ({})",
                    self.label,
                    status.message()
                ))
            }
            E::GRpcStatus(status) if status.code() == Code::PermissionDenied => {
                StoreError::Backend(format!(
                    "etcd {}: {what}: permission denied to {} ({})",
                    self.label,
                    self.identity(),
                    status.message()
                ))
            }
            E::LeaseKeepAliveError(msg) if msg == LEASE_NOT_FOUND => {
                StoreError::LeaseNotFound(lease)
            }
            E::TransportError(_)
            | E::IoError(_)
            | E::WatchError(_)
            | E::LeaseKeepAliveError(_)
            | E::EndpointError(_) => self.unavailable(what, &detail),
            _ => StoreError::Backend(format!("etcd {}: {what}: {detail}", self.label)),
        }
    }

    /// What a TLS failure in `detail` means and what to do, if it is one. These are
    /// not "etcd is unavailable": waiting does not fix them.
    fn tls_problem(&self, detail: &str) -> Option<String> {
        let has = |s: &str| detail.contains(s);
        if has("UnknownIssuer") || has("BadSignature") {
            let ca = match &self.security.ca_cert {
                Some(ca) => format!("the CA in --etcd-cacert {} did not sign it", ca.display()),
                None => "no --etcd-cacert was given and no system root signed it (a self-made CA must be given with --etcd-cacert)".into(),
            };
            return Some(format!("etcd's certificate is not trusted: {ca}"));
        }
        if has("NotValidForName") {
            return Some(
                "etcd's certificate does not name the host or address in --store (its subjectAltName must)".into(),
            );
        }
        if has("Expired") || has("NotValidYet") {
            return Some("etcd's certificate is expired or not valid yet".into());
        }
        if has("CertificateRequired") || has("certificate required") {
            return Some(
                "etcd requires a client certificate (--client-cert-auth): give --etcd-cert and --etcd-key".into(),
            );
        }
        if has("BadCertificate") || has("UnknownCA") || has("bad certificate") {
            return Some(
                "etcd refused this client's certificate: --etcd-cert must be signed by the CA etcd trusts (its --trusted-ca-file)".into(),
            );
        }
        if has("InvalidContentType") || has("corrupt message") || has("InvalidMessage") {
            return Some(
                "etcd does not speak TLS there: use http:// (or etcd://) in --store, without TLS files".into(),
            );
        }
        None
    }

    fn user_name(&self) -> Option<&str> {
        self.security.user.as_ref().map(|u| u.name.as_str())
    }

    /// Who this client is to etcd, for a permission error.
    fn identity(&self) -> String {
        match (self.user_name(), &self.security.cert) {
            (Some(user), _) => format!("user {user:?}"),
            (None, Some(cert)) => {
                format!("the user named by the common name of {}", cert.display())
            }
            (None, None) => "this client".into(),
        }
    }
}

/// The error with its chain of causes: etcd-client's transport errors say only
/// "transport error" and keep the reason (a TLS alert, a refused connection) in
/// their sources.
pub(super) fn detail(err: &etcd_client::Error) -> String {
    use etcd_client::Error as E;
    let mut out = err.to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = match err {
        E::TransportError(e) => std::error::Error::source(e),
        E::GRpcStatus(s) => std::error::Error::source(s),
        _ => None,
    };
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
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
