//! Host records (presence and durable info), checked against their key and this host.

use super::{decode, host_id, shorten, unicast, Kind, Own, Rejected};
use crate::model::HostRecord;
use crate::store::keys;

// ----- hosts: /rnet/v1/hosts/<id>, /rnet/v1/host-info/<id> -----

/// A host record (presence or durable info), checked against its key and this host.
pub fn host(key: &str, value: &[u8], own: &Own) -> Result<HostRecord, Rejected> {
    let (kind, id) = match keys::classify(key) {
        keys::Key::Host(id) => (Kind::Host, id),
        keys::Key::HostInfo(id) => (Kind::HostInfo, id),
        _ => (Kind::Host, key),
    };
    let rec: HostRecord = decode(kind, key, value)?;
    check_host(id, &rec, own).map_err(|why| Rejected::new(kind, key, why))?;
    Ok(rec)
}

/// The rules of a host record whose key names `key_id`, as host `own` reads it.
pub fn check_host(key_id: &str, rec: &HostRecord, own: &Own) -> Result<(), String> {
    host_id(key_id).map_err(|e| format!("the key does not name a host: {}", e.0))?;
    if rec.id != key_id {
        return Err(format!(
            "the record is of host {:?}, its key of {key_id:?}",
            shorten(&rec.id)
        ));
    }
    let u = rec.underlay;
    let why = if u.is_loopback() {
        Some("a loopback address")
    } else if u.is_multicast() {
        Some("a multicast address")
    } else if u.is_unspecified() {
        Some("the unspecified address")
    } else if u.is_broadcast() {
        Some("the broadcast address")
    } else {
        None
    };
    if let Some(why) = why {
        return Err(format!("underlay {u} is {why}"));
    }
    if own.underlay == Some(u) && rec.id != own.host_id {
        return Err(format!(
            "underlay {u} is this host's ({}) own address",
            own.host_id
        ));
    }
    unicast("VTEP MAC address", rec.vtep_mac)?;
    if let Some(wg) = &rec.wireguard {
        crate::wireguard::keys::parse_public(&wg.public_key)
            .map_err(|e| format!("WireGuard public key: {}", shorten(&e)))?;
        if wg.port == 0 {
            return Err("WireGuard port is 0".into());
        }
    }
    if let Some(ip) = &rec.ipsec {
        if rec.wireguard.is_none() {
            return Err("it has an IPsec part but no X25519 key to derive IPsec keys from".into());
        }
        if ip.acks.len() > MAX_IPSEC_ACKS {
            return Err(format!(
                "its IPsec part acknowledges {} peers (at most {MAX_IPSEC_ACKS})",
                ip.acks.len()
            ));
        }
        if let Some((host, spi)) = ip.acks.iter().find(|(_, spi)| **spi < 256) {
            return Err(format!(
                "its IPsec acknowledgement for {host} names reserved SPI {spi}"
            ));
        }
    }
    Ok(())
}

/// More acknowledged IPsec peers than this in one host record is not a real cluster.
const MAX_IPSEC_ACKS: usize = 4096;
