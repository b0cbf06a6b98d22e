//! XFRM netlink: the few messages rnet sends (add/delete an ESP SA, add/delete a policy,
//! dump both), built with `netlink-packet-xfrm`; the client that sends them is `client`.
//!
//! The builders are pure and unit-tested against the bytes `ip xfrm` sends for the same
//! objects (captured with strace). Every SA and policy rnet makes selects UDP to [`IPSEC_VXLAN_PORT`] and
//! every SA carries [`REQID`], so a dump tells rnet's objects from anyone else's.

use std::net::Ipv4Addr;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_xfrm::{
    constants::*, policy, state, Address, AlgAead, Id, LifetimeConfig, Selector, UserPolicyId,
    UserPolicyInfo, UserSaId, UserSaInfo, UserTemplate, XfrmAttrs, XfrmMessage,
};

pub use super::client::{key_tag, Observed, SaState, Xfrm, XfrmError};
use super::keys::KEY_LEN;
use super::Aead;
use crate::model::IPSEC_VXLAN_PORT;

/// The request id of every SA rnet installs and of its policies' templates.
pub const REQID: u32 = 0x726e_6574; // "rnet"
/// Priority of the per-peer ESP policies (lower wins).
pub const PEER_PRIORITY: u32 = 100;
/// Priority of the catch-all block policies: whatever no peer policy claims is dropped.
pub const BLOCK_PRIORITY: u32 = 1000;
/// Replay window of inbound SAs, in packets (the legacy bitmap holds 32).
const REPLAY_WINDOW: u8 = 32;
const ICV_BITS: u32 = 128;
pub(super) const IPPROTO_UDP_U8: u8 = 17;
pub(super) const IPPROTO_ESP_U8: u8 = 50;
const XFRM_INF: u64 = u64::MAX;

/// An ESP SA in transport mode for the VXLAN flow `src` → `dst`. `Debug` hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SaSpec {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub spi: u32,
    pub aead: Aead,
    pub key: [u8; KEY_LEN],
}

impl std::fmt::Debug for SaSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SA {} -> {} spi {:#010x} {}",
            self.src,
            self.dst,
            self.spi,
            self.aead.kernel_name()
        )
    }
}

/// An SA as a dump shows it (no key: rnet compares by address and SPI).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SaId {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub spi: u32,
}

impl SaSpec {
    pub fn id(&self) -> SaId {
        SaId {
            src: self.src,
            dst: self.dst,
            spi: self.spi,
        }
    }
}

/// Which way a policy looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    In,
    Out,
}

/// What a policy does with the flows it selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Must travel in ESP between the selector's two hosts.
    Esp,
    /// Dropped (counted in /proc/net/xfrm_stat as XfrmOutPolBlock / XfrmInPolBlock).
    Block,
}

/// A policy on UDP to the IPsec VXLAN port. `None` addresses mean any (a /0 selector).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicySpec {
    pub dir: Dir,
    pub src: Option<Ipv4Addr>,
    pub dst: Option<Ipv4Addr>,
    pub action: Action,
}

impl PolicySpec {
    /// The catch-all block policy of one direction.
    pub fn block_all(dir: Dir) -> PolicySpec {
        PolicySpec {
            dir,
            src: None,
            dst: None,
            action: Action::Block,
        }
    }

    fn priority(&self) -> u32 {
        match self.action {
            Action::Esp => PEER_PRIORITY,
            Action::Block => BLOCK_PRIORITY,
        }
    }
}

fn addr(a: Option<Ipv4Addr>) -> (Address, u8) {
    match a {
        Some(a) => (Address::from_ipv4(&a), 32),
        None => (Address::default(), 0),
    }
}

fn selector(src: Option<Ipv4Addr>, dst: Option<Ipv4Addr>) -> Selector {
    let (saddr, prefixlen_s) = addr(src);
    let (daddr, prefixlen_d) = addr(dst);
    Selector {
        daddr,
        saddr,
        dport: IPSEC_VXLAN_PORT,
        dport_mask: 0xffff,
        family: AF_INET,
        prefixlen_d,
        prefixlen_s,
        proto: IPPROTO_UDP_U8,
        ..Default::default()
    }
}

fn infinite() -> LifetimeConfig {
    LifetimeConfig {
        soft_byte_limit: XFRM_INF,
        hard_byte_limit: XFRM_INF,
        soft_packet_limit: XFRM_INF,
        hard_packet_limit: XFRM_INF,
        ..Default::default()
    }
}

fn aead_attr(aead: Aead, key: &[u8]) -> XfrmAttrs {
    let mut alg_name = [0u8; 64];
    let name = aead.kernel_name().as_bytes();
    alg_name[..name.len()].copy_from_slice(name);
    XfrmAttrs::EncryptionAlgAead(AlgAead {
        alg_name,
        alg_key_len: (key.len() * 8) as u32,
        alg_icv_len: ICV_BITS,
        alg_key: key.to_vec(),
    })
}

