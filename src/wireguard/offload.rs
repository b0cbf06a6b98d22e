//! TCP segmentation of the tunnel device's super-packets. With offloads on (`tun`), the kernel
//! hands the tunnel one TCP/IPv4 packet of up to 64 KB, bare or inside a UDP tunnel (the
//! VXLAN of an encrypted network), where it would otherwise have cut it into wire-sized
//! packets and queued each to the device on its own: one read instead of ~45, and no pass
//! of each through the tunnel namespace's IP layer. WireGuard encrypts wire-sized packets,
//! so they are cut here, as the kernel's GSO would have cut them.
//!
//! The inner headers were written by workloads (a packet socket with a virtio-net header can
//! hand the kernel a "TSO" packet with any headers it likes), so every offset is checked
//! against the packet and anything this does not understand is refused whole.

use crate::checksum::{fold, internet_checksum, ones_sum};

/// The virtio-net header with the UDP tunnel fields (`virtio_net_hdr_v1_hash_tunnel`).
pub const VNET_HDR_TUNNEL: usize = 24;

pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM: u8 = 8;
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
pub(super) const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
pub(super) const VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4: u8 = 0x20;
const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

const TCP_FIN: u8 = 0x01;
pub(super) const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// A super-packet's segmentation, from its virtio-net header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gso {
    /// TCP payload bytes per segment (the MSS).
    pub size: usize,
    /// Where the IPv4 header of the TCP packet starts: 0, or behind the UDP tunnel's headers.
    pub inner_ip: usize,
    /// Inside a UDP tunnel: where the outer UDP header starts (the outer IPv4 header at 0).
    pub outer_udp: Option<usize>,
}

/// What a virtio-net header asks of the reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VnetHeader {
    /// A finished packet.
    Plain,
    /// One packet whose checksum at `start + offset` covers `start..` and is still to be
    /// completed (the field holds the pseudo-header's sum).
    Checksum { start: usize, offset: usize },
    /// A TCP super-packet to cut.
    Segment(Gso),
    /// Something this reader never asked the kernel for.
    Unsupported,
}

/// Read a virtio-net header (10 bytes, or 24 with the tunnel fields; native byte order, as
/// the TUN driver writes it for a legacy header).
pub fn parse_vnet_header(hdr: &[u8]) -> VnetHeader {
    if hdr.len() < 10 {
        return VnetHeader::Unsupported;
    }
    let word = |at: usize| u16::from_ne_bytes([hdr[at], hdr[at + 1]]) as usize;
    let (flags, gso_type) = (hdr[0], hdr[1]);
    if flags & VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM != 0 {
        // Asked for only with TUN_F_UDP_TUNNEL_GSO_CSUM, which is never switched on.
        return VnetHeader::Unsupported;
    }
    match gso_type & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_NONE if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 => {
            VnetHeader::Checksum {
                start: word(6),
                offset: word(8),
            }
        }
        VIRTIO_NET_HDR_GSO_NONE => VnetHeader::Plain,
        VIRTIO_NET_HDR_GSO_TCPV4 => VnetHeader::Segment(Gso {
            size: word(4),
            inner_ip: 0,
            outer_udp: None,
        }),
        t if t == VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4
            && hdr.len() >= VNET_HDR_TUNNEL =>
        {
            VnetHeader::Segment(Gso {
                size: word(4),
                inner_ip: word(22),
                outer_udp: Some(word(20)),
            })
        }
        _ => VnetHeader::Unsupported,
    }
}

/// Why a super-packet was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("the outer headers are not IPv4 and UDP where the virtio-net header says")]
    Outer,
    #[error("the inner headers are not TCP over IPv4 inside the packet")]
    Inner,
    #[error("segment size {0} is zero or a segment would not fit the buffer")]
    Size(usize),
    #[error("no payload to segment")]
    Empty,
}

/// The checked layout of a super-packet.
struct Layout {
    outer_udp: Option<usize>,
    ip: usize,
    tcp: usize,
    /// End of the TCP header: the payload starts here.
    payload: usize,
}

