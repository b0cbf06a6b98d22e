//! The rnetd control API's wire types (JSON over HTTP on a unix socket, paths under `/v1`).
//!
//! Every front door (CLI, CNI plugin, Docker driver) speaks these; plugin-spec/rnetd-api.md
//! documents them.

//!
//! They import nothing but the domain model: the modules that produce what a reply reports
//! (wireguard, peers, ipsec) convert their own types into these (`From` impls beside them),
//! so an internal change never changes the wire by accident.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::model::{Aead, Encryption, Endpoint, Network};

/// The API version this build speaks; the path prefix is `/v{API_VERSION}`.
pub const API_VERSION: u32 = 1;
/// The largest request body the daemon reads.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub api_version: u32,
    pub version: String,
    pub host_id: String,
    pub underlay: Ipv4Addr,
    pub underlay_mtu: u32,
    pub store: String,
    pub networks: usize,
    pub local_endpoints: usize,
    /// Changes the last reconcile applied, and when (unix seconds).
    pub last_reconcile_changes: usize,
    pub last_reconcile_at: u64,
    /// Invalid records in the store that this host skips (`rnet doctor` names them).
    #[serde(default)]
    pub bad_records: usize,
    #[serde(default)]
    pub wireguard: WireguardStatus,
    #[serde(default)]
    pub dns: DnsStatus,
    /// IPsec mode on this host: its AEAD and epoch, or why it cannot run.
    #[serde(default)]
    pub ipsec: IpsecStatus,
}

/// The networks' DNS servers on this host in `GET /v1/status` (counters since the start).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsStatus {
    /// Networks whose server runs here.
    pub servers: usize,
    /// Where other names are forwarded.
    pub upstreams: Vec<String>,
    pub answered: u64,
    pub forwarded: u64,
    /// Forwards no upstream answered (answered SERVFAIL).
    pub forward_failed: u64,
    /// Queries dropped unanswered as malformed.
    pub malformed: u64,
}

/// This host's WireGuard tunnel in `GET /v1/status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireguardStatus {
    /// Whether encrypted networks can be used here.
    pub available: bool,
    /// Why not, when they cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Which implementation runs: "kernel" or "userspace" (boringtun).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// This host's Ed25519 identity key, which peers pin: compare it with what a peer's
    /// `rnet peers` offers before running `rnet peers --trust` there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Datagrams and packets the tunnel dropped, by reason (userspace backend only: the
    /// kernel's device counts no such reasons).
    #[serde(default)]
    pub drops: DropCounters,
    /// The tunnel device's segmentation offload (userspace backend only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tun_offload: Option<TunOffload>,
}

/// Whether the userspace tunnel's device hands over TCP super-packets (up to 64 KB, inside
/// VXLAN), which rnetd cuts into wire packets before encrypting them, and takes the ones
/// rnetd merges from received segments.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunOffload {
    pub tso: bool,
    /// Super-packets cut so far.
    pub super_packets: u64,
    /// Super-packets merged from received TCP segments and handed to the kernel whole.
    #[serde(default)]
    pub merged: u64,
}

/// A request to create a network (`POST /v1/networks`), as it arrives (strings not yet
/// parsed; `ipam` plans the network from it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRequest {
    pub name: String,
    pub subnet: String,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub vni: Option<u32>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub allow_overlap: bool,
    /// None: `none` for a new network, the existing network's for a repeated request.
    #[serde(default)]
    pub encryption: Option<Encryption>,
    /// Workloads reach nothing beyond the overlay (`rnet network create --no-egress`).
    #[serde(default)]
    pub no_egress: bool,
    /// No egress and no published ports (Docker's `--internal`).
    #[serde(default)]
    pub internal: bool,
}

/// The WireGuard implementation that runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The kernel's `wireguard` module.
    Kernel,
    /// boringtun, in rnetd.
    Userspace,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Kernel => "kernel",
            Backend::Userspace => "userspace (boringtun)",
        })
    }
}

