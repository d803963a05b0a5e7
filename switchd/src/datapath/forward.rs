//! The forwarding decision for one frame.

use etherparse::{Ethernet2HeaderSlice, Ipv4HeaderSlice};

use super::arp;
use super::frame::{
    eth_dst, gso_type, set_eth_dst, set_eth_src, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETH_HDR_LEN,
    VIRTIO_NET_HDR_GSO_NONE, VNET_HDR_LEN,
};
use super::table::{PortId, Table, HOST_PORT};
use super::DropReason;

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write the buffer (possibly rewritten in place) to this port.
    Forward(PortId),
    /// Write `reply[..len]` back to the port the frame came from (an ARP answer).
    Reply(usize),
    Drop(DropReason),
}

/// Decide what happens to `buf`, a frame read from `in_port`: virtio-net header followed by
/// an Ethernet frame. MAC addresses may be rewritten in place when the frame is routed
/// rather than switched. `reply` must hold at least [`arp::REPLY_LEN`] bytes.
#[inline]
pub fn forward(buf: &mut [u8], in_port: PortId, table: &Table, reply: &mut [u8]) -> Verdict {
    if buf.len() < VNET_HDR_LEN + ETH_HDR_LEN {
        return Verdict::Drop(DropReason::Malformed);
    }
    let gso = gso_type(buf);
    let frame = &mut buf[VNET_HDR_LEN..];
    let ethertype = match Ethernet2HeaderSlice::from_slice(frame) {
        Ok(eth) => eth.ether_type().0,
        Err(_) => return Verdict::Drop(DropReason::Malformed),
    };
    match ethertype {
        ETHERTYPE_IPV4 => forward_ipv4(frame, gso, in_port, table),
        ETHERTYPE_ARP => match arp::answer(frame, in_port, table, reply) {
            Ok(len) => Verdict::Reply(len),
            Err(reason) => Verdict::Drop(reason),
        },
        _ => Verdict::Drop(DropReason::UnsupportedProtocol),
    }
}

