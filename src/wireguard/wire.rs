//! The tunnel's reports in the API's wire types (`api::types`), which stay as they are
//! whatever the tunnel's own types become.

use super::pins::Pin;
use super::{Backend, DropCounters, TunOffload, TunnelStatus};
use crate::api::types as wire;

impl From<Backend> for wire::Backend {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Kernel => wire::Backend::Kernel,
            Backend::Userspace => wire::Backend::Userspace,
        }
    }
}

impl From<DropCounters> for wire::DropCounters {
    fn from(d: DropCounters) -> Self {
        wire::DropCounters {
            malformed: d.malformed,
            rejected: d.rejected,
            spoofed: d.spoofed,
            no_peer: d.no_peer,
            bad_offload: d.bad_offload,
        }
    }
}

impl From<TunOffload> for wire::TunOffload {
    fn from(t: TunOffload) -> Self {
        wire::TunOffload {
            tso: t.tso,
            super_packets: t.super_packets,
            merged: t.merged,
        }
    }
}

impl From<TunnelStatus> for wire::TunnelStatus {
    fn from(t: TunnelStatus) -> Self {
        wire::TunnelStatus {
            up: t.up,
            since_handshake: t.since_handshake,
            tx_bytes: t.tx_bytes,
            rx_bytes: t.rx_bytes,
            key_age: t.key_age,
            problem: t.problem,
            backend: t.backend.map(Into::into),
        }
    }
}

impl From<Pin> for wire::Pin {
    fn from(p: Pin) -> Self {
        wire::Pin {
            identity: p.identity,
            underlay: p.underlay,
            public_key: p.public_key,
            port: p.port,
            key_created: p.key_created,
            pinned: p.pinned,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire types must serialize exactly as the tunnel's own did when the API carried those.
    fn same_json<A: serde::Serialize, B: serde::Serialize>(a: &A, b: &B) {
        assert_eq!(
            serde_json::to_value(a).unwrap(),
            serde_json::to_value(b).unwrap()
        );
    }

    #[test]
    fn conversions_keep_every_field_and_the_json_shape() {
        for b in [Backend::Kernel, Backend::Userspace] {
            same_json(&b, &wire::Backend::from(b));
            assert_eq!(b.to_string(), wire::Backend::from(b).to_string());
        }
        let t = TunnelStatus {
            up: true,
            since_handshake: Some(3),
            tx_bytes: 10,
            rx_bytes: 20,
            key_age: Some(40),
            problem: Some("handshake timed out".into()),
            backend: Some(Backend::Userspace),
        };
        same_json(&t, &wire::TunnelStatus::from(t.clone()));
        let d = DropCounters {
            malformed: 1,
            rejected: 2,
            spoofed: 3,
            no_peer: 4,
            bad_offload: 5,
        };
        same_json(&d, &wire::DropCounters::from(d.clone()));
        let p = Pin {
            identity: "aWQ=".into(),
            underlay: "198.18.0.12".parse().unwrap(),
            public_key: "cGs=".into(),
            port: 51820,
            key_created: 5,
            pinned: 6,
        };
        same_json(&p, &wire::Pin::from(p.clone()));
    }
}
