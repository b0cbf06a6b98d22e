//! `rnet create`, `ls`, `inspect`, `rm` (and their `rnet network …` spellings).

use super::endpoints::endpoints_table;
use super::output::{print_json, Table};
use super::{path_segment, CreateArgs, Failure, Format};
use crate::api::types::{NetworkDetail, NetworkRequest, NetworkSummary, RemoveResponse};
use crate::api::Client;
use crate::model::Network;

pub(super) async fn create(client: &Client, fmt: Format, a: &CreateArgs) -> Result<(), Failure> {
    let req = NetworkRequest {
        name: a.name.clone(),
        subnet: a.subnet.clone(),
        gateway: a.gateway.clone(),
        vni: a.vni,
        mtu: a.mtu,
        allow_overlap: a.allow_overlap,
        encryption: a.encrypt,
        no_egress: a.no_egress,
        internal: a.internal,
    };
    let net: Network = client.post("/v1/networks", &req).await?;
    match fmt {
        Format::Json => print_json(&net),
        Format::Table => networks_table(&[(net, None)]).print(),
    }
    Ok(())
}

fn networks_table(nets: &[(Network, Option<usize>)]) -> Table {
    let mut t = Table::new(&[
        "NAME",
        "VNI",
        "SUBNET",
        "GATEWAY",
        "MTU",
        "EGRESS",
        "ENDPOINTS",
    ]);
    for (n, eps) in nets {
        t.row(vec![
            n.name.to_string(),
            n.vni.to_string(),
            n.subnet.to_string(),
            n.gateway.to_string(),
            n.mtu.to_string(),
            egress_column(n).into(),
            eps.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
        ]);
    }
    t
}

fn egress_column(n: &Network) -> &'static str {
    match (n.internal, n.egress) {
        (true, _) => "internal",
        (false, true) => "yes",
        (false, false) => "no",
    }
}

pub(super) async fn ls(client: &Client, fmt: Format) -> Result<(), Failure> {
    let nets: Vec<NetworkSummary> = client.get("/v1/networks").await?;
    match fmt {
        Format::Json => print_json(&nets),
        Format::Table => {
            let rows: Vec<(Network, Option<usize>)> = nets
                .into_iter()
                .map(|n| (n.network, Some(n.endpoints)))
                .collect();
            networks_table(&rows).print()
        }
    }
    Ok(())
}

pub(super) async fn inspect(client: &Client, fmt: Format, name: &str) -> Result<(), Failure> {
    let d: NetworkDetail = client
        .get(&format!("/v1/networks/{}", path_segment(name)))
        .await?;
    match fmt {
        Format::Json => print_json(&d),
        Format::Table => {
            networks_table(&[(d.network.clone(), Some(d.endpoints.len()))]).print();
            if !d.endpoints.is_empty() {
                println!();
                endpoints_table(&d.endpoints).print();
            }
        }
    }
    Ok(())
}

pub(super) async fn rm(
    client: &Client,
    fmt: Format,
    name: &str,
    force: bool,
) -> Result<(), Failure> {
    let path = format!(
        "/v1/networks/{}{}",
        path_segment(name),
        if force { "?force=true" } else { "" }
    );
    let r: RemoveResponse = client.delete(&path).await?;
    match fmt {
        Format::Json => print_json(&r),
        Format::Table => {
            println!(
                "removed network {} ({} endpoint(s) detached)",
                r.removed,
                r.detached.len()
            )
        }
    }
    Ok(())
}
