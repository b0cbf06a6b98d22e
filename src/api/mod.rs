//! The rnetd control API: wire types and a client. The server lives in `daemon::http`.

pub mod client;
pub mod types;

pub use client::{Client, ClientError, DEFAULT_SOCKET};