/// `ip xfrm state add src S dst D proto esp spi SPI reqid REQID mode transport
/// replay-window 32 sel src S/32 dst D/32 proto udp dport 4799 aead ALG KEY 128`.
pub fn add_sa(sa: &SaSpec) -> XfrmMessage {
    add_sa_with_key(sa.src, sa.dst, sa.spi, sa.aead, &sa.key)
}

fn add_sa_with_key(src: Ipv4Addr, dst: Ipv4Addr, spi: u32, aead: Aead, key: &[u8]) -> XfrmMessage {
    let info = UserSaInfo {
        selector: selector(Some(src), Some(dst)),
        id: Id {
            daddr: Address::from_ipv4(&dst),
            spi,
            proto: IPPROTO_ESP_U8,
        },
        saddr: Address::from_ipv4(&src),
        lifetime_cfg: infinite(),
        reqid: REQID,
        family: AF_INET,
        mode: XFRM_MODE_TRANSPORT,
        replay_window: REPLAY_WINDOW,
        ..Default::default()
    };
    XfrmMessage::AddSa(state::ModifyMessage {
        user_sa_info: info,
        nlas: vec![aead_attr(aead, key)],
    })
}

/// As [`add_sa`], starting from the sequence numbers of `replay` (a replaced SA's).
pub fn add_sa_with_replay(sa: &SaSpec, replay: netlink_packet_xfrm::Replay) -> XfrmMessage {
    let mut msg = add_sa(sa);
    if let XfrmMessage::AddSa(m) = &mut msg {
        m.nlas.push(XfrmAttrs::ReplayState(replay));
    }
    msg
}

/// `ip xfrm state add ... proto esp spi 0x1ff mode transport enc cipher_null ""`: an SA
/// with the algorithm every kernel has, to tell "no ESP" from "no AEAD" (see `probe`).
pub fn probe_null_sa() -> XfrmMessage {
    let mut msg = add_sa_with_key(
        Ipv4Addr::new(198, 18, 0, 1),
        Ipv4Addr::new(198, 18, 0, 2),
        0x1ff,
        Aead::AesGcm,
        &[],
    );
    if let XfrmMessage::AddSa(m) = &mut msg {
        let mut alg_name = [0u8; 64];
        alg_name[..11].copy_from_slice(b"cipher_null");
        m.nlas = vec![XfrmAttrs::EncryptionAlg(netlink_packet_xfrm::Alg {
            alg_name,
            alg_key_len: 0,
            alg_key: vec![],
        })];
    }
    msg
}

/// `ip xfrm state del src S dst D proto esp spi SPI`.
pub fn del_sa(id: &SaId) -> XfrmMessage {
    XfrmMessage::DeleteSa(state::DelGetMessage {
        user_sa_id: UserSaId {
            daddr: Address::from_ipv4(&id.dst),
            spi: id.spi,
            family: AF_INET,
            proto: IPPROTO_ESP_U8,
        },
        nlas: vec![XfrmAttrs::SrcAddr(Address::from_ipv4(&id.src))],
    })
}

fn dir_u8(d: Dir) -> u8 {
    match d {
        Dir::In => XFRM_POLICY_IN,
        Dir::Out => XFRM_POLICY_OUT,
    }
}

/// `ip xfrm policy add src S/32 dst D/32 proto udp dport 4799 dir DIR priority 100 tmpl
/// src S dst D proto esp reqid REQID mode transport`, or for a block policy
/// `... priority 1000 action block` (no template).
pub fn add_policy(p: &PolicySpec) -> XfrmMessage {
    let info = UserPolicyInfo {
        selector: selector(p.src, p.dst),
        lifetime_cfg: infinite(),
        priority: p.priority(),
        direction: dir_u8(p.dir),
        action: match p.action {
            Action::Esp => XFRM_POLICY_ALLOW,
            Action::Block => XFRM_POLICY_BLOCK,
        },
        share: XFRM_SHARE_ANY,
        ..Default::default()
    };
    let nlas = match (p.action, p.src, p.dst) {
        (Action::Esp, Some(src), Some(dst)) => vec![XfrmAttrs::Template(vec![UserTemplate {
            id: Id {
                daddr: Address::from_ipv4(&dst),
                spi: 0,
                proto: IPPROTO_ESP_U8,
            },
            family: AF_INET,
            saddr: Address::from_ipv4(&src),
            reqid: REQID,
            mode: XFRM_MODE_TRANSPORT,
            share: XFRM_SHARE_ANY,
            aalgos: u32::MAX,
            ealgos: u32::MAX,
            calgos: u32::MAX,
            ..Default::default()
        }])],
        _ => vec![],
    };
    XfrmMessage::AddPolicy(policy::ModifyMessage {
        user_policy_info: info,
        nlas,
    })
}

/// `ip xfrm policy del src S dst D proto udp dport 4799 dir DIR`.
pub fn del_policy(p: &PolicySpec) -> XfrmMessage {
    XfrmMessage::DeletePolicy(policy::DelGetMessage {
        user_policy_id: UserPolicyId {
            selector: selector(p.src, p.dst),
            index: 0,
            direction: dir_u8(p.dir),
        },
        nlas: vec![],
    })
}

