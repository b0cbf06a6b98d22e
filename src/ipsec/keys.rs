//! Pure key derivation: the SPI and key of each direction's SA, from the hosts' X25519 keys.
//!
//! The input key material is the X25519 shared secret of the two hosts' static keys (the
//! ones published for WireGuard), which both ends compute alike and no one else can. HKDF
//! (SHA-256) expands it, first into the SPI, then into the AEAD key, each bound to the
//! sorted pair of host ids, the sender (the direction), the sender's epoch and the AEAD; the
//! key's info also carries the SPI. Nothing derived here is stored or logged.

use hkdf::Hkdf;
use sha2::Sha256;

use super::Aead;

/// Bytes of every SA key: a 256-bit cipher key followed by the 4-byte salt (RFC 4106 and
/// RFC 7634 both put the salt after the key).
pub const KEY_LEN: usize = 36;
/// Fixed HKDF salt: a version tag, so a later scheme never derives the same keys.
const SALT: &[u8] = b"rnet ipsec v1";
/// SPIs 0..=255 are reserved (RFC 4303).
const MIN_SPI: u32 = 256;

/// One direction's SA material. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SaKeys {
    pub spi: u32,
    pub key: [u8; KEY_LEN],
}

impl std::fmt::Debug for SaKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaKeys")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .finish_non_exhaustive()
    }
}

/// Who sends on an SA and in which epoch.
#[derive(Clone, Copy, Debug)]
pub struct Direction<'a> {
    pub sender: &'a str,
    pub receiver: &'a str,
    /// The sender's epoch.
    pub epoch: u64,
    pub aead: Aead,
}

/// The info string: every field length-prefixed, so no two inputs give the same bytes.
fn info(label: &str, d: &Direction<'_>, spi: Option<u32>) -> Vec<u8> {
    let (lo, hi) = if d.sender < d.receiver {
        (d.sender, d.receiver)
    } else {
        (d.receiver, d.sender)
    };
    let mut out = Vec::with_capacity(64);
    for part in [label, lo, hi, d.sender, d.aead.kernel_name()] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(&d.epoch.to_be_bytes());
    if let Some(spi) = spi {
        out.extend_from_slice(&spi.to_be_bytes());
    }
    out
}

/// The SPI and key of the SA `d.sender` → `d.receiver`, from the pair's X25519 shared secret.
pub fn derive(shared_secret: &[u8; 32], d: &Direction<'_>) -> SaKeys {
    let hk = Hkdf::<Sha256>::new(Some(SALT), shared_secret);
    let mut spi = [0u8; 4];
    hk.expand(&info("spi", d, None), &mut spi)
        .expect("4 bytes is a valid HKDF length");
    // Fold into MIN_SPI..=u32::MAX without bias worth speaking of (2^-24).
    let spi = u32::from_be_bytes(spi).max(MIN_SPI);
    let mut key = [0u8; KEY_LEN];
    hk.expand(&info("key", d, Some(spi)), &mut key)
        .expect("36 bytes is a valid HKDF length");
    SaKeys { spi, key }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boringtun::x25519::{PublicKey, StaticSecret};

    fn dir(sender: &'static str, receiver: &'static str, epoch: u64) -> Direction<'static> {
        Direction {
            sender,
            receiver,
            epoch,
            aead: Aead::AesGcm,
        }
    }

    #[test]
    fn both_ends_derive_the_same_keys_from_their_own_secrets() {
        let a = StaticSecret::from([1u8; 32]);
        let b = StaticSecret::from([2u8; 32]);
        let on_a = a.diffie_hellman(&PublicKey::from(&b)).to_bytes();
        let on_b = b.diffie_hellman(&PublicKey::from(&a)).to_bytes();
        let d = dir("h1", "h2", 7);
        assert_eq!(derive(&on_a, &d), derive(&on_b, &d));
        // A third host's secret gives other keys.
        let c = StaticSecret::from([3u8; 32]);
        let on_c = c.diffie_hellman(&PublicKey::from(&a)).to_bytes();
        assert_ne!(derive(&on_c, &d).key, derive(&on_a, &d).key);
    }

    #[test]
    fn directions_epochs_and_aeads_give_different_keys() {
        let s = [9u8; 32];
        let base = derive(&s, &dir("h1", "h2", 1));
        let back = derive(&s, &dir("h2", "h1", 1));
        let later = derive(&s, &dir("h1", "h2", 2));
        let chacha = derive(
            &s,
            &Direction {
                aead: Aead::ChaCha20Poly1305,
                ..dir("h1", "h2", 1)
            },
        );
        for other in [&back, &later, &chacha] {
            assert_ne!(other.spi, base.spi);
            assert_ne!(other.key, base.key);
        }
        assert!(base.spi >= MIN_SPI);
    }

    #[test]
    fn fixed_vector() {
        // Pins the scheme: a change here changes every key in a cluster, so it must be
        // deliberate (and would break mixed-version clusters).
        // Computed independently with Python's hmac/hashlib (RFC 5869 written out by hand).
        let k = derive(&[0x42; 32], &dir("h1", "h2", 1));
        let hex: String = k.key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!((k.spi, hex.as_str()), (VECTOR_SPI, VECTOR_KEY));
        // Ids are length-prefixed: ("h1","h2x") and ("h1h","2x") are different pairs.
        assert_ne!(
            derive(&[0x42; 32], &dir("h1", "h2x", 1)),
            derive(&[0x42; 32], &dir("h1h", "2x", 1))
        );
        // The key never shows in Debug output.
        assert_eq!(format!("{k:?}"), "SaKeys { spi: 0xd3300d6f, .. }");
    }

    const VECTOR_SPI: u32 = 3_543_141_743;
    const VECTOR_KEY: &str =
        "35720fc67c0462f193dd6a33eec192588ab7b76675ef9a32dedf814c55e582c73198d4a1";
}