fn layout(p: &[u8], gso: &Gso) -> Result<Layout, SplitError> {
    let ipv4 = |at: usize| -> Option<usize> {
        let b = *p.get(at)?;
        let ihl = usize::from(b & 0x0f) * 4;
        (b >> 4 == 4 && ihl >= 20 && at + ihl <= p.len()).then_some(ihl)
    };
    if let Some(udp) = gso.outer_udp {
        let ihl = ipv4(0).ok_or(SplitError::Outer)?;
        if udp != ihl || p[9] != libc::IPPROTO_UDP as u8 || udp + 8 > gso.inner_ip {
            return Err(SplitError::Outer);
        }
    }
    let ip = gso.inner_ip;
    let ihl = ipv4(ip).ok_or(SplitError::Inner)?;
    if p[ip + 9] != libc::IPPROTO_TCP as u8 {
        return Err(SplitError::Inner);
    }
    let tcp = ip + ihl;
    let doff = usize::from(p.get(tcp + 12).ok_or(SplitError::Inner)? >> 4) * 4;
    if doff < 20 || tcp + doff > p.len() {
        return Err(SplitError::Inner);
    }
    Ok(Layout {
        outer_udp: gso.outer_udp,
        ip,
        tcp,
        payload: tcp + doff,
    })
}

