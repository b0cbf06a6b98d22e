//! Applying specs through rtnetlink, and reading the kernel back.
//!
//! One netlink connection per namespace, kept for the daemon's life (sandboxes) or for
//! one operation (workload namespaces). A socket stays bound to the namespace it was
//! created in, so a connection into another namespace is opened on a short-lived thread
//! that has entered it, then driven from tokio like any other.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, TokioSocket};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};

use super::spec::{EndpointSpec, SandboxMarker, SandboxSpec, BRIDGE};
use super::tables;
use crate::model::Mac;
use crate::netns::{self, NetNs, NetnsError};
use crate::peers::{TableDiff, Tables};

/// A dataplane failure, naming the object and the operation.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{op}: {msg}")]
    Netlink {
        op: String,
        msg: String,
        errno: Option<i32>,
    },
    #[error("interface {ifname} already exists in network namespace {netns}")]
    IfaceExists { ifname: String, netns: String },
    #[error("underlay address {0} is not configured on any interface of this host")]
    NoUnderlay(Ipv4Addr),
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    /// An existing sandbox that must not be used as asked (another network's, or a downgrade).
    #[error("refusing to use sandbox {path}: {why}")]
    SandboxRefused { path: String, why: String },
}

impl DataplaneError {
    pub(super) fn netlink(op: impl Into<String>, e: rtnetlink::Error) -> DataplaneError {
        let errno = errno_of(&e);
        let msg = match errno {
            Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
            None => e.to_string(),
        };
        DataplaneError::Netlink {
            op: op.into(),
            msg,
            errno,
        }
    }
}

type Result<T> = std::result::Result<T, DataplaneError>;

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Queue length of the WireGuard TUN device.
const TUNNEL_TXQUEUELEN: u32 = 5000;

/// Open a netlink connection in the current namespace (ns = None) or inside `ns`.
pub fn connect(ns: Option<&NetNs>) -> Result<Handle> {
    let open = || -> std::io::Result<i32> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        // Extended acks make the kernel explain a refusal ("Address already in use" for what).
        let _ = socket.set_ext_ack(true);
        Ok(socket.into_raw_fd())
    };
    let fd = match ns {
        Some(ns) => ns.run(open)?,
        None => open(),
    }
    .map_err(DataplaneError::Socket)?;
    // SAFETY: `fd` is a netlink socket we just created and own exclusively.
    let socket = unsafe { TokioSocket::from_raw_fd(fd) };
    let (conn, handle, _) = rtnetlink::from_socket(socket);
    tokio::spawn(conn);
    Ok(handle)
}

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
    pub mac: Option<Mac>,
    /// `IFLA_IFALIAS`: rnet marks a sandbox's bridge with what the sandbox is for.
    pub alias: Option<String>,
    /// `IFLA_LINK_NETNSID`: for a VXLAN device, the namespace (as an id local to the
    /// namespace that reads it) where its UDP socket lives; None when it is the device's own.
    pub link_netnsid: Option<i32>,
}

