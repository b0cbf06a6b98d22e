//! `rnet peers` (and `--trust`), `rnet rotate-key` and `rnet gc`: the other hosts.

use super::output::{print_json, Table};
use super::{path_segment, Failure, Format};
use crate::api::types::{GcRequest, GcResponse, PeerInfo, TrustResponse};
use crate::api::Client;
use crate::model::WireguardInfo;

/// One peer's IPsec state in a line: SPIs both ways and what is missing.
fn ipsec_words(ip: &crate::api::types::PeerIpsec) -> String {
    let spis = |v: &[u32]| {
        v.iter()
            .map(|s| format!("{s:#010x}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut s = format!(
        "{}; out {}; in {}",
        if ip.installed {
            "installed"
        } else {
            "not installed"
        },
        ip.outbound_spi.map_or("-".into(), |s| format!("{s:#010x}")),
        if ip.inbound_spis.is_empty() {
            "-".into()
        } else {
            spis(&ip.inbound_spis)
        },
    );
    if let (Some(aead), Some(e)) = (ip.aead, ip.peer_epoch) {
        s.push_str(&format!("; {aead}, peer epoch {e:#x}"));
    }
    if let Some(note) = &ip.note {
        s.push_str(&format!(" ({note})"));
    }
    s
}

pub(super) async fn peers(client: &Client, fmt: Format) -> Result<(), Failure> {
    let peers: Vec<PeerInfo> = client.get("/v1/peers").await?;
    match fmt {
        Format::Json => print_json(&peers),
        Format::Table => {
            let (headers, rows, problems) = peers_rows(&peers);
            let mut t = Table::new(&headers);
            for row in rows {
                t.row(row);
            }
            t.print();
            if let Some(backend) = peers
                .iter()
                .find_map(|p| p.tunnel.as_ref().and_then(|t| t.backend))
            {
                println!("WireGuard backend: {backend}");
            }
            for p in problems {
                println!("{p}");
            }
        }
    }
    Ok(())
}

/// The peers table's headers and rows, and the tunnel problems to print below it.
pub(super) fn peers_rows(peers: &[PeerInfo]) -> (Vec<&'static str>, Vec<Vec<String>>, Vec<String>) {
    let headers = vec![
        "HOST",
        "STATE",
        "UNDERLAY",
        "RENEWED",
        "ENDPOINTS",
        "TUNNEL",
        "HANDSHAKE",
        "TX",
        "RX",
        "KEY AGE",
    ];
    let ago = |s: Option<u64>| s.map(|s| format!("{s}s ago")).unwrap_or_else(|| "-".into());
    let mut problems = Vec::new();
    let mut rows = Vec::new();
    for p in peers {
        let tunnel = p.tunnel.as_ref();
        if let Some(problem) = tunnel.and_then(|t| t.problem.as_ref()) {
            problems.push(format!("{}: {problem}", p.host));
        }
        if let Some(ip) = &p.ipsec {
            problems.push(format!("{}: IPsec {}", p.host, ipsec_words(ip)));
        }
        rows.push(vec![
            p.host.clone(),
            p.state.to_string(),
            p.underlay.to_string(),
            ago(p.renewed_ago),
            p.endpoints.to_string(),
            match tunnel {
                None => "-".into(),
                Some(t) if t.up => "up".into(),
                Some(_) => "down".into(),
            },
            ago(tunnel.and_then(|t| t.since_handshake)),
            tunnel
                .map(|t| t.tx_bytes.to_string())
                .unwrap_or_else(|| "-".into()),
            tunnel
                .map(|t| t.rx_bytes.to_string())
                .unwrap_or_else(|| "-".into()),
            tunnel
                .and_then(|t| t.key_age)
                .map(|s| format!("{s}s"))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    (headers, rows, problems)
}

pub(super) async fn trust(client: &Client, fmt: Format, host: &str) -> Result<(), Failure> {
    let path = format!("/v1/peers/{}/trust", path_segment(host));
    let r: TrustResponse = client.post(&path, &()).await?;
    match fmt {
        Format::Json => print_json(&r),
        Format::Table => println!(
            "host {} pinned: identity {}, underlay {}, WireGuard key {}",
            r.host, r.pin.identity, r.pin.underlay, r.pin.public_key
        ),
    }
    Ok(())
}

pub(super) async fn rotate_key(client: &Client, fmt: Format) -> Result<(), Failure> {
    let info: WireguardInfo = client.post("/v1/wireguard/rotate-key", &()).await?;
    match fmt {
        Format::Json => print_json(&info),
        Format::Table => println!("new public key {}", info.public_key),
    }
    Ok(())
}

pub(super) async fn gc(
    client: &Client,
    fmt: Format,
    host: &str,
    force: bool,
) -> Result<(), Failure> {
    let req = GcRequest {
        host: host.to_string(),
        force,
    };
    let r: GcResponse = client.post("/v1/gc", &req).await?;
    match fmt {
        Format::Json => print_json(&r),
        Format::Table => println!(
            "released {} endpoint(s) of host {}",
            r.released.len(),
            r.host
        ),
    }
    Ok(())
}
