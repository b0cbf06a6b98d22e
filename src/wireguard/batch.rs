//! Many UDP datagrams per system call over buffers allocated once, on quinn-udp: a receive
//! takes up to `RECV_MSGS` messages (recvmmsg), each possibly many datagrams coalesced by UDP
//! GRO; a send hands the kernel a whole run of equal-sized datagrams to one peer (UDP GSO).
//! The per-packet cost of a userspace tunnel is mostly system calls.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};

/// Datagrams gathered per send batch.
pub const BATCH: usize = 64;
/// Room for one datagram: an underlay MTU of up to 9000 plus slack.
pub const BUF: usize = 9216;
/// Room for one received message when UDP GRO may coalesce datagrams into it (the kernel
/// caps a coalesced message at 64 KiB).
pub const GRO_BUF: usize = 65536;
/// Messages per receive: quinn-udp's recvmmsg takes at most `quinn_udp::BATCH_SIZE`.
const RECV_MSGS: usize = if quinn_udp::BATCH_SIZE < BATCH {
    quinn_udp::BATCH_SIZE
} else {
    BATCH
};
/// Largest UDP payload of one GSO send (IPv4 total length is 16 bits; stay clear of it).
const GSO_MAX_BYTES: usize = 65000;
/// Most segments in one GSO send (the kernel's UDP_MAX_SEGMENTS is at least 64).
const GSO_MAX_SEGMENTS: usize = 64;
/// How long (ms) a send waits for room in a full socket buffer before its datagrams are dropped.
const SEND_WAIT_MS: u16 = 1000;

/// The tunnel's UDP socket with what quinn-udp learnt of the kernel's offloads. Non-blocking
/// (quinn-udp's receive would otherwise wait for a whole batch): waits are `poll`s here.
pub struct Udp {
    socket: UdpSocket,
    state: UdpSocketState,
}

impl Udp {
    /// Take over `socket`: quinn-udp makes it non-blocking and turns on UDP GRO where the
    /// kernel has it.
    pub fn new(socket: UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new((&socket).into())?;
        Ok(Udp { socket, state })
    }

    /// Whether receives get coalesced datagrams (UDP GRO).
    pub fn gro(&self) -> bool {
        self.state.gro_segments() > 1
    }

    /// Whether sends may carry several datagrams (UDP GSO); false for good once the kernel
    /// refused it.
    pub fn gso(&self) -> bool {
        self.state.max_gso_segments() > 1
    }

    /// Block until the socket is ready for `events` or `timeout` ends; false on a timeout
    /// (an interrupted wait counts as ready: the caller just tries again).
    fn wait(&self, events: PollFlags, timeout: PollTimeout) -> bool {
        let mut fds = [PollFd::new(self.socket.as_fd(), events)];
        !matches!(poll(&mut fds, timeout), Ok(0))
    }

    /// Send one datagram or GSO run, waiting for room while the send buffer is full.
    fn send(&self, t: &Transmit<'_>) -> io::Result<()> {
        loop {
            match self.state.try_send((&self.socket).into(), t) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.wait(PollFlags::POLLOUT, SEND_WAIT_MS.into()) {
                        return Err(e);
                    }
                }
                r => return r,
            }
        }
    }

    /// Send one datagram (handshakes, timers): not worth a batch. Lost like any datagram when
    /// the kernel refuses it.
    pub fn send_one(&self, data: &[u8], to: SocketAddrV4) {
        let _ = self.send(&transmit(data, to, None));
    }
}

fn transmit(contents: &[u8], to: SocketAddrV4, segment_size: Option<usize>) -> Transmit<'_> {
    Transmit {
        destination: SocketAddr::V4(to),
        ecn: None,
        contents,
        segment_size,
        src_ip: None,
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

/// Buffers for one receive: `len` messages after a call, each with its sender and, where
/// the kernel coalesced several datagrams (UDP GRO), their size.
pub struct RecvBatch {
    bufs: Box<[u8]>,
    meta: [RecvMeta; RECV_MSGS],
    pub len: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: vec![0u8; RECV_MSGS * GRO_BUF].into_boxed_slice(),
            meta: [RecvMeta::default(); RECV_MSGS],
            len: 0,
        }
    }
}

