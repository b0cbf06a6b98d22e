//! The key schema: every key rnet writes is built here, nowhere else.
//!
//! ```text
//! /rnet/v1/networks/<name>                 Network (JSON)            durable
//! /rnet/v1/vnis/<vni>                      network name              durable, makes VNIs unique
//! /rnet/v1/endpoints/<network>/<ip>        Endpoint (JSON)           durable: the allocation itself
//! /rnet/v1/endpoint-ids/<network>/<id>     ip                        durable, makes ids unique
//! /rnet/v1/hosts/<host>                    HostRecord (JSON)         leased: the host's presence
//! ```
//! Prefixes end in '/', so `blue` never matches `blue2`.

use std::net::Ipv4Addr;

pub const ROOT: &str = "/rnet/v1/";
pub const NETWORKS: &str = "/rnet/v1/networks/";
pub const VNIS: &str = "/rnet/v1/vnis/";
pub const ENDPOINTS: &str = "/rnet/v1/endpoints/";
pub const ENDPOINT_IDS: &str = "/rnet/v1/endpoint-ids/";
pub const HOSTS: &str = "/rnet/v1/hosts/";

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
    }
}
