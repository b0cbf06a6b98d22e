//! Many UDP datagrams per system call (recvmmsg/sendmmsg) over buffers allocated once: the
//! per-packet cost of a userspace tunnel is mostly system calls.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

/// Datagrams moved per call.
pub const BATCH: usize = 64;
/// Room for one datagram: an underlay MTU of up to 9000 plus slack.
pub const BUF: usize = 9216;

fn to_sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr(s: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)),
        u16::from_be(s.sin_port),
    )
}

/// Buffers for one recvmmsg: `len` datagrams after a call, each with its sender.
pub struct RecvBatch {
    bufs: Box<[u8]>,
    lens: [usize; BATCH],
    addrs: [libc::sockaddr_in; BATCH],
    pub len: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: vec![0u8; BATCH * BUF].into_boxed_slice(),
            lens: [0; BATCH],
            addrs: [to_sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); BATCH],
            len: 0,
        }
    }
}

impl RecvBatch {
    /// Block for at least one datagram, then take whatever else is waiting.
    pub fn recv(&mut self, fd: RawFd) -> std::io::Result<usize> {
        // SAFETY: all-zero is a valid iovec and mmsghdr; every pointer set below points into
        // buffers owned by self that outlive the call.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let base = self.bufs.as_mut_ptr();
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                // SAFETY: i * BUF is inside bufs (BATCH * BUF bytes).
                iov_base: unsafe { base.add(i * BUF) }.cast(),
                iov_len: BUF,
            };
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
            hdrs[i].msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        }
        // SAFETY: hdrs describes BATCH valid buffers.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.len = 0;
            return Err(std::io::Error::last_os_error());
        }
        self.len = n as usize;
        for (len, hdr) in self.lens.iter_mut().zip(&hdrs).take(self.len) {
            *len = hdr.msg_len as usize;
        }
        Ok(self.len)
    }

    /// Datagram `i` of the last call and who sent it.
    pub fn get(&self, i: usize) -> (&[u8], SocketAddrV4) {
        let start = i * BUF;
        (
            &self.bufs[start..start + self.lens[i]],
            from_sockaddr(&self.addrs[i]),
        )
    }
}

/// Datagrams being gathered for one sendmmsg.
pub struct SendBatch {
    bufs: Box<[u8]>,
    lens: [usize; BATCH],
    addrs: [libc::sockaddr_in; BATCH],
    pub len: usize,
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            bufs: vec![0u8; BATCH * BUF].into_boxed_slice(),
            lens: [0; BATCH],
            addrs: [to_sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); BATCH],
            len: 0,
        }
    }
}

impl SendBatch {
    pub fn is_full(&self) -> bool {
        self.len == BATCH
    }

    /// The buffer of the next datagram, to be filled and then `commit`ted.
    pub fn slot(&mut self) -> &mut [u8] {
        let start = self.len * BUF;
        &mut self.bufs[start..start + BUF]
    }

    /// Keep the first `len` bytes of the slot as a datagram for `to`.
    pub fn commit(&mut self, len: usize, to: SocketAddrV4) {
        self.lens[self.len] = len;
        self.addrs[self.len] = to_sockaddr(to);
        self.len += 1;
    }

    /// Send everything gathered; datagrams the kernel refuses are dropped (UDP semantics).
    pub fn flush(&mut self, fd: RawFd) {
        let mut sent = 0;
        while sent < self.len {
            // SAFETY: as in RecvBatch::recv; pointers into self, valid during the call.
            let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            let count = self.len - sent;
            let base = self.bufs.as_mut_ptr();
            for j in 0..count {
                let i = sent + j;
                iovs[j] = libc::iovec {
                    // SAFETY: inside bufs.
                    iov_base: unsafe { base.add(i * BUF) }.cast(),
                    iov_len: self.lens[i],
                };
                hdrs[j].msg_hdr.msg_iov = &mut iovs[j];
                hdrs[j].msg_hdr.msg_iovlen = 1;
                hdrs[j].msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
                hdrs[j].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            }
            // SAFETY: hdrs describes `count` valid datagrams.
            let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), count as u32, 0) };
            if n <= 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // Skip the datagram the kernel refused (e.g. no route) and go on.
                sent += 1;
                continue;
            }
            sent += n as usize;
        }
        self.len = 0;
    }
}

/// Send one datagram (handshakes, timers): not worth a batch.
pub fn send_one(fd: RawFd, data: &[u8], to: SocketAddrV4) {
    let addr = to_sockaddr(to);
    // SAFETY: data and addr are valid for the call.
    unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_batch_sent_arrives_as_a_batch_with_its_sender() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(to) = b.local_addr().unwrap() else {
            unreachable!()
        };
        let mut out = SendBatch::default();
        for i in 0..5u8 {
            out.slot()[..3].copy_from_slice(&[i, i, i]);
            out.commit(3, to);
        }
        out.flush(a.as_raw_fd());
        assert_eq!(out.len, 0);
        let mut got = RecvBatch::default();
        let mut seen = Vec::new();
        while seen.len() < 5 {
            got.recv(b.as_raw_fd()).unwrap();
            for i in 0..got.len {
                let (d, from) = got.get(i);
                assert_eq!(std::net::SocketAddr::V4(from), a.local_addr().unwrap());
                seen.push(d.to_vec());
            }
        }
        assert_eq!(seen[4], vec![4, 4, 4]);
    }
}
