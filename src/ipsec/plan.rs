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
use super::xfrm::{key_tag, Action, Dir, Observed, PolicySpec, SaId, SaSpec};
use super::Aead;
use crate::model::IpsecInfo;
use netlink_packet_xfrm::Replay;

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
    /// The SA exists with another key (changed behind rnet's back): put the derived key
    /// back, carrying the kernel's sequence numbers over so none is used twice.
    ReplaceSa(SaSpec, Replay),
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
    /// Per peer, SPIs of outbound SAs installed by this process: never installed twice.
    /// Kept when a peer goes away: if it comes back acknowledging the same epoch, the SA
    /// would restart its sequence numbers under the same key (AES-GCM nonce reuse).
    used_out: BTreeMap<String, BTreeSet<u32>>,
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
            let used = self.used_out.entry(p.id.to_string()).or_default();
            let status = plan_peer(book, used, now, grace, me, p, seen, &mut plan);
            plan.peers.insert(p.id.to_string(), status);
        }
        plan
    }
}

#[allow(clippy::too_many_arguments)]
fn plan_peer(
    book: &mut PeerBook,
    used_out: &mut BTreeSet<u32>,
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
        if !seen.sas.contains(&cur.id()) && used_out.contains(&cur.spi) {
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
    if acked && book.outbound.as_ref() != Some(&want_out) {
        if used_out.contains(&want_out.spi) {
            // Used before (the peer went away and came back on this host's epoch): only
            // a new epoch gives a fresh key.
            note.get_or_insert_with(|| {
                format!(
                    "outbound SA {:#010x} was used before; starting a new epoch",
                    want_out.spi
                )
            });
            plan.rotate = true;
        } else {
            used_out.insert(want_out.spi);
            book.outbound = Some(want_out.clone());
        }
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
    let mut seen_replace = BTreeSet::new();
    for s in &plan.sas {
        if let Some(st) = seen.states.get(&s.id()) {
            if st.key_tag != key_tag(&s.key) && seen_replace.insert(s.id()) {
                ops.push(Op::ReplaceSa(s.clone(), st.replay));
            }
        }
    }
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
#[path = "plan_tests.rs"]
mod tests;
