//! The dataplane's error: which kernel operation failed on which object, and why.

use std::net::Ipv4Addr;

use crate::netns::NetnsError;

/// A dataplane failure, naming the object and the operation.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{op}: {msg}")]
    Netlink {
        op: String,
        msg: String,
        errno: Option<i32>,
    },
    #[error("interface {ifname} already exists in network namespace {netns}")]
    IfaceExists { ifname: String, netns: String },
    #[error("underlay address {0} is not configured on any interface of this host")]
    NoUnderlay(Ipv4Addr),
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    /// An existing sandbox that must not be used as asked (another network's, or a downgrade).
    #[error("refusing to use sandbox {path}: {why}")]
    SandboxRefused { path: String, why: String },
}

impl DataplaneError {
    /// An rtnetlink failure of `op`, as the kernel's errno text when there is one.
    pub(crate) fn netlink(op: impl Into<String>, e: rtnetlink::Error) -> DataplaneError {
        match errno_of(&e) {
            Some(code) => DataplaneError::errno(op, code),
            None => DataplaneError::Netlink {
                op: op.into(),
                msg: e.to_string(),
                errno: None,
            },
        }
    }

    /// The kernel refused `op` with `code` (a positive errno).
    pub(crate) fn errno(op: impl Into<String>, code: i32) -> DataplaneError {
        DataplaneError::Netlink {
            op: op.into(),
            msg: std::io::Error::from_raw_os_error(code).to_string(),
            errno: Some(code),
        }
    }

    /// `op` found no such device.
    pub(crate) fn no_device(op: impl Into<String>) -> DataplaneError {
        DataplaneError::Netlink {
            op: op.into(),
            msg: "no such device".into(),
            errno: Some(libc::ENODEV),
        }
    }
}

/// The positive errno of a kernel refusal carried by an rtnetlink error.
pub(crate) fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}
