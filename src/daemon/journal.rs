//! What this daemon itself attached: one small file per endpoint under the run directory
//! (`attached/<network id>/<endpoint id>`, holding the workload namespace's inode and path).
//!
//! The reconcile re-creates a lost veth pair only for an endpoint found here. An endpoint
//! record comes from the shared store, and a store writer could otherwise name this host and
//! any namespace (the host's own, another tenant's container) and have the reconcile plug it
//! into an overlay. The run directory lives as long as the namespaces it describes (both go
//! with a reboot), like the sandboxes' bind mounts beside it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::model::{Endpoint, NetworkId};

/// The journal of one daemon.
#[derive(Clone, Debug)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn new(run_dir: &Path) -> Journal {
        Journal {
            dir: run_dir.join("attached"),
        }
    }

    fn network_dir(&self, id: &NetworkId) -> PathBuf {
        self.dir.join(id.as_str())
    }

    fn entry(&self, ep: &Endpoint) -> PathBuf {
        self.network_dir(&ep.network_id).join(ep.id.as_str())
    }

    fn content(ep: &Endpoint) -> String {
        format!("{}\n{}\n", ep.netns_inode, ep.netns)
    }

    /// Note that this daemon attached `ep` (after its veth pair exists). Written to a
    /// temporary name and renamed, so a crash never leaves half an entry.
    pub fn record(&self, ep: &Endpoint) -> std::io::Result<()> {
        let dir = self.network_dir(&ep.network_id);
        fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{}.tmp", ep.id));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(Self::content(ep).as_bytes())?;
        drop(f);
        fs::rename(&tmp, self.entry(ep))
    }

    /// Forget `ep` (detached or released). Absent is fine.
    pub fn forget(&self, ep: &Endpoint) {
        let _ = fs::remove_file(self.entry(ep));
    }

    /// Forget every endpoint of a network that is gone.
    pub fn forget_network(&self, id: &NetworkId) {
        let _ = fs::remove_dir_all(self.network_dir(id));
    }

    /// Whether this daemon attached `ep` to the very namespace the record names.
    pub fn vouches_for(&self, ep: &Endpoint) -> bool {
        fs::read_to_string(self.entry(ep)).is_ok_and(|c| c == Self::content(ep))
    }

    /// Every entry, as (network id, endpoint id) strings, for sweeping out stale ones.
    pub fn entries(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let Ok(nets) = fs::read_dir(&self.dir) else {
            return out;
        };
        for net in nets.flatten() {
            let Ok(eps) = fs::read_dir(net.path()) else {
                continue;
            };
            for ep in eps.flatten() {
                out.push((
                    net.file_name().to_string_lossy().into_owned(),
                    ep.file_name().to_string_lossy().into_owned(),
                ));
            }
        }
        out
    }

    /// Remove the entry (network id, endpoint id) as `entries` named it.
    pub fn remove_entry(&self, network: &str, endpoint: &str) {
        let _ = fs::remove_file(self.dir.join(network).join(endpoint));
        let _ = fs::remove_dir(self.dir.join(network));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(netns: &str, inode: u64) -> Endpoint {
        let ip: std::net::Ipv4Addr = "10.9.0.5".parse().unwrap();
        Endpoint {
            network: "blue".parse().unwrap(),
            network_id: "00000000000000aa".parse().unwrap(),
            id: "web1".parse().unwrap(),
            ip: ipnetwork::Ipv4Network::new(ip, 24).unwrap(),
            mac: crate::model::Mac::from_ipv4(ip),
            host: "h1".into(),
            ifname: "eth0".parse().unwrap(),
            netns: netns.into(),
            netns_inode: inode,
            host_ifname: crate::dataplane::spec::host_ifname(ip),
            created: 0,
            origin: Default::default(),
            owner: None,
            mtu: None,
            name: None,
            aliases: Vec::new(),
            ports: Vec::new(),
        }
    }

    #[test]
    fn vouches_only_for_what_it_recorded_and_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        let mine = ep("/run/netns/web1", 4026532890);
        assert!(!j.vouches_for(&mine), "nothing recorded yet");
        j.record(&mine).unwrap();
        assert!(j.vouches_for(&mine));
        // A record rewritten in the store to another namespace is not vouched for.
        assert!(!j.vouches_for(&ep("/proc/1/ns/net", 4026531840)));
        assert!(!j.vouches_for(&ep("/run/netns/web1", 4026531840)));
        assert_eq!(
            j.entries(),
            vec![("00000000000000aa".to_string(), "web1".to_string())]
        );
        j.forget(&mine);
        assert!(!j.vouches_for(&mine));
        j.record(&mine).unwrap();
        j.forget_network(&mine.network_id);
        assert!(j.entries().is_empty());
    }
}
