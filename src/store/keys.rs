//! The key schema: every key rnet writes is built here, nowhere else.
//!
//! ```text
//! /rnet/v1/networks/<name>                 Network (JSON)            durable
//! /rnet/v1/vnis/<vni>                      network name              durable, makes VNIs unique
//! /rnet/v1/endpoints/<network>/<ip>        Endpoint (JSON)           durable: the allocation itself
//! /rnet/v1/endpoint-ids/<network>/<id>     ip                        durable, makes ids unique
//! /rnet/v1/hosts/<host>                    HostRecord (JSON)         leased: the host's presence
//! /rnet/v1/host-info/<host>                HostRecord (JSON)         durable: where the host is,
//!                                                                    still known once it is gone
//! ```
//! Prefixes end in '/', so `blue` never matches `blue2`.

use std::net::Ipv4Addr;

pub const ROOT: &str = "/rnet/v1/";
pub const NETWORKS: &str = "/rnet/v1/networks/";
pub const VNIS: &str = "/rnet/v1/vnis/";
pub const ENDPOINTS: &str = "/rnet/v1/endpoints/";
pub const ENDPOINT_IDS: &str = "/rnet/v1/endpoint-ids/";
pub const HOSTS: &str = "/rnet/v1/hosts/";
pub const HOST_INFO: &str = "/rnet/v1/host-info/";

pub fn network(name: &str) -> String {
    format!("{NETWORKS}{name}")
}

pub fn vni(vni: u32) -> String {
    format!("{VNIS}{vni}")
}

/// All endpoints of one network.
pub fn endpoints_of(network: &str) -> String {
    format!("{ENDPOINTS}{network}/")
}

pub fn endpoint(network: &str, ip: Ipv4Addr) -> String {
    format!("{ENDPOINTS}{network}/{ip}")
}

pub fn endpoint_id(network: &str, id: &str) -> String {
    format!("{ENDPOINT_IDS}{network}/{id}")
}

pub fn host(id: &str) -> String {
    format!("{HOSTS}{id}")
}

pub fn host_info(id: &str) -> String {
    format!("{HOST_INFO}{id}")
}

/// What a key is, parsed back from the schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key<'a> {
    Network(&'a str),
    Endpoint(&'a str, Ipv4Addr),
    Host(&'a str),
    HostInfo(&'a str),
    /// VNI and id indexes, and anything this version does not know.
    Other,
}

/// Classify a key.
pub fn classify(key: &str) -> Key<'_> {
    if let Some(name) = key.strip_prefix(NETWORKS) {
        return Key::Network(name);
    }
    if let Some(rest) = key.strip_prefix(ENDPOINTS) {
        if let Some((net, ip)) = rest.split_once('/') {
            if let Ok(ip) = ip.parse() {
                return Key::Endpoint(net, ip);
            }
        }
        return Key::Other;
    }
    if let Some(id) = key.strip_prefix(HOSTS) {
        return Key::Host(id);
    }
    if let Some(id) = key.strip_prefix(HOST_INFO) {
        return Key::HostInfo(id);
    }
    Key::Other
}

/// The network name of an endpoint key (`/rnet/v1/endpoints/<network>/<ip>`).
pub fn network_of_endpoint_key(key: &str) -> Option<&str> {
    key.strip_prefix(ENDPOINTS)?.split('/').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_nest_without_prefix_clashes() {
        assert_eq!(
            endpoint("blue", "10.0.0.2".parse().unwrap()),
            "/rnet/v1/endpoints/blue/10.0.0.2"
        );
        assert!(!endpoint("blue2", "10.0.0.2".parse().unwrap()).starts_with(&endpoints_of("blue")));
        assert_eq!(
            network_of_endpoint_key("/rnet/v1/endpoints/blue/10.0.0.2"),
            Some("blue")
        );
        assert_eq!(network_of_endpoint_key("/rnet/v1/hosts/h1"), None);
        assert_eq!(
            classify("/rnet/v1/endpoints/blue/10.0.0.2"),
            Key::Endpoint("blue", "10.0.0.2".parse().unwrap())
        );
        assert_eq!(classify(&host("h1")), Key::Host("h1"));
        assert_eq!(classify(&host_info("h1")), Key::HostInfo("h1"));
        assert_eq!(classify(&network("blue")), Key::Network("blue"));
        assert_eq!(classify(&vni(5)), Key::Other);
    }
}
