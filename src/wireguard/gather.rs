//! Writing decrypted packets to the tunnel device in as few writes as the kernel allows: the
//! receive side's mirror of `offload::split`.
//!
//! - Consecutive VXLAN packets carrying segments of one TCP/IPv4 flow are merged back into
//!   one super-packet (a virtio-net header of GSO type TCPv4 inside a UDP tunnel), which the
//!   kernel passes up whole: through the VXLAN device, the bridge and the veth to the
//!   workload, one packet where there were up to 48 (as many 1,338-byte segments as fit
//!   64 KB), as a NIC's GRO would have made it.
//! - Other consecutive UDP packets of one flow are gathered into one UDP GSO packet, which the
//!   kernel cuts again right after the device: one write and one pass through the IP layer.
//! - Anything else is written as it is.
//!
//! Peers are authenticated, but their packets are checked as the kernel's GRO would check
//! them before anything is merged: only plain segments (ACK, PSH on the last) of one flow,
//! with identical headers, in order, each with right IPv4 and TCP checksums (the merged
//! packet goes up with its checksum marked as still to be computed, which the kernel
//! trusts); a packet that fails any check is written on its own, untouched.

use super::offload::{
    set_ipv4_length, TCP_PSH, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4, VNET_HDR_TUNNEL,
};
use super::tun::MAX_PACKET;
use crate::checksum::{fold, internet_checksum, ones_sum};
use crate::model::VXLAN_PORT;

const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// Most datagrams or segments written as one (the kernel's UDP_MAX_SEGMENTS and its GRO's
/// limit are both at least 64).
const MAX_SEGMENTS: usize = 64;
const IPV4_UDP_HDR: usize = 28;

/// Where the headers of a TCP segment inside VXLAN start: outer IPv4 (no options), UDP,
/// VXLAN, Ethernet, inner IPv4 (no options), TCP.
const OUTER_UDP: usize = 20;
const VXLAN_HDR: usize = 28;
const INNER_ETH: usize = 36;
const INNER_IP: usize = 50;
const TCP: usize = 70;

const TCP_ACK: u8 = 0x10;

/// A TCP segment inside VXLAN that may be merged with its neighbours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    /// Where the TCP payload starts (the end of all headers).
    payload: usize,
    seq: u32,
    psh: bool,
}

impl Segment {
    /// `p` as a mergeable segment: IPv4 without options or fragments (right header
    /// checksum), UDP to the VXLAN port without a checksum, VXLAN (the I flag alone),
    /// Ethernet without VLAN, IPv4 without options or fragments (right header checksum), TCP
    /// with ACK and at most PSH besides, a payload, and a right TCP checksum.
    fn parse(p: &[u8]) -> Option<Segment> {
        if p.len() <= TCP + 20 || p.len() > MAX_PACKET {
            return None;
        }
        let word = |at: usize| usize::from(u16::from_be_bytes([p[at], p[at + 1]]));
        let outer = p[0] == 0x45
            && word(6) & 0x3fff == 0
            && p[9] == libc::IPPROTO_UDP as u8
            && word(2) == p.len()
            && word(OUTER_UDP + 2) == usize::from(VXLAN_PORT)
            && word(OUTER_UDP + 4) == p.len() - OUTER_UDP
            && word(OUTER_UDP + 6) == 0
            && internet_checksum(&p[..OUTER_UDP]) == 0;
        let vxlan = p[VXLAN_HDR..VXLAN_HDR + 4] == [0x08, 0, 0, 0] && p[VXLAN_HDR + 7] == 0;
        let inner = word(INNER_ETH + 12) == 0x0800
            && p[INNER_IP] == 0x45
            && word(INNER_IP + 6) & 0x3fff == 0
            && p[INNER_IP + 9] == libc::IPPROTO_TCP as u8
            && word(INNER_IP + 2) == p.len() - INNER_IP
            && internet_checksum(&p[INNER_IP..TCP]) == 0;
        if !(outer && vxlan && inner) {
            return None;
        }
        let payload = TCP + usize::from(p[TCP + 12] >> 4) * 4;
        let flags = p[TCP + 13];
        if payload < TCP + 20 || payload >= p.len() || flags & !TCP_PSH != TCP_ACK {
            return None;
        }
        let pseudo = ones_sum(
            &p[INNER_IP + 12..TCP],
            u32::from(libc::IPPROTO_TCP as u16) + (p.len() - TCP) as u32,
        );
        if fold(ones_sum(&p[TCP..], pseudo)) != 0xffff {
            return None;
        }
        Some(Segment {
            payload,
            seq: u32::from_be_bytes([p[TCP + 4], p[TCP + 5], p[TCP + 6], p[TCP + 7]]),
            psh: flags & TCP_PSH != 0,
        })
    }
}

