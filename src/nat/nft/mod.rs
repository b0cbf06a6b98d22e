//! The `ip rnet` table in the kernel, through libnftnl (the `nftnl` crate) over a netfilter
//! netlink socket of the calling thread's namespace. Blocking: call it off the async workers.
//!
//! Programming replaces the whole table in one batch (add, delete, add, chains, rules): the
//! kernel applies a batch atomically, so no packet ever sees half a table. Reading back dumps
//! the table's rules and renders each expression with libnftnl's own printer; a desired rule is
//! rendered the same way after a round trip through the same message encoding, so the audit
//! compares like with like.

use std::ffi::CString;

use nftnl::nftnl_sys::{self as sys, libc};
use nftnl::{Batch, MsgType, NlMsg, ProtoFamily};

use super::{Chain, RuleImage, Ruleset, TABLE};
use build::{build, chains};
use wire::{messages, open, parse_rule, recv, refused, send_request, table_exists, Message};

mod build;
mod wire;

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

#[cfg(all(test, feature = "root-tests"))]
mod tests {
    use super::*;
    use crate::model::Proto;
    use crate::nat::Rule;
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
