//! Pure translation between Docker's libnetwork requests and rnet's networks and endpoints.
//! No I/O: the daemon (`daemon::docker`) looks things up, calls these, and applies the result.
//!
//! Which rnet network a Docker network is:
//! - the one named by `-o rnet.network=NAME` (created with the Docker network's subnet if absent);
//! - else the one rnet network whose subnet is the Docker network's pool;
//! - else a new one named after the subnet (`dk` + the subnet in hex + the prefix length), so
//!   `docker network create -d rnet --ipam-driver rnet --subnet S` on several hosts names one
//!   rnet network everywhere (Docker does not tell a driver the Docker network's name).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde_json::Value;

use super::protocol::{
    CreateEndpointResponse, CreateNetworkRequest, EndpointInterface, InterfaceName, JoinResponse,
    RequestPoolRequest, DOCKER_MTU_OPTION, GATEWAY_ADDRESS_TYPE, GENERIC_OPTIONS,
    REQUEST_ADDRESS_TYPE,
};
use crate::error::Error;
use crate::ipam::{self, NetworkRequest};
use crate::model::{fnv1a, Encryption, Endpoint, EndpointId, Invalid, Mac, Network, NetworkName};

/// Docker keeps the network's state on each host (there is no cluster store since Docker 23)…
pub const SCOPE: &str = "local";
/// …while its connectivity spans hosts.
pub const CONNECTIVITY_SCOPE: &str = "global";
/// The address spaces rnet's IPAM driver reports; either one means "rnet's cluster-wide IPAM".
pub const LOCAL_ADDRESS_SPACE: &str = "rnet-local";
pub const GLOBAL_ADDRESS_SPACE: &str = "rnet-global";
/// `-o rnet.network=NAME` (driver) and `--ipam-opt rnet.network=NAME` (IPAM).
pub const NETWORK_OPTION: &str = "rnet.network";
/// `-o rnet.vni=N`, used when the rnet network is created.
pub const VNI_OPTION: &str = "rnet.vni";
/// `-o rnet.mtu=N` (or Docker's `com.docker.network.driver.mtu`), used when the rnet network is created.
pub const MTU_OPTION: &str = "rnet.mtu";
/// `-o rnet.encrypt=wireguard`, used when the rnet network is created.
pub const ENCRYPT_OPTION: &str = "rnet.encrypt";
/// Docker names the moved interface `eth<N>`.
pub const DST_PREFIX: &str = "eth";
/// Endpoint ids of addresses the IPAM driver holds for Docker outside an endpoint's life.
pub const RESERVATION_PREFIX: &str = "docker-ipam-";
const POOL_PREFIX: &str = "rnet:";

fn invalid<T>(msg: impl Into<String>) -> Result<T, Error> {
    Err(Error::Invalid(msg.into()))
}

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

/// Parse an address Docker gives as `ip` or `ip/prefix` (empty: none).
pub fn parse_address(what: &str, s: &str) -> Result<Option<Ipv4Addr>, Error> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let ip = s.split('/').next().unwrap_or(s);
    Ok(Some(ipam::parse_ip(what, ip)?))
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
        internal: super::ports::internal(&req.options),
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

/// An IPAM pool: a subnet, and the rnet network when `--ipam-opt rnet.network=NAME` named one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRef {
    pub subnet: Ipv4Network,
    pub network: Option<NetworkName>,
}

impl PoolRef {
    /// The pool id: self-describing (`rnet:SUBNET[:NAME]`), so a restarted daemon, or any
    /// host, understands it without state; identical requests give identical ids.
    pub fn id(&self) -> String {
        match &self.network {
            Some(n) => format!("{POOL_PREFIX}{}:{n}", self.subnet),
            None => format!("{POOL_PREFIX}{}", self.subnet),
        }
    }

    pub fn parse(id: &str) -> Result<PoolRef, Error> {
        let bad = || {
            Error::Invalid(format!(
                "pool id {id:?} is not one of rnet's (rnet:SUBNET[:NETWORK])"
            ))
        };
        let rest = id.strip_prefix(POOL_PREFIX).ok_or_else(bad)?;
        let (subnet, network) = match rest.split_once(':') {
            Some((s, n)) => (s, Some(n.parse().map_err(|_| bad())?)),
            None => (rest, None),
        };
        let subnet = ipam::parse_subnet(subnet).map_err(|_| bad())?;
        Ok(PoolRef { subnet, network })
    }
}

