//! The daemon's error type: every failure a request can meet, each with the class that
//! decides how a front door reports it (HTTP status, CNI code, CLI exit).

use crate::dataplane::DataplaneError;
use crate::ipam::PlanError;
use crate::model::Invalid;
use crate::netns::NetnsError;
use crate::store::StoreError;

/// A request-level failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (bad CIDR, name, address, missing namespace...).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// It contradicts what exists (name with other options, VNI or address in use...).
    #[error("{0}")]
    Conflict(String),
    /// No address left.
    #[error("{0}")]
    Exhausted(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// This host cannot do what is asked (e.g. an encrypted network where WireGuard cannot run).
    #[error("{0}")]
    Unsupported(String),
    /// The caller may not do this (not root, nor allowed to touch that namespace).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The class name used on the wire (`ErrorBody::kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::Exhausted(_) => "exhausted",
            Error::Unsupported(_) => "unsupported",
            Error::Forbidden(_) => "forbidden",
            Error::Store(StoreError::Unavailable(_))
            | Error::Dataplane(DataplaneError::Netns(NetnsError::Busy { .. })) => "unavailable",
            Error::Dataplane(DataplaneError::IfaceExists { .. }) => "conflict",
            Error::Dataplane(DataplaneError::Netns(NetnsError::NotFound { .. }))
            | Error::Dataplane(DataplaneError::Netns(NetnsError::NotNetns { .. }))
            | Error::Dataplane(DataplaneError::Netns(NetnsError::NoSuchPid { .. }))
            | Error::Dataplane(DataplaneError::Netns(NetnsError::Timeout { .. })) => "invalid",
            // A sandbox kept from misuse (another network's, or a downgrade) is a conflict
            // between the store and what this host built, for an operator to resolve.
            Error::Dataplane(DataplaneError::SandboxRefused { .. }) => "conflict",
            _ => "internal",
        }
    }

    /// The HTTP status for this class.
    pub fn http_status(&self) -> u16 {
        match self.kind() {
            "invalid" => 400,
            "forbidden" => 403,
            "not_found" => 404,
            "conflict" | "exhausted" => 409,
            "unavailable" => 503,
            "unsupported" => 501,
            _ => 500,
        }
    }
}

impl From<Invalid> for Error {
    fn from(e: Invalid) -> Self {
        Error::Invalid(e.0)
    }
}

impl From<NetnsError> for Error {
    fn from(e: NetnsError) -> Self {
        Error::Dataplane(DataplaneError::Netns(e))
    }
}

impl From<PlanError> for Error {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::Invalid(i) => Error::Invalid(i.0),
            PlanError::Conflict(c) => Error::Conflict(c),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
