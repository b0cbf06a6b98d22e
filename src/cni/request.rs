//! The request a runtime makes: `CNI_*` variables and the configuration, checked and turned
//! into what rnetd is asked for (network, address, MAC, ports); and the one API call.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::spec::{self, code, CniError, NetConf, Version};
use super::CALL_TIMEOUT;
use crate::api::{Client, ClientError, DEFAULT_SOCKET};
use crate::model::{IfName, Mac, NetworkName};

/// The parsed request: environment and configuration, checked.
pub(super) struct Request<'a> {
    pub(super) env: &'a HashMap<String, String>,
    pub(super) conf: NetConf,
    pub(super) version: Version,
    pub(super) network: String,
    pub(super) client: Client,
}

impl Request<'_> {
    pub(super) fn var(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A required variable.
    pub(super) fn need(&self, name: &str) -> Result<&str, CniError> {
        self.var(name)
            .ok_or_else(|| CniError::new(code::INVALID_ENV, format!("{name} is not set")))
    }

    pub(super) fn container_id(&self) -> Result<&str, CniError> {
        let id = self.need("CNI_CONTAINERID")?;
        if !spec::valid_name(id) {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_CONTAINERID {id:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"),
            ));
        }
        Ok(id)
    }

    pub(super) fn ifname(&self) -> Result<&str, CniError> {
        let name = self.need("CNI_IFNAME")?;
        name.parse::<IfName>()
            .map_err(|e| CniError::new(code::INVALID_ENV, format!("CNI_IFNAME: {e}")))?;
        Ok(name)
    }

    pub(super) fn netns(&self) -> Result<&str, CniError> {
        let path = self.need("CNI_NETNS")?;
        if !Path::new(path).exists() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_NETNS {path} does not exist"),
            ));
        }
        Ok(path)
    }

    pub(super) fn require_version(&self, min: Version, what: &str) -> Result<(), CniError> {
        if self.version < min {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "config version {} does not allow {what} (needs {min} or later)",
                    self.version
                ),
            ));
        }
        Ok(())
    }

    /// One API call on a current-thread runtime made for it.
    pub(super) fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| ClientError::Protocol {
                socket: self.client.socket().to_path_buf(),
                detail: format!("starting the I/O runtime: {e}"),
            })?;
        rt.block_on(async {
            tokio::time::timeout(CALL_TIMEOUT, self.client.call(method, path, body))
                .await
                .unwrap_or_else(|_| {
                    Err(ClientError::Protocol {
                        socket: self.client.socket().to_path_buf(),
                        detail: format!("no answer within {CALL_TIMEOUT:?}"),
                    })
                })
        })
    }
}

/// Decode and check the configuration; pick the network and the socket.
pub(super) fn parse_request<'a>(
    env: &'a HashMap<String, String>,
    input: &[u8],
) -> Result<Request<'a>, CniError> {
    let conf: NetConf = serde_json::from_slice(input).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("decoding the network configuration: {e}"),
        )
    })?;
    let version = Version::parse(&conf.cni_version).ok_or_else(|| {
        CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "CNI version {:?} is not supported; rnet-cni supports {}",
                conf.cni_version,
                spec::SUPPORTED_VERSIONS.join(", ")
            ),
        )
    })?;
    let invalid = |msg: String| CniError::new(code::INVALID_CONFIG, msg);
    if !spec::valid_name(&conf.name) {
        return Err(invalid(format!(
            "network configuration name {:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$",
            conf.name
        )));
    }
    let network = conf.network.clone().unwrap_or_else(|| conf.name.clone());
    network
        .parse::<NetworkName>()
        .map_err(|e| invalid(format!("rnet network: {e}")))?;
    if let Some(mtu) = conf.mtu {
        if mtu < crate::ipam::MIN_MTU {
            return Err(invalid(format!(
                "mtu {mtu} is below the minimum {}",
                crate::ipam::MIN_MTU
            )));
        }
    }
    if conf.ipam.is_some() {
        return Err(invalid(
            "rnet-cni allocates addresses through rnetd; remove the ipam section".into(),
        ));
    }
    let socket = conf
        .socket
        .clone()
        .or_else(|| env.get("RNET_SOCKET").filter(|s| !s.is_empty()).cloned())
        .unwrap_or_else(|| DEFAULT_SOCKET.to_string());
    Ok(Request {
        env,
        version,
        network,
        client: Client::new(socket),
        conf,
    })
}

/// What the runtime asks for beyond the configuration: an address and a MAC, from (first
/// found) `runtimeConfig`, `args.cni`, `CNI_ARGS`.
pub(super) fn requested(req: &Request) -> Result<(Option<String>, Option<String>), CniError> {
    let args = spec::parse_cni_args(req.var("CNI_ARGS").unwrap_or(""))?;
    let arg = |k: &str| {
        args.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let from_conf = [
        req.conf.runtime_config.clone(),
        req.conf.args.clone().and_then(|a| a.cni),
    ];
    let conf_ips = from_conf.iter().flatten().find_map(|r| r.ips.clone());
    let conf_mac = from_conf.iter().flatten().find_map(|r| r.mac.clone());
    let ip = match conf_ips {
        Some(ips) => one_ipv4(&ips, code::INVALID_CONFIG, "runtimeConfig ips")?,
        None => match arg("IP") {
            Some(v) => {
                let list: Vec<String> = v.split(',').map(str::to_string).collect();
                one_ipv4(&list, code::INVALID_ENV, "CNI_ARGS IP")?
            }
            None => None,
        },
    };
    let mac = match (conf_mac, arg("MAC")) {
        (Some(m), _) => Some(check_mac(&m, code::INVALID_CONFIG, "runtimeConfig mac")?),
        (None, Some(m)) => Some(check_mac(&m, code::INVALID_ENV, "CNI_ARGS MAC")?),
        (None, None) => None,
    };
    Ok((ip, mac))
}

/// The `portMappings` capability (only from `runtimeConfig`: it has no static form).
pub(super) fn port_mappings(req: &Request) -> Result<Vec<crate::model::PortMapping>, CniError> {
    let Some(list) = req
        .conf
        .runtime_config
        .as_ref()
        .and_then(|r| r.port_mappings.as_ref())
    else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|m| {
            m.to_mapping()
                .map_err(|e| CniError::new(code::INVALID_CONFIG, e))
        })
        .collect()
}

/// The one IPv4 address of a list of addresses (`10.1.0.5` or `10.1.0.5/24`).
pub(super) fn one_ipv4(list: &[String], c: u32, what: &str) -> Result<Option<String>, CniError> {
    let mut found = Vec::new();
    for item in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let addr = item.split('/').next().unwrap_or(item);
        let ip: Ipv4Addr = addr.parse().map_err(|_| {
            CniError::new(
                c,
                format!("{what}: {item:?} is not an IPv4 address (rnet networks are IPv4)"),
            )
        })?;
        found.push(ip.to_string());
    }
    if found.len() > 1 {
        return Err(CniError::new(
            c,
            format!(
                "{what}: rnet gives one address per interface, got {}",
                found.len()
            ),
        ));
    }
    Ok(found.pop())
}

pub(super) fn check_mac(s: &str, c: u32, what: &str) -> Result<String, CniError> {
    let mac: Mac = s
        .to_ascii_lowercase()
        .parse()
        .map_err(|e| CniError::new(c, format!("{what}: {e}")))?;
    if mac.is_zero() || mac.is_multicast() {
        return Err(CniError::new(
            c,
            format!("{what}: {mac} is not a unicast address"),
        ));
    }
    Ok(mac.to_string())
}