/// The netlink bytes of `msg` as a request with `flags`.
pub fn encode(msg: XfrmMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = flags;
    hdr.sequence_number = seq;
    let mut nl = NetlinkMessage::new(hdr, NetlinkPayload::InnerMessage(msg));
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Our message's payload (after the 16-byte netlink header) and its type.
    fn payload(msg: XfrmMessage) -> (u16, Vec<u8>) {
        let ty = msg.message_type();
        let buf = encode(msg, NLM_F_REQUEST | NLM_F_ACK, 1);
        assert_eq!(
            u32::from_ne_bytes(buf[..4].try_into().unwrap()) as usize,
            buf.len()
        );
        (ty, buf[16..].to_vec())
    }

    const H1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const H2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    #[test]
    fn sa_add_matches_ip_xfrm() {
        // strace of: ip xfrm state add src 198.18.0.1 dst 198.18.0.2 proto esp
        // spi 0x12345678 reqid 0x726e6574 mode transport replay-window 32
        // sel src 198.18.0.1/32 dst 198.18.0.2/32 proto udp dport 4799
        // aead 'rfc4106(gcm(aes))' 0x00010203..2223 128
        let key: Vec<u8> = (0..36).collect();
        let sa = SaSpec {
            src: H1,
            dst: H2,
            spi: 0x1234_5678,
            aead: Aead::AesGcm,
            key: key.try_into().unwrap(),
        };
        assert_eq!(payload(add_sa(&sa)), (XFRM_MSG_NEWSA, hex(IP_SA_ADD)));
        assert!(!format!("{sa:?}").contains("0, 1, 2"), "Debug shows no key");
    }

    #[test]
    fn sa_del_matches_ip_xfrm() {
        // ip xfrm state del src 198.18.0.1 dst 198.18.0.2 proto esp spi 0x12345678
        let id = SaId {
            src: H1,
            dst: H2,
            spi: 0x1234_5678,
        };
        assert_eq!(payload(del_sa(&id)), (XFRM_MSG_DELSA, hex(IP_SA_DEL)));
    }

    #[test]
    fn policies_match_ip_xfrm() {
        // ip xfrm policy add src 198.18.0.1/32 dst 198.18.0.2/32 proto udp dport 4799
        // dir out priority 100 tmpl src 198.18.0.1 dst 198.18.0.2 proto esp
        // reqid 0x726e6574 mode transport
        let esp = PolicySpec {
            dir: Dir::Out,
            src: Some(H1),
            dst: Some(H2),
            action: Action::Esp,
        };
        assert_eq!(
            payload(add_policy(&esp)),
            (XFRM_MSG_NEWPOLICY, hex(IP_POL_ADD))
        );
        // ip xfrm policy add src 0.0.0.0/0 dst 0.0.0.0/0 proto udp dport 4799 dir in
        // priority 1000 action block
        assert_eq!(
            payload(add_policy(&PolicySpec::block_all(Dir::In))),
            (XFRM_MSG_NEWPOLICY, hex(IP_BLOCK_ADD))
        );
        // ip xfrm policy del src 198.18.0.1/32 dst 198.18.0.2/32 proto udp dport 4799 dir out
        assert_eq!(
            payload(del_policy(&esp)),
            (XFRM_MSG_DELPOLICY, hex(IP_POL_DEL))
        );
    }

    const IP_SA_ADD: &str = concat!(
        "c6120002000000000000000000000000c612000100000000000000000000000012bfffff00000000",
        "02002020110000000000000000000000c61200020000000000000000000000001234567832000000",
        "c6120001000000000000000000000000ffffffffffffffffffffffffffffffffffffffffffffffff",
        "ffffffffffffffff0000000000000000000000000000000000000000000000000000000000000000",
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000074656e7202000020000000000000000070001200726663343130362867636d28",
        "61657329290000000000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000002001000080000000000102030405060708090a0b0c0d0e0f10111213",
        "1415161718191a1b1c1d1e1f20212223",
    );

    const IP_SA_DEL: &str = concat!(
        "c6120002000000000000000000000000123456780200320014000d00c61200010000000000000000",
        "00000000",
    );

    const IP_POL_ADD: &str = concat!(
        "c6120002000000000000000000000000c612000100000000000000000000000012bfffff00000000",
        "02002020110000000000000000000000ffffffffffffffffffffffffffffffffffffffffffffffff",
        "ffffffffffffffff0000000000000000000000000000000000000000000000000000000000000000",
        "00000000000000000000000000000000000000000000000000000000000000006400000000000000",
        "010000000000000044000500c6120002000000000000000000000000000000003200000002000000",
        "c612000100000000000000000000000074656e7200000000ffffffffffffffffffffffff",
    );

    const IP_BLOCK_ADD: &str = concat!(
        "000000000000000000000000000000000000000000000000000000000000000012bfffff00000000",
        "02000000110000000000000000000000ffffffffffffffffffffffffffffffffffffffffffffffff",
        "ffffffffffffffff0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000e803000000000000",
        "0001000000000000",
    );

    const IP_POL_DEL: &str = concat!(
        "c6120002000000000000000000000000c612000100000000000000000000000012bfffff00000000",
        "020020201100000000000000000000000000000001000000",
    );
}