impl LinkState {
    fn from_message(m: &LinkMessage) -> LinkState {
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

/// The rtnetlink dataplane of one host.
pub struct Netlink {
    pub(super) host: Handle,
    /// The host namespace itself, to ask a sandbox which id it knows it by.
    pub(super) host_ns: NetNs,
    sandboxes: Mutex<HashMap<PathBuf, Handle>>,
    /// Per sandbox, a raw socket for batched peer-table writes.
    batch: Mutex<HashMap<PathBuf, Arc<Mutex<Socket>>>>,
}

impl Netlink {
    /// Connect in the calling thread's namespace: the host namespace. Needs a tokio runtime.
    pub fn new() -> Result<Netlink> {
        Ok(Netlink {
            host: connect(None)?,
            host_ns: NetNs::open(Path::new("/proc/thread-self/ns/net"))?,
            sandboxes: Mutex::new(HashMap::new()),
            batch: Mutex::new(HashMap::new()),
        })
    }

    /// The connection into a sandbox, opened once and reused.
    pub(super) fn sandbox(&self, path: &Path) -> Result<Handle> {
        let mut map = self.sandboxes.lock().expect("sandbox map poisoned");
        if let Some(h) = map.get(path) {
            return Ok(h.clone());
        }
        let handle = connect(Some(&NetNs::open(path)?))?;
        map.insert(path.to_path_buf(), handle.clone());
        Ok(handle)
    }

    /// The underlay interface holding `address`, with its MTU.
    pub async fn underlay(&self, address: Ipv4Addr) -> Result<Underlay> {
        let mut addrs = self.host.address().get().execute();
        while let Some(m) = addrs
            .try_next()
            .await
            .map_err(|e| DataplaneError::netlink("listing addresses", e))?
        {
            let found = m.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) if *ip == address)
            });
            if found {
                let link = get_link_by_index(&self.host, m.header.index).await?;
                let mtu = link.map(|l| l.mtu).unwrap_or(1500);
                return Ok(Underlay {
                    address,
                    ifindex: m.header.index,
                    mtu,
                });
            }
        }
        Err(DataplaneError::NoUnderlay(address))
    }

    /// The preferred source address of the default route, if there is one.
    pub async fn default_route_source(&self) -> Result<Option<Ipv4Addr>> {
        let req = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut routes = self.host.route().get(req).execute();
        while let Some(r) = routes
            .try_next()
            .await
            .map_err(|e| DataplaneError::netlink("listing routes", e))?
        {
            if r.header.destination_prefix_length != 0 {
                continue;
            }
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => return Ok(Some(*ip)),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if let Some(oif) = oif {
                return self.first_address_of(oif).await;
            }
        }
        Ok(None)
    }

    async fn first_address_of(&self, index: u32) -> Result<Option<Ipv4Addr>> {
        let mut addrs = self
            .host
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(m) = addrs
            .try_next()
            .await
            .map_err(|e| DataplaneError::netlink("listing addresses", e))?
        {
            for a in &m.attributes {
                if let AddressAttribute::Local(IpAddr::V4(ip))
                | AddressAttribute::Address(IpAddr::V4(ip)) = a
                {
                    return Ok(Some(*ip));
                }
            }
        }
        Ok(None)
    }

    /// Make the sandbox exist as `spec` says. Idempotent; a sandbox this call created is
    /// removed again if a later step fails.
    pub async fn ensure_sandbox(&self, spec: &SandboxSpec) -> Result<()> {
        let created = !netns::is_mounted(&spec.netns);
        if created {
            netns::remove(&spec.netns)?; // a leftover plain file from a crash
            NetNs::create(&spec.netns)?;
        }
        let result = self.fill_sandbox(spec).await;
        if result.is_err() && created {
            self.remove_sandbox(&spec.netns).await?;
        }
        result
    }

    async fn fill_sandbox(&self, spec: &SandboxSpec) -> Result<()> {
        let sb = self.sandbox(&spec.netns)?;
        let bridge = match get_link(&sb, BRIDGE).await? {
            Some(b) => b,
            None => {
                let mut msg = LinkBridge::new(BRIDGE)
                    .mtu(spec.mtu)
                    .address(spec.bridge_mac.0.to_vec())
                    .up()
                    .build();
                msg.attributes
                    .push(LinkAttribute::IfAlias(spec.marker.alias()));
                add_link(
                    &sb,
                    msg,
                    &format!("creating bridge {BRIDGE} in {}", spec.netns.display()),
                )
                .await?;
                require_link(&sb, BRIDGE).await?
            }
        };
        self.check_marker(spec, &sb, &bridge).await?;
        if !bridge.up || bridge.mtu != spec.mtu {
            set_link(
                &sb,
                LinkUnspec::new_with_index(bridge.index)
                    .mtu(spec.mtu)
                    .up()
                    .build(),
                "bringing up bridge",
            )
            .await?;
        }
        sb.address()
            .add(
                bridge.index,
                IpAddr::V4(spec.gateway.ip()),
                spec.gateway.prefix(),
            )
            .replace()
            .execute()
            .await
            .map_err(|e| {
                DataplaneError::netlink(format!("adding gateway {} to {BRIDGE}", spec.gateway), e)
            })?;
        self.ensure_vxlan(spec, &sb, bridge.index).await
    }

    /// Refuse a sandbox whose bridge says it is another network's, or an encrypted one the
    /// spec would rebuild in the clear; mark it (again) as the spec's.
    async fn check_marker(
        &self,
        spec: &SandboxSpec,
        sb: &Handle,
        bridge: &LinkState,
    ) -> Result<()> {
        if let Some(have) = bridge.alias.as_deref().and_then(SandboxMarker::parse) {
            if let Some(why) = have.refuses(&spec.marker) {
                return Err(DataplaneError::SandboxRefused {
                    path: spec.netns.display().to_string(),
                    why,
                });
            }
        }
        let alias = spec.marker.alias();
        if bridge.alias.as_deref() != Some(alias.as_str()) {
            let mut msg = LinkUnspec::new_with_index(bridge.index).build();
            msg.attributes.push(LinkAttribute::IfAlias(alias));
            set_link(sb, msg, &format!("marking {BRIDGE} with its network")).await?;
        }
        Ok(())
    }

    /// The id by which the sandbox knows the namespace that should hold its VXLAN socket.
    async fn vtep_nsid(&self, spec: &SandboxSpec, sb: &Handle) -> Result<Option<i32>> {
        match &spec.vtep_netns {
            None => nsid_of(sb, &self.host_ns).await,
            Some(path) => nsid_of(sb, &NetNs::open(path)?).await,
        }
    }

    async fn ensure_vxlan(&self, spec: &SandboxSpec, sb: &Handle, bridge: u32) -> Result<()> {
        let existing = get_link(sb, &spec.vxlan).await?;
        // A device is trusted only with its socket where the spec wants it: an encrypted
        // network's in the tunnel namespace (whose only exit is WireGuard), never the host's.
        let socket_ns = match &existing {
            Some(_) => self.vtep_nsid(spec, sb).await?,
            None => None,
        };
        let wanted = |l: &LinkState| {
            l.vni == Some(spec.vni)
                && l.learning == Some(false)
                && l.proxy == Some(true)
                && l.port == Some(spec.port)
                && socket_ns.is_some()
                && l.link_netnsid == socket_ns
        };
        let vx = match existing {
            Some(l) if wanted(&l) => l,
            other => {
                if let Some(stale) = other {
                    del_link(sb, stale.index, &spec.vxlan).await?;
                }
                self.create_vxlan(spec).await?;
                require_link(sb, &spec.vxlan).await?
            }
        };
        if vx.controller != Some(bridge) || !vx.up || vx.mtu != spec.mtu {
            let msg = LinkUnspec::new_with_index(vx.index)
                .controller(bridge)
                .mtu(spec.mtu)
                .up()
                .build();
            set_link(sb, msg, &format!("attaching {} to {BRIDGE}", spec.vxlan)).await?;
        }
        Ok(())
    }

    /// Created from the host namespace straight into the sandbox: the device's UDP socket
    /// lives in the namespace of the request (the host's), its interface in the sandbox.
    /// Encrypted networks' devices are created from the tunnel namespace instead.
    async fn create_vxlan(&self, spec: &SandboxSpec) -> Result<()> {
        let sandbox = NetNs::open(&spec.netns)?;
        let from = match &spec.vtep_netns {
            None => self.host.clone(),
            Some(path) => self.sandbox(path)?,
        };
        let msg = LinkVxlan::new(&spec.vxlan, spec.vni)
            .local(spec.local)
            .port(spec.port)
            .learning(false)
            .proxy(true)
            .mtu(spec.mtu)
            .setns_by_fd(sandbox.as_raw_fd())
            .build();
        add_link(
            &from,
            msg,
            &format!(
                "creating VXLAN device {} (VNI {}, port {})",
                spec.vxlan, spec.vni, spec.port
            ),
        )
        .await
    }

    /// Give the tunnel namespace's TUN device its address, MTU and the default route: every
    /// VXLAN packet of an encrypted network goes to the tunnel, whatever its destination.
    pub async fn configure_tunnel(
        &self,
        netns: &Path,
        ifname: &str,
        address: Ipv4Addr,
        mtu: u32,
    ) -> Result<()> {
        let h = self.sandbox(netns)?;
        let lo = require_link(&h, "lo").await?;
        set_link(
            &h,
            LinkUnspec::new_with_index(lo.index).up().build(),
            "bringing up lo",
        )
        .await?;
        let tun = require_link(&h, ifname).await?;
        let mut msg = LinkUnspec::new_with_index(tun.index).mtu(mtu).up().build();
        // The tunnel thread drains the queue in batches; the default 500 packets overflow in
        // bursts and TCP takes every drop for congestion.
        msg.attributes
            .push(LinkAttribute::TxQueueLen(TUNNEL_TXQUEUELEN));
        set_link(&h, msg, &format!("bringing up {ifname}")).await?;
        h.address()
            .add(tun.index, IpAddr::V4(address), 32)
            .replace()
            .execute()
            .await
            .map_err(|e| DataplaneError::netlink(format!("adding {address} to {ifname}"), e))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .output_interface(tun.index)
            .build();
        h.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| DataplaneError::netlink(format!("routing through {ifname}"), e))
    }

    /// Remove the tunnel device `ifname` from the namespace at `netns` if one is there (a
    /// kernel WireGuard device outlives rnetd; a new start makes its own).
    pub async fn remove_tunnel_device(&self, netns: &Path, ifname: &str) -> Result<()> {
        let h = self.sandbox(netns)?;
        match get_link(&h, ifname).await? {
            Some(l) => del_link(&h, l.index, ifname).await,
            None => Ok(()),
        }
    }

    /// Create a kernel WireGuard device named `ifname` from the host namespace straight into
    /// the namespace at `netns`: the kernel keeps its UDP socket in the namespace it was
    /// created from (the underlay's), while its packets come and go in `netns`. Fails with
    /// errno EOPNOTSUPP where the kernel has no WireGuard.
    pub async fn create_wireguard_device(&self, netns: &Path, ifname: &str) -> Result<()> {
        let ns = NetNs::open(netns)?;
        let msg = rtnetlink::LinkWireguard::new(ifname)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        add_link(
            &self.host,
            msg,
            &format!("creating WireGuard device {ifname}"),
        )
        .await
    }

    /// Remove a sandbox: dropping the namespace tears down its devices in the kernel's own time.
    /// Every handle cached for it goes too: a cached socket would keep the old namespace (and
    /// its VXLAN device) alive and be used for whatever later appears at the same path.
    pub async fn remove_sandbox(&self, path: &Path) -> Result<()> {
        // The namespace dies only once nothing refers to it; its VXLAN device (and with it
        // the VNI on the shared UDP socket) goes now, so a successor can be built at once.
        if netns::is_mounted(path) {
            let sb = self.sandbox(path)?;
            for l in list_links(&sb).await? {
                if l.kind.as_deref() == Some("vxlan") {
                    del_link(&sb, l.index, &l.name).await?;
                }
            }
        }
        self.forget_sandbox(path);
        netns::remove(path)?;
        Ok(())
    }

    /// Drop the cached netlink connection and batch socket of a sandbox.
    pub fn forget_sandbox(&self, path: &Path) {
        self.sandboxes
            .lock()
            .expect("sandbox map poisoned")
            .remove(path);
        self.batch.lock().expect("batch map poisoned").remove(path);
    }

    /// Read back a sandbox; None if it does not exist. `tunnel`: the tunnel namespace, if
    /// this host has one, so an encrypted network's VXLAN socket can be checked.
    pub async fn observe_sandbox(
        &self,
        path: &Path,
        tunnel: Option<&Path>,
    ) -> Result<Option<SandboxState>> {
        if !netns::is_mounted(path) {
            return Ok(None);
        }
        let sb = self.sandbox(path)?;
        let host_nsid = nsid_of(&sb, &self.host_ns).await?;
        let tunnel_nsid = match tunnel.map(NetNs::open) {
            Some(Ok(ns)) => nsid_of(&sb, &ns).await?,
            _ => None,
        };
        let links = list_links(&sb).await?;
        let mut addresses = Vec::new();
        let mut addrs = sb.address().get().execute();
        while let Some(m) = addrs
            .try_next()
            .await
            .map_err(|e| DataplaneError::netlink("listing sandbox addresses", e))?
        {
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                    if let Ok(net) = Ipv4Network::new(*ip, m.header.prefix_len) {
                        addresses.push((m.header.index, net));
                    }
                }
            }
        }
        Ok(Some(SandboxState {
            links,
            addresses,
            host_nsid,
            tunnel_nsid,
        }))
    }

    /// Connect a workload namespace to a sandbox's bridge as `ep` says. On failure nothing
    /// of it is left behind.
    pub async fn attach(
        &self,
        sandbox: &SandboxSpec,
        ep: &EndpointSpec,
        workload: &NetNs,
    ) -> Result<()> {
        let sb = self.sandbox(&sandbox.netns)?;
        if let Some(stale) = get_link(&sb, &ep.host_ifname).await? {
            del_link(&sb, stale.index, &ep.host_ifname).await?;
        }
        let bridge = require_link(&sb, BRIDGE).await?;
        // The sandbox-side name is this endpoint's alone (derived from its address, a stale
        // one just removed), so EEXIST can only be the workload side's name.
        match add_link(
            &sb,
            veth_message(ep, bridge.index, workload),
            &format!("creating veth {} <-> {}", ep.host_ifname, ep.ifname),
        )
        .await
        {
            Err(DataplaneError::Netlink {
                errno: Some(libc::EEXIST),
                ..
            }) => {
                return Err(DataplaneError::IfaceExists {
                    ifname: ep.ifname.clone(),
                    netns: workload.path().display().to_string(),
                })
            }
            other => other?,
        }
        let spec = ep.clone();
        let configured =
            super::workload::in_netns(workload, move || super::workload::configure(&spec))
                .await
                .and_then(|r| r);
        if let Err(e) = configured {
            let _ = self.detach(&sandbox.netns, &ep.host_ifname).await;
            return Err(e);
        }
        Ok(())
    }

    /// Build an endpoint's veth pair for a runtime that moves the workload end itself (Docker):
    /// the sandbox end enslaved to the bridge and up, the other end named `peer`, with the
    /// endpoint's MAC and MTU, left in this daemon's own network namespace for the runtime to
    /// move into the container. Stale links of either name are replaced.
    pub async fn attach_for_move(
        &self,
        sandbox: &SandboxSpec,
        ep: &EndpointSpec,
        peer: &str,
    ) -> Result<()> {
        let own = NetNs::of_pid(std::process::id())?;
        if let Some(stale) = get_link(&self.host, peer).await? {
            del_link(&self.host, stale.index, peer).await?;
        }
        let sb = self.sandbox(&sandbox.netns)?;
        if let Some(stale) = get_link(&sb, &ep.host_ifname).await? {
            del_link(&sb, stale.index, &ep.host_ifname).await?;
        }
        let bridge = require_link(&sb, BRIDGE).await?;
        let mut movable = ep.clone();
        movable.ifname = peer.to_string();
        add_link(
            &sb,
            veth_message(&movable, bridge.index, &own),
            &format!("creating veth {} <-> {peer}", ep.host_ifname),
        )
        .await
    }

    /// Remove an endpoint's veth pair (both ends go together). Absent is fine.
    pub async fn detach(&self, sandbox: &Path, host_ifname: &str) -> Result<()> {
        if !netns::is_mounted(sandbox) {
            return Ok(());
        }
        let sb = self.sandbox(sandbox)?;
        if let Some(link) = get_link(&sb, host_ifname).await? {
            del_link(&sb, link.index, host_ifname).await?;
        }
        Ok(())
    }

    /// As `detach`, without waiting for the kernel to finish: deleting a veth holds the caller
    /// for tens of milliseconds of RCU grace periods. The link is found now (by name) and
    /// deleted by index in the background, so a veth created later under the same name is
    /// never the one deleted.
    pub async fn detach_in_background(&self, sandbox: &Path, host_ifname: &str) -> Result<()> {
        if !netns::is_mounted(sandbox) {
            return Ok(());
        }
        let sb = self.sandbox(sandbox)?;
        let Some(link) = get_link(&sb, host_ifname).await? else {
            return Ok(());
        };
        let name = host_ifname.to_string();
        tokio::spawn(async move {
            if let Err(e) = del_link(&sb, link.index, &name).await {
                tracing::warn!(error = %e, veth = %name, "deleting a veth in the background failed; the reconcile removes it");
            }
        });
        Ok(())
    }

    /// The peer tables of a sandbox's VXLAN device, with the device's index; None if the
    /// sandbox or device does not exist.
    pub async fn observe_tables(
        &self,
        sandbox: &Path,
        vxlan: &str,
    ) -> Result<Option<(u32, Tables)>> {
        if !netns::is_mounted(sandbox) {
            return Ok(None);
        }
        let sb = self.sandbox(sandbox)?;
        let Some(dev) = get_link(&sb, vxlan).await? else {
            return Ok(None);
        };
        let t = tables::observe(&sb, dev.index)
            .await
            .map_err(|e| DataplaneError::netlink(format!("reading the tables of {vxlan}"), e))?;
        Ok(Some((dev.index, t)))
    }

    /// Apply a table diff to the VXLAN device `ifindex` of a sandbox; returns the failures.
    pub async fn apply_tables(
        &self,
        sandbox: &Path,
        ifindex: u32,
        diff: &TableDiff,
    ) -> Result<usize> {
        let sock = self.batch_socket(sandbox)?;
        let diff = diff.clone();
        tokio::task::spawn_blocking(move || {
            let sock = sock.lock().expect("batch socket poisoned");
            tables::apply(&sock, ifindex, &diff)
        })
        .await
        .map_err(|e| DataplaneError::Socket(std::io::Error::other(e.to_string())))
    }

    /// The sandbox's raw socket for batched table writes, opened once.
    fn batch_socket(&self, sandbox: &Path) -> Result<Arc<Mutex<Socket>>> {
        let mut map = self.batch.lock().expect("batch map poisoned");
        if let Some(s) = map.get(sandbox) {
            return Ok(s.clone());
        }
        let sock = NetNs::open(sandbox)?
            .run(tables::open_batch_socket)?
            .map_err(DataplaneError::Socket)?;
        let sock = Arc::new(Mutex::new(sock));
        map.insert(sandbox.to_path_buf(), sock.clone());
        Ok(sock)
    }

    /// Enslave a sandbox veth to the bridge and bring it up.
    pub async fn fix_veth(&self, sandbox: &Path, host_ifname: &str) -> Result<()> {
        let sb = self.sandbox(sandbox)?;
        let bridge = require_link(&sb, BRIDGE).await?;
        let link = require_link(&sb, host_ifname).await?;
        let msg = LinkUnspec::new_with_index(link.index)
            .controller(bridge.index)
            .up()
            .build();
        set_link(&sb, msg, &format!("attaching {host_ifname} to {BRIDGE}")).await
    }

    /// Whether the workload side of an endpoint is present and configured.
    pub async fn observe_workload(
        &self,
        workload: &NetNs,
        ifname: &str,
    ) -> Result<Option<(LinkState, Vec<Ipv4Network>)>> {
        let wl = connect(Some(workload))?;
        let Some(link) = get_link(&wl, ifname).await? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        let mut addrs = wl
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute();
        while let Some(m) = addrs
            .try_next()
            .await
            .map_err(|e| DataplaneError::netlink("listing workload addresses", e))?
        {
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                    if let Ok(n) = Ipv4Network::new(*ip, m.header.prefix_len) {
                        out.push(n);
                    }
                }
            }
        }
        Ok(Some((link, out)))
    }
}