/// Datagrams the userspace tunnel dropped on the way in, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCounters {
    /// Not a WireGuard message at all.
    pub malformed: u64,
    /// Well-formed but refused by the protocol (bad MAC or tag, replayed counter, unknown index...).
    pub rejected: u64,
    /// Decrypted, but the inner source address is not the peer's.
    pub spoofed: u64,
    /// Outbound packets for an address that is no peer.
    pub no_peer: u64,
    /// Outbound packets whose segmentation metadata does not fit them: refused whole.
    #[serde(default)]
    pub bad_offload: u64,
}

/// One peer's WireGuard tunnel in `GET /v1/peers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TunnelStatus {
    pub up: bool,
    /// Seconds since the current session's handshake (None: no session).
    pub since_handshake: Option<u64>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Seconds since the peer made its key.
    pub key_age: Option<u64>,
    /// Why the tunnel is not up, when rnetd knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Which WireGuard implementation carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
}

/// This host's IPsec state in `GET /v1/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpsecStatus {
    pub available: bool,
    /// Why IPsec cannot run here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aead: Option<Aead>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Seconds until the next scheduled rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_secs: Option<u64>,
    /// What the last programming pass could not do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

/// One peer's IPsec SAs in `GET /v1/peers`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerIpsec {
    /// The AEAD of the pair.
    pub aead: Option<Aead>,
    /// The peer's sending epoch (what this host receives on).
    pub peer_epoch: Option<u64>,
    /// SPIs this host receives on from the peer (newest last).
    pub inbound_spis: Vec<u32>,
    /// The SPI this host sends on to the peer.
    pub outbound_spi: Option<u32>,
    /// Both ways have an SA.
    pub installed: bool,
    /// Why not, or what is in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A peer's state in `GET /v1/peers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerState {
    /// This host.
    #[serde(rename = "self")]
    Local,
    /// Its daemon's presence record lives.
    Live,
    /// The record expired but the host still answers probes: its workloads keep their entries.
    DaemonDown,
    /// Neither: its entries are removed.
    Gone,
}

impl std::fmt::Display for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeerState::Local => "self",
            PeerState::Live => "live",
            PeerState::DaemonDown => "daemon down",
            PeerState::Gone => "gone",
        })
    }
}

/// What a host is pinned to (`POST /v1/peers/{host}/trust`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// Its Ed25519 identity key, base64.
    pub identity: String,
    pub underlay: Ipv4Addr,
    /// The WireGuard public key last accepted under the identity, base64.
    pub public_key: String,
    pub port: u16,
    pub key_created: u64,
    /// Unix seconds of the pinning (first sight or `rnet peers --trust`).
    pub pinned: u64,
}

/// One row of `GET /v1/networks`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkSummary {
    #[serde(flatten)]
    pub network: Network,
    pub endpoints: usize,
}

/// `GET /v1/networks/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkDetail {
    #[serde(flatten)]
    pub network: Network,
    pub endpoints: Vec<Endpoint>,
}

/// `POST /v1/attach`: connect a workload's namespace to a network.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    pub network: String,
    /// Path of the workload's network namespace; or give `pid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Interface name inside the workload (default eth0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// A specific address to take (default: the lowest free one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The endpoint id (default: generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A specific MAC for the workload interface (unicast, not all zeros; default: derived
    /// from the address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The workload interface's MTU, at most the network's (default: the network's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The front door making the request (default: cli).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<crate::model::Origin>,
    /// Who within that front door (for CNI: the network configuration's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The DNS name the network's resolver answers for the workload (RFC 1123, lowercase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// More DNS names for it (at most 16).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Ports of this host to forward to the workload (refused on an internal or no-egress
    /// network, or when another endpoint here publishes the same host port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<crate::model::PortMapping>,
}

