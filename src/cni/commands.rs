//! The commands: ADD, DEL, CHECK, STATUS and GC, each one rnetd API call.

use serde_json::Value;

use super::api_error;
use super::request::{port_mappings, requested, Request};
use super::spec::{self, code, Attached, CniError, Version};
use crate::api::types::{
    AttachRequest, CniAttachment, CniCheckRequest, CniDelRequest, CniDelResponse, CniGcRequest,
    CniGcResponse, CniStatus,
};
use crate::model::{DnsName, Origin};

pub(super) fn add(req: &Request) -> Result<Value, CniError> {
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

pub(super) fn del(req: &Request) -> Result<(), CniError> {
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

pub(super) fn check(req: &Request) -> Result<(), CniError> {
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

pub(super) fn status(req: &Request) -> Result<(), CniError> {
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

pub(super) fn gc(req: &Request) -> Result<(), CniError> {
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
