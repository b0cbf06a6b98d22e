//! The rtnetlink dataplane of one host: [`Netlink`] and its connections.
//!
//! One netlink connection per namespace, kept for the daemon's life (sandboxes) or for one
//! operation (workload namespaces). What `Netlink` does is spread by object: the host's
//! underlay and the peer tables here, sandboxes in `sandbox`, endpoints in `endpoint`, the
//! tunnel namespace's device in `tunnel`, uplinks in `uplink`; every request goes through
//! `request`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use netlink_sys::Socket;
use rtnetlink::{Handle, RouteMessageBuilder};

use super::request::{self, get_link, get_link_by_index};
use super::spec::BRIDGE;
use super::tables;
use crate::netns::{self, NetNs};
use crate::peers::{TableDiff, Tables};

// The paths these had when they all lived here.
pub use super::endpoint::delete_link_blocking;
pub use super::error::DataplaneError;
pub use super::request::connect;
pub use super::spec::advmss;
pub use super::state::{LinkState, SandboxState, Underlay, WorkloadLink};

type Result<T> = std::result::Result<T, DataplaneError>;

/// The rtnetlink dataplane of one host.
pub struct Netlink {
    pub(super) host: Handle,
    /// The host namespace itself, to ask a sandbox which id it knows it by.
    pub(super) host_ns: NetNs,
    sandboxes: Mutex<HashMap<PathBuf, Handle>>,
    /// Per sandbox, a raw socket for batched peer-table writes.
    batch: Mutex<HashMap<PathBuf, Arc<Mutex<Socket>>>>,
    /// Per sandbox, its bridge's interface index, as last looked up: an attach uses it
    /// without asking, and looks again if the kernel refuses it (the bridge was rebuilt).
    bridges: Mutex<HashMap<PathBuf, u32>>,
}

impl Netlink {
    /// Connect in the calling thread's namespace: the host namespace. Needs a tokio runtime.
    pub fn new() -> Result<Netlink> {
        Ok(Netlink {
            host: connect(None)?,
            host_ns: NetNs::open(Path::new("/proc/thread-self/ns/net"))?,
            sandboxes: Mutex::new(HashMap::new()),
            batch: Mutex::new(HashMap::new()),
            bridges: Mutex::new(HashMap::new()),
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

    /// Drop the cached netlink connection and batch socket of a sandbox.
    pub fn forget_sandbox(&self, path: &Path) {
        self.sandboxes
            .lock()
            .expect("sandbox map poisoned")
            .remove(path);
        self.batch.lock().expect("batch map poisoned").remove(path);
        self.forget_bridge(path);
    }

    /// The interface index of a sandbox's bridge, and whether it was noted earlier rather
    /// than looked up now.
    pub(super) async fn bridge_index(&self, path: &Path) -> Result<(u32, bool)> {
        if let Some(&index) = self.bridges.lock().expect("bridge map poisoned").get(path) {
            return Ok((index, true));
        }
        let bridge = request::require_link(&self.sandbox(path)?, BRIDGE).await?;
        self.bridges
            .lock()
            .expect("bridge map poisoned")
            .insert(path.to_path_buf(), bridge.index);
        Ok((bridge.index, false))
    }

    /// Forget the noted index of a sandbox's bridge.
    pub(super) fn forget_bridge(&self, path: &Path) {
        self.bridges
            .lock()
            .expect("bridge map poisoned")
            .remove(path);
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
            .run(|| request::open_socket(Some(request::RECV_TIMEOUT)))?
            .map_err(DataplaneError::Socket)?;
        let sock = Arc::new(Mutex::new(sock));
        map.insert(sandbox.to_path_buf(), sock.clone());
        Ok(sock)
    }
}
