//! Docker's remote network-driver (CNM) and remote IPAM-driver protocols: every request and
//! response rnet takes part in, with the exact field names Docker sends and expects.
//!
//! Transport: HTTP/1.1 POST of JSON to `/<Interface>.<Method>` on the plugin's unix socket.
//! Docker's Go structs encode absent maps and slices as `null`, and methods without arguments
//! send the body `null`; every request type here therefore decodes `null` (and a missing
//! field) as the empty value.
//!
//! Errors travel in the body: `{"Err": "…"}` for the network driver, `{"Error": "…"}` for the
//! IPAM driver (a non-empty field means failure). A method the plugin does not implement is
//! answered with HTTP 404, which Docker takes as "optional method not implemented".

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The media type of plugin responses.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// `Plugin.Activate`: the plugin interfaces rnet implements.
pub const IMPLEMENTS: [&str; 2] = ["NetworkDriver", "IpamDriver"];

/// Docker's option holding the `-o key=value` options of `docker network create`.
pub const GENERIC_OPTIONS: &str = "com.docker.network.generic";
/// The MTU option Docker's own drivers know (`-o com.docker.network.driver.mtu=N`).
pub const DOCKER_MTU_OPTION: &str = "com.docker.network.driver.mtu";
/// IPAM `RequestAddress` option naming what the address is for.
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
/// …and its value when Docker asks for the network's gateway.
pub const GATEWAY_ADDRESS_TYPE: &str = "com.docker.network.gateway";

/// `null` or absent decodes as the type's empty value (Go encodes nil maps/slices as null).
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Options as Docker sends them: string keys, any JSON values (nested maps for the generic ones).
pub type Options = BTreeMap<String, Value>;

// ----- Plugin -----

/// `POST /Plugin.Activate` response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivateResponse {
    #[serde(rename = "Implements")]
    pub implements: Vec<String>,
}

// ----- NetworkDriver -----

/// `POST /NetworkDriver.GetCapabilities` response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitiesResponse {
    /// "local" or "global": where Docker keeps the network's state.
    #[serde(rename = "Scope")]
    pub scope: String,
    /// "local" or "global": how far the network's connectivity reaches.
    #[serde(rename = "ConnectivityScope")]
    pub connectivity_scope: String,
    /// Whether Docker should ask `GwAllocCheck` before allocating a gateway.
    #[serde(rename = "GwAllocChecker", default)]
    pub gw_alloc_checker: bool,
}

/// One address pool of a network, as `CreateNetwork` carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamData {
    #[serde(rename = "AddressSpace", default, deserialize_with = "nullable")]
    pub address_space: String,
    /// CIDR of the pool.
    #[serde(rename = "Pool", default, deserialize_with = "nullable")]
    pub pool: String,
    /// The gateway as `ip/prefix`.
    #[serde(rename = "Gateway", default, deserialize_with = "nullable")]
    pub gateway: String,
    #[serde(rename = "AuxAddresses", default, deserialize_with = "nullable")]
    pub aux_addresses: BTreeMap<String, String>,
}

/// `POST /NetworkDriver.CreateNetwork` request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "nullable")]
    pub network_id: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: Options,
    #[serde(rename = "IPv4Data", default, deserialize_with = "nullable")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", default, deserialize_with = "nullable")]
    pub ipv6_data: Vec<IpamData>,
}

/// `POST /NetworkDriver.DeleteNetwork` request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteNetworkRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "nullable")]
    pub network_id: String,
}

/// An endpoint's interface: in `CreateEndpoint` requests what Docker already assigned, in
/// responses what the driver assigns (only fields the request left empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInterface {
    /// `ip/prefix`.
    #[serde(
        rename = "Address",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub address: String,
    #[serde(
        rename = "AddressIPv6",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub address_ipv6: String,
    #[serde(
        rename = "MacAddress",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub mac_address: String,
}

impl EndpointInterface {
    pub fn is_empty(&self) -> bool {
        self.address.is_empty() && self.address_ipv6.is_empty() && self.mac_address.is_empty()
    }
}

/// `POST /NetworkDriver.CreateEndpoint` request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "nullable")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "nullable")]
    pub endpoint_id: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: Options,
    #[serde(rename = "Interface", default, deserialize_with = "nullable")]
    pub interface: EndpointInterface,
}

/// `POST /NetworkDriver.CreateEndpoint` response: `Interface` is omitted when the driver
/// adds nothing (Docker rejects a driver that overwrites a field it had set).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateEndpointResponse {
    #[serde(rename = "Interface", default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

/// The request of `DeleteEndpoint`, `EndpointOperInfo`, `Leave` and
/// `RevokeExternalConnectivity`: a network and an endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "nullable")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "nullable")]
    pub endpoint_id: String,
}

/// `POST /NetworkDriver.EndpointOperInfo` response.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointOperInfoResponse {
    #[serde(rename = "Value")]
    pub value: BTreeMap<String, Value>,
}

