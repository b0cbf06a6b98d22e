//! Pure descriptions of kernel objects, derived from store records.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;

use crate::model::{
    Encryption, Endpoint, Mac, Network, NetworkId, IPSEC_VXLAN_PORT, VXLAN_OVERHEAD, VXLAN_PORT,
};

/// The bridge inside every sandbox; sandboxes are separate namespaces, so one name fits all.
pub const BRIDGE: &str = "br0";
/// MAC kind byte for sandbox bridges (see `Mac::from_name`).
const BRIDGE_MAC_KIND: u8 = 0x42;

/// What one network's sandbox namespace should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Where the sandbox namespace is bind-mounted.
    pub netns: PathBuf,
    /// The network this sandbox is for, and how its traffic is carried: both written into the
    /// kernel (the bridge's alias) so a sandbox is never mistaken for another network's, and
    /// an encrypted one is never quietly rebuilt in the clear.
    pub marker: SandboxMarker,
    pub vxlan: String,
    pub vni: u32,
    /// VTEP source address (the host's underlay address).
    pub local: Ipv4Addr,
    /// The namespace whose UDP socket carries the VXLAN traffic: None for the host's
    /// (plain and IPsec networks), the tunnel namespace for WireGuard ones (its only exit
    /// is WireGuard).
    pub vtep_netns: Option<PathBuf>,
    /// The VXLAN UDP port: 4789, or the IPsec port, which only IPsec networks use, so the
    /// XFRM policies select exactly their flows.
    pub port: u16,
    pub bridge_mac: Mac,
    /// The gateway address with the subnet's prefix, assigned to the bridge.
    pub gateway: Ipv4Network,
    pub mtu: u32,
}

impl SandboxSpec {
    /// The sandbox of `net` on a host whose run directory is `run_dir`.
    pub fn for_network(net: &Network, run_dir: &Path, local: Ipv4Addr) -> SandboxSpec {
        SandboxSpec {
            netns: sandbox_path(run_dir, net.name.as_str(), &net.id),
            marker: SandboxMarker {
                network_id: net.id.clone(),
                encryption: net.encryption,
            },
            vxlan: net.name.vxlan_ifname(),
            vni: net.vni.get(),
            local,
            vtep_netns: (net.encryption == Encryption::Wireguard)
                .then(|| crate::paths::tunnel_netns(run_dir)),
            port: match net.encryption {
                Encryption::Ipsec => IPSEC_VXLAN_PORT,
                _ => VXLAN_PORT,
            },
            bridge_mac: Mac::from_name(BRIDGE_MAC_KIND, net.name.as_str()),
            gateway: Ipv4Network::new(net.gateway, net.subnet.prefix())
                .expect("subnet prefix is valid"),
            mtu: net.mtu,
        }
    }
}

/// A network's uplink: a veth pair from its sandbox to the host namespace, the way out for
/// egress and the way in for published ports. Each pair is a link of its own, so every
/// uplink uses the same two link-local transit addresses (routes through them are `onlink`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UplinkSpec {
    pub sandbox: PathBuf,
    /// Host side: `rnu` + the first 8 hex digits of the network id (the prefix is rnet's).
    pub host_ifname: String,
    pub subnet: Ipv4Network,
    pub mtu: u32,
}

/// The sandbox side of every uplink.
pub const UPLINK_SANDBOX_IFNAME: &str = "uplink";
/// The host side's transit address (the sandbox's default gateway).
pub const UPLINK_HOST_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 1);
/// The sandbox side's transit address (the host's gateway to the network's subnet).
pub const UPLINK_SANDBOX_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 2);

impl UplinkSpec {
    pub fn for_network(net: &Network, run_dir: &Path) -> UplinkSpec {
        UplinkSpec {
            sandbox: sandbox_path(run_dir, net.name.as_str(), &net.id),
            host_ifname: uplink_ifname(&net.id),
            subnet: net.subnet,
            mtu: net.mtu,
        }
    }
}