/// `ip link add HOST mtu M master br0 up type veth peer name IFNAME address MAC mtu M netns FD`:
/// the workload end is born in its namespace under its final name, so there is no move and
/// no rename, and a name clash fails before anything exists.
fn veth_message(ep: &EndpointSpec, bridge: u32, workload: &NetNs) -> LinkMessage {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(ep.ifname.clone())
        .address(ep.mac.0.to_vec())
        .mtu(ep.mtu)
        .setns_by_fd(workload.as_raw_fd())
        .build();
    LinkVeth::new(&ep.host_ifname, &ep.ifname)
        .mtu(ep.mtu)
        .controller(bridge)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build()
}

/// The TCP MSS to advertise for an MTU: minus the IPv4 and TCP headers (20 + 20).
pub fn advmss(mtu: u32) -> u32 {
    mtu.saturating_sub(40)
}

/// A workload interface as read back for a CNI CHECK.
#[derive(Clone, Debug, Default)]
pub struct WorkloadLink {
    pub link: LinkState,
    pub addresses: Vec<Ipv4Network>,
    /// Gateways of the IPv4 default routes (main table) through this interface.
    pub default_gateways: Vec<Ipv4Addr>,
}

impl Netlink {
    /// The interface `ifname` of a workload namespace with its addresses and default routes;
    /// None if it does not exist.
    pub async fn inspect_workload(
        &self,
        workload: &NetNs,
        ifname: &str,
    ) -> Result<Option<WorkloadLink>> {
        let wl = connect(Some(workload))?;
        let Some(link) = get_link(&wl, ifname).await? else {
            return Ok(None);
        };
        let mut out = WorkloadLink {
            addresses: addresses_of(&wl, link.index).await?,
            link,
            ..Default::default()
        };
        let mut routes = wl
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(m) = routes
            .try_next()
            .await
            .map_err(|e| DataplaneError::netlink("listing workload routes", e))?
        {
            let oif = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            let gw = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                _ => None,
            });
            if m.header.destination_prefix_length == 0 && oif == Some(out.link.index) {
                out.default_gateways.extend(gw);
            }
        }
        Ok(Some(out))
    }

    /// The index of link `name` in a sandbox, if both exist.
    pub async fn sandbox_link(&self, sandbox: &Path, name: &str) -> Result<Option<LinkState>> {
        if !netns::is_mounted(sandbox) {
            return Ok(None);
        }
        get_link(&self.sandbox(sandbox)?, name).await
    }

    /// The index of interface `ifname` in a workload namespace, if it exists.
    pub async fn workload_link(&self, workload: &NetNs, ifname: &str) -> Result<Option<LinkState>> {
        get_link(&connect(Some(workload))?, ifname).await
    }
}

