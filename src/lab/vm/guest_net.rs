//! The guest's underlay, set up by the agent at boot from the kernel command line
//! (`rnet.host=h1 rnet.addr=198.18.0.11/24`, written by the machine's side): `lo` up, and the
//! guest's one Ethernet NIC up with its lab address. All through rtnetlink, like the netns lab.

use ipnetwork::Ipv4Network;
use netlink_packet_route::link::{LinkAttribute, LinkLayerType, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};

use crate::dataplane::request::{self, connect};
use crate::lab::LabError;

/// What the kernel command line tells the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boot {
    pub host: String,
    pub address: Ipv4Network,
}

impl Boot {
    /// Parse `rnet.host=` and `rnet.addr=` out of `/proc/cmdline`.
    pub fn parse(cmdline: &str) -> Result<Boot, LabError> {
        let value = |key: &str| {
            cmdline
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_string)
        };
        let missing = |k: &str| LabError::Invalid(format!("no {k}… on the kernel command line"));
        let host = value("rnet.host=").ok_or_else(|| missing("rnet.host="))?;
        let addr = value("rnet.addr=").ok_or_else(|| missing("rnet.addr="))?;
        let address = addr
            .parse()
            .map_err(|e| LabError::Invalid(format!("rnet.addr={addr}: {e}")))?;
        Ok(Boot { host, address })
    }
}

/// `ip link set lo up; ip addr add ADDRESS dev ETH; ip link set ETH up`.
pub fn configure(boot: &Boot) -> Result<(), LabError> {
    let rt = crate::lab::runtime()?;
    rt.block_on(async {
        let h = connect(None)?;
        let links = request::link_messages(&h).await?;
        let lo = links
            .iter()
            .find(|m| m.header.link_layer_type == LinkLayerType::Loopback);
        if let Some(lo) = lo {
            set_up(&h, lo.header.index).await?;
        }
        let nic = links
            .iter()
            .find(|m| m.header.link_layer_type == LinkLayerType::Ether)
            .ok_or_else(|| LabError::Runtime("the guest has no Ethernet NIC".into()))?;
        let op = format!("adding {} to {}", boot.address, name(nic));
        request::add_address(&h, nic.header.index, boot.address, false, &op).await?;
        set_up(&h, nic.header.index).await
    })
}

async fn set_up(h: &Handle, index: u32) -> Result<(), LabError> {
    let msg = LinkUnspec::new_with_index(index).up().build();
    Ok(request::set_link(h, msg, &format!("setting link {index} up")).await?)
}

fn name(m: &LinkMessage) -> String {
    m.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_else(|| format!("link {}", m.header.index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_address_come_from_the_command_line() {
        let b = Boot::parse("console=ttyS0 rnet.host=h2 quiet rnet.addr=198.18.0.12/24\n").unwrap();
        assert_eq!(b.host, "h2");
        assert_eq!(b.address.to_string(), "198.18.0.12/24");
    }

    #[test]
    fn missing_or_bad_values_are_named() {
        let e = Boot::parse("rnet.addr=198.18.0.12/24").unwrap_err();
        assert!(e.to_string().contains("rnet.host="), "{e}");
        let e = Boot::parse("rnet.host=h1 rnet.addr=300.1.1.1/24").unwrap_err();
        assert!(e.to_string().contains("rnet.addr=300.1.1.1/24"), "{e}");
    }
}
