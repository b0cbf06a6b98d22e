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

/// Room for one received message when UDP GRO may coalesce datagrams into it (the kernel
/// caps a coalesced message at 64 KiB).
pub const GRO_BUF: usize = 65536;
/// Largest UDP payload of one GSO send (IPv4 total length is 16 bits; stay clear of it).
const GSO_MAX_BYTES: usize = 65000;
/// Most segments in one GSO send (the kernel's UDP_MAX_SEGMENTS is at least 64).
const GSO_MAX_SEGMENTS: usize = 64;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Control-message room per message: one cmsghdr plus an int, 8-byte aligned.
type Control = [u64; 4];

/// Ask the kernel to coalesce consecutive datagrams of one flow into one receive (UDP GRO);
/// `RecvBatch` splits them again. False where the kernel does not offer it.
pub fn enable_gro(fd: RawFd) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: a valid int option value for the call's duration.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            UDP_GRO,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// The datagrams of one received message: `gso_size` bytes each (the last may be shorter);
/// `gso_size` 0 means the message is one datagram.
pub struct Segments<'a> {
    rest: &'a [u8],
    size: usize,
    done: bool,
}

pub fn segments(buf: &[u8], gso_size: usize) -> Segments<'_> {
    Segments {
        rest: buf,
        size: if gso_size == 0 { buf.len() } else { gso_size },
        done: false,
    }
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        // An empty message is still one (empty, malformed) datagram.
        let take = self.size.min(self.rest.len());
        let (d, rest) = self.rest.split_at(take);
        self.rest = rest;
        self.done = rest.is_empty() || take == 0;
        Some(d)
    }
}

/// Buffers for one recvmmsg: `len` messages after a call, each with its sender and, where
/// the kernel coalesced several datagrams (UDP GRO), their size.
pub struct RecvBatch {
    bufs: Box<[u8]>,
    lens: [usize; BATCH],
    gso: [usize; BATCH],
    addrs: [libc::sockaddr_in; BATCH],
    ctrl: [Control; BATCH],
    pub len: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: vec![0u8; BATCH * GRO_BUF].into_boxed_slice(),
            lens: [0; BATCH],
            gso: [0; BATCH],
            addrs: [to_sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); BATCH],
            ctrl: [[0; 4]; BATCH],
            len: 0,
        }
    }
}

impl RecvBatch {
    /// Block for at least one message, then take whatever else is waiting.
    pub fn recv(&mut self, fd: RawFd) -> std::io::Result<usize> {
        // SAFETY: all-zero is a valid iovec and mmsghdr; every pointer set below points into
        // buffers owned by self that outlive the call.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above, all-zero is a valid mmsghdr (null pointers, zero lengths).
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let base = self.bufs.as_mut_ptr();
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                // SAFETY: i * GRO_BUF is inside bufs (BATCH * GRO_BUF bytes).
                iov_base: unsafe { base.add(i * GRO_BUF) }.cast(),
                iov_len: GRO_BUF,
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_control = self.ctrl[i].as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of::<Control>() as _;
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
        for (i, hdr) in hdrs.iter().enumerate().take(self.len) {
            self.lens[i] = hdr.msg_len as usize;
            self.gso[i] = gro_size(&hdr.msg_hdr);
        }
        Ok(self.len)
    }

    /// The datagrams of message `i` of the last call and who sent them.
    pub fn get(&self, i: usize) -> (Segments<'_>, SocketAddrV4) {
        let start = i * GRO_BUF;
        (
            segments(&self.bufs[start..start + self.lens[i]], self.gso[i]),
            from_sockaddr(&self.addrs[i]),
        )
    }
}

/// The UDP_GRO segment size in a received message's control data; 0 when there is none.
fn gro_size(hdr: &libc::msghdr) -> usize {
    // SAFETY: hdr is a msghdr the kernel just filled: msg_control/msg_controllen describe
    // its (possibly empty) control data, which the CMSG_* walkers stay inside of.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                return size.max(0) as usize;
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    0
}

