//! Our rules as nftnl objects: the table's chains and one rule per `Rule`, with the two
//! expressions the nftnl crate lacks (`fib daddr type local`, `dnat to`).

use std::ffi::CString;
use std::ptr::NonNull;

use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Conntrack, ConntrackStatus, Expression, Immediate, InterfaceName,
    Masquerade, Meta, Payload, Register, TcpHeaderField, TransportHeaderField, UdpHeaderField,
    Verdict,
};
use nftnl::nftnl_sys::{self as sys, libc};
use nftnl::{Chain as NftChain, ChainType, Hook, Policy};

use super::{NftError, Result};
use crate::model::Proto;
use crate::nat::{Chain, Rule, UPLINK_PREFIX};

/// The chains of the table, in `Chain::ALL` order.
pub(super) fn chains(table: &nftnl::Table) -> Vec<NftChain<'_>> {
    Chain::ALL
        .iter()
        .map(|c| {
            let mut chain = NftChain::new(CString::new(c.name()).expect("no NUL"), table);
            let (hook, kind, prio) = match c {
                Chain::Prerouting => (Hook::PreRouting, ChainType::Nat, -100),
                Chain::Output => (Hook::Out, ChainType::Nat, -100),
                Chain::Postrouting => (Hook::PostRouting, ChainType::Nat, 100),
                Chain::Forward => (Hook::Forward, ChainType::Filter, 0),
            };
            chain.set_hook(hook, prio);
            chain.set_type(kind);
            chain.set_policy(Policy::Accept);
            chain
        })
        .collect()
}

/// `fib daddr type local`: the destination is one of this namespace's addresses.
struct FibDaddrLocal;

impl Expression for FibDaddrLocal {
    fn to_expr(&self, _rule: &nftnl::Rule) -> NonNull<sys::nftnl_expr> {
        // NFT_FIB_RESULT_ADDRTYPE and NFTA_FIB_F_DADDR (linux/netfilter/nf_tables.h).
        const RESULT_ADDRTYPE: u32 = 3;
        const FLAG_DADDR: u32 = 1 << 1;
        // SAFETY: a fresh expression of a kind libnftnl knows, set through its own setters.
        unsafe {
            let e =
                NonNull::new(sys::nftnl_expr_alloc(c"fib".as_ptr())).expect("libnftnl allocation");
            sys::nftnl_expr_set_u32(
                e.as_ptr(),
                sys::NFTNL_EXPR_FIB_DREG as u16,
                libc::NFT_REG_1 as u32,
            );
            sys::nftnl_expr_set_u32(
                e.as_ptr(),
                sys::NFTNL_EXPR_FIB_RESULT as u16,
                RESULT_ADDRTYPE,
            );
            sys::nftnl_expr_set_u32(e.as_ptr(), sys::NFTNL_EXPR_FIB_FLAGS as u16, FLAG_DADDR);
            e
        }
    }
}

/// `dnat ip to reg1:reg2`, with the range ends and flags the kernel itself reports back
/// (nftnl's `Nat` leaves them out, so a read-back would never match it).
struct DnatTo;

impl Expression for DnatTo {
    fn to_expr(&self, _rule: &nftnl::Rule) -> NonNull<sys::nftnl_expr> {
        // NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED (linux/netfilter/nf_nat.h).
        const FLAGS: u32 = 0x1 | 0x2;
        let (r1, r2) = (libc::NFT_REG_1 as u32, libc::NFT_REG_2 as u32);
        // SAFETY: as for `FibDaddrLocal`.
        unsafe {
            let e =
                NonNull::new(sys::nftnl_expr_alloc(c"nat".as_ptr())).expect("libnftnl allocation");
            let set = |attr: u32, v: u32| sys::nftnl_expr_set_u32(e.as_ptr(), attr as u16, v);
            set(sys::NFTNL_EXPR_NAT_TYPE, libc::NFT_NAT_DNAT as u32);
            set(sys::NFTNL_EXPR_NAT_FAMILY, libc::NFPROTO_IPV4 as u32);
            set(sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, r1);
            set(sys::NFTNL_EXPR_NAT_REG_ADDR_MAX, r1);
            set(sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, r2);
            set(sys::NFTNL_EXPR_NAT_REG_PROTO_MAX, r2);
            set(sys::NFTNL_EXPR_NAT_FLAGS, FLAGS);
            e
        }
    }
}

