//! The forwarding decision on any frame with any virtio-net header, from any port, against a
//! table with pods, the gateway and peers. Invariants: a verdict for every input, the
//! buffer's length unchanged, replies within the reply buffer and parseable, forwarded
//! frames still Ethernet + IPv4 or IPv6 to a port that exists, encapsulated frames addressed to
//! their peer and surviving a VXLAN round trip.
#![no_main]

use etherparse::{Ethernet2HeaderSlice, Ipv4HeaderSlice};
use libfuzzer_sys::fuzz_target;
use switchd::datapath::frame::{ETH_HDR_LEN, VNET_HDR_LEN};
use switchd::datapath::{forward, icmp, ipv6, vxlan, Verdict};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, frame)) = data.split_first() else {
        return;
    };
    let table = switchd_fuzz::table();
    let flows = switchd_fuzz::flows();
    // 0: the host port, 1..=3: pods, 4: a port the table does not know.
    let in_port = u32::from(sel % 5);
    let mut buf = frame.to_vec();
    let mut reply = vec![0u8; icmp::MAX_REPLY_LEN];
    let verdict = forward(&mut buf, in_port, table, flows, 100, &mut reply);
    assert_eq!(buf.len(), frame.len(), "forward never resizes the buffer");
    match verdict {
        Verdict::Reply(n) | Verdict::Reject { len: n, .. } => {
            assert!(
                n <= reply.len() && n >= VNET_HDR_LEN + ETH_HDR_LEN,
                "reply length {n}"
            );
            assert!(Ethernet2HeaderSlice::from_slice(&reply[VNET_HDR_LEN..n]).is_ok());
            if let Verdict::Reject { .. } = verdict {
                let ip = &reply[VNET_HDR_LEN + ETH_HDR_LEN..n];
                if ip[0] >> 4 == 6 {
                    let i = ipv6::parse(ip).expect("an ICMPv6 error parses");
                    assert_eq!(i.len, ip.len(), "its length is right");
                } else {
                    let h = Ipv4HeaderSlice::from_slice(ip).expect("an ICMP error parses");
                    assert_eq!(usize::from(h.total_len()), ip.len(), "its length is right");
                }
            }
        }
        Verdict::Forward(port) => {
            assert!(table.ports.contains_key(&port), "forwarded to port {port}");
            let eth = &buf[VNET_HDR_LEN..];
            let h = Ethernet2HeaderSlice::from_slice(eth).expect("still Ethernet");
            match h.ether_type().0 {
                0x0800 => assert!(Ipv4HeaderSlice::from_slice(&eth[ETH_HDR_LEN..]).is_ok()),
                0x86dd => assert!(ipv6::parse(&eth[ETH_HDR_LEN..]).is_ok()),
                other => panic!("forwarded ethertype {other:#06x}"),
            }
        }
        Verdict::Encap(peer) => {
            let route = table
                .peers
                .get(peer)
                .expect("encapsulated to a peer that exists");
            assert_eq!(&buf[VNET_HDR_LEN..VNET_HDR_LEN + 6], &route.mac);
            let inner = buf[VNET_HDR_LEN..].to_vec();
            vxlan::encap_in_place(&mut buf, 1);
            vxlan::decap_in_place(&mut buf, 1).expect("our own VXLAN header decapsulates");
            assert_eq!(&buf[VNET_HDR_LEN..], &inner[..], "the inner frame survives");
        }
        Verdict::Drop(_) => {}
    }
});
