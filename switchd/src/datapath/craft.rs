//! Frames built by hand: the bytes a TAP would hand us. Unit tests and benchmarks use
//! them, and so does `switchctl trace`, whose probe frame is decided by the live datapath.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::Ipv4Net;

use super::frame::{
    mac_for_ip, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_HDR_LEN, VNET_HDR_LEN,
};
use super::table::{gateway_of, Table};

/// A table for the demo node `10.244.1.0/24` in cluster `10.244.0.0/16`, MTU 1450.
pub fn demo_table() -> Table {
    let pod_cidr: Ipv4Net = "10.244.1.0/24".parse().unwrap();
    let cluster: Ipv4Net = "10.244.0.0/16".parse().unwrap();
    Table::new(pod_cidr, cluster, mac_for_ip(gateway_of(pod_cidr)), 1450)
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0u8; VNET_HDR_LEN]);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    out.extend_from_slice(&ethertype.to_be_bytes());
}

/// virtio-net header + Ethernet + IPv4 (valid header checksum) + UDP + `payload` zero bytes.
pub fn ipv4_udp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(VNET_HDR_LEN + ETH_HDR_LEN + 28 + payload);
    eth(dst_mac, src_mac, ETHERTYPE_IPV4, &mut out);
    let total = (20 + 8 + payload) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    out.extend_from_slice(&ip);
    out.extend_from_slice(&4000u16.to_be_bytes());
    out.extend_from_slice(&5000u16.to_be_bytes());
    out.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.resize(out.len() + payload, 0);
    out
}

/// virtio-net header + Ethernet + IPv4 (valid header checksum, DF set) + the first header of
/// `protocol`: an ICMP echo request, a TCP SYN or a UDP header, to `dport` from port 40000
/// (other protocols: no header). Zero-padded to `ip_len` bytes of IP packet, or as long as
/// its headers if `ip_len` is smaller. The L4 checksum is left zero: the forwarding decision
/// never reads it.
#[allow(clippy::too_many_arguments)]
pub fn ipv4_packet(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    dport: u16,
    ip_len: usize,
) -> Vec<u8> {
    let l4: Vec<u8> = match protocol {
        1 => vec![8, 0, 0, 0, 0x53, 0x57, 0, 1],
        6 => {
            let mut tcp = vec![0u8; 20];
            tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
            tcp[2..4].copy_from_slice(&dport.to_be_bytes());
            tcp[12] = 5 << 4;
            tcp[13] = 0x02; // SYN
            tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
            tcp
        }
        17 => {
            let mut udp = vec![0u8; 8];
            udp[0..2].copy_from_slice(&40000u16.to_be_bytes());
            udp[2..4].copy_from_slice(&dport.to_be_bytes());
            udp
        }
        _ => Vec::new(),
    };
    let total = ip_len.max(20 + l4.len()).min(usize::from(u16::MAX));
    let mut out = Vec::with_capacity(VNET_HDR_LEN + ETH_HDR_LEN + total);
    eth(dst_mac, src_mac, ETHERTYPE_IPV4, &mut out);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    out.extend_from_slice(&ip);
    if protocol == 17 {
        let udp_len = (total - 20) as u16;
        let at = out.len();
        out.extend_from_slice(&l4);
        out[at + 4..at + 6].copy_from_slice(&udp_len.to_be_bytes());
    } else {
        out.extend_from_slice(&l4);
    }
    out.resize(VNET_HDR_LEN + ETH_HDR_LEN + total, 0);
    out
}

/// An ARP request from (`src_mac`, `src`) asking who has `target`.
pub fn arp_request(src_mac: [u8; 6], src: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut out = Vec::new();
    eth([0xff; 6], src_mac, ETHERTYPE_ARP, &mut out);
    out.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    out.extend_from_slice(&src_mac);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&target.octets());
    out
}

/// A frame of another ethertype, `len` bytes of Ethernet payload.
pub fn ethertype(ethertype: u16, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    eth(
        [0x33, 0x33, 0, 0, 0, 1],
        mac_for_ip(Ipv4Addr::new(10, 244, 1, 2)),
        ethertype,
        &mut out,
    );
    out.resize(out.len() + len, 0);
    out
}

pub fn truncate(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}

fn checksum(bytes: &[u8]) -> u16 {
    super::checksum::finish(super::checksum::sum(bytes, 0))
}

/// A TCPv4 super-frame as a pod's kernel hands it over with TSO: virtio-net header with
/// `gso_type` TCPv4 and `gso_size` = `mss`, the TCP checksum field holding only the
/// pseudo-header sum (the "partial" checksum), flags ACK|PSH.
pub fn tcp4_super_frame(payload: &[u8], seq: u32, mss: u16) -> Vec<u8> {
    let (a, b) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 2));
    let mut out = Vec::with_capacity(VNET_HDR_LEN + ETH_HDR_LEN + 40 + payload.len());
    eth(
        mac_for_ip(Ipv4Addr::new(10, 244, 1, 1)),
        mac_for_ip(a),
        ETHERTYPE_IPV4,
        &mut out,
    );
    super::offload::VnetHdr::write_tcp4_gso(&mut out, mss, (ETH_HDR_LEN + 20) as u16);
    let total = (40 + payload.len()).min(usize::from(u16::MAX)) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&a.octets());
    ip[16..20].copy_from_slice(&b.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    out.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // ACK|PSH
    tcp[14..16].copy_from_slice(&64000u16.to_be_bytes());
    let pseudo = super::checksum::pseudo_header_v4(a.octets(), b.octets(), 6, 20 + payload.len());
    let partial = !super::checksum::finish(pseudo);
    tcp[16..18].copy_from_slice(&partial.to_be_bytes());
    out.extend_from_slice(&tcp);
    out.extend_from_slice(payload);
    out
}

