//! What rnet reads back from the kernel: links, sandboxes, the underlay, a workload's
//! interface. Plain data, parsed from netlink messages without any I/O, so the reconcile and
//! the service decide on them without a kernel.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use netlink_packet_route::link::{
    InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};

use crate::model::Mac;

/// A link as read back from the kernel (the parts rnet checks).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub mtu: u32,
    pub controller: Option<u32>,
    pub kind: Option<String>,
    pub vni: Option<u32>,
    pub learning: Option<bool>,
    pub proxy: Option<bool>,
    pub port: Option<u16>,
    /// Whether a VXLAN device checksums the UDP of what it sends over IPv4.
    pub udp_csum: Option<bool>,
    pub mac: Option<Mac>,
    /// `IFLA_IFALIAS`: rnet marks a sandbox's bridge with what the sandbox is for.
    pub alias: Option<String>,
    /// `IFLA_LINK_NETNSID`: for a VXLAN device, the namespace (as an id local to the
    /// namespace that reads it) where its UDP socket lives; None when it is the device's own.
    pub link_netnsid: Option<i32>,
}

impl LinkState {
    /// The parts rnet checks of a link message (an `RTM_NEWLINK` answer or dump entry).
    pub fn from_message(m: &LinkMessage) -> LinkState {
        let mut s = LinkState {
            index: m.header.index,
            up: m.header.flags.contains(LinkFlags::Up),
            ..Default::default()
        };
        for attr in &m.attributes {
            match attr {
                LinkAttribute::IfName(n) => s.name = n.clone(),
                LinkAttribute::Mtu(v) => s.mtu = *v,
                LinkAttribute::Controller(c) => s.controller = Some(*c),
                LinkAttribute::Address(a) if a.len() == 6 => {
                    s.mac = Some(Mac([a[0], a[1], a[2], a[3], a[4], a[5]]))
                }
                LinkAttribute::LinkInfo(infos) => s.read_info(infos),
                LinkAttribute::IfAlias(a) => s.alias = Some(a.clone()),
                LinkAttribute::LinkNetNsId(id) => s.link_netnsid = Some(*id),
                _ => {}
            }
        }
        s
    }

    fn read_info(&mut self, infos: &[LinkInfo]) {
        for info in infos {
            match info {
                LinkInfo::Kind(k) => self.kind = Some(k.to_string()),
                LinkInfo::Data(InfoData::Vxlan(v)) => {
                    for a in v {
                        match a {
                            InfoVxlan::Id(id) => self.vni = Some(*id),
                            InfoVxlan::Learning(l) => self.learning = Some(*l),
                            InfoVxlan::Proxy(p) => self.proxy = Some(*p),
                            InfoVxlan::Port(p) => self.port = Some(*p),
                            InfoVxlan::UDPCsum(c) => self.udp_csum = Some(*c),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// What a sandbox holds, read back from the kernel.
#[derive(Clone, Debug, Default)]
pub struct SandboxState {
    pub links: Vec<LinkState>,
    /// IPv4 addresses per interface index.
    pub addresses: Vec<(u32, Ipv4Network)>,
    /// The ids, as the sandbox knows them, of the host namespace and the tunnel namespace:
    /// compared with a VXLAN device's `link_netnsid`, they tell where its socket lives.
    pub host_nsid: Option<i32>,
    pub tunnel_nsid: Option<i32>,
}

impl SandboxState {
    pub fn link(&self, name: &str) -> Option<&LinkState> {
        self.links.iter().find(|l| l.name == name)
    }
}

/// The host's underlay as the kernel sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Underlay {
    pub address: Ipv4Addr,
    pub ifindex: u32,
    pub mtu: u32,
}

/// A workload interface as read back for a CNI CHECK.
#[derive(Clone, Debug, Default)]
pub struct WorkloadLink {
    pub link: LinkState,
    pub addresses: Vec<Ipv4Network>,
    /// Gateways of the IPv4 default routes (main table) through this interface.
    pub default_gateways: Vec<Ipv4Addr>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::InfoKind;
    use rtnetlink::LinkVxlan;

    #[test]
    fn link_state_reads_vxlan_info() {
        let msg = LinkVxlan::new("vx-a", 42)
            .port(4789)
            .learning(false)
            .proxy(true)
            .build();
        let s = LinkState::from_message(&msg);
        assert_eq!(s.name, "vx-a");
        assert_eq!(s.vni, Some(42));
        assert_eq!(s.learning, Some(false));
        assert_eq!(s.proxy, Some(true));
        assert_eq!(s.port, Some(4789));
        assert_eq!(
            s.kind.as_deref(),
            Some(InfoKind::Vxlan.to_string().as_str())
        );
    }
}