/// Delete link `index` of the namespace at `netns`, blocking: `ip -n NS link del dev INDEX`.
/// Deleting a veth makes the kernel wait for an RCU grace period (tens of milliseconds) inside
/// the netlink call, so this runs on a thread of its own over a raw socket, never on a tokio
/// worker. An absent namespace or link is fine.
pub fn delete_link_blocking(netns: &Path, index: u32) -> Result<()> {
    let ns = match NetNs::open(netns) {
        Ok(ns) => ns,
        Err(NetnsError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let what = format!("deleting link {index} in {}", netns.display());
    ns.run(move || -> std::io::Result<Option<i32>> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let mut nl = netlink_packet_core::NetlinkMessage::from(
            netlink_packet_route::RouteNetlinkMessage::DelLink(msg),
        );
        nl.header.flags = netlink_packet_core::NLM_F_REQUEST | netlink_packet_core::NLM_F_ACK;
        nl.header.sequence_number = 1;
        nl.finalize();
        let mut buf = vec![0; nl.buffer_len()];
        nl.serialize(&mut buf);
        sock.send(&buf, 0)?;
        let mut answer = Vec::with_capacity(4096);
        sock.recv(&mut answer, 0)?;
        let reply = netlink_packet_core::NetlinkMessage::<
            netlink_packet_route::RouteNetlinkMessage,
        >::deserialize(&answer)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(match reply.payload {
            netlink_packet_core::NetlinkPayload::Error(e) => e.code.map(|c| -c.get()),
            _ => None,
        })
    })?
    .map_err(DataplaneError::Socket)
    .and_then(|errno| match errno {
        None | Some(libc::ENODEV) => Ok(()),
        Some(code) => Err(DataplaneError::Netlink {
            op: what,
            msg: std::io::Error::from_raw_os_error(code).to_string(),
            errno: Some(code),
        }),
    })
}

async fn addresses_of(h: &Handle, index: u32) -> Result<Vec<Ipv4Network>> {
    let mut out = Vec::new();
    let mut addrs = h.address().get().set_link_index_filter(index).execute();
    while let Some(m) = addrs
        .try_next()
        .await
        .map_err(|e| DataplaneError::netlink("listing addresses", e))?
    {
        for a in &m.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                if let Ok(n) = Ipv4Network::new(*ip, m.header.prefix_len) {
                    out.push(n);
                }
            }
        }
    }
    Ok(out)
}

