//! The internet checksum (RFC 1071), in one place: ICMP echo requests (`icmp`) and the IPv4
//! header and UDP pseudo-header sums of the userspace tunnel's GSO packets (`wireguard::tun`).

/// The ones'-complement sum of `data` read as big-endian 16-bit words (an odd last byte is
/// padded with a zero byte), added to `acc`. Left unfolded so that sums over pieces (a
/// pseudo-header, then a header) chain; `fold` finishes it.
pub fn ones_sum(data: &[u8], mut acc: u32) -> u32 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([w[0], w[1]])));
        // Fold early so long inputs never overflow the accumulator.
        if acc > 0xffff_0000 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    if let [last] = words.remainder() {
        acc = acc.wrapping_add(u32::from(*last) << 8);
    }
    acc
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
        assert_eq!(ones_sum(&data, 0), 0x2ddf0);
        assert_eq!(fold(ones_sum(&data, 0)), 0xddf2);
        assert_eq!(internet_checksum(&data), !0xddf2);
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
