//! The TUN device: opened inside the tunnel namespace (a TUN belongs to the namespace of the
//! thread that creates it), then read and written from any thread through its descriptor.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::offload::{
    parse_vnet_header, Gso, VnetHeader, VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR_TUNNEL,
};
use super::WgError;
use crate::checksum::{fold, internet_checksum, ones_sum};
use crate::netns::NetNs;

// `libc::Ioctl`: the request's type differs between glibc (c_ulong) and musl (c_int).
const TUNSETIFF: libc::Ioctl = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// The virtio-net header in front of every packet of an IFF_VNET_HDR device, without and
/// with the UDP tunnel fields (what the device uses once segmentation offloads are on).
const VNET_HDR: usize = 10;
const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
const TUNSETOFFLOAD: libc::Ioctl = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::Ioctl = 0x4004_54d8;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
/// TSO inside UDP tunnels (Linux 6.17).
const TUN_F_UDP_TUNNEL_GSO: libc::c_uint = 0x80;
/// Largest IPv4 packet.
pub const MAX_PACKET: usize = 65535;
/// Most datagrams written as one (the kernel's UDP_MAX_SEGMENTS is at least 64).
const MAX_SEGMENTS: usize = 64;
const IPV4_UDP_HDR: usize = 28;

/// An open TUN device (IFF_TUN, no packet-info header): one IP packet per read or write,
/// behind a virtio-net header where the kernel offers it, which lets [`TunWriter`] hand the
/// kernel many UDP datagrams as one, and where the kernel can (`tso`), lets it hand over
/// TCP super-packets inside VXLAN uncut (see `offload`).
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    pub name: String,
    /// Bytes of virtio-net header on each packet: 0 (none), 10, or 24 with `tso`.
    vnet: usize,
    tso: bool,
}

/// One packet read from the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunRead {
    /// A wire-sized packet of this many bytes.
    Packet(usize),
    /// A TCP super-packet of this many bytes, to be cut as `Gso` says.
    Segments(usize, Gso),
    /// A packet this reader cannot take (a header it never asked for, offsets past the
    /// end): dropped.
    Refused,
}

impl Tun {
    /// Create TUN device `name` inside `netns`, with segmentation offloads unless `plain`.
    /// Fails with a clear message where there is no /dev/net/tun or the kernel refuses.
    pub fn create(netns: &NetNs, name: &str, plain: bool) -> Result<Tun, WgError> {
        if name.len() >= libc::IFNAMSIZ {
            return Err(WgError::Tun(format!("interface name {name:?} is too long")));
        }
        let owned = name.to_string();
        let (fd, vnet) = netns
            .run(move || match open_tun(&owned, true) {
                Ok(fd) => Ok((fd, VNET_HDR)),
                Err(_) => open_tun(&owned, false).map(|fd| (fd, 0)),
            })
            .map_err(|e| WgError::Tun(format!("entering the tunnel namespace: {e}")))??;
        let mut tun = Tun {
            fd,
            name: name.to_string(),
            vnet,
            tso: false,
        };
        if vnet > 0 && !plain {
            match tun.enable_tso() {
                Ok(()) => tracing::info!(
                    "{name}: TCP segmentation offload inside UDP tunnels on (super-packets cut here)"
                ),
                Err(e) => tracing::info!(
                    "{name}: no TCP segmentation offload inside UDP tunnels ({e}); packets are cut by the kernel"
                ),
            }
        }
        Ok(tun)
    }