/// The id by which the namespace of connection `h` knows namespace `ns` (`RTM_GETNSID`);
/// None when it has assigned none (then no device there can have its socket in `ns`).
async fn nsid_of(h: &Handle, ns: &NetNs) -> Result<Option<i32>> {
    use futures::StreamExt;
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
    let mut msg = NsidMessage::default();
    msg.attributes
        .push(NsidAttribute::Fd(ns.as_raw_fd() as u32));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let op = || format!("asking for the id of namespace {}", ns.path().display());
    let mut replies = h
        .clone()
        .request(req)
        .map_err(|e| DataplaneError::netlink(op(), e))?;
    let mut id = None;
    while let Some(reply) = replies.next().await {
        match reply.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                id = m.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(i) if *i >= 0 => Some(*i),
                    _ => None,
                });
            }
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(DataplaneError::netlink(
                    op(),
                    rtnetlink::Error::NetlinkError(e),
                ))
            }
            _ => {}
        }
    }
    Ok(id)
}

pub(super) async fn list_links(h: &Handle) -> Result<Vec<LinkState>> {
    let mut out = Vec::new();
    let mut links = h.link().get().execute();
    while let Some(m) = links
        .try_next()
        .await
        .map_err(|e| DataplaneError::netlink("listing links", e))?
    {
        out.push(LinkState::from_message(&m));
    }
    Ok(out)
}

