//! Pure: which SAs and policies this host wants, from the live peers' records and what it
//! remembers, and the kernel operations that get there from what a dump shows.
//!
//! # Keys and epochs
//! Each host sends on SAs keyed by its own *epoch* (`IpsecInfo::epoch`, drawn fresh at every
//! start and rotation, never reused), so a restarted sender never sends again under a key it
//! used with a sequence number starting at 1 (AES-GCM nonce reuse). For every live peer P:
//! - inbound: the SA P → me for P's advertised epoch is installed, then acknowledged in this
//!   host's record (`acks[P]` = its SPI); the SA of P's previous epoch is kept for a grace
//!   period, so packets P still sends on it arrive (make-before-break);
//! - outbound: the SA me → P for my epoch is installed only once P's record acknowledges its
//!   SPI; until then the previous outbound SA stays in use. An outbound SA is never
//!   re-installed once it was installed and vanished: a new epoch is started instead.
//!
//! # Fail closed
//! Two catch-all block policies (UDP to the IPsec VXLAN port, any address, both directions)
//! always exist; per-peer ESP policies of higher precedence exist only while the SAs they
//! need do. A flow to or from a peer without SAs is blocked and counted, never sent in the
//! clear; a cleartext packet to the port is dropped on the way in.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::keys::{derive, Direction};
use super::xfrm::{Action, Dir, Observed, PolicySpec, SaId, SaSpec};
use super::Aead;
use crate::model::IpsecInfo;

/// This host, as the plan needs it.
#[derive(Clone, Debug)]
pub struct Me<'a> {
    pub id: &'a str,
    pub underlay: Ipv4Addr,
    pub epoch: u64,
    pub aead: Aead,
}

/// A live, admitted peer with IPsec, and the X25519 secret this host shares with it.
#[derive(Clone)]
pub struct Peer<'a> {
    pub id: &'a str,
    pub underlay: Ipv4Addr,
    pub info: &'a IpsecInfo,
    pub shared: [u8; 32],
}

#[derive(Clone, Debug)]
struct InSa {
    sa: SaSpec,
    /// When a newer epoch of the peer replaced it (unix seconds).
    retired: Option<u64>,
}

/// What this host remembers per peer between passes (keys only in memory).
#[derive(Clone, Debug, Default)]
struct PeerBook {
    inbound: Vec<InSa>,
    outbound: Option<SaSpec>,
    /// SPIs of outbound SAs installed by this process: never installed twice.
    used_out: BTreeSet<u32>,
}

/// Per-peer IPsec state for `rnet peers`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerIpsec {
    /// The AEAD of the pair.
    pub aead: Option<Aead>,
    /// The peer's sending epoch (what this host receives on).
    pub peer_epoch: Option<u64>,
    /// SPIs this host receives on from the peer (newest last).
    pub inbound_spis: Vec<u32>,
    /// The SPI this host sends on to the peer.
    pub outbound_spi: Option<u32>,
    /// Both ways have an SA.
    pub installed: bool,
    /// Why not, or what is in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The plan of one pass.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// SAs that must exist (installed if missing).
    pub sas: Vec<SaSpec>,
    /// SAs to leave alone although not in `sas` (a previous outbound SA still in use).
    pub keep: BTreeSet<SaId>,
    pub policies: BTreeSet<PolicySpec>,
    /// Per peer: the SPI to acknowledge once its inbound SA exists.
    pub acks: BTreeMap<String, (u32, SaId)>,
    pub peers: BTreeMap<String, PeerIpsec>,
    /// An outbound SA vanished from the kernel: start a new epoch (never re-add it).
    pub rotate: bool,
}

/// One kernel change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddSa(SaSpec),
    DelSa(SaId),
    AddPolicy(PolicySpec),
    DelPolicy(PolicySpec),
}

/// The AEAD two hosts use: AES-GCM only when both prefer it.
pub fn pair_aead(a: Aead, b: Aead) -> Aead {
    if a == Aead::AesGcm && b == Aead::AesGcm {
        Aead::AesGcm
    } else {
        Aead::ChaCha20Poly1305
    }
}

