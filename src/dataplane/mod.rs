//! The dataplane: the only code that touches the kernel.
//!
//! Per network with local endpoints, one sandbox namespace holds a bridge (`br0`, carrying
//! the gateway address) and the network's VXLAN device. The VXLAN device is created from
//! the host namespace (so its UDP socket binds to the underlay) directly into the sandbox.
//! Each endpoint is a veth pair: one end enslaved to `br0` in the sandbox, the other
//! created straight inside the workload's namespace under its final name.
//!
//! Pure: `spec` describes what should exist, `state` holds what was read back. Kernel I/O:
//! `netlink` (the [`Netlink`] dataplane, its methods spread over `sandbox`, `endpoint`,
//! `tunnel` and `uplink`), `tables` (the peer tables), `workload` (the workload side of an
//! attach, on a thread in its namespace); every netlink request goes through `request`.
//! `ops` names the operations the service needs as the [`Dataplane`] trait, which `Netlink`
//! implements and `fake` (tests only) records.

mod endpoint;
pub mod error;
#[cfg(test)]
pub mod fake;
pub mod netlink;
pub mod ops;
pub mod request;
mod sandbox;
pub mod spec;
pub mod state;
pub mod tables;
mod tunnel;
pub mod uplink;
pub mod workload;

pub use error::DataplaneError;
pub use netlink::Netlink;
pub use ops::Dataplane;
pub use spec::{EndpointSpec, SandboxSpec};
pub use state::{LinkState, SandboxState, Underlay, WorkloadLink};
