//! The forwarding decision for one frame.

use etherparse::{Ethernet2HeaderSlice, Ipv4HeaderSlice};

use super::flows::{self, FlowTable};
use super::frame::{
    eth_dst, set_eth_dst, set_eth_src, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_HDR_LEN,
    VNET_HDR_LEN,
};
use super::offload::{self, VnetHdr, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};
use super::table::{Endpoint, PortId, Table, HOST_PORT};
use super::DropReason;
use super::{arp, icmp, ipv6, ndp};

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write the buffer (possibly rewritten in place) to this port.
    Forward(PortId),
    /// Write `reply[..len]` back to the port the frame came from (an ARP answer).
    Reply(usize),
    /// Encapsulate the frame (MACs already rewritten for the peer) and send it to peer `n`
    /// of [`Table::peers`].
    Encap(usize),
    /// Drop the frame for `reason`, and write `reply[..len]` (an ICMP error) back to the
    /// port it came from.
    Reject {
        len: usize,
        reason: DropReason,
    },
    Drop(DropReason),
}

/// Decide what happens to `buf`, a frame read from `in_port`: virtio-net header followed by
/// an Ethernet frame. MAC addresses may be rewritten in place when the frame is routed
/// rather than switched. `reply` must hold at least [`icmp::MAX_REPLY_LEN`] bytes.
/// `flows` records the flows the node translated (see [`flows`]); `now` is a monotonic
/// clock in seconds.
#[inline]
pub fn forward(
    buf: &mut [u8],
    in_port: PortId,
    table: &Table,
    flows: &FlowTable,
    now: u32,
    reply: &mut [u8],
) -> Verdict {
    if buf.len() < VNET_HDR_LEN + ETH_HDR_LEN {
        return Verdict::Drop(DropReason::Malformed);
    }
    let vnet = VnetHdr::read(buf);
    let frame = &mut buf[VNET_HDR_LEN..];
    let ethertype = match Ethernet2HeaderSlice::from_slice(frame) {
        Ok(eth) => eth.ether_type().0,
        Err(_) => return Verdict::Drop(DropReason::Malformed),
    };
    match ethertype {
        ETHERTYPE_IPV4 => forward_ipv4(frame, vnet, in_port, table, flows, now, reply),
        ETHERTYPE_IPV6 => forward_ipv6(frame, vnet, in_port, table, flows, now, reply),
        ETHERTYPE_ARP => match arp::answer(frame, in_port, table, reply) {
            Ok(len) => Verdict::Reply(len),
            Err(reason) => Verdict::Drop(reason),
        },
        _ => Verdict::Drop(DropReason::UnsupportedProtocol),
    }
}

/// The IPv4 address at `at`, read as one word from the frame (the header is checked).
/// Built from a `[u8; 4]` copy instead, its next use would wait on the copy's byte stores.
#[inline(always)]
fn addr_at(frame: &[u8], at: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from_be_bytes(frame[at..at + 4].try_into().unwrap()))
}

