//! Byte layouts the core reads and writes: the virtio-net header that prefixes every frame on
//! a TAP opened with `IFF_VNET_HDR`, and the few Ethernet fields the core rewrites.

/// Length of `struct virtio_net_hdr_v1` (with `num_buffers`), set on every TAP with
/// `TUNSETVNETHDRSZ`. Every buffer the core sees starts with one.
pub const VNET_HDR_LEN: usize = 12;
pub const ETH_HDR_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Write an all-zero virtio-net header: a plain frame with a complete checksum.
#[inline]
pub fn clear_vnet_hdr(buf: &mut [u8]) {
    buf[..VNET_HDR_LEN].fill(0);
}

#[inline]
pub fn set_eth_dst(frame: &mut [u8], mac: [u8; 6]) {
    frame[0..6].copy_from_slice(&mac);
}

#[inline]
pub fn set_eth_src(frame: &mut [u8], mac: [u8; 6]) {
    frame[6..12].copy_from_slice(&mac);
}

#[inline]
pub fn eth_dst(frame: &[u8]) -> [u8; 6] {
    [frame[0], frame[1], frame[2], frame[3], frame[4], frame[5]]
}

/// A locally administered unicast MAC derived from an IPv4 address: `0a:58:a:b:c:d`
/// (the same convention as OVN-Kubernetes and the reference plugins' `0a:58` prefix), so a
/// pod's MAC is predictable from its address and unique within the cluster.
pub fn mac_for_ip(ip: std::net::Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

pub fn format_mac(mac: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_is_local_unicast() {
        let mac = mac_for_ip("10.244.1.7".parse().unwrap());
        assert_eq!(format_mac(mac), "0a:58:0a:f4:01:07");
        assert_eq!(parse_mac("0a:58:0a:f4:01:07"), Some(mac));
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        assert_eq!(parse_mac("0a:58:0a:f4:01"), None);
        assert_eq!(parse_mac("0a:58:0a:f4:01:07:09"), None);
        assert_eq!(parse_mac("zz:58:0a:f4:01:07"), None);
    }
}
