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

/// The VTEP address of every host whose entries should be programmed: `reachable` hosts
/// with a known record (`hosts`, by host id).
pub fn vteps(
    hosts: &BTreeMap<String, HostRecord>,
    reachable: &BTreeSet<String>,
) -> BTreeMap<String, Ipv4Addr> {
    reachable
        .iter()
        .filter_map(|id| Some((id.clone(), hosts.get(id)?.underlay)))
        .collect()
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
    Plan::new(me, endpoints, &vteps(hosts, reachable)).tables()
}

/// What one remote endpoint puts in a VXLAN device's tables: its MAC (FDB → `vtep`, and the
/// neighbour entry of its IP) and its host's flood entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote {
    pub mac: Mac,
    pub vtep: Ipv4Addr,
}

impl Remote {
    /// The entries of `ep` as seen from host `me`; None when it is local or its host's
    /// entries are not programmed (`vteps`: see [`vteps`]).
    pub fn of(me: &str, ep: &Endpoint, vteps: &BTreeMap<String, Ipv4Addr>) -> Option<Remote> {
        if ep.host == me {
            return None;
        }
        Some(Remote {
            mac: ep.mac,
            vtep: *vteps.get(ep.host.as_str())?,
        })
    }

    fn fdb(&self) -> [FdbEntry; 2] {
        [
            FdbEntry {
                mac: self.mac,
                dst: self.vtep,
            },
            FdbEntry {
                mac: Mac([0; 6]),
                dst: self.vtep,
            },
        ]
    }
}

/// A network's desired peer tables, kept so that a change of a few endpoints is planned in
/// proportion to the change rather than to the table (tens of thousands of entries): each
/// remote endpoint's share by IP, and how many endpoints want each FDB entry (a host's flood
/// entry is wanted by all of its endpoints, and goes with the last).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    remotes: BTreeMap<Ipv4Addr, Remote>,
    fdb: BTreeMap<FdbEntry, u32>,
}

