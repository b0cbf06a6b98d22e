//! A small blocking XFRM netlink client: one socket in the calling thread's namespace,
//! requests acknowledged one by one, and dumps of rnet's own SAs and policies.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_xfrm::{
    constants::*, policy, state, Address, Replay, UserPolicyInfo, XfrmAttrs, XfrmMessage,
};
use netlink_sys::{protocols::NETLINK_XFRM, Socket, SocketAddr};

use super::xfrm::{encode, Action, Dir, PolicySpec, SaId, IPPROTO_ESP_U8, IPPROTO_UDP_U8, REQID};
use crate::model::IPSEC_VXLAN_PORT;

/// An XFRM request the kernel refused: the errno and the kernel's own words, if any.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {}", describe(*errno))]
pub struct XfrmError {
    pub what: String,
    pub errno: i32,
}

fn describe(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

/// What the kernel holds of rnet's: SAs with [`REQID`] and policies on the IPsec port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub sas: Vec<SaId>,
    pub policies: Vec<PolicySpec>,
    /// Per SA (where the dump showed them): a digest of its key and its replay state, so a
    /// key changed behind rnet's back is seen (and replaced without resetting sequence
    /// numbers). Absent entries are not checked.
    pub states: BTreeMap<SaId, SaState>,
}

/// What rnet checks of an installed SA besides its id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaState {
    /// [`key_tag`] of the SA's AEAD key.
    pub key_tag: u64,
    /// Sequence numbers sent (`oseq`) and received (`seq`, `bitmap`).
    pub replay: Replay,
}

/// A digest of an SA key to compare keys without keeping the kernel's copy (or logging it).
pub fn key_tag(key: &[u8]) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(key);
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

fn ipv4(a: &Address) -> Ipv4Addr {
    a.to_ipv4()
}

/// One of rnet's policies, from a dumped one (None for anyone else's).
fn policy_of(info: &UserPolicyInfo) -> Option<PolicySpec> {
    let s = &info.selector;
    if s.family != AF_INET || s.proto != IPPROTO_UDP_U8 || s.dport != IPSEC_VXLAN_PORT {
        return None;
    }
    let dir = match info.direction {
        XFRM_POLICY_IN => Dir::In,
        XFRM_POLICY_OUT => Dir::Out,
        _ => return None,
    };
    let side = |a: &Address, len: u8| (len == 32).then(|| ipv4(a));
    Some(PolicySpec {
        dir,
        src: side(&s.saddr, s.prefixlen_s),
        dst: side(&s.daddr, s.prefixlen_d),
        action: if info.action == XFRM_POLICY_BLOCK {
            Action::Block
        } else {
            Action::Esp
        },
    })
}

/// A blocking XFRM netlink socket in the calling thread's network namespace.
pub struct Xfrm {
    socket: Socket,
    seq: u32,
}

impl Xfrm {
    pub fn open() -> std::io::Result<Xfrm> {
        let mut socket = Socket::new(NETLINK_XFRM)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Xfrm { socket, seq: 1 })
    }

    /// Send one request and wait for its acknowledgement.
    pub fn request(&mut self, what: &str, msg: XfrmMessage) -> Result<(), XfrmError> {
        self.seq += 1;
        let buf = encode(msg, NLM_F_REQUEST | NLM_F_ACK, self.seq);
        let fail = |errno| XfrmError {
            what: what.to_string(),
            errno,
        };
        self.socket
            .send(&buf, 0)
            .map_err(|e| fail(e.raw_os_error().unwrap_or(libc::EIO)))?;
        let mut result = None;
        self.read(|m| match m {
            NetlinkPayload::Error(e) => {
                result = Some(e.code.map_or(0, |c| -c.get()));
                true
            }
            _ => false,
        })
        .map_err(|e| fail(e.raw_os_error().unwrap_or(libc::EIO)))?;
        match result {
            Some(0) | None => Ok(()),
            Some(errno) => Err(fail(errno)),
        }
    }

    /// Read messages until `done` says so (or a dump ends).
    fn read(
        &mut self,
        mut done: impl FnMut(NetlinkPayload<XfrmMessage>) -> bool,
    ) -> std::io::Result<()> {
        loop {
            let (buf, _) = self.socket.recv_from_full()?;
            let mut off = 0;
            while off < buf.len() {
                let msg = NetlinkMessage::<XfrmMessage>::deserialize(&buf[off..])
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Ok(());
                }
                off += (len + 3) & !3;
                let end = matches!(msg.payload, NetlinkPayload::Done(_));
                if done(msg.payload) || end {
                    return Ok(());
                }
            }
        }
    }

    fn dump(&mut self, msg: XfrmMessage) -> std::io::Result<Vec<XfrmMessage>> {
        self.seq += 1;
        let buf = encode(msg, NLM_F_REQUEST | NLM_F_DUMP, self.seq);
        self.socket.send(&buf, 0)?;
        let mut out = Vec::new();
        let mut err = None;
        self.read(|m| match m {
            NetlinkPayload::InnerMessage(x) => {
                out.push(x);
                false
            }
            NetlinkPayload::Error(e) if e.code.is_some() => {
                err = Some(e.to_io());
                true
            }
            _ => false,
        })?;
        err.map_or(Ok(out), Err)
    }

    /// rnet's SAs and policies as the kernel holds them.
    pub fn observe(&mut self) -> std::io::Result<Observed> {
        let mut seen = Observed::default();
        for m in self.dump(XfrmMessage::GetDumpSa(state::GetDumpMessage::default()))? {
            if let XfrmMessage::AddSa(sa) = m {
                let i = &sa.user_sa_info;
                if i.reqid == REQID && i.family == AF_INET && i.id.proto == IPPROTO_ESP_U8 {
                    let id = SaId {
                        src: ipv4(&i.saddr),
                        dst: ipv4(&i.id.daddr),
                        spi: i.id.spi,
                    };
                    seen.sas.push(id);
                    let mut st = (None, Replay::default());
                    for nla in &sa.nlas {
                        match nla {
                            XfrmAttrs::EncryptionAlgAead(a) => st.0 = Some(key_tag(&a.alg_key)),
                            XfrmAttrs::ReplayState(r) => st.1 = *r,
                            _ => {}
                        }
                    }
                    if let (Some(key_tag), replay) = st {
                        seen.states.insert(id, SaState { key_tag, replay });
                    }
                }
            }
        }
        let get = XfrmMessage::GetPolicy(policy::DelGetMessage::default());
        for m in self.dump(get)? {
            if let XfrmMessage::AddPolicy(p) = m {
                seen.policies.extend(policy_of(&p.user_policy_info));
            }
        }
        seen.sas.sort();
        seen.policies.sort();
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipsec::xfrm::add_policy;

    #[test]
    fn dumped_policies_are_ours_only_on_the_ipsec_port() {
        let XfrmMessage::AddPolicy(m) = add_policy(&PolicySpec::block_all(Dir::Out)) else {
            unreachable!()
        };
        assert_eq!(
            policy_of(&m.user_policy_info),
            Some(PolicySpec::block_all(Dir::Out))
        );
        let mut other = m.user_policy_info;
        other.selector.dport = 4789;
        assert_eq!(policy_of(&other), None);
    }
}