    /// Ask the kernel for TCP super-packets, bare or inside VXLAN, and for checksums left to
    /// "hardware" (both finished in `read`): kernels before 6.17 refuse the tunnel flag.
    fn enable_tso(&mut self) -> std::io::Result<()> {
        let fd = self.fd.as_raw_fd();
        let size = VNET_HDR_TUNNEL as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer; the fd is ours.
        if unsafe { libc::ioctl(fd, TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let flags = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_UDP_TUNNEL_GSO;
        // SAFETY: TUNSETOFFLOAD takes the flags by value; the fd is ours.
        if unsafe { libc::ioctl(fd, TUNSETOFFLOAD, flags as libc::c_ulong) } < 0 {
            let e = std::io::Error::last_os_error();
            let short = VNET_HDR as libc::c_int;
            // SAFETY: as above.
            unsafe { libc::ioctl(fd, TUNSETVNETHDRSZ, &short) };
            return Err(e);
        }
        self.vnet = VNET_HDR_TUNNEL;
        self.tso = true;
        Ok(())
    }

    /// Whether the kernel hands over TCP super-packets (`TunRead::Segments`).
    pub fn tso(&self) -> bool {
        self.tso
    }

    /// Read one packet into `buf` (at least [`MAX_PACKET`] bytes with offloads on);
    /// `Ok(None)` when none is waiting. A packet the device hands over with its checksum
    /// left to "hardware" is finished here.
    pub fn read(&self, buf: &mut [u8]) -> std::io::Result<Option<TunRead>> {
        let mut hdr = [0u8; VNET_HDR_TUNNEL];
        let n = if self.vnet > 0 {
            let iov = [
                libc::iovec {
                    iov_base: hdr.as_mut_ptr().cast(),
                    iov_len: self.vnet,
                },
                libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                },
            ];
            // SAFETY: both iovecs describe writable buffers alive for the call; the fd is ours.
            unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), 2) }
        } else {
            // SAFETY: buf is valid for writes of buf.len() bytes; the fd is ours.
            unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
                _ => Err(e),
            };
        }
        if self.vnet == 0 {
            return Ok(Some(TunRead::Packet(n as usize)));
        }
        let len = (n as usize).saturating_sub(self.vnet);
        Ok(Some(match parse_vnet_header(&hdr[..self.vnet]) {
            VnetHeader::Plain => TunRead::Packet(len),
            VnetHeader::Checksum { start, offset } => {
                let at = start + offset;
                if start > len || at + 2 > len {
                    TunRead::Refused
                } else {
                    let sum = internet_checksum(&buf[start..len]);
                    buf[at..at + 2].copy_from_slice(&sum.to_be_bytes());
                    TunRead::Packet(len)
                }
            }
            VnetHeader::Segment(gso) => TunRead::Segments(len, gso),
            VnetHeader::Unsupported => TunRead::Refused,
        }))
    }

    /// Write one packet into the kernel (it is received as if it arrived on the device).
    pub fn write(&self, packet: &[u8]) -> std::io::Result<()> {
        self.write_with(&[0u8; VNET_HDR_TUNNEL], packet)
    }

    /// Write `packet` behind `hdr`, of which the device takes its header's size (the tunnel
    /// fields stay zero: nothing written here is tunnel GSO).
    fn write_with(&self, hdr: &[u8; VNET_HDR_TUNNEL], packet: &[u8]) -> std::io::Result<()> {
        let n = if self.vnet > 0 {
            let iov = [
                libc::iovec {
                    iov_base: hdr.as_ptr() as *mut libc::c_void,
                    iov_len: self.vnet,
                },
                libc::iovec {
                    iov_base: packet.as_ptr() as *mut libc::c_void,
                    iov_len: packet.len(),
                },
            ];
            // SAFETY: both iovecs describe buffers alive for the call, which only reads
            // them; the fd is ours.
            unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) }
        } else {
            // SAFETY: packet is valid for reads of its length; the fd is ours.
            unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) }
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Block until a packet is waiting (or `timeout_ms` passes).
    pub fn wait_readable(&self, timeout_ms: i32) {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Gathers consecutive IPv4 UDP packets of one flow (same addresses, ports, TOS and TTL;
/// equal payload sizes except a shorter last) into one packet that the kernel splits again
/// right after the device (UDP GSO through the virtio-net header): one write and one pass
/// through the IP layer for up to 64 datagrams, and the VXLAN device behind sees them
/// together, so its GRO can merge the inner packets. Anything else is written as it is.
pub struct TunWriter {
    buf: Box<[u8]>,
    /// Bytes of the pending packet (0: none).
    len: usize,
    /// UDP payload size of each gathered datagram.
    seg: usize,
    segs: usize,
    /// The kernel refused a gathered write: no more gathering.
    refused: bool,
}

impl Default for TunWriter {
    fn default() -> Self {
        TunWriter {
            buf: vec![0u8; MAX_PACKET].into_boxed_slice(),
            len: 0,
            seg: 0,
            segs: 0,
            refused: false,
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
    /// ends.
    pub fn push(&mut self, tun: &Tun, packet: &[u8]) -> std::io::Result<()> {
        if tun.vnet == 0 || self.refused {
            return tun.write(packet);
        }
        let Some(payload) = udp_payload(packet) else {
            // A failed flush loses the gathered datagrams, never this packet.
            let _ = self.flush(tun);
            return tun.write(packet);
        };
        if self.len > 0 && self.fits(packet, payload) {
            self.buf[self.len..self.len + payload].copy_from_slice(&packet[IPV4_UDP_HDR..]);
            self.len += payload;
            self.segs += 1;
            if payload < self.seg || self.segs == MAX_SEGMENTS {
                return self.flush(tun);
            }
            return Ok(());
        }
        let _ = self.flush(tun);
        self.buf[..packet.len()].copy_from_slice(packet);
        self.len = packet.len();
        self.seg = payload;
        self.segs = 1;
        Ok(())
    }

    /// Whether `packet` (with `payload` UDP bytes) may join the pending one.
    fn fits(&self, packet: &[u8], payload: usize) -> bool {
        let p = &self.buf[..IPV4_UDP_HDR];
        payload <= self.seg
            && self.len + payload <= MAX_PACKET
            && packet[1] == p[1]
            && packet[6] & 0x40 == p[6] & 0x40
            && packet[8] == p[8]
            && packet[12..24] == p[12..24]
    }

    /// Write what is pending.
    pub fn flush(&mut self, tun: &Tun) -> std::io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let len = std::mem::take(&mut self.len);
        let packet = &mut self.buf[..len];
        if self.segs == 1 {
            return tun.write(packet);
        }
        let hdr = gso_header(packet, self.seg);
        let written = tun.write_with(&hdr, packet);
        if written
            .as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL))
        {
            // A kernel without UDP GSO on TUN writes (before Linux 6.2): one by one from now on.
            tracing::warn!(
                "the kernel refuses UDP GSO writes to {}; writing datagrams one by one",
                tun.name
            );
            self.refused = true;
        }
        written
    }
}

/// Make the gathered `packet` (header of the first datagram, payloads of all) one UDP GSO
/// packet of `seg`-byte datagrams: fix the lengths and the IP checksum, leave the UDP
/// checksum to the kernel, and return its virtio-net header.
fn gso_header(packet: &mut [u8], seg: usize) -> [u8; VNET_HDR_TUNNEL] {
    let len = packet.len();
    packet[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    packet[10..12].copy_from_slice(&[0, 0]);
    let ip = internet_checksum(&packet[..20]);
    packet[10..12].copy_from_slice(&ip.to_be_bytes());
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
    hdr[2..4].copy_from_slice(&(IPV4_UDP_HDR as u16).to_ne_bytes());
    hdr[4..6].copy_from_slice(&(seg as u16).to_ne_bytes());
    hdr[6..8].copy_from_slice(&20u16.to_ne_bytes());
    hdr[8..10].copy_from_slice(&6u16.to_ne_bytes());
    hdr
}

fn open_tun(name: &str, vnet: bool) -> Result<OwnedFd, WgError> {
    let path = c"/dev/net/tun";
    // SAFETY: a valid C string; the result is checked.
    let raw = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        let e = std::io::Error::last_os_error();
        return Err(WgError::Tun(format!(
            "opening /dev/net/tun: {e} (the encrypted overlay needs the kernel's TUN driver)"
        )));
    }
    // SAFETY: raw is a descriptor we just opened and now own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI | if vnet { libc::IFF_VNET_HDR } else { 0 })
            as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF takes a pointer to an ifreq-shaped struct, which IfReq is.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        let e = std::io::Error::last_os_error();
        return Err(WgError::Tun(format!("creating TUN device {name}: {e}")));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 UDP packet 10.0.0.1:4789 → 10.0.0.2:4789 with `payload` bytes of `fill`.
    fn udp(payload: usize, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; IPV4_UDP_HDR + payload];
        p[..20].copy_from_slice(&[
            0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        p[2..4].copy_from_slice(&((IPV4_UDP_HDR + payload) as u16).to_be_bytes());
        p[20..24].copy_from_slice(&[0x12, 0xb5, 0x12, 0xb5]);
        p[24..26].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        p[26..28].copy_from_slice(&[0, 0]);
        p
    }

    #[test]
    fn only_plain_ipv4_udp_packets_are_gathered() {
        assert_eq!(udp_payload(&udp(100, 0)), Some(100));
        let mut opts = udp(100, 0);
        opts[0] = 0x46;
        assert_eq!(udp_payload(&opts), None);
        let mut frag = udp(100, 0);
        frag[6] = 0x20;
        assert_eq!(udp_payload(&frag), None);
        let mut tcp = udp(100, 0);
        tcp[9] = 6;
        assert_eq!(udp_payload(&tcp), None);
        let mut short = udp(100, 0);
        short.truncate(100);
        assert_eq!(udp_payload(&short), None);
    }

    #[test]
    fn a_gathered_packet_carries_the_datagrams_and_a_gso_header() {
        let mut w = TunWriter::default();
        for (i, n) in [(1u8, 100usize), (2, 100), (3, 40)] {
            let p = udp(n, i);
            if w.len == 0 {
                w.buf[..p.len()].copy_from_slice(&p);
                w.len = p.len();
                w.seg = n;
                w.segs = 1;
            } else {
                assert!(w.fits(&p, n));
                w.buf[w.len..w.len + n].copy_from_slice(&p[IPV4_UDP_HDR..]);
                w.len += n;
                w.segs += 1;
            }
        }
        let mut other = udp(100, 9);
        other[23] = 0x99;
        assert!(!w.fits(&other, 100));
        assert!(!w.fits(&udp(120, 9), 120));
        let len = w.len;
        let hdr = gso_header(&mut w.buf[..len], 100);
        let p = &w.buf[..len];
        assert_eq!(len, IPV4_UDP_HDR + 240);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, len);
        assert_eq!(fold(ones_sum(&p[..20], 0)), 0xffff);
        assert_eq!(u16::from_be_bytes([p[24], p[25]]) as usize, len - 20);
        assert_eq!(&p[28..128], &[1u8; 100][..]);
        assert_eq!(&p[228..268], &[3u8; 40][..]);
        assert_eq!(hdr[1], VIRTIO_NET_HDR_GSO_UDP_L4);
        assert_eq!(u16::from_ne_bytes([hdr[4], hdr[5]]), 100);
        // The UDP checksum field holds the folded pseudo-header sum.
        let pseudo = fold(ones_sum(&p[12..20], 17 + (len as u32 - 20)));
        assert_eq!(u16::from_be_bytes([p[26], p[27]]), pseudo);
    }
}