impl Plan {
    /// The plan of a network with these `endpoints` (all of one network), seen from `me`.
    pub fn new<'a>(
        me: &str,
        endpoints: impl IntoIterator<Item = &'a Endpoint>,
        vteps: &BTreeMap<String, Ipv4Addr>,
    ) -> Plan {
        let mut plan = Plan::default();
        for ep in endpoints {
            if let Some(r) = Remote::of(me, ep, vteps) {
                plan.set(ep.ip.ip(), Some(r));
            }
        }
        plan
    }

    /// The tables this plan wants.
    pub fn tables(&self) -> Tables {
        Tables {
            fdb: self.fdb.keys().copied().collect(),
            neigh: self
                .remotes
                .iter()
                .map(|(&ip, r)| NeighEntry { ip, mac: r.mac })
                .collect(),
        }
    }

    /// Apply changed endpoints (by IP: its entries now, None when it has none) and return
    /// what to change in tables that held this plan's tables before. The result is what
    /// [`diff`] of the old and new tables would return, at the cost of the change.
    pub fn update(
        &mut self,
        changes: impl IntoIterator<Item = (Ipv4Addr, Option<Remote>)>,
    ) -> TableDiff {
        let mut out = TableDiff::default();
        // Every entry the changes touch, with whether (or as what) it was wanted before.
        let mut fdb_before: BTreeMap<FdbEntry, bool> = BTreeMap::new();
        let mut mac_before: BTreeMap<Ipv4Addr, Option<Mac>> = BTreeMap::new();
        for (ip, new) in changes {
            let old = self.remotes.get(&ip).copied();
            if old == new {
                continue;
            }
            for e in old.iter().chain(new.iter()).flat_map(Remote::fdb) {
                let wanted = self.fdb.contains_key(&e);
                fdb_before.entry(e).or_insert(wanted);
            }
            mac_before.entry(ip).or_insert(old.map(|r| r.mac));
            self.set(ip, new);
        }
        for (ip, before) in mac_before {
            match (before, self.remotes.get(&ip).map(|r| r.mac)) {
                (before, Some(mac)) if before != Some(mac) => {
                    out.add_neigh.push(NeighEntry { ip, mac })
                }
                (Some(mac), None) => out.del_neigh.push(NeighEntry { ip, mac }),
                _ => {}
            }
        }
        for (e, before) in fdb_before {
            match (before, self.fdb.contains_key(&e)) {
                (false, true) => out.add_fdb.push(e),
                // A unicast MAC still wanted toward another VTEP is replaced by that add,
                // not deleted (as in `diff`).
                (true, false) if e.is_flood() || !self.wants_mac(e.mac) => out.del_fdb.push(e),
                _ => {}
            }
        }
        out
    }

    /// Set (or with None, remove) the entries of the endpoint at `ip`.
    fn set(&mut self, ip: Ipv4Addr, new: Option<Remote>) {
        let old = match new {
            Some(r) => self.remotes.insert(ip, r),
            None => self.remotes.remove(&ip),
        };
        for e in old.iter().flat_map(Remote::fdb) {
            if let Some(n) = self.fdb.get_mut(&e) {
                *n -= 1;
                if *n == 0 {
                    self.fdb.remove(&e);
                }
            }
        }
        for e in new.iter().flat_map(Remote::fdb) {
            *self.fdb.entry(e).or_insert(0) += 1;
        }
    }

    /// Whether any unicast FDB entry for `mac` is wanted.
    fn wants_mac(&self, mac: Mac) -> bool {
        let lo = FdbEntry {
            mac,
            dst: Ipv4Addr::UNSPECIFIED,
        };
        let hi = FdbEntry {
            mac,
            dst: Ipv4Addr::BROADCAST,
        };
        !mac.is_zero() && self.fdb.range(lo..=hi).next().is_some()
    }
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
        (id.to_string(), HostRecord::plain(id, underlay))
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

    /// Endpoints on up to four hosts; `h4` is never reachable and `h1` is this host.
    fn vteps_of_three() -> BTreeMap<String, Ipv4Addr> {
        [
            ("h2".to_string(), "198.18.0.12".parse().unwrap()),
            ("h3".to_string(), "198.18.0.13".parse().unwrap()),
            ("h1".to_string(), "198.18.0.11".parse().unwrap()),
        ]
        .into()
    }

    #[test]
    fn a_plan_updated_change_by_change_plans_what_diff_would() {
        let vteps = vteps_of_three();
        let mut endpoints: BTreeMap<Ipv4Addr, Endpoint> = BTreeMap::new();
        let mut plan = Plan::default();
        // A fixed pseudo-random walk (xorshift): batches of puts, moves and deletes over 40
        // addresses, some sharing a MAC (two records claiming one workload).
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for step in 0..400 {
            let before = plan.tables();
            let mut changed = BTreeSet::new();
            for _ in 0..=next(6) {
                let ip = Ipv4Addr::new(10, 0, 0, 2 + next(40) as u8);
                if next(4) == 0 {
                    endpoints.remove(&ip);
                } else {
                    let mut e = ep(&format!("h{}", 1 + next(4)), &ip.to_string());
                    if next(8) == 0 {
                        e.mac = Mac::from_ipv4(Ipv4Addr::new(10, 0, 0, 2));
                    }
                    endpoints.insert(ip, e);
                }
                changed.insert(ip);
            }
            let got = plan.update(changed.iter().map(|ip| {
                let remote = endpoints.get(ip).and_then(|e| Remote::of("h1", e, &vteps));
                (*ip, remote)
            }));
            let fresh = Plan::new("h1", endpoints.values(), &vteps);
            assert_eq!(
                plan, fresh,
                "step {step}: the plan drifted from one built anew"
            );
            assert_eq!(
                got,
                diff(&fresh.tables(), &before),
                "step {step}: the update's changes differ from the full difference"
            );
        }
    }

    #[test]
    fn a_hosts_flood_entry_goes_with_its_last_endpoint_and_a_moved_mac_is_replaced() {
        let vteps = vteps_of_three();
        let a = ep("h2", "10.0.0.2");
        let b = ep("h2", "10.0.0.3");
        let mut plan = Plan::new("h1", [&a, &b], &vteps);
        let flood = |dst: &str| FdbEntry {
            mac: Mac([0; 6]),
            dst: dst.parse().unwrap(),
        };
        let d = plan.update([(a.ip.ip(), None)]);
        assert!(
            d.del_fdb.iter().all(|e| !e.is_flood()),
            "h2 still has b: {d:?}"
        );
        // b moves to h3: its MAC is re-pointed (replace), h2's flood entry goes, h3's comes.
        let d = plan.update([(b.ip.ip(), Remote::of("h1", &ep("h3", "10.0.0.3"), &vteps))]);
        assert_eq!(d.del_fdb, vec![flood("198.18.0.12")], "{d:?}");
        assert!(d.add_fdb.contains(&flood("198.18.0.13")), "{d:?}");
        assert!(
            d.add_neigh.is_empty() && d.del_neigh.is_empty(),
            "same IP, same MAC: {d:?}"
        );
        assert!(plan.update([(b.ip.ip(), None)]).del_fdb.len() == 2);
        assert!(plan.tables().is_empty());
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
