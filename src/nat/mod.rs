//! Egress and published ports: the host's `ip rnet` nftables table, described by pure code.
//!
//! Per network with egress and a local endpoint, the sandbox has an uplink (a veth pair to
//! the host namespace, host side `rnu<id>`) and a default route through it; the host routes
//! the network's subnet back through the uplink. This module says what the host's NAT table
//! must hold for that:
//!
//! ```text
//! table ip rnet {
//!   chain prerouting  { type nat hook prerouting priority -100; }   # published ports, from outside
//!   chain output      { type nat hook output priority -100; }       # published ports, from the host
//!   chain postrouting { type nat hook postrouting priority 100; }   # egress: masquerade
//!   chain forward     { type filter hook forward priority 0; }      # no overlay-to-overlay via the host
//! }
//! ```
//!
//! `desired` computes the rules from records; `nft` programs them (the whole table replaced
//! in one batch) and reads them back; `audit` compares the two for `rnet doctor`.

pub mod nft;

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::model::{Endpoint, Network, NetworkId, PortMapping, Proto};

/// The name of rnet's own table (family ip) in the host namespace.
pub const TABLE: &str = "rnet";
/// Host-side uplink names start with this; nothing else may use it.
pub const UPLINK_PREFIX: &str = "rnu";

/// The chains of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Chain {
    Prerouting,
    Output,
    Postrouting,
    Forward,
}

impl Chain {
    pub const ALL: [Chain; 4] = [
        Chain::Prerouting,
        Chain::Output,
        Chain::Postrouting,
        Chain::Forward,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Chain::Prerouting => "prerouting",
            Chain::Output => "output",
            Chain::Postrouting => "postrouting",
            Chain::Forward => "forward",
        }
    }
}

/// One rule of the table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// `ip saddr SUBNET oifname != "rnu*" masquerade`: a network's traffic leaving the host
    /// (not into another uplink) takes the outgoing interface's address.
    Masquerade {
        network: String,
        subnet: Ipv4Network,
    },
    /// `[ip daddr HOST_IP | fib daddr type local] meta l4proto P th dport PORT dnat to IP:PORT`
    /// in `chain` (prerouting for traffic from outside, output for the host's own).
    Dnat {
        chain: Chain,
        endpoint: String,
        proto: Proto,
        host_ip: Option<Ipv4Addr>,
        host_port: u16,
        to: Ipv4Addr,
        to_port: u16,
    },
    /// `iifname "rnu*" oifname "rnu*" ct status dnat accept`: a published port stays
    /// reachable from workloads of other networks, as with Docker.
    AcceptPublished,
    /// `iifname "rnu*" oifname "rnu*" drop`: networks never reach each other through the host.
    Isolate,
}

impl Rule {
    pub fn chain(&self) -> Chain {
        match self {
            Rule::Masquerade { .. } => Chain::Postrouting,
            Rule::Dnat { chain, .. } => *chain,
            Rule::AcceptPublished | Rule::Isolate => Chain::Forward,
        }
    }
}

/// The rule's comment in the kernel: how a person (and the audit) tells rules apart.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Masquerade { network, subnet } => {
                write!(f, "rnet masquerade {subnet} (network {network})")
            }
            Rule::Dnat {
                chain,
                endpoint,
                proto,
                host_ip,
                host_port,
                to,
                to_port,
            } => {
                let ip = host_ip.map_or("*".to_string(), |i| i.to_string());
                write!(
                    f,
                    "rnet {} dnat {proto} {ip}:{host_port} -> {to}:{to_port} (endpoint {endpoint})",
                    chain.name()
                )
            }
            Rule::AcceptPublished => f.write_str("rnet accept published ports between uplinks"),
            Rule::Isolate => f.write_str("rnet drop between uplinks"),
        }
    }
}

/// The whole table; empty means "no table at all".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub rules: Vec<Rule>,
}

impl Ruleset {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules of one chain, in order.
    pub fn chain(&self, chain: Chain) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(move |r| r.chain() == chain)
    }
}

