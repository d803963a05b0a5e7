//! Receive-side coalescing: TCP segments that arrived through the tunnel are merged back into
//! one super-frame before the TAP write, the reverse of `offload::segment_tcp`.
//!
//! Writing 64 KiB to a TAP costs one system call and one pass through the pod's stack;
//! writing 45 segments of 1448 bytes costs 45 of each. The merged frame carries a virtio-net
//! header (GSO TCPv4 or TCPv6, `gso_size` = the segments' payload size, partial checksum), which is
//! exactly what a pod's own TSO would have produced. The rules follow Linux's `tcp_gro_receive`:
//! same flow, consecutive sequence numbers, same ACK, identical header fields and options,
//! equal-sized segments with at most a shorter last one, no SYN/FIN/RST/URG/CWR, PSH only on
//! the last. Every segment's checksum is verified before it is merged, so a corrupted segment
//! is never hidden inside a super-frame: it is written on its own and the pod drops it.

use super::checksum;
use super::frame::{ETH_HDR_LEN, VNET_HDR_LEN};
use super::offload::{GSO_TCPV4, GSO_TCPV6};
use super::table::PortId;

const IP_LEN: usize = 20;
const IP6_LEN: usize = 40;
const TCP_SYN_FIN_RST_URG_CWR: u8 = 0x02 | 0x01 | 0x04 | 0x20 | 0x80;
const TCP_PSH: u8 = 0x08;
/// Largest merged IP packet (the IPv4 total-length field).
const MAX_IP: usize = 65_535;
const F_NEEDS_CSUM: u8 = 1;

/// Pending super-frame for one destination port.
pub struct Coalescer {
    buf: Vec<u8>,
    len: usize,
    port: PortId,
    segments: usize,
    mss: usize,
    next_seq: u32,
    tcp_len: usize,
    /// The IP header's length: 20 (IPv4 without options) or 40 (IPv6 without extensions).
    ip_len: usize,
    /// No more segments may join (a shorter segment or PSH was merged).
    closed: bool,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer::new()
    }
}

/// The parts of a TCP frame that decide whether it can be merged.
struct Seg<'a> {
    frame: &'a [u8],
    ip_len: usize,
    tcp_len: usize,
    payload: usize,
    seq: u32,
    flags: u8,
}

fn parse(frame: &[u8]) -> Option<Seg<'_>> {
    let ip = frame.get(ETH_HDR_LEN..)?;
    let ip_len = match ip.first()? >> 4 {
        // IPv4 without options, TCP, DF set and not a fragment.
        4 if ip.len() >= IP_LEN + 20
            && ip[0] == 0x45
            && ip[9] == 6
            && ip[6] & 0x40 != 0
            && (ip[6] & 0x3f) | ip[7] == 0
            && usize::from(u16::from_be_bytes([ip[2], ip[3]])) == ip.len() =>
        {
            IP_LEN
        }
        // IPv6 with TCP right behind the header (no extension headers).
        6 if ip.len() >= IP6_LEN + 20
            && ip[6] == 6
            && usize::from(u16::from_be_bytes([ip[4], ip[5]])) + IP6_LEN == ip.len() =>
        {
            IP6_LEN
        }
        _ => return None,
    };
    let tcp = &ip[ip_len..];
    let tcp_len = usize::from(tcp[12] >> 4) * 4;
    if tcp_len < 20 || tcp_len > tcp.len() {
        return None;
    }
    let flags = tcp[13];
    if flags & TCP_SYN_FIN_RST_URG_CWR != 0 {
        return None;
    }
    let payload = tcp.len() - tcp_len;
    if payload == 0 {
        return None;
    }
    // Verify the segment before it disappears into a super-frame.
    if checksum::finish(checksum::sum(
        tcp,
        checksum::pseudo_header_of(ip, 6, tcp.len()),
    )) != 0
    {
        return None;
    }
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    Some(Seg {
        frame,
        ip_len,
        tcp_len,
        payload,
        seq,
        flags,
    })
}