/// `POST /NetworkDriver.Join` request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "nullable")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "nullable")]
    pub endpoint_id: String,
    /// The container's network namespace (`<exec-root>/netns/<id>`).
    #[serde(rename = "SandboxKey", default, deserialize_with = "nullable")]
    pub sandbox_key: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: Options,
}

/// The interface Docker is to move into the container: `SrcName` in Docker's own network
/// namespace, renamed to `DstPrefix` + an index inside the container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceName {
    #[serde(rename = "SrcName")]
    pub src_name: String,
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: String,
}

/// A route Docker adds in the container: `RouteType` 0 = via `NextHop`, 1 = connected.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticRoute {
    #[serde(rename = "Destination")]
    pub destination: String,
    #[serde(rename = "RouteType")]
    pub route_type: u8,
    #[serde(rename = "NextHop", default, skip_serializing_if = "String::is_empty")]
    pub next_hop: String,
}

/// `POST /NetworkDriver.Join` response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    #[serde(rename = "InterfaceName")]
    pub interface_name: InterfaceName,
    #[serde(rename = "Gateway", default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    #[serde(
        rename = "GatewayIPv6",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub gateway_ipv6: String,
    #[serde(
        rename = "StaticRoutes",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub static_routes: Vec<StaticRoute>,
    /// True: Docker does not give the container a second interface on `docker_gwbridge`.
    #[serde(rename = "DisableGatewayService", default)]
    pub disable_gateway_service: bool,
}

/// `POST /NetworkDriver.ProgramExternalConnectivity` request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgramExternalConnectivityRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "nullable")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "nullable")]
    pub endpoint_id: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: Options,
}

/// `POST /NetworkDriver.DiscoverNew` and `DiscoverDelete` request (1 = node discovery).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryRequest {
    #[serde(rename = "DiscoveryType", default, deserialize_with = "nullable")]
    pub discovery_type: i64,
    #[serde(rename = "DiscoveryData", default, deserialize_with = "nullable")]
    pub discovery_data: Value,
}

/// A network-driver failure.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverError {
    #[serde(rename = "Err")]
    pub err: String,
}

// ----- IpamDriver -----

/// `POST /IpamDriver.GetCapabilities` response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamCapabilitiesResponse {
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    /// True: Docker replays RequestPool/RequestAddress for its local networks when it restarts.
    #[serde(rename = "RequiresRequestReplay")]
    pub requires_request_replay: bool,
}

/// `POST /IpamDriver.GetDefaultAddressSpaces` response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressSpacesResponse {
    #[serde(rename = "LocalDefaultAddressSpace")]
    pub local_default_address_space: String,
    #[serde(rename = "GlobalDefaultAddressSpace")]
    pub global_default_address_space: String,
}

/// `POST /IpamDriver.RequestPool` request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestPoolRequest {
    #[serde(rename = "AddressSpace", default, deserialize_with = "nullable")]
    pub address_space: String,
    /// The CIDR asked for (`--subnet`); empty: the driver chooses.
    #[serde(rename = "Pool", default, deserialize_with = "nullable")]
    pub pool: String,
    /// A range of the pool to allocate from (`--ip-range`).
    #[serde(rename = "SubPool", default, deserialize_with = "nullable")]
    pub sub_pool: String,
    /// `--ipam-opt key=value`.
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "V6", default, deserialize_with = "nullable")]
    pub v6: bool,
}

/// `POST /IpamDriver.RequestPool` response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestPoolResponse {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

/// `POST /IpamDriver.ReleasePool` request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasePoolRequest {
    #[serde(rename = "PoolID", default, deserialize_with = "nullable")]
    pub pool_id: String,
}

/// `POST /IpamDriver.RequestAddress` request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestAddressRequest {
    #[serde(rename = "PoolID", default, deserialize_with = "nullable")]
    pub pool_id: String,
    /// A specific address (`--ip`, `--gateway`, `--aux-address`); empty: any.
    #[serde(rename = "Address", default, deserialize_with = "nullable")]
    pub address: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: BTreeMap<String, String>,
}

/// `POST /IpamDriver.RequestAddress` response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestAddressResponse {
    /// `ip/prefix`.
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

/// `POST /IpamDriver.ReleaseAddress` request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseAddressRequest {
    #[serde(rename = "PoolID", default, deserialize_with = "nullable")]
    pub pool_id: String,
    #[serde(rename = "Address", default, deserialize_with = "nullable")]
    pub address: String,
}

/// An IPAM failure (the IPAM protocol names the field `Error`, not `Err`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamError {
    #[serde(rename = "Error")]
    pub error: String,
}