pub(super) async fn get_link(h: &Handle, name: &str) -> Result<Option<LinkState>> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m.as_ref().map(LinkState::from_message)),
        Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(DataplaneError::netlink(format!("looking up {name}"), e)),
    }
}

async fn get_link_by_index(h: &Handle, index: u32) -> Result<Option<LinkState>> {
    match h.link().get().match_index(index).execute().try_next().await {
        Ok(m) => Ok(m.as_ref().map(LinkState::from_message)),
        Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(DataplaneError::netlink(
            format!("looking up link {index}"),
            e,
        )),
    }
}

pub(super) async fn require_link(h: &Handle, name: &str) -> Result<LinkState> {
    get_link(h, name)
        .await?
        .ok_or_else(|| DataplaneError::Netlink {
            op: format!("looking up {name}"),
            msg: "no such device".into(),
            errno: Some(libc::ENODEV),
        })
}

pub(super) async fn add_link(h: &Handle, msg: LinkMessage, op: &str) -> Result<()> {
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(|e| DataplaneError::netlink(op, e))
}

pub(super) async fn set_link(h: &Handle, msg: LinkMessage, op: &str) -> Result<()> {
    h.link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| DataplaneError::netlink(op, e))
}

pub(super) async fn del_link(h: &Handle, index: u32, name: &str) -> Result<()> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(DataplaneError::netlink(format!("deleting {name}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::InfoKind;

    #[test]
    fn veth_message_carries_peer_in_workload() {
        let ep = EndpointSpec {
            host_ifname: "ve0a000002".into(),
            ifname: "eth0".into(),
            mac: "02:52:0a:00:00:02".parse().unwrap(),
            address: "10.0.0.2/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            mtu: 1450,
        };
        let ns = NetNs::of_pid(std::process::id()).unwrap();
        let msg = veth_message(&ep, 7, &ns);
        assert!(msg.attributes.contains(&LinkAttribute::Controller(7)));
        assert!(msg.attributes.contains(&LinkAttribute::Mtu(1450)));
        let peer = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(i) => i.iter().find_map(|x| match x {
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p.clone()),
                _ => None,
            }),
            _ => None,
        });
        let peer = peer.expect("peer info");
        assert!(peer
            .attributes
            .contains(&LinkAttribute::IfName("eth0".into())));
        assert!(peer
            .attributes
            .contains(&LinkAttribute::Address(ep.mac.0.to_vec())));
    }

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
