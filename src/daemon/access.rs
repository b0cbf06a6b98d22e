//! Who may use rnetd's sockets, and which namespaces a caller may attach.
//!
//! The socket file's mode is the first gate (the kernel checks it at connect); the peer's
//! credentials, read from the connection itself (SO_PEERCRED, SO_PEERGROUPS), are the second,
//! so a socket whose mode was loosened by hand still refuses strangers. The decision is pure
//! ([`Access::decide`]); reading the credentials is the only I/O here.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::error::{Error, Result};
use crate::netns::NetNs;

/// Who is calling, as the kernel reported it when the connection was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

impl Caller {
    /// The daemon itself, or root.
    pub const ROOT: Caller = Caller { uid: 0, gid: 0 };
}

/// A peer's credentials at connect time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    pub pid: Option<i32>,
}

/// Who may use a socket: root always; members of `group` (primary or supplementary) too.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Access {
    group: Option<(String, u32)>,
}

impl Access {
    /// Root only.
    pub fn root_only() -> Access {
        Access { group: None }
    }

    /// Root and the members of the group `name` (gid `gid`).
    pub fn root_and_group(name: &str, gid: u32) -> Access {
        Access {
            group: Some((name.to_string(), gid)),
        }
    }

    /// `--api-group NAME`: looks the group up; a name that is no group is an error.
    pub fn for_group_name(name: &str) -> Result<Access> {
        match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(Access::root_and_group(name, g.gid.as_raw())),
            Ok(None) => Err(Error::Invalid(format!(
                "--api-group {name:?}: no such group on this host"
            ))),
            Err(e) => Err(Error::Invalid(format!(
                "--api-group {name:?}: looking the group up failed: {e}"
            ))),
        }
    }

    /// The group that owns the socket file (None: the daemon's own, root).
    pub fn socket_gid(&self) -> Option<u32> {
        self.group.as_ref().map(|(_, gid)| *gid)
    }

    /// The socket file's mode: group read-write only when a group is allowed.
    pub fn socket_mode(&self) -> u32 {
        if self.group.is_some() {
            0o660
        } else {
            0o600
        }
    }

    /// Allow `peer`, or say why not.
    pub fn decide(&self, peer: &Peer) -> std::result::Result<Caller, String> {
        let caller = Caller {
            uid: peer.uid,
            gid: peer.gid,
        };
        if peer.uid == 0 {
            return Ok(caller);
        }
        match &self.group {
            Some((_, gid)) if peer.gid == *gid || peer.groups.contains(gid) => Ok(caller),
            Some((name, gid)) => Err(format!(
                "uid {} is neither root nor a member of group {name} (gid {gid})",
                peer.uid
            )),
            None => Err(format!(
                "uid {} is not root (rnetd was started without --api-group)",
                peer.uid
            )),
        }
    }
}

/// The credentials of the process at the other end of a connected unix socket.
pub fn peer_of(sock: BorrowedFd<'_>) -> std::io::Result<Peer> {
    let cred = nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(std::io::Error::from)?;
    Ok(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        groups: peer_groups(sock)?,
        pid: Some(cred.pid()).filter(|p| *p > 0),
    })
}

/// SO_PEERGROUPS (Linux 4.13): the peer's supplementary groups at connect time.
fn peer_groups(sock: BorrowedFd<'_>) -> std::io::Result<Vec<u32>> {
    // The generic value from <asm-generic/socket.h>; libc does not export it for every target.
    const SO_PEERGROUPS: libc::c_int = 59;
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is `len` bytes of gid_t that we own; the kernel writes at most
        // `len` bytes and stores the size it needs (or used) in `len`.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() {
            groups.resize(needed, 0);
            continue;
        }
        return Err(err);
    }
}

/// What only root may do through the API: what changes trust (approving a peer's identity,
/// rotating this host's key), frees other people's addresses (gc, CNI GC and DEL), removes
/// a network (with or without --force: it is everyone's), or changes the kernel wholesale
/// (doctor --repair).
pub fn require_root(caller: Caller, what: &str) -> Result<()> {
    if caller.uid == 0 {
        return Ok(());
    }
    Err(Error::Forbidden(format!(
        "uid {} may not {what}: only root may",
        caller.uid
    )))
}

/// Only root may attach a namespace it does not own: a non-root caller must own `ns` (own
/// the user namespace it belongs to).
pub fn check_may_attach(ns: &NetNs, caller: Caller) -> Result<()> {
    if caller.uid == 0 {
        return Ok(());
    }
    let owner = ns.owner_uid()?;
    if owner == caller.uid {
        return Ok(());
    }
    Err(Error::Forbidden(format!(
        "uid {} may not attach network namespace {} owned by uid {owner}",
        caller.uid,
        ns.path().display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            groups: groups.to_vec(),
            pid: None,
        }
    }

    #[test]
    fn root_only_allows_root_alone() {
        let a = Access::root_only();
        assert_eq!(a.decide(&peer(0, 0, &[])), Ok(Caller::ROOT));
        let err = a.decide(&peer(1000, 0, &[0])).unwrap_err();
        assert!(err.contains("uid 1000 is not root"), "{err}");
        assert_eq!(a.socket_mode(), 0o600);
        assert_eq!(a.socket_gid(), None);
    }

    #[test]
    fn group_members_primary_or_supplementary_are_allowed() {
        let a = Access::root_and_group("rnet", 990);
        assert_eq!(
            a.decide(&peer(1000, 990, &[])),
            Ok(Caller {
                uid: 1000,
                gid: 990
            })
        );
        assert!(a.decide(&peer(1000, 100, &[4, 990])).is_ok());
        assert!(a.decide(&peer(0, 0, &[])).is_ok());
        let err = a.decide(&peer(1001, 100, &[4, 991])).unwrap_err();
        assert!(
            err.contains("uid 1001 is neither root nor a member of group rnet (gid 990)"),
            "{err}"
        );
        assert_eq!(a.socket_mode(), 0o660);
        assert_eq!(a.socket_gid(), Some(990));
    }

    #[test]
    fn unknown_group_is_a_clear_error() {
        let err = Access::for_group_name("no-such-group-rnet-test").unwrap_err();
        assert!(err.to_string().contains("no such group"), "{err}");
        assert_eq!(err.kind(), "invalid");
    }

    #[test]
    fn peer_credentials_of_a_socket_pair_are_ours() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let p = peer_of(std::os::fd::AsFd::as_fd(&a)).unwrap();
        assert_eq!(p.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(p.gid, nix::unistd::getegid().as_raw());
        let mut ours: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        let mut theirs = p.groups.clone();
        ours.sort();
        theirs.sort();
        assert_eq!(theirs, ours);
        assert_eq!(p.pid, Some(std::process::id() as i32));
    }

    #[test]
    fn namespaces_of_the_initial_user_namespace_are_owned_by_root() {
        // The host's namespace belongs to the initial user namespace, whoever runs the test.
        let ns = NetNs::open(std::path::Path::new("/proc/self/ns/net")).unwrap();
        assert_eq!(ns.owner_uid().unwrap(), 0);
        assert!(check_may_attach(&ns, Caller::ROOT).is_ok());
        let err = check_may_attach(&ns, Caller { uid: 1000, gid: 0 }).unwrap_err();
        assert_eq!(err.kind(), "forbidden");
        assert_eq!(err.http_status(), 403);
        let want = "uid 1000 may not attach network namespace /proc/self/ns/net owned by uid 0";
        assert_eq!(err.to_string(), want);
    }
}
