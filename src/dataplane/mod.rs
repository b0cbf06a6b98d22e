//! The dataplane: the only code that touches the kernel.
//!
//! Per network with local endpoints, one sandbox namespace holds a bridge (`br0`, carrying
//! the gateway address) and the network's VXLAN device. The VXLAN device is created from
//! the host namespace (so its UDP socket binds to the underlay) directly into the sandbox.
//! Each endpoint is a veth pair: one end enslaved to `br0` in the sandbox, the other
//! created straight inside the workload's namespace under its final name.
//!
//! `spec` holds the pure descriptions of what should exist; `netlink` applies them and
//! reads the kernel back. `ops` names the operations the service needs as the `Dataplane`
//! trait, which `Netlink` implements and `fake` (tests only) records.

#[cfg(test)]
pub mod fake;
pub mod netlink;
pub mod ops;
pub mod spec;
pub mod tables;
pub mod uplink;
pub mod workload;

pub use netlink::{DataplaneError, LinkState, Netlink, SandboxState, Underlay, WorkloadLink};
pub use ops::Dataplane;
pub use spec::{EndpointSpec, SandboxSpec};