/// Whether segment `p` has the same flow and headers as `first` (the pending packet's
/// headers, `head` bytes): everything but the lengths, IPv4 ids and checksums, the sequence
/// number and PSH.
fn same_headers(first: &[u8], p: &[u8], head: usize) -> bool {
    let same = |a: usize, b: usize| first[a..b] == p[a..b];
    same(0, 2)
        && same(6, 10)
        && same(12, OUTER_UDP + 4)
        && same(VXLAN_HDR, INNER_IP + 2)
        && same(INNER_IP + 6, INNER_IP + 10)
        && same(INNER_IP + 12, TCP + 4)
        && same(TCP + 8, TCP + 13)
        && same(TCP + 14, TCP + 16)
        && same(TCP + 18, head)
}

/// Where the gathered packets go: the tunnel device (`tun::Tun`), or a recorder in tests.
pub trait Device {
    /// Whether the device takes a virtio-net header (UDP GSO writes).
    fn gso(&self) -> bool;
    /// Whether it takes TCP super-packets inside VXLAN.
    fn tso(&self) -> bool;
    /// Write `packet` behind `hdr` (offsets from the IP header).
    fn write_with(&self, hdr: &[u8; VNET_HDR_TUNNEL], packet: &[u8]) -> std::io::Result<()>;
    /// For the log.
    fn name(&self) -> &str;

    /// Write one packet as it is.
    fn write(&self, packet: &[u8]) -> std::io::Result<()> {
        self.write_with(&[0u8; VNET_HDR_TUNNEL], packet)
    }
}

/// What the pending packet is gathering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    None,
    /// UDP datagrams of `seg` payload bytes each (the last may be shorter).
    Udp {
        seg: usize,
    },
    /// TCP segments inside VXLAN of `seg` payload bytes each, headers `head` bytes long,
    /// the next expected at sequence number `next`.
    Tcp {
        seg: usize,
        head: usize,
        next: u32,
    },
}

/// Gathers the packets of a batch into as few writes as it can (see the module's text).
pub struct TunWriter {
    buf: Box<[u8]>,
    /// Bytes of the pending packet.
    len: usize,
    pending: Pending,
    /// Datagrams or segments in the pending packet.
    segs: usize,
    /// The kernel refused a UDP GSO write: no more gathering of datagrams.
    udp_refused: bool,
    /// The kernel refused a merged TCP write: no more merging.
    tcp_refused: bool,
    /// Merged TCP packets written (for the status).
    pub merged: u64,
}

impl Default for TunWriter {
    fn default() -> Self {
        TunWriter {
            buf: vec![0u8; MAX_PACKET].into_boxed_slice(),
            len: 0,
            pending: Pending::None,
            segs: 0,
            udp_refused: false,
            tcp_refused: false,
            merged: 0,
        }
    }
}

/// The UDP payload size of `p` if it is an IPv4 UDP packet that can be gathered: no
/// options, not a fragment, lengths consistent.
fn udp_payload(p: &[u8]) -> Option<usize> {
    if p.len() <= IPV4_UDP_HDR || p[0] != 0x45 || p[9] != libc::IPPROTO_UDP as u8 {
        return None;
    }
    let frag = u16::from_be_bytes([p[6], p[7]]);
    let total = u16::from_be_bytes([p[2], p[3]]) as usize;
    let udp = u16::from_be_bytes([p[24], p[25]]) as usize;
    if frag & 0x3fff != 0 || total != p.len() || udp != p.len() - 20 {
        return None;
    }
    Some(p.len() - IPV4_UDP_HDR)
}