impl RecvBatch {
    /// Block for at least one message, then take whatever else is waiting.
    pub fn recv(&mut self, udp: &Udp) -> io::Result<usize> {
        self.len = 0;
        loop {
            let mut chunks = self.bufs.chunks_mut(GRO_BUF);
            let mut slices: [IoSliceMut<'_>; RECV_MSGS] = std::array::from_fn(|_| {
                IoSliceMut::new(chunks.next().expect("RECV_MSGS chunks of GRO_BUF"))
            });
            match udp
                .state
                .recv((&udp.socket).into(), &mut slices, &mut self.meta)
            {
                Ok(n) => {
                    self.len = n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    udp.wait(PollFlags::POLLIN, PollTimeout::NONE);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The datagrams of message `i` of the last call and who sent them (None for a sender
    /// that is not IPv4, which this IPv4 socket never reports).
    pub fn get(&self, i: usize) -> Option<(Segments<'_>, SocketAddrV4)> {
        let m = &self.meta[i];
        let SocketAddr::V4(from) = m.addr else {
            return None;
        };
        let start = i * GRO_BUF;
        // Without GRO quinn-udp reports the stride as the whole message.
        let stride = if m.stride >= m.len { 0 } else { m.stride };
        Some((segments(&self.bufs[start..start + m.len], stride), from))
    }
}

/// How many datagrams from the front of `lens` can go as one UDP GSO send: same destination,
/// all of the first one's length except a possibly shorter last, at most `max_segments`,
/// within the size limit.
pub fn gso_run<K: PartialEq>(lens: &[usize], dests: &[K], max_segments: usize) -> usize {
    let seg = lens[0];
    if seg == 0 {
        return 1;
    }
    let max_segments = max_segments.min(GSO_MAX_SEGMENTS);
    let mut total = seg;
    let mut k = 1;
    while k < lens.len()
        && k < max_segments
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

/// The order that puts each destination's datagrams together (by first appearance, each
/// destination's in their own order): WireGuard needs order only per peer, and together they
/// form longer GSO runs. None when they already are together.
pub fn grouped<K: PartialEq>(dests: &[K]) -> Option<Vec<usize>> {
    let together =
        (1..dests.len()).all(|i| dests[i] == dests[i - 1] || !dests[..i - 1].contains(&dests[i]));
    if together {
        return None;
    }
    let mut order = Vec::with_capacity(dests.len());
    let mut placed = vec![false; dests.len()];
    for i in 0..dests.len() {
        if placed[i] {
            continue;
        }
        for j in i..dests.len() {
            if !placed[j] && dests[j] == dests[i] {
                placed[j] = true;
                order.push(j);
            }
        }
    }
    Some(order)
}

/// Datagrams being gathered for sending, packed back to back so that a run of them is one
/// contiguous GSO buffer.
pub struct SendBatch {
    bufs: Box<[u8]>,
    /// Where the datagrams go when several peers' interleave and are regrouped.
    spare: Box<[u8]>,
    lens: [usize; BATCH],
    dests: [SocketAddrV4; BATCH],
    /// Bytes used in `bufs`.
    end: usize,
    pub len: usize,
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            bufs: vec![0u8; BATCH * BUF].into_boxed_slice(),
            spare: vec![0u8; BATCH * BUF].into_boxed_slice(),
            lens: [0; BATCH],
            dests: [SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0); BATCH],
            end: 0,
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
        // Each datagram takes at most BUF, so BATCH of them fit.
        &mut self.bufs[self.end..self.end + BUF]
    }

    /// Keep the first `len` bytes of the slot as a datagram for `to`.
    pub fn commit(&mut self, len: usize, to: SocketAddrV4) {
        assert!(len <= BUF, "a datagram longer than its slot");
        self.lens[self.len] = len;
        self.dests[self.len] = to;
        self.end += len;
        self.len += 1;
    }

    /// Send everything gathered: each peer's datagrams together, runs of equal-sized ones as
    /// one UDP GSO send each. Datagrams the kernel refuses are dropped (UDP semantics).
    pub fn flush(&mut self, udp: &Udp) {
        let (n, end) = (self.len, self.end);
        self.len = 0;
        self.end = 0;
        let Some(order) = grouped(&self.dests[..n]) else {
            send_runs(udp, &self.bufs[..end], &self.lens[..n], &self.dests[..n]);
            return;
        };
        let mut starts = [0usize; BATCH];
        for i in 1..n {
            starts[i] = starts[i - 1] + self.lens[i - 1];
        }
        let (mut lens, mut dests) = (self.lens, self.dests);
        let mut at = 0;
        for (k, &i) in order.iter().enumerate() {
            let len = self.lens[i];
            self.spare[at..at + len].copy_from_slice(&self.bufs[starts[i]..starts[i] + len]);
            lens[k] = len;
            dests[k] = self.dests[i];
            at += len;
        }
        send_runs(udp, &self.spare[..end], &lens[..n], &dests[..n]);
    }
}

/// Send datagrams packed back to back in `buf`, runs of them as one GSO send each.
fn send_runs(udp: &Udp, buf: &[u8], lens: &[usize], dests: &[SocketAddrV4]) {
    let (mut i, mut at) = (0, 0);
    while i < lens.len() {
        let gso = udp.gso();
        let k = gso_run(&lens[i..], &dests[i..], udp.state.max_gso_segments());
        let bytes: usize = lens[i..i + k].iter().sum();
        let run = &buf[at..at + bytes];
        let segment = (k > 1).then_some(lens[i]);
        if udp.send(&transmit(run, dests[i], segment)).is_err() && k > 1 && !udp.gso() {
            // quinn-udp turns GSO off when the kernel refuses it: this run goes one by one.
            if gso {
                tracing::info!(
                    "the kernel refuses UDP segmentation offload; sending datagrams one by one"
                );
            }
            let mut off = 0;
            for &len in &lens[i..i + k] {
                udp.send_one(&run[off..off + len], dests[i]);
                off += len;
            }
        }
        i += k;
        at += bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Udp, Udp, SocketAddrV4) {
        let a = Udp::new(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let b = Udp::new(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let SocketAddr::V4(to) = b.socket.local_addr().unwrap() else {
            unreachable!()
        };
        (a, b, to)
    }

    /// Every datagram of the next receives until `count` have come, with their senders.
    fn receive(b: &Udp, count: usize) -> (Vec<Vec<u8>>, Vec<SocketAddrV4>, usize) {
        let mut got = RecvBatch::default();
        let (mut seen, mut from, mut messages) = (Vec::new(), Vec::new(), 0);
        while seen.len() < count {
            got.recv(b).unwrap();
            messages += got.len;
            for i in 0..got.len {
                let (segs, f) = got.get(i).unwrap();
                for d in segs {
                    seen.push(d.to_vec());
                    from.push(f);
                }
            }
        }
        (seen, from, messages)
    }

    #[test]
    fn a_batch_sent_arrives_as_a_batch_with_its_sender() {
        let (a, b, to) = pair();
        let mut out = SendBatch::default();
        for i in 0..5u8 {
            out.slot()[..3].copy_from_slice(&[i, i, i]);
            out.commit(3, to);
        }
        out.flush(&a);
        assert_eq!(out.len, 0);
        let (seen, from, _) = receive(&b, 5);
        assert!(from
            .iter()
            .all(|&f| SocketAddr::V4(f) == a.socket.local_addr().unwrap()));
        assert_eq!(seen[4], vec![4, 4, 4]);
    }

    #[test]
    fn interleaved_peers_each_get_their_datagrams_in_order() {
        let (a, b, to_b) = pair();
        let c = Udp::new(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let SocketAddr::V4(to_c) = c.socket.local_addr().unwrap() else {
            unreachable!()
        };
        let mut out = SendBatch::default();
        for i in 0..20u8 {
            let n = 100 + usize::from(i % 3 == 0);
            out.slot()[..n].fill(i);
            out.commit(n, if i % 2 == 0 { to_b } else { to_c });
        }
        out.flush(&a);
        let (seen_b, _, _) = receive(&b, 10);
        let (seen_c, _, _) = receive(&c, 10);
        let firsts = |s: &[Vec<u8>]| s.iter().map(|d| d[0]).collect::<Vec<_>>();
        assert_eq!(firsts(&seen_b), (0..20).step_by(2).collect::<Vec<u8>>());
        assert_eq!(firsts(&seen_c), (1..20).step_by(2).collect::<Vec<u8>>());
        assert!(seen_b.iter().all(|d| d.iter().all(|&x| x == d[0])));
    }

    #[test]
    fn datagrams_are_regrouped_by_destination_only_when_interleaved() {
        assert_eq!(grouped(&[1, 1, 2, 2, 3]), None);
        assert_eq!(grouped::<u8>(&[]), None);
        assert_eq!(grouped(&[1, 2, 1, 3, 2, 1]), Some(vec![0, 2, 5, 1, 4, 3]));
    }

    #[test]
    fn equal_datagrams_to_one_peer_form_one_run_ended_by_a_shorter_one() {
        assert_eq!(gso_run(&[100, 100, 100, 60, 100], &[1, 1, 1, 1, 1], 64), 4);
        assert_eq!(gso_run(&[100, 100, 100], &[1, 1, 1], 64), 3);
        // A longer datagram or another destination starts a new run.
        assert_eq!(gso_run(&[100, 100, 120, 100], &[1, 1, 1, 1], 64), 2);
        assert_eq!(gso_run(&[100, 100, 100], &[1, 1, 2], 64), 2);
        assert_eq!(gso_run(&[100], &[1], 64), 1);
        assert_eq!(gso_run(&[0, 0], &[1, 1], 64), 1);
        // Without GSO every datagram goes alone.
        assert_eq!(gso_run(&[100, 100, 100], &[1, 1, 1], 1), 1);
    }

    #[test]
    fn a_run_stays_within_the_gso_limits() {
        let full = [1472usize; BATCH];
        let dests = [7u8; BATCH];
        let k = gso_run(&full, &dests, 64);
        assert_eq!(k, GSO_MAX_BYTES / 1472);
        assert!(k * 1472 <= GSO_MAX_BYTES);
        let small = [10usize; BATCH + 10];
        let dests = [7u8; BATCH + 10];
        assert_eq!(gso_run(&small, &dests, 1000), GSO_MAX_SEGMENTS);
        assert_eq!(gso_run(&small, &dests, 5), 5);
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
    fn an_empty_datagram_arrives_as_one_empty_datagram() {
        let (a, b, to) = pair();
        a.send_one(&[], to);
        a.send_one(&[9; 5], to);
        let (seen, _, _) = receive(&b, 2);
        assert_eq!(seen, vec![vec![], vec![9; 5]]);
    }

    #[test]
    fn gso_and_gro_round_trip_on_loopback() {
        let (a, b, to) = pair();
        let mut out = SendBatch::default();
        let sizes = [1000usize, 1000, 1000, 700, 1000, 1000, 300];
        for (i, &n) in sizes.iter().enumerate() {
            out.slot()[..n].fill(i as u8);
            out.commit(n, to);
        }
        out.flush(&a);
        let (seen, _, messages) = receive(&b, sizes.len());
        for (i, d) in seen.iter().enumerate() {
            assert_eq!(d.len(), sizes[i]);
            assert!(d.iter().all(|&x| x == i as u8));
        }
        if b.gro() && a.gso() {
            // Loopback carries the GSO sends whole to a GRO socket.
            assert!(messages < sizes.len(), "{messages} messages");
        }
    }
}
