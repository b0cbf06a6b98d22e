//! Peers' identities pinned on first sight (trust on first use), kept in the state directory
//! (`pinned-peers.json`, 0600, replaced atomically).
//!
//! The first valid record of a host pins its identity key and underlay. From then on its
//! record is accepted only with the same identity key and underlay, a signature that
//! verifies under that key (see `identity`), and a WireGuard key no older than the pinned
//! one (so a replayed record cannot bring back a key its host rotated away). Anything else is
//! refused, with the reason, until an operator runs `rnet peers --trust HOST`. A refused host
//! is no peer: it gets no session and nothing is sent to it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{identity, private_file, WgError};
use crate::model::{HostRecord, WireguardInfo};

/// The pin file in the state directory.
pub const PINS_FILE: &str = "pinned-peers.json";
const VERSION: u32 = 1;

/// What a host was last accepted as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// Its Ed25519 identity key, base64.
    pub identity: String,
    pub underlay: Ipv4Addr,
    /// The WireGuard record last accepted under the identity.
    pub public_key: String,
    pub port: u16,
    pub key_created: u64,
    /// Unix seconds of the pinning (first sight or `rnet peers --trust`).
    pub pinned: u64,
}

impl Pin {
    fn of(underlay: Ipv4Addr, wg: &WireguardInfo, identity: String, pinned: u64) -> Pin {
        Pin {
            identity,
            underlay,
            public_key: wg.public_key.clone(),
            port: wg.port,
            key_created: wg.key_created,
            pinned,
        }
    }

    /// Whether `wg` at `underlay` is exactly what was accepted (and so verified) before.
    fn matches(&self, underlay: Ipv4Addr, wg: &WireguardInfo) -> bool {
        self.underlay == underlay
            && wg.identity.as_deref() == Some(self.identity.as_str())
            && wg.public_key == self.public_key
            && wg.port == self.port
            && wg.key_created == self.key_created
    }
}

/// What to do with a host's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It is what is pinned.
    Keep,
    /// First sight: pin it.
    First(Pin),
    /// A new WireGuard key (or port) signed by the pinned identity: pin it.
    Rotated(Pin),
    /// Refused, and why.
    Refuse(String),
}

/// Pure: judge `host`'s record (`underlay`, `wg`) against its pin.
pub fn judge(
    pin: Option<&Pin>,
    host: &str,
    underlay: Ipv4Addr,
    wg: &WireguardInfo,
    now: u64,
) -> Verdict {
    if pin.is_some_and(|p| p.matches(underlay, wg)) {
        return Verdict::Keep;
    }
    let offered = wg.identity.clone().unwrap_or_else(|| "none".into());
    let signed = identity::verify(host, underlay, wg);
    let Some(pin) = pin else {
        return match signed {
            Ok(()) => Verdict::First(Pin::of(underlay, wg, offered, now)),
            Err(why) => Verdict::Refuse(format!(
                "refused the store's record (WireGuard key {}): {why}",
                wg.public_key
            )),
        };
    };
    let (why, operator) = if offered != pin.identity {
        (
            format!(
                "its identity key {offered} is not the pinned {}",
                pin.identity
            ),
            true,
        )
    } else if underlay != pin.underlay {
        (
            format!("its underlay {underlay} is not the pinned {}", pin.underlay),
            true,
        )
    } else if let Err(why) = signed {
        (why, false)
    } else if wg.key_created < pin.key_created {
        (
            format!(
                "its key was made at {}, before the pinned key's {} (a replayed old record?)",
                wg.key_created, pin.key_created
            ),
            false,
        )
    } else {
        return Verdict::Rotated(Pin::of(underlay, wg, offered, pin.pinned));
    };
    let hint = if operator {
        format!("; if this change is expected, run `rnet peers --trust {host}`")
    } else {
        String::new()
    };
    Verdict::Refuse(format!(
        "refused the store's record: it offers WireGuard key {}, pinned is {} ({why}){hint}",
        wg.public_key, pin.public_key
    ))
}

#[derive(Default, Serialize, Deserialize)]
struct PinFile {
    version: u32,
    hosts: BTreeMap<String, Pin>,
}

#[derive(Default)]
struct Book {
    pins: BTreeMap<String, Pin>,
    /// The refusals of the last pass, by host.
    refused: BTreeMap<String, String>,
    /// Pins changed since the file was last written.
    unsaved: bool,
}

/// The pins, kept in memory and on disk.
pub struct PinBook {
    path: PathBuf,
    book: Mutex<Book>,
}

impl PinBook {
    /// Load the pins at `path` (none if there is no file yet).
    pub fn open(path: &Path) -> Result<PinBook, WgError> {
        let pins = match private_file::read(path).map_err(WgError::Key)? {
            None => BTreeMap::new(),
            Some(text) => {
                let file: PinFile = serde_json::from_str(&text).map_err(|e| {
                    WgError::Key(format!("{} is not a pin file: {e}", path.display()))
                })?;
                if file.version != VERSION {
                    return Err(WgError::Key(format!(
                        "{} has version {}; this rnetd reads version {VERSION}",
                        path.display(),
                        file.version
                    )));
                }
                file.hosts
            }
        };
        Ok(PinBook {
            path: path.to_path_buf(),
            book: Mutex::new(Book {
                pins,
                ..Default::default()
            }),
        })
    }