/// Read a `RequestPool` request, given the networks that exist.
pub fn plan_pool(req: &RequestPoolRequest, networks: &[Network]) -> Result<PoolRef, Error> {
    if req.v6 {
        return invalid("rnet's IPAM is IPv4 only: create the Docker network without --ipv6");
    }
    if !req.sub_pool.is_empty() {
        return invalid("rnet's IPAM allocates from the whole subnet; --ip-range is not supported");
    }
    let mut network: Option<NetworkName> = None;
    for (key, value) in &req.options {
        match key.as_str() {
            NETWORK_OPTION => network = Some(value.parse()?),
            k if k.starts_with("rnet.") => {
                return invalid(format!(
                    "unknown IPAM option {k}; rnet knows {NETWORK_OPTION}"
                ))
            }
            _ => {}
        }
    }
    let named = network
        .as_ref()
        .and_then(|n| networks.iter().find(|x| &x.name == n));
    let subnet = if req.pool.trim().is_empty() {
        match (&network, named) {
            (_, Some(net)) => net.subnet,
            (Some(n), None) => {
                return invalid(format!(
                    "rnet network {n} does not exist; give its subnet with --subnet to create it"
                ))
            }
            (None, None) => {
                return invalid(
                    "rnet's IPAM needs the subnet: docker network create --subnet CIDR \
                     (the same on every host), or --ipam-opt rnet.network=NAME for an existing rnet network",
                )
            }
        }
    } else {
        ipam::parse_subnet(req.pool.trim())?
    };
    if let Some(net) = named.filter(|n| n.subnet != subnet) {
        return Err(Error::Conflict(format!(
            "rnet network {} has subnet {}, not {subnet}",
            net.name, net.subnet
        )));
    }
    Ok(PoolRef { subnet, network })
}

