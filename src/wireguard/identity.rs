//! This host's long-term identity, and how a host record's WireGuard part is signed.
//!
//! WireGuard keys are X25519 and cannot sign, and they change on every rotation. So each
//! host also has an Ed25519 identity key (`identity.key` in the state directory, 0600, made
//! on first start, never rotated), publishes its public half in its record, and signs with
//! it (host id, WireGuard public key, underlay, port, key_created). Peers pin the identity
//! key and underlay the first time they see a host (see `pins`) and from then on accept a
//! WireGuard key only with a valid signature under the pinned identity key: a rotation
//! (`rnet rotate-key`, `--wireguard-rotate-every`) needs no operator, while someone who can
//! only write the store cannot make a record peers accept. A new identity key or underlay
//! needs `rnet peers --trust HOST`.

use std::net::Ipv4Addr;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::keys::decode32;
use super::{private_file, WgError};
use crate::model::WireguardInfo;

/// The identity key's file in the state directory.
pub const IDENTITY_FILE: &str = "identity.key";
/// Domain separation: these signatures can never be taken for anything else's.
const CONTEXT: &[u8] = b"rnet host wireguard record v1\0";

/// A host's Ed25519 identity key.
pub struct Identity {
    key: SigningKey,
}

impl std::fmt::Debug for Identity {
    // The secret never reaches a log line, even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public_b64())
            .finish_non_exhaustive()
    }
}

impl Identity {
    pub fn generate() -> Identity {
        Identity {
            key: SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// The key stored at `path`, or a new one written there when there is none.
    pub fn load_or_generate(path: &Path) -> Result<Identity, WgError> {
        match private_file::read(path).map_err(WgError::Key)? {
            Some(text) => {
                let seed = decode32(text.trim()).map_err(|why| {
                    WgError::Key(format!(
                        "{} does not hold an identity key: {why}",
                        path.display()
                    ))
                })?;
                Ok(Identity {
                    key: SigningKey::from_bytes(&seed),
                })
            }
            None => {
                let me = Identity::generate();
                private_file::write(path, &format!("{}\n", STANDARD.encode(me.key.to_bytes())))
                    .map_err(WgError::Key)?;
                tracing::info!(path = %path.display(), identity = %me.public_b64(), "generated this host's identity key");
                Ok(me)
            }
        }
    }

    /// The public half, as published in host records.
    pub fn public_b64(&self) -> String {
        STANDARD.encode(self.key.verifying_key().as_bytes())
    }

    /// Put this identity and its signature into `info`, this host's WireGuard record.
    pub fn sign(&self, host: &str, underlay: Ipv4Addr, info: &mut WireguardInfo) {
        let msg = message(host, underlay, info).expect("this host's own public key is valid");
        info.identity = Some(self.public_b64());
        info.signature = Some(STANDARD.encode(self.key.sign(&msg).to_bytes()));
    }
}

/// Check that `info` (host `host`'s record, at `underlay`) is signed by the identity key
/// it names. Says why not.
pub fn verify(host: &str, underlay: Ipv4Addr, info: &WireguardInfo) -> Result<(), String> {
    let (Some(identity), Some(signature)) = (&info.identity, &info.signature) else {
        return Err("its record carries no identity key or signature".into());
    };
    let identity = VerifyingKey::from_bytes(&decode32(identity)?)
        .map_err(|_| format!("identity key {identity} is not an Ed25519 public key"))?;
    let signature = STANDARD
        .decode(signature)
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or("its signature is not an Ed25519 signature")?;
    let msg = message(host, underlay, info)?;
    identity
        .verify_strict(&msg, &signature)
        .map_err(|_| "its signature does not verify under its identity key".to_string())
}

/// What is signed: every field a peer acts on, in fixed-size form (the host id, the only
/// variable one, is length-prefixed).
fn message(host: &str, underlay: Ipv4Addr, info: &WireguardInfo) -> Result<Vec<u8>, String> {
    let public = decode32(&info.public_key)?;
    let mut m = Vec::with_capacity(CONTEXT.len() + 4 + host.len() + 46);
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(&(host.len() as u32).to_be_bytes());
    m.extend_from_slice(host.as_bytes());
    m.extend_from_slice(&public);
    m.extend_from_slice(&underlay.octets());
    m.extend_from_slice(&info.port.to_be_bytes());
    m.extend_from_slice(&info.key_created.to_be_bytes());
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wireguard::keys::HostKey;
    use std::os::unix::fs::PermissionsExt;

    fn signed(id: &Identity) -> WireguardInfo {
        let mut info = WireguardInfo {
            public_key: HostKey::generate().public_b64(),
            port: 51820,
            key_created: 1000,
            identity: None,
            signature: None,
        };
        id.sign("h2", "198.18.0.12".parse().unwrap(), &mut info);
        info
    }

    #[test]
    fn a_signed_record_verifies_and_every_changed_field_breaks_it() {
        let id = Identity::generate();
        let good = signed(&id);
        let at: Ipv4Addr = "198.18.0.12".parse().unwrap();
        verify("h2", at, &good).unwrap();
        assert!(verify("h3", at, &good).is_err(), "another host id");
        assert!(verify("h2", "198.18.0.13".parse().unwrap(), &good).is_err());
        let mut forged = good.clone();
        forged.public_key = HostKey::generate().public_b64();
        assert!(verify("h2", at, &forged)
            .unwrap_err()
            .contains("does not verify"));
        let mut moved = good.clone();
        moved.port = 51821;
        assert!(verify("h2", at, &moved).is_err());
        let mut older = good.clone();
        older.key_created = 999;
        assert!(verify("h2", at, &older).is_err());
        // Someone else's identity cannot vouch for it, nor can a record re-signed by it pass
        // as the original's (that is the pin's job: the identity key differs).
        let mut other = good.clone();
        other.identity = Some(Identity::generate().public_b64());
        assert!(verify("h2", at, &other).is_err());
    }

    #[test]
    fn missing_or_malformed_signatures_are_named() {
        let id = Identity::generate();
        let at: Ipv4Addr = "198.18.0.12".parse().unwrap();
        let mut none = signed(&id);
        none.signature = None;
        assert!(verify("h2", at, &none).unwrap_err().contains("no identity"));
        let mut bad = signed(&id);
        bad.signature = Some("AAAA".into());
        assert!(verify("h2", at, &bad)
            .unwrap_err()
            .contains("not an Ed25519 signature"));
        let mut key = signed(&id);
        key.identity = Some("xyz".into());
        assert!(verify("h2", at, &key).is_err());
    }

    #[test]
    fn the_identity_is_saved_0600_and_loads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        let first = Identity::load_or_generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Identity::load_or_generate(&path).unwrap();
        assert_eq!(first.public_b64(), again.public_b64());
        let secret = std::fs::read_to_string(&path).unwrap();
        assert!(!format!("{first:?}").contains(secret.trim()));
        std::fs::write(&path, "nope\n").unwrap();
        let e = Identity::load_or_generate(&path).unwrap_err().to_string();
        assert!(e.contains("does not hold an identity key"), "{e}");
    }
}
