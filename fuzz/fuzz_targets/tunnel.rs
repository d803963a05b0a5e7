//! A datagram at the tunnel port from a peer: VXLAN decapsulation, then the decision for a
//! frame from the tunnel. Invariants: anything accepted goes to a port on this node
//! (never back into the tunnel, never answered), as an Ethernet + IPv4 or IPv6 frame from
//! the peer's own pod prefix of that family.
#![no_main]

use etherparse::{Ethernet2HeaderSlice, Ipv4HeaderSlice};
use libfuzzer_sys::fuzz_target;
use switchd::datapath::frame::{ETH_HDR_LEN, VNET_HDR_LEN};
use switchd::datapath::vxlan::{self, DATAGRAM_OFFSET};
use switchd::datapath::{forward_from_tunnel, ipv6, Verdict};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, datagram)) = data.split_first() else {
        return;
    };
    let table = switchd_fuzz::table();
    let flows = switchd_fuzz::flows();
    let mut buf = vec![0u8; DATAGRAM_OFFSET + datagram.len()];
    buf[DATAGRAM_OFFSET..].copy_from_slice(datagram);
    if vxlan::decap_in_place(&mut buf, 1).is_err() {
        return;
    }
    // Peers 0..=2 exist; 3 does not (a peer removed while its datagrams were queued).
    let peer = usize::from(sel % 4);
    match forward_from_tunnel(&mut buf, peer, table, flows, 100) {
        Verdict::Forward(port) => {
            assert!(table.ports.contains_key(&port), "delivered to port {port}");
            let eth = &buf[VNET_HDR_LEN..];
            let h = Ethernet2HeaderSlice::from_slice(eth).expect("still Ethernet");
            if h.ether_type().0 == 0x86dd {
                let info = ipv6::parse(&eth[ETH_HDR_LEN..]).expect("IPv6");
                let src = std::net::Ipv6Addr::from(info.src);
                assert!(
                    table.peers[peer]
                        .pod_cidr_v6
                        .is_some_and(|n| n.contains(&src)),
                    "only the peer's own pods"
                );
            } else {
                let ip = Ipv4HeaderSlice::from_slice(&eth[ETH_HDR_LEN..]).expect("IPv4");
                let src = std::net::Ipv4Addr::from(ip.source());
                assert!(
                    table.peers[peer].pod_cidr.contains(&src),
                    "only the peer's own pods"
                );
            }
        }
        Verdict::Drop(_) => {}
        other => panic!("a tunnel frame got {other:?}"),
    }
});