/// The rnet network an IPAM pool allocates from. `bound` are the rnet networks that Docker
/// networks with this pool's subnet (and rnet's IPAM) were mapped to on this host.
pub fn pool_network(
    pool: &PoolRef,
    bound: &BTreeSet<String>,
    networks: &[Network],
) -> Result<Choice, Error> {
    let name = match (&pool.network, bound.len()) {
        (Some(n), _) => Some(n.clone()),
        (None, 1) => Some(bound.iter().next().expect("one").parse()?),
        (None, 0) => None,
        (None, _) => {
            return Err(Error::Conflict(format!(
                "Docker networks on this host map subnet {} to several rnet networks ({}); \
                 create them with --ipam-opt {NETWORK_OPTION}=NAME to tell rnet's IPAM which",
                pool.subnet,
                bound.iter().cloned().collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let plan = NetworkPlan {
        name,
        subnet: pool.subnet,
        gateway: None,
        mtu: None,
        vni: None,
        // An encrypted network is made by `rnet create --encrypt` or the driver's option.
        encryption: None,
        rnet_ipam: true,
        internal: false,
    };
    choose_network(&plan, networks)
}

/// Whether a `RequestAddress` asks for the network's gateway.
pub fn is_gateway_request(options: &BTreeMap<String, String>) -> bool {
    options.get(REQUEST_ADDRESS_TYPE).map(String::as_str) == Some(GATEWAY_ADDRESS_TYPE)
}

/// The answer to a gateway request: the rnet network's gateway if it exists, else the one
/// asked for (`--gateway`), else the subnet's first host address (rnet's default).
pub fn gateway_for(
    pool: &PoolRef,
    requested: Option<Ipv4Addr>,
    existing: Option<&Network>,
) -> Result<Ipv4Network, Error> {
    let gateway = match (existing, requested) {
        (Some(net), Some(g)) if g != net.gateway => {
            return Err(Error::Conflict(format!(
                "rnet network {} has gateway {}, not {g}",
                net.name, net.gateway
            )))
        }
        (Some(net), _) => net.gateway,
        (None, Some(g)) => g,
        (None, None) => Ipv4Addr::from(u32::from(pool.subnet.network()) + 1),
    };
    let s = pool.subnet;
    if !s.contains(gateway) || gateway == s.network() || gateway == s.broadcast() {
        return invalid(format!("gateway {gateway} is not a host address of {s}"));
    }
    Ok(Ipv4Network::new(gateway, s.prefix()).expect("prefix of a valid subnet"))
}

/// What `CreateEndpoint` was given: the address (from the IPAM driver) and a MAC (`--mac-address`).
pub fn requested_interface(
    i: &EndpointInterface,
) -> Result<(Option<Ipv4Addr>, Option<Mac>), Error> {
    if !i.address_ipv6.is_empty() {
        return invalid("rnet endpoints are IPv4 only");
    }
    let ip = parse_address("endpoint address", &i.address)?;
    let mac = if i.mac_address.is_empty() {
        None
    } else {
        Some(i.mac_address.parse::<Mac>()?)
    };
    Ok((ip, mac))
}

/// `CreateEndpoint`'s answer: only what Docker left empty (Docker refuses a driver that
/// changes a field it set), or no `Interface` at all.
pub fn create_endpoint_response(req: &EndpointInterface, ep: &Endpoint) -> CreateEndpointResponse {
    let iface = EndpointInterface {
        address: if req.address.is_empty() {
            ep.ip.to_string()
        } else {
            String::new()
        },
        address_ipv6: String::new(),
        mac_address: if req.mac_address.is_empty() {
            ep.mac.to_string()
        } else {
            String::new()
        },
    };
    CreateEndpointResponse {
        interface: (!iface.is_empty()).then_some(iface),
    }
}

/// The name of the veth end Docker moves into the container, while it is still in the host's
/// namespace: unique per (network, address) on the host, within IFNAMSIZ.
pub fn peer_ifname(network: &str, ip: Ipv4Addr) -> String {
    format!(
        "rd{:012x}",
        fnv1a(format!("{network}/{ip}").as_bytes()) & 0xffff_ffff_ffff
    )
}

/// `Join`'s answer. The gateway is the rnet network's gateway (the address of its sandbox
/// bridge), as `rnet run` gives its workloads, and `DisableGatewayService` is set: Docker then
/// adds no `docker_gwbridge` interface. rnet networks carry no traffic beyond the overlay.
pub fn join_response(net: &Network, peer: &str) -> JoinResponse {
    JoinResponse {
        interface_name: InterfaceName {
            src_name: peer.to_string(),
            dst_prefix: DST_PREFIX.to_string(),
        },
        gateway: net.gateway.to_string(),
        gateway_ipv6: String::new(),
        static_routes: Vec::new(),
        disable_gateway_service: true,
    }
}

/// `EndpointOperInfo`'s value (shown by `docker network inspect` and `docker inspect`).
pub fn oper_info(ep: &Endpoint) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    m.insert("rnet.network".into(), Value::from(ep.network.to_string()));
    m.insert("rnet.address".into(), Value::from(ep.ip.to_string()));
    m.insert("rnet.mac".into(), Value::from(ep.mac.to_string()));
    m.insert("rnet.host".into(), Value::from(ep.host.clone()));
    m.insert("rnet.veth".into(), Value::from(ep.host_ifname.clone()));
    m
}

/// A Docker endpoint id as an rnet endpoint id (Docker's are 64 hex digits).
pub fn endpoint_id(docker: &str) -> Result<EndpointId, Error> {
    if docker.is_empty() {
        return invalid("EndpointID is empty");
    }
    docker
        .parse::<EndpointId>()
        .map_err(|e: Invalid| Error::Invalid(e.0))
}

/// The id under which the IPAM driver holds an address outside an endpoint's life.
pub fn reservation_id(seed: u64) -> EndpointId {
    format!("{RESERVATION_PREFIX}{:012x}", seed & 0xffff_ffff_ffff)
        .parse()
        .expect("valid id")
}

/// Whether a record is an IPAM reservation (not an endpoint Docker created).
pub fn is_reservation(ep: &Endpoint) -> bool {
    ep.id.as_str().starts_with(RESERVATION_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libnetwork::protocol::IpamData;
    use serde_json::json;

    fn net(name: &str, subnet: &str, vni: u32) -> Network {
        ipam::plan_network(
            &NetworkRequest {
                name: name.into(),
                subnet: subnet.into(),
                vni: Some(vni),
                ..Default::default()
            },
            &[],
            1450,
        )
        .unwrap()
    }

    fn create_req(pool: &str, gw: &str, space: &str, generic: Value) -> CreateNetworkRequest {
        let mut options = BTreeMap::new();
        options.insert(GENERIC_OPTIONS.to_string(), generic);
        options.insert("com.docker.network.enable_ipv6".into(), json!(false));
        CreateNetworkRequest {
            network_id: "abc".into(),
            options,
            ipv4_data: vec![IpamData {
                address_space: space.into(),
                pool: pool.into(),
                gateway: gw.into(),
                aux_addresses: Default::default(),
            }],
            ipv6_data: vec![],
        }
    }

    #[test]
    fn plan_reads_pool_gateway_and_options() {
        let p = plan_network(&create_req(
            "10.1.0.0/24",
            "10.1.0.1/24",
            LOCAL_ADDRESS_SPACE,
            json!({"rnet.network": "blue", "rnet.vni": "77", "com.docker.network.driver.mtu": "1400"}),
        ))
        .unwrap();
        assert_eq!(p.name.unwrap().as_str(), "blue");
        assert_eq!(p.subnet.to_string(), "10.1.0.0/24");
        assert_eq!(p.gateway, Some("10.1.0.1".parse().unwrap()));
        assert_eq!((p.vni, p.mtu), (Some(77), Some(1400)));
        assert!(p.rnet_ipam);
        let p = plan_network(&create_req(
            "172.18.0.0/16",
            "172.18.0.1/16",
            "LocalDefault",
            Value::Null,
        ))
        .unwrap();
        assert!(!p.rnet_ipam);
        assert_eq!(p.name, None);
    }

    #[test]
    fn plan_refuses_what_rnet_cannot_do() {
        let mut r = create_req("10.1.0.0/24", "", LOCAL_ADDRESS_SPACE, json!({}));
        r.ipv6_data = r.ipv4_data.clone();
        assert!(plan_network(&r)
            .unwrap_err()
            .to_string()
            .contains("IPv4 only"));
        let mut r = create_req("10.1.0.0/24", "", LOCAL_ADDRESS_SPACE, json!({}));
        r.ipv4_data.push(r.ipv4_data[0].clone());
        assert!(plan_network(&r)
            .unwrap_err()
            .to_string()
            .contains("2 IPv4 pools"));
        let r = create_req(
            "10.1.0.0/24",
            "",
            LOCAL_ADDRESS_SPACE,
            json!({"rnet.netwrk": "x"}),
        );
        assert!(plan_network(&r)
            .unwrap_err()
            .to_string()
            .contains("unknown option rnet.netwrk"));
        let r = create_req(
            "10.1.0.0/24",
            "",
            LOCAL_ADDRESS_SPACE,
            json!({"rnet.network": "way-too-long-name"}),
        );
        assert!(matches!(plan_network(&r), Err(Error::Invalid(_))));
        let r = create_req("10.1.0.5/24", "", LOCAL_ADDRESS_SPACE, json!({}));
        assert!(plan_network(&r)
            .unwrap_err()
            .to_string()
            .contains("host bits"));
    }

    #[test]
    fn derived_names_fit_and_differ() {
        let a = derived_name("10.100.200.0/24".parse().unwrap());
        assert_eq!(a.as_str(), "dk0a64c80018");
        let b = derived_name("10.100.200.0/25".parse().unwrap());
        assert_ne!(a, b);
    }

    #[test]
    fn choice_by_name_by_subnet_or_new() {
        let blue = net("blue", "10.1.0.0/24", 10);
        let red = net("red", "10.2.0.0/24", 11);
        let nets = vec![blue.clone(), red.clone()];
        let plan = |name: Option<&str>, subnet: &str| NetworkPlan {
            name: name.map(|n| n.parse().unwrap()),
            subnet: subnet.parse().unwrap(),
            gateway: None,
            mtu: None,
            vni: None,
            encryption: None,
            rnet_ipam: true,
            internal: false,
        };
        // By name.
        assert_eq!(
            choose_network(&plan(Some("blue"), "10.1.0.0/24"), &nets).unwrap(),
            Choice::Existing(blue.clone())
        );
        // By subnet.
        assert_eq!(
            choose_network(&plan(None, "10.2.0.0/24"), &nets).unwrap(),
            Choice::Existing(red.clone())
        );
        // New, named after the subnet; the same on every host.
        match choose_network(&plan(None, "10.3.0.0/24"), &nets).unwrap() {
            Choice::Create(r) => {
                assert_eq!(r.name, "dk0a03000018");
                assert_eq!(r.subnet, "10.3.0.0/24");
            }
            other => panic!("{other:?}"),
        }
        // New, by name.
        assert_eq!(
            choose_network(&plan(Some("green"), "10.4.0.0/24"), &nets)
                .unwrap()
                .name(),
            "green"
        );
        // A named network with another subnet is a conflict, naming both.
        let e = choose_network(&plan(Some("blue"), "10.9.0.0/24"), &nets).unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e}");
        assert!(e.to_string().contains("10.1.0.0/24"), "{e}");
        // Two rnet networks with the subnet: ambiguous without a name.
        let mut twin = net("twin", "10.1.0.0/24", 12);
        twin.allow_overlap = true;
        let nets2 = vec![blue.clone(), twin];
        let e = choose_network(&plan(None, "10.1.0.0/24"), &nets2).unwrap_err();
        assert!(e.to_string().contains("blue, twin"), "{e}");
    }

    #[test]
    fn compatibility_checks_what_docker_fixed() {
        let blue = net("blue", "10.1.0.0/24", 10);
        let mut p = NetworkPlan {
            name: None,
            subnet: blue.subnet,
            gateway: Some(blue.gateway),
            mtu: None,
            vni: None,
            encryption: None,
            rnet_ipam: false,
            internal: false,
        };
        assert!(check_compatible(&blue, &p).is_ok());
        p.gateway = Some("10.1.0.254".parse().unwrap());
        let e = check_compatible(&blue, &p).unwrap_err().to_string();
        assert!(e.contains("gateway 10.1.0.1 (Docker: 10.1.0.254)"), "{e}");
        p.gateway = None;
        p.mtu = Some(1000);
        assert!(check_compatible(&blue, &p).is_err());
    }

    #[test]
    fn pool_ids_round_trip_and_are_deterministic() {
        let req = RequestPoolRequest {
            address_space: LOCAL_ADDRESS_SPACE.into(),
            pool: "10.1.0.0/24".into(),
            ..Default::default()
        };
        let a = plan_pool(&req, &[]).unwrap();
        assert_eq!(a, plan_pool(&req, &[]).unwrap());
        assert_eq!(a.id(), "rnet:10.1.0.0/24");
        assert_eq!(PoolRef::parse(&a.id()).unwrap(), a);
        let mut named = req.clone();
        named.options.insert(NETWORK_OPTION.into(), "blue".into());
        let b = plan_pool(&named, &[]).unwrap();
        assert_eq!(b.id(), "rnet:10.1.0.0/24:blue");
        assert_eq!(PoolRef::parse(&b.id()).unwrap(), b);
        assert!(PoolRef::parse("LocalDefault/10.1.0.0/24").is_err());
        assert!(PoolRef::parse("rnet:nonsense").is_err());
    }

    #[test]
    fn pool_requests_rnet_cannot_serve() {
        let base = RequestPoolRequest {
            pool: "10.1.0.0/24".into(),
            ..Default::default()
        };
        let mut r = base.clone();
        r.v6 = true;
        assert!(plan_pool(&r, &[]).is_err());
        let mut r = base.clone();
        r.sub_pool = "10.1.0.0/25".into();
        assert!(plan_pool(&r, &[])
            .unwrap_err()
            .to_string()
            .contains("--ip-range"));
        let r = RequestPoolRequest::default();
        assert!(plan_pool(&r, &[])
            .unwrap_err()
            .to_string()
            .contains("--subnet"));
        // No --subnet, but the IPAM option names an existing network: its subnet.
        let blue = net("blue", "10.1.0.0/24", 10);
        let mut r = RequestPoolRequest::default();
        r.options.insert(NETWORK_OPTION.into(), "blue".into());
        assert_eq!(
            plan_pool(&r, std::slice::from_ref(&blue)).unwrap().subnet,
            blue.subnet
        );
        let mut r = base.clone();
        r.pool = "10.7.0.0/24".into();
        r.options.insert(NETWORK_OPTION.into(), "blue".into());
        assert!(matches!(plan_pool(&r, &[blue]), Err(Error::Conflict(_))));
    }

    #[test]
    fn pool_network_prefers_name_then_binding_then_subnet() {
        let blue = net("blue", "10.1.0.0/24", 10);
        let mut twin = net("twin", "10.1.0.0/24", 11);
        twin.allow_overlap = true;
        let nets = vec![blue.clone(), twin.clone()];
        let pool = PoolRef {
            subnet: blue.subnet,
            network: None,
        };
        let none = BTreeSet::new();
        assert!(pool_network(&pool, &none, &nets).is_err());
        let bound: BTreeSet<String> = ["twin".to_string()].into();
        assert_eq!(
            pool_network(&pool, &bound, &nets).unwrap(),
            Choice::Existing(twin.clone())
        );
        let both: BTreeSet<String> = ["twin".to_string(), "blue".to_string()].into();
        assert!(pool_network(&pool, &both, &nets).is_err());
        let named = PoolRef {
            subnet: blue.subnet,
            network: Some("blue".parse().unwrap()),
        };
        assert_eq!(
            pool_network(&named, &both, &nets).unwrap(),
            Choice::Existing(blue)
        );
    }

    #[test]
    fn gateway_answers() {
        let blue = net("blue", "10.1.0.0/24", 10);
        let pool = PoolRef {
            subnet: blue.subnet,
            network: None,
        };
        assert_eq!(
            gateway_for(&pool, None, Some(&blue)).unwrap().to_string(),
            "10.1.0.1/24"
        );
        assert_eq!(
            gateway_for(&pool, None, None).unwrap().to_string(),
            "10.1.0.1/24"
        );
        let asked = Some("10.1.0.254".parse().unwrap());
        assert_eq!(
            gateway_for(&pool, asked, None).unwrap().to_string(),
            "10.1.0.254/24"
        );
        assert!(gateway_for(&pool, asked, Some(&blue)).is_err());
        assert!(gateway_for(&pool, Some("10.1.0.255".parse().unwrap()), None).is_err());
        let mut o = BTreeMap::new();
        assert!(!is_gateway_request(&o));
        o.insert(REQUEST_ADDRESS_TYPE.into(), GATEWAY_ADDRESS_TYPE.into());
        assert!(is_gateway_request(&o));
    }

    fn endpoint() -> Endpoint {
        Endpoint {
            network_id: "00000000000000aa".parse().unwrap(),
            network: "blue".parse().unwrap(),
            id: reservation_id(7),
            ip: "10.1.0.5/24".parse().unwrap(),
            mac: Mac::from_ipv4("10.1.0.5".parse().unwrap()),
            host: "h1".into(),
            ifname: "eth0".parse().unwrap(),
            netns: String::new(),
            netns_inode: 0,
            host_ifname: "ve0a010005".into(),
            created: 0,
            origin: crate::model::Origin::Docker,
            owner: None,
            mtu: None,
            name: None,
            aliases: Vec::new(),
            ports: Vec::new(),
        }
    }

    #[test]
    fn create_endpoint_answers_only_what_docker_left_empty() {
        let ep = endpoint();
        let given = EndpointInterface {
            address: "10.1.0.5/24".into(),
            ..Default::default()
        };
        let r = create_endpoint_response(&given, &ep);
        assert_eq!(
            r.interface,
            Some(EndpointInterface {
                mac_address: "02:52:0a:01:00:05".into(),
                ..Default::default()
            })
        );
        let all = EndpointInterface {
            address: "10.1.0.5/24".into(),
            mac_address: "02:00:00:00:00:01".into(),
            ..Default::default()
        };
        assert_eq!(create_endpoint_response(&all, &ep).interface, None);
        let r = create_endpoint_response(&EndpointInterface::default(), &ep);
        assert_eq!(r.interface.unwrap().address, "10.1.0.5/24");
        assert_eq!(
            requested_interface(&all).unwrap(),
            (
                Some("10.1.0.5".parse().unwrap()),
                Some("02:00:00:00:00:01".parse().unwrap())
            )
        );
        let v6 = EndpointInterface {
            address_ipv6: "fd00::2/64".into(),
            ..Default::default()
        };
        assert!(requested_interface(&v6).is_err());
    }

    #[test]
    fn join_gives_the_veth_and_the_gateway() {
        let blue = net("blue", "10.1.0.0/24", 10);
        let peer = peer_ifname("blue", "10.1.0.5".parse().unwrap());
        assert!(peer.len() <= 15 && peer.starts_with("rd"));
        assert_ne!(peer, peer_ifname("twin", "10.1.0.5".parse().unwrap()));
        let j = join_response(&blue, &peer);
        assert_eq!(j.interface_name.src_name, peer);
        assert_eq!(j.interface_name.dst_prefix, "eth");
        assert_eq!(j.gateway, "10.1.0.1");
        assert!(j.disable_gateway_service);
    }

    #[test]
    fn reservations_are_told_apart() {
        let mut ep = endpoint();
        assert!(is_reservation(&ep));
        ep.id = endpoint_id(&"ab".repeat(32)).unwrap();
        assert!(!is_reservation(&ep));
        assert!(endpoint_id("").is_err());
        assert_eq!(oper_info(&ep)["rnet.address"], json!("10.1.0.5/24"));
        assert_eq!(
            parse_address("a", "10.1.0.5/24").unwrap(),
            Some("10.1.0.5".parse().unwrap())
        );
        assert_eq!(parse_address("a", "").unwrap(), None);
        assert!(parse_address("a", "x").is_err());
    }
}
