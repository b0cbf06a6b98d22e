//! Can this kernel run ESP? Asked by installing a test SA in a throwaway network namespace
//! (a fresh thread that unshares its namespace; it dies with the thread), so the host's own
//! XFRM tables never see the probe.
//!
//! What a kernel without ESP answers (measured on 6.18 without esp4): an AEAD SA fails with
//! ENOSYS ("Requested AEAD algorithm not found": the algorithm is looked up first, and
//! rfc4106/rfc7539esp templates are missing too), and an SA with an algorithm the kernel
//! has (cipher_null, or cbc(aes)+hmac(sha256)) fails with EPROTONOSUPPORT ("Requested type
//! not found": no esp4 type). Policies, even with ESP templates, are accepted.

use std::net::Ipv4Addr;

use super::xfrm::{self, Xfrm, XfrmError};
use super::Aead;

/// The AEAD this host will use, or why IPsec cannot run here (a sentence for operators).
pub fn probe(prefer_aes: bool) -> Result<Aead, String> {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("cannot make a namespace to probe ESP in: {e}"))?;
        let mut x = Xfrm::open().map_err(|e| format!("cannot open an XFRM netlink socket: {e}"))?;
        let order = if prefer_aes {
            [Aead::AesGcm, Aead::ChaCha20Poly1305]
        } else {
            [Aead::ChaCha20Poly1305, Aead::AesGcm]
        };
        let mut errors = Vec::new();
        for (i, aead) in order.into_iter().enumerate() {
            match try_sa(&mut x, aead, 0x100 + i as u32) {
                Ok(()) => return Ok(aead),
                Err(e) => errors.push((aead, e)),
            }
        }
        Err(explain(&mut x, &errors))
    })
    .join()
    .unwrap_or_else(|_| Err("the ESP probe thread panicked".into()))
}

fn try_sa(x: &mut Xfrm, aead: Aead, spi: u32) -> Result<(), XfrmError> {
    let sa = xfrm::SaSpec {
        src: Ipv4Addr::new(198, 18, 0, 1),
        dst: Ipv4Addr::new(198, 18, 0, 2),
        spi,
        aead,
        key: [0x5a; super::keys::KEY_LEN],
    };
    x.request("probe SA", xfrm::add_sa(&sa))
}

/// Name the missing kernel feature: ESP itself, or only the AEADs.
fn explain(x: &mut Xfrm, errors: &[(Aead, XfrmError)]) -> String {
    let no_esp = "the kernel has no ESP support (esp4 module): IPsec mode cannot run on this host";
    if errors.iter().any(|(_, e)| e.errno == libc::EPROTONOSUPPORT) {
        return no_esp.into();
    }
    // The AEADs are missing; is ESP too? Ask with the one algorithm every kernel has.
    match x.request("probe SA", xfrm::probe_null_sa()) {
        Err(e) if e.errno == libc::EPROTONOSUPPORT => no_esp.into(),
        _ => format!(
            "the kernel has ESP but none of its AEADs ({}): IPsec mode cannot run on this host",
            errors
                .iter()
                .map(|(a, e)| format!("{}: {}", a.kernel_name(), e))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}