/// How many datagrams from the front of `lens` can go as one UDP GSO send: same destination,
/// all of the first one's length except a possibly shorter last, within the size limits.
pub fn gso_run<K: PartialEq>(lens: &[usize], dests: &[K]) -> usize {
    let seg = lens[0];
    if seg == 0 {
        return 1;
    }
    let mut total = seg;
    let mut k = 1;
    while k < lens.len()
        && k < GSO_MAX_SEGMENTS
        && dests[k] == dests[0]
        && lens[k] <= seg
        && total + lens[k] <= GSO_MAX_BYTES
    {
        total += lens[k];
        k += 1;
        if lens[k - 1] < seg {
            break;
        }
    }
    k
}

/// Datagrams being gathered for one sendmmsg.
pub struct SendBatch {
    bufs: Box<[u8]>,
    lens: [usize; BATCH],
    addrs: [libc::sockaddr_in; BATCH],
    /// Destination of each datagram as one comparable number (address and port).
    dests: [u64; BATCH],
    /// Whether to coalesce runs of datagrams with UDP_SEGMENT; off for good once the kernel
    /// refuses it.
    gso: bool,
    pub len: usize,
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            bufs: vec![0u8; BATCH * BUF].into_boxed_slice(),
            lens: [0; BATCH],
            addrs: [to_sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); BATCH],
            dests: [0; BATCH],
            gso: true,
            len: 0,
        }
    }
}

