//! The tunnel device: a TAP device opened inside the tunnel namespace (it belongs to the
//! namespace of the thread that creates it), then read and written from any thread through
//! its descriptor. It carries IPv4 packets behind an Ethernet header this module adds and
//! strips: an Ethernet device is what lets the kernel take TCP super-packets inside UDP
//! tunnels on writes (its virtio-net header check wants the outer headers behind an Ethernet
//! header), and with `IFF_NOARP` it needs no neighbour resolution.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::gather::{shift_offsets, Device};
use super::offload::{parse_vnet_header, Gso, VnetHeader, VNET_HDR_TUNNEL};
use super::WgError;
use crate::checksum::internet_checksum;
use crate::netns::NetNs;

// `libc::Ioctl`: the request's type differs between glibc (c_ulong) and musl (c_int).
const TUNSETIFF: libc::Ioctl = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// The virtio-net header in front of every packet of an IFF_VNET_HDR device, without the
/// UDP tunnel fields (before offloads are on).
const VNET_HDR: usize = 10;
const TUNSETOFFLOAD: libc::Ioctl = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::Ioctl = 0x4004_54d8;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
/// TSO inside UDP tunnels (Linux 6.17).
const TUN_F_UDP_TUNNEL_GSO: libc::c_uint = 0x80;
/// Largest IPv4 packet.
pub const MAX_PACKET: usize = 65535;
/// The Ethernet header in front of each packet on the device.
const ETH_HLEN: usize = 14;
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
/// The source address of the frames written to the device (locally administered); their
/// destination is the device's own address, so the kernel takes them as its own.
const PEER_MAC: [u8; 6] = [0x02, 0x72, 0x6e, 0x65, 0x74, 0x01];

