//! The IPv6 header and the walk over its extension headers, bounds-checked at every step.
//!
//! The core needs three things from an IPv6 packet: its addresses, its hop limit, and which
//! upper-layer protocol (and where) follows the extension headers, to recognise Neighbor
//! Discovery and MLD, which may sit behind a Hop-by-Hop header.

use super::DropReason;

pub const IPV6_HDR_LEN: usize = 40;
pub const NEXT_HEADER_UDP: u8 = 17;
pub const NEXT_HEADER_ICMPV6: u8 = 58;
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const DEST_OPTIONS: u8 = 60;
/// More extension headers than this is no real traffic; refuse rather than walk on.
const MAX_EXTENSION_HEADERS: usize = 8;

/// What the core reads from an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Info {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub hop_limit: u8,
    /// The protocol after the extension headers (of a later fragment: its Fragment
    /// header's Next Header, since the headers after it travel in the first fragment).
    pub upper: u8,
    /// Where the upper-layer header starts (from the IPv6 header's first byte); `None` for
    /// a fragment other than the first, which carries none.
    pub upper_at: Option<usize>,
    /// Length of the packet by its header (40 + payload length), never more than the
    /// bytes at hand; Ethernet padding is not part of it.
    pub len: usize,
    /// The Fragment header's identification and whether more fragments follow, when the
    /// packet is a fragment.
    pub fragment: Option<(u32, bool)>,
}

/// Parse the IPv6 packet at the start of `ip`.
pub fn parse(ip: &[u8]) -> Result<Ipv6Info, DropReason> {
    if ip.len() < IPV6_HDR_LEN || ip[0] >> 4 != 6 {
        return Err(DropReason::Malformed);
    }
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    // A TSO super-frame may carry more than its header says; a padded frame less.
    let len = (IPV6_HDR_LEN + payload_len).min(ip.len());
    let mut next = ip[6];
    let mut at = IPV6_HDR_LEN;
    let mut fragment = None;
    let info = |upper: u8, upper_at: Option<usize>, fragment| Ipv6Info {
        src: ip[8..24].try_into().unwrap(),
        dst: ip[24..40].try_into().unwrap(),
        hop_limit: ip[7],
        upper,
        upper_at,
        len,
        fragment,
    };
    // At most MAX_EXTENSION_HEADERS headers, then the upper layer.
    for _ in 0..=MAX_EXTENSION_HEADERS {
        let ext_len = match next {
            HOP_BY_HOP | ROUTING | DEST_OPTIONS => {
                let h = ip.get(at..at + 2).ok_or(DropReason::Malformed)?;
                (usize::from(h[1]) + 1) * 8
            }
            AUTH => {
                let h = ip.get(at..at + 2).ok_or(DropReason::Malformed)?;
                (usize::from(h[1]) + 2) * 4
            }
            FRAGMENT => {
                let h = ip.get(at..at + 8).ok_or(DropReason::Malformed)?;
                if at + 8 > len {
                    return Err(DropReason::Malformed);
                }
                let offset_flags = u16::from_be_bytes([h[2], h[3]]);
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                fragment = Some((id, offset_flags & 1 != 0));
                if offset_flags & 0xfff8 != 0 {
                    // A later fragment: what follows is the middle of the payload, not
                    // headers. Its protocol is the Fragment header's Next Header.
                    return Ok(info(h[0], None, fragment));
                }
                8
            }
            _ => return Ok(info(next, Some(at), fragment)),
        };
        if at + ext_len > len {
            return Err(DropReason::Malformed);
        }
        next = ip[at];
        at += ext_len;
    }
    Err(DropReason::Malformed)
}

#[inline]
pub fn is_multicast(addr: &[u8; 16]) -> bool {
    addr[0] == 0xff
}

/// `fe80::/10`: never routed off the link it belongs to.
#[inline]
pub fn is_link_local(addr: &[u8; 16]) -> bool {
    addr[0] == 0xfe && addr[1] & 0xc0 == 0x80
}

