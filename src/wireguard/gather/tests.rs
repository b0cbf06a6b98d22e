use std::cell::RefCell;

use super::*;
use crate::wireguard::offload::{parse_vnet_header, split, VnetHeader};

/// Records what would have been written; refuses TCP GSO writes when asked to, as a kernel
/// without them does.
#[derive(Default)]
struct Recorder {
    writes: RefCell<Vec<([u8; VNET_HDR_TUNNEL], Vec<u8>)>>,
    refuse_tcp: bool,
}

impl Device for Recorder {
    fn gso(&self) -> bool {
        true
    }
    fn tso(&self) -> bool {
        true
    }
    fn write_with(&self, hdr: &[u8; VNET_HDR_TUNNEL], packet: &[u8]) -> std::io::Result<()> {
        if self.refuse_tcp && hdr[1] & VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4 != 0 {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.writes.borrow_mut().push((*hdr, packet.to_vec()));
        Ok(())
    }
    fn name(&self) -> &str {
        "recorder"
    }
}

fn put16(p: &mut [u8], at: usize, v: usize) {
    p[at..at + 2].copy_from_slice(&(v as u16).to_be_bytes());
}

fn ipv4_checksum(h: &mut [u8]) {
    put16(h, 10, 0);
    let sum = internet_checksum(&h[..20]);
    put16(h, 10, usize::from(sum));
}

fn tcp_checksum(p: &mut [u8]) {
    put16(p, TCP + 16, 0);
    let pseudo = ones_sum(&p[INNER_IP + 12..TCP], 6 + (p.len() - TCP) as u32);
    let sum = !fold(ones_sum(&p[TCP..], pseudo));
    put16(p, TCP + 16, usize::from(sum));
}

/// A VXLAN packet 198.18.0.1:40000 → 198.18.0.2:4789 (VNI 42) carrying TCP 10.0.0.1:5555 →
/// 10.0.0.2:80 with a timestamp option, ACK plus `flags`, sequence `seq`, and `payload`.
fn segment(seq: u32, payload: &[u8], flags: u8) -> Vec<u8> {
    let head = TCP + 32;
    let mut p = vec![0u8; head];
    p[..20].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 7, 0x40, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
    ]);
    put16(&mut p, OUTER_UDP, 40000);
    put16(&mut p, OUTER_UDP + 2, 4789);
    p[VXLAN_HDR..VXLAN_HDR + 8].copy_from_slice(&[0x08, 0, 0, 0, 0, 0, 42, 0]);
    p[INNER_ETH..INNER_ETH + 14].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
    p[INNER_IP..TCP].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 9, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ]);
    put16(&mut p, TCP, 5555);
    put16(&mut p, TCP + 2, 80);
    p[TCP + 4..TCP + 8].copy_from_slice(&seq.to_be_bytes());
    p[TCP + 8..TCP + 12].copy_from_slice(&1u32.to_be_bytes());
    p[TCP + 12] = 8 << 4;
    p[TCP + 13] = TCP_ACK | flags;
    put16(&mut p, TCP + 14, 512);
    p[TCP + 20..TCP + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 6]);
    p.extend_from_slice(payload);
    let len = p.len();
    finish(&mut p, len);
    p
}

/// Lengths and checksums of a test segment, after its fields were changed.
fn finish(p: &mut [u8], len: usize) {
    put16(p, 2, len);
    ipv4_checksum(p);
    put16(p, OUTER_UDP + 4, len - OUTER_UDP);
    put16(p, INNER_IP + 2, len - INNER_IP);
    ipv4_checksum(&mut p[INNER_IP..]);
    tcp_checksum(p);
}

fn payload(n: usize, fill: u8) -> Vec<u8> {
    (0..n).map(|i| fill.wrapping_add(i as u8)).collect()
}

/// What the kernel would make of the writes: each TCP super-packet cut back into its
/// segments (as `offload::split` cuts the ones it reads), every other write as it is.
fn expand(writes: &[([u8; VNET_HDR_TUNNEL], Vec<u8>)]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; MAX_PACKET];
    for (hdr, p) in writes {
        match parse_vnet_header(hdr) {
            VnetHeader::Segment(gso) => {
                split(p, &gso, &mut buf, |s| out.push(s.to_vec())).unwrap();
            }
            VnetHeader::Plain => out.push(p.clone()),
            _ if hdr[1] == VIRTIO_NET_HDR_GSO_UDP_L4 => {
                let seg = usize::from(u16::from_ne_bytes([hdr[4], hdr[5]]));
                for chunk in p[IPV4_UDP_HDR..].chunks(seg) {
                    let mut d = p[..IPV4_UDP_HDR].to_vec();
                    d.extend_from_slice(chunk);
                    out.push(d);
                }
            }
            other => panic!("unexpected write {other:?}"),
        }
    }
    out
}