/// Whether `net` gets an uplink on a host whose sandboxes are `sandboxes`: it has egress and
/// its sandbox is here. The uplink lives as long as the sandbox, not only while an endpoint
/// is attached: a workload that restarts would otherwise pay for building the uplink and the
/// NAT table again (about 25 ms) on every attach.
pub fn wants_uplink(net: &Network, sandboxes: &BTreeSet<NetworkId>) -> bool {
    net.egress && !net.internal && sandboxes.contains(&net.id)
}

/// The table this host should have, from the valid networks, this host's endpoints and the
/// networks whose sandbox is here.
pub fn desired(
    networks: &[Network],
    local: &[Endpoint],
    sandboxes: &BTreeSet<NetworkId>,
) -> Ruleset {
    let mut nets: Vec<&Network> = networks
        .iter()
        .filter(|n| wants_uplink(n, sandboxes))
        .collect();
    nets.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rules: Vec<Rule> = nets
        .iter()
        .map(|n| Rule::Masquerade {
            network: n.name.to_string(),
            subnet: n.subnet,
        })
        .collect();
    let mut dnats = Vec::new();
    for n in &nets {
        for e in local
            .iter()
            .filter(|e| e.network_id == n.id && !e.netns.is_empty())
        {
            for p in &e.ports {
                dnats.extend(dnat_rules(n, e, p));
            }
        }
    }
    dnats.sort();
    rules.extend(dnats);
    if !rules.is_empty() {
        rules.push(Rule::AcceptPublished);
        rules.push(Rule::Isolate);
    }
    Ruleset { rules }
}

/// The prerouting and output DNAT of one mapping (none for an out-of-range one: records are
/// validated before they get here, this only keeps a bad one from reaching the kernel).
fn dnat_rules(net: &Network, ep: &Endpoint, p: &PortMapping) -> Vec<Rule> {
    let (Ok(host_port), Ok(to_port)) =
        (u16::try_from(p.host_port), u16::try_from(p.container_port))
    else {
        return Vec::new();
    };
    if host_port == 0 || to_port == 0 {
        return Vec::new();
    }
    [Chain::Prerouting, Chain::Output]
        .into_iter()
        .map(|chain| Rule::Dnat {
            chain,
            // Short, as Docker shows ids: a rule's comment holds at most 125 bytes.
            endpoint: format!(
                "{}/{}",
                net.name,
                ep.id.as_str().chars().take(12).collect::<String>()
            ),
            proto: p.proto,
            host_ip: p.host_ip,
            host_port,
            to: ep.ip.ip(),
            to_port,
        })
        .collect()
}

/// The first endpoint of this host (other than `except`) that already publishes a port one of
/// `wanted` would take, with the clashing mapping.
pub fn port_conflict<'a>(
    local: &'a [Endpoint],
    wanted: &[PortMapping],
    except: Option<&str>,
) -> Option<(&'a Endpoint, PortMapping)> {
    local
        .iter()
        .filter(|e| except != Some(e.id.as_str()))
        .find_map(|e| {
            e.ports
                .iter()
                .find(|p| wanted.iter().any(|w| w.clashes(p)))
                .map(|p| (e, *p))
        })
}

/// Two mappings in one request that take the same host port.
pub fn duplicate_in(wanted: &[PortMapping]) -> Option<(PortMapping, PortMapping)> {
    wanted.iter().enumerate().find_map(|(i, a)| {
        wanted[i + 1..]
            .iter()
            .find(|b| a.clashes(b))
            .map(|b| (*a, *b))
    })
}

/// A rule as the kernel holds it (or as it would, for a desired one): its chain, its comment,
/// and libnftnl's rendering of its expressions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleImage {
    pub chain: String,
    pub comment: String,
    pub exprs: String,
}

/// A difference between the table wanted and the one the kernel has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    /// The table is not there at all.
    TableMissing,
    /// An rnet table exists where none is wanted.
    TableStray,
    Missing(RuleImage),
    Stray(RuleImage),
    /// A rule with the wanted comment whose expressions differ.
    Changed {
        wanted: RuleImage,
        found: RuleImage,
    },
}

