//! The CNI wire formats rnet-cni speaks (spec 1.1.0 and the older versions it still answers):
//! the network configuration it is given, the results it prints in each version's shape,
//! and the error object with the spec's codes. Pure: no I/O here.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::model::fnv1a;

/// Every CNI version whose configuration and result format rnet-cni handles, oldest first.
/// (0.2.0 and older use another result shape and are not supported.)
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version rnet-cni implements.
pub const CURRENT_VERSION: &str = "1.1.0";

/// A supported CNI version, ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V030,
    V031,
    V040,
    V100,
    V110,
}

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        Some(match s {
            "0.3.0" => Version::V030,
            "0.3.1" => Version::V031,
            "0.4.0" => Version::V040,
            "1.0.0" => Version::V100,
            "1.1.0" => Version::V110,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        SUPPORTED_VERSIONS[self as usize]
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The spec's error codes (0–99 are the spec's; 100 and up are rnet's own).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// rnetd failed internally.
    pub const RNETD_INTERNAL: u32 = 100;
    /// rnetd refused the request as invalid (an address outside the subnet, an MTU above
    /// the network's, a namespace that is not one...).
    pub const RNETD_INVALID: u32 = 101;
    /// Something named does not exist (usually: the rnet network).
    pub const NOT_FOUND: u32 = 102;
    /// It clashes with what exists: the interface, the address, the MAC or the attachment.
    pub const CONFLICT: u32 = 103;
    /// The network has no free address.
    pub const EXHAUSTED: u32 = 104;
    /// CHECK found the attachment missing or different from what ADD made.
    pub const CHECK_FAILED: u32 = 105;
    /// The plugin itself failed unexpectedly.
    pub const PLUGIN_INTERNAL: u32 = 199;
}

/// A CNI error result: `{"cniVersion","code","msg","details"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The error as printed on stdout.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)
    }
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The `ips`/`mac`/`portMappings` runtime capabilities (CONVENTIONS.md), as `runtimeConfig`
/// or `args.cni`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requested {
    #[serde(default)]
    pub ips: Option<Vec<String>>,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default, rename = "portMappings")]
    pub port_mappings: Option<Vec<CniPortMapping>>,
}

/// One entry of the `portMappings` capability. Ports are wide integers so an out-of-range
/// one is refused by rnetd by name rather than failing to parse.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniPortMapping {
    pub host_port: i64,
    pub container_port: i64,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
}

impl CniPortMapping {
    /// As rnet's own mapping; the error names what is wrong.
    pub fn to_mapping(&self) -> Result<crate::model::PortMapping, String> {
        let port = |what: &str, p: i64| {
            u32::try_from(p)
                .map_err(|_| format!("portMappings {what} {p} is out of range 1..=65535"))
        };
        let proto = match self.protocol.as_deref().map(str::to_ascii_lowercase) {
            None => crate::model::Proto::Tcp,
            Some(p) if p.is_empty() => crate::model::Proto::Tcp,
            Some(p) => p
                .parse()
                .map_err(|e: crate::model::Invalid| format!("portMappings: {}", e.0))?,
        };
        let host_ip = match self.host_ip.as_deref() {
            None | Some("") | Some("0.0.0.0") => None,
            Some(ip) => Some(
                ip.parse()
                    .map_err(|_| format!("portMappings hostIP {ip:?} is not an IPv4 address"))?,
            ),
        };
        let m = crate::model::PortMapping {
            host_port: port("hostPort", self.host_port)?,
            container_port: port("containerPort", self.container_port)?,
            proto,
            host_ip,
        };
        m.check().map_err(|e| format!("portMappings: {}", e.0))?;
        Ok(m)
    }
}

/// `args` in a network configuration: only `args.cni` matters to rnet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfArgs {
    #[serde(default)]
    pub cni: Option<Requested>,
}

/// The plugin configuration rnet-cni receives on stdin: the plugin's object of the conflist
/// plus what the runtime adds (`cniVersion`, `name`, `runtimeConfig`, `prevResult`, GC's
/// attachments). Unknown keys are kept aside, not refused: chained configurations carry
/// keys meant for others.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub plugin_type: String,
    /// The rnet network (default: `name`).
    #[serde(default)]
    pub network: Option<String>,
    /// rnetd's API socket (default: $RNET_SOCKET, else /run/rnet/rnetd.sock).
    #[serde(default)]
    pub socket: Option<String>,
    /// The container interface's MTU; at most the network's (default: the network's).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// rnet allocates addresses itself; an `ipam` section is refused rather than ignored.
    #[serde(default)]
    pub ipam: Option<Value>,
    /// Passed through into the ADD result.
    #[serde(default)]
    pub dns: Option<Value>,
    #[serde(default)]
    pub runtime_config: Option<Requested>,
    #[serde(default)]
    pub args: Option<ConfArgs>,
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC: present-but-null means an empty list; absent means the runtime sent none.
    #[serde(
        default,
        rename = "cni.dev/valid-attachments",
        deserialize_with = "present"
    )]
    pub valid_attachments: Option<Value>,
    /// The key the tagged 1.1.0 text used; libcni sends both.
    #[serde(default, rename = "cni.dev/attachments", deserialize_with = "present")]
    pub attachments: Option<Value>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A key that is present, even as `null` (plain `Option` would turn null into None).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The endpoint id of the CNI attachment (container id, interface name).
