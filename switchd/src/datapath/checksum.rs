//! The Internet checksum (RFC 1071), summed eight bytes at a time.

/// Add `bytes` to a running one's-complement sum (not yet folded).
#[inline]
pub fn sum(bytes: &[u8], mut acc: u64) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Fold a running sum to 16 bits and complement it: the value to store in a header.
#[inline]
pub fn finish(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The IPv4 pseudo-header of a TCP or UDP checksum.
#[inline]
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], protocol: u8, len: usize) -> u64 {
    sum(&src, 0) + sum(&dst, 0) + u64::from(protocol) + len as u64
}

/// The IPv6 pseudo-header of a TCP, UDP or ICMPv6 checksum (RFC 8200 section 8.1).
#[inline]
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], next_header: u8, len: usize) -> u64 {
    sum(src, 0) + sum(dst, 0) + u64::from(next_header) + len as u64
}

/// The pseudo-header of the packet whose IP header (either version, by its first nibble)
/// starts `ip`, for a transport of `protocol` and `len` bytes.
#[inline]
pub fn pseudo_header_of(ip: &[u8], protocol: u8, len: usize) -> u64 {
    if ip[0] >> 4 == 6 {
        let src: &[u8; 16] = ip[8..24].try_into().unwrap();
        let dst: &[u8; 16] = ip[24..40].try_into().unwrap();
        pseudo_header_v6(src, dst, protocol, len)
    } else {
        let src = [ip[12], ip[13], ip[14], ip[15]];
        let dst = [ip[16], ip[17], ip[18], ip[19]];
        pseudo_header_v4(src, dst, protocol, len)
    }
}

/// Recompute an IPv4 header's checksum in place.
#[inline]
pub fn fix_ipv4_header(ip_header: &mut [u8]) {
    ip_header[10] = 0;
    ip_header[11] = 0;
    let c = finish(sum(ip_header, 0));
    ip_header[10..12].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward 16-bit reference implementation.
    fn reference(bytes: &[u8]) -> u16 {
        let mut s = 0u32;
        for p in bytes.chunks(2) {
            s += u32::from(u16::from_be_bytes([p[0], *p.get(1).unwrap_or(&0)]));
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn matches_the_reference_for_every_length_and_alignment() {
        let data: Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..8 {
            for len in 0..(data.len() - start) {
                let s = &data[start..start + len];
                assert_eq!(finish(sum(s, 0)), reference(s), "start {start} len {len}");
            }
        }
    }

    #[test]
    fn rfc_1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2 (complement 220d).
        assert_eq!(
            finish(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0)),
            !0xddf2
        );
    }
}
