//! Frames built by hand for unit tests and benchmarks: the bytes a TAP would hand us.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::frame::{mac_for_ip, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETH_HDR_LEN, VNET_HDR_LEN};
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
    let mut sum = 0u32;
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