/// The demo table with a peer node owning `10.244.2.0/24` (peer index 0).
pub fn demo_table_with_peer() -> Table {
    let mut t = demo_table();
    t.tunnel_mtu = 1450;
    t.insert_peer(super::table::PeerRoute {
        pod_cidr: "10.244.2.0/24".parse().unwrap(),
        pod_cidr_v6: None,
        mac: mac_for_ip(Ipv4Addr::new(10, 244, 2, 1)),
    });
    t
}

/// The demo node made dual-stack: `fd10:244:1::/64` in cluster `fd10:244::/32`.
pub fn demo_table_dual_stack() -> Table {
    let mut t = demo_table();
    t.enable_ipv6(
        "fd10:244:1::/64".parse().unwrap(),
        "fd10:244::/32".parse().unwrap(),
    );
    t
}

/// [`demo_table_dual_stack`] with a peer owning `10.244.2.0/24` and `fd10:244:2::/64`.
pub fn demo_table_dual_stack_with_peer() -> Table {
    let mut t = demo_table_dual_stack();
    t.tunnel_mtu = 1450;
    t.insert_peer(super::table::PeerRoute {
        pod_cidr: "10.244.2.0/24".parse().unwrap(),
        pod_cidr_v6: Some("fd10:244:2::/64".parse().unwrap()),
        mac: mac_for_ip(Ipv4Addr::new(10, 244, 2, 1)),
    });
    t
}

/// virtio-net header + Ethernet + IPv6 (hop limit `hop_limit`) + `payload` as it is.
fn ipv6_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    hop_limit: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(VNET_HDR_LEN + ETH_HDR_LEN + 40 + payload.len());
    eth(dst_mac, src_mac, ETHERTYPE_IPV6, &mut out);
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&(payload.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.push(next_header);
    out.push(hop_limit);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    out.extend_from_slice(payload);
    out
}

/// virtio-net header + Ethernet + IPv6 + UDP (checksum left zero) + `payload` zero bytes.
pub fn ipv6_udp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    payload: usize,
) -> Vec<u8> {
    let mut udp = vec![0u8; 8 + payload];
    udp[0..2].copy_from_slice(&4000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&5000u16.to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    ipv6_frame(src_mac, dst_mac, src, dst, 17, 64, &udp)
}

/// An ICMPv6 message of `icmp_type` with `len` bytes of body after the 4-byte header, hop
/// limit 255 and a valid checksum, to `dst` (a multicast `dst` gets its multicast MAC).
pub fn icmpv6(
    src_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    icmp_type: u8,
    len: usize,
) -> Vec<u8> {
    let mut body = vec![0u8; 4 + len];
    body[0] = icmp_type;
    icmpv6_with(src_mac, src, dst, body)
}

fn icmpv6_with(src_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, mut body: Vec<u8>) -> Vec<u8> {
    let sum = super::checksum::sum(
        &body,
        super::checksum::pseudo_header_v6(&src.octets(), &dst.octets(), 58, body.len()),
    );
    body[2..4].copy_from_slice(&super::checksum::finish(sum).to_be_bytes());
    let d = dst.octets();
    let dst_mac = if d[0] == 0xff {
        [0x33, 0x33, d[12], d[13], d[14], d[15]]
    } else {
        [0x0a, 0x58, 0, 0, 0, 1]
    };
    ipv6_frame(src_mac, dst_mac, src, dst, 58, 255, &body)
}

/// A Neighbor Solicitation from (`src_mac`, `src`) for `target`, to the target's
/// solicited-node multicast address, with the source link-layer option.
pub fn neighbor_solicitation(src_mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let t = target.octets();
    let solicited = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    let mut body = vec![135, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&t);
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&src_mac);
    icmpv6_with(src_mac, src, solicited, body)
}

/// An unsolicited Neighbor Advertisement from `src_mac` claiming `target`, to all nodes.
pub fn neighbor_advertisement(src_mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let mut body = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    body.extend_from_slice(&target.octets());
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(&src_mac);
    icmpv6_with(src_mac, src, "ff02::1".parse().unwrap(), body)
}

/// A TCPv6 super-frame as a pod's kernel hands it over with TSO (`gso_type` TCPv6), from
/// `fd10:244:1::2` to `fd10:244:2::2`, partial checksum, flags ACK|PSH.
pub fn tcp6_super_frame(payload: &[u8], seq: u32, mss: u16) -> Vec<u8> {
    let a: Ipv6Addr = "fd10:244:1::2".parse().unwrap();
    let b: Ipv6Addr = "fd10:244:2::2".parse().unwrap();
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // ACK|PSH
    tcp[14..16].copy_from_slice(&64000u16.to_be_bytes());
    let pseudo = super::checksum::pseudo_header_v6(&a.octets(), &b.octets(), 6, 20 + payload.len());
    let partial = !super::checksum::finish(pseudo);
    tcp[16..18].copy_from_slice(&partial.to_be_bytes());
    tcp.extend_from_slice(payload);
    let mut out = ipv6_frame(
        mac_for_ip(Ipv4Addr::new(10, 244, 1, 2)),
        mac_for_ip(Ipv4Addr::new(10, 244, 1, 1)),
        a,
        b,
        6,
        64,
        &tcp,
    );
    super::offload::VnetHdr::write_tcp6_gso(&mut out, mss, (ETH_HDR_LEN + 40) as u16);
    out
}
