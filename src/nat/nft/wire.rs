//! The netfilter netlink socket: requests, acknowledgements, and rule messages parsed back
//! into `RuleImage`s with libnftnl's own printer.

use std::ffi::CStr;
use std::os::raw::c_char;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use nftnl::nftnl_sys::{self as sys, libc};
use nftnl::ProtoFamily;

use super::{table_name, NftError, Result};
use crate::nat::RuleImage;

/// Whether the rnet table exists (a rule dump of a missing table is just empty).
pub(super) fn table_exists(socket: &Socket) -> Result<bool> {
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
pub(super) fn send_request(
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

pub(super) fn refused(what: &'static str, errno: i32) -> NftError {
    NftError::Refused {
        what,
        source: std::io::Error::from_raw_os_error(errno),
    }
}

/// Chain, comment and rendered expressions of one rule message.
pub(super) fn parse_rule(msg: &[u8]) -> Result<RuleImage> {
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

pub(super) fn open() -> Result<Socket> {
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

pub(super) fn recv(s: &Socket, buf: &mut [u8]) -> Result<usize> {
    s.recv(&mut &mut buf[..], 0).map_err(NftError::Socket)
}

pub(super) enum Message<'a> {
    Done,
    /// 0 is an acknowledgement.
    Error(i32),
    Data(&'a [u8]),
}

/// The netlink messages in one datagram.
pub(super) fn messages(mut buf: &[u8]) -> Vec<Message<'_>> {
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
