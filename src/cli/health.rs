//! `rnet status` and `rnet doctor`: the daemon's state, and drift between records and kernel.

use super::output::{print_json, Table};
use super::{Failure, Format};
use crate::api::types::{DoctorReport, Status};
use crate::api::Client;

pub(super) async fn status(client: &Client, fmt: Format) -> Result<(), Failure> {
    let s: Status = client.get("/v1/status").await?;
    match fmt {
        Format::Json => print_json(&s),
        Format::Table => {
            let mut t = Table::new(&[
                "HOST",
                "UNDERLAY",
                "MTU",
                "STORE",
                "NETWORKS",
                "LOCAL ENDPOINTS",
                "VERSION",
            ]);
            t.row(vec![
                s.host_id,
                s.underlay.to_string(),
                s.underlay_mtu.to_string(),
                s.store,
                s.networks.to_string(),
                s.local_endpoints.to_string(),
                s.version,
            ]);
            t.print();
            let wg = &s.wireguard;
            match (&wg.public_key, &wg.error) {
                (Some(key), _) => println!(
                    "WireGuard ({}): port {}, public key {key}, identity {}; {}",
                    wg.backend
                        .map(|b| b.to_string())
                        .unwrap_or_else(|| "backend unknown".into()),
                    wg.port.unwrap_or_default(),
                    wg.identity.as_deref().unwrap_or("-"),
                    match wg.backend {
                        Some(crate::api::types::Backend::Kernel) => {
                            "drop reasons are not counted by the kernel backend".to_string()
                        }
                        _ => format!(
                            "dropped {} malformed, {} rejected, {} spoofed, {} with no peer, {} with bad offload metadata; {}",
                            wg.drops.malformed,
                            wg.drops.rejected,
                            wg.drops.spoofed,
                            wg.drops.no_peer,
                            wg.drops.bad_offload,
                            match &wg.tun_offload {
                                Some(t) if t.tso => format!(
                                    "TCP segmentation offload on ({} super-packets cut, {} merged)",
                                    t.super_packets, t.merged
                                ),
                                _ => "no TCP segmentation offload".to_string(),
                            }
                        ),
                    }
                ),
                (None, Some(why)) => println!("WireGuard: unavailable ({why})"),
                (None, None) => {}
            }
            let dns = &s.dns;
            println!(
                "DNS: {} server(s), upstream {}; answered {}, forwarded {}, forward failed {}, dropped {} malformed",
                dns.servers,
                if dns.upstreams.is_empty() { "none".to_string() } else { dns.upstreams.join(" ") },
                dns.answered,
                dns.forwarded,
                dns.forward_failed,
                dns.malformed
            );
            let ip = &s.ipsec;
            match (&ip.aead, &ip.error) {
                (Some(aead), _) => println!(
                    "IPsec: {aead}, epoch {:#x}, next rotation in {}s{}",
                    ip.epoch.unwrap_or_default(),
                    ip.next_rotation_secs.unwrap_or_default(),
                    if ip.failures.is_empty() {
                        String::new()
                    } else {
                        format!("; last pass failed: {}", ip.failures.join("; "))
                    }
                ),
                (None, Some(why)) => println!("IPsec: unavailable ({why})"),
                (None, None) => {}
            }
            if s.bad_records > 0 {
                println!(
                    "Invalid store records skipped: {} (`rnet doctor` names them)",
                    s.bad_records
                );
            }
        }
    }
    Ok(())
}

pub(super) async fn doctor(client: &Client, fmt: Format, repair: bool) -> Result<(), Failure> {
    if repair {
        let r: DoctorReport = client.post("/v1/reconcile", &()).await?;
        match fmt {
            Format::Json => print_json(&r),
            Format::Table => {
                for d in &r.drift {
                    // An invalid record is the store's to fix: the daemon only skips it.
                    let doing = if d.kind == "invalid" {
                        "left"
                    } else {
                        "repairing"
                    };
                    println!(
                        "{doing} {} {}: {} {}",
                        d.network, d.kind, d.object, d.detail
                    );
                }
                println!(
                    "{} difference(s) found and repaired where possible",
                    r.drift.len()
                );
            }
        }
        return Ok(());
    }
    let r: DoctorReport = client.get("/v1/doctor").await?;
    match fmt {
        Format::Json => print_json(&r),
        Format::Table if r.drift.is_empty() => {
            println!("no drift ({} network(s) checked)", r.networks_checked)
        }
        Format::Table => {
            for d in &r.drift {
                println!("{} {}: {} {}", d.network, d.kind, d.object, d.detail);
            }
        }
    }
    let invalid = r.drift.iter().filter(|d| d.kind == "invalid").count();
    let differences = r.drift.len() - invalid;
    let message = match (differences, invalid) {
        (0, 0) => return Ok(()),
        (d, 0) => format!("{d} difference(s) between records and kernel"),
        (0, i) => format!("{i} invalid record(s) in the store, skipped"),
        (d, i) => format!(
            "{d} difference(s) between records and kernel; {i} invalid record(s) in the store, skipped"
        ),
    };
    Err(Failure { message, code: 1 })
}