/// An open tunnel device (IFF_TAP, no packet-info header): one IPv4 packet per read or
/// write, behind a virtio-net header where the kernel offers it, which lets `gather` hand
/// the kernel many packets as one, and where the kernel can (`tso`), lets it hand over TCP
/// super-packets inside VXLAN uncut (see `offload`) and take merged ones.
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    pub name: String,
    /// Bytes of virtio-net header on each packet: 0 (none), 10, or 24 with `tso`.
    vnet: usize,
    tso: bool,
    /// The Ethernet header of every frame written: to the device's address, from `PEER_MAC`.
    eth: [u8; ETH_HLEN],
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
    /// A frame that is not IPv4 (the kernel's own IPv6 chatter on the device): ignored.
    NotIpv4,
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
        let mac = hardware_address(&fd)
            .map_err(|e| WgError::Tun(format!("reading {name}'s hardware address: {e}")))?;
        let mut eth = [0u8; ETH_HLEN];
        eth[..6].copy_from_slice(&mac);
        eth[6..12].copy_from_slice(&PEER_MAC);
        eth[12..].copy_from_slice(&ETH_P_IP);
        let mut tun = Tun {
            fd,
            name: name.to_string(),
            vnet,
            tso: false,
            eth,
        };
        if vnet > 0 && !plain {
            match tun.enable_tso() {
                Ok(()) => tracing::info!(
                    "{name}: TCP segmentation offload inside UDP tunnels on (super-packets cut on reads, merged on writes)"
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

    /// Read one packet into `buf` (at least [`MAX_PACKET`] bytes with offloads on);
    /// `Ok(None)` when none is waiting. A packet the device hands over with its checksum
    /// left to "hardware" is finished here.
    pub fn read(&self, buf: &mut [u8]) -> std::io::Result<Option<TunRead>> {
        let mut hdr = [0u8; VNET_HDR_TUNNEL];
        let mut eth = [0u8; ETH_HLEN];
        let iov = [
            libc::iovec {
                iov_base: hdr.as_mut_ptr().cast(),
                iov_len: self.vnet,
            },
            libc::iovec {
                iov_base: eth.as_mut_ptr().cast(),
                iov_len: ETH_HLEN,
            },
            libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            },
        ];
        let skip = usize::from(self.vnet == 0);
        // SAFETY: the iovecs describe writable buffers alive for the call; the fd is ours.
        let n = unsafe { libc::readv(self.fd.as_raw_fd(), iov[skip..].as_ptr(), 3 - skip as i32) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
                _ => Err(e),
            };
        }
        let Some(len) = (n as usize).checked_sub(self.vnet + ETH_HLEN) else {
            return Ok(Some(TunRead::Refused));
        };
        if eth[12..] != ETH_P_IP {
            return Ok(Some(TunRead::NotIpv4));
        }
        if self.vnet == 0 {
            return Ok(Some(TunRead::Packet(len)));
        }
        // The header's offsets count from the frame's start, the Ethernet header included.
        let from_ip = |at: usize| at.checked_sub(ETH_HLEN);
        Ok(Some(match parse_vnet_header(&hdr[..self.vnet]) {
            VnetHeader::Plain => TunRead::Packet(len),
            VnetHeader::Checksum { start, offset } => match from_ip(start) {
                Some(start) if start <= len && start + offset + 2 <= len => {
                    let at = start + offset;
                    let sum = internet_checksum(&buf[start..len]);
                    buf[at..at + 2].copy_from_slice(&sum.to_be_bytes());
                    TunRead::Packet(len)
                }
                _ => TunRead::Refused,
            },
            // Bare TCP: the IP header is the packet's start (`inner_ip` 0, not an offset).
            VnetHeader::Segment(
                gso @ Gso {
                    outer_udp: None, ..
                },
            ) => TunRead::Segments(len, gso),
            VnetHeader::Segment(gso) => {
                match (gso.outer_udp.and_then(from_ip), from_ip(gso.inner_ip)) {
                    (Some(outer_udp), Some(inner_ip)) => TunRead::Segments(
                        len,
                        Gso {
                            inner_ip,
                            outer_udp: Some(outer_udp),
                            ..gso
                        },
                    ),
                    _ => TunRead::Refused,
                }
            }
            VnetHeader::Unsupported => TunRead::Refused,
        }))
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

impl Device for Tun {
    fn gso(&self) -> bool {
        self.vnet > 0
    }

    /// Whether the kernel hands over TCP super-packets (`TunRead::Segments`) and takes
    /// merged ones inside VXLAN.
    fn tso(&self) -> bool {
        self.tso
    }

    /// The kernel receives `packet` as if it arrived on the device, behind the Ethernet
    /// header and `hdr`, whose offsets move by the Ethernet header's length.
    fn write_with(&self, hdr: &[u8; VNET_HDR_TUNNEL], packet: &[u8]) -> std::io::Result<()> {
        let mut hdr = *hdr;
        shift_offsets(&mut hdr, ETH_HLEN);
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: self.vnet,
            },
            libc::iovec {
                iov_base: self.eth.as_ptr() as *mut libc::c_void,
                iov_len: ETH_HLEN,
            },
            libc::iovec {
                iov_base: packet.as_ptr() as *mut libc::c_void,
                iov_len: packet.len(),
            },
        ];
        let skip = usize::from(self.vnet == 0);
        // SAFETY: the iovecs describe buffers alive for the call, which only reads them;
        // the fd is ours.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov[skip..].as_ptr(), 3 - skip as i32) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
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
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | if vnet { libc::IFF_VNET_HDR } else { 0 })
            as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF takes a pointer to an ifreq-shaped struct, which IfReq is.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        let e = std::io::Error::last_os_error();
        return Err(WgError::Tun(format!("creating TAP device {name}: {e}")));
    }
    Ok(fd)
}

/// The Ethernet address the kernel gave the device.
fn hardware_address(fd: &OwnedFd) -> std::io::Result<[u8; 6]> {
    // struct ifreq with ifr_hwaddr: the name, then a sockaddr (family, 14 bytes of data).
    let mut req = [0u8; 40];
    // SAFETY: SIOCGIFHWADDR on a TUN/TAP descriptor writes an ifreq (40 bytes) through the
    // pointer; the buffer is that large and the fd is ours.
    if unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::SIOCGIFHWADDR as libc::Ioctl,
            req.as_mut_ptr(),
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&req[libc::IFNAMSIZ + 2..libc::IFNAMSIZ + 8]);
    Ok(mac)
}
