//! The `ip rnet` table in the kernel, through libnftnl (the `nftnl` crate) over a netfilter
//! netlink socket of the calling thread's namespace. Blocking: call it off the async workers.
//!
//! Programming replaces the whole table in one batch (add, delete, add, chains, rules): the
//! kernel applies a batch atomically, so no packet ever sees half a table. Reading back dumps
//! the table's rules and renders each expression with libnftnl's own printer; a desired rule is
//! rendered the same way after a round trip through the same message encoding, so the audit
//! compares like with like.

use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::ptr::NonNull;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Conntrack, ConntrackStatus, Expression, Immediate, InterfaceName,
    Masquerade, Meta, Payload, Register, TcpHeaderField, TransportHeaderField, UdpHeaderField,
    Verdict,
};
use nftnl::nftnl_sys::{self as sys, libc};
use nftnl::{Batch, Chain as NftChain, ChainType, Hook, MsgType, NlMsg, Policy, ProtoFamily};

use super::{Chain, Rule, RuleImage, Ruleset, TABLE, UPLINK_PREFIX};
use crate::model::Proto;

/// What went wrong talking to nf_tables.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nftables netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("nftables refused {what}: {source}")]
    Refused {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("nftables: {0}")]
    Malformed(String),
}

type Result<T> = std::result::Result<T, NftError>;

fn table_name() -> CString {
    CString::new(TABLE).expect("no NUL")
}

/// Replace the host's rnet table with `rs` (no table at all when `rs` is empty).
pub fn program(rs: &Ruleset) -> Result<()> {
    let table = nftnl::Table::new(table_name(), ProtoFamily::Ipv4);
    let mut batch = Batch::new();
    // Adding first makes the delete valid whether or not the table existed.
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    if !rs.is_empty() {
        batch.add(&table, MsgType::Add);
        let chains = chains(&table);
        for c in &chains {
            batch.add(c, MsgType::Add);
        }
        for rule in &rs.rules {
            let chain = &chains[Chain::ALL
                .iter()
                .position(|c| *c == rule.chain())
                .expect("known chain")];
            batch.add(&build(rule, chain)?, MsgType::Add);
        }
    }
    let batch = batch.finalize();
    let mut buf = Vec::new();
    for part in &batch {
        buf.extend_from_slice(part);
    }
    let socket = open()?;
    socket.send(&buf, 0).map_err(|source| NftError::Refused {
        what: "the rnet table batch",
        source,
    })?;
    let expected = batch.sequence_numbers().len();
    let mut acked = 0;
    let mut rbuf = vec![0u8; 1 << 16];
    while acked < expected {
        let n = recv(&socket, &mut rbuf)?;
        for msg in messages(&rbuf[..n]) {
            if let Message::Error(errno) = msg {
                if errno != 0 {
                    return Err(refused("the rnet table batch", errno));
                }
                acked += 1;
            }
        }
    }
    Ok(())
}

