//! The Internet checksum (RFC 1071), used by IPv4, UDP and ICMP headers.

use core::net::Ipv4Addr;

/// One's-complement sum of `data` as big-endian 16-bit words (odd length padded with a zero byte), folded
/// to 16 bits. Not complemented.
pub fn sum(data: &[u8]) -> u16 {
    fold(accumulate(0, data))
}

/// Adds `data` to a running 64-bit accumulator. Eight bytes at a time: the carries land in the high bits
/// and [`fold`] returns them, which is what one's-complement addition needs.
pub fn accumulate(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let v = u64::from_be_bytes(w);
        // Add the two 32-bit halves so the 64-bit accumulator cannot overflow for any realistic length.
        acc += (v >> 32) + (v & 0xffff_ffff);
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        if let &[a, b] = c {
            acc += u64::from(u16::from_be_bytes([a, b]));
        }
    }
    if let Some(&last) = rest.remainder().first() {
        acc += u64::from(last) << 8;
    }
    acc
}

/// Folds an accumulator to 16 bits with end-around carry.
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value for `data` whose checksum field is zero: the complement of [`sum`].
pub fn checksum(data: &[u8]) -> u16 {
    !sum(data)
}

/// Accumulator value of the UDP/TCP pseudo-header (RFC 768): source, destination, zero, protocol, length.
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u64 {
    let s = src.to_bits();
    let d = dst.to_bits();
    u64::from(s >> 16)
        + u64::from(s & 0xffff)
        + u64::from(d >> 16)
        + u64::from(d & 0xffff)
        + u64::from(protocol)
        + u64::from(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        assert_eq!(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), 0xddf2);
    }

    #[test]
    fn chunked_equals_naive() {
        let data: Vec<u8> = (0..1001u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 2, 7, 8, 9, 63, 64, 65, 1001] {
            let d = &data[..len];
            let mut naive: u32 = 0;
            for c in d.chunks(2) {
                naive += u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
            }
            while naive > 0xffff {
                naive = (naive & 0xffff) + (naive >> 16);
            }
            assert_eq!(sum(d), naive as u16, "len {len}");
        }
    }

    #[test]
    fn known_ipv4_header() {
        // A classic example header (checksum b861).
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
    }
}
