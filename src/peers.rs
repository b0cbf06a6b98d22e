//! Pure peer-table planning: which FDB and neighbour entries each local network's VXLAN
//! device should hold, and the difference to what it holds.
//!
//! For a network with at least one local endpoint, every endpoint on another *reachable*
//! host gets an FDB entry (its MAC → that host's VTEP) and a permanent neighbour entry (its
//! IP → its MAC, answered locally by the VXLAN device's ARP proxy); every reachable peer host
//! of the network gets one all-zeros FDB entry, so broadcast and unknown unicast are
//! replicated to the network's peers only (head-end replication, no multicast).
//!
//! A host is reachable while its daemon's presence record lives, or while its underlay
//! still answers probes after the record expired ("daemon down": its workloads still run).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::model::{Endpoint, HostRecord, Mac};

/// One VXLAN FDB entry: frames for `mac` go to the VTEP `dst` (all-zeros MAC: flood).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: Mac,
    pub dst: Ipv4Addr,
}

impl FdbEntry {
    pub fn is_flood(&self) -> bool {
        self.mac.is_zero()
    }
}

/// One neighbour entry on the VXLAN device: `ip` is at `mac`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NeighEntry {
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

/// The peer tables of one VXLAN device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    pub fdb: BTreeSet<FdbEntry>,
    pub neigh: BTreeSet<NeighEntry>,
}

impl Tables {
    pub fn len(&self) -> usize {
        self.fdb.len() + self.neigh.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What to change to turn observed tables into desired ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableDiff {
    pub add_fdb: Vec<FdbEntry>,
    pub del_fdb: Vec<FdbEntry>,
    pub add_neigh: Vec<NeighEntry>,
    pub del_neigh: Vec<NeighEntry>,
}

impl TableDiff {
    pub fn is_empty(&self) -> bool {
        self.add_fdb.is_empty()
            && self.del_fdb.is_empty()
            && self.add_neigh.is_empty()
            && self.del_neigh.is_empty()
    }

    pub fn len(&self) -> usize {
        self.add_fdb.len() + self.del_fdb.len() + self.add_neigh.len() + self.del_neigh.len()
    }
}

/// The desired tables of `network` on host `me`.
///
/// `hosts` maps host ids to their last known records (for the VTEP address); `reachable`
/// are the hosts whose entries should be programmed.
pub fn desired<'a>(
    me: &str,
    endpoints: impl IntoIterator<Item = &'a Endpoint>,
    hosts: &BTreeMap<String, HostRecord>,
    reachable: &BTreeSet<String>,
) -> Tables {
    let mut t = Tables::default();
    for ep in endpoints {
        if ep.host == me || !reachable.contains(&ep.host) {
            continue;
        }
        let Some(host) = hosts.get(&ep.host) else {
            continue;
        };
        t.fdb.insert(FdbEntry {
            mac: ep.mac,
            dst: host.underlay,
        });
        t.fdb.insert(FdbEntry {
            mac: Mac([0; 6]),
            dst: host.underlay,
        });
        t.neigh.insert(NeighEntry {
            ip: ep.ip.ip(),
            mac: ep.mac,
        });
    }
    t
}

/// What to add and delete so `observed` becomes `desired`. A unicast MAC pointing at the
/// wrong VTEP is re-added (replace semantics), not deleted; flood entries are keyed by VTEP.
pub fn diff(desired: &Tables, observed: &Tables) -> TableDiff {
    let want_mac: BTreeMap<Mac, Ipv4Addr> = desired
        .fdb
        .iter()
        .filter(|e| !e.is_flood())
        .map(|e| (e.mac, e.dst))
        .collect();
    let want_ip: BTreeMap<Ipv4Addr, Mac> = desired.neigh.iter().map(|e| (e.ip, e.mac)).collect();
    TableDiff {
        add_fdb: desired.fdb.difference(&observed.fdb).copied().collect(),
        del_fdb: observed
            .fdb
            .difference(&desired.fdb)
            .filter(|e| e.is_flood() || !want_mac.contains_key(&e.mac))
            .copied()
            .collect(),
        add_neigh: desired.neigh.difference(&observed.neigh).copied().collect(),
        del_neigh: observed
            .neigh
            .difference(&desired.neigh)
            .filter(|e| !want_ip.contains_key(&e.ip))
            .copied()
            .collect(),
    }
}

/// How a peer host looks from here (on the wire as `api::types::PeerState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// This host.
    Local,
    /// Its daemon's presence record lives.
    Live,
    /// The record expired but the host still answers probes: its workloads keep their entries.
    DaemonDown,
    /// Neither: its entries are removed.
    Gone,
}