/// The SA `sender` → `receiver` in `sender`'s epoch.
fn sa(
    shared: &[u8; 32],
    (sender, src): (&str, Ipv4Addr),
    (receiver, dst): (&str, Ipv4Addr),
    epoch: u64,
    aead: Aead,
) -> SaSpec {
    let k = derive(
        shared,
        &Direction {
            sender,
            receiver,
            epoch,
            aead,
        },
    );
    SaSpec {
        src,
        dst,
        spi: k.spi,
        aead,
        key: k.key,
    }
}

/// The memory of every peer, and the planning pass.
#[derive(Clone, Debug, Default)]
pub struct Book {
    peers: BTreeMap<String, PeerBook>,
}

impl Book {
    /// Plan one pass at `now` (unix seconds); `grace` is how long a replaced inbound SA stays.
    pub fn plan(
        &mut self,
        now: u64,
        grace: u64,
        me: &Me<'_>,
        peers: &[Peer<'_>],
        seen: &Observed,
    ) -> Plan {
        let mut plan = Plan::default();
        plan.policies.insert(PolicySpec::block_all(Dir::In));
        plan.policies.insert(PolicySpec::block_all(Dir::Out));
        let live: BTreeSet<&str> = peers.iter().map(|p| p.id).collect();
        self.peers.retain(|id, _| live.contains(id.as_str()));
        for p in peers {
            let book = self.peers.entry(p.id.to_string()).or_default();
            let status = plan_peer(book, now, grace, me, p, seen, &mut plan);
            plan.peers.insert(p.id.to_string(), status);
        }
        plan
    }
}

fn plan_peer(
    book: &mut PeerBook,
    now: u64,
    grace: u64,
    me: &Me<'_>,
    p: &Peer<'_>,
    seen: &Observed,
    plan: &mut Plan,
) -> PeerIpsec {
    let aead = pair_aead(me.aead, p.info.aead);
    let here = (me.id, me.underlay);
    let there = (p.id, p.underlay);
    // Inbound: the peer's current epoch first; older ones for the grace period.
    let want_in = sa(&p.shared, there, here, p.info.epoch, aead);
    if !book.inbound.iter().any(|i| i.sa == want_in) {
        for old in book.inbound.iter_mut().filter(|i| i.retired.is_none()) {
            old.retired = Some(now);
        }
        book.inbound.push(InSa {
            sa: want_in.clone(),
            retired: None,
        });
    }
    book.inbound
        .retain(|i| i.retired.is_none_or(|t| now < t.saturating_add(grace)));
    plan.sas.extend(book.inbound.iter().map(|i| i.sa.clone()));
    plan.acks
        .insert(p.id.to_string(), (want_in.spi, want_in.id()));

    // Outbound: switch to my epoch's SA once the peer acknowledges it.
    let want_out = sa(&p.shared, here, there, me.epoch, aead);
    let acked = p.info.acks.get(me.id) == Some(&want_out.spi);
    let mut note = None;
    if let Some(cur) = &book.outbound {
        if !seen.sas.contains(&cur.id()) && book.used_out.contains(&cur.spi) {
            // Installed before and gone now: re-adding it would restart its sequence
            // numbers under the same key. A new epoch replaces it.
            note = Some(format!(
                "outbound SA {:#010x} vanished from the kernel; starting a new epoch",
                cur.spi
            ));
            plan.rotate = true;
            book.outbound = None;
        }
    }
    if acked && book.outbound.as_ref() != Some(&want_out) && !book.used_out.contains(&want_out.spi)
    {
        book.used_out.insert(want_out.spi);
        book.outbound = Some(want_out.clone());
    }
    match &book.outbound {
        Some(out) => plan.sas.push(out.clone()),
        // Not switched yet (e.g. just restarted): the SAs to the peer the kernel has stay.
        None => plan.keep.extend(
            seen.sas
                .iter()
                .filter(|s| s.src == me.underlay && s.dst == p.underlay),
        ),
    }
    let out_spi = book.outbound.as_ref().map(|s| s.spi).or_else(|| {
        plan.keep
            .iter()
            .find(|s| s.dst == p.underlay)
            .map(|s| s.spi)
    });
    if out_spi.is_some() {
        plan.policies.insert(esp(Dir::Out, me.underlay, p.underlay));
    }
    plan.policies.insert(esp(Dir::In, p.underlay, me.underlay));
    let installed = out_spi.is_some();
    if note.is_none() && !acked {
        note = Some(format!(
            "waiting for {} to acknowledge this host's epoch {} (SPI {:#010x})",
            p.id, me.epoch, want_out.spi
        ));
    }
    PeerIpsec {
        aead: Some(aead),
        peer_epoch: Some(p.info.epoch),
        inbound_spis: book.inbound.iter().map(|i| i.sa.spi).collect(),
        outbound_spi: out_spi,
        installed,
        note: if installed && acked { None } else { note },
    }
}

fn esp(dir: Dir, src: Ipv4Addr, dst: Ipv4Addr) -> PolicySpec {
    PolicySpec {
        dir,
        src: Some(src),
        dst: Some(dst),
        action: Action::Esp,
    }
}

/// The changes from `seen` to `plan`, in an order that never opens a cleartext path and
/// never drops what can be kept: inbound SAs, then outbound SAs, then policies; removals
/// last (policies before the SAs they used).
pub fn diff(plan: &Plan, seen: &Observed) -> Vec<Op> {
    let have_sa: BTreeSet<SaId> = seen.sas.iter().copied().collect();
    let want_sa: BTreeSet<SaId> = plan.sas.iter().map(|s| s.id()).collect();
    let mut ops: Vec<Op> = Vec::new();
    let mut adds: Vec<&SaSpec> = plan
        .sas
        .iter()
        .filter(|s| !have_sa.contains(&s.id()))
        .collect();
    adds.sort_by_key(|s| plan.acks.values().all(|(_, id)| *id != s.id()));
    adds.dedup_by_key(|s| s.id());
    ops.extend(adds.into_iter().cloned().map(Op::AddSa));
    let have_pol: BTreeSet<PolicySpec> = seen.policies.iter().copied().collect();
    // A policy with our selector but another action (a hand edit) is replaced.
    let selector = |p: &PolicySpec| (p.dir, p.src, p.dst);
    for p in plan.policies.iter().filter(|p| !have_pol.contains(p)) {
        if let Some(old) = seen.policies.iter().find(|o| selector(o) == selector(p)) {
            ops.push(Op::DelPolicy(*old));
        }
        ops.push(Op::AddPolicy(*p));
    }
    let wanted_sel: BTreeSet<_> = plan.policies.iter().map(selector).collect();
    ops.extend(
        seen.policies
            .iter()
            .filter(|p| !wanted_sel.contains(&selector(p)))
            .map(|p| Op::DelPolicy(*p)),
    );
    ops.extend(
        seen.sas
            .iter()
            .filter(|s| !want_sa.contains(s) && !plan.keep.contains(s))
            .map(|s| Op::DelSa(*s)),
    );
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const GRACE: u64 = 300;

    /// One simulated host: its book, epoch, published record and a fake kernel.
    struct Host {
        id: &'static str,
        addr: Ipv4Addr,
        epoch: u64,
        book: Book,
        kernel: Observed,
        info: IpsecInfo,
    }

    impl Host {
        fn new(id: &'static str, addr: Ipv4Addr, epoch: u64) -> Host {
            Host {
                id,
                addr,
                epoch,
                book: Book::default(),
                kernel: Observed::default(),
                info: IpsecInfo {
                    aead: Aead::AesGcm,
                    epoch,
                    acks: BTreeMap::new(),
                },
            }
        }

        /// One daemon pass against `peer`'s published record: plan, apply to the fake
        /// kernel, publish acks for inbound SAs now present.
        fn pass(&mut self, now: u64, peer: &Host) -> Plan {
            let me = Me {
                id: self.id,
                underlay: self.addr,
                epoch: self.epoch,
                aead: self.info.aead,
            };
            let peers = [Peer {
                id: peer.id,
                underlay: peer.addr,
                info: &peer.info,
                shared: [7; 32],
            }];
            let plan = self.book.plan(now, GRACE, &me, &peers, &self.kernel);
            for op in diff(&plan, &self.kernel) {
                match op {
                    Op::AddSa(s) => self.kernel.sas.push(s.id()),
                    Op::DelSa(s) => self.kernel.sas.retain(|x| *x != s),
                    Op::AddPolicy(p) => self.kernel.policies.push(p),
                    Op::DelPolicy(p) => self.kernel.policies.retain(|x| *x != p),
                }
            }
            self.kernel.sas.sort();
            self.kernel.policies.sort();
            self.info.epoch = self.epoch;
            self.info.acks = plan
                .acks
                .iter()
                .filter(|(_, (_, id))| self.kernel.sas.contains(id))
                .map(|(h, (spi, _))| (h.clone(), *spi))
                .collect();
            assert!(
                diff(
                    &self.book.plan(now, GRACE, &me, &peers, &self.kernel),
                    &self.kernel
                )
                .is_empty(),
                "a second pass changes nothing"
            );
            plan
        }

        fn out_sa(&self, to: Ipv4Addr) -> Vec<SaId> {
            self.kernel
                .sas
                .iter()
                .filter(|s| s.src == self.addr && s.dst == to)
                .copied()
                .collect()
        }

        fn in_sa(&self, from: Ipv4Addr) -> Vec<SaId> {
            self.kernel
                .sas
                .iter()
                .filter(|s| s.dst == self.addr && s.src == from)
                .copied()
                .collect()
        }
    }

    /// Every packet `from` can send reaches `to`: each outbound SA has a matching inbound.
    fn delivers(from: &Host, to: &Host) -> bool {
        let outs = from.out_sa(to.addr);
        !outs.is_empty() && outs.iter().all(|o| to.in_sa(from.addr).contains(o))
    }

    #[test]
    fn two_hosts_come_up_blocked_first_then_encrypted() {
        let (mut a, mut b) = (Host::new("h1", A, 10), Host::new("h2", B, 20));
        a.pass(0, &b);
        // Only inbound so far: nothing acknowledged, so no outbound SA and no out policy,
        // while the catch-all blocks exist from the first pass.
        assert!(a.out_sa(B).is_empty());
        assert!(a.kernel.policies.contains(&PolicySpec::block_all(Dir::Out)));
        assert!(a.kernel.policies.contains(&PolicySpec::block_all(Dir::In)));
        assert!(!a
            .kernel
            .policies
            .iter()
            .any(|p| p.dir == Dir::Out && p.action == Action::Esp));
        b.pass(0, &a);
        a.pass(1, &b);
        b.pass(1, &a);
        assert!(delivers(&a, &b) && delivers(&b, &a));
        let st = &a.pass(2, &b).peers["h2"];
        assert!(st.installed && st.note.is_none(), "{st:?}");
        assert!(a.kernel.policies.contains(&esp(Dir::Out, A, B)));
        // Both ends derived the same SPIs.
        assert_eq!(a.out_sa(B), b.in_sa(A));
    }

    #[test]
    fn rotation_is_make_before_break_in_every_interleaving() {
        let (mut a, mut b) = (Host::new("h1", A, 10), Host::new("h2", B, 20));
        for t in 0..3 {
            a.pass(t, &b);
            b.pass(t, &a);
        }
        let old = a.out_sa(B);
        a.epoch = 11; // a rotates
                      // a passes several times before b notices: it keeps sending on the old SA.
        for t in 10..13 {
            a.pass(t, &b);
            assert_eq!(a.out_sa(B), old);
            assert!(delivers(&a, &b));
        }
        b.pass(13, &a); // b installs the new inbound, keeps the old, acknowledges
        assert_eq!(b.in_sa(A).len(), 2);
        assert!(delivers(&a, &b));
        a.pass(14, &b); // a switches
        assert_ne!(a.out_sa(B), old);
        assert_eq!(a.out_sa(B).len(), 1);
        assert!(delivers(&a, &b));
        // The old inbound goes only after the grace period.
        b.pass(13 + GRACE - 1, &a);
        assert_eq!(b.in_sa(A).len(), 2);
        b.pass(13 + GRACE, &a);
        assert_eq!(b.in_sa(A).len(), 1);
        assert!(delivers(&a, &b) && delivers(&b, &a));
    }

    #[test]
    fn a_restarted_sender_keeps_its_old_sa_until_the_new_one_is_acknowledged() {
        let (mut a, mut b) = (Host::new("h1", A, 10), Host::new("h2", B, 20));
        for t in 0..3 {
            a.pass(t, &b);
            b.pass(t, &a);
        }
        let old = a.out_sa(B);
        // A restart: memory gone, kernel kept, a new epoch.
        a.book = Book::default();
        a.epoch = 12;
        a.pass(5, &b);
        assert_eq!(
            a.out_sa(B),
            old,
            "the kernel's outbound SA is kept, not re-derived"
        );
        assert!(delivers(&a, &b));
        b.pass(6, &a);
        a.pass(7, &b);
        assert_ne!(a.out_sa(B), old);
        assert!(delivers(&a, &b));
    }

    #[test]
    fn a_vanished_outbound_sa_is_never_re_added() {
        let (mut a, mut b) = (Host::new("h1", A, 10), Host::new("h2", B, 20));
        for t in 0..3 {
            a.pass(t, &b);
            b.pass(t, &a);
        }
        let out = a.out_sa(B)[0];
        a.kernel.sas.retain(|s| *s != out);
        let me = Me {
            id: "h1",
            underlay: A,
            epoch: 10,
            aead: Aead::AesGcm,
        };
        let peers = [Peer {
            id: "h2",
            underlay: B,
            info: &b.info,
            shared: [7; 32],
        }];
        let plan = a.book.plan(4, GRACE, &me, &peers, &a.kernel);
        assert!(plan.rotate);
        assert!(!diff(&plan, &a.kernel)
            .iter()
            .any(|o| matches!(o, Op::AddSa(s) if s.id() == out)));
        assert!(plan.peers["h2"]
            .note
            .as_deref()
            .unwrap()
            .contains("vanished"));
    }

    #[test]
    fn a_gone_peer_loses_its_sas_and_policies_but_not_the_blocks() {
        let (mut a, mut b) = (Host::new("h1", A, 10), Host::new("h2", B, 20));
        for t in 0..3 {
            a.pass(t, &b);
            b.pass(t, &a);
        }
        let me = Me {
            id: "h1",
            underlay: A,
            epoch: 10,
            aead: Aead::AesGcm,
        };
        let plan = a.book.plan(5, GRACE, &me, &[], &a.kernel);
        let ops = diff(&plan, &a.kernel);
        assert_eq!(ops.iter().filter(|o| matches!(o, Op::DelSa(_))).count(), 2);
        assert_eq!(
            ops.iter().filter(|o| matches!(o, Op::DelPolicy(_))).count(),
            2
        );
        // Policies go before the SAs they use.
        let first_sa = ops.iter().position(|o| matches!(o, Op::DelSa(_))).unwrap();
        assert!(ops[..first_sa]
            .iter()
            .all(|o| matches!(o, Op::DelPolicy(_))));
        assert_eq!(plan.policies.len(), 2);
    }

    #[test]
    fn a_host_without_aes_instructions_makes_the_pair_use_chacha_on_both_ends() {
        let (mut a, mut b) = (Host::new("h1", A, 10), Host::new("h2", B, 20));
        b.info.aead = Aead::ChaCha20Poly1305;
        for t in 0..3 {
            a.pass(t, &b);
            b.pass(t, &a);
        }
        assert!(delivers(&a, &b) && delivers(&b, &a));
        let st = &a.pass(4, &b).peers["h2"];
        assert_eq!(st.aead, Some(Aead::ChaCha20Poly1305));
        assert_eq!(b.pass(4, &a).peers["h1"].aead, Some(Aead::ChaCha20Poly1305));
    }

    #[test]
    fn a_forged_acknowledgement_never_opens_an_outbound_sa() {
        let (mut a, mut b) = (Host::new("h1", A, 10), Host::new("h2", B, 20));
        b.pass(0, &a);
        // A store writer claims h2 acknowledged some SPI: h1 sends nothing, stays blocked.
        b.info.acks.insert("h1".into(), 0x4242_4242);
        let st = a.pass(1, &b).peers["h2"].clone();
        assert!(a.out_sa(B).is_empty());
        assert!(!st.installed);
        assert!(st.note.unwrap().contains("waiting for h2 to acknowledge"));
        assert!(!a
            .kernel
            .policies
            .iter()
            .any(|p| p.dir == Dir::Out && p.action == Action::Esp));
    }

    #[test]
    fn aead_is_gcm_only_when_both_prefer_it() {
        assert_eq!(pair_aead(Aead::AesGcm, Aead::AesGcm), Aead::AesGcm);
        assert_eq!(
            pair_aead(Aead::AesGcm, Aead::ChaCha20Poly1305),
            Aead::ChaCha20Poly1305
        );
        assert_eq!(
            pair_aead(Aead::ChaCha20Poly1305, Aead::AesGcm),
            Aead::ChaCha20Poly1305
        );
    }
}