/// (sequence, flags, payload) of each segment: what the workload's TCP sees.
fn stream(packets: &[Vec<u8>]) -> Vec<(u32, u8, Vec<u8>)> {
    packets
        .iter()
        .map(|p| {
            let s = Segment::parse(p).expect("every segment checks out");
            (s.seq, p[TCP + 13], p[s.payload..].to_vec())
        })
        .collect()
}

#[test]
fn a_plain_segment_is_mergeable_and_anything_unusual_is_not() {
    // 20 bytes of payload: a TCP header of 60 bytes would reach past the end.
    let good = segment(1000, &payload(20, 1), 0);
    let s = Segment::parse(&good).unwrap();
    assert_eq!((s.payload, s.seq, s.psh), (TCP + 32, 1000, false));
    assert!(
        Segment::parse(&segment(1, &payload(10, 1), TCP_PSH))
            .unwrap()
            .psh
    );

    type Change = fn(&mut Vec<u8>);
    let refused: &[(&str, Change, bool)] = &[
        ("FIN", |p| p[TCP + 13] |= 0x01, true),
        ("SYN", |p| p[TCP + 13] |= 0x02, true),
        ("RST", |p| p[TCP + 13] |= 0x04, true),
        ("URG", |p| p[TCP + 13] |= 0x20, true),
        ("ECE", |p| p[TCP + 13] |= 0x40, true),
        ("CWR", |p| p[TCP + 13] |= 0x80, true),
        ("no ACK", |p| p[TCP + 13] &= !TCP_ACK, true),
        ("TCP checksum", |p| p[TCP + 16] ^= 1, false),
        ("payload bit", |p| *p.last_mut().unwrap() ^= 0x40, false),
        ("outer IPv4 checksum", |p| p[10] ^= 1, false),
        ("inner IPv4 checksum", |p| p[INNER_IP + 10] ^= 1, false),
        ("outer UDP checksum", |p| p[OUTER_UDP + 6] = 1, false),
        ("not the VXLAN port", |p| p[OUTER_UDP + 3] ^= 1, true),
        ("VXLAN flags", |p| p[VXLAN_HDR] = 0x0c, true),
        ("VLAN", |p| p[INNER_ETH + 12] = 0x81, true),
        ("outer fragment", |p| p[6] |= 0x20, true),
        ("inner fragment", |p| p[INNER_IP + 7] = 1, true),
        ("outer options", |p| p[0] = 0x46, true),
        ("inner options", |p| p[INNER_IP] = 0x46, true),
        ("not TCP", |p| p[INNER_IP + 9] = 17, true),
        ("TCP header past the end", |p| p[TCP + 12] = 0xf0, true),
        ("TCP header too short", |p| p[TCP + 12] = 0x40, true),
        ("outer length", |p| p[3] ^= 4, false),
        ("inner length", |p| p[INNER_IP + 3] ^= 4, true),
        ("UDP length", |p| p[OUTER_UDP + 5] ^= 4, true),
    ];
    for (what, change, refinish) in refused {
        let mut p = good.clone();
        change(&mut p);
        if *refinish {
            // Checksums made right again, so only the change itself is refused.
            ipv4_checksum(&mut p);
            ipv4_checksum(&mut p[INNER_IP..]);
            if p[TCP + 12] >> 4 >= 5 && TCP + usize::from(p[TCP + 12] >> 4) * 4 <= p.len() {
                tcp_checksum(&mut p);
            }
        }
        assert_eq!(Segment::parse(&p), None, "{what}");
    }
    let bare_ack = segment(1000, &[], 0);
    assert_eq!(Segment::parse(&bare_ack), None, "no payload");
    assert_eq!(Segment::parse(&good[..TCP + 10]), None, "truncated");
}

