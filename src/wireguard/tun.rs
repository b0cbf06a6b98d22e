//! The TUN device: opened inside the tunnel namespace (a TUN belongs to the namespace of the
//! thread that creates it), then read and written from any thread through its descriptor.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::WgError;
use crate::netns::NetNs;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TUN device (IFF_TUN, no packet-info header): one IP packet per read or write.
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    pub name: String,
}

impl Tun {
    /// Create TUN device `name` inside `netns`. Fails with a clear message where there is
    /// no /dev/net/tun or the kernel refuses.
    pub fn create(netns: &NetNs, name: &str) -> Result<Tun, WgError> {
        if name.len() >= libc::IFNAMSIZ {
            return Err(WgError::Tun(format!("interface name {name:?} is too long")));
        }
        let owned = name.to_string();
        let fd = netns
            .run(move || open_tun(&owned))
            .map_err(|e| WgError::Tun(format!("entering the tunnel namespace: {e}")))??;
        Ok(Tun {
            fd,
            name: name.to_string(),
        })
    }

    /// Read one packet; `Ok(None)` when none is waiting.
    pub fn read(&self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        // SAFETY: buf is valid for writes of buf.len() bytes; the fd is ours.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(e),
        }
    }

    /// Write one packet into the kernel (it is received as if it arrived on the device).
    pub fn write(&self, packet: &[u8]) -> std::io::Result<()> {
        // SAFETY: packet is valid for reads of its length; the fd is ours.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
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

fn open_tun(name: &str) -> Result<OwnedFd, WgError> {
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
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
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