/// The chains of the table, in `Chain::ALL` order.
fn chains(table: &nftnl::Table) -> Vec<NftChain<'_>> {
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
fn build<'a>(rule: &Rule, chain: &'a NftChain<'a>) -> Result<nftnl::Rule<'a>> {
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
fn comment_text(rule: &Rule) -> String {
    let mut s = rule.to_string();
    let mut end = s.len().min(125);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

/// The images of `rs`'s rules as the kernel would report them.
pub fn images(rs: &Ruleset) -> Result<Vec<RuleImage>> {
    let table = nftnl::Table::new(table_name(), ProtoFamily::Ipv4);
    let chains = chains(&table);
    let mut out = Vec::new();
    let mut buf = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
    for rule in &rs.rules {
        let chain = &chains[Chain::ALL
            .iter()
            .position(|c| *c == rule.chain())
            .expect("known chain")];
        let r = build(rule, chain)?;
        // SAFETY: `buf` has room for the largest nf_tables message, as `write` requires.
        unsafe { r.write(buf.as_mut_ptr().cast(), 0, MsgType::Add) };
        out.push(parse_rule(&buf)?);
    }
    Ok(out)
}

/// The rules of the kernel's rnet table; None when there is no such table.
pub fn observe() -> Result<Option<Vec<RuleImage>>> {
    let socket = open()?;
    if !table_exists(&socket)? {
        return Ok(None);
    }
    let name = table_name();
    send_request(
        &socket,
        libc::NFT_MSG_GETRULE,
        libc::NLM_F_DUMP,
        // SAFETY: the rule object only names the table (the kernel then dumps that table's
        // rules); `hdr` is the message `send_request` began, and the object is freed once written.
        |hdr| unsafe {
            let filter = sys::nftnl_rule_alloc();
            sys::nftnl_rule_set_str(filter, sys::NFTNL_RULE_TABLE as u16, name.as_ptr());
            sys::nftnl_rule_nlmsg_build_payload(hdr, filter);
            sys::nftnl_rule_free(filter);
        },
    )?;
    let mut rules = Vec::new();
    let mut rbuf = vec![0u8; 1 << 16];
    loop {
        let n = recv(&socket, &mut rbuf)?;
        for msg in messages(&rbuf[..n]) {
            match msg {
                Message::Done => return Ok(Some(rules)),
                Message::Error(0) => {}
                Message::Error(e) => return Err(refused("the rule dump", e)),
                Message::Data(m) => rules.push(parse_rule(m)?),
            }
        }
    }
}

/// Whether the rnet table exists (a rule dump of a missing table is just empty).
fn table_exists(socket: &Socket) -> Result<bool> {
    let name = table_name();
    // SAFETY: as in `observe`, a table object that only carries the name, freed at once.
    send_request(socket, libc::NFT_MSG_GETTABLE, 0, |hdr| unsafe {
        let t = sys::nftnl_table_alloc();
        sys::nftnl_table_set_str(t, sys::NFTNL_TABLE_NAME as u16, name.as_ptr());
        sys::nftnl_table_nlmsg_build_payload(hdr, t);
        sys::nftnl_table_free(t);
    })?;
    let mut rbuf = vec![0u8; 1 << 16];
    let mut found = false;
    loop {
        let n = recv(socket, &mut rbuf)?;
        for msg in messages(&rbuf[..n]) {
            match msg {
                Message::Data(_) => found = true,
                Message::Error(0) | Message::Done => return Ok(found),
                Message::Error(e) if e == libc::ENOENT => return Ok(false),
                Message::Error(e) => return Err(refused("the table lookup", e)),
            }
        }
    }
}

/// Send one request (with an acknowledgement asked for) whose payload `fill` writes.
fn send_request(
    socket: &Socket,
    kind: i32,
    flags: i32,
    fill: impl FnOnce(*mut libc::nlmsghdr),
) -> Result<()> {
    let mut req = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
    // SAFETY: `req` has room for the largest nf_tables message.
    let hdr = unsafe {
        sys::nftnl_nlmsg_build_hdr(
            req.as_mut_ptr().cast::<c_char>(),
            kind as u16,
            ProtoFamily::Ipv4 as u16,
            (flags | libc::NLM_F_ACK) as u16,
            1,
        )
    };
    fill(hdr);
    // SAFETY: `hdr` points into `req`, and its length was set by the payload builder.
    let len = unsafe { (*hdr).nlmsg_len } as usize;
    socket
        .send(&req[..len], 0)
        .map_err(|source| NftError::Refused {
            what: "a request",
            source,
        })?;
    Ok(())
}

fn refused(what: &'static str, errno: i32) -> NftError {
    NftError::Refused {
        what,
        source: std::io::Error::from_raw_os_error(errno),
    }
}

/// Chain, comment and rendered expressions of one rule message.
fn parse_rule(msg: &[u8]) -> Result<RuleImage> {
    // SAFETY: `msg` starts with a complete netlink message (from the kernel, or written by
    // libnftnl); the rule object lives only within this block and every string read from it
    // is copied before it is freed.
    unsafe {
        let r = sys::nftnl_rule_alloc();
        if sys::nftnl_rule_nlmsg_parse(msg.as_ptr().cast(), r) < 0 {
            sys::nftnl_rule_free(r);
            return Err(NftError::Malformed(
                "a rule message libnftnl cannot parse".into(),
            ));
        }
        let chain = cstr(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_CHAIN as u16));
        let mut ulen = 0u32;
        let udata = sys::nftnl_rule_get_data(r, sys::NFTNL_RULE_USERDATA as u16, &mut ulen);
        let comment = if udata.is_null() {
            String::new()
        } else {
            comment_of(std::slice::from_raw_parts(
                udata.cast::<u8>(),
                ulen as usize,
            ))
        };
        let mut exprs = Vec::new();
        let iter = sys::nftnl_expr_iter_create(r);
        let mut text = [0u8; 512];
        loop {
            let e = sys::nftnl_expr_iter_next(iter);
            if e.is_null() {
                break;
            }
            let n = sys::nftnl_expr_snprintf(
                text.as_mut_ptr().cast(),
                text.len(),
                e,
                sys::NFTNL_OUTPUT_DEFAULT,
                0,
            );
            let n = (n.max(0) as usize).min(text.len() - 1);
            exprs.push(String::from_utf8_lossy(&text[..n]).into_owned());
        }
        sys::nftnl_expr_iter_destroy(iter);
        sys::nftnl_rule_free(r);
        Ok(RuleImage {
            chain,
            comment,
            exprs: exprs.join(" "),
        })
    }
}

fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libnftnl returns NUL-terminated strings it owns; copied at once.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The comment in a rule's user data (type-length-value records; comment is type 0).
fn comment_of(mut data: &[u8]) -> String {
    while data.len() >= 2 {
        let (kind, len) = (data[0], data[1] as usize);
        let Some(value) = data.get(2..2 + len) else {
            break;
        };
        if u32::from(kind) == sys::NFTNL_UDATA_RULE_COMMENT {
            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
            return String::from_utf8_lossy(&value[..end]).into_owned();
        }
        data = &data[2 + len..];
    }
    String::new()
}

fn open() -> Result<Socket> {
    let mut s = Socket::new(NETLINK_NETFILTER).map_err(NftError::Socket)?;
    s.bind_auto().map_err(NftError::Socket)?;
    // A kernel that never answers must not hang the daemon.
    let tv = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: setting a plain option on a socket we own, with a correctly sized value.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if rc != 0 {
        return Err(NftError::Socket(std::io::Error::last_os_error()));
    }
    Ok(s)
}

fn recv(s: &Socket, buf: &mut [u8]) -> Result<usize> {
    s.recv(&mut &mut buf[..], 0).map_err(NftError::Socket)
}

enum Message<'a> {
    Done,
    /// 0 is an acknowledgement.
    Error(i32),
    Data(&'a [u8]),
}

/// The netlink messages in one datagram.
fn messages(mut buf: &[u8]) -> Vec<Message<'_>> {
    const HDR: usize = std::mem::size_of::<libc::nlmsghdr>();
    let mut out = Vec::new();
    while buf.len() >= HDR {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        if len < HDR || len > buf.len() {
            break;
        }
        let msg = &buf[..len];
        match i32::from(kind) {
            libc::NLMSG_DONE => out.push(Message::Done),
            libc::NLMSG_ERROR if len >= HDR + 4 => {
                let e = i32::from_ne_bytes(msg[HDR..HDR + 4].try_into().expect("4 bytes"));
                out.push(Message::Error(-e));
            }
            _ => out.push(Message::Data(msg)),
        }
        buf = buf.get((len + 3) & !3..).unwrap_or(&[]);
    }
    out
}

