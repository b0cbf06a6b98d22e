//! rnet: container overlay networking for Linux.
//!
//! # Layout
//!
//! ```text
//! bins (rnetd, rnet, rnet-cni)
//!   └─ daemon (service: the one orchestrator; http: the API server) · cli · cni · api (types, client)
//!        └─ reconcile (pure diff) · ipam (pure planning) · dataplane (spec, state: pure; netlink, request: kernel)
//!           · store (trait, keys, embedded backend) · netns · validate (store records, pure)
//!             └─ model (validated names, VNIs, MACs, records)
//! ```
//!
//! A request (CLI, CNI, later Docker) becomes an `api::types::AttachRequest`; the
//! daemon's `Service::attach` allocates the address in the store (create-if-absent on the
//! address key), makes sure the network's sandbox exists, and builds the veth pair through
//! netlink. A reconcile compares records with what the kernel holds and repairs the rest.

pub mod api;
pub mod checksum;
pub mod cli;
pub mod cni;
pub mod daemon;
pub mod dataplane;
pub mod dns;
pub mod error;
pub mod icmp;
pub mod ipam;
pub mod ipsec;
pub mod lab;
pub mod libnetwork;
pub mod model;
pub mod nat;
pub mod netns;
pub mod paths;
pub mod peers;
pub mod progress;
pub mod reconcile;
pub mod store;
pub mod validate;
pub mod wireguard;

pub use error::{Error, Result};
