//! The plan's tests: two simulated hosts with fake kernels, pass by pass.
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
                Op::ReplaceSa(..) => {}
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
fn a_peer_that_comes_back_on_this_hosts_epoch_never_gets_an_outbound_sa_twice() {
    let (mut a, mut b) = (Host::new("h1", A, 10), Host::new("h2", B, 20));
    for t in 0..3 {
        a.pass(t, &b);
        b.pass(t, &a);
    }
    let out = a.out_sa(B)[0];
    // h2's daemon dies: its presence expires and h1 removes everything of h2's.
    let me = Me {
        id: "h1",
        underlay: A,
        epoch: 10,
        aead: Aead::AesGcm,
    };
    let plan = a.book.plan(4, GRACE, &me, &[], &a.kernel);
    for op in diff(&plan, &a.kernel) {
        if let Op::DelSa(s) = op {
            a.kernel.sas.retain(|x| *x != s);
        }
    }
    assert!(a.out_sa(B).is_empty());
    // h2 restarts on a new epoch and acknowledges h1's epoch, whose SPI it derives again.
    let mut b2 = Host::new("h2", B, 30);
    b2.pass(5, &a);
    assert_eq!(b2.info.acks.get("h1"), Some(&out.spi));
    let peers = [Peer {
        id: "h2",
        underlay: B,
        info: &b2.info,
        shared: [7; 32],
    }];
    let plan = a.book.plan(6, GRACE, &me, &peers, &a.kernel);
    assert!(plan.rotate, "a used outbound SA must start a new epoch");
    assert!(
        !diff(&plan, &a.kernel)
            .iter()
            .any(|o| matches!(o, Op::AddSa(s) if s.id() == out)),
        "outbound SA {out:?} installed twice"
    );
}

#[test]
fn an_sa_whose_key_changed_is_replaced_with_its_sequence_numbers() {
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
    let peers = [Peer {
        id: "h2",
        underlay: B,
        info: &b.info,
        shared: [7; 32],
    }];
    let plan = a.book.plan(4, GRACE, &me, &peers, &a.kernel);
    let inbound = plan.sas.iter().find(|s| s.dst == A).unwrap().clone();
    let replay = netlink_packet_xfrm::Replay {
        oseq: 0,
        seq: 77,
        bitmap: 1,
    };
    let mut kernel = a.kernel.clone();
    kernel.states.insert(
        inbound.id(),
        crate::ipsec::xfrm::SaState {
            key_tag: key_tag(&inbound.key),
            replay,
        },
    );
    assert!(
        diff(&plan, &kernel).is_empty(),
        "the right key is left alone"
    );
    kernel.states.get_mut(&inbound.id()).unwrap().key_tag ^= 1;
    assert_eq!(
        diff(&plan, &kernel),
        vec![Op::ReplaceSa(inbound.clone(), replay)]
    );
    assert_eq!(
        crate::ipsec::describe(&Op::ReplaceSa(inbound, replay)).1,
        "key differs from the derived one"
    );
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
