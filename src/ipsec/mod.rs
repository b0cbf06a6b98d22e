//! IPsec mode (`--encrypt ipsec`): kernel ESP in transport mode on the VXLAN flows between
//! hosts, programmed through XFRM netlink.
//!
//! An IPsec network's VXLAN device lives in the host namespace like a plain one but uses its
//! own UDP port ([`IPSEC_VXLAN_PORT`](crate::model::IPSEC_VXLAN_PORT)), so XFRM policies —
//! which match addresses, protocol and ports, never a VNI — select exactly the encrypted
//! networks' flows. Per live peer: an ESP SA each way and an ESP policy each way; always: a
//! catch-all block policy each way for the port (`plan`). Keys come from the hosts' X25519
//! keys (`keys`); each host rotates its sending epoch on a schedule (`rotation`).
//!
//! - `keys`: pure SPI and key derivation (HKDF-SHA256).
//! - `rotation`: pure sending-epoch schedule.
//! - `plan`: pure desired SAs and policies per peer, make-before-break, and the diff.
//! - `xfrm`: the XFRM messages; `client`: a blocking XFRM netlink client.
//! - `probe`: can this kernel run ESP (asked in a throwaway namespace)?

pub mod client;
pub mod keys;
pub mod plan;
pub mod probe;
pub mod rotation;
pub mod xfrm;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;

pub use crate::model::Aead;
use crate::model::IpsecInfo;
pub use plan::PeerIpsec;
use plan::{Book, Op};
use rotation::Rotation;
use xfrm::{Xfrm, XfrmError};

/// Default `--ipsec-rotate-every`: 12 hours, as Docker's encrypted overlay.
pub const DEFAULT_ROTATE_EVERY: u64 = 12 * 3600;
/// How long a peer's replaced inbound SA stays (seconds): longer than the peer needs to see
/// this host's acknowledgement in the store and switch.
pub const GRACE: u64 = 300;

/// Whether this CPU has AES instructions (the `aes` flag of /proc/cpuinfo).
pub fn cpu_has_aes() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| cpu_flags_have_aes(&s))
        .unwrap_or(false)
}

fn cpu_flags_have_aes(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags") || l.starts_with("Features"))
        .any(|l| l.split_whitespace().any(|w| w == "aes"))
}

/// A live, admitted peer with IPsec, as the service hands it over.
pub struct PeerInput {
    pub id: String,
    pub underlay: Ipv4Addr,
    pub info: IpsecInfo,
    /// The X25519 shared secret with the peer (never logged, never stored).
    pub shared: [u8; 32],
}

/// This host's IPsec state for `rnet status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IpsecStatus {
    pub available: bool,
    /// Why IPsec cannot run here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aead: Option<Aead>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Seconds until the next scheduled rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_secs: Option<u64>,
    /// What the last programming pass could not do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

impl From<IpsecStatus> for crate::api::types::IpsecStatus {
    fn from(s: IpsecStatus) -> Self {
        crate::api::types::IpsecStatus {
            available: s.available,
            error: s.error,
            aead: s.aead,
            epoch: s.epoch,
            next_rotation_secs: s.next_rotation_secs,
            failures: s.failures,
        }
    }
}

impl From<PeerIpsec> for crate::api::types::PeerIpsec {
    fn from(p: PeerIpsec) -> Self {
        crate::api::types::PeerIpsec {
            aead: p.aead,
            peer_epoch: p.peer_epoch,
            inbound_spis: p.inbound_spis,
            outbound_spi: p.outbound_spi,
            installed: p.installed,
            note: p.note,
        }
    }
}

struct Inner {
    book: Book,
    rotation: Rotation,
    peers: BTreeMap<String, PeerIpsec>,
    acks: BTreeMap<String, u32>,
    failures: Vec<String>,
    force_rotation: bool,
}

/// The running IPsec mode of this host.
pub struct Ipsec {
    aead: Aead,
    grace: u64,
    inner: Mutex<Inner>,
}

