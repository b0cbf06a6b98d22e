//! `rnet attach`, `detach` and `endpoints`.

use super::output::{print_json, Table};
use super::{path_segment, AttachArgs, DetachArgs, Failure, Format};
use crate::api::types::{AttachRequest, DetachRequest, DetachResponse};
use crate::api::Client;
use crate::model::Endpoint;

pub(super) fn endpoints_table(eps: &[Endpoint]) -> Table {
    let mut t = Table::new(&[
        "NETWORK", "ID", "NAMES", "IP", "MAC", "IFNAME", "HOST", "NETNS", "PORTS",
    ]);
    for e in eps {
        let names: Vec<&str> = e.dns_names().map(|n| n.as_str()).collect();
        t.row(vec![
            e.network.to_string(),
            e.id.to_string(),
            if names.is_empty() {
                "-".to_string()
            } else {
                names.join(",")
            },
            e.ip.to_string(),
            e.mac.to_string(),
            e.ifname.to_string(),
            e.host.clone(),
            e.netns.clone(),
            e.ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    t
}

pub(super) async fn attach(client: &Client, fmt: Format, a: &AttachArgs) -> Result<(), Failure> {
    let req = AttachRequest {
        network: a.network.clone(),
        netns: a.netns.clone(),
        pid: a.pid,
        ifname: Some(a.ifname.clone()),
        ip: a.ip.clone(),
        id: a.id.clone(),
        mac: a.mac.clone(),
        name: a.name.clone(),
        aliases: a.aliases.clone(),
        ports: a.publish.clone(),
        ..Default::default()
    };
    let ep: Endpoint = client.post("/v1/attach", &req).await?;
    match fmt {
        Format::Json => print_json(&ep),
        Format::Table => endpoints_table(&[ep]).print(),
    }
    Ok(())
}

pub(super) async fn detach(client: &Client, fmt: Format, a: &DetachArgs) -> Result<(), Failure> {
    let req = DetachRequest {
        network: a.network.clone(),
        id: a.id.clone(),
        netns: a.netns.clone(),
        pid: a.pid,
    };
    let r: DetachResponse = client.post("/v1/detach", &req).await?;
    match fmt {
        Format::Json => print_json(&r),
        Format::Table => endpoints_table(&r.detached).print(),
    }
    Ok(())
}

pub(super) async fn endpoints(
    client: &Client,
    fmt: Format,
    network: Option<&str>,
) -> Result<(), Failure> {
    let path = match network {
        Some(n) => format!("/v1/endpoints?network={}", path_segment(n)),
        None => "/v1/endpoints".to_string(),
    };
    let eps: Vec<Endpoint> = client.get(&path).await?;
    match fmt {
        Format::Json => print_json(&eps),
        Format::Table => endpoints_table(&eps).print(),
    }
    Ok(())
}