#[inline]
pub fn is_unspecified(addr: &[u8; 16]) -> bool {
    *addr == [0; 16]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(next: u8, payload: &[u8]) -> Vec<u8> {
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        ip.push(next);
        ip.push(255);
        ip.extend_from_slice(&[0xfd, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        ip.extend_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16]);
        ip.extend_from_slice(payload);
        ip
    }

    #[test]
    fn the_upper_layer_is_found_behind_extension_headers() {
        let plain = header(NEXT_HEADER_ICMPV6, &[143, 0, 0, 0]);
        let i = parse(&plain).unwrap();
        assert_eq!((i.upper, i.upper_at, i.hop_limit), (58, Some(40), 255));
        assert_eq!(i.src[15], 2);
        // An MLDv2 report as Linux sends it: Hop-by-Hop with Router Alert, then ICMPv6.
        let mut hbh = vec![NEXT_HEADER_ICMPV6, 0, 5, 2, 0, 0, 1, 0];
        hbh.extend_from_slice(&[143, 0, 0, 0]);
        let i = parse(&header(HOP_BY_HOP, &hbh)).unwrap();
        assert_eq!((i.upper, i.upper_at), (58, Some(48)));
        // Destination options then a first fragment then UDP.
        let mut chain = vec![FRAGMENT, 0, 0, 0, 0, 0, 0, 0];
        chain.extend_from_slice(&[NEXT_HEADER_UDP, 0, 0, 1, 0, 0, 0, 7]);
        chain.extend_from_slice(&[0; 8]);
        let i = parse(&header(DEST_OPTIONS, &chain)).unwrap();
        assert_eq!((i.upper, i.upper_at), (17, Some(56)));
        assert_eq!(
            i.fragment,
            Some((7, true)),
            "a first fragment, more to follow"
        );
        // A later fragment has no upper-layer header; what follows it is payload, even
        // when it looks like an extension header.
        let mut later = vec![NEXT_HEADER_UDP, 0, 0x05, 0x01, 0, 0, 0, 7];
        later.extend_from_slice(&[DEST_OPTIONS, 0xff, 0, 0, 0, 0, 0, 0]);
        let i = parse(&header(FRAGMENT, &later)).unwrap();
        assert_eq!(
            (i.upper, i.upper_at, i.fragment),
            (17, None, Some((7, true)))
        );
    }

    #[test]
    fn truncated_or_endless_chains_are_malformed() {
        assert_eq!(parse(&[0x60; 39]), Err(DropReason::Malformed));
        let mut v4 = header(58, &[]);
        v4[0] = 0x45;
        assert_eq!(parse(&v4), Err(DropReason::Malformed));
        // A Hop-by-Hop header claiming 16 bytes with 8 present.
        let hbh = vec![NEXT_HEADER_ICMPV6, 1, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse(&header(HOP_BY_HOP, &hbh)), Err(DropReason::Malformed));
        // Nine extension headers in a row are refused; eight are walked.
        let mut chain: Vec<u8> = (0..8)
            .flat_map(|_| [DEST_OPTIONS, 0, 0, 0, 0, 0, 0, 0])
            .collect();
        chain.extend_from_slice(&[NEXT_HEADER_UDP, 0, 0, 0, 0, 0, 0, 0]);
        chain.extend_from_slice(&[0; 8]);
        assert_eq!(
            parse(&header(DEST_OPTIONS, &chain)),
            Err(DropReason::Malformed)
        );
        let eight = parse(&header(DEST_OPTIONS, &chain[8..])).unwrap();
        assert_eq!((eight.upper, eight.upper_at), (17, Some(40 + 64)));
        // A payload length beyond the frame is cut to the frame.
        let mut short = header(NEXT_HEADER_UDP, &[0; 8]);
        short[4] = 0xff;
        assert_eq!(parse(&short).unwrap().len, 48);
    }

    #[test]
    fn address_classes() {
        let ll: [u8; 16] = "fe80::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let ula: [u8; 16] = "fd10::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let mc: [u8; 16] = "ff02::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
        assert!(is_link_local(&ll) && !is_link_local(&ula) && !is_link_local(&mc));
        assert!(is_multicast(&mc) && !is_multicast(&ula));
        assert!(is_unspecified(&[0; 16]) && !is_unspecified(&ula));
    }
}