/// One UDP_SEGMENT control message.
#[repr(C)]
struct SegmentCmsg {
    hdr: libc::cmsghdr,
    size: u16,
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
        self.dests[self.len] = (u64::from(u32::from(*to.ip())) << 16) | u64::from(to.port());
        self.len += 1;
    }

    /// Send everything gathered: runs of equal-sized datagrams to one peer as one UDP GSO
    /// message each, many messages per call. Datagrams the kernel refuses are dropped (UDP
    /// semantics).
    pub fn flush(&mut self, fd: RawFd) {
        // SAFETY: all-zero is a valid iovec, mmsghdr and cmsghdr; every pointer set below
        // points into buffers owned by self or this frame, valid during the calls.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above, all-zero is a valid mmsghdr (null pointers, zero lengths).
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: SegmentCmsg is plain integers (a cmsghdr and a u16); all-zero is valid.
        let mut ctrl: [SegmentCmsg; BATCH] = unsafe { std::mem::zeroed() };
        let mut counts = [0usize; BATCH];
        let base = self.bufs.as_mut_ptr();
        for (i, (iov, &len)) in iovs.iter_mut().zip(&self.lens).enumerate().take(self.len) {
            *iov = libc::iovec {
                // SAFETY: i * BUF is inside bufs.
                iov_base: unsafe { base.add(i * BUF) }.cast(),
                iov_len: len,
            };
        }
        let mut sent = 0;
        while sent < self.len {
            // Group what is left into messages.
            let mut msgs = 0;
            let mut i = sent;
            while i < self.len {
                let k = if self.gso {
                    gso_run(&self.lens[i..self.len], &self.dests[i..self.len])
                } else {
                    1
                };
                let h = &mut hdrs[msgs].msg_hdr;
                h.msg_iov = &mut iovs[i];
                h.msg_iovlen = k as _;
                h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                if k > 1 {
                    let c = &mut ctrl[msgs];
                    // SAFETY: CMSG_LEN/CMSG_SPACE only compute sizes.
                    let (len, space) = unsafe {
                        (
                            libc::CMSG_LEN(std::mem::size_of::<u16>() as u32),
                            libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32),
                        )
                    };
                    c.hdr.cmsg_len = len as _;
                    c.hdr.cmsg_level = libc::SOL_UDP;
                    c.hdr.cmsg_type = UDP_SEGMENT;
                    c.size = self.lens[i] as u16;
                    h.msg_control = (c as *mut SegmentCmsg).cast();
                    h.msg_controllen = space as _;
                } else {
                    h.msg_control = std::ptr::null_mut();
                    h.msg_controllen = 0;
                }
                counts[msgs] = k;
                msgs += 1;
                i += k;
            }
            // SAFETY: hdrs describes `msgs` valid messages.
            let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), msgs as u32, 0) };
            if n > 0 {
                sent += counts[..n as usize].iter().sum::<usize>();
                continue;
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EIO) | Some(libc::EINVAL) if counts[0] > 1 => {
                    tracing::info!(error = %e, "the kernel refuses UDP segmentation offload; sending datagrams one by one");
                    self.gso = false;
                }
                // Skip the message the kernel refused (e.g. no route) and go on.
                _ => sent += counts[0],
            }
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
                let (segs, from) = got.get(i);
                assert_eq!(std::net::SocketAddr::V4(from), a.local_addr().unwrap());
                seen.extend(segs.map(|d| d.to_vec()));
            }
        }
        assert_eq!(seen[4], vec![4, 4, 4]);
    }

    #[test]
    fn equal_datagrams_to_one_peer_form_one_run_ended_by_a_shorter_one() {
        assert_eq!(gso_run(&[100, 100, 100, 60, 100], &[1, 1, 1, 1, 1]), 4);
        assert_eq!(gso_run(&[100, 100, 100], &[1, 1, 1]), 3);
        // A longer datagram or another destination starts a new run.
        assert_eq!(gso_run(&[100, 100, 120, 100], &[1, 1, 1, 1]), 2);
        assert_eq!(gso_run(&[100, 100, 100], &[1, 1, 2]), 2);
        assert_eq!(gso_run(&[100], &[1]), 1);
        assert_eq!(gso_run(&[0, 0], &[1, 1]), 1);
    }

    #[test]
    fn a_run_stays_within_the_gso_limits() {
        let full = [1472usize; BATCH];
        let dests = [7u8; BATCH];
        let k = gso_run(&full, &dests);
        assert_eq!(k, GSO_MAX_BYTES / 1472);
        assert!(k * 1472 <= GSO_MAX_BYTES);
        let small = [10usize; BATCH + 10];
        let dests = [7u8; BATCH + 10];
        assert_eq!(gso_run(&small, &dests), GSO_MAX_SEGMENTS);
    }

    #[test]
    fn a_coalesced_message_splits_into_its_datagrams() {
        let buf: Vec<u8> = (0..250u8).collect();
        let parts: Vec<&[u8]> = segments(&buf, 100).collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], &buf[..100]);
        assert_eq!(parts[2], &buf[200..]);
        let exact: Vec<&[u8]> = segments(&buf[..200], 100).collect();
        assert_eq!(exact.len(), 2);
        // Without GRO the message is one datagram, even an empty one.
        assert_eq!(segments(&buf, 0).count(), 1);
        assert_eq!(segments(&[], 0).collect::<Vec<_>>(), vec![&[] as &[u8]]);
        assert_eq!(segments(&[], 100).count(), 1);
    }

    #[test]
    fn gso_and_gro_round_trip_on_loopback() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let gro = enable_gro(b.as_raw_fd());
        let std::net::SocketAddr::V4(to) = b.local_addr().unwrap() else {
            unreachable!()
        };
        let mut out = SendBatch::default();
        let sizes = [1000usize, 1000, 1000, 700, 1000, 1000, 300];
        for (i, &n) in sizes.iter().enumerate() {
            out.slot()[..n].fill(i as u8);
            out.commit(n, to);
        }
        out.flush(a.as_raw_fd());
        let mut got = RecvBatch::default();
        let mut seen = Vec::new();
        let mut messages = 0;
        while seen.len() < sizes.len() {
            got.recv(b.as_raw_fd()).unwrap();
            messages += got.len;
            for i in 0..got.len {
                let (segs, _) = got.get(i);
                seen.extend(segs.map(|d| d.to_vec()));
            }
        }
        for (i, d) in seen.iter().enumerate() {
            assert_eq!(d.len(), sizes[i]);
            assert!(d.iter().all(|&x| x == i as u8));
        }
        if gro && out.gso {
            // Loopback carries the GSO sends whole to a GRO socket.
            assert!(messages < sizes.len(), "{messages} messages");
        }
    }
}