impl From<PeerState> for crate::api::types::PeerState {
    fn from(s: PeerState) -> Self {
        use crate::api::types::PeerState as Wire;
        match s {
            PeerState::Local => Wire::Local,
            PeerState::Live => Wire::Live,
            PeerState::DaemonDown => Wire::DaemonDown,
            PeerState::Gone => Wire::Gone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_states_go_on_the_wire_as_before() {
        use crate::api::types::PeerState as Wire;
        let wire = |s| serde_json::to_value(Wire::from(s)).unwrap();
        assert_eq!(wire(PeerState::Local), "self");
        assert_eq!(wire(PeerState::Live), "live");
        assert_eq!(wire(PeerState::DaemonDown), "daemon-down");
        assert_eq!(wire(PeerState::Gone), "gone");
        assert_eq!(Wire::from(PeerState::DaemonDown).to_string(), "daemon down");
    }

    fn ep(host: &str, ip: &str) -> Endpoint {
        let ip: Ipv4Addr = ip.parse().unwrap();
        Endpoint {
            network_id: "00000000000000aa".parse().unwrap(),
            network: "n".parse().unwrap(),
            id: format!("e{ip}").replace('.', "-").parse().unwrap(),
            ip: ipnetwork::Ipv4Network::new(ip, 24).unwrap(),
            mac: Mac::from_ipv4(ip),
            host: host.into(),
            ifname: "eth0".parse().unwrap(),
            netns: String::new(),
            netns_inode: 0,
            host_ifname: String::new(),
            created: 0,
            origin: Default::default(),
            owner: None,
            mtu: None,
            name: None,
            aliases: Vec::new(),
            ports: Vec::new(),
        }
    }

    fn host(id: &str, underlay: &str) -> (String, HostRecord) {
        (
            id.to_string(),
            HostRecord {
                id: id.into(),
                underlay: underlay.parse().unwrap(),
                vtep_mac: Mac::from_name(0x56, id),
                started: 0,
                renewed: 0,
                wireguard: None,
                ipsec: None,
            },
        )
    }

    #[test]
    fn desired_covers_reachable_remote_endpoints_and_one_flood_entry_per_peer() {
        let eps = [
            ep("h1", "10.0.0.2"),
            ep("h2", "10.0.0.3"),
            ep("h2", "10.0.0.4"),
            ep("h3", "10.0.0.5"),
        ];
        let hosts: BTreeMap<_, _> = [
            host("h1", "198.18.0.11"),
            host("h2", "198.18.0.12"),
            host("h3", "198.18.0.13"),
        ]
        .into();
        let reachable: BTreeSet<String> = ["h1".to_string(), "h2".to_string()].into();
        let t = desired("h1", &eps, &hosts, &reachable);
        assert_eq!(
            t.neigh.len(),
            2,
            "h2's two endpoints; h1 is local and h3 unreachable"
        );
        assert_eq!(t.fdb.len(), 3, "two unicast + one flood entry for h2");
        assert!(t.fdb.contains(&FdbEntry {
            mac: Mac([0; 6]),
            dst: "198.18.0.12".parse().unwrap()
        }));
    }

    #[test]
    fn diff_adds_missing_and_deletes_strays_but_replaces_moved_macs() {
        let m = Mac::from_ipv4("10.0.0.3".parse().unwrap());
        let desired = Tables {
            fdb: [FdbEntry {
                mac: m,
                dst: "198.18.0.12".parse().unwrap(),
            }]
            .into(),
            neigh: [NeighEntry {
                ip: "10.0.0.3".parse().unwrap(),
                mac: m,
            }]
            .into(),
        };
        let stray_mac = Mac::from_ipv4("10.0.0.9".parse().unwrap());
        let observed = Tables {
            fdb: [
                FdbEntry {
                    mac: m,
                    dst: "198.18.0.99".parse().unwrap(),
                },
                FdbEntry {
                    mac: stray_mac,
                    dst: "198.18.0.12".parse().unwrap(),
                },
                FdbEntry {
                    mac: Mac([0; 6]),
                    dst: "198.18.0.13".parse().unwrap(),
                },
            ]
            .into(),
            neigh: [NeighEntry {
                ip: "10.0.0.9".parse().unwrap(),
                mac: stray_mac,
            }]
            .into(),
        };
        let d = diff(&desired, &observed);
        assert_eq!(
            d.add_fdb,
            vec![FdbEntry {
                mac: m,
                dst: "198.18.0.12".parse().unwrap()
            }]
        );
        assert_eq!(
            d.del_fdb.len(),
            2,
            "the stray MAC and the stale flood entry: {d:?}"
        );
        assert!(
            !d.del_fdb.iter().any(|e| e.mac == m),
            "a moved MAC is replaced, not deleted"
        );
        assert_eq!(d.add_neigh.len(), 1);
        assert_eq!(d.del_neigh.len(), 1);
        assert!(diff(&desired, &desired).is_empty());
    }
}
