//! Health probes between nodes, as frames: an ICMP echo request from this node's gateway
//! address to a peer's, addressed and encapsulated like any pod's frame to that peer, and
//! the check that tells its echo reply from the node's own traffic. The peer's node stack
//! answers (switchd's or a kernel VXLAN node's alike), so a probe crosses the same tunnel,
//! underlay and remote switch that pods' packets cross.

use std::net::Ipv4Addr;

use super::checksum;
use super::craft;
use super::frame::{ETHERTYPE_IPV4, ETH_HDR_LEN, VNET_HDR_LEN};

/// The ICMP identifier of every probe: "SD".
pub const ICMP_ID: u16 = 0x5344;
/// The first payload bytes of every probe, before its sequence number.
pub const MAGIC: [u8; 4] = *b"swpr";
/// The smallest probe: IP and ICMP headers, magic and sequence number.
pub const MIN_IP_LEN: usize = 20 + 8 + 8;

/// A probe frame (virtio-net header + Ethernet), `ip_len` bytes of IP packet with DF set,
/// from `src` (with MAC `src_mac`) to `dst` at `dst_mac`, carrying sequence number `seq`.
pub fn echo_request(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    seq: u32,
    ip_len: usize,
) -> Vec<u8> {
    let mut f = craft::ipv4_packet(src_mac, dst_mac, src, dst, 1, 0, ip_len.max(MIN_IP_LEN));
    let icmp = &mut f[VNET_HDR_LEN + ETH_HDR_LEN + 20..];
    icmp[4..6].copy_from_slice(&ICMP_ID.to_be_bytes());
    icmp[6..8].copy_from_slice(&(seq as u16).to_be_bytes());
    icmp[8..12].copy_from_slice(&MAGIC);
    icmp[12..16].copy_from_slice(&seq.to_be_bytes());
    icmp[2..4].fill(0);
    let sum = checksum::finish(checksum::sum(icmp, 0));
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// If `frame` (Ethernet) is an echo reply to one of our probes, its sequence number and
/// the IP length it came back with.
#[inline]
pub fn echo_reply(frame: &[u8]) -> Option<(u32, usize)> {
    if frame.get(12..14)? != ETHERTYPE_IPV4.to_be_bytes() {
        return None;
    }
    let ip = &frame[ETH_HDR_LEN..];
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    if *ip.get(9)? != 1 || ihl < 20 {
        return None;
    }
    let icmp = ip.get(ihl..ihl + 16)?;
    if icmp[0] != 0 || icmp[4..6] != ICMP_ID.to_be_bytes() || icmp[8..12] != MAGIC {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    Some((u32::from_be_bytes(icmp[12..16].try_into().unwrap()), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the peer's stack does with an echo request: swap the addresses and MACs, set
    /// the type to reply, fix the ICMP checksum.
    fn answer(req: &[u8]) -> Vec<u8> {
        let mut f = req[VNET_HDR_LEN..].to_vec();
        let (dst, src) = (f[0..6].to_vec(), f[6..12].to_vec());
        f[0..6].copy_from_slice(&src);
        f[6..12].copy_from_slice(&dst);
        let ip = &mut f[ETH_HDR_LEN..];
        let (s, d) = (ip[12..16].to_vec(), ip[16..20].to_vec());
        ip[12..16].copy_from_slice(&d);
        ip[16..20].copy_from_slice(&s);
        ip[20] = 0;
        f
    }

    #[test]
    fn a_probe_is_a_valid_echo_request_and_only_its_reply_is_recognised() {
        let (a, b) = (Ipv4Addr::new(10, 244, 1, 1), Ipv4Addr::new(10, 244, 2, 1));
        let req = echo_request([2; 6], [4; 6], a, b, 0x0102_0304, 1350);
        assert_eq!(req.len(), VNET_HDR_LEN + ETH_HDR_LEN + 1350);
        let icmp = &req[VNET_HDR_LEN + ETH_HDR_LEN + 20..];
        assert_eq!(
            checksum::finish(checksum::sum(icmp, 0)),
            0,
            "ICMP checksum valid"
        );
        assert_eq!(req[VNET_HDR_LEN + ETH_HDR_LEN + 6] & 0x40, 0x40, "DF set");
        assert_eq!(
            echo_reply(&req[VNET_HDR_LEN..]),
            None,
            "a request is not a reply"
        );
        assert_eq!(echo_reply(&answer(&req)), Some((0x0102_0304, 1350)));
        // A pod's or the node's own ping reply is not ours.
        let mut theirs = answer(&req);
        theirs[ETH_HDR_LEN + 24] = 0x99;
        assert_eq!(echo_reply(&theirs), None);
        let small = echo_request([2; 6], [4; 6], a, b, 7, 0);
        assert_eq!(small.len(), VNET_HDR_LEN + ETH_HDR_LEN + MIN_IP_LEN);
        for len in 0..small.len() - VNET_HDR_LEN {
            let _ = echo_reply(&answer(&small)[..len]);
        }
    }
}