/// Decode a request body; an empty body or `null` is the empty request.
pub fn decode<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, String> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() || trimmed == b"null" {
        return Ok(T::default());
    }
    serde_json::from_slice(trimmed).map_err(|e| format!("malformed request body: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn create_network_decodes_what_docker_sends() {
        // As dockerd 20.10 sends it for
        // `docker network create -d rnet --ipam-driver rnet --subnet 10.1.0.0/24 -o rnet.network=blue x`.
        let body = br#"{"NetworkID":"3f1c","Options":{"com.docker.network.enable_ipv6":false,
            "com.docker.network.generic":{"rnet.network":"blue"}},
            "IPv4Data":[{"AddressSpace":"rnet-local","Gateway":"10.1.0.1/24","Pool":"10.1.0.0/24"}],
            "IPv6Data":null}"#;
        let r: CreateNetworkRequest = decode(body).unwrap();
        assert_eq!(r.network_id, "3f1c");
        assert_eq!(r.ipv4_data[0].pool, "10.1.0.0/24");
        assert_eq!(r.ipv4_data[0].gateway, "10.1.0.1/24");
        assert!(r.ipv4_data[0].aux_addresses.is_empty());
        assert!(r.ipv6_data.is_empty());
        assert_eq!(r.options[GENERIC_OPTIONS]["rnet.network"], json!("blue"));
    }

    #[test]
    fn null_and_empty_bodies_are_empty_requests() {
        assert_eq!(
            decode::<EndpointRequest>(b"null\n").unwrap(),
            EndpointRequest::default()
        );
        assert_eq!(
            decode::<EndpointRequest>(b"").unwrap(),
            EndpointRequest::default()
        );
        let r: CreateEndpointRequest =
            decode(br#"{"NetworkID":"n","EndpointID":"e","Interface":null,"Options":null}"#)
                .unwrap();
        assert!(r.interface.is_empty());
        assert!(decode::<EndpointRequest>(b"{").is_err());
    }

    #[test]
    fn responses_use_exact_field_names() {
        let caps = CapabilitiesResponse {
            scope: "local".into(),
            connectivity_scope: "global".into(),
            gw_alloc_checker: false,
        };
        assert_eq!(
            serde_json::to_value(&caps).unwrap(),
            json!({"Scope":"local","ConnectivityScope":"global","GwAllocChecker":false})
        );
        let join = JoinResponse {
            interface_name: InterfaceName {
                src_name: "rd0123".into(),
                dst_prefix: "eth".into(),
            },
            gateway: "10.1.0.1".into(),
            disable_gateway_service: true,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&join).unwrap(),
            json!({"InterfaceName":{"SrcName":"rd0123","DstPrefix":"eth"},
                   "Gateway":"10.1.0.1","DisableGatewayService":true})
        );
        assert_eq!(
            serde_json::to_value(CreateEndpointResponse::default()).unwrap(),
            json!({})
        );
        let ce = CreateEndpointResponse {
            interface: Some(EndpointInterface {
                mac_address: "02:52:0a:01:00:02".into(),
                ..Default::default()
            }),
        };
        assert_eq!(
            serde_json::to_value(&ce).unwrap(),
            json!({"Interface":{"MacAddress":"02:52:0a:01:00:02"}})
        );
        assert_eq!(
            serde_json::to_value(DriverError { err: "x".into() }).unwrap(),
            json!({"Err":"x"})
        );
        assert_eq!(
            serde_json::to_value(IpamError { error: "x".into() }).unwrap(),
            json!({"Error":"x"})
        );
        assert_eq!(
            serde_json::to_value(IpamCapabilitiesResponse::default()).unwrap(),
            json!({"RequiresMACAddress":false,"RequiresRequestReplay":false})
        );
        assert_eq!(
            serde_json::to_value(RequestPoolResponse {
                pool_id: "p".into(),
                pool: "10.1.0.0/24".into(),
                data: Default::default()
            })
            .unwrap(),
            json!({"PoolID":"p","Pool":"10.1.0.0/24","Data":{}})
        );
    }

    #[test]
    fn ipam_requests_decode() {
        let r: RequestPoolRequest = decode(
            br#"{"AddressSpace":"rnet-local","Pool":"10.1.0.0/24","SubPool":"","Options":null,"V6":false}"#,
        )
        .unwrap();
        assert_eq!(r.pool, "10.1.0.0/24");
        assert!(!r.v6);
        let r: RequestAddressRequest = decode(
            br#"{"PoolID":"rnet:10.1.0.0/24","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#,
        )
        .unwrap();
        assert_eq!(r.options[REQUEST_ADDRESS_TYPE], GATEWAY_ADDRESS_TYPE);
        let r: JoinRequest = decode(
            br#"{"NetworkID":"n","EndpointID":"e","SandboxKey":"/var/run/docker/netns/abc","Options":{"com.docker.network.portmap":null}}"#,
        )
        .unwrap();
        assert_eq!(r.sandbox_key, "/var/run/docker/netns/abc");
    }
}