impl TunWriter {
    /// Write `packet` to `tun`, or keep it to go with the next ones; `flush` when a batch
    /// ends. A failed write loses the gathered packets, never a later one.
    pub fn push(&mut self, tun: &impl Device, packet: &[u8]) -> std::io::Result<()> {
        if !tun.gso() {
            return tun.write(packet);
        }
        if tun.tso() && !self.tcp_refused {
            if let Some(s) = Segment::parse(packet) {
                return self.push_segment(tun, packet, s);
            }
        }
        match udp_payload(packet) {
            Some(payload) if !self.udp_refused => self.push_datagram(tun, packet, payload),
            _ => {
                let _ = self.flush(tun);
                tun.write(packet)
            }
        }
    }

    fn push_segment(
        &mut self,
        tun: &impl Device,
        packet: &[u8],
        s: Segment,
    ) -> std::io::Result<()> {
        let payload = packet.len() - s.payload;
        if let Pending::Tcp { seg, head, next } = self.pending {
            if s.seq == next
                && payload <= seg
                && s.payload == head
                && self.len + payload <= MAX_PACKET
                && same_headers(&self.buf[..head], packet, head)
            {
                self.buf[self.len..self.len + payload].copy_from_slice(&packet[head..]);
                self.len += payload;
                self.segs += 1;
                self.pending = Pending::Tcp {
                    seg,
                    head,
                    next: next.wrapping_add(payload as u32),
                };
                if s.psh {
                    self.buf[TCP + 13] |= TCP_PSH;
                }
                if s.psh || payload < seg || self.segs == MAX_SEGMENTS {
                    return self.flush(tun);
                }
                return Ok(());
            }
        }
        let _ = self.flush(tun);
        if s.psh {
            return tun.write(packet);
        }
        self.start(packet);
        self.pending = Pending::Tcp {
            seg: payload,
            head: s.payload,
            next: s.seq.wrapping_add(payload as u32),
        };
        Ok(())
    }

    fn push_datagram(
        &mut self,
        tun: &impl Device,
        packet: &[u8],
        payload: usize,
    ) -> std::io::Result<()> {
        if let Pending::Udp { seg } = self.pending {
            if self.fits_datagram(packet, payload, seg) {
                self.buf[self.len..self.len + payload].copy_from_slice(&packet[IPV4_UDP_HDR..]);
                self.len += payload;
                self.segs += 1;
                if payload < seg || self.segs == MAX_SEGMENTS {
                    return self.flush(tun);
                }
                return Ok(());
            }
        }
        let _ = self.flush(tun);
        self.start(packet);
        self.pending = Pending::Udp { seg: payload };
        Ok(())
    }

    fn start(&mut self, packet: &[u8]) {
        self.buf[..packet.len()].copy_from_slice(packet);
        self.len = packet.len();
        self.segs = 1;
    }

    /// Whether datagram `packet` (with `payload` UDP bytes) may join the pending ones.
    fn fits_datagram(&self, packet: &[u8], payload: usize, seg: usize) -> bool {
        let p = &self.buf[..IPV4_UDP_HDR];
        payload <= seg
            && self.len + payload <= MAX_PACKET
            && packet[1] == p[1]
            && packet[6] & 0x40 == p[6] & 0x40
            && packet[8] == p[8]
            && packet[12..24] == p[12..24]
    }

    /// Write what is pending.
    pub fn flush(&mut self, tun: &impl Device) -> std::io::Result<()> {
        let pending = std::mem::replace(&mut self.pending, Pending::None);
        let len = std::mem::take(&mut self.len);
        let packet = &mut self.buf[..len];
        let hdr = match pending {
            Pending::None => return Ok(()),
            _ if self.segs == 1 => return tun.write(packet),
            Pending::Udp { seg } => udp_gso_header(packet, seg),
            Pending::Tcp { seg, head, .. } => tcp_tunnel_gso_header(packet, seg, head),
        };
        let written = tun.write_with(&hdr, packet);
        if written
            .as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL))
        {
            // A kernel without these offloads on writes: one by one from now on.
            if matches!(pending, Pending::Udp { .. }) {
                tracing::warn!(
                    "the kernel refuses UDP GSO writes to {}; writing datagrams one by one",
                    tun.name()
                );
                self.udp_refused = true;
            } else {
                tracing::warn!(
                    "the kernel refuses TCP GSO writes inside VXLAN to {}; writing segments one by one",
                    tun.name()
                );
                self.tcp_refused = true;
            }
        } else if written.is_ok() && matches!(pending, Pending::Tcp { .. }) {
            self.merged += 1;
        }
        written
    }
}

