//! The internet checksum (RFC 1071), in one place: ICMP echo requests (`icmp`) and the IPv4
//! header and UDP pseudo-header sums of the userspace tunnel's GSO packets (`wireguard::tun`).

/// The ones'-complement sum of `data` read as big-endian 16-bit words (an odd last byte is
/// padded with a zero byte), added to `acc`, end-around carries included but not the final
/// complement, so that sums over even-length pieces (a pseudo-header, then a header) chain;
/// `fold` finishes it.
pub fn ones_sum(data: &[u8], acc: u32) -> u32 {
    // 32-bit words into a 64-bit accumulator: the same sum (2^16 = 1 in ones' complement
    // arithmetic), a quarter of the additions, and no overflow below 2^34 bytes. The tunnel
    // sums every TCP segment it cuts from a super-packet (`wireguard::offload`).
    let mut sum = u64::from(acc);
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        sum += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let mut pairs = words.remainder().chunks_exact(2);
    for w in &mut pairs {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = pairs.remainder() {
        sum += u64::from(*last) << 8;
    }
    // Folded to 16 bits (plus a carry at most), so callers may add small terms to it.
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u32
}

/// `acc` folded to 16 bits, the carries added back in (end-around carry).
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field's value for `data` (with the field zeroed): the complement of its folded
/// sum. Over data that already carries its right checksum the result is 0.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(ones_sum(data, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_worked_example() {
        // RFC 1071 section 3: these eight bytes sum to ddf2 (after the carry is folded in).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(ones_sum(&data, 0)), 0xddf2);
        assert_eq!(internet_checksum(&data), !0xddf2);
    }

    /// The sum as RFC 1071 writes it: 16-bit words, carries folded at the end.
    fn reference_sum(data: &[u8], acc: u32) -> u16 {
        let mut sum = u64::from(acc);
        for w in data.chunks(2) {
            sum += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        fold_u64(sum)
    }

    fn fold_u64(mut sum: u64) -> u16 {
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn the_wide_sum_equals_the_sixteen_bit_one_at_every_length_and_start() {
        let data: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in (0..64).chain([1499, 1500, 9000, 65_535, 70_000]) {
            for acc in [0, 1, 0xffff, 0x1_fffe, 0xffff_0000] {
                assert_eq!(
                    fold(ones_sum(&data[..len], acc)),
                    reference_sum(&data[..len], acc),
                    "length {len}, accumulator {acc:#x}"
                );
            }
        }
        // All ones: the largest sums fold without overflow.
        let ones = vec![0xffu8; 65_536];
        assert_eq!(
            fold(ones_sum(&ones, u32::MAX)),
            reference_sum(&ones, u32::MAX)
        );
        // Pieces of even length chain.
        let whole = ones_sum(&data[..3000], 0);
        let chained = ones_sum(&data[1000..3000], ones_sum(&data[..1000], 0));
        assert_eq!(fold(whole), fold(chained));
    }

    #[test]
    fn a_real_ipv4_header() {
        // 192.168.0.1 -> 192.168.0.199, UDP, TTL 64, length 115: checksum b861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(
            internet_checksum(&h),
            0,
            "a header with its checksum sums to all ones"
        );
    }

    #[test]
    fn odd_lengths_pad_and_pieces_chain() {
        assert_eq!(ones_sum(&[1], 0), 0x100);
        assert_eq!(ones_sum(&[0x12, 0x34, 0x56], 0), 0x1234 + 0x5600);
        let data = [0xab, 0xcd, 0x12, 0x34, 0xff, 0xff];
        assert_eq!(
            fold(ones_sum(&data[2..], ones_sum(&data[..2], 0))),
            fold(ones_sum(&data, 0))
        );
    }

    #[test]
    fn long_inputs_keep_their_carries() {
        // 2^20 words of ffff: the sum must not overflow, and ffff folds to itself.
        let data = vec![0xff; 1 << 21];
        assert_eq!(fold(ones_sum(&data, 0)), 0xffff);
        assert_eq!(internet_checksum(&data), 0);
        // 0x8000 + 0x8000 carries out once: 0x0001.
        assert_eq!(fold(ones_sum(&[0x80, 0, 0x80, 0], 0)), 1);
    }
}
