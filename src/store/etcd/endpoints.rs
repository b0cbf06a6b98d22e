//! The endpoints: parsing rnetd's `etcd://` store flag and checking each "host:port".

use std::net::Ipv6Addr;

use super::EtcdStore;
use crate::store::{StoreError, StoreResult};

/// The scheme of rnetd's `--store` flag for etcd.
const URL_SCHEME: &str = "etcd://";

impl EtcdStore {
    /// The endpoints of rnetd's store flag `etcd://HOST:PORT[,HOST:PORT...]`.
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
                "invalid etcd URL {url:?}: {why} (expected {URL_SCHEME}HOST:PORT[,HOST:PORT...])"
            ))
        };
        let Some(list) = url.strip_prefix(URL_SCHEME) else {
            return Err(bad(format!("it does not start with {URL_SCHEME}")));
        };
        if list.is_empty() {
            return Err(bad("it names no endpoint".into()));
        }
        list.split(',')
            .map(|endpoint| check_endpoint(endpoint).map(str::to_string).map_err(bad))
            .collect()
    }
}

/// Check one "host:port"; the error names the endpoint and the problem.
pub(super) fn check_endpoint(endpoint: &str) -> Result<&str, String> {
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