/// Compare the images of the desired rules with what the kernel has (`None`: no table).
pub fn audit(desired: &[RuleImage], observed: Option<&[RuleImage]>) -> Vec<Drift> {
    let Some(observed) = observed else {
        return if desired.is_empty() {
            Vec::new()
        } else {
            vec![Drift::TableMissing]
        };
    };
    if desired.is_empty() {
        return vec![Drift::TableStray];
    }
    let mut stray: Vec<&RuleImage> = observed.iter().filter(|o| !desired.contains(o)).collect();
    let mut out = Vec::new();
    for want in desired.iter().filter(|d| !observed.contains(d)) {
        match stray
            .iter()
            .position(|o| o.chain == want.chain && o.comment == want.comment)
        {
            Some(i) => out.push(Drift::Changed {
                wanted: want.clone(),
                found: stray.remove(i).clone(),
            }),
            None => out.push(Drift::Missing(want.clone())),
        }
    }
    out.extend(stray.into_iter().map(|o| Drift::Stray(o.clone())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Encryption, Mac, Origin, Vni};

    fn net(name: &str, id: &str, subnet: &str) -> Network {
        let subnet: Ipv4Network = subnet.parse().unwrap();
        Network {
            name: name.parse().unwrap(),
            id: id.parse().unwrap(),
            vni: Vni::new(100).unwrap(),
            subnet,
            gateway: subnet.nth(1).unwrap(),
            mtu: 1450,
            encryption: Encryption::None,
            allow_overlap: false,
            egress: true,
            internal: false,
        }
    }

    fn ep(net: &Network, id: &str, ip: &str, ports: &[&str]) -> Endpoint {
        Endpoint {
            network: net.name.clone(),
            network_id: net.id.clone(),
            id: id.parse().unwrap(),
            ip: Ipv4Network::new(ip.parse().unwrap(), 24).unwrap(),
            mac: Mac::from_ipv4(ip.parse().unwrap()),
            host: "h1".into(),
            ifname: "eth0".parse().unwrap(),
            netns: "/run/netns/w".into(),
            netns_inode: 1,
            host_ifname: "ve".into(),
            created: 0,
            origin: Origin::Cli,
            owner: None,
            mtu: None,
            ports: ports.iter().map(|p| p.parse().unwrap()).collect(),
            name: None,
            aliases: Vec::new(),
        }
    }

    fn here(nets: &[&Network]) -> BTreeSet<NetworkId> {
        nets.iter().map(|n| n.id.clone()).collect()
    }

    #[test]
    fn egress_networks_with_a_sandbox_here_are_masqueraded() {
        let blue = net("blue", "00000000000000b1", "10.1.0.0/24");
        let red = net("red", "00000000000000e1", "10.2.0.0/24");
        let mut quiet = net("quiet", "00000000000000c1", "10.3.0.0/24");
        quiet.egress = false;
        let mut inner = net("inner", "00000000000000d1", "10.4.0.0/24");
        inner.egress = false;
        inner.internal = true;
        let nets = [blue.clone(), red.clone(), quiet.clone(), inner.clone()];
        // red has an endpoint here (Docker's IPAM hold) but no sandbox yet.
        let mut held = ep(&red, "held", "10.2.0.2", &[]);
        held.netns.clear();
        let local = [
            ep(&blue, "a", "10.1.0.2", &[]),
            held,
            ep(&quiet, "q", "10.3.0.2", &[]),
            ep(&inner, "i", "10.4.0.2", &[]),
        ];
        let sandboxes = here(&[&blue, &quiet, &inner]);
        let rs = desired(&nets, &local, &sandboxes);
        assert_eq!(
            rs.rules,
            vec![
                Rule::Masquerade {
                    network: "blue".into(),
                    subnet: "10.1.0.0/24".parse().unwrap()
                },
                Rule::AcceptPublished,
                Rule::Isolate,
            ]
        );
        assert!(wants_uplink(&blue, &sandboxes));
        assert!(!wants_uplink(&red, &sandboxes) && !wants_uplink(&quiet, &sandboxes));
        assert!(!wants_uplink(&inner, &sandboxes));
        // The last endpoint gone, the sandbox (and with it the masquerade) stays.
        assert_eq!(desired(&nets, &[], &sandboxes), rs);
    }

    #[test]
    fn no_sandbox_here_means_no_table() {
        let blue = net("blue", "00000000000000b1", "10.1.0.0/24");
        let local = [ep(&blue, "web", "10.1.0.5", &["8080:80"])];
        assert!(desired(std::slice::from_ref(&blue), &local, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn published_ports_get_prerouting_and_output_dnat() {
        let blue = net("blue", "00000000000000b1", "10.1.0.0/24");
        let local = [ep(&blue, "web", "10.1.0.5", &["8080:80", "5353:53/udp"])];
        let rs = desired(std::slice::from_ref(&blue), &local, &here(&[&blue]));
        let pre: Vec<String> = rs.chain(Chain::Prerouting).map(|r| r.to_string()).collect();
        assert_eq!(
            pre,
            vec![
                "rnet prerouting dnat tcp *:8080 -> 10.1.0.5:80 (endpoint blue/web)",
                "rnet prerouting dnat udp *:5353 -> 10.1.0.5:53 (endpoint blue/web)",
            ]
        );
        assert_eq!(rs.chain(Chain::Output).count(), 2);
        // An endpoint of another network with the same ports does not leak in.
        let other = net("red", "00000000000000e1", "10.2.0.0/24");
        let stray = ep(&other, "x", "10.2.0.5", &["9090:90"]);
        let sandboxes = here(&[&blue, &other]);
        let rs2 = desired(&[blue], &[local[0].clone(), stray], &sandboxes);
        assert_eq!(rs2, rs);
    }

    #[test]
    fn conflicting_ports_are_named() {
        let blue = net("blue", "00000000000000b1", "10.1.0.0/24");
        let local = [ep(&blue, "web", "10.1.0.5", &["8080:80"])];
        let wanted: Vec<PortMapping> = vec!["8080:81".parse().unwrap()];
        let (who, m) = port_conflict(&local, &wanted, None).unwrap();
        assert_eq!((who.id.as_str(), m.host_port), ("web", 8080));
        assert!(port_conflict(&local, &wanted, Some("web")).is_none());
        assert!(port_conflict(&local, &["8080:80/udp".parse().unwrap()], None).is_none());
        let dup = ["80:1".parse().unwrap(), "80:2".parse().unwrap()];
        assert!(duplicate_in(&dup).is_some());
        assert!(duplicate_in(&dup[..1]).is_none());
    }

    fn img(chain: &str, comment: &str, exprs: &str) -> RuleImage {
        RuleImage {
            chain: chain.into(),
            comment: comment.into(),
            exprs: exprs.into(),
        }
    }

    #[test]
    fn audit_names_missing_stray_and_changed_rules() {
        let a = img("postrouting", "masq a", "x");
        let b = img("forward", "drop", "y");
        assert!(audit(&[a.clone(), b.clone()], Some(&[b.clone(), a.clone()])).is_empty());
        assert_eq!(
            audit(std::slice::from_ref(&a), None),
            vec![Drift::TableMissing]
        );
        assert!(audit(&[], None).is_empty());
        assert_eq!(audit(&[], Some(&[])), vec![Drift::TableStray]);
        let changed = img("postrouting", "masq a", "z");
        let extra = img("prerouting", "hand-made", "w");
        let d = audit(
            &[a.clone(), b.clone()],
            Some(&[changed.clone(), extra.clone()]),
        );
        assert_eq!(
            d,
            vec![
                Drift::Changed {
                    wanted: a,
                    found: changed
                },
                Drift::Missing(b),
                Drift::Stray(extra),
            ]
        );
    }
}
