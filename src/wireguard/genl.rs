//! Kernel WireGuard's generic-netlink API: a blocking request/reply loop over one
//! NETLINK_GENERIC socket (the messages themselves come from `netlink-packet-wireguard`).
//!
//! Blocking is fine here: every request is answered by the kernel at once, and the callers
//! (`set_peers`, the status poll) are synchronous already.

use std::fmt::Debug;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlMessage};
use netlink_packet_wireguard::{WireguardCmd, WireguardMessage};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

/// A failed request: the kernel's errno (when it gave one) and what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct GenlError {
    pub what: String,
    #[source]
    pub source: std::io::Error,
}

impl GenlError {
    fn new(what: &str, source: std::io::Error) -> GenlError {
        GenlError {
            what: what.to_string(),
            source,
        }
    }

    /// The kernel's errno, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// A socket talking to the kernel's `wireguard` family, in the namespace it was opened in
/// (devices are found by name there).
pub struct WgSocket {
    socket: Socket,
    family: u16,
    seq: u32,
}

impl WgSocket {
    /// Open a socket in the calling thread's namespace and resolve the `wireguard` family.
    /// Resolving it makes the kernel load the module when it is installed but not loaded
    /// (genetlink's own module alias); ENOENT means the kernel has no WireGuard at all.
    pub fn open() -> Result<WgSocket, GenlError> {
        let mut socket = Socket::new(NETLINK_GENERIC)
            .map_err(|e| GenlError::new("opening a generic netlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| GenlError::new("binding a generic netlink socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| GenlError::new("connecting a generic netlink socket", e))?;
        let mut me = WgSocket {
            socket,
            family: 0,
            seq: 0,
        };
        let query = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(
                WireguardMessage::family_name().to_string(),
            )],
        });
        let replies = me.request(
            query,
            NLM_F_REQUEST | NLM_F_ACK,
            "finding the wireguard family",
        )?;
        me.family = replies
            .iter()
            .flat_map(|r| r.payload.nlas.iter())
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| {
                GenlError::new(
                    "finding the wireguard family",
                    std::io::Error::other("the kernel's answer holds no family id"),
                )
            })?;
        Ok(me)
    }

    /// The device's configuration and peers (GET_DEVICE, a dump: large peer lists come in
    /// several messages, each repeating the device attributes).
    pub fn get_device(&mut self, ifname: &str) -> Result<Vec<WireguardMessage>, GenlError> {
        let mut msg = GenlMessage::from_payload(WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![netlink_packet_wireguard::WireguardAttribute::IfName(
                ifname.to_string(),
            )],
        });
        msg.set_resolved_family_id(self.family);
        let what = format!("reading WireGuard device {ifname}");
        let replies = self.request(msg, NLM_F_REQUEST | NLM_F_DUMP, &what)?;
        Ok(replies.into_iter().map(|m| m.payload).collect())
    }

    /// One SET_DEVICE request, acknowledged.
    pub fn set_device(&mut self, msg: WireguardMessage, what: &str) -> Result<(), GenlError> {
        let mut msg = GenlMessage::from_payload(msg);
        msg.set_resolved_family_id(self.family);
        self.request(msg, NLM_F_REQUEST | NLM_F_ACK, what)?;
        Ok(())
    }

    fn request<F>(
        &mut self,
        msg: GenlMessage<F>,
        flags: u16,
        what: &str,
    ) -> Result<Vec<GenlMessage<F>>, GenlError>
    where
        F: GenlFamily + Clone + Debug + PartialEq + Eq,
        GenlMessage<F>: NetlinkSerializable + NetlinkDeserializable,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|e| GenlError::new(what, e))?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self
                .socket
                .recv_from_full()
                .map_err(|e| GenlError::new(what, e))?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<GenlMessage<F>>::deserialize(&data[offset..])
                    .map_err(|e| GenlError::new(what, std::io::Error::other(e.to_string())))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(GenlError::new(
                        what,
                        std::io::Error::other("a netlink message of length 0"),
                    ));
                }
                offset += len;
                if reply.header.sequence_number != self.seq {
                    continue; // an answer to an earlier, abandoned request
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if reply.header.flags & netlink_packet_core::NLM_F_MULTIPART == 0
                            && flags & NLM_F_ACK == 0
                        {
                            return Ok(out);
                        }
                    }
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(out),
                        Some(_) => return Err(GenlError::new(what, e.to_io())),
                    },
                    NetlinkPayload::Done(_) => return Ok(out),
                    _ => {}
                }
            }
        }
    }
}
