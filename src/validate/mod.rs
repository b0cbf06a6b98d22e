//! Checks every record read from the store against its key and the schema before it is
//! used. Whoever can write the store is not trusted to be root on every host: a record that
//! fails here is skipped (never programmed into the kernel) and reported with its key and
//! the reason. Pure: no I/O, so every rule is unit-tested with hostile values.
//!
//! Checks that need a second record (an endpoint's address inside its network's subnet)
//! take that record as an argument; the caller looks it up.

use std::fmt;
use std::net::Ipv4Addr;

use serde::de::DeserializeOwned;

use crate::model::{Invalid, Mac};

/// The largest record value accepted; rnet writes a few hundred bytes per record.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// The largest MTU an interface can have on any underlay.
pub const MAX_MTU: u32 = 65535;
/// Host ids are hostnames: at most HOST_NAME_MAX (64) bytes.
pub const HOST_ID_MAX: usize = 64;
/// A namespace path in an endpoint record: at most PATH_MAX bytes.
pub const NETNS_PATH_MAX: usize = 4096;
/// The longest owner an attach accepts.
pub const OWNER_MAX: usize = 128;
/// Keys and values from a record are shortened to this many characters where shown, and
/// a whole reason to `REASON_MAX`.
const SHOWN_MAX: usize = 200;
const REASON_MAX: usize = 1000;

/// What kind of record a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Network,
    VniIndex,
    Endpoint,
    EndpointIdIndex,
    Host,
    HostInfo,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Network => "network",
            Kind::VniIndex => "VNI index",
            Kind::Endpoint => "endpoint",
            Kind::EndpointIdIndex => "endpoint-id index",
            Kind::Host => "host",
            Kind::HostInfo => "host-info",
        })
    }
}

/// A record that failed a check: which, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub kind: Kind,
    pub key: String,
    pub reason: String,
}

impl Rejected {
    fn new(kind: Kind, key: &str, reason: impl Into<String>) -> Rejected {
        Rejected {
            kind,
            key: key.to_string(),
            reason: shorten_to(&reason.into(), REASON_MAX),
        }
    }

    /// The key as it may be shown: control characters escaped, length bounded.
    pub fn shown_key(&self) -> String {
        shown_key(&self.key)
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.kind, self.shown_key(), self.reason)
    }
}

impl std::error::Error for Rejected {}

/// A store key made safe to print (a key may hold newlines or be megabytes long).
pub fn shown_key(key: &str) -> String {
    shorten(&key.escape_debug().to_string())
}

fn shorten(s: &str) -> String {
    shorten_to(s, SHOWN_MAX)
}

fn shorten_to(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_string(),
    }
}

/// What this host knows about itself, for the checks that depend on who reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Own {
    pub host_id: String,
    /// This host's underlay address (None: not known, no check).
    pub underlay: Option<Ipv4Addr>,
}

/// Decode a record's JSON, bounded in size.
fn decode<T: DeserializeOwned>(kind: Kind, key: &str, value: &[u8]) -> Result<T, Rejected> {
    if value.len() > MAX_RECORD_BYTES {
        return Err(Rejected::new(
            kind,
            key,
            format!(
                "the record is {} bytes; at most {MAX_RECORD_BYTES} are accepted",
                value.len()
            ),
        ));
    }
    serde_json::from_slice(value)
        .map_err(|e| Rejected::new(kind, key, format!("undecodable record: {e}")))
}

/// A small text value (an index), bounded and UTF-8.
fn text<'a>(kind: Kind, key: &str, value: &'a [u8]) -> Result<&'a str, Rejected> {
    if value.len() > 256 {
        return Err(Rejected::new(
            kind,
            key,
            format!(
                "the value is {} bytes; an index holds a short name",
                value.len()
            ),
        ));
    }
    std::str::from_utf8(value).map_err(|_| Rejected::new(kind, key, "the value is not UTF-8"))
}

/// A host id: a hostname (letters, digits, '.', '_', '-'; at most 64 bytes).
pub fn host_id(s: &str) -> Result<(), Invalid> {
    let ok_start = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if s.len() > HOST_ID_MAX || !ok_start || !ok_chars {
        return Err(Invalid(format!(
            "host id {:?} is not a host name (1 to {HOST_ID_MAX} letters, digits, '.', '_' or '-', starting with a letter or digit)",
            shorten(s)
        )));
    }
    Ok(())
}

fn unicast(what: &str, mac: Mac) -> Result<(), String> {
    if mac.is_zero() {
        return Err(format!("{what} {mac} is all zeros"));
    }
    if mac.is_multicast() {
        return Err(format!(
            "{what} {mac} is a multicast address (group bit set)"
        ));
    }
    Ok(())
}

mod endpoints;
mod hosts;
mod networks;

pub use endpoints::{
    check_endpoint, check_endpoint_in, check_ports, endpoint, endpoint_alone, endpoint_id_index,
    fits, MAX_PORTS,
};
pub use hosts::{check_host, host};
pub use networks::{check_network, network, vni_index};

#[cfg(test)]
mod tests;