impl Coalescer {
    pub fn new() -> Coalescer {
        Coalescer {
            buf: vec![0u8; VNET_HDR_LEN + ETH_HDR_LEN + MAX_IP],
            len: 0,
            port: 0,
            segments: 0,
            mss: 0,
            next_seq: 0,
            tcp_len: 0,
            ip_len: IP_LEN,
            closed: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.segments == 0
    }

    /// Offer a frame (Ethernet onwards) bound for `port`. Returns false when it cannot be
    /// merged into the pending super-frame nor start one; flush first, then write it alone.
    pub fn push(&mut self, frame: &[u8], port: PortId) -> bool {
        let Some(seg) = parse(frame) else {
            return false;
        };
        if self.segments == 0 {
            self.start(&seg, port);
            return true;
        }
        if !self.fits(&seg, port) {
            return false;
        }
        let payload = &frame[ETH_HDR_LEN + seg.ip_len + seg.tcp_len..];
        self.buf[self.len..self.len + payload.len()].copy_from_slice(payload);
        self.len += payload.len();
        self.segments += 1;
        self.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        if seg.payload < self.mss || seg.flags & TCP_PSH != 0 {
            self.closed = true;
        }
        if seg.flags & TCP_PSH != 0 {
            self.buf[VNET_HDR_LEN + ETH_HDR_LEN + self.ip_len + 13] |= TCP_PSH;
        }
        true
    }

    fn start(&mut self, seg: &Seg<'_>, port: PortId) {
        let n = seg.frame.len();
        self.buf[VNET_HDR_LEN..VNET_HDR_LEN + n].copy_from_slice(seg.frame);
        self.len = VNET_HDR_LEN + n;
        self.port = port;
        self.segments = 1;
        self.mss = seg.payload;
        self.tcp_len = seg.tcp_len;
        self.ip_len = seg.ip_len;
        self.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        self.closed = seg.flags & TCP_PSH != 0;
    }

    fn fits(&self, seg: &Seg<'_>, port: PortId) -> bool {
        if self.closed
            || port != self.port
            || seg.tcp_len != self.tcp_len
            || seg.ip_len != self.ip_len
            || seg.payload > self.mss
            || seg.seq != self.next_seq
        {
            return false;
        }
        if self.len - VNET_HDR_LEN - ETH_HDR_LEN + seg.payload > MAX_IP {
            return false;
        }
        let head = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + ETH_HDR_LEN + self.ip_len + self.tcp_len];
        let f = seg.frame;
        let (ip0, tcp0) = (ETH_HDR_LEN, ETH_HDR_LEN + self.ip_len);
        // Ethernet header; IPv4 version..TOS, flags, TTL, protocol, addresses (IPv6:
        // version, class and flow label, next header, hop limit, addresses);
        // TCP ports, ACK, data offset, window, and every option byte.
        let same_ip = if self.ip_len == IP6_LEN {
            f[ip0..ip0 + 4] == head[ip0..ip0 + 4] && f[ip0 + 6..tcp0] == head[ip0 + 6..tcp0]
        } else {
            f[ip0..ip0 + 2] == head[ip0..ip0 + 2]
                && f[ip0 + 6..ip0 + 10] == head[ip0 + 6..ip0 + 10]
                && f[ip0 + 12..ip0 + 20] == head[ip0 + 12..ip0 + 20]
        };
        f[..ETH_HDR_LEN] == head[..ETH_HDR_LEN]
            && same_ip
            && f[tcp0..tcp0 + 4] == head[tcp0..tcp0 + 4]
            && f[tcp0 + 8..tcp0 + 13] == head[tcp0 + 8..tcp0 + 13]
            && f[tcp0 + 13] & !TCP_PSH == head[tcp0 + 13] & !TCP_PSH
            && f[tcp0 + 14..tcp0 + 16] == head[tcp0 + 14..tcp0 + 16]
            && f[tcp0 + 20..tcp0 + self.tcp_len] == head[tcp0 + 20..tcp0 + self.tcp_len]
    }