fn put16(p: &mut [u8], at: usize, v: u16) {
    p[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn get16(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

/// Set an IPv4 header's total length, identification and checksum.
fn finish_ipv4(h: &mut [u8], total: usize, id: u16) {
    put16(h, 4, id);
    set_ipv4_length(h, total);
}

/// Set an IPv4 header's total length and checksum (`gather` uses it for merged packets).
pub(super) fn set_ipv4_length(h: &mut [u8], total: usize) {
    put16(h, 2, total as u16);
    put16(h, 10, 0);
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let sum = internet_checksum(&h[..ihl]);
    put16(h, 10, sum);
}

/// Cut `packet` into the segments `gso` describes, each built in `buf` and handed to `each`
/// (in order). Returns how many there were; on an error nothing was handed over.
pub fn split(
    packet: &[u8],
    gso: &Gso,
    buf: &mut [u8],
    mut each: impl FnMut(&[u8]),
) -> Result<usize, SplitError> {
    let l = layout(packet, gso)?;
    let headers = l.payload;
    if gso.size == 0 || headers + gso.size > buf.len() || headers + gso.size > usize::from(u16::MAX)
    {
        return Err(SplitError::Size(gso.size));
    }
    let payload = &packet[headers..];
    if payload.is_empty() {
        return Err(SplitError::Empty);
    }
    let outer_id = get16(packet, 4);
    let inner_id = get16(packet, l.ip + 4);
    let seq = u32::from_be_bytes(packet[l.tcp + 4..l.tcp + 8].try_into().unwrap());
    let flags = packet[l.tcp + 13];
    // The pseudo-header's addresses and protocol; its length differs per segment.
    let addresses = ones_sum(
        &packet[l.ip + 12..l.ip + 20],
        u32::from(libc::IPPROTO_TCP as u8),
    );
    let count = payload.len().div_ceil(gso.size);
    for (i, chunk) in payload.chunks(gso.size).enumerate() {
        let len = headers + chunk.len();
        let seg = &mut buf[..len];
        seg[..headers].copy_from_slice(&packet[..headers]);
        seg[headers..].copy_from_slice(chunk);
        let n = i as u16;
        if let Some(udp) = l.outer_udp {
            finish_ipv4(seg, len, outer_id.wrapping_add(n));
            put16(seg, udp + 4, (len - udp) as u16);
            // VXLAN over IPv4 sends no UDP checksum; one asked for came with the
            // UDP_TUNNEL_CSUM flag, which is refused above.
            put16(seg, udp + 6, 0);
        }
        finish_ipv4(&mut seg[l.ip..], len - l.ip, inner_id.wrapping_add(n));
        let tcp = &mut seg[l.tcp..];
        tcp[4..8].copy_from_slice(&seq.wrapping_add((i * gso.size) as u32).to_be_bytes());
        let mut f = flags;
        if i + 1 < count {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        tcp[13] = f;
        put16(tcp, 16, 0);
        let sum = !fold(ones_sum(tcp, addresses + tcp.len() as u32));
        put16(tcp, 16, sum);
        each(seg);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: usize = 1000;

    /// A TCP/IPv4 packet 10.1.0.2:40000 → 10.1.0.3:5201, seq 1000, PSH|ACK, `payload` bytes.
    fn tcp(payload: &[u8], flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[..20].copy_from_slice(&[
            0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 1, 0, 2, 10, 1, 0, 3,
        ]);
        p[20..24].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
        p[24..28].copy_from_slice(&1000u32.to_be_bytes());
        p[32] = 0x50;
        p[33] = flags;
        p.extend_from_slice(payload);
        let total = p.len() as u16;
        put16(&mut p, 2, total);
        p
    }

    /// `inner` behind IPv4 (198.18.0.1 → 198.18.0.2), UDP 4789 and VXLAN and Ethernet headers.
    fn in_vxlan(inner: &[u8]) -> (Vec<u8>, usize) {
        let mut p = vec![0u8; 20 + 8 + 8 + 14];
        p[..20].copy_from_slice(&[
            0x45, 0, 0, 0, 0x00, 0x07, 0, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
        ]);
        p[20..24].copy_from_slice(&[0xc3, 0x50, 0x12, 0xb5]);
        p[28] = 0x08;
        p[36 + 12..36 + 14].copy_from_slice(&[0x08, 0x00]);
        let inner_ip = p.len();
        p.extend_from_slice(inner);
        (p, inner_ip)
    }

    fn valid_tcp(seg: &[u8], ip: usize) -> bool {
        let ihl = usize::from(seg[ip] & 0x0f) * 4;
        let tcp = &seg[ip + ihl..];
        let pseudo = ones_sum(&seg[ip + 12..ip + 20], 6 + tcp.len() as u32);
        fold(ones_sum(tcp, pseudo)) == 0xffff
    }

    fn valid_ipv4(h: &[u8]) -> bool {
        fold(ones_sum(&h[..20], 0)) == 0xffff
    }

    fn payload_of(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn a_vxlan_super_packet_becomes_wire_packets_with_right_headers() {
        let data = payload_of(3 * MSS + 123);
        let (p, inner_ip) = in_vxlan(&tcp(&data, TCP_PSH | 0x10 | TCP_FIN | TCP_CWR));
        let gso = Gso {
            size: MSS,
            inner_ip,
            outer_udp: Some(20),
        };
        let mut buf = vec![0u8; 2000];
        let mut segs = Vec::new();
        let n = split(&p, &gso, &mut buf, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(n, 4);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let headers = inner_ip + 40;
            let want = if i < 3 { MSS } else { 123 };
            assert_eq!(s.len(), headers + want);
            // Outer IPv4 and UDP.
            assert_eq!(get16(s, 2) as usize, s.len());
            assert_eq!(get16(s, 4), 7 + i as u16);
            assert!(valid_ipv4(s));
            assert_eq!(get16(s, 24) as usize, s.len() - 20);
            assert_eq!(get16(s, 26), 0);
            // Inner IPv4 and TCP.
            let ip = &s[inner_ip..];
            assert_eq!(get16(ip, 2) as usize, ip.len());
            assert_eq!(get16(ip, 4), 0x1234 + i as u16);
            assert!(valid_ipv4(ip));
            assert!(valid_tcp(s, inner_ip), "segment {i}: TCP checksum");
            let seq = u32::from_be_bytes(ip[24..28].try_into().unwrap());
            assert_eq!(seq, 1000 + (i * MSS) as u32);
            let flags = ip[33];
            assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR on the first only");
            assert_eq!(
                flags & (TCP_FIN | TCP_PSH) != 0,
                i == 3,
                "FIN, PSH on the last only"
            );
            assert_eq!(flags & 0x10, 0x10, "ACK on every one");
            // VXLAN and Ethernet headers copied as they are.
            assert_eq!(&s[28..inner_ip], &p[28..inner_ip]);
            joined.extend_from_slice(&s[headers..]);
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn a_bare_tcp_super_packet_is_cut_too() {
        let data = payload_of(2 * MSS);
        let p = tcp(&data, 0x10);
        let gso = Gso {
            size: MSS,
            inner_ip: 0,
            outer_udp: None,
        };
        let mut buf = vec![0u8; 1500];
        let mut count = 0;
        split(&p, &gso, &mut buf, |s| {
            assert_eq!(s.len(), 40 + MSS);
            assert!(valid_ipv4(s));
            assert!(valid_tcp(s, 0));
            count += 1;
        })
        .unwrap();
        assert_eq!(count, 2);
    }

    #[test]
    fn headers_are_read_from_the_kernels_layout() {
        let mut h = [0u8; VNET_HDR_TUNNEL];
        h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        h[1] = VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4;
        h[4..6].copy_from_slice(&1398u16.to_ne_bytes());
        h[20..22].copy_from_slice(&20u16.to_ne_bytes());
        h[22..24].copy_from_slice(&50u16.to_ne_bytes());
        assert_eq!(
            parse_vnet_header(&h),
            VnetHeader::Segment(Gso {
                size: 1398,
                inner_ip: 50,
                outer_udp: Some(20)
            })
        );
        // The tunnel flag with only the short header: its offsets are missing.
        assert_eq!(parse_vnet_header(&h[..10]), VnetHeader::Unsupported);
        h[1] = VIRTIO_NET_HDR_GSO_NONE;
        h[6..8].copy_from_slice(&70u16.to_ne_bytes());
        h[8..10].copy_from_slice(&16u16.to_ne_bytes());
        assert_eq!(
            parse_vnet_header(&h),
            VnetHeader::Checksum {
                start: 70,
                offset: 16
            }
        );
        h[0] = 0;
        assert_eq!(parse_vnet_header(&h), VnetHeader::Plain);
        // UDP segmentation and outer checksums were never switched on.
        h[1] = 5;
        assert_eq!(parse_vnet_header(&h), VnetHeader::Unsupported);
        h[1] = VIRTIO_NET_HDR_GSO_TCPV4;
        h[0] = VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM;
        assert_eq!(parse_vnet_header(&h), VnetHeader::Unsupported);
    }

    #[test]
    fn a_workloads_lying_headers_are_refused_whole() {
        let data = payload_of(3 * MSS);
        let (good, inner_ip) = in_vxlan(&tcp(&data, 0x10));
        let gso = Gso {
            size: MSS,
            inner_ip,
            outer_udp: Some(20),
        };
        let mut buf = vec![0u8; 2000];
        let refused = |p: &[u8], g: &Gso, buf: &mut [u8]| {
            let mut handed = 0;
            let r = split(p, g, buf, |_| handed += 1);
            assert_eq!(handed, 0);
            r.unwrap_err()
        };
        let mut not_tcp = good.clone();
        not_tcp[inner_ip + 9] = 17;
        assert_eq!(refused(&not_tcp, &gso, &mut buf), SplitError::Inner);
        let mut ipv6 = good.clone();
        ipv6[inner_ip] = 0x60;
        assert_eq!(refused(&ipv6, &gso, &mut buf), SplitError::Inner);
        let mut huge_doff = good.clone();
        huge_doff[inner_ip + 32] = 0xf0;
        let short = &huge_doff[..inner_ip + 50];
        assert_eq!(refused(short, &gso, &mut buf), SplitError::Inner);
        let past_end = Gso {
            inner_ip: good.len() - 4,
            ..gso
        };
        assert_eq!(refused(&good, &past_end, &mut buf), SplitError::Inner);
        let beyond = Gso {
            inner_ip: 60_000,
            ..gso
        };
        assert_eq!(refused(&good, &beyond, &mut buf), SplitError::Inner);
        let inside_udp = Gso {
            inner_ip: 24,
            ..gso
        };
        assert_eq!(refused(&good, &inside_udp, &mut buf), SplitError::Outer);
        let wrong_udp = Gso {
            outer_udp: Some(24),
            ..gso
        };
        assert_eq!(refused(&good, &wrong_udp, &mut buf), SplitError::Outer);
        for size in [0, 1990] {
            let g = Gso { size, ..gso };
            assert_eq!(refused(&good, &g, &mut buf), SplitError::Size(size));
        }
        let headers_only = &good[..inner_ip + 40];
        assert_eq!(refused(headers_only, &gso, &mut buf), SplitError::Empty);
    }

    #[test]
    fn random_bytes_under_any_header_never_panic() {
        // A small xorshift: the same cases every run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut buf = vec![0u8; 1600];
        let (template, inner_ip) = in_vxlan(&tcp(&payload_of(4000), 0x10));
        for _ in 0..20_000 {
            let mut p = template.clone();
            let len = (next() as usize) % p.len();
            p.truncate(len);
            for _ in 0..(next() % 6) {
                if !p.is_empty() {
                    let at = next() as usize % p.len().min(120);
                    p[at] = next() as u8;
                }
            }
            let gso = Gso {
                size: next() as usize % 1700,
                inner_ip: if next() % 4 == 0 {
                    next() as usize % 200
                } else {
                    inner_ip
                },
                outer_udp: [None, Some(20), Some(next() as usize % 64)][next() as usize % 3],
            };
            let _ = split(&p, &gso, &mut buf, |s| assert!(s.len() <= 1600));
        }
    }
}
