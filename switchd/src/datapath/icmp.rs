//! ICMP "fragmentation needed" (type 3, code 4, RFC 1191) and its IPv6 twin, ICMPv6
//! "packet too big" (RFC 8201): the answer to a packet too big for the tunnel, so the
//! sender's path-MTU discovery shrinks its packets instead of them vanishing. IPv6 is never
//! fragmented in transit, so there the answer is the only way a too-big packet gets through.

use super::checksum;
use super::frame::{clear_vnet_hdr, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_HDR_LEN, VNET_HDR_LEN};
use super::ipv6::NEXT_HEADER_ICMPV6;
use super::table::Table;

/// The original IP header plus this many bytes of its payload are quoted back.
const QUOTED_PAYLOAD: usize = 8;
/// Of a too-big IPv6 packet, this much is quoted: its header, extension headers and the
/// transport header, which is all the sender needs to find the socket.
const QUOTED_V6: usize = 112;
const V4_REPLY_LEN: usize = VNET_HDR_LEN + ETH_HDR_LEN + 20 + 8 + 60 + QUOTED_PAYLOAD;
const V6_REPLY_LEN: usize = VNET_HDR_LEN + ETH_HDR_LEN + 40 + 8 + QUOTED_V6;
/// Largest reply the core writes: ICMP errors, ARP and Neighbor Discovery answers.
pub const MAX_REPLY_LEN: usize = if V4_REPLY_LEN > V6_REPLY_LEN {
    V4_REPLY_LEN
} else {
    V6_REPLY_LEN
};
const _: () = assert!(MAX_REPLY_LEN >= super::ndp::REPLY_LEN);
const _: () = assert!(MAX_REPLY_LEN >= super::arp::REPLY_LEN);

/// Write into `reply` a frame telling the sender of `frame` (an Ethernet + IPv4 frame whose
/// header was already validated) that the next hop takes at most `mtu` bytes. Returns the
/// reply's length.
pub fn frag_needed(frame: &[u8], table: &Table, mtu: u32, reply: &mut [u8]) -> usize {
    let ip = &frame[ETH_HDR_LEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let quoted = &ip[..(ihl + QUOTED_PAYLOAD).min(ip.len())];
    let icmp_len = 8 + quoted.len();
    let total = VNET_HDR_LEN + ETH_HDR_LEN + 20 + icmp_len;
    let out = &mut reply[..total];
    clear_vnet_hdr(out);

    let eth = &mut out[VNET_HDR_LEN..];
    eth[0..6].copy_from_slice(&frame[6..12]);
    eth[6..12].copy_from_slice(&table.router_mac);
    eth[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());

    let ip_out = &mut eth[ETH_HDR_LEN..];
    ip_out[..20].fill(0);
    ip_out[0] = 0x45;
    ip_out[1] = 0xc0; // internetwork control, as Linux sends its ICMP errors
    ip_out[2..4].copy_from_slice(&((20 + icmp_len) as u16).to_be_bytes());
    ip_out[8] = 64;
    ip_out[9] = 1;
    ip_out[12..16].copy_from_slice(&table.gateway.octets());
    ip_out[16..20].copy_from_slice(&ip[12..16]);
    checksum::fix_ipv4_header(&mut ip_out[..20]);

    let icmp = &mut ip_out[20..20 + icmp_len];
    icmp[..8].fill(0);
    icmp[0] = 3;
    icmp[1] = 4;
    icmp[6..8].copy_from_slice(&(mtu.min(u32::from(u16::MAX)) as u16).to_be_bytes());
    icmp[8..].copy_from_slice(quoted);
    let c = checksum::finish(checksum::sum(icmp, 0));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    total
}

/// Write into `reply` an ICMPv6 "packet too big" telling the sender of `frame` (Ethernet +
/// IPv6, header validated) that the next hop takes at most `mtu` bytes, from the node's
/// IPv6 gateway. Returns the reply's length; 0 on a node without IPv6.
pub fn packet_too_big(frame: &[u8], table: &Table, mtu: u32, reply: &mut [u8]) -> usize {
    let Some(v6) = table.v6.as_ref() else {
        return 0;
    };
    let ip = &frame[ETH_HDR_LEN..];
    let quoted = &ip[..QUOTED_V6.min(ip.len())];
    let icmp_len = 8 + quoted.len();
    let total = VNET_HDR_LEN + ETH_HDR_LEN + 40 + icmp_len;
    let out = &mut reply[..total];
    clear_vnet_hdr(out);

    let eth = &mut out[VNET_HDR_LEN..];
    eth[0..6].copy_from_slice(&frame[6..12]);
    eth[6..12].copy_from_slice(&table.router_mac);
    eth[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());

    let src = v6.gateway.octets();
    let dst: [u8; 16] = ip[8..24].try_into().unwrap();
    let ip_out = &mut eth[ETH_HDR_LEN..];
    ip_out[..4].copy_from_slice(&[0x60, 0, 0, 0]);
    ip_out[4..6].copy_from_slice(&(icmp_len as u16).to_be_bytes());
    ip_out[6] = NEXT_HEADER_ICMPV6;
    ip_out[7] = 64;
    ip_out[8..24].copy_from_slice(&src);
    ip_out[24..40].copy_from_slice(&dst);

    let icmp = &mut ip_out[40..40 + icmp_len];
    icmp[..8].fill(0);
    icmp[0] = 2; // packet too big
    icmp[4..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[8..].copy_from_slice(quoted);
    let sum = checksum::sum(
        icmp,
        checksum::pseudo_header_v6(&src, &dst, NEXT_HEADER_ICMPV6, icmp_len),
    );
    icmp[2..4].copy_from_slice(&checksum::finish(sum).to_be_bytes());
    total
}