/// The host-side uplink name of a network.
pub fn uplink_ifname(id: &NetworkId) -> String {
    let hex: String = id.as_str().chars().take(8).collect();
    format!("{}{hex}", crate::nat::UPLINK_PREFIX)
}

pub use crate::paths::{netns_dir, sandbox_network, sandbox_path};

/// What a sandbox is for, kept in the kernel as its bridge's alias (`IFLA_IFALIAS`), which
/// lives exactly as long as the sandbox does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxMarker {
    pub network_id: NetworkId,
    pub encryption: Encryption,
}

impl SandboxMarker {
    const PREFIX: &'static str = "rnet";

    /// The alias text: `rnet net=<id> enc=<encryption>`.
    pub fn alias(&self) -> String {
        format!(
            "{} net={} enc={}",
            Self::PREFIX,
            self.network_id,
            self.encryption
        )
    }

    /// Parse an alias written by [`SandboxMarker::alias`]; None for anything else.
    pub fn parse(alias: &str) -> Option<SandboxMarker> {
        let mut words = alias.split(' ');
        if words.next()? != Self::PREFIX {
            return None;
        }
        let network_id = words.next()?.strip_prefix("net=")?.parse().ok()?;
        let encryption = words.next()?.strip_prefix("enc=")?.parse().ok()?;
        words.next().is_none().then_some(SandboxMarker {
            network_id,
            encryption,
        })
    }

    /// Why a sandbox marked `self` must not be used as `wanted`, if it must not.
    pub fn refuses(&self, wanted: &SandboxMarker) -> Option<String> {
        if self.network_id != wanted.network_id {
            return Some(format!(
                "it belongs to network id {}, not {}",
                self.network_id, wanted.network_id
            ));
        }
        if self.encryption != Encryption::None && wanted.encryption != self.encryption {
            return Some(format!(
                "it carries its traffic with encryption {} and the store now says {}; \
                 a network's encryption is never turned off while its sandbox exists",
                self.encryption, wanted.encryption
            ));
        }
        None
    }
}

/// The TCP MSS to advertise for an MTU: minus the IPv4 and TCP headers (20 + 20).
pub fn advmss(mtu: u32) -> u32 {
    mtu.saturating_sub(40)
}

/// What one endpoint's veth pair should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// The sandbox-side veth, enslaved to the bridge.
    pub host_ifname: String,
    /// The workload-side name (e.g. eth0).
    pub ifname: String,
    pub mac: Mac,
    pub address: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

impl EndpointSpec {
    pub fn for_endpoint(net: &Network, ep: &Endpoint) -> EndpointSpec {
        EndpointSpec {
            host_ifname: ep.host_ifname.clone(),
            ifname: ep.ifname.to_string(),
            mac: ep.mac,
            address: ep.ip,
            gateway: net.gateway,
            mtu: ep.mtu.unwrap_or(net.mtu),
        }
    }
}

/// The sandbox-side veth name of the endpoint with address `ip`: unique within the sandbox
/// because addresses are, and stable, so a restarted daemon finds it again.
pub fn host_ifname(ip: Ipv4Addr) -> String {
    format!("ve{:08x}", u32::from(ip))
}

