//! rnet-cni: the CNI plugin, a thin client of rnetd.
//!
//! A runtime execs the plugin with `CNI_*` variables and the configuration on stdin; the
//! plugin turns them into one rnetd API call (`/v1/cni/...`) and prints the result (or a CNI
//! error) on stdout. Nothing here touches the kernel or the store: rnetd does all of it.
//! `main` takes the environment and stdio as arguments, so every path is table-testable.
//!
//! It starts fast: one current-thread tokio runtime for the one HTTP call, no etcd client
//! (nothing here reaches the daemon or store code, so the linker leaves them out).

pub mod spec;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::api::types::{
    AttachRequest, CniAttachment, CniCheckRequest, CniDelRequest, CniDelResponse, CniGcRequest,
    CniGcResponse, CniStatus,
};
use crate::api::{Client, ClientError, DEFAULT_SOCKET};
use crate::model::{DnsName, IfName, Mac, NetworkName, Origin};
use spec::{code, Attached, CniError, NetConf, Version};

/// How long the plugin waits for rnetd before answering "try again later".
const CALL_TIMEOUT: Duration = Duration::from_secs(100);

/// Run the plugin: read the request from `env` and `stdin`, write the answer to `stdout`,
/// return the exit status. Never panics: a bug becomes a CNI error too.
pub fn main(env: &HashMap<String, String>, stdin: &mut dyn Read, stdout: &mut dyn Write) -> i32 {
    let mut input = Vec::new();
    let outcome = match stdin.read_to_end(&mut input) {
        Ok(_) => std::panic::catch_unwind(|| dispatch(env, &input)).unwrap_or_else(|_| {
            Err(CniError::new(
                code::PLUGIN_INTERNAL,
                "rnet-cni failed unexpectedly (see its stderr)",
            ))
        }),
        Err(e) => Err(CniError::new(code::IO, format!("reading stdin: {e}"))),
    };
    let (answer, status) = match outcome {
        Ok(None) => return 0,
        Ok(Some(v)) => (v, 0),
        Err(e) => (e.to_json(&error_version(&input)), 1),
    };
    let mut text = serde_json::to_vec(&answer).expect("JSON values serialize");
    text.push(b'\n');
    if stdout
        .write_all(&text)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return 1;
    }
    status
}

/// The version to put in an error: the configuration's if it can be read, else the current.
fn error_version(input: &[u8]) -> String {
    serde_json::from_slice::<Value>(input)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| Version::parse(v).is_some())
        .unwrap_or_else(|| spec::CURRENT_VERSION.to_string())
}

/// The parsed request: environment and configuration, checked.
struct Request<'a> {
    env: &'a HashMap<String, String>,
    conf: NetConf,
    version: Version,
    network: String,
    client: Client,
}

impl Request<'_> {
    fn var(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A required variable.
    fn need(&self, name: &str) -> Result<&str, CniError> {
        self.var(name)
            .ok_or_else(|| CniError::new(code::INVALID_ENV, format!("{name} is not set")))
    }

    fn container_id(&self) -> Result<&str, CniError> {
        let id = self.need("CNI_CONTAINERID")?;
        if !spec::valid_name(id) {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_CONTAINERID {id:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"),
            ));
        }
        Ok(id)
    }

    fn ifname(&self) -> Result<&str, CniError> {
        let name = self.need("CNI_IFNAME")?;
        name.parse::<IfName>()
            .map_err(|e| CniError::new(code::INVALID_ENV, format!("CNI_IFNAME: {e}")))?;
        Ok(name)
    }

    fn netns(&self) -> Result<&str, CniError> {
        let path = self.need("CNI_NETNS")?;
        if !Path::new(path).exists() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_NETNS {path} does not exist"),
            ));
        }
        Ok(path)
    }

    fn require_version(&self, min: Version, what: &str) -> Result<(), CniError> {
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
    fn call<B: Serialize, T: DeserializeOwned>(
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

/// The CNI error for a failed API call.
fn api_error(e: ClientError) -> CniError {
    let c = match &e {
        ClientError::NotRunning { .. } | ClientError::Protocol { .. } => code::TRY_AGAIN_LATER,
        ClientError::Api { kind, .. } => match kind.as_str() {
            "unavailable" => code::TRY_AGAIN_LATER,
            "invalid" => code::RNETD_INVALID,
            "not_found" => code::NOT_FOUND,
            "conflict" => code::CONFLICT,
            "exhausted" => code::EXHAUSTED,
            _ => code::RNETD_INTERNAL,
        },
    };
    let details = match &e {
        ClientError::Api { status, kind, .. } => format!("rnetd answered {status} ({kind})"),
        ClientError::NotRunning { socket } | ClientError::Protocol { socket, .. } => {
            format!("socket {}", socket.display())
        }
    };
    CniError::new(c, e.to_string()).with_details(details)
}

fn dispatch(env: &HashMap<String, String>, input: &[u8]) -> Result<Option<Value>, CniError> {
    let command = env
        .get("CNI_COMMAND")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set"))?;
    if command == "VERSION" {
        let asked = serde_json::from_slice::<Value>(input).ok();
        let asked = asked.as_ref().and_then(|v| v.get("cniVersion")?.as_str());
        return Ok(Some(spec::version_result(asked)));
    }
    if !["ADD", "DEL", "CHECK", "STATUS", "GC"].contains(&command.as_str()) {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {command:?}"),
        ));
    }
    let req = parse_request(env, input)?;
    match command.as_str() {
        "ADD" => add(&req).map(Some),
        "DEL" => del(&req).map(|()| None),
        "CHECK" => check(&req).map(|()| None),
        "STATUS" => status(&req).map(|()| None),
        _ => gc(&req).map(|()| None),
    }
}