#[test]
fn consecutive_segments_go_up_as_one_packet_that_cuts_back_into_the_same_segments() {
    let dev = Recorder::default();
    let mut w = TunWriter::default();
    let mss = 1338;
    let mut sent = Vec::new();
    for i in 0..5u32 {
        let last = i == 4;
        let n = if last { 700 } else { mss };
        let p = segment(
            1000 + i * mss as u32,
            &payload(n, i as u8),
            if last { TCP_PSH } else { 0 },
        );
        w.push(&dev, &p).unwrap();
        sent.push(p);
    }
    w.flush(&dev).unwrap();
    let writes = dev.writes.borrow();
    assert_eq!(writes.len(), 1, "one write for five segments");
    let (hdr, p) = &writes[0];
    assert_eq!(hdr[0], VIRTIO_NET_HDR_F_NEEDS_CSUM);
    assert_eq!(
        hdr[1],
        VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4
    );
    let field = |at: usize| usize::from(u16::from_ne_bytes([hdr[at], hdr[at + 1]]));
    assert_eq!(field(2), TCP + 32, "header length");
    assert_eq!(field(4), mss, "segment size");
    assert_eq!((field(6), field(8)), (TCP, 16), "checksum start and offset");
    assert_eq!(
        (field(20), field(22)),
        (OUTER_UDP, INNER_IP),
        "tunnel offsets"
    );
    assert_eq!(p.len(), TCP + 32 + 4 * mss + 700);
    assert_eq!(internet_checksum(&p[..20]), 0);
    assert_eq!(internet_checksum(&p[INNER_IP..TCP]), 0);
    assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
    assert_eq!(
        usize::from(u16::from_be_bytes([p[OUTER_UDP + 4], p[OUTER_UDP + 5]])),
        p.len() - OUTER_UDP
    );
    assert_eq!(w.merged, 1);
    assert_eq!(stream(&expand(&writes)), stream(&sent));
}

#[test]
fn gaps_other_flows_and_unusual_segments_end_a_merge_and_keep_the_order() {
    let dev = Recorder::default();
    let mut w = TunWriter::default();
    let mut other_port = segment(3000, &payload(100, 9), 0);
    put16(&mut other_port, TCP, 5556);
    let len = other_port.len();
    finish(&mut other_port, len);
    let mut bad = segment(2200, &payload(100, 8), 0);
    bad[TCP + 16] ^= 0xff;
    let sent = vec![
        segment(1000, &payload(100, 1), 0),
        segment(1100, &payload(100, 2), 0),
        // A gap: 1200 never came.
        segment(1300, &payload(100, 3), 0),
        segment(1400, &payload(100, 4), 0x01),
        segment(1500, &payload(100, 5), 0),
        other_port,
        segment(1600, &payload(100, 6), TCP_PSH),
        segment(1700, &payload(100, 7), 0),
        bad,
        segment(2300, &payload(100, 10), 0),
    ];
    for p in &sent {
        w.push(&dev, p).unwrap();
    }
    w.flush(&dev).unwrap();
    let writes = dev.writes.borrow();
    let segs: Vec<usize> = writes
        .iter()
        .map(|(h, p)| match parse_vnet_header(h) {
            VnetHeader::Segment(g) => (p.len() - (TCP + 32)).div_ceil(g.size),
            _ => 1,
        })
        .collect();
    // 1000+1100 merged; 1300 alone (the FIN next); the FIN alone; 1500 alone (the other
    // flow next); the other flow alone; 1600 with PSH alone (nothing of its flow pending);
    // 1700 alone (the bad one next); the bad one as it came; 2300.
    assert_eq!(segs, vec![2, 1, 1, 1, 1, 1, 1, 1, 1]);
    let out = expand(&writes);
    assert_eq!(out.len(), sent.len());
    // The segment with a wrong checksum went up untouched, in its place.
    assert_eq!(out[8], sent[8]);
    for (i, (a, b)) in out.iter().zip(&sent).enumerate() {
        if i != 8 {
            assert_eq!(a[TCP..], b[TCP..], "segment {i}");
        }
    }
}

#[test]
fn a_merge_stops_at_64_segments_and_at_the_largest_packet() {
    let dev = Recorder::default();
    let mut w = TunWriter::default();
    for i in 0..70u32 {
        w.push(&dev, &segment(i * 100, &payload(100, i as u8), 0))
            .unwrap();
    }
    w.flush(&dev).unwrap();
    let lens: Vec<usize> = dev.writes.borrow().iter().map(|(_, p)| p.len()).collect();
    assert_eq!(lens, vec![TCP + 32 + 6400, TCP + 32 + 600]);

    let dev = Recorder::default();
    let mss = 1400;
    for i in 0..60u32 {
        w.push(&dev, &segment(i * mss as u32, &payload(mss, 0), 0))
            .unwrap();
    }
    w.flush(&dev).unwrap();
    let writes = dev.writes.borrow();
    assert!(writes.iter().all(|(_, p)| p.len() <= MAX_PACKET));
    let total: usize = writes.iter().map(|(_, p)| p.len() - (TCP + 32)).sum();
    assert_eq!(total, 60 * mss);
    assert_eq!(
        writes[0].1.len(),
        TCP + 32 + 46 * mss,
        "46 segments fit 65,535 bytes"
    );
}