#[inline]
fn forward_ipv4(
    frame: &mut [u8],
    vnet: VnetHdr,
    in_port: PortId,
    table: &Table,
    flows: &FlowTable,
    now: u32,
    reply: &mut [u8],
) -> Verdict {
    let (src, dst) = match Ipv4HeaderSlice::from_slice(&frame[ETH_HDR_LEN..]) {
        Ok(ip) => (ip.source(), ip.destination()),
        Err(_) => return Verdict::Drop(DropReason::Malformed),
    };
    if vnet.gso_type == GSO_NONE && frame.len() - ETH_HDR_LEN > table.mtu as usize {
        // Larger than the pods' MTU. A pod attached before the node's MTU was lowered (a
        // restart with encryption turned on) still sends such packets: tell it the MTU, as
        // a router would, instead of losing its retransmissions without a word.
        return too_big(frame, table, table.mtu, reply);
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
    let dst_addr = addr_at(frame, ETH_HDR_LEN + 16);
    if in_port == HOST_PORT {
        return from_node(frame, vnet, dst, table, flows, now, reply);
    }
    // A reply of a flow the node translated goes back to the node. The gate in front of
    // the lookup keeps this to one load for pods that are not Service endpoints.
    if table.cluster_cidr.contains(&dst_addr)
        && dst_addr != table.gateway
        && flows.is_reply_frame(&frame[ETH_HDR_LEN..], now)
    {
        return to_node(frame, table);
    }
    route(frame, vnet, dst, dst_addr, in_port, table, reply)
}

/// An IPv6 frame: link signalling is answered or absorbed here, everything else routed
/// like IPv4 by the node's IPv6 table. Kept out of line so the IPv4 path stays as it was.
#[inline(never)]
fn forward_ipv6(
    frame: &mut [u8],
    vnet: VnetHdr,
    in_port: PortId,
    table: &Table,
    flows: &FlowTable,
    now: u32,
    reply: &mut [u8],
) -> Verdict {
    let info = match ipv6::parse(&frame[ETH_HDR_LEN..]) {
        Ok(info) => info,
        Err(reason) => return Verdict::Drop(reason),
    };
    if ndp::icmp_type(&frame[ETH_HDR_LEN..], &info).is_some_and(ndp::is_link_signalling) {
        return match ndp::answer(frame, &info, in_port, table, reply) {
            Ok(len) => Verdict::Reply(len),
            Err(reason) => Verdict::Drop(reason),
        };
    }
    let Some(v6) = table.v6.as_ref() else {
        return Verdict::Drop(DropReason::UnsupportedProtocol);
    };
    match table.ports.get(&in_port) {
        Some(_) if in_port == HOST_PORT => {}
        Some(p) if p.allowed_src6.is_some_and(|a| a.octets() == info.src) => {}
        Some(_) => return Verdict::Drop(DropReason::SpoofedSource),
        None => return Verdict::Drop(DropReason::NoRoute),
    }
    // After the source check: an ICMPv6 error never goes to a forged, unspecified or
    // multicast source (RFC 4443 2.4).
    if vnet.gso_type == GSO_NONE && frame.len() - ETH_HDR_LEN > table.mtu as usize {
        if ipv6::is_unspecified(&info.src) || ipv6::is_multicast(&info.src) {
            return Verdict::Drop(DropReason::TooBig);
        }
        return too_big(frame, table, table.mtu, reply);
    }
    if ipv6::is_multicast(&info.dst) {
        return Verdict::Drop(DropReason::Multicast);
    }
    if ipv6::is_link_local(&info.dst) {
        return Verdict::Drop(DropReason::NoRoute);
    }
    let (src, dst) = (
        std::net::Ipv6Addr::from(info.src),
        std::net::Ipv6Addr::from(info.dst),
    );
    if in_port == HOST_PORT {
        // As for IPv4: a pod's packet the node forwarded (a Service's DNAT) records its
        // reply, which must come back through the node.
        let v = route6(frame, vnet, &info, in_port, table, reply);
        let delivered =
            matches!(v, Verdict::Forward(p) if p != HOST_PORT) || matches!(v, Verdict::Encap(_));
        if delivered && v6.cluster_cidr.contains(&src) && src != v6.gateway {
            if let Some(p) = flows::parse6(&frame[ETH_HDR_LEN..], &info) {
                flows.track_translated(&p, now);
            }
        }
        return v;
    }
    if v6.cluster_cidr.contains(&dst)
        && dst != v6.gateway
        && flows.is_reply_frame6(&frame[ETH_HDR_LEN..], &info, now)
    {
        return to_node(frame, table);
    }
    route6(frame, vnet, &info, in_port, table, reply)
}

/// Where a checked IPv6 frame goes by its destination: a pod here, a peer node, or out
/// through the node.
#[inline]
fn route6(
    frame: &mut [u8],
    vnet: VnetHdr,
    info: &ipv6::Ipv6Info,
    in_port: PortId,
    table: &Table,
    reply: &mut [u8],
) -> Verdict {
    let Some(v6) = table.v6.as_ref() else {
        return Verdict::Drop(DropReason::UnsupportedProtocol);
    };
    if let Some(ep) = table.lookup6(info.dst) {
        return deliver_to(frame, *ep, in_port, table);
    }
    if let Some(peer) = table.lookup_peer6(info.dst) {
        return encap_to_peer(frame, vnet, peer, table, reply);
    }
    let dst = std::net::Ipv6Addr::from(info.dst);
    if v6.pod_cidr.contains(&dst) || in_port == HOST_PORT {
        return Verdict::Drop(DropReason::NoRoute);
    }
    if v6.cluster_cidr.contains(&dst) {
        return Verdict::Drop(DropReason::NoPeer);
    }
    to_node(frame, table)
}

/// A frame the node sent into the switch. When it carries a pod's source address to a pod
/// the node forwarded a pod's packet (a Service's DNAT, typically): its reply must come
/// back through the node, so the flow is recorded once the frame is on its way.
#[inline(never)]
fn from_node(
    frame: &mut [u8],
    vnet: VnetHdr,
    dst: [u8; 4],
    table: &Table,
    flows: &FlowTable,
    now: u32,
    reply: &mut [u8],
) -> Verdict {
    let src_addr = addr_at(frame, ETH_HDR_LEN + 12);
    let dst_addr = addr_at(frame, ETH_HDR_LEN + 16);
    let v = route(frame, vnet, dst, dst_addr, HOST_PORT, table, reply);
    let delivered =
        matches!(v, Verdict::Forward(p) if p != HOST_PORT) || matches!(v, Verdict::Encap(_));
    if delivered && table.cluster_cidr.contains(&src_addr) && src_addr != table.gateway {
        if let Some(p) = flows::parse(&frame[ETH_HDR_LEN..]) {
            flows.track_translated(&p, now);
        }
    }
    v
}

/// Where a checked IPv4 frame goes by its destination: a pod here, a peer node, or out
/// through the node.
#[inline(always)]
fn route(
    frame: &mut [u8],
    vnet: VnetHdr,
    dst: [u8; 4],
    dst_addr: std::net::Ipv4Addr,
    in_port: PortId,
    table: &Table,
    reply: &mut [u8],
) -> Verdict {
    if let Some(v) = deliver_local(frame, dst, in_port, table) {
        return v;
    }
    if let Some(peer) = table.lookup_peer(dst) {
        return encap_to_peer(frame, vnet, peer, table, reply);
    }
    if table.pod_cidr.contains(&dst_addr) || in_port == HOST_PORT {
        // A pod address nobody holds here, or the node sending something not for a pod.
        return Verdict::Drop(DropReason::NoRoute);
    }
    if table.cluster_cidr.contains(&dst_addr) {
        return Verdict::Drop(DropReason::NoPeer);
    }
    // Anything else leaves through the node, which routes it like its own traffic.
    set_eth_dst(frame, table.router_mac);
    Verdict::Forward(HOST_PORT)
}

/// To the node, routed: the frame is addressed to the router MAC (the host port's own).
#[inline]
fn to_node(frame: &mut [u8], table: &Table) -> Verdict {
    set_eth_dst(frame, table.router_mac);
    Verdict::Forward(HOST_PORT)
}

/// To a pod on this node or to the node itself (the gateway address). Always inlined: as a
/// call, its `Option<Verdict>` comes back through the stack and the caller's first read of
/// it stalls on the store (about a third of a local forward's time, in the profile).
#[inline(always)]
fn deliver_local(
    frame: &mut [u8],
    dst: [u8; 4],
    in_port: PortId,
    table: &Table,
) -> Option<Verdict> {
    let ep = table.lookup(dst)?;
    Some(deliver_to(frame, *ep, in_port, table))
}

/// To `ep`, the port holding the destination address.
#[inline(always)]
fn deliver_to(frame: &mut [u8], ep: Endpoint, in_port: PortId, table: &Table) -> Verdict {
    if ep.port == in_port {
        return Verdict::Drop(DropReason::Loop);
    }
    // Switched frames already carry the pod's MAC; routed ones (sent to the gateway MAC,
    // or arriving from the tunnel) get the pod's MAC and the router's as their source.
    if eth_dst(frame) != ep.mac {
        set_eth_dst(frame, ep.mac);
        set_eth_src(frame, table.router_mac);
    }
    Verdict::Forward(ep.port)
}

#[inline]
fn encap_to_peer(
    frame: &mut [u8],
    vnet: VnetHdr,
    peer: usize,
    table: &Table,
    reply: &mut [u8],
) -> Verdict {
    // A super-frame crosses as segments of its headers plus gso_size each.
    let ip_len = match vnet.gso_type {
        GSO_NONE => frame.len() - ETH_HDR_LEN,
        GSO_TCPV4 | GSO_TCPV6 => match offload::tcp_segment_ip_len(frame, vnet.gso_size) {
            Ok(len) => len,
            Err(reason) => return Verdict::Drop(reason),
        },
        GSO_UDP_L4 => match offload::udp_segment_ip_len(frame, vnet.gso_size) {
            Ok(len) => len,
            Err(reason) => return Verdict::Drop(reason),
        },
        _ => return Verdict::Drop(DropReason::UnsupportedProtocol),
    };
    if ip_len > table.tunnel_mtu as usize {
        return too_big(frame, table, table.tunnel_mtu, reply);
    }
    let route = &table.peers[peer];
    set_eth_dst(frame, route.mac);
    set_eth_src(frame, table.router_mac);
    Verdict::Encap(peer)
}

/// Answer a packet the tunnel cannot carry: ICMP "fragmentation needed" when enabled, and
/// for IPv6 always ICMPv6 "packet too big", without which IPv6 has no way through.
#[inline]
pub fn too_big(frame: &[u8], table: &Table, mtu: u32, reply: &mut [u8]) -> Verdict {
    if frame[12..14] == ETHERTYPE_IPV6.to_be_bytes() {
        return match icmp::packet_too_big(frame, table, mtu, reply) {
            0 => Verdict::Drop(DropReason::TooBig),
            len => Verdict::Reject {
                len,
                reason: DropReason::TooBig,
            },
        };
    }
    if table.icmp_frag_needed {
        let len = icmp::frag_needed(frame, table, mtu, reply);
        Verdict::Reject {
            len,
            reason: DropReason::TooBig,
        }
    } else {
        Verdict::Drop(DropReason::TooBig)
    }
}

/// Decide on a frame that arrived through the tunnel from peer `peer` (already decapsulated
/// into a port buffer). Only IPv4 from the peer's own pod CIDR is accepted, and only for
/// this node: the switch never relays tunnel traffic onwards. Replies of flows this node
/// translated go to the node (see [`flows`]).
#[inline]
pub fn forward_from_tunnel(
    buf: &mut [u8],
    peer: usize,
    table: &Table,
    flows: &FlowTable,
    now: u32,
) -> Verdict {
    let frame = &mut buf[VNET_HDR_LEN..];
    match Ethernet2HeaderSlice::from_slice(frame) {
        Ok(eth) if eth.ether_type().0 == ETHERTYPE_IPV4 => {}
        Ok(eth) if eth.ether_type().0 == ETHERTYPE_IPV6 => {
            return from_tunnel_ipv6(frame, peer, table, flows, now)
        }
        Ok(_) => return Verdict::Drop(DropReason::UnsupportedProtocol),
        Err(_) => return Verdict::Drop(DropReason::Malformed),
    }
    let (src, dst) = match Ipv4HeaderSlice::from_slice(&frame[ETH_HDR_LEN..]) {
        Ok(ip) => (ip.source(), ip.destination()),
        Err(_) => return Verdict::Drop(DropReason::Malformed),
    };
    let Some(route) = table.peers.get(peer) else {
        return Verdict::Drop(DropReason::UnknownPeer);
    };
    if !route.pod_cidr.contains(&std::net::Ipv4Addr::from(src)) {
        return Verdict::Drop(DropReason::SpoofedSource);
    }
    if std::net::Ipv4Addr::from(dst) != table.gateway
        && flows.is_reply_frame(&frame[ETH_HDR_LEN..], now)
    {
        return to_node(frame, table);
    }
    deliver_local(frame, dst, PortId::MAX, table).unwrap_or(Verdict::Drop(DropReason::NoRoute))
}

/// An IPv6 frame from peer `peer`: from the peer's IPv6 prefix, for this node only.
#[inline(never)]
fn from_tunnel_ipv6(
    frame: &mut [u8],
    peer: usize,
    table: &Table,
    flows: &FlowTable,
    now: u32,
) -> Verdict {
    let info = match ipv6::parse(&frame[ETH_HDR_LEN..]) {
        Ok(info) => info,
        Err(reason) => return Verdict::Drop(reason),
    };
    if ndp::icmp_type(&frame[ETH_HDR_LEN..], &info).is_some_and(ndp::is_link_signalling) {
        return Verdict::Drop(DropReason::NdIgnored);
    }
    let Some(route) = table.peers.get(peer) else {
        return Verdict::Drop(DropReason::UnknownPeer);
    };
    let src = std::net::Ipv6Addr::from(info.src);
    if !route.pod_cidr_v6.is_some_and(|net| net.contains(&src)) {
        return Verdict::Drop(DropReason::SpoofedSource);
    }
    let to_gateway = table
        .v6
        .as_ref()
        .is_some_and(|v6| v6.gateway.octets() == info.dst);
    if !to_gateway && flows.is_reply_frame6(&frame[ETH_HDR_LEN..], &info, now) {
        return to_node(frame, table);
    }
    match table.lookup6(info.dst) {
        Some(ep) => deliver_to(frame, *ep, PortId::MAX, table),
        None => Verdict::Drop(DropReason::NoRoute),
    }
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

    fn no_flows() -> FlowTable {
        FlowTable::new(1024, flows::Timeouts::default(), 1)
    }

    fn run(buf: &mut [u8], in_port: PortId, t: &Table) -> (Verdict, Vec<u8>) {
        run_with(buf, in_port, t, &no_flows())
    }

    fn run_with(buf: &mut [u8], in_port: PortId, t: &Table, f: &FlowTable) -> (Verdict, Vec<u8>) {
        let mut reply = [0u8; icmp::MAX_REPLY_LEN];
        let v = forward(buf, in_port, t, f, 0, &mut reply);
        let r = match v {
            Verdict::Reply(n) | Verdict::Reject { len: n, .. } => reply[..n].to_vec(),
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
                craft::ethertype(0x88cc, 60),
                1,
                DropReason::UnsupportedProtocol,
            ),
            (
                craft::ipv6_udp(
                    mac_for_ip(A),
                    t.router_mac,
                    "fd10:244:1::2".parse().unwrap(),
                    "fd10:244:1::3".parse().unwrap(),
                    10,
                ),
                1,
                DropReason::UnsupportedProtocol,
            ),
            (
                craft::icmpv6(
                    mac_for_ip(A),
                    "fe80::1".parse().unwrap(),
                    "ff02::2".parse().unwrap(),
                    133,
                    4,
                ),
                1,
                DropReason::NdIgnored,
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
                DropReason::NoPeer,
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
    fn a_packet_over_the_pod_mtu_is_answered_with_frag_needed_and_that_mtu() {
        let mut t = table();
        let mut f = craft::ipv4_udp(mac_for_ip(A), mac_for_ip(B), A, B, 1500);
        let (v, reply) = run(&mut f, 1, &t);
        let Verdict::Reject { reason, .. } = v else {
            panic!("{v:?}")
        };
        assert_eq!(reason, DropReason::TooBig);
        let icmp = &reply[VNET_HDR_LEN + ETH_HDR_LEN + 20..];
        assert_eq!((icmp[0], icmp[1]), (3, 4), "fragmentation needed");
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), t.mtu as u16);
        t.icmp_frag_needed = false;
        assert_eq!(run(&mut f, 1, &t).0, Verdict::Drop(DropReason::TooBig));
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

    const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);

    fn peered() -> Table {
        let mut t = craft::demo_table_with_peer();
        t.insert_pod(1, A, mac_for_ip(A));
        t.insert_pod(2, B, mac_for_ip(B));
        t
    }

    #[test]
    fn frames_for_another_nodes_pods_are_encapsulated_to_that_peer_with_its_mac() {
        let t = peered();
        let mut f = craft::ipv4_udp(mac_for_ip(A), t.router_mac, A, REMOTE, 100);
        assert_eq!(run(&mut f, 1, &t).0, Verdict::Encap(0));
        assert_eq!(
            &f[VNET_HDR_LEN..VNET_HDR_LEN + 6],
            &t.peers[0].mac,
            "inner dst = peer VTEP MAC"
        );
        assert_eq!(&f[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12], &t.router_mac);
        assert_eq!(
            &f[VNET_HDR_LEN + 14 + 12..VNET_HDR_LEN + 14 + 20],
            &[10, 244, 1, 2, 10, 244, 2, 7],
            "addresses untouched"
        );
        // The node itself reaches remote pods through the host port.
        let mut f = craft::ipv4_udp(t.router_mac, t.router_mac, GW, REMOTE, 100);
        assert_eq!(run(&mut f, HOST_PORT, &t).0, Verdict::Encap(0));
        // A pod CIDR in the cluster that nobody owns.
        let mut f = craft::ipv4_udp(
            mac_for_ip(A),
            t.router_mac,
            A,
            Ipv4Addr::new(10, 244, 9, 9),
            100,
        );
        assert_eq!(run(&mut f, 1, &t).0, Verdict::Drop(DropReason::NoPeer));
    }

    #[test]
    fn host_arp_for_a_remote_pod_gets_the_router_mac() {
        let t = peered();
        let mut f = craft::arp_request(t.router_mac, GW, REMOTE);
        let (v, reply) = run(&mut f, HOST_PORT, &t);
        assert_eq!(v, Verdict::Reply(arp::REPLY_LEN));
        assert_eq!(&reply[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12], &t.router_mac);
    }

    #[test]
    fn too_big_for_the_tunnel_gets_icmp_fragmentation_needed() {
        let mut t = peered();
        t.mtu = 1500;
        t.tunnel_mtu = 1350;
        let mut f = craft::ipv4_udp(mac_for_ip(A), t.router_mac, A, REMOTE, 1400);
        let (v, reply) = run(&mut f, 1, &t);
        let Verdict::Reject { len, reason } = v else {
            panic!("{v:?}")
        };
        assert_eq!(reason, DropReason::TooBig);
        assert_eq!(len, reply.len());
        let eth = &reply[VNET_HDR_LEN..];
        assert_eq!(&eth[0..6], &mac_for_ip(A), "back to the sender");
        let ip = &eth[ETH_HDR_LEN..];
        assert_eq!(
            crate::datapath::checksum::finish(crate::datapath::checksum::sum(&ip[..20], 0)),
            0
        );
        assert_eq!(
            (&ip[12..16], &ip[16..20]),
            (&GW.octets()[..], &A.octets()[..])
        );
        let icmp = &ip[20..];
        assert_eq!((icmp[0], icmp[1]), (3, 4));
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1350, "next-hop MTU");
        assert_eq!(
            crate::datapath::checksum::finish(crate::datapath::checksum::sum(icmp, 0)),
            0
        );
        assert_eq!(
            &icmp[8 + 12..8 + 20],
            &[10, 244, 1, 2, 10, 244, 2, 7],
            "quotes the original header"
        );

        t.icmp_frag_needed = false;
        let mut f = craft::ipv4_udp(mac_for_ip(A), t.router_mac, A, REMOTE, 1400);
        assert_eq!(run(&mut f, 1, &t).0, Verdict::Drop(DropReason::TooBig));
        // A TSO super-frame whose segments would not fit is refused the same way.
        t.icmp_frag_needed = true;
        let mut f = craft::tcp4_super_frame(&[0u8; 5000], 1, 1400);
        assert!(matches!(
            run(&mut f, 1, &t).0,
            Verdict::Reject {
                reason: DropReason::TooBig,
                ..
            }
        ));
        let mut f = craft::tcp4_super_frame(&[0u8; 5000], 1, 1200);
        assert_eq!(run(&mut f, 1, &t).0, Verdict::Encap(0));
    }

    #[test]
    fn tunnel_frames_reach_local_pods_only_from_the_peers_own_cidr() {
        let t = peered();
        let peer_mac = t.peers[0].mac;
        let mut f = craft::ipv4_udp(peer_mac, t.router_mac, REMOTE, A, 100);
        assert_eq!(
            forward_from_tunnel(&mut f, 0, &t, &no_flows(), 0),
            Verdict::Forward(1)
        );
        assert_eq!(
            &f[VNET_HDR_LEN..VNET_HDR_LEN + 6],
            &mac_for_ip(A),
            "delivered with the pod's MAC"
        );
        let mut f = craft::ipv4_udp(peer_mac, t.router_mac, REMOTE, GW, 100);
        assert_eq!(
            forward_from_tunnel(&mut f, 0, &t, &no_flows(), 0),
            Verdict::Forward(HOST_PORT),
            "to the node itself"
        );
        let mut f = craft::ipv4_udp(peer_mac, t.router_mac, Ipv4Addr::new(10, 244, 3, 3), A, 100);
        assert_eq!(
            forward_from_tunnel(&mut f, 0, &t, &no_flows(), 0),
            Verdict::Drop(DropReason::SpoofedSource)
        );
        let mut f = craft::ipv4_udp(
            peer_mac,
            t.router_mac,
            REMOTE,
            Ipv4Addr::new(10, 244, 1, 99),
            100,
        );
        assert_eq!(
            forward_from_tunnel(&mut f, 0, &t, &no_flows(), 0),
            Verdict::Drop(DropReason::NoRoute)
        );
        let mut f = craft::ipv4_udp(
            peer_mac,
            t.router_mac,
            REMOTE,
            Ipv4Addr::new(192, 0, 2, 1),
            100,
        );
        assert_eq!(
            forward_from_tunnel(&mut f, 0, &t, &no_flows(), 0),
            Verdict::Drop(DropReason::NoRoute),
            "never relayed onwards"
        );
        let mut f = craft::arp_request(peer_mac, REMOTE, A);
        assert_eq!(
            forward_from_tunnel(&mut f, 0, &t, &no_flows(), 0),
            Verdict::Drop(DropReason::UnsupportedProtocol)
        );
        let mut f = craft::ipv4_udp(peer_mac, t.router_mac, REMOTE, A, 100);
        f.truncate(VNET_HDR_LEN + ETH_HDR_LEN + 10);
        assert_eq!(
            forward_from_tunnel(&mut f, 0, &t, &no_flows(), 0),
            Verdict::Drop(DropReason::Malformed)
        );
    }

    const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

    #[test]
    fn replies_of_flows_the_node_translated_go_back_to_the_node() {
        let t = table();
        let flows = no_flows();
        // B → ClusterIP leaves through the node like any non-pod destination.
        let mut f = craft::ipv4_udp(mac_for_ip(B), t.router_mac, B, SERVICE, 100);
        assert_eq!(
            run_with(&mut f, 2, &t, &flows).0,
            Verdict::Forward(HOST_PORT)
        );
        // The node DNATed it to A and sends it back in, B's address intact.
        let mut f = craft::ipv4_udp(t.router_mac, t.router_mac, B, A, 100);
        assert_eq!(
            run_with(&mut f, HOST_PORT, &t, &flows).0,
            Verdict::Forward(1)
        );
        assert_eq!(tracked(&flows), 1);
        // A's reply to B is not switched to B but routed to the node, which un-DNATs it.
        let mut reply = craft::ipv4_udp(mac_for_ip(A), mac_for_ip(B), A, B, 100);
        swap_ports(&mut reply);
        assert_eq!(
            run_with(&mut reply, 1, &t, &flows).0,
            Verdict::Forward(HOST_PORT)
        );
        assert_eq!(&reply[VNET_HDR_LEN..VNET_HDR_LEN + 6], &t.router_mac);
        // Other traffic between the same pods is still switched directly.
        let mut other = craft::ipv4_udp(mac_for_ip(A), mac_for_ip(B), A, B, 100);
        assert_eq!(run_with(&mut other, 1, &t, &flows).0, Verdict::Forward(2));
        // The node's own traffic to a pod (from the gateway address) records nothing.
        let mut f = craft::ipv4_udp(t.router_mac, mac_for_ip(A), GW, A, 10);
        assert_eq!(
            run_with(&mut f, HOST_PORT, &t, &flows).0,
            Verdict::Forward(1)
        );
        assert_eq!(tracked(&flows), 1);
    }

    #[test]
    fn replies_arriving_from_the_tunnel_go_to_the_node_that_translated_them() {
        let t = peered();
        let flows = no_flows();
        // A local pod's Service packet, DNATed by this node to a pod on the peer.
        let mut f = craft::ipv4_udp(t.router_mac, t.router_mac, A, REMOTE, 100);
        assert_eq!(run_with(&mut f, HOST_PORT, &t, &flows).0, Verdict::Encap(0));
        let mut reply = craft::ipv4_udp(t.peers[0].mac, t.router_mac, REMOTE, A, 100);
        swap_ports(&mut reply);
        assert_eq!(
            forward_from_tunnel(&mut reply, 0, &t, &flows, 0),
            Verdict::Forward(HOST_PORT)
        );
        let mut other = craft::ipv4_udp(t.peers[0].mac, t.router_mac, REMOTE, A, 100);
        assert_eq!(
            forward_from_tunnel(&mut other, 0, &t, &flows, 0),
            Verdict::Forward(1)
        );
    }

    fn tracked(flows: &FlowTable) -> u64 {
        flows
            .counters
            .tracked
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Swap a crafted UDP frame's ports (the reply of the flow it belongs to).
    fn swap_ports(f: &mut [u8]) {
        let l4 = VNET_HDR_LEN + ETH_HDR_LEN + 20;
        let (s, d) = ([f[l4], f[l4 + 1]], [f[l4 + 2], f[l4 + 3]]);
        f[l4..l4 + 2].copy_from_slice(&d);
        f[l4 + 2..l4 + 4].copy_from_slice(&s);
    }

    mod ipv6 {
        use super::*;
        use std::net::Ipv6Addr;

        fn a6() -> Ipv6Addr {
            "fd10:244:1::2".parse().unwrap()
        }
        fn b6() -> Ipv6Addr {
            "fd10:244:1::3".parse().unwrap()
        }
        fn remote6() -> Ipv6Addr {
            "fd10:244:2::7".parse().unwrap()
        }
        fn gw6() -> Ipv6Addr {
            "fd10:244:1::1".parse().unwrap()
        }

        fn dual() -> Table {
            let mut t = craft::demo_table_dual_stack_with_peer();
            t.insert_pod(1, A, mac_for_ip(A));
            t.insert_pod_v6(1, a6(), mac_for_ip(A));
            t.insert_pod(2, B, mac_for_ip(B));
            t.insert_pod_v6(2, b6(), mac_for_ip(B));
            // A pod attached before the node had IPv6: IPv4 only.
            t.insert_pod(3, Ipv4Addr::new(10, 244, 1, 4), [2; 6]);
            t
        }

        #[test]
        fn pods_the_node_and_peers_are_reached_over_ipv6() {
            let t = dual();
            let mut f = craft::ipv6_udp(mac_for_ip(A), mac_for_ip(B), a6(), b6(), 100);
            let before = f.clone();
            assert_eq!(run(&mut f, 1, &t).0, Verdict::Forward(2));
            assert_eq!(f, before, "switched, not rewritten");
            let mut f = craft::ipv6_udp(mac_for_ip(A), t.router_mac, a6(), b6(), 100);
            assert_eq!(run(&mut f, 1, &t).0, Verdict::Forward(2));
            assert_eq!(&f[VNET_HDR_LEN..VNET_HDR_LEN + 6], &mac_for_ip(B), "routed");
            let mut f = craft::ipv6_udp(mac_for_ip(A), t.router_mac, a6(), gw6(), 10);
            assert_eq!(run(&mut f, 1, &t).0, Verdict::Forward(HOST_PORT));
            let mut f = craft::ipv6_udp(t.router_mac, t.router_mac, gw6(), a6(), 10);
            assert_eq!(run(&mut f, HOST_PORT, &t).0, Verdict::Forward(1));
            let outside: Ipv6Addr = "2001:db8::1".parse().unwrap();
            let mut f = craft::ipv6_udp(mac_for_ip(A), t.router_mac, a6(), outside, 10);
            assert_eq!(run(&mut f, 1, &t).0, Verdict::Forward(HOST_PORT), "egress");
            let mut f = craft::ipv6_udp(mac_for_ip(A), t.router_mac, a6(), remote6(), 100);
            assert_eq!(run(&mut f, 1, &t).0, Verdict::Encap(0));
            assert_eq!(&f[VNET_HDR_LEN..VNET_HDR_LEN + 6], &t.peers[0].mac);
            let mut f = craft::ipv6_udp(t.router_mac, t.router_mac, gw6(), remote6(), 100);
            assert_eq!(
                run(&mut f, HOST_PORT, &t).0,
                Verdict::Encap(0),
                "node to remote pod"
            );
        }

        #[test]
        fn spoofed_unknown_and_multicast_ipv6_is_dropped_with_its_reason() {
            let t = dual();
            let cases: Vec<(Vec<u8>, PortId, DropReason)> = vec![
                (
                    craft::ipv6_udp(mac_for_ip(A), t.router_mac, b6(), gw6(), 10),
                    1,
                    DropReason::SpoofedSource,
                ),
                (
                    craft::ipv6_udp(
                        mac_for_ip(A),
                        t.router_mac,
                        "fe80::2".parse().unwrap(),
                        gw6(),
                        10,
                    ),
                    1,
                    DropReason::SpoofedSource,
                ),
                (
                    craft::ipv6_udp(
                        [2; 6],
                        t.router_mac,
                        "fd10:244:1::4".parse().unwrap(),
                        gw6(),
                        10,
                    ),
                    3,
                    DropReason::SpoofedSource,
                ),
                (
                    craft::ipv6_udp(
                        mac_for_ip(A),
                        t.router_mac,
                        a6(),
                        "fd10:244:1::99".parse().unwrap(),
                        10,
                    ),
                    1,
                    DropReason::NoRoute,
                ),
                (
                    craft::ipv6_udp(
                        mac_for_ip(A),
                        t.router_mac,
                        a6(),
                        "fd10:244:9::9".parse().unwrap(),
                        10,
                    ),
                    1,
                    DropReason::NoPeer,
                ),
                (
                    craft::ipv6_udp(
                        mac_for_ip(A),
                        [0x33, 0x33, 0, 0, 0, 0xfb],
                        a6(),
                        "ff02::fb".parse().unwrap(),
                        10,
                    ),
                    1,
                    DropReason::Multicast,
                ),
                (
                    craft::ipv6_udp(
                        mac_for_ip(A),
                        t.router_mac,
                        a6(),
                        "fe80::1".parse().unwrap(),
                        10,
                    ),
                    1,
                    DropReason::NoRoute,
                ),
                (
                    craft::ipv6_udp(
                        t.router_mac,
                        t.router_mac,
                        gw6(),
                        "2001:db8::1".parse().unwrap(),
                        10,
                    ),
                    HOST_PORT,
                    DropReason::NoRoute,
                ),
                (
                    craft::truncate(
                        craft::ipv6_udp(mac_for_ip(A), t.router_mac, a6(), b6(), 10),
                        VNET_HDR_LEN + ETH_HDR_LEN + 30,
                    ),
                    1,
                    DropReason::Malformed,
                ),
                (
                    craft::neighbor_advertisement(mac_for_ip(A), a6(), b6()),
                    1,
                    DropReason::SpoofedSource,
                ),
            ];
            for (i, (mut f, port, reason)) in cases.into_iter().enumerate() {
                assert_eq!(run(&mut f, port, &t).0, Verdict::Drop(reason), "case {i}");
            }
        }

        #[test]
        fn a_solicitation_is_answered_in_the_datapath() {
            let t = dual();
            let mut ns = craft::neighbor_solicitation(mac_for_ip(A), a6(), gw6());
            let (v, reply) = run(&mut ns, 1, &t);
            assert_eq!(v, Verdict::Reply(ndp::REPLY_LEN));
            assert_eq!(&reply[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12], &t.router_mac);
        }

        #[test]
        fn too_big_for_the_tunnel_gets_packet_too_big_even_with_frag_needed_off() {
            let mut t = dual();
            t.mtu = 1500;
            t.tunnel_mtu = 1350;
            t.icmp_frag_needed = false;
            let mut f = craft::ipv6_udp(mac_for_ip(A), t.router_mac, a6(), remote6(), 1400);
            let (v, reply) = run(&mut f, 1, &t);
            let Verdict::Reject { len, reason } = v else {
                panic!("{v:?}")
            };
            assert_eq!((reason, len), (DropReason::TooBig, reply.len()));
            let ip = &reply[VNET_HDR_LEN + ETH_HDR_LEN..];
            assert_eq!(&reply[VNET_HDR_LEN..VNET_HDR_LEN + 6], &mac_for_ip(A));
            assert_eq!((ip[0] >> 4, ip[6]), (6, 58));
            assert_eq!(&ip[8..24], &gw6().octets());
            assert_eq!(&ip[24..40], &a6().octets());
            let icmp = &ip[40..];
            assert_eq!((icmp[0], icmp[1]), (2, 0), "packet too big");
            assert_eq!(u32::from_be_bytes(icmp[4..8].try_into().unwrap()), 1350);
            assert_eq!(
                &icmp[8 + 8..8 + 40],
                &f[VNET_HDR_LEN + ETH_HDR_LEN + 8..VNET_HDR_LEN + ETH_HDR_LEN + 40],
                "quotes the addresses"
            );
            let sum = crate::datapath::checksum::sum(
                icmp,
                crate::datapath::checksum::pseudo_header_v6(
                    &gw6().octets(),
                    &a6().octets(),
                    58,
                    icmp.len(),
                ),
            );
            assert_eq!(crate::datapath::checksum::finish(sum), 0);
            // A TSO super-frame whose segments fit goes through; one whose segments do not is refused.
            let mut f = craft::tcp6_super_frame(&[0u8; 5000], 1, 1200);
            assert_eq!(run(&mut f, 1, &t).0, Verdict::Encap(0));
            let mut f = craft::tcp6_super_frame(&[0u8; 5000], 1, 1400);
            assert!(matches!(
                run(&mut f, 1, &t).0,
                Verdict::Reject {
                    reason: DropReason::TooBig,
                    ..
                }
            ));
        }

        #[test]
        fn tunnel_ipv6_reaches_local_pods_only_from_the_peers_own_prefix() {
            let t = dual();
            let peer_mac = t.peers[0].mac;
            let mut f = craft::ipv6_udp(peer_mac, t.router_mac, remote6(), a6(), 100);
            assert_eq!(
                forward_from_tunnel(&mut f, 0, &t, &no_flows(), 0),
                Verdict::Forward(1)
            );
            assert_eq!(&f[VNET_HDR_LEN..VNET_HDR_LEN + 6], &mac_for_ip(A));
            let mut f = craft::ipv6_udp(peer_mac, t.router_mac, remote6(), gw6(), 100);
            assert_eq!(
                forward_from_tunnel(&mut f, 0, &t, &no_flows(), 0),
                Verdict::Forward(HOST_PORT)
            );
            let mut f = craft::ipv6_udp(
                peer_mac,
                t.router_mac,
                "fd10:244:3::3".parse().unwrap(),
                a6(),
                100,
            );
            assert_eq!(
                forward_from_tunnel(&mut f, 0, &t, &no_flows(), 0),
                Verdict::Drop(DropReason::SpoofedSource)
            );
            let mut f = craft::ipv6_udp(
                peer_mac,
                t.router_mac,
                remote6(),
                "2001:db8::1".parse().unwrap(),
                100,
            );
            assert_eq!(
                forward_from_tunnel(&mut f, 0, &t, &no_flows(), 0),
                Verdict::Drop(DropReason::NoRoute),
                "never relayed"
            );
            let mut f = craft::neighbor_solicitation(peer_mac, remote6(), a6());
            assert_eq!(
                forward_from_tunnel(&mut f, 0, &t, &no_flows(), 0),
                Verdict::Drop(DropReason::NdIgnored)
            );
        }

        #[test]
        fn replies_of_ipv6_flows_the_node_translated_go_back_to_the_node() {
            let t = dual();
            let flows = no_flows();
            let service: Ipv6Addr = "fd00:96::10".parse().unwrap();
            let mut f = craft::ipv6_udp(mac_for_ip(B), t.router_mac, b6(), service, 100);
            assert_eq!(
                run_with(&mut f, 2, &t, &flows).0,
                Verdict::Forward(HOST_PORT)
            );
            // DNATed by the node to A, B's address intact.
            let mut f = craft::ipv6_udp(t.router_mac, t.router_mac, b6(), a6(), 100);
            assert_eq!(
                run_with(&mut f, HOST_PORT, &t, &flows).0,
                Verdict::Forward(1)
            );
            assert_eq!(tracked(&flows), 1);
            let swap = |f: &mut Vec<u8>| {
                let l4 = VNET_HDR_LEN + ETH_HDR_LEN + 40;
                let (s, d) = ([f[l4], f[l4 + 1]], [f[l4 + 2], f[l4 + 3]]);
                f[l4..l4 + 2].copy_from_slice(&d);
                f[l4 + 2..l4 + 4].copy_from_slice(&s);
            };
            let mut reply = craft::ipv6_udp(mac_for_ip(A), mac_for_ip(B), a6(), b6(), 100);
            swap(&mut reply);
            assert_eq!(
                run_with(&mut reply, 1, &t, &flows).0,
                Verdict::Forward(HOST_PORT),
                "the reply goes to the node"
            );
            let mut other = craft::ipv6_udp(mac_for_ip(A), mac_for_ip(B), a6(), b6(), 100);
            assert_eq!(
                run_with(&mut other, 1, &t, &flows).0,
                Verdict::Forward(2),
                "other traffic stays switched"
            );
            // The same reply from a remote endpoint arrives through the tunnel.
            let mut f = craft::ipv6_udp(t.router_mac, t.router_mac, b6(), remote6(), 100);
            assert_eq!(run_with(&mut f, HOST_PORT, &t, &flows).0, Verdict::Encap(0));
            let mut reply = craft::ipv6_udp(t.peers[0].mac, t.router_mac, remote6(), b6(), 100);
            swap(&mut reply);
            assert_eq!(
                forward_from_tunnel(&mut reply, 0, &t, &flows, 0),
                Verdict::Forward(HOST_PORT)
            );
            // The node's own traffic (from its gateway address) records nothing.
            let mut f = craft::ipv6_udp(t.router_mac, mac_for_ip(A), gw6(), a6(), 10);
            assert_eq!(
                run_with(&mut f, HOST_PORT, &t, &flows).0,
                Verdict::Forward(1)
            );
            assert_eq!(tracked(&flows), 2);
            // An IPv4 flow with the same ports is a different flow.
            let mut v4 = craft::ipv4_udp(mac_for_ip(A), mac_for_ip(B), A, B, 100);
            swap_ports(&mut v4);
            assert_eq!(run_with(&mut v4, 1, &t, &flows).0, Verdict::Forward(2));
        }
    }
}
