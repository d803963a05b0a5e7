//! IPv6 Neighbor Discovery (RFC 4861), the twin of [`super::arp`]: the switch answers every
//! Neighbor Solicitation for an address it knows, so no multicast is ever flooded. Router
//! Solicitations, MLD reports and duplicate-address probes are the link chatter of every
//! IPv6 interface coming up; they are absorbed (`nd_ignored`), not counted as errors.

use super::checksum;
use super::frame::{clear_vnet_hdr, ETHERTYPE_IPV6, ETH_HDR_LEN, VNET_HDR_LEN};
use super::ipv6::{self, Ipv6Info, IPV6_HDR_LEN, NEXT_HEADER_ICMPV6};
use super::table::{PortId, Table, HOST_PORT};
use super::DropReason;

const MLD_QUERY: u8 = 130;
const MLD_REPORT: u8 = 131;
const MLD_DONE: u8 = 132;
const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
const NEIGHBOR_SOLICITATION: u8 = 135;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
const REDIRECT: u8 = 137;
const MLD2_REPORT: u8 = 143;
/// Neighbor Discovery is only valid from the link itself: hop limit 255 (RFC 4861 7.1).
const ND_HOP_LIMIT: u8 = 255;
const NA_ROUTER: u8 = 0x80;
const NA_SOLICITED: u8 = 0x40;
const NA_OVERRIDE: u8 = 0x20;
const OPT_TARGET_LINK_LAYER: u8 = 2;
/// ICMPv6 body of a Neighbor Advertisement: header 4, flags 4, target 16, option 8.
const NA_LEN: usize = 32;
/// Length of a reply written by [`answer`].
pub const REPLY_LEN: usize = VNET_HDR_LEN + ETH_HDR_LEN + IPV6_HDR_LEN + NA_LEN;

/// Whether this ICMPv6 type is link-local signalling the switch handles itself rather than
/// routes: Neighbor Discovery, router discovery, redirects and MLD.
#[inline]
pub fn is_link_signalling(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        MLD_QUERY
            | MLD_REPORT
            | MLD_DONE
            | ROUTER_SOLICITATION
            | ROUTER_ADVERTISEMENT
            | NEIGHBOR_SOLICITATION
            | NEIGHBOR_ADVERTISEMENT
            | REDIRECT
            | MLD2_REPORT
    )
}

/// The ICMPv6 type of `info`'s packet, if it is ICMPv6 with its header at hand.
#[inline]
pub fn icmp_type(ip: &[u8], info: &Ipv6Info) -> Option<u8> {
    if info.upper != NEXT_HEADER_ICMPV6 {
        return None;
    }
    ip.get(info.upper_at?).copied()
}

/// Decide on link signalling from `in_port` (`frame` starts at the Ethernet header, `info`
/// is its parsed IPv6 header). A Neighbor Solicitation for a known address is answered
/// into `reply`; everything else is dropped with its reason.
pub fn answer(
    frame: &[u8],
    info: &Ipv6Info,
    in_port: PortId,
    table: &Table,
    reply: &mut [u8],
) -> Result<usize, DropReason> {
    let ip = &frame[ETH_HDR_LEN..];
    let at = info.upper_at.ok_or(DropReason::NdIgnored)?;
    // Neighbor Discovery is valid only from the link itself (RFC 4861 7.1.1).
    if info.hop_limit != ND_HOP_LIMIT {
        return Err(DropReason::NdIgnored);
    }
    let icmp = &ip[at..info.len];
    match icmp.first().copied() {
        Some(NEIGHBOR_SOLICITATION) => solicitation(frame, info, icmp, in_port, table, reply),
        Some(NEIGHBOR_ADVERTISEMENT) => advertisement(icmp, in_port, table),
        _ => Err(DropReason::NdIgnored),
    }
}

fn target_of(icmp: &[u8]) -> Result<[u8; 16], DropReason> {
    let t = icmp.get(8..24).ok_or(DropReason::Malformed)?;
    Ok(t.try_into().unwrap())
}