    /// The records of `hosts` this host may keep a tunnel with (pinning those seen for the
    /// first time and signed rotations), and why each other one is refused. Records
    /// without a WireGuard part pass: they are no peers anyway, and the plan says why.
    pub fn admit<'a>(
        &self,
        me: &str,
        hosts: impl IntoIterator<Item = &'a HostRecord>,
    ) -> (Vec<&'a HostRecord>, BTreeMap<String, String>) {
        let now = now_secs();
        let mut book = self.book.lock();
        let mut accepted = Vec::new();
        let mut refused = BTreeMap::new();
        for h in hosts {
            let Some(wg) = h.wireguard.as_ref().filter(|_| h.id != me) else {
                accepted.push(h);
                continue;
            };
            match judge(book.pins.get(&h.id), &h.id, h.underlay, wg, now) {
                Verdict::Keep => accepted.push(h),
                Verdict::First(pin) => {
                    tracing::info!(peer = %h.id, identity = %pin.identity, underlay = %pin.underlay, "pinned the identity of a host seen for the first time");
                    book.pins.insert(h.id.clone(), pin);
                    book.unsaved = true;
                    accepted.push(h);
                }
                Verdict::Rotated(pin) => {
                    tracing::info!(peer = %h.id, public_key = %pin.public_key, "accepted a new WireGuard key signed by the host's pinned identity");
                    book.pins.insert(h.id.clone(), pin);
                    book.unsaved = true;
                    accepted.push(h);
                }
                Verdict::Refuse(why) => {
                    if book.refused.get(&h.id) != Some(&why) {
                        tracing::warn!(peer = %h.id, "WireGuard peer refused: {why}");
                    }
                    refused.insert(h.id.clone(), why);
                }
            }
        }
        for host in book.refused.keys().filter(|h| !refused.contains_key(*h)) {
            tracing::info!(peer = %host, "host no longer refused");
        }
        book.refused = refused.clone();
        if book.unsaved {
            // Kept in memory either way; written again on the next pass until it works.
            match self.save(&book) {
                Ok(()) => book.unsaved = false,
                Err(e) => tracing::warn!(error = %e, "saving the pinned peers failed"),
            }
        }
        (accepted, refused)
    }

    /// `rnet peers --trust`: pin `record` as it is. Its signature must verify under the
    /// identity key it names (otherwise there is no identity to pin).
    pub fn trust(&self, record: &HostRecord) -> Result<Pin, String> {
        let wg = record.wireguard.as_ref().ok_or_else(|| {
            format!(
                "host {}'s record publishes no WireGuard endpoint: nothing to trust",
                record.id
            )
        })?;
        identity::verify(&record.id, record.underlay, wg).map_err(|why| {
            format!(
                "host {}'s record cannot be trusted: {why} (a record must be signed by the identity key it names)",
                record.id
            )
        })?;
        let identity = wg
            .identity
            .clone()
            .expect("verified records name their identity");
        let pin = Pin::of(record.underlay, wg, identity, now_secs());
        let mut book = self.book.lock();
        let old = book.pins.insert(record.id.clone(), pin.clone());
        if let Err(e) = self.save(&book) {
            match old {
                Some(o) => book.pins.insert(record.id.clone(), o),
                None => book.pins.remove(&record.id),
            };
            return Err(e);
        }
        book.refused.remove(&record.id);
        tracing::warn!(peer = %record.id, identity = %pin.identity, underlay = %pin.underlay, public_key = %pin.public_key, previous = ?old.map(|o| o.identity), "operator trusted the host's current record; its identity is pinned again");
        Ok(pin)
    }

    /// The refusals of the last pass, by host.
    pub fn refused(&self) -> BTreeMap<String, String> {
        self.book.lock().refused.clone()
    }

    fn save(&self, book: &Book) -> Result<(), String> {
        let file = PinFile {
            version: VERSION,
            hosts: book.pins.clone(),
        };
        let text = serde_json::to_string_pretty(&file).expect("pins serialize");
        private_file::write(&self.path, &(text + "\n"))
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mac;
    use crate::wireguard::identity::Identity;
    use crate::wireguard::keys::HostKey;

    const AT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);

    fn wg(id: &Identity, underlay: Ipv4Addr, created: u64) -> WireguardInfo {
        let mut info = WireguardInfo {
            public_key: HostKey::generate().public_b64(),
            port: 51820,
            key_created: created,
            identity: None,
            signature: None,
        };
        id.sign("h2", underlay, &mut info);
        info
    }

    fn record(underlay: Ipv4Addr, wg: WireguardInfo) -> HostRecord {
        HostRecord {
            id: "h2".into(),
            underlay,
            vtep_mac: Mac::from_name(0x56, "h2"),
            started: 0,
            renewed: 0,
            wireguard: Some(wg),
            ipsec: None,
        }
    }

    fn pinned(v: Verdict) -> Pin {
        match v {
            Verdict::First(p) | Verdict::Rotated(p) => p,
            other => panic!("not pinned: {other:?}"),
        }
    }

    fn refused(v: Verdict) -> String {
        match v {
            Verdict::Refuse(why) => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn first_sight_pins_and_the_same_record_is_kept() {
        let id = Identity::generate();
        let info = wg(&id, AT, 10);
        let pin = pinned(judge(None, "h2", AT, &info, 99));
        assert_eq!(pin.identity, id.public_b64());
        assert_eq!((pin.underlay, pin.pinned), (AT, 99));
        assert_eq!(judge(Some(&pin), "h2", AT, &info, 100), Verdict::Keep);
    }

    #[test]
    fn a_rotation_signed_by_the_pinned_identity_is_accepted() {
        let id = Identity::generate();
        let pin = pinned(judge(None, "h2", AT, &wg(&id, AT, 10), 99));
        let next = wg(&id, AT, 20);
        let rotated = match judge(Some(&pin), "h2", AT, &next, 100) {
            Verdict::Rotated(p) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(rotated.public_key, next.public_key);
        assert_eq!(rotated.pinned, 99, "the identity's pinning time stays");
        // Rotated twice within a second: same time, still accepted.
        assert!(matches!(
            judge(Some(&rotated), "h2", AT, &wg(&id, AT, 20), 101),
            Verdict::Rotated(_)
        ));
    }

    #[test]
    fn forged_replayed_and_unsigned_records_are_refused_naming_both_keys() {
        let id = Identity::generate();
        let old = wg(&id, AT, 10);
        let pin = pinned(judge(None, "h2", AT, &wg(&id, AT, 20), 99));
        // A new key under the old signature: what a store writer without the identity can do.
        let mut forged = wg(&id, AT, 30);
        forged.public_key = HostKey::generate().public_b64();
        let why = refused(judge(Some(&pin), "h2", AT, &forged, 100));
        assert!(
            why.contains(&forged.public_key)
                && why.contains(&pin.public_key)
                && why.contains("does not verify"),
            "{why}"
        );
        assert!(
            !why.contains("--trust"),
            "nothing an operator should approve: {why}"
        );
        let why = refused(judge(Some(&pin), "h2", AT, &old, 100));
        assert!(why.contains("replayed"), "{why}");
        let mut unsigned = forged.clone();
        unsigned.signature = None;
        assert!(refused(judge(None, "h2", AT, &unsigned, 100)).contains("no identity key"));
    }

    #[test]
    fn a_new_identity_or_underlay_needs_the_operator_even_when_signed() {
        let id = Identity::generate();
        let pin = pinned(judge(None, "h2", AT, &wg(&id, AT, 10), 99));
        let other = Identity::generate();
        let why = refused(judge(Some(&pin), "h2", AT, &wg(&other, AT, 20), 100));
        assert!(
            why.contains(&other.public_b64()) && why.contains("rnet peers --trust h2"),
            "{why}"
        );
        let moved: Ipv4Addr = "198.18.0.22".parse().unwrap();
        let why = refused(judge(Some(&pin), "h2", moved, &wg(&id, moved, 20), 100));
        assert!(
            why.contains("underlay 198.18.0.22 is not the pinned 198.18.0.12"),
            "{why}"
        );
    }

    #[test]
    fn the_book_keeps_pins_across_opens_refuses_changes_and_trusts_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PINS_FILE);
        let (id, other) = (Identity::generate(), Identity::generate());
        let first = record(AT, wg(&id, AT, 10));
        let book = PinBook::open(&path).unwrap();
        let (ok, refused) = book.admit("h1", [&first]);
        assert_eq!((ok.len(), refused.len()), (1, 0));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // A restarted daemon: the pin is still there, so a new identity is refused.
        let book = PinBook::open(&path).unwrap();
        let changed = record(AT, wg(&other, AT, 20));
        let (ok, refused) = book.admit("h1", [&changed]);
        assert!(ok.is_empty() && refused["h2"].contains("identity key"));
        assert_eq!(book.refused(), refused);

        // A record not signed by its own identity cannot be trusted.
        let mut unsigned = changed.clone();
        unsigned.wireguard.as_mut().unwrap().signature = None;
        assert!(book
            .trust(&unsigned)
            .unwrap_err()
            .contains("cannot be trusted"));
        let pin = book.trust(&changed).unwrap();
        assert_eq!(pin.identity, other.public_b64());
        assert!(book.refused().is_empty());
        let (ok, _) = PinBook::open(&path).unwrap().admit("h1", [&changed]);
        assert_eq!(ok.len(), 1, "the trusted pin was saved");
    }

    #[test]
    fn a_corrupt_pin_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PINS_FILE);
        private_file::write(&path, "{").unwrap();
        let e = PinBook::open(&path).err().unwrap().to_string();
        assert!(e.contains("is not a pin file"), "{e}");
    }
}
