//! ICMP "fragmentation needed" (type 3, code 4, RFC 1191): the answer to a packet too big for
//! the tunnel, so the sender's path-MTU discovery shrinks its packets instead of them
//! vanishing.

use super::checksum;
use super::frame::{clear_vnet_hdr, ETHERTYPE_IPV4, ETH_HDR_LEN, VNET_HDR_LEN};
use super::table::Table;

/// The original IP header plus this many bytes of its payload are quoted back.
const QUOTED_PAYLOAD: usize = 8;
/// Largest reply: virtio-net + Ethernet + IPv4 + ICMP + (60-byte IP header + 8).
pub const MAX_REPLY_LEN: usize = VNET_HDR_LEN + ETH_HDR_LEN + 20 + 8 + 60 + QUOTED_PAYLOAD;

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