fn solicitation(
    frame: &[u8],
    info: &Ipv6Info,
    icmp: &[u8],
    in_port: PortId,
    table: &Table,
    reply: &mut [u8],
) -> Result<usize, DropReason> {
    let target = target_of(icmp)?;
    if table.v6.is_none() || icmp[1] != 0 {
        return Err(DropReason::NdIgnored);
    }
    // A duplicate-address probe (from ::) is never answered: the address is the asker's,
    // or (for anyone else's) the anti-spoofing check would refuse its traffic anyway.
    if ipv6::is_unspecified(&info.src) {
        return Err(DropReason::NdIgnored);
    }
    // Pods and the gateway answer with their own MAC; addresses on other nodes with the
    // router MAC, so the node's kernel sends them to us for the tunnel.
    let (mac, owner) = match table.lookup6(target) {
        Some(ep) => (ep.mac, Some(ep.port)),
        None if table.lookup_peer6(target).is_some() => (table.router_mac, None),
        None => return Err(DropReason::NdUnknownTarget),
    };
    if owner == Some(in_port) {
        return Err(DropReason::NdIgnored);
    }
    let is_router = owner == Some(HOST_PORT) || owner.is_none();

    let reply = &mut reply[..REPLY_LEN];
    clear_vnet_hdr(reply);
    let eth = &mut reply[VNET_HDR_LEN..];
    eth[0..6].copy_from_slice(&frame[6..12]);
    eth[6..12].copy_from_slice(&mac);
    eth[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    let ip = &mut eth[ETH_HDR_LEN..];
    ip[..4].copy_from_slice(&[0x60, 0, 0, 0]);
    ip[4..6].copy_from_slice(&(NA_LEN as u16).to_be_bytes());
    ip[6] = NEXT_HEADER_ICMPV6;
    ip[7] = ND_HOP_LIMIT;
    ip[8..24].copy_from_slice(&target);
    ip[24..40].copy_from_slice(&info.src);
    let na = &mut ip[IPV6_HDR_LEN..];
    na.fill(0);
    na[0] = NEIGHBOR_ADVERTISEMENT;
    na[4] = NA_SOLICITED | NA_OVERRIDE | if is_router { NA_ROUTER } else { 0 };
    na[8..24].copy_from_slice(&target);
    na[24] = OPT_TARGET_LINK_LAYER;
    na[25] = 1; // in units of 8 bytes
    na[26..32].copy_from_slice(&mac);
    let sum = checksum::sum(
        na,
        checksum::pseudo_header_v6(&target, &info.src, NEXT_HEADER_ICMPV6, NA_LEN),
    );
    na[2..4].copy_from_slice(&checksum::finish(sum).to_be_bytes());
    Ok(REPLY_LEN)
}

/// A pod's advertisement is never passed on. Of its own address (or a link-local one) it
/// is harmless; one claiming another pod's address is an attempt to take that address.
fn advertisement(icmp: &[u8], in_port: PortId, table: &Table) -> Result<usize, DropReason> {
    let target = target_of(icmp)?;
    if in_port == HOST_PORT || ipv6::is_link_local(&target) {
        return Err(DropReason::NdIgnored);
    }
    let own = table
        .ports
        .get(&in_port)
        .and_then(|p| p.allowed_src6)
        .is_some_and(|a| a.octets() == target);
    if own {
        Err(DropReason::NdIgnored)
    } else {
        Err(DropReason::SpoofedSource)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::craft;
    use crate::datapath::frame::mac_for_ip;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);

    fn a6() -> Ipv6Addr {
        "fd10:244:1::2".parse().unwrap()
    }
    fn b6() -> Ipv6Addr {
        "fd10:244:1::3".parse().unwrap()
    }

    fn table() -> Table {
        let mut t = craft::demo_table_dual_stack_with_peer();
        t.insert_pod(1, A, mac_for_ip(A));
        t.insert_pod_v6(1, a6(), mac_for_ip(A));
        t.insert_pod(2, B, mac_for_ip(B));
        t.insert_pod_v6(2, b6(), mac_for_ip(B));
        t
    }

    fn run(f: &[u8], port: PortId, t: &Table) -> Result<Vec<u8>, DropReason> {
        let frame = &f[VNET_HDR_LEN..];
        let info = ipv6::parse(&frame[ETH_HDR_LEN..]).unwrap();
        let mut reply = [0u8; REPLY_LEN];
        answer(frame, &info, port, t, &mut reply).map(|n| reply[..n].to_vec())
    }

    fn verify_icmpv6(ip: &[u8]) {
        let src: [u8; 16] = ip[8..24].try_into().unwrap();
        let dst: [u8; 16] = ip[24..40].try_into().unwrap();
        let body = &ip[40..];
        let sum = checksum::sum(body, checksum::pseudo_header_v6(&src, &dst, 58, body.len()));
        assert_eq!(checksum::finish(sum), 0, "ICMPv6 checksum");
    }

    #[test]
    fn a_solicitation_for_a_pod_gets_that_pods_mac() {
        let t = table();
        let ns = craft::neighbor_solicitation(mac_for_ip(A), a6(), b6());
        let reply = run(&ns, 1, &t).unwrap();
        let eth = &reply[VNET_HDR_LEN..];
        assert_eq!(&eth[0..6], &mac_for_ip(A), "to the asker");
        assert_eq!(&eth[6..12], &mac_for_ip(B));
        let ip = &eth[ETH_HDR_LEN..];
        assert_eq!(ip[7], 255, "hop limit");
        assert_eq!(&ip[8..24], &b6().octets(), "from the target");
        assert_eq!(&ip[24..40], &a6().octets(), "to the asker");
        let na = &ip[40..];
        assert_eq!(na[0], 136);
        assert_eq!(na[4], NA_SOLICITED | NA_OVERRIDE, "a pod is no router");
        assert_eq!(&na[8..24], &b6().octets());
        assert_eq!(&na[24..32], &[2, 1, 0x0a, 0x58, 10, 244, 1, 3]);
        verify_icmpv6(ip);
    }

    #[test]
    fn the_gateway_and_remote_pods_answer_as_the_router() {
        let t = table();
        let gw = t.v6.as_ref().unwrap().gateway;
        let reply = run(
            &craft::neighbor_solicitation(mac_for_ip(A), a6(), gw),
            1,
            &t,
        )
        .unwrap();
        let na = &reply[VNET_HDR_LEN + ETH_HDR_LEN + 40..];
        assert_eq!(&na[26..32], &t.router_mac);
        assert_eq!(na[4] & NA_ROUTER, NA_ROUTER);
        // The node asking for a pod on another node (its route to the cluster is on-link).
        let remote: Ipv6Addr = "fd10:244:2::7".parse().unwrap();
        let ns = craft::neighbor_solicitation(t.router_mac, gw, remote);
        let reply = run(&ns, HOST_PORT, &t).unwrap();
        assert_eq!(&reply[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12], &t.router_mac);
    }

    #[test]
    fn probes_chatter_and_unknown_targets_are_not_answered() {
        let t = table();
        // Duplicate-address detection of the pod's own address.
        let dad = craft::neighbor_solicitation(mac_for_ip(A), Ipv6Addr::UNSPECIFIED, a6());
        assert_eq!(run(&dad, 1, &t), Err(DropReason::NdIgnored));
        let own = craft::neighbor_solicitation(mac_for_ip(A), a6(), a6());
        assert_eq!(run(&own, 1, &t), Err(DropReason::NdIgnored));
        let unknown: Ipv6Addr = "fd10:244:1::99".parse().unwrap();
        let ns = craft::neighbor_solicitation(mac_for_ip(A), a6(), unknown);
        assert_eq!(run(&ns, 1, &t), Err(DropReason::NdUnknownTarget));
        // Forwarded from elsewhere: hop limit below 255.
        let mut far = craft::neighbor_solicitation(mac_for_ip(A), a6(), b6());
        far[VNET_HDR_LEN + ETH_HDR_LEN + 7] = 64;
        assert_eq!(run(&far, 1, &t), Err(DropReason::NdIgnored));
        for icmp_type in [133, 143, 131, 134, 137] {
            let f = craft::icmpv6(
                mac_for_ip(A),
                a6(),
                "ff02::2".parse().unwrap(),
                icmp_type,
                16,
            );
            assert_eq!(
                run(&f, 1, &t),
                Err(DropReason::NdIgnored),
                "type {icmp_type}"
            );
        }
        let mut short = craft::neighbor_solicitation(mac_for_ip(A), a6(), b6());
        short.truncate(short.len() - 20);
        let len = (short.len() - VNET_HDR_LEN - ETH_HDR_LEN - 40) as u16;
        short[VNET_HDR_LEN + ETH_HDR_LEN + 4..VNET_HDR_LEN + ETH_HDR_LEN + 6]
            .copy_from_slice(&len.to_be_bytes());
        assert_eq!(run(&short, 1, &t), Err(DropReason::Malformed));
    }

    #[test]
    fn an_advertisement_for_another_pods_address_is_a_spoof() {
        let t = table();
        let own = craft::neighbor_advertisement(mac_for_ip(A), a6(), a6());
        assert_eq!(run(&own, 1, &t), Err(DropReason::NdIgnored));
        let theft = craft::neighbor_advertisement(mac_for_ip(A), a6(), b6());
        assert_eq!(run(&theft, 1, &t), Err(DropReason::SpoofedSource));
        let mut forwarded = theft.clone();
        forwarded[VNET_HDR_LEN + ETH_HDR_LEN + 7] = 64;
        assert_eq!(
            run(&forwarded, 1, &t),
            Err(DropReason::NdIgnored),
            "not from the link"
        );
        let gw = t.v6.as_ref().unwrap().gateway;
        let theft = craft::neighbor_advertisement(mac_for_ip(A), a6(), gw);
        assert_eq!(run(&theft, 1, &t), Err(DropReason::SpoofedSource));
        let ll = craft::neighbor_advertisement(
            mac_for_ip(A),
            a6(),
            "fe80::858:aff:fef4:102".parse().unwrap(),
        );
        assert_eq!(run(&ll, 1, &t), Err(DropReason::NdIgnored));
    }
}