fn uplinks() -> InterfaceName {
    InterfaceName::StartingWith(CString::new(UPLINK_PREFIX).expect("no NUL"))
}

/// The nftnl rule for one of ours.
pub(super) fn build<'a>(rule: &Rule, chain: &'a NftChain<'a>) -> Result<nftnl::Rule<'a>> {
    let mut r = nftnl::Rule::new(chain);
    let comment =
        CString::new(comment_text(rule)).map_err(|e| NftError::Malformed(e.to_string()))?;
    r.set_comment(&comment)
        .map_err(|e| NftError::Malformed(format!("{e}: {comment:?}")))?;
    match rule {
        Rule::Masquerade { subnet, .. } => {
            r.add_expr(&Payload::Network(nftnl::expr::NetworkHeaderField::Ipv4(
                nftnl::expr::Ipv4HeaderField::Saddr,
            )));
            r.add_expr(&Bitwise::new(subnet.mask(), 0u32));
            r.add_expr(&Cmp::new(CmpOp::Eq, subnet.network()));
            r.add_expr(&Meta::OifName);
            r.add_expr(&Cmp::new(CmpOp::Neq, uplinks()));
            r.add_expr(&Masquerade);
        }
        Rule::Dnat {
            proto,
            host_ip,
            host_port,
            to,
            to_port,
            ..
        } => {
            match host_ip {
                Some(ip) => {
                    r.add_expr(&Payload::Network(nftnl::expr::NetworkHeaderField::Ipv4(
                        nftnl::expr::Ipv4HeaderField::Daddr,
                    )));
                    r.add_expr(&Cmp::new(CmpOp::Eq, *ip));
                }
                None => {
                    r.add_expr(&FibDaddrLocal);
                    r.add_expr(&Cmp::new(CmpOp::Eq, libc::RTN_LOCAL as u32));
                }
            }
            r.add_expr(&Meta::L4Proto);
            r.add_expr(&Cmp::new(CmpOp::Eq, proto.number()));
            r.add_expr(&Payload::Transport(match proto {
                Proto::Tcp => TransportHeaderField::Tcp(TcpHeaderField::Dport),
                Proto::Udp => TransportHeaderField::Udp(UdpHeaderField::Dport),
            }));
            let port = host_port.to_be_bytes();
            r.add_expr(&Cmp::new(CmpOp::Eq, &port[..]));
            r.add_expr(&Immediate::new(to.octets(), Register::Reg1));
            r.add_expr(&Immediate::new(to_port.to_be_bytes(), Register::Reg2));
            r.add_expr(&DnatTo);
        }
        Rule::AcceptPublished | Rule::Isolate => {
            r.add_expr(&Meta::IifName);
            r.add_expr(&Cmp::new(CmpOp::Eq, uplinks()));
            r.add_expr(&Meta::OifName);
            r.add_expr(&Cmp::new(CmpOp::Eq, uplinks()));
            if *rule == Rule::AcceptPublished {
                r.add_expr(&Conntrack::Status);
                r.add_expr(&Bitwise::new(ConntrackStatus::DST_NAT.bits(), 0u32));
                r.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
                r.add_expr(&Verdict::Accept);
            } else {
                r.add_expr(&Verdict::Drop);
            }
        }
    }
    Ok(r)
}

/// A rule's comment, cut to what fits libnftnl's 128-byte user data (2 header bytes, NUL).
pub(super) fn comment_text(rule: &Rule) -> String {
    let mut s = rule.to_string();
    let mut end = s.len().min(125);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}
