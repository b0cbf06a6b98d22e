//! The host's static X25519 key: generated on first start, kept in the state directory
//! (mode 0600), never logged and never sent anywhere; only its public half is published.

use std::path::Path;
use std::time::UNIX_EPOCH;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use boringtun::x25519::{PublicKey, StaticSecret};

use super::{private_file, WgError};

/// A static key pair and when it was made (unix seconds).
#[derive(Clone)]
pub struct HostKey {
    pub secret: StaticSecret,
    pub public: PublicKey,
    pub created: u64,
}

impl std::fmt::Debug for HostKey {
    // The secret never reaches a log line, even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKey")
            .field("public", &encode_public(&self.public))
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl HostKey {
    /// A fresh random key.
    pub fn generate() -> HostKey {
        let secret = StaticSecret::random_from_rng(rand_core::OsRng);
        HostKey {
            public: PublicKey::from(&secret),
            secret,
            created: now_secs(),
        }
    }

    /// The key stored at `path`, or a new one written there when there is none.
    pub fn load_or_generate(path: &Path) -> Result<HostKey, WgError> {
        match private_file::read(path).map_err(WgError::Key)? {
            Some(text) => Self::parse_file(path, &text),
            None => {
                let key = HostKey::generate();
                key.save(path)?;
                tracing::info!(path = %path.display(), public_key = %key.public_b64(), "generated this host's WireGuard key");
                Ok(key)
            }
        }
    }

    fn parse_file(path: &Path, text: &str) -> Result<HostKey, WgError> {
        let bytes = decode32(text.trim()).map_err(|why| {
            WgError::Key(format!("{} does not hold a key: {why}", path.display()))
        })?;
        let secret = StaticSecret::from(bytes);
        let created = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(HostKey {
            public: PublicKey::from(&secret),
            secret,
            created,
        })
    }

    /// Write the private key to `path` atomically, readable by root only.
    pub fn save(&self, path: &Path) -> Result<(), WgError> {
        private_file::write(
            path,
            &format!("{}\n", STANDARD.encode(self.secret.to_bytes())),
        )
        .map_err(WgError::Key)
    }

    pub fn public_b64(&self) -> String {
        encode_public(&self.public)
    }
}

/// A public key as published in host records (standard base64, as `wg` prints it).
pub fn encode_public(key: &PublicKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// Parse a published public key.
pub fn parse_public(s: &str) -> Result<PublicKey, String> {
    decode32(s).map(PublicKey::from)
}

pub(super) fn decode32(s: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(s)
        .map_err(|e| format!("{s:?} is not base64 ({e})"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("a key is 32 bytes, this is {}", b.len()))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_generated_key_is_saved_0600_and_loads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wireguard.key");
        let first = HostKey::load_or_generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = HostKey::load_or_generate(&path).unwrap();
        assert_eq!(first.public, again.public);
        assert!(!format!("{first:?}").contains(&STANDARD.encode(first.secret.to_bytes())));
    }

    #[test]
    fn a_key_file_others_can_read_or_that_is_not_a_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        HostKey::generate().save(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = HostKey::load_or_generate(&path).unwrap_err().to_string();
        assert!(e.contains("readable by others"), "{e}");
        std::fs::write(&path, "not a key\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = HostKey::load_or_generate(&path).unwrap_err().to_string();
        assert!(e.contains("does not hold a key"), "{e}");
    }

    #[test]
    fn public_keys_round_trip_and_bad_ones_are_named() {
        let k = HostKey::generate();
        assert_eq!(parse_public(&k.public_b64()).unwrap(), k.public);
        assert!(parse_public("AAAA").unwrap_err().contains("32 bytes"));
        assert!(parse_public("%%%").unwrap_err().contains("not base64"));
    }
}