    /// Finish the pending super-frame: its destination port and the buffer to write
    /// (virtio-net header + frame). Empty afterwards.
    pub fn take(&mut self) -> Option<(PortId, &[u8])> {
        if self.segments == 0 {
            return None;
        }
        let segments = std::mem::take(&mut self.segments);
        let ip_len = self.ip_len;
        let (ip0, tcp0) = (
            VNET_HDR_LEN + ETH_HDR_LEN,
            VNET_HDR_LEN + ETH_HDR_LEN + ip_len,
        );
        let b = &mut self.buf[..self.len];
        b[..VNET_HDR_LEN].fill(0);
        if segments > 1 {
            let gso_type = if ip_len == IP6_LEN {
                let payload = (self.len - tcp0) as u16;
                b[ip0 + 4..ip0 + 6].copy_from_slice(&payload.to_be_bytes());
                GSO_TCPV6
            } else {
                let ip_total = (self.len - ip0) as u16;
                b[ip0 + 2..ip0 + 4].copy_from_slice(&ip_total.to_be_bytes());
                checksum::fix_ipv4_header(&mut b[ip0..tcp0]);
                GSO_TCPV4
            };
            // Partial checksum, as TSO leaves it: the pseudo-header sum, not complemented;
            // the receiving kernel treats the (verified) payload as checksum-complete.
            let partial =
                !checksum::finish(checksum::pseudo_header_of(&b[ip0..], 6, self.len - tcp0));
            b[tcp0 + 16..tcp0 + 18].copy_from_slice(&partial.to_be_bytes());
            b[0] = F_NEEDS_CSUM;
            b[1] = gso_type;
            b[2..4].copy_from_slice(&((ETH_HDR_LEN + ip_len + self.tcp_len) as u16).to_le_bytes());
            b[4..6].copy_from_slice(&(self.mss as u16).to_le_bytes());
            b[6..8].copy_from_slice(&((ETH_HDR_LEN + ip_len) as u16).to_le_bytes());
            b[8..10].copy_from_slice(&16u16.to_le_bytes());
        }
        Some((self.port, &self.buf[..self.len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::craft;
    use crate::datapath::offload::{finish_checksum, segment_tcp, VnetHdr};

    /// Segment a super-frame the way the sending switch does; return the frames.
    fn segments(payload: &[u8], mss: u16) -> Vec<Vec<u8>> {
        let sf = craft::tcp4_super_frame(payload, 5000, mss);
        let mut out = vec![0u8; 200_000];
        let s = segment_tcp(&sf, VnetHdr::read(&sf), &mut out, 0).unwrap();
        (0..s.count)
            .map(|i| out[i * s.stride..((i + 1) * s.stride).min(s.len)].to_vec())
            .collect()
    }

    #[test]
    fn segments_merge_back_into_the_original_super_frame() {
        let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let segs = segments(&payload, 1400);
        let mut c = Coalescer::new();
        for s in &segs {
            assert!(c.push(s, 3));
        }
        let (port, merged) = c.take().unwrap();
        assert_eq!(port, 3);
        let hdr = VnetHdr::read(merged);
        assert_eq!((hdr.gso_type, hdr.gso_size), (GSO_TCPV4, 1400));
        assert_eq!(
            &merged[VNET_HDR_LEN + ETH_HDR_LEN + 40..],
            &payload[..],
            "payload intact and in order"
        );
        // Splitting it again gives the same segments (checksums included).
        let mut out = vec![0u8; 200_000];
        let again = segment_tcp(merged, hdr, &mut out, 0).unwrap();
        for (i, s) in segs.iter().enumerate() {
            let a = &out[i * again.stride..((i + 1) * again.stride).min(again.len)];
            assert_eq!(&a[..ETH_HDR_LEN + 4], &s[..ETH_HDR_LEN + 4]);
            assert_eq!(
                &a[ETH_HDR_LEN + 20..],
                &s[ETH_HDR_LEN + 20..],
                "segment {i}"
            );
        }
        // Finishing the partial checksum of a single merged frame gives a valid one.
        let mut one = merged.to_vec();
        one[1] = 0;
        let one_hdr = VnetHdr::read(&one);
        finish_checksum(&mut one, one_hdr).unwrap();
        let ip = &one[VNET_HDR_LEN + ETH_HDR_LEN..];
        let sum = checksum::sum(
            &ip[20..],
            checksum::pseudo_header_v4([10, 244, 1, 2], [10, 244, 2, 2], 6, ip.len() - 20),
        );
        assert_eq!(checksum::finish(sum), 0);
        assert!(c.is_empty());
    }

    #[test]
    fn gaps_other_flows_and_corrupted_segments_are_not_merged() {
        let segs = segments(&vec![7u8; 7000], 1400);
        let mut c = Coalescer::new();
        assert!(c.push(&segs[0], 1));
        assert!(!c.push(&segs[2], 1), "a gap in the sequence");
        assert!(!c.push(&segs[1], 2), "another port");
        let mut corrupt = segs[1].clone();
        *corrupt.last_mut().unwrap() ^= 0xff;
        assert!(!c.push(&corrupt, 1), "a bad checksum is never merged");
        let mut other = segs[1].clone();
        other[ETH_HDR_LEN + 20 + 8] ^= 1; // a different ACK
        assert!(!c.push(&other, 1));
        assert!(c.push(&segs[1], 1));
        let (_, merged) = c.take().unwrap();
        assert_eq!(merged.len(), VNET_HDR_LEN + ETH_HDR_LEN + 40 + 2800);
        // A single segment goes out as a plain frame with its own valid checksum.
        assert!(c.push(&segs[3], 1));
        let (_, single) = c.take().unwrap();
        assert_eq!(&single[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
        assert_eq!(&single[VNET_HDR_LEN..], &segs[3][..]);
        // Not TCP: refused.
        let udp = craft::ipv4_udp(
            [2; 6],
            [4; 6],
            "10.244.2.2".parse().unwrap(),
            "10.244.1.2".parse().unwrap(),
            100,
        );
        assert!(!c.push(&udp[VNET_HDR_LEN..], 1));
    }

    #[test]
    fn tcpv6_segments_merge_into_a_tcpv6_super_frame() {
        let payload: Vec<u8> = (0..9000u32).map(|i| (i % 241) as u8).collect();
        let sf = craft::tcp6_super_frame(&payload, 9, 1200);
        let mut out = vec![0u8; 200_000];
        let s = segment_tcp(&sf, VnetHdr::read(&sf), &mut out, 0).unwrap();
        let segs: Vec<Vec<u8>> = (0..s.count)
            .map(|i| out[i * s.stride..((i + 1) * s.stride).min(s.len)].to_vec())
            .collect();
        let mut c = Coalescer::new();
        for seg in &segs {
            assert!(c.push(seg, 4));
        }
        let (_, merged) = c.take().unwrap();
        let hdr = VnetHdr::read(merged);
        assert_eq!(
            (hdr.gso_type, hdr.gso_size, hdr.csum_start),
            (GSO_TCPV6, 1200, (ETH_HDR_LEN + 40) as u16)
        );
        let ip = &merged[VNET_HDR_LEN + ETH_HDR_LEN..];
        assert_eq!(
            usize::from(u16::from_be_bytes([ip[4], ip[5]])),
            ip.len() - 40,
            "payload length"
        );
        assert_eq!(&ip[60..], &payload[..]);
        // The partial checksum finishes into a valid one.
        let mut one = merged.to_vec();
        one[1] = 0;
        let one_hdr = VnetHdr::read(&one);
        finish_checksum(&mut one, one_hdr).unwrap();
        let ip = &one[VNET_HDR_LEN + ETH_HDR_LEN..];
        let (src, dst): ([u8; 16], [u8; 16]) = (
            ip[8..24].try_into().unwrap(),
            ip[24..40].try_into().unwrap(),
        );
        let sum = checksum::sum(
            &ip[40..],
            checksum::pseudo_header_v6(&src, &dst, 6, ip.len() - 40),
        );
        assert_eq!(checksum::finish(sum), 0);
        // An IPv4 segment never joins an IPv6 super-frame.
        assert!(c.push(&segs[0], 4));
        let v4 = segments(&[1u8; 3000], 1400);
        assert!(!c.push(&v4[0], 4));
    }
}