#[test]
fn a_kernel_refusing_merged_writes_gets_datagrams_from_then_on() {
    let dev = Recorder {
        refuse_tcp: true,
        ..Default::default()
    };
    let mut w = TunWriter::default();
    for i in 0..3u32 {
        w.push(&dev, &segment(i * 100, &payload(100, 0), 0))
            .unwrap();
    }
    assert!(w.flush(&dev).is_err());
    assert!(w.tcp_refused);
    for i in 3..6u32 {
        w.push(&dev, &segment(i * 100, &payload(100, 0), 0))
            .unwrap();
    }
    w.flush(&dev).unwrap();
    let writes = dev.writes.borrow();
    assert_eq!(writes.len(), 1);
    assert_eq!(
        writes[0].0[1], VIRTIO_NET_HDR_GSO_UDP_L4,
        "gathered as UDP datagrams"
    );
}

#[test]
fn random_segments_and_garbage_never_panic_and_every_byte_goes_up_in_order() {
    // A small deterministic generator (xorshift): no dependency, the same cases every run.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let dev = Recorder::default();
    let mut w = TunWriter::default();
    let mut sent = Vec::new();
    let mut seq = 0u32;
    for _ in 0..5000 {
        let r = next();
        let n = 1 + (r % 1400) as usize;
        let mut p = segment(
            seq,
            &payload(n, r as u8),
            if r % 13 == 0 { TCP_PSH } else { 0 },
        );
        seq = seq.wrapping_add(if r % 17 == 0 { 7 } else { n as u32 });
        match r % 29 {
            // Garbage of every kind in between.
            0 => p.truncate((r >> 8) as usize % p.len()),
            1 => {
                let at = (r >> 8) as usize % p.len();
                p[at] ^= (r >> 20) as u8 | 1;
            }
            2 => p = (0..n).map(|i| (r >> (i % 8)) as u8).collect(),
            _ => {}
        }
        w.push(&dev, &p).unwrap();
        sent.push(p);
    }
    w.flush(&dev).unwrap();
    let writes = dev.writes.borrow();
    assert!(w.merged > 100, "merged {}", w.merged);
    let out = expand(&writes);
    assert_eq!(out.len(), sent.len());
    for (a, b) in out.iter().zip(&sent) {
        if Segment::parse(b).is_some() {
            assert_eq!(a[TCP..], b[TCP..]);
        } else if a != b {
            // Not a segment: written as it came, or gathered as a UDP datagram (same
            // payload behind the UDP header).
            assert_eq!(a[IPV4_UDP_HDR..], b[IPV4_UDP_HDR..]);
        }
    }
}

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
fn gathered_datagrams_go_up_as_one_udp_gso_packet() {
    let dev = Recorder::default();
    let mut w = TunWriter::default();
    let mut other = udp(100, 9);
    other[23] = 0x99;
    for p in [udp(100, 1), udp(100, 2), udp(40, 3), other.clone()] {
        w.push(&dev, &p).unwrap();
    }
    w.flush(&dev).unwrap();
    let writes = dev.writes.borrow();
    assert_eq!(
        writes.len(),
        2,
        "the shorter datagram ends the run; the other flow alone"
    );
    let (hdr, p) = &writes[0];
    let len = p.len();
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
    assert_eq!(writes[1].1, other);
}

#[test]
fn offsets_move_by_the_link_header_only_where_they_count_from_the_frame() {
    let mut hdr = [0u8; VNET_HDR_TUNNEL];
    hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    hdr[1] = VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4;
    for (at, v) in [(2, 102), (4, 1338), (6, 70), (8, 16), (20, 20), (22, 50)] {
        put(&mut hdr, at, v);
    }
    shift_offsets(&mut hdr, 14);
    let field = |at: usize| u16::from_ne_bytes([hdr[at], hdr[at + 1]]);
    assert_eq!(
        [field(2), field(4), field(6), field(8), field(20), field(22)],
        [116, 1338, 84, 16, 34, 64]
    );
    let mut plain = [0u8; VNET_HDR_TUNNEL];
    shift_offsets(&mut plain, 14);
    assert_eq!(plain, [0u8; VNET_HDR_TUNNEL]);
}
