//! Docker's published ports and `--internal`, as the remote driver receives them (pure).
//!
//! `ProgramExternalConnectivity` carries `com.docker.network.portmap`: a list of
//! `{"Proto": 6|17, "Port": N, "HostIP": "", "HostPort": N, "HostPortEnd": N}`. Docker sends
//! one binding per address family; rnet is IPv4 only, so IPv6 host addresses are skipped.
//! `CreateNetwork` carries `com.docker.network.internal: true` for `docker network create
//! --internal`.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use super::protocol::Options;
use crate::error::Error;
use crate::model::{PortMapping, Proto};

/// The published ports in `ProgramExternalConnectivity`'s options.
pub const PORTMAP_OPTION: &str = "com.docker.network.portmap";
/// `docker network create --internal`.
pub const INTERNAL_OPTION: &str = "com.docker.network.internal";

#[derive(Debug, Deserialize)]
struct Binding {
    #[serde(rename = "Proto", default)]
    proto: i64,
    #[serde(rename = "Port", default)]
    port: i64,
    #[serde(rename = "HostIP", default)]
    host_ip: Option<String>,
    #[serde(rename = "HostPort", default)]
    host_port: i64,
    #[serde(rename = "HostPortEnd", default)]
    host_port_end: i64,
}

/// Whether the network is internal.
pub fn internal(options: &Options) -> bool {
    match options.get(INTERNAL_OPTION) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

/// The port mappings asked for (empty when none), or what is wrong with them.
pub fn port_mappings(options: &Options) -> Result<Vec<PortMapping>, Error> {
    let bindings: Vec<Binding> = match options.get(PORTMAP_OPTION) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| Error::Invalid(format!("option {PORTMAP_OPTION} is malformed: {e}")))?,
    };
    let mut out: Vec<PortMapping> = Vec::new();
    for b in &bindings {
        if let Some(m) = mapping(b)? {
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    Ok(out)
}

fn mapping(b: &Binding) -> Result<Option<PortMapping>, Error> {
    let host_ip = match b.host_ip.as_deref().unwrap_or("") {
        "" | "0.0.0.0" => None,
        ip => match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => Some(v4),
            // rnet networks are IPv4 only: the IPv6 twin of a binding has nothing to reach.
            Ok(IpAddr::V6(_)) => return Ok(None),
            Err(_) => {
                return Err(Error::Invalid(format!(
                    "published port host address {ip:?} is not an IP address"
                )))
            }
        },
    };
    let proto = match b.proto {
        6 => Proto::Tcp,
        17 => Proto::Udp,
        p => {
            return Err(Error::Invalid(format!(
                "published port protocol {p} is not supported: rnet publishes tcp and udp"
            )))
        }
    };
    if b.host_port == 0 {
        return Err(Error::Invalid(format!(
            "port {} is published without a host port; rnet needs one (docker run -p HOST_PORT:{})",
            b.port, b.port
        )));
    }
    if b.host_port_end != 0 && b.host_port_end != b.host_port {
        return Err(Error::Invalid(format!(
            "host port range {}-{} is not supported; publish single ports",
            b.host_port, b.host_port_end
        )));
    }
    let port = |what: &str, p: i64| {
        u32::try_from(p)
            .map_err(|_| Error::Invalid(format!("{what} {p} is out of range 1..=65535")))
    };
    let m = PortMapping {
        host_port: port("host port", b.host_port)?,
        container_port: port("container port", b.port)?,
        proto,
        host_ip,
    };
    m.check().map_err(|e| Error::Invalid(e.0))?;
    Ok(Some(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(v: Value) -> Options {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn docker_port_bindings_become_mappings() {
        let o = opts(json!({PORTMAP_OPTION: [
            {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
            {"Proto": 6, "IP": "", "Port": 80, "HostIP": "::", "HostPort": 8080, "HostPortEnd": 8080},
            {"Proto": 17, "Port": 53, "HostIP": "198.18.0.11", "HostPort": 5353}
        ]}));
        assert_eq!(
            port_mappings(&o).unwrap(),
            vec![
                "8080:80".parse().unwrap(),
                "198.18.0.11:5353:53/udp".parse().unwrap()
            ]
        );
        assert!(port_mappings(&opts(json!({PORTMAP_OPTION: null})))
            .unwrap()
            .is_empty());
        assert!(port_mappings(&Options::new()).unwrap().is_empty());
    }

    #[test]
    fn unsupported_bindings_are_named() {
        let err = |b: Value| {
            port_mappings(&opts(json!({PORTMAP_OPTION: [b]})))
                .unwrap_err()
                .to_string()
        };
        assert!(err(json!({"Proto": 132, "Port": 80, "HostPort": 80})).contains("protocol 132"));
        assert!(err(json!({"Proto": 6, "Port": 80, "HostPort": 0})).contains("without a host port"));
        assert!(
            err(json!({"Proto": 6, "Port": 80, "HostPort": 80, "HostPortEnd": 90}))
                .contains("range")
        );
        assert!(err(json!({"Proto": 6, "Port": 80, "HostPort": 70000})).contains("out of range"));
        assert!(
            err(json!({"Proto": 6, "Port": 80, "HostPort": 1, "HostIP": "x"}))
                .contains("not an IP")
        );
        assert!(port_mappings(&opts(json!({PORTMAP_OPTION: "x"}))).is_err());
    }

    #[test]
    fn internal_is_read() {
        assert!(internal(&opts(json!({INTERNAL_OPTION: true}))));
        assert!(!internal(&opts(json!({INTERNAL_OPTION: false}))));
        assert!(!internal(&Options::new()));
    }
}