#[inline]
fn forward_ipv4(frame: &mut [u8], gso: u8, in_port: PortId, table: &Table) -> Verdict {
    let (src, dst) = match Ipv4HeaderSlice::from_slice(&frame[ETH_HDR_LEN..]) {
        Ok(ip) => (ip.source(), ip.destination()),
        Err(_) => return Verdict::Drop(DropReason::Malformed),
    };
    if gso == VIRTIO_NET_HDR_GSO_NONE && frame.len() - ETH_HDR_LEN > table.mtu as usize {
        return Verdict::Drop(DropReason::TooBig);
    }
    match table.ports.get(&in_port) {
        Some(p) => match p.allowed_src {
            Some(allowed) if allowed.octets() != src => {
                return Verdict::Drop(DropReason::SpoofedSource)
            }
            _ => {}
        },
        // A port removed from the table while its last frames were in flight.
        None => return Verdict::Drop(DropReason::NoRoute),
    }
    if dst[0] >= 224 || dst == [255; 4] {
        return Verdict::Drop(DropReason::Multicast);
    }

    if let Some(ep) = table.lookup(dst) {
        if ep.port == in_port {
            return Verdict::Drop(DropReason::Loop);
        }
        // Switched frames already carry the pod's MAC; routed ones (sent to the gateway MAC)
        // get the pod's MAC and the router's as their source, as a router would write them.
        if eth_dst(frame) != ep.mac {
            set_eth_dst(frame, ep.mac);
            set_eth_src(frame, table.router_mac);
        }
        return Verdict::Forward(ep.port);
    }
    let dst_addr = std::net::Ipv4Addr::from(dst);
    if table.cluster_cidr.contains(&dst_addr)
        || table.pod_cidr.contains(&dst_addr)
        || in_port == HOST_PORT
    {
        // A pod address nobody holds here (remote nodes come with the tunnel), or the node
        // sending something that is not for a pod.
        return Verdict::Drop(DropReason::NoRoute);
    }
    // Anything else leaves through the node, which routes it like its own traffic.
    set_eth_dst(frame, table.router_mac);
    Verdict::Forward(HOST_PORT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::craft;
    use crate::datapath::frame::mac_for_ip;
    use std::net::Ipv4Addr;

    const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
    const GW: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);

    fn table() -> Table {
        let mut t = craft::demo_table();
        t.insert_pod(1, A, mac_for_ip(A));
        t.insert_pod(2, B, mac_for_ip(B));
        t
    }

    fn run(buf: &mut [u8], in_port: PortId, t: &Table) -> (Verdict, Vec<u8>) {
        let mut reply = [0u8; 128];
        let v = forward(buf, in_port, t, &mut reply);
        let r = match v {
            Verdict::Reply(n) => reply[..n].to_vec(),
            _ => vec![],
        };
        (v, r)
    }

    #[test]
    fn pod_to_pod_on_the_node_is_switched_unchanged() {
        let t = table();
        let mut f = craft::ipv4_udp(mac_for_ip(A), mac_for_ip(B), A, B, 100);
        let before = f.clone();
        assert_eq!(run(&mut f, 1, &t).0, Verdict::Forward(2));
        assert_eq!(f, before, "a switched frame is not rewritten");
    }

    #[test]
    fn frame_to_the_gateway_mac_for_a_pod_is_routed_with_rewritten_macs() {
        let t = table();
        let mut f = craft::ipv4_udp(mac_for_ip(A), t.router_mac, A, B, 100);
        assert_eq!(run(&mut f, 1, &t).0, Verdict::Forward(2));
        assert_eq!(&f[VNET_HDR_LEN..VNET_HDR_LEN + 6], &mac_for_ip(B));
        assert_eq!(&f[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12], &t.router_mac);
    }

    #[test]
    fn host_reaches_pod_and_pod_reaches_host_and_the_outside() {
        let t = table();
        let mut f = craft::ipv4_udp(t.router_mac, mac_for_ip(A), GW, A, 10);
        assert_eq!(run(&mut f, HOST_PORT, &t).0, Verdict::Forward(1));
        let mut f = craft::ipv4_udp(mac_for_ip(A), t.router_mac, A, GW, 10);
        assert_eq!(run(&mut f, 1, &t).0, Verdict::Forward(HOST_PORT));
        let outside = Ipv4Addr::new(192, 0, 2, 9);
        let mut f = craft::ipv4_udp(mac_for_ip(A), t.router_mac, A, outside, 10);
        assert_eq!(run(&mut f, 1, &t).0, Verdict::Forward(HOST_PORT));
    }

    #[test]
    fn undeliverable_frames_are_dropped_with_their_reason() {
        let t = table();
        let cases: Vec<(Vec<u8>, PortId, DropReason)> = vec![
            (vec![0u8; 20], 1, DropReason::Malformed),
            (
                craft::truncate(
                    craft::ipv4_udp(mac_for_ip(A), mac_for_ip(B), A, B, 0),
                    VNET_HDR_LEN + 20,
                ),
                1,
                DropReason::Malformed,
            ),
            (
                craft::ethertype(0x86dd, 60),
                1,
                DropReason::UnsupportedProtocol,
            ),
            (
                craft::ipv4_udp(
                    mac_for_ip(A),
                    t.router_mac,
                    A,
                    Ipv4Addr::new(10, 244, 1, 77),
                    10,
                ),
                1,
                DropReason::NoRoute,
            ),
            (
                craft::ipv4_udp(
                    mac_for_ip(A),
                    t.router_mac,
                    A,
                    Ipv4Addr::new(10, 244, 9, 7),
                    10,
                ),
                1,
                DropReason::NoRoute,
            ),
            (
                craft::ipv4_udp(
                    t.router_mac,
                    t.router_mac,
                    GW,
                    Ipv4Addr::new(192, 0, 2, 1),
                    10,
                ),
                HOST_PORT,
                DropReason::NoRoute,
            ),
            (
                craft::ipv4_udp(mac_for_ip(A), mac_for_ip(B), B, A, 10),
                1,
                DropReason::SpoofedSource,
            ),
            (
                craft::ipv4_udp(
                    mac_for_ip(A),
                    [0xff; 6],
                    A,
                    Ipv4Addr::new(255, 255, 255, 255),
                    10,
                ),
                1,
                DropReason::Multicast,
            ),
            (
                craft::ipv4_udp(
                    mac_for_ip(A),
                    [1, 0, 0x5e, 0, 0, 251],
                    A,
                    Ipv4Addr::new(224, 0, 0, 251),
                    10,
                ),
                1,
                DropReason::Multicast,
            ),
            (
                craft::ipv4_udp(mac_for_ip(A), mac_for_ip(B), A, B, 1500),
                1,
                DropReason::TooBig,
            ),
            (
                craft::ipv4_udp(t.router_mac, mac_for_ip(A), GW, A, 10),
                9,
                DropReason::NoRoute,
            ),
        ];
        for (i, (mut f, port, reason)) in cases.into_iter().enumerate() {
            assert_eq!(run(&mut f, port, &t).0, Verdict::Drop(reason), "case {i}");
        }
    }

    #[test]
    fn gso_super_frames_are_not_too_big() {
        let t = table();
        let mut f = craft::ipv4_udp(mac_for_ip(A), mac_for_ip(B), A, B, 60_000);
        f[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
        assert_eq!(run(&mut f, 1, &t).0, Verdict::Forward(2));
    }

    #[test]
    fn arp_for_a_known_pod_is_answered_with_its_mac() {
        let t = table();
        let mut f = craft::arp_request(mac_for_ip(A), A, B);
        let (v, reply) = run(&mut f, 1, &t);
        assert_eq!(v, Verdict::Reply(arp::REPLY_LEN));
        let eth = &reply[VNET_HDR_LEN..];
        assert_eq!(&eth[0..6], &mac_for_ip(A), "reply goes to the asker");
        assert_eq!(&eth[6..12], &mac_for_ip(B));
        assert_eq!(&eth[12..14], &[0x08, 0x06]);
        let body = &eth[ETH_HDR_LEN..];
        assert_eq!(&body[6..8], &[0, 2], "operation reply");
        assert_eq!(&body[8..14], &mac_for_ip(B), "sender hardware address");
        assert_eq!(&body[14..18], &B.octets(), "sender protocol address");
        assert_eq!(&body[18..24], &mac_for_ip(A));
        assert_eq!(&body[24..28], &A.octets());
    }

    #[test]
    fn arp_for_the_gateway_gets_the_router_mac_and_host_arp_for_pods_is_answered() {
        let t = table();
        let mut f = craft::arp_request(mac_for_ip(A), A, GW);
        let (_, reply) = run(&mut f, 1, &t);
        assert_eq!(&reply[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12], &t.router_mac);
        let mut f = craft::arp_request(t.router_mac, GW, A);
        let (v, reply) = run(&mut f, HOST_PORT, &t);
        assert_eq!(v, Verdict::Reply(arp::REPLY_LEN));
        assert_eq!(&reply[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12], &mac_for_ip(A));
    }

    #[test]
    fn arp_that_needs_no_answer_is_dropped() {
        let t = table();
        let mut f = craft::arp_request(mac_for_ip(A), A, Ipv4Addr::new(10, 244, 1, 99));
        assert_eq!(
            run(&mut f, 1, &t).0,
            Verdict::Drop(DropReason::ArpUnknownTarget)
        );
        let mut f = craft::arp_request(mac_for_ip(A), Ipv4Addr::UNSPECIFIED, A);
        assert_eq!(
            run(&mut f, 1, &t).0,
            Verdict::Drop(DropReason::ArpIgnored),
            "duplicate-address probe"
        );
        let mut f = craft::arp_request(mac_for_ip(A), A, B);
        f[VNET_HDR_LEN + ETH_HDR_LEN + 7] = 2; // make it a reply
        assert_eq!(run(&mut f, 1, &t).0, Verdict::Drop(DropReason::ArpIgnored));
        let mut f = craft::arp_request(mac_for_ip(A), A, B);
        f.truncate(VNET_HDR_LEN + ETH_HDR_LEN + 20);
        assert_eq!(run(&mut f, 1, &t).0, Verdict::Drop(DropReason::Malformed));
    }
}
