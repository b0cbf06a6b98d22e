//! What the Docker driver must remember across an rnetd restart, on this host only: which
//! rnet network each Docker network is (Docker does not replay `CreateNetwork`; a later
//! `Join` names the network by Docker's id alone) and how often each IPAM pool was requested.
//!
//! Kept as one small JSON file in the daemon's state dir, rewritten whole (temp file, fsync,
//! rename) on every change, which happens only when Docker networks are created or removed.
//! Endpoints need nothing here: their records in the store carry Docker's endpoint id.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::model::NetworkName;

/// One Docker network on this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The rnet network it is.
    pub network: NetworkName,
    pub subnet: Ipv4Network,
    /// Whether its addresses come from rnet's IPAM driver (then an endpoint's address outlives
    /// the endpoint until Docker releases it through the IPAM driver).
    pub rnet_ipam: bool,
}

/// The driver's durable local state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// By Docker network id.
    #[serde(default)]
    pub networks: BTreeMap<String, Binding>,
    /// IPAM pool id → how many times it is requested and not released.
    #[serde(default)]
    pub pools: BTreeMap<String, u32>,
}

impl State {
    /// Read the state file; a missing file is the empty state.
    pub fn load(path: &Path) -> std::io::Result<State> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e),
        }
    }

    /// Write the state file atomically (a crash leaves the old or the new file, never half).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).expect("state serializes"))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    }

    /// The rnet networks that Docker networks using rnet's IPAM with `subnet` are bound to.
    pub fn ipam_bindings(&self, subnet: Ipv4Network) -> BTreeSet<String> {
        self.networks
            .values()
            .filter(|b| b.rnet_ipam && b.subnet == subnet)
            .map(|b| b.network.to_string())
            .collect()
    }

    /// Count one more request of a pool; returns the new count.
    pub fn acquire_pool(&mut self, id: &str) -> u32 {
        let n = self.pools.entry(id.to_string()).or_insert(0);
        *n += 1;
        *n
    }

    /// Count one release of a pool (forgotten at zero); returns what is left, None if unknown.
    pub fn release_pool(&mut self, id: &str) -> Option<u32> {
        let n = self.pools.get_mut(id)?;
        *n = n.saturating_sub(1);
        let left = *n;
        if left == 0 {
            self.pools.remove(id);
        }
        Some(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_reference_counted() {
        let mut s = State::default();
        assert_eq!(s.acquire_pool("rnet:10.1.0.0/24"), 1);
        assert_eq!(s.acquire_pool("rnet:10.1.0.0/24"), 2);
        assert_eq!(s.release_pool("rnet:10.1.0.0/24"), Some(1));
        assert_eq!(s.release_pool("rnet:10.1.0.0/24"), Some(0));
        assert!(s.pools.is_empty());
        assert_eq!(s.release_pool("rnet:10.1.0.0/24"), None);
    }

    #[test]
    fn saves_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.json");
        assert_eq!(State::load(&path).unwrap(), State::default());
        let mut s = State::default();
        s.networks.insert(
            "n1".into(),
            Binding {
                network: "blue".parse().unwrap(),
                subnet: "10.1.0.0/24".parse().unwrap(),
                rnet_ipam: true,
            },
        );
        s.networks.insert(
            "n2".into(),
            Binding {
                network: "red".parse().unwrap(),
                subnet: "10.1.0.0/24".parse().unwrap(),
                rnet_ipam: false,
            },
        );
        s.acquire_pool("p");
        s.save(&path).unwrap();
        let back = State::load(&path).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            back.ipam_bindings("10.1.0.0/24".parse().unwrap()),
            ["blue".to_string()].into()
        );
        std::fs::write(&path, b"{nonsense").unwrap();
        assert!(State::load(&path).is_err());
    }
}