/// The overlay MTU for an underlay MTU.
pub fn overlay_mtu(underlay_mtu: u32) -> u32 {
    underlay_mtu.saturating_sub(VXLAN_OVERHEAD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Vni;

    #[test]
    fn sandbox_spec_from_network() {
        let net = Network {
            id: "00000000000000aa".parse().unwrap(),
            name: "blue".parse().unwrap(),
            vni: Vni::new(7).unwrap(),
            subnet: "10.9.0.0/16".parse().unwrap(),
            gateway: "10.9.0.1".parse().unwrap(),
            mtu: 1450,
            encryption: Default::default(),
            allow_overlap: false,
            egress: true,
            internal: false,
        };
        let s =
            SandboxSpec::for_network(&net, Path::new("/run/rnet"), "198.18.0.1".parse().unwrap());
        assert_eq!(
            s.netns,
            PathBuf::from("/run/rnet/netns/sb-blue-00000000000000aa")
        );
        assert_eq!(s.vxlan, "vx-blue");
        assert_eq!(s.gateway.to_string(), "10.9.0.1/16");
        assert_eq!(
            sandbox_network("sb-blue-00000000000000aa"),
            Some(("blue", net.id.clone()))
        );
        assert_eq!(
            sandbox_network("sb-a-b-00000000000000aa"),
            Some(("a-b", net.id.clone()))
        );
        assert_eq!(sandbox_network("sb-blue"), None);
        assert_eq!(sandbox_network("sb-blue-XYZ"), None);
        assert_eq!(sandbox_network("wg"), None);
    }

    #[test]
    fn marker_round_trips_and_refuses_a_downgrade_or_another_network() {
        let enc = SandboxMarker {
            network_id: "00000000000000aa".parse().unwrap(),
            encryption: Encryption::Wireguard,
        };
        assert_eq!(SandboxMarker::parse(&enc.alias()), Some(enc.clone()));
        assert_eq!(SandboxMarker::parse("rnet net=00000000000000aa"), None);
        assert_eq!(SandboxMarker::parse("something else"), None);
        assert_eq!(enc.refuses(&enc), None);
        let plain = SandboxMarker {
            encryption: Encryption::None,
            ..enc.clone()
        };
        assert!(enc.refuses(&plain).unwrap().contains("never turned off"));
        // Turning encryption on is a rebuild, not a downgrade.
        assert_eq!(plain.refuses(&enc), None);
        let other = SandboxMarker {
            network_id: "00000000000000bb".parse().unwrap(),
            ..enc.clone()
        };
        assert!(other.refuses(&enc).unwrap().contains("network id"));
    }

    #[test]
    fn ipsec_networks_use_their_own_port_in_the_host_namespace_and_refuse_a_downgrade() {
        let mut net = Network {
            id: "00000000000000aa".parse().unwrap(),
            name: "sec".parse().unwrap(),
            vni: crate::model::Vni::new(7).unwrap(),
            subnet: "10.9.0.0/16".parse().unwrap(),
            gateway: "10.9.0.1".parse().unwrap(),
            mtu: 1410,
            encryption: Encryption::Ipsec,
            allow_overlap: false,
            egress: true,
            internal: false,
        };
        let s =
            SandboxSpec::for_network(&net, Path::new("/run/rnet"), "198.18.0.1".parse().unwrap());
        assert_eq!((s.port, s.vtep_netns.clone()), (IPSEC_VXLAN_PORT, None));
        assert_eq!(
            SandboxMarker::parse(&s.marker.alias()),
            Some(s.marker.clone())
        );
        for other in [Encryption::None, Encryption::Wireguard] {
            net.encryption = other;
            let wanted = SandboxSpec::for_network(&net, Path::new("/run/rnet"), s.local);
            assert!(
                s.marker.refuses(&wanted.marker).unwrap().contains("enc"),
                "{other}"
            );
        }
        net.encryption = Encryption::None;
        assert_eq!(
            SandboxSpec::for_network(&net, Path::new("/r"), s.local).port,
            VXLAN_PORT
        );
    }

    #[test]
    fn uplink_names_come_from_the_network_id() {
        let id: NetworkId = "0123456789abcdef".parse().unwrap();
        assert_eq!(uplink_ifname(&id), "rnu01234567");
        assert!(uplink_ifname(&id).len() <= 15);
    }

    #[test]
    fn derived_names_fit_ifnamsiz() {
        assert_eq!(host_ifname("10.0.0.2".parse().unwrap()), "ve0a000002");
        assert!(host_ifname("255.255.255.255".parse().unwrap()).len() <= 15);
        assert_eq!(overlay_mtu(1500), 1450);
    }
}