fn random16() -> u16 {
    use rand_core::{OsRng, RngCore};
    OsRng.next_u32() as u16
}

impl Ipsec {
    /// Probe the kernel (blocking) and start the first epoch; Err says which kernel feature
    /// is missing. `assume_esp` (tests of the control plane on kernels without ESP) starts
    /// anyway: SAs then fail to install, and every IPsec flow stays blocked.
    pub fn start(rotate_every: u64, now: u64, assume_esp: bool) -> Result<Ipsec, String> {
        let aead = match probe::probe(cpu_has_aes()) {
            Ok(aead) => aead,
            Err(why) if assume_esp => {
                tracing::warn!("--ipsec-assume-esp: starting IPsec mode although {why}; its flows stay blocked");
                if cpu_has_aes() {
                    Aead::AesGcm
                } else {
                    Aead::ChaCha20Poly1305
                }
            }
            Err(why) => return Err(why),
        };
        Ok(Ipsec {
            aead,
            grace: GRACE.min(rotate_every / 2).max(1),
            inner: Mutex::new(Inner {
                book: Book::default(),
                rotation: Rotation::start(now, rotate_every, random16()),
                peers: BTreeMap::new(),
                acks: BTreeMap::new(),
                failures: Vec::new(),
                force_rotation: false,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("ipsec state poisoned")
    }

    /// What this host publishes in its record.
    pub fn info(&self) -> IpsecInfo {
        let inner = self.lock();
        IpsecInfo {
            aead: self.aead,
            epoch: inner.rotation.epoch,
            acks: inner.acks.clone(),
        }
    }

    /// One programming pass (blocking: XFRM netlink in the calling thread's namespace, which
    /// must be the host's): rotate when due, plan, apply, read back, acknowledge. `enabled`:
    /// some network of the cluster uses IPsec; otherwise rnet's SAs and policies (the blocks
    /// of port 4799 too) are removed, so a cluster without IPsec networks leaves the port and
    /// the XFRM tables alone. Returns whether the published info changed.
    pub fn sync(&self, me: (&str, Ipv4Addr), peers: &[PeerInput], now: u64, enabled: bool) -> bool {
        let before = self.info();
        let mut inner = self.lock();
        let forced = inner.force_rotation;
        if inner.rotation.due(now, forced) {
            inner.rotation.rotate(now, random16());
            inner.force_rotation = false;
            tracing::info!(epoch = inner.rotation.epoch, "IPsec: new sending epoch");
        }
        let result = self.pass(&mut inner, me, peers, now, enabled);
        if let Err(e) = result {
            tracing::warn!(error = %e, "IPsec programming failed; will retry");
            inner.failures = vec![e];
        }
        drop(inner);
        self.info() != before
    }

    fn pass(
        &self,
        inner: &mut Inner,
        me: (&str, Ipv4Addr),
        peers: &[PeerInput],
        now: u64,
        enabled: bool,
    ) -> Result<(), String> {
        let mut x = Xfrm::open().map_err(|e| format!("opening XFRM netlink: {e}"))?;
        let seen = x.observe().map_err(|e| format!("dumping XFRM: {e}"))?;
        if !enabled {
            inner.book = Book::default();
        }
        let epoch = inner.rotation.epoch;
        let plan = self.plan(&mut inner.book, epoch, me, peers, now, enabled, &seen);
        let me = plan::Me {
            id: me.0,
            underlay: me.1,
            epoch,
            aead: self.aead,
        };
        let refused: Vec<(Op, XfrmError)> = plan::diff(&plan, &seen)
            .into_iter()
            .filter_map(|op| apply(&mut x, op.clone()).err().map(|e| (op, e)))
            .collect();
        for (_, e) in &refused {
            tracing::warn!(error = %e, "IPsec: XFRM change refused");
        }
        let failures: Vec<String> = refused.iter().map(|(_, e)| e.to_string()).collect();
        let now_seen = x.observe().map_err(|e| format!("dumping XFRM: {e}"))?;
        inner.acks = plan
            .acks
            .iter()
            .filter(|(_, (_, id))| now_seen.sas.contains(id))
            .map(|(h, (spi, _))| (h.clone(), *spi))
            .collect();
        inner.force_rotation |= plan.rotate;
        inner.peers = plan.peers;
        for p in peers {
            let Some(st) = inner.peers.get_mut(&p.id) else {
                continue;
            };
            // Show what the kernel holds, not what was planned.
            let here = |spi: u32, src, dst| {
                now_seen
                    .sas
                    .iter()
                    .any(|s| s.spi == spi && s.src == src && s.dst == dst)
            };
            st.inbound_spis
                .retain(|spi| here(*spi, p.underlay, me.underlay));
            st.installed &= st
                .outbound_spi
                .is_some_and(|spi| here(spi, me.underlay, p.underlay));
            let theirs = |op: &Op| match op {
                Op::AddSa(sa) => sa.src == p.underlay || sa.dst == p.underlay,
                _ => false,
            };
            if let Some((_, e)) = refused.iter().find(|(op, _)| theirs(op)) {
                st.note = Some(format!("the kernel refused its SAs: {e}"));
            }
        }
        inner.failures = failures;
        Ok(())
    }

    /// The kernel changes this host would make now: `rnet doctor`'s drift (blocking).
    pub fn drift(
        &self,
        me: (&str, Ipv4Addr),
        peers: &[PeerInput],
        now: u64,
        enabled: bool,
    ) -> Result<Vec<Op>, String> {
        let inner = self.lock();
        let mut book = inner.book.clone();
        let seen = Xfrm::open()
            .and_then(|mut x| x.observe())
            .map_err(|e| format!("dumping XFRM: {e}"))?;
        let plan = self.plan(
            &mut book,
            inner.rotation.epoch,
            me,
            peers,
            now,
            enabled,
            &seen,
        );
        Ok(plan::diff(&plan, &seen))
    }

    /// What `book` plans for this host (sending on `epoch`) and `peers` against `seen`;
    /// nothing when no network uses IPsec. Shared by the pass and `rnet doctor`.
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        book: &mut Book,
        epoch: u64,
        me: (&str, Ipv4Addr),
        peers: &[PeerInput],
        now: u64,
        enabled: bool,
        seen: &xfrm::Observed,
    ) -> plan::Plan {
        if !enabled {
            return plan::Plan::default();
        }
        let me = plan::Me {
            id: me.0,
            underlay: me.1,
            epoch,
            aead: self.aead,
        };
        let views: Vec<plan::Peer<'_>> = peers
            .iter()
            .map(|p| plan::Peer {
                id: &p.id,
                underlay: p.underlay,
                info: &p.info,
                shared: p.shared,
            })
            .collect();
        book.plan(now, self.grace, &me, &views, seen)
    }

    /// The peers both of whose SAs are installed.
    pub fn ready_peers(&self) -> BTreeSet<String> {
        self.lock()
            .peers
            .iter()
            .filter(|(_, s)| s.installed)
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// The IPsec state with `host` for `rnet peers`.
    pub fn peer_status(&self, host: &str) -> Option<PeerIpsec> {
        self.lock().peers.get(host).cloned()
    }

    /// This host's part of `rnet status`.
    pub fn status(&self, now: u64) -> IpsecStatus {
        let inner = self.lock();
        IpsecStatus {
            available: true,
            error: None,
            aead: Some(self.aead),
            epoch: Some(inner.rotation.epoch),
            next_rotation_secs: Some(inner.rotation.next_in(now)),
            failures: inner.failures.clone(),
        }
    }
}

/// Send one planned change.
pub fn apply(x: &mut Xfrm, op: Op) -> Result<(), XfrmError> {
    match op {
        Op::AddSa(sa) => x.request(&format!("adding {sa:?}"), xfrm::add_sa(&sa)),
        Op::DelSa(id) => x.request(
            &format!("removing SA {} -> {} spi {:#010x}", id.src, id.dst, id.spi),
            xfrm::del_sa(&id),
        ),
        Op::AddPolicy(p) => x.request(&format!("adding policy {p:?}"), xfrm::add_policy(&p)),
        Op::DelPolicy(p) => x.request(&format!("removing policy {p:?}"), xfrm::del_policy(&p)),
        Op::ReplaceSa(sa, replay) => {
            tracing::warn!(
                "IPsec: the kernel's key differs from the derived one for {sa:?}; replacing it"
            );
            x.request(&format!("removing {sa:?}"), xfrm::del_sa(&sa.id()))?;
            x.request(
                &format!("re-adding {sa:?}"),
                xfrm::add_sa_with_replay(&sa, replay),
            )
        }
    }
}

/// A change in words, for `rnet doctor`.
pub fn describe(op: &Op) -> (String, String) {
    match op {
        Op::AddSa(sa) => (
            format!("SA {} -> {} spi {:#010x}", sa.src, sa.dst, sa.spi),
            "missing".into(),
        ),
        Op::DelSa(id) => (
            format!("SA {} -> {} spi {:#010x}", id.src, id.dst, id.spi),
            "extra: no peer or epoch wants it".into(),
        ),
        Op::ReplaceSa(sa, _) => (
            format!("SA {} -> {} spi {:#010x}", sa.src, sa.dst, sa.spi),
            "key differs from the derived one".into(),
        ),
        Op::AddPolicy(p) => (policy_words(p), "missing".into()),
        Op::DelPolicy(p) => (policy_words(p), "extra: no peer wants it".into()),
    }
}

fn policy_words(p: &xfrm::PolicySpec) -> String {
    let side = |a: Option<Ipv4Addr>| a.map_or("any".to_string(), |a| a.to_string());
    format!(
        "policy {:?} {} -> {} udp dport {} {:?}",
        p.dir,
        side(p.src),
        side(p.dst),
        crate::model::IPSEC_VXLAN_PORT,
        p.action
    )
    .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_peer_state_go_on_the_wire_as_before() {
        let st = IpsecStatus {
            available: true,
            error: None,
            aead: Some(Aead::AesGcm),
            epoch: Some(9),
            next_rotation_secs: Some(60),
            failures: vec!["x".into()],
        };
        assert_eq!(
            serde_json::to_value(&st).unwrap(),
            serde_json::to_value(crate::api::types::IpsecStatus::from(st.clone())).unwrap()
        );
        let p = PeerIpsec {
            aead: Some(Aead::ChaCha20Poly1305),
            peer_epoch: Some(2),
            inbound_spis: vec![1, 2],
            outbound_spi: Some(3),
            installed: true,
            note: Some("rotating".into()),
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::to_value(crate::api::types::PeerIpsec::from(p.clone())).unwrap()
        );
    }

    #[test]
    fn aes_flag_is_read_from_cpuinfo() {
        assert!(cpu_flags_have_aes(
            "processor\t: 0\nflags\t\t: fpu sse2 aes avx\n"
        ));
        assert!(!cpu_flags_have_aes("flags\t\t: fpu sse2 aesni_fake avx\n"));
        assert!(cpu_flags_have_aes("Features\t: fp asimd aes pmull\n"));
    }

    #[test]
    fn drift_reads_like_ip_xfrm() {
        let blk = xfrm::PolicySpec::block_all(xfrm::Dir::Out);
        assert_eq!(
            describe(&Op::AddPolicy(blk)),
            (
                "policy out any -> any udp dport 4799 block".into(),
                "missing".into()
            )
        );
        let id = xfrm::SaId {
            src: Ipv4Addr::new(198, 18, 0, 1),
            dst: Ipv4Addr::new(198, 18, 0, 2),
            spi: 0x1234,
        };
        assert_eq!(
            describe(&Op::DelSa(id)).0,
            "SA 198.18.0.1 -> 198.18.0.2 spi 0x00001234"
        );
    }
}