/// Decode and check the configuration; pick the network and the socket.
fn parse_request<'a>(
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
fn requested(req: &Request) -> Result<(Option<String>, Option<String>), CniError> {
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
fn port_mappings(req: &Request) -> Result<Vec<crate::model::PortMapping>, CniError> {
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
fn one_ipv4(list: &[String], c: u32, what: &str) -> Result<Option<String>, CniError> {
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

fn check_mac(s: &str, c: u32, what: &str) -> Result<String, CniError> {
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

fn add(req: &Request) -> Result<Value, CniError> {
    let (container_id, ifname, netns) = (req.container_id()?, req.ifname()?, req.netns()?);
    let (ip, mac) = requested(req)?;
    let attach = AttachRequest {
        network: req.network.clone(),
        netns: Some(netns.to_string()),
        ifname: Some(ifname.to_string()),
        ip,
        id: Some(spec::attachment_id(container_id, ifname)),
        mac,
        mtu: req.conf.mtu,
        origin: Some(Origin::Cni),
        owner: Some(req.conf.name.clone()),
        name: dns_name(req, container_id)?.map(|n| n.to_string()),
        ports: port_mappings(req)?,
        ..Default::default()
    };
    let done: CniAttachment = req
        .call(hyper::Method::POST, "/v1/cni/add", Some(&attach))
        .map_err(api_error)?;
    let ep = &done.endpoint;
    let attached = Attached {
        host_ifname: ep.host_ifname.clone(),
        ifname: ep.ifname.to_string(),
        mac: ep.mac.to_string(),
        netns: netns.to_string(),
        address: ep.ip.to_string(),
        gateway: done.network.gateway.to_string(),
        mtu: ep.mtu.unwrap_or(done.network.mtu),
    };
    // The network's DNS unless the configuration names its own (a prevResult's wins over both).
    let dns = req.conf.dns.clone().unwrap_or_else(|| {
        serde_json::json!({
            "nameservers": [done.network.gateway.to_string()],
            "search": [done.network.name.to_string()],
        })
    });
    Ok(spec::add_result(
        req.version,
        req.conf.prev_result.as_ref(),
        &attached,
        Some(&dns),
    ))
}

/// The workload's DNS name: Kubernetes' pod name (CNI_ARGS K8S_POD_NAME), else the container
/// id (its first 12 characters, as Docker shortens it, when the whole is longer than a DNS
/// label). A runtime's name DNS cannot carry gives no name rather than a failed ADD.
fn dns_name(req: &Request, container_id: &str) -> Result<Option<DnsName>, CniError> {
    let args = spec::parse_cni_args(req.var("CNI_ARGS").unwrap_or(""))?;
    let pod = args
        .iter()
        .find(|(k, _)| k == "K8S_POD_NAME")
        .map(|(_, v)| v.as_str());
    let short = container_id.get(..12).unwrap_or(container_id);
    Ok(pod
        .and_then(DnsName::lenient)
        .or_else(|| DnsName::lenient(container_id))
        .or_else(|| DnsName::lenient(short)))
}

fn del(req: &Request) -> Result<(), CniError> {
    let (container_id, ifname) = (req.container_id()?, req.ifname()?);
    let body = CniDelRequest {
        network: req.network.clone(),
        id: spec::attachment_id(container_id, ifname),
        ifname: ifname.to_string(),
        netns: req.var("CNI_NETNS").map(str::to_string),
    };
    let _: CniDelResponse = req
        .call(hyper::Method::POST, "/v1/cni/del", Some(&body))
        .map_err(api_error)?;
    Ok(())
}

fn check(req: &Request) -> Result<(), CniError> {
    req.require_version(Version::V040, "CHECK")?;
    let (container_id, ifname, netns) = (req.container_id()?, req.ifname()?, req.netns()?);
    let prev = req.conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult (the result of ADD)",
        )
    })?;
    let body = CniCheckRequest {
        network: req.network.clone(),
        id: spec::attachment_id(container_id, ifname),
        ifname: ifname.to_string(),
        netns: netns.to_string(),
    };
    let done: CniAttachment = req
        .call(hyper::Method::POST, "/v1/cni/check", Some(&body))
        .map_err(|e| match api_error(e) {
            e if e.code == code::TRY_AGAIN_LATER => e,
            e => CniError {
                code: code::CHECK_FAILED,
                ..e
            },
        })?;
    check_prev_result(prev, &done, ifname, netns)
}

/// The prevResult must still list what ADD reported: the interface in this sandbox and
/// the address on it.
fn check_prev_result(
    prev: &Value,
    done: &CniAttachment,
    ifname: &str,
    netns: &str,
) -> Result<(), CniError> {
    let fail = |msg: String| CniError::new(code::CHECK_FAILED, msg);
    let interfaces = prev["interfaces"].as_array().cloned().unwrap_or_default();
    let index = interfaces
        .iter()
        .position(|i| i["name"] == ifname && i["sandbox"] == netns)
        .ok_or_else(|| {
            fail(format!(
                "prevResult lists no interface {ifname} in sandbox {netns}"
            ))
        })?;
    let want = done.endpoint.ip.to_string();
    let listed = prev["ips"].as_array().is_some_and(|ips| {
        ips.iter().any(|ip| {
            ip["address"] == want.as_str()
                && ip.get("interface").is_none_or(|i| i == &Value::from(index))
        })
    });
    if !listed {
        return Err(fail(format!(
            "prevResult does not list address {want} on {ifname}; rnetd has it"
        )));
    }
    Ok(())
}

fn status(req: &Request) -> Result<(), CniError> {
    req.require_version(Version::V110, "STATUS")?;
    let path = format!("/v1/cni/status?network={}", req.network);
    let _: CniStatus = req
        .call(hyper::Method::GET, &path, None::<&()>)
        .map_err(|e| {
            let e = api_error(e);
            CniError::new(code::NOT_AVAILABLE, e.msg).with_details(e.details)
        })?;
    Ok(())
}

fn gc(req: &Request) -> Result<(), CniError> {
    req.require_version(Version::V110, "GC")?;
    req.need("CNI_PATH")?;
    let lists = [&req.conf.valid_attachments, &req.conf.attachments];
    if lists.iter().all(|l| l.is_none()) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments (without it every attachment would look stale)",
        ));
    }
    let mut valid = Vec::new();
    for list in lists.into_iter().flatten() {
        if list.is_null() {
            continue;
        }
        let entries: Vec<spec::Attachment> = serde_json::from_value(list.clone()).map_err(|e| {
            CniError::new(code::DECODE, format!("decoding the valid attachments: {e}"))
        })?;
        valid.extend(
            entries
                .iter()
                .map(|a| spec::attachment_id(&a.container_id, &a.ifname)),
        );
    }
    let body = CniGcRequest {
        network: req.network.clone(),
        owner: req.conf.name.clone(),
        valid,
    };
    let _: CniGcResponse = req
        .call(hyper::Method::POST, "/v1/cni/gc", Some(&body))
        .map_err(api_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run the plugin on an environment and stdin; (exit status, stdout parsed).
    fn run(env: &[(&str, &str)], stdin: &str) -> (i32, Option<Value>) {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut out = Vec::new();
        let status = main(&env, &mut stdin.as_bytes(), &mut out);
        let v = (!out.is_empty()).then(|| serde_json::from_slice(&out).expect("stdout is JSON"));
        (status, v)
    }

    const CONF: &str = r#"{"cniVersion":"1.1.0","name":"blue","type":"rnet-cni","socket":"/nonexistent/rnetd.sock"}"#;

    #[test]
    fn version_answers_every_supported_version() {
        let (st, out) = run(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
        let out = out.unwrap();
        assert_eq!(st, 0);
        assert_eq!(out["cniVersion"], "0.4.0");
        assert_eq!(
            out["supportedVersions"],
            serde_json::json!(spec::SUPPORTED_VERSIONS)
        );
        let (st, out) = run(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(
            (st, out.unwrap()["cniVersion"].clone()),
            (0, "1.1.0".into())
        );
    }

    /// Each error class, without a daemon: (env, stdin, expected code).
    #[test]
    fn error_classes() {
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_IFNAME", "eth0"),
        ];
        type Case<'a> = (Vec<(&'a str, &'a str)>, String, u32);
        let cases: Vec<Case> = vec![
            (vec![], CONF.into(), code::INVALID_ENV),
            (
                vec![("CNI_COMMAND", "FROB")],
                CONF.into(),
                code::INVALID_ENV,
            ),
            (add.to_vec(), "{not json".into(), code::DECODE),
            (
                add.to_vec(),
                CONF.replace("1.1.0", "0.2.0"),
                code::INCOMPATIBLE_VERSION,
            ),
            (
                add.to_vec(),
                CONF.replace("\"blue\"", "\"-blue\""),
                code::INVALID_CONFIG,
            ),
            (
                add.to_vec(),
                CONF.replace("\"blue\"", "\"much-too-long-name\""),
                code::INVALID_CONFIG,
            ),
            (
                add.to_vec(),
                CONF.replace("\"type\"", "\"ipam\":{\"type\":\"host-local\"},\"type\""),
                code::INVALID_CONFIG,
            ),
            (add[..3].to_vec(), CONF.into(), code::INVALID_ENV),
            (
                vec![add[0], add[2], add[3], ("CNI_CONTAINERID", "bad/id")],
                CONF.into(),
                code::INVALID_ENV,
            ),
            (
                vec![add[0], add[1], add[3], ("CNI_NETNS", "/nonexistent")],
                CONF.into(),
                code::INVALID_ENV,
            ),
            (
                [add.to_vec(), vec![("CNI_ARGS", "MAC=01:00:5e:00:00:01")]].concat(),
                CONF.into(),
                code::INVALID_ENV,
            ),
            (
                [add.to_vec(), vec![("CNI_ARGS", "IP=10.1.0.5,10.1.0.6")]].concat(),
                CONF.into(),
                code::INVALID_ENV,
            ),
            (add.to_vec(), CONF.into(), code::TRY_AGAIN_LATER),
            (
                vec![("CNI_COMMAND", "STATUS")],
                CONF.into(),
                code::NOT_AVAILABLE,
            ),
            (
                vec![("CNI_COMMAND", "STATUS")],
                CONF.replace("1.1.0", "1.0.0"),
                code::INCOMPATIBLE_VERSION,
            ),
            (
                vec![("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")],
                CONF.into(),
                code::INVALID_CONFIG,
            ),
            (
                vec![
                    ("CNI_COMMAND", "CHECK"),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_NETNS", "/proc/self/ns/net"),
                    ("CNI_IFNAME", "eth0"),
                ],
                CONF.replace("1.1.0", "0.3.1"),
                code::INCOMPATIBLE_VERSION,
            ),
        ];
        for (env, stdin, want) in cases {
            let (st, out) = run(&env, &stdin);
            let out = out.unwrap_or_else(|| panic!("no output for {env:?}"));
            assert_eq!(st, 1, "{env:?}: {out}");
            assert_eq!(out["code"], want, "{env:?} {stdin}: {out}");
            assert!(out["msg"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(out["details"].is_string());
            assert!(out["cniVersion"].is_string());
        }
    }
}