/// `POST /v1/detach`: disconnect endpoints, chosen by id or by namespace.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DetachRequest {
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// `POST /v1/detach` result: the endpoints removed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DetachResponse {
    pub detached: Vec<Endpoint>,
}

/// `DELETE /v1/networks/{name}` result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoveResponse {
    pub removed: String,
    pub detached: Vec<Endpoint>,
}

/// One difference between what should be in the kernel and what is.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DriftLine {
    pub network: String,
    /// "missing", "stray", "wrong", or "invalid" (a store record that is skipped).
    pub kind: String,
    /// The object, e.g. "sandbox", "veth ve0a000002", "fdb 02:52:.. -> 198.18.0.2".
    pub object: String,
    pub detail: String,
}

/// `GET /v1/doctor`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DoctorReport {
    pub networks_checked: usize,
    pub drift: Vec<DriftLine>,
}

/// What the daemon answers instead of a result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// One of: invalid, forbidden, not_found, conflict, exhausted, unavailable, unsupported, internal.
    pub kind: String,
    pub error: String,
}

/// One row of `GET /v1/peers`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PeerInfo {
    pub host: String,
    pub underlay: Ipv4Addr,
    pub vtep_mac: crate::model::Mac,
    pub state: PeerState,
    /// Seconds since the host's daemon last renewed its presence (None: no presence record).
    pub renewed_ago: Option<u64>,
    pub endpoints: usize,
    /// The WireGuard tunnel to it (None: this host runs no tunnel, or it is this host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelStatus>,
    /// The IPsec SAs with it (None: no IPsec on this host, or it is this host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipsec: Option<PeerIpsec>,
}

/// `POST /v1/peers/{host}/trust`: what the host is now pinned to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TrustResponse {
    pub host: String,
    pub pin: Pin,
}

/// `POST /v1/gc`: release the endpoints of a host that is gone.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    pub host: String,
    /// Also when the host still answers probes (its daemon is down but it may be running).
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/gc` result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GcResponse {
    pub host: String,
    pub released: Vec<Endpoint>,
}

// ----- CNI (`/v1/cni/...`): what the rnet-cni plugin needs beyond attach -----

/// `POST /v1/cni/add` result (its body is an [`AttachRequest`]): the endpoint and the network
/// it is on, everything a CNI result is made of, in one round trip.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CniAttachment {
    pub endpoint: Endpoint,
    pub network: Network,
}

/// `POST /v1/cni/del`: release one CNI attachment, idempotently.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CniDelRequest {
    pub network: String,
    /// The endpoint id the plugin derives from (container id, ifname).
    pub id: String,
    /// CNI_IFNAME: an endpoint with this id but another interface is not this attachment.
    pub ifname: String,
    /// CNI_NETNS if the runtime still has it (optional in DEL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

/// `POST /v1/cni/del` result.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CniDelResponse {
    /// The endpoint released (None: there was nothing to release).
    pub released: Option<Endpoint>,
    /// How the veth pair goes: "none" (nothing left), "background" (its address is free
    /// now; the daemon deletes the pair right after answering).
    pub teardown: String,
}

/// `POST /v1/cni/check`: is the attachment as the daemon made it?
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CniCheckRequest {
    pub network: String,
    pub id: String,
    pub ifname: String,
    pub netns: String,
}

/// `GET /v1/cni/status?network=NAME` result: the network can take another attachment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CniStatus {
    pub network: String,
    /// Usable addresses of the subnet, and how many are taken (cluster-wide).
    pub capacity: u64,
    pub used: u64,
}

/// `POST /v1/cni/gc`: release this host's CNI endpoints of a network that the runtime no
/// longer knows.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CniGcRequest {
    pub network: String,
    /// Only endpoints made under this owner (the CNI network configuration's name).
    pub owner: String,
    /// Endpoint ids of the attachments that are still valid.
    pub valid: Vec<String>,
}

/// `POST /v1/cni/gc` result.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CniGcResponse {
    pub released: Vec<Endpoint>,
}