///
/// `<containerID>_<ifname>` when the interface name is letters and digits only (eth0, net1)
/// and the whole fits `EndpointId` (at most 128 characters): readable in `rnet endpoints`,
/// and unambiguous, because the interface part has no `_` and so starts after the last one.
/// Otherwise `cni-<16 hex digits>`, a 64-bit FNV-1a hash of `containerID NUL ifname`
/// (neither can hold NUL); that form has no `_`, so the two forms never meet.
pub fn attachment_id(container_id: &str, ifname: &str) -> String {
    let plain = !ifname.is_empty()
        && ifname.chars().all(|c| c.is_ascii_alphanumeric())
        && container_id.len() + 1 + ifname.len() <= crate::model::EndpointId::MAX_LEN;
    if plain {
        format!("{container_id}_{ifname}")
    } else {
        let key = format!("{container_id}\0{ifname}");
        format!("cni-{:016x}", fnv1a(key.as_bytes()))
    }
}

/// The CNI name rule, `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` (container ids, network names).
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Parse `CNI_ARGS` (`K1=V1;K2=V2`). Keys rnet does not know are ignored (runtimes send
/// K8S_POD_NAME and the like), malformed pairs are not.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_ARGS: {p:?} is not KEY=VALUE"),
            )),
        })
        .collect()
}

/// One interface of a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// 1.1.0 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// One address of a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IpConfig {
    /// "4" or "6": required before 1.0.0, gone from 1.0.0 on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    /// 1.1.0 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// 1.1.0 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
}

/// What one rnet attachment contributes to a result, independent of the version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// The sandbox-side veth (in rnet's per-network namespace, not the runtime's).
    pub host_ifname: String,
    pub ifname: String,
    pub mac: String,
    pub netns: String,
    /// Address with prefix length.
    pub address: String,
    pub gateway: String,
    pub mtu: u32,
}

/// The ADD result in `version`'s shape: `prev` (a chained plugin's result, or nothing) with
/// this attachment's interfaces, address and default route appended.
pub fn add_result(
    version: Version,
    prev: Option<&Value>,
    a: &Attached,
    dns: Option<&Value>,
) -> Value {
    let mut out = match prev {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    out.insert("cniVersion".into(), version.as_str().into());
    let v11 = version >= Version::V110;
    let host = Interface {
        name: a.host_ifname.clone(),
        mac: None,
        mtu: v11.then_some(a.mtu),
        sandbox: None,
    };
    let container = Interface {
        name: a.ifname.clone(),
        mac: Some(a.mac.clone()),
        mtu: v11.then_some(a.mtu),
        sandbox: Some(a.netns.clone()),
    };
    let interfaces = array_mut(&mut out, "interfaces");
    interfaces.push(to_value(&host));
    let index = interfaces.len();
    interfaces.push(to_value(&container));
    let ip = IpConfig {
        version: (version < Version::V100).then(|| "4".to_string()),
        address: a.address.clone(),
        gateway: Some(a.gateway.clone()),
        interface: Some(index),
    };
    array_mut(&mut out, "ips").push(to_value(&ip));
    let route = Route {
        dst: "0.0.0.0/0".into(),
        gw: Some(a.gateway.clone()),
        mtu: v11.then_some(a.mtu),
        advmss: v11.then_some(a.mtu.saturating_sub(40)),
    };
    array_mut(&mut out, "routes").push(to_value(&route));
    if let (Some(d), false) = (dns, out.contains_key("dns")) {
        out.insert("dns".into(), d.clone());
    }
    Value::Object(out)
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("result types serialize")
}

/// The array at `key`, created (or replacing a non-array) if need be.
fn array_mut<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = m.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut().expect("just made an array")
}

/// The VERSION answer.
pub fn version_result(asked: Option<&str>) -> Value {
    let v = asked
        .and_then(Version::parse)
        .map(Version::as_str)
        .unwrap_or(CURRENT_VERSION);
    json!({ "cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS })
}

#[cfg(test)]
mod tests;