#[cfg(all(test, feature = "root-tests"))]
mod tests {
    use super::*;
    use crate::nat::{audit, Drift};

    /// Run `f` on a fresh thread in a fresh network namespace (gone with the thread).
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            f()
        })
        .join()
        .expect("thread")
    }

    fn ruleset() -> Ruleset {
        Ruleset {
            rules: vec![
                Rule::Masquerade {
                    network: "blue".into(),
                    subnet: "10.1.0.0/24".parse().unwrap(),
                },
                Rule::Dnat {
                    chain: Chain::Prerouting,
                    endpoint: "blue/web".into(),
                    proto: Proto::Tcp,
                    host_ip: None,
                    host_port: 8080,
                    to: "10.1.0.5".parse().unwrap(),
                    to_port: 80,
                },
                Rule::Dnat {
                    chain: Chain::Output,
                    // Longer than a comment may be: cut, on both sides of the audit alike.
                    endpoint: "é".repeat(100),
                    proto: Proto::Udp,
                    host_ip: Some("198.18.0.1".parse().unwrap()),
                    host_port: 53,
                    to: "10.1.0.5".parse().unwrap(),
                    to_port: 5353,
                },
                Rule::AcceptPublished,
                Rule::Isolate,
            ],
        }
    }

    #[test]
    fn programs_reads_back_and_removes_the_table() {
        in_new_netns(|| {
            assert_eq!(observe().unwrap(), None);
            let rs = ruleset();
            program(&rs).unwrap();
            let want = images(&rs).unwrap();
            let got = observe().unwrap().expect("table");
            assert_eq!(audit(&want, Some(&got)), vec![], "{want:#?}\n{got:#?}");
            // Programming again replaces, never duplicates.
            program(&rs).unwrap();
            assert_eq!(observe().unwrap().unwrap().len(), rs.rules.len());
            // A smaller set: the removed rules are reported by an audit against the old one.
            let smaller = Ruleset {
                rules: rs.rules[..1].to_vec(),
            };
            program(&smaller).unwrap();
            let got = observe().unwrap().unwrap();
            assert_eq!(audit(&want, Some(&got)).len(), rs.rules.len() - 1);
            program(&Ruleset::default()).unwrap();
            assert_eq!(observe().unwrap(), None);
            assert_eq!(audit(&want, None), vec![Drift::TableMissing]);
        });
    }
}
