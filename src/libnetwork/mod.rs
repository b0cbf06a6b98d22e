//! Docker's libnetwork front door: the remote network driver (CNM) and the remote IPAM driver.
//!
//! - `protocol`: the wire types, with Docker's exact field names;
//! - `translate`: pure mapping between those requests and rnet networks and endpoints;
//! - `state`: the little the driver must remember locally across restarts;
//! - `engine`: containers' DNS names from the Docker engine's API answers.
//!
//! The server lives in `daemon::docker_plugin`; it turns every call into the same service
//! operations the CLI and CNI use (allocation by create-if-absent in the store, the
//! network's sandbox, a veth pair), so nothing here bypasses rnetd.

pub mod engine;
pub mod ports;
pub mod protocol;
pub mod state;
pub mod translate;
