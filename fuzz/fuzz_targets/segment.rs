//! TSO/USO segmentation and receive-side merging. Mode 0: a TCP super-frame (IPv4 for even
//! modes, IPv6 for odd ones) built from the input (payload, MSS), segmented as the sending switch does and merged as the receiving
//! switch does, must give back the original payload. Mode 2: a UDP super-frame segmented
//! into datagrams that carry the payload in order. Mode 1: any bytes, as a super-frame to
//! segment (TCP and UDP) and as frames to merge, are refused or handled, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchd::datapath::coalesce::Coalescer;
use switchd::datapath::craft;
use switchd::datapath::frame::{ETH_HDR_LEN, VNET_HDR_LEN};
use switchd::datapath::offload::{segment_tcp, segment_udp, VnetHdr, GSO_UDP_L4};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut out = vec![0u8; 300_000];
    if mode % 3 == 2 {
        // A UDP super-frame (USO) segmented: the datagrams carry the payload in order.
        let Some((mss, payload)) = rest.split_first_chunk::<2>() else {
            return;
        };
        let mss = u16::from_be_bytes(*mss).clamp(64, 9000);
        if payload.is_empty() || payload.len() > 60_000 {
            return;
        }
        let (a, b) = ("10.244.1.2".parse().unwrap(), "10.244.2.2".parse().unwrap());
        let mut sf = craft::ipv4_udp([2; 6], [4; 6], a, b, payload.len());
        sf[VNET_HDR_LEN + ETH_HDR_LEN + 28..].copy_from_slice(payload);
        sf[1] = GSO_UDP_L4;
        sf[4..6].copy_from_slice(&mss.to_le_bytes());
        let s =
            segment_udp(&sf, VnetHdr::read(&sf), &mut out, 8).expect("our own USO frame segments");
        assert_eq!(s.count, payload.len().div_ceil(usize::from(mss)));
        let mut joined = Vec::new();
        for i in 0..s.count {
            let d = &out[i * s.stride + 8..((i + 1) * s.stride).min(s.len)];
            let udp = &d[ETH_HDR_LEN + 20..];
            assert_eq!(
                usize::from(u16::from_be_bytes([udp[4], udp[5]])),
                udp.len(),
                "UDP length"
            );
            joined.extend_from_slice(&udp[8..]);
        }
        assert_eq!(joined, payload, "the datagrams carry the payload in order");
    } else if mode % 3 == 0 {
        let Some((mss, payload)) = rest.split_first_chunk::<2>() else {
            return;
        };
        let mss = u16::from_be_bytes(*mss).clamp(64, 9000);
        if payload.is_empty() {
            return;
        }
        // Odd modes (3, 9, ...) take IPv6: headers of 40 + 20 bytes instead of 20 + 20.
        let v6 = mode % 2 == 1;
        let headers = if v6 { 60 } else { 40 };
        let sf = if v6 {
            craft::tcp6_super_frame(payload, 1000, mss)
        } else {
            craft::tcp4_super_frame(payload, 1000, mss)
        };
        let s = segment_tcp(&sf, VnetHdr::read(&sf), &mut out, 0)
            .expect("our own super-frame segments");
        assert_eq!(s.count, payload.len().div_ceil(usize::from(mss)));
        let mut c = Coalescer::new();
        let mut merged = Vec::new();
        for i in 0..s.count {
            let seg = &out[i * s.stride..((i + 1) * s.stride).min(s.len)];
            assert_eq!(
                seg.len() - ETH_HDR_LEN - headers,
                (payload.len() - i * usize::from(mss)).min(usize::from(mss))
            );
            if !c.push(seg, 1) {
                if let Some((_, m)) = c.take() {
                    merged.extend_from_slice(&m[VNET_HDR_LEN + ETH_HDR_LEN + headers..]);
                }
                assert!(c.push(seg, 1), "a segment always starts a new super-frame");
            }
        }
        if let Some((_, m)) = c.take() {
            merged.extend_from_slice(&m[VNET_HDR_LEN + ETH_HDR_LEN + headers..]);
        }
        assert_eq!(merged, payload, "segment then merge gives back the payload");
    } else {
        let hdr = VnetHdr::read(rest);
        let _ = segment_tcp(rest, hdr, &mut out, 8);
        let _ = segment_udp(rest, hdr, &mut out, 8);
        let mut c = Coalescer::new();
        for chunk in rest.chunks(1514.min(rest.len().max(1))) {
            if !c.push(chunk, 2) {
                let _ = c.take();
            }
        }
        let _ = c.take();
    }
});
