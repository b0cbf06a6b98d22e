//! The endpoints: parsing rnetd's store flag (`etcd://`, `http://` or `https://` and a
//! list of "host:port") and checking each endpoint.

use std::net::Ipv6Addr;

use super::EtcdStore;
use crate::store::{StoreError, StoreResult};

/// The scheme of rnetd's `--store` flag for etcd over plain HTTP (the endpoints are
/// kept bare, as "host:port").
const URL_SCHEME: &str = "etcd://";
/// Plain HTTP, spelled out (endpoints keep the scheme).
pub(super) const HTTP: &str = "http://";
/// TLS (endpoints keep the scheme).
pub(super) const HTTPS: &str = "https://";

impl EtcdStore {
    /// The endpoints of rnetd's store flag: `etcd://HOST:PORT[,HOST:PORT...]` or
    /// `http://…` (plain), or `https://HOST:PORT[,HOST:PORT...]` (TLS). Endpoints of
    /// an `http://` or `https://` URL carry that scheme; those of `etcd://` are bare.
    ///
    /// `HOST` is a name, an IPv4 address or a bracketed IPv6 address.
    ///
    /// # Errors
    ///
    /// `StoreError::Backend` quoting the URL and naming the problem (wrong scheme, no
    /// endpoint, an endpoint without host or port, a bad port, a path).
    pub fn parse_url(url: &str) -> StoreResult<Vec<String>> {
        let bad = |why: String| {
            StoreError::Backend(format!(
                "invalid etcd URL {url:?}: {why} (expected {URL_SCHEME}HOST:PORT[,HOST:PORT...], or {HTTPS}HOST:PORT[,...] for TLS)"
            ))
        };
        let (scheme, list) = [(URL_SCHEME, ""), (HTTP, HTTP), (HTTPS, HTTPS)]
            .into_iter()
            .find_map(|(prefix, keep)| url.strip_prefix(prefix).map(|rest| (keep, rest)))
            .ok_or_else(|| {
                bad(format!(
                    "it does not start with {URL_SCHEME}, {HTTP} or {HTTPS}"
                ))
            })?;
        if list.is_empty() {
            return Err(bad("it names no endpoint".into()));
        }
        list.split(',')
            .map(|endpoint| {
                check_bare(endpoint)
                    .map(|e| format!("{scheme}{e}"))
                    .map_err(bad)
            })
            .collect()
    }
}

/// Whether an endpoint (as `connect` takes it) uses TLS.
pub(super) fn is_https(endpoint: &str) -> bool {
    endpoint.starts_with(HTTPS)
}

/// An endpoint's "host:port", without its scheme.
pub(super) fn host_port(endpoint: &str) -> &str {
    endpoint
        .strip_prefix(HTTPS)
        .or_else(|| endpoint.strip_prefix(HTTP))
        .unwrap_or(endpoint)
}

/// Check one "host:port" (optionally after `http://` or `https://`); the error names
/// the endpoint and the problem.
pub(super) fn check_endpoint(full: &str) -> Result<&str, String> {
    check_bare(host_port(full)).map(|_| full)
}

/// Check one "host:port".
fn check_bare(endpoint: &str) -> Result<&str, String> {
    if endpoint.is_empty() {
        return Err("\"\" is empty".into());
    }
    if let Some(c) = endpoint
        .chars()
        .find(|c| "/@?#".contains(*c) || c.is_whitespace())
    {
        return Err(format!("{endpoint:?} must be HOST:PORT, not contain {c:?}"));
    }
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Err(format!("{endpoint:?} has no port"));
    };
    check_host(endpoint, host)?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(endpoint),
        _ => Err(format!("{endpoint:?} has an invalid port {port:?}")),
    }
}

fn check_host(endpoint: &str, host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err(format!("{endpoint:?} has no host"));
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<Ipv6Addr>()
            .map(drop)
            .map_err(|_| format!("{endpoint:?} has an invalid IPv6 address {v6:?}"));
    }
    if host.contains([':', '[', ']']) {
        return Err(format!(
            "{endpoint:?}: an IPv6 address must be in brackets, as in [::1]:2379"
        ));
    }
    Ok(())
}