/// Make the gathered `packet` (header of the first datagram, payloads of all) one UDP GSO
/// packet of `seg`-byte datagrams: fix the lengths and the IP checksum, leave the UDP
/// checksum to the kernel, and return its virtio-net header (offsets from the IP header;
/// the device adds its link header's).
fn udp_gso_header(packet: &mut [u8], seg: usize) -> [u8; VNET_HDR_TUNNEL] {
    let len = packet.len();
    set_ipv4_length(packet, len);
    let udp_len = (len - 20) as u16;
    packet[24..26].copy_from_slice(&udp_len.to_be_bytes());
    // Checksum left partial: the pseudo-header sum, which the kernel completes per datagram.
    let pseudo = ones_sum(
        &packet[12..20],
        u32::from(libc::IPPROTO_UDP as u16) + u32::from(udp_len),
    );
    packet[26..28].copy_from_slice(&fold(pseudo).to_be_bytes());
    let mut hdr = [0u8; VNET_HDR_TUNNEL];
    hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    hdr[1] = VIRTIO_NET_HDR_GSO_UDP_L4;
    put(&mut hdr, 2, IPV4_UDP_HDR);
    put(&mut hdr, 4, seg);
    put(&mut hdr, 6, 20);
    put(&mut hdr, 8, 6);
    hdr
}

/// Make the merged `packet` (headers of the first segment, `head` bytes, then the payloads
/// of all) one TCP super-packet inside VXLAN of `seg`-byte segments: fix the lengths and
/// IPv4 checksums, leave the TCP checksum partial (the pseudo-header's sum), and return its
/// virtio-net header. The outer UDP checksum stays 0, as the segments had it.
fn tcp_tunnel_gso_header(packet: &mut [u8], seg: usize, head: usize) -> [u8; VNET_HDR_TUNNEL] {
    let len = packet.len();
    set_ipv4_length(packet, len);
    packet[OUTER_UDP + 4..OUTER_UDP + 6].copy_from_slice(&((len - OUTER_UDP) as u16).to_be_bytes());
    set_ipv4_length(&mut packet[INNER_IP..], len - INNER_IP);
    let pseudo = ones_sum(
        &packet[INNER_IP + 12..TCP],
        u32::from(libc::IPPROTO_TCP as u16) + (len - TCP) as u32,
    );
    packet[TCP + 16..TCP + 18].copy_from_slice(&fold(pseudo).to_be_bytes());
    let mut hdr = [0u8; VNET_HDR_TUNNEL];
    hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    hdr[1] = VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4;
    put(&mut hdr, 2, head);
    put(&mut hdr, 4, seg);
    put(&mut hdr, 6, TCP);
    put(&mut hdr, 8, 16);
    put(&mut hdr, 20, OUTER_UDP);
    put(&mut hdr, 22, INNER_IP);
    hdr
}

/// A virtio-net header field (native byte order, as the TUN driver reads a legacy header).
fn put(hdr: &mut [u8; VNET_HDR_TUNNEL], at: usize, value: usize) {
    hdr[at..at + 2].copy_from_slice(&(value as u16).to_ne_bytes());
}

/// The virtio-net header fields that count from the start of the frame, moved by `link`
/// bytes of link-layer header in front of the IP packet.
pub fn shift_offsets(hdr: &mut [u8; VNET_HDR_TUNNEL], link: usize) {
    let flags = hdr[0];
    let gso = hdr[1];
    let mut shift = |at: usize| {
        let v = usize::from(u16::from_ne_bytes([hdr[at], hdr[at + 1]]));
        put(hdr, at, v + link);
    };
    if gso != 0 {
        shift(2);
    }
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        shift(6);
    }
    if gso & VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4 != 0 {
        shift(20);
        shift(22);
    }
}

#[cfg(test)]
mod tests;
