//! Which rnet network a Docker network is (`CreateNetwork`, the network driver's side).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde_json::Value;

use super::{
    invalid, parse_address, ENCRYPT_OPTION, GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE, MTU_OPTION,
    NETWORK_OPTION, VNI_OPTION,
};
use crate::error::Error;
use crate::ipam::{self, NetworkRequest};
use crate::libnetwork::protocol::{CreateNetworkRequest, DOCKER_MTU_OPTION, GENERIC_OPTIONS};
use crate::model::{Encryption, Network, NetworkName};

/// What a Docker network asks of rnet (from `CreateNetwork`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPlan {
    /// `-o rnet.network=NAME`.
    pub name: Option<NetworkName>,
    pub subnet: Ipv4Network,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: Option<u32>,
    pub vni: Option<u32>,
    pub encryption: Option<Encryption>,
    /// Whether Docker allocates this network's addresses through rnet's IPAM driver.
    pub rnet_ipam: bool,
    /// `docker network create --internal`: no egress, no published ports.
    pub internal: bool,
}

/// A generic option's value as a string (`-o k=v` gives strings; accept numbers and booleans).
fn option_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn option_u32(key: &str, v: &str) -> Result<u32, Error> {
    v.trim()
        .parse()
        .map_err(|_| Error::Invalid(format!("option {key}={v:?} is not a number")))
}

/// Read a `CreateNetwork` request.
pub fn plan_network(req: &CreateNetworkRequest) -> Result<NetworkPlan, Error> {
    if !req.ipv6_data.is_empty() {
        return invalid("rnet networks are IPv4 only: create the Docker network without --ipv6");
    }
    let data = match req.ipv4_data.as_slice() {
        [one] => one,
        [] => return invalid("the Docker network has no IPv4 pool; rnet needs one subnet"),
        more => {
            return invalid(format!(
                "the Docker network has {} IPv4 pools; an rnet network has exactly one subnet",
                more.len()
            ))
        }
    };
    let subnet = ipam::parse_subnet(&data.pool)?;
    let gateway = parse_address("gateway", &data.gateway)?;
    let mut plan = NetworkPlan {
        name: None,
        subnet,
        gateway,
        mtu: None,
        vni: None,
        encryption: None,
        rnet_ipam: is_rnet_address_space(&data.address_space),
        internal: crate::libnetwork::ports::internal(&req.options),
    };
    let generic = match req.options.get(GENERIC_OPTIONS) {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => m.clone().into_iter().collect(),
        Some(other) => return invalid(format!("option {GENERIC_OPTIONS} is not a map: {other}")),
    };
    for (key, value) in &generic {
        let Some(v) = option_string(value) else {
            return invalid(format!(
                "option {key} has a value that is not a string: {value}"
            ));
        };
        match key.as_str() {
            NETWORK_OPTION => plan.name = Some(v.parse()?),
            VNI_OPTION => plan.vni = Some(option_u32(key, &v)?),
            MTU_OPTION | DOCKER_MTU_OPTION => plan.mtu = Some(option_u32(key, &v)?),
            ENCRYPT_OPTION => plan.encryption = Some(v.parse()?),
            k if k.starts_with("rnet.") => {
                return invalid(format!(
                    "unknown option {k}; rnet knows {NETWORK_OPTION}, {VNI_OPTION}, {MTU_OPTION} and {ENCRYPT_OPTION}"
                ))
            }
            _ => {}
        }
    }
    Ok(plan)
}

/// Whether an IPAM address space is one of rnet's.
pub fn is_rnet_address_space(space: &str) -> bool {
    space == LOCAL_ADDRESS_SPACE || space == GLOBAL_ADDRESS_SPACE
}

/// The rnet network for a Docker network with no `rnet.network` option: named after its subnet.
pub fn derived_name(subnet: Ipv4Network) -> NetworkName {
    format!(
        "dk{:08x}{:02x}",
        u32::from(subnet.network()),
        subnet.prefix()
    )
    .parse()
    .expect("12 characters of [a-z0-9]")
}

/// The rnet network a plan maps to: one that exists, or one to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    Existing(Network),
    Create(NetworkRequest),
}

impl Choice {
    pub fn name(&self) -> String {
        match self {
            Choice::Existing(n) => n.name.to_string(),
            Choice::Create(r) => r.name.clone(),
        }
    }
}

/// Decide which rnet network `plan` is, given every network that exists.
pub fn choose_network(plan: &NetworkPlan, networks: &[Network]) -> Result<Choice, Error> {
    let name = match &plan.name {
        Some(n) => n.clone(),
        None => {
            let same: Vec<&Network> = networks
                .iter()
                .filter(|n| n.subnet == plan.subnet)
                .collect();
            match same.as_slice() {
                [one] => one.name.clone(),
                [] => derived_name(plan.subnet),
                many => {
                    let names: Vec<String> = many.iter().map(|n| n.name.to_string()).collect();
                    return Err(Error::Conflict(format!(
                        "several rnet networks have subnet {} ({}); choose one with -o {NETWORK_OPTION}=NAME",
                        plan.subnet,
                        names.join(", ")
                    )));
                }
            }
        }
    };
    match networks.iter().find(|n| n.name == name) {
        Some(existing) => {
            check_compatible(existing, plan)?;
            Ok(Choice::Existing(existing.clone()))
        }
        None => Ok(Choice::Create(NetworkRequest {
            name: name.to_string(),
            subnet: plan.subnet.to_string(),
            gateway: plan.gateway.map(|g| g.to_string()),
            vni: plan.vni,
            mtu: plan.mtu,
            allow_overlap: false,
            encryption: plan.encryption,
            no_egress: false,
            internal: plan.internal,
        })),
    }
}

/// An existing rnet network serves a Docker network only if everything the Docker network
/// fixes (subnet, gateway, and the options given) agrees with it.
pub fn check_compatible(net: &Network, plan: &NetworkPlan) -> Result<(), Error> {
    let mut diff = Vec::new();
    if net.subnet != plan.subnet {
        diff.push(format!("subnet {} (Docker: {})", net.subnet, plan.subnet));
    }
    if let Some(g) = plan.gateway.filter(|g| *g != net.gateway) {
        diff.push(format!("gateway {} (Docker: {g})", net.gateway));
    }
    if let Some(m) = plan.mtu.filter(|m| *m != net.mtu) {
        diff.push(format!("MTU {} (Docker: {m})", net.mtu));
    }
    if let Some(v) = plan.vni.filter(|v| *v != net.vni.get()) {
        diff.push(format!("VNI {} (Docker: {v})", net.vni));
    }
    if let Some(e) = plan.encryption.filter(|e| *e != net.encryption) {
        diff.push(format!("encryption {} (Docker: {e})", net.encryption));
    }
    if plan.internal && !net.internal {
        diff.push("egress (Docker: internal)".into());
    }
    if diff.is_empty() {
        Ok(())
    } else {
        Err(Error::Conflict(format!(
            "rnet network {} has {}; create the Docker network with the same settings",
            net.name,
            diff.join(", ")
        )))
    }
}
