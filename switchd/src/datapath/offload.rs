//! Undoing the TAP's offloads before a frame leaves through the tunnel.
//!
//! With `IFF_VNET_HDR` and TSO enabled, a pod's kernel hands us TCP super-frames of up to
//! 64 KiB with a partial checksum, and a virtio-net header saying how to finish the job
//! (`gso_size`, `csum_start`, `csum_offset`). Same-node, the header travels with the frame to
//! the other TAP and the receiving kernel deals with it. A VXLAN peer (another switchd, or a
//! kernel VXLAN device) only takes finished, MTU-sized frames, so here we segment and
//! checksum in software. Nothing allocates: segments are built in a caller-owned scratch.

use super::checksum;
use super::frame::{ETH_HDR_LEN, VNET_HDR_LEN};
use super::DropReason;

const F_NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
/// UDP segmentation offload (USO, `UDP_SEGMENT` from a pod's application).
pub const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// The parts of the virtio-net header we use (little-endian, as on every host we run on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// The header at the start of `buf`; a buffer too short to hold one reads as a plain
    /// frame (all zeroes), which every consumer then refuses as too short.
    #[inline]
    pub fn read(buf: &[u8]) -> VnetHdr {
        let Some(buf) = buf.get(..10) else {
            return VnetHdr::default();
        };
        let u16_at = |i: usize| u16::from_le_bytes([buf[i], buf[i + 1]]);
        VnetHdr {
            flags: buf[0],
            gso_type: buf[1] & !GSO_ECN,
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }

    /// Write a header for a TCPv4 super-frame (tests and benchmarks use this).
    pub fn write_tcp4_gso(buf: &mut [u8], gso_size: u16, csum_start: u16) {
        Self::write_tcp_gso(buf, GSO_TCPV4, gso_size, csum_start);
    }

    /// Write a header for a TCPv6 super-frame (tests and benchmarks use this).
    pub fn write_tcp6_gso(buf: &mut [u8], gso_size: u16, csum_start: u16) {
        Self::write_tcp_gso(buf, GSO_TCPV6, gso_size, csum_start);
    }

    fn write_tcp_gso(buf: &mut [u8], gso_type: u8, gso_size: u16, csum_start: u16) {
        buf[..VNET_HDR_LEN].fill(0);
        buf[0] = F_NEEDS_CSUM;
        buf[1] = gso_type;
        buf[4..6].copy_from_slice(&gso_size.to_le_bytes());
        buf[6..8].copy_from_slice(&csum_start.to_le_bytes());
        buf[8..10].copy_from_slice(&16u16.to_le_bytes());
    }
}

/// Finish a partial checksum in place (`buf` = virtio-net header + frame). The field at
/// `csum_start + csum_offset` already holds the pseudo-header sum, as the kernel leaves it.
#[inline]
pub fn finish_checksum(buf: &mut [u8], hdr: VnetHdr) -> Result<(), DropReason> {
    if hdr.flags & F_NEEDS_CSUM == 0 {
        return Ok(());
    }
    let frame = &mut buf[VNET_HDR_LEN..];
    let (start, field) = (
        hdr.csum_start as usize,
        hdr.csum_start as usize + hdr.csum_offset as usize,
    );
    if field + 2 > frame.len() {
        return Err(DropReason::Malformed);
    }
    let c = checksum::finish(checksum::sum(&frame[start..], 0));
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Where a frame's IP header ends and which family it is. IPv6 super-frames with
/// extension headers are refused: Linux builds its TSO and USO frames without them.
#[derive(Debug, Clone, Copy)]
struct L3 {
    v6: bool,
    ip_len: usize,
}

fn l3(frame: &[u8], protocol: u8) -> Result<L3, DropReason> {
    let ip = frame.get(ETH_HDR_LEN..).ok_or(DropReason::Malformed)?;
    match ip.first().map(|b| b >> 4) {
        Some(4) if ip.len() >= 20 && ip[9] == protocol => {
            let ip_len = usize::from(ip[0] & 0x0f) * 4;
            if ip_len < 20 || ip.len() < ip_len {
                return Err(DropReason::Malformed);
            }
            Ok(L3 { v6: false, ip_len })
        }
        Some(6) if ip.len() >= 40 && ip[6] == protocol => Ok(L3 {
            v6: true,
            ip_len: 40,
        }),
        _ => Err(DropReason::Malformed),
    }
}

/// Layout of a TCP frame's headers, either family.
struct TcpLayout {
    l3: L3,
    tcp_len: usize,
}

fn tcp_layout(frame: &[u8]) -> Result<TcpLayout, DropReason> {
    let l3 = l3(frame, 6)?;
    let tcp = frame
        .get(ETH_HDR_LEN + l3.ip_len..)
        .ok_or(DropReason::Malformed)?;
    if tcp.len() < 20 {
        return Err(DropReason::Malformed);
    }
    let tcp_len = usize::from(tcp[12] >> 4) * 4;
    if tcp_len < 20 || tcp.len() < tcp_len {
        return Err(DropReason::Malformed);
    }
    Ok(TcpLayout { l3, tcp_len })
}

/// The size of the IP packets [`segment_tcp`] will produce from this super-frame
/// (`frame` starts at the Ethernet header).
pub fn tcp_segment_ip_len(frame: &[u8], gso_size: u16) -> Result<usize, DropReason> {
    let l = tcp_layout(frame)?;
    Ok(l.l3.ip_len + l.tcp_len + usize::from(gso_size))
}

/// The layout of `payload_len` bytes cut into `mss`-sized segments, each behind `headers`
/// bytes of headers and `headroom` bytes for the caller; refused if it does not fit `out_len`.
fn plan(
    payload_len: usize,
    headers: usize,
    mss: usize,
    headroom: usize,
    out_len: usize,
) -> Result<Segments, DropReason> {
    let count = payload_len.div_ceil(mss.max(1)).max(1);
    let stride = headroom + headers + mss;
    let len = (count - 1) * stride + headroom + headers + (payload_len - (count - 1) * mss);
    if mss == 0 || len > out_len {
        return Err(DropReason::Malformed);
    }
    Ok(Segments { count, stride, len })
}

/// Write segment `i` (the original headers, then `chunk`) into its place in `out`, with
/// its IP length fixed: IPv4 total length, id (original + i) and header checksum, or the
/// IPv6 payload length. Returns the frame.
fn place<'o>(
    out: &'o mut [u8],
    segs: &Segments,
    i: usize,
    headroom: usize,
    headers: &[u8],
    l: L3,
    chunk: &[u8],
) -> &'o mut [u8] {
    let at = i * segs.stride + headroom;
    let f = &mut out[at..at + headers.len() + chunk.len()];
    f[..headers.len()].copy_from_slice(headers);
    f[headers.len()..].copy_from_slice(chunk);
    let ip0 = ETH_HDR_LEN;
    if l.v6 {
        let payload = (f.len() - ip0 - l.ip_len) as u16;
        f[ip0 + 4..ip0 + 6].copy_from_slice(&payload.to_be_bytes());
        return f;
    }
    let total = (f.len() - ip0) as u16;
    let id = u16::from_be_bytes([headers[ip0 + 4], headers[ip0 + 5]]).wrapping_add(i as u16);
    f[ip0 + 2..ip0 + 4].copy_from_slice(&total.to_be_bytes());
    f[ip0 + 4..ip0 + 6].copy_from_slice(&id.to_be_bytes());
    checksum::fix_ipv4_header(&mut f[ip0..ip0 + l.ip_len]);
    f
}

/// IP header layout of a UDP frame, checked.
fn udp_l3(frame: &[u8]) -> Result<L3, DropReason> {
    let l = l3(frame, 17)?;
    if frame.len() < ETH_HDR_LEN + l.ip_len + 8 {
        return Err(DropReason::Malformed);
    }
    Ok(l)
}

/// The size of the IP packets [`segment_udp`] will produce from this super-frame.
pub fn udp_segment_ip_len(frame: &[u8], gso_size: u16) -> Result<usize, DropReason> {
    Ok(udp_l3(frame)?.ip_len + 8 + usize::from(gso_size))
}

/// Split a UDP super-frame (USO, either family) into datagrams of `gso_size` payload
/// bytes, each with its own IP header (length; for IPv4 id and checksum) and UDP header
/// (length, full checksum), laid out like [`segment_tcp`]'s output.
pub fn segment_udp(
    buf: &[u8],
    hdr: VnetHdr,
    out: &mut [u8],
    headroom: usize,
) -> Result<Segments, DropReason> {
    let frame = buf.get(VNET_HDR_LEN..).ok_or(DropReason::Malformed)?;
    let l = udp_l3(frame)?;
    let headers = ETH_HDR_LEN + l.ip_len + 8;
    let mss = usize::from(hdr.gso_size);
    let payload = &frame[headers..];
    let segs = plan(payload.len(), headers, mss, headroom, out.len())?;
    let udp0 = ETH_HDR_LEN + l.ip_len;
    for i in 0..segs.count {
        let chunk = &payload[i * mss..((i + 1) * mss).min(payload.len())];
        let f = place(out, &segs, i, headroom, &frame[..headers], l, chunk);
        let udp_len = 8 + chunk.len();
        f[udp0 + 4..udp0 + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        f[udp0 + 6] = 0;
        f[udp0 + 7] = 0;
        let pseudo = checksum::pseudo_header_of(&f[ETH_HDR_LEN..], 17, udp_len);
        let c = checksum::finish(checksum::sum(&f[udp0..], pseudo));
        // A computed 0 is sent as all ones; 0 means "no checksum" in UDP.
        let c = if c == 0 { 0xffff } else { c };
        f[udp0 + 6..udp0 + 8].copy_from_slice(&c.to_be_bytes());
    }
    Ok(segs)
}

/// Where [`segment_tcp`] put the segments: segment `i` occupies
/// `out[i * stride .. min((i + 1) * stride, len)]`, starting with the caller's headroom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub count: usize,
    pub stride: usize,
    pub len: usize,
}

/// Split a TCP super-frame (`buf` = virtio-net header + frame, IPv4 or IPv6) into segments
/// of at most `gso_size` payload bytes, each with a correct IP header and a complete TCP
/// checksum. Segments are written back to back into `out`, each preceded by `headroom`
/// untouched bytes (room for a VXLAN header), so that all but the last have the same size:
/// the layout UDP GSO sends in one call.
pub fn segment_tcp(
    buf: &[u8],
    hdr: VnetHdr,
    out: &mut [u8],
    headroom: usize,
) -> Result<Segments, DropReason> {
    let frame = buf.get(VNET_HDR_LEN..).ok_or(DropReason::Malformed)?;
    let l = tcp_layout(frame)?;
    let headers = ETH_HDR_LEN + l.l3.ip_len + l.tcp_len;
    let mss = usize::from(hdr.gso_size);
    let payload = &frame[headers..];
    let segs = plan(payload.len(), headers, mss, headroom, out.len())?;
    let tcp0 = ETH_HDR_LEN + l.l3.ip_len;
    let seq = u32::from_be_bytes([
        frame[tcp0 + 4],
        frame[tcp0 + 5],
        frame[tcp0 + 6],
        frame[tcp0 + 7],
    ]);
    for i in 0..segs.count {
        let chunk = &payload[i * mss..((i + 1) * mss).min(payload.len())];
        let f = place(out, &segs, i, headroom, &frame[..headers], l.l3, chunk);
        f[tcp0 + 4..tcp0 + 8].copy_from_slice(&seq.wrapping_add((i * mss) as u32).to_be_bytes());
        if i + 1 < segs.count {
            f[tcp0 + 13] &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f[tcp0 + 13] &= !TCP_CWR;
        }
        f[tcp0 + 16] = 0;
        f[tcp0 + 17] = 0;
        let tcp_seg_len = l.tcp_len + chunk.len();
        let pseudo = checksum::pseudo_header_of(&f[ETH_HDR_LEN..], 6, tcp_seg_len);
        let c = checksum::finish(checksum::sum(&f[tcp0..], pseudo));
        f[tcp0 + 16..tcp0 + 18].copy_from_slice(&c.to_be_bytes());
    }
    Ok(segs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::craft;

    fn verify_tcp4(frame: &[u8]) {
        let ip = &frame[ETH_HDR_LEN..];
        assert_eq!(
            checksum::finish(checksum::sum(&ip[..20], 0)),
            0,
            "IPv4 header checksum"
        );
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        assert_eq!(total, ip.len(), "IPv4 total length");
        let src = [ip[12], ip[13], ip[14], ip[15]];
        let dst = [ip[16], ip[17], ip[18], ip[19]];
        let tcp = &ip[20..];
        assert_eq!(
            checksum::finish(checksum::sum(
                tcp,
                checksum::pseudo_header_v4(src, dst, 6, tcp.len())
            )),
            0,
            "TCP checksum"
        );
    }

    #[test]
    fn a_super_frame_becomes_mss_sized_segments_with_valid_checksums_and_sequence() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let buf = craft::tcp4_super_frame(&payload, 1000, 1400);
        let hdr = VnetHdr::read(&buf);
        let mut out = vec![0u8; 16 * 1024];
        let segments = segment_tcp(&buf, hdr, &mut out, 8).unwrap();
        let n = segments.count;
        assert_eq!(n, 8);
        assert_eq!(segments.stride, 8 + 14 + 40 + 1400);
        let segs: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                out[i * segments.stride + 8..((i + 1) * segments.stride).min(segments.len)].to_vec()
            })
            .collect();
        assert_eq!(
            segs[7].len(),
            14 + 40 + 10_000 - 7 * 1400,
            "the last segment is the rest"
        );
        let mut rebuilt = Vec::new();
        for (i, f) in segs.iter().enumerate() {
            verify_tcp4(f);
            let tcp = &f[ETH_HDR_LEN + 20..];
            let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            assert_eq!(seq, 1000 + (i as u32) * 1400);
            let flags = tcp[13];
            assert_eq!(
                flags & TCP_PSH != 0,
                i == n - 1,
                "PSH only on the last segment"
            );
            rebuilt.extend_from_slice(&tcp[20..]);
        }
        assert_eq!(rebuilt, payload);
    }

    #[test]
    fn a_uso_super_frame_becomes_datagrams_with_valid_checksums() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
        let mut buf = craft::ipv4_udp(
            [2; 6],
            [4; 6],
            "10.244.1.2".parse().unwrap(),
            "10.244.2.2".parse().unwrap(),
            payload.len(),
        );
        buf[VNET_HDR_LEN + ETH_HDR_LEN + 28..].copy_from_slice(&payload);
        buf[1] = GSO_UDP_L4;
        buf[4..6].copy_from_slice(&1200u16.to_le_bytes());
        let mut out = vec![0u8; 8192];
        let s = segment_udp(&buf, VnetHdr::read(&buf), &mut out, 8).unwrap();
        assert_eq!(s.count, 3);
        let mut rebuilt = Vec::new();
        for i in 0..s.count {
            let f = &out[i * s.stride + 8..((i + 1) * s.stride).min(s.len)];
            let ip = &f[ETH_HDR_LEN..];
            assert_eq!(checksum::finish(checksum::sum(&ip[..20], 0)), 0);
            assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
            let udp = &ip[20..];
            assert_eq!(usize::from(u16::from_be_bytes([udp[4], udp[5]])), udp.len());
            let sum = checksum::sum(
                udp,
                checksum::pseudo_header_v4([10, 244, 1, 2], [10, 244, 2, 2], 17, udp.len()),
            );
            assert_eq!(checksum::finish(sum), 0, "UDP checksum of datagram {i}");
            rebuilt.extend_from_slice(&udp[8..]);
        }
        assert_eq!(rebuilt, payload);
    }

    #[test]
    fn a_partial_checksum_is_finished() {
        let payload = vec![0x5au8; 333];
        let mut buf = craft::tcp4_super_frame(&payload, 1, 1400);
        buf[1] = GSO_NONE; // a plain frame that still needs its checksum
        let hdr = VnetHdr::read(&buf);
        finish_checksum(&mut buf, hdr).unwrap();
        verify_tcp4(&buf[VNET_HDR_LEN..]);
    }

    #[test]
    fn a_buffer_shorter_than_the_header_reads_as_a_plain_frame() {
        // Found by the `segment` fuzz target (fuzz/artifacts: 8 bytes, 0x01 0x01 0x01 ...).
        let crasher = [0x01, 0x01, 0x01, 0x00, 0x00, 0x78, 0x05, 0x22];
        assert_eq!(VnetHdr::read(&crasher), VnetHdr::default());
        assert!(segment_tcp(&crasher, VnetHdr::read(&crasher), &mut [0u8; 64], 8).is_err());
        assert!(segment_udp(&crasher, VnetHdr::read(&crasher), &mut [0u8; 64], 8).is_err());
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        let mut buf = craft::tcp4_super_frame(&[1, 2, 3], 1, 1400);
        buf.truncate(VNET_HDR_LEN + ETH_HDR_LEN + 30);
        let hdr = VnetHdr::read(&buf);
        assert_eq!(
            segment_tcp(&buf, hdr, &mut [0u8; 2048], 8),
            Err(DropReason::Malformed)
        );
        let big = craft::tcp4_super_frame(&[0u8; 5000], 1, 1400);
        let too_small = segment_tcp(&big, VnetHdr::read(&big), &mut [0u8; 2048], 8);
        assert_eq!(too_small, Err(DropReason::Malformed), "output too small");
        assert_eq!(finish_checksum(&mut buf, hdr), Err(DropReason::Malformed));
    }

    #[test]
    fn a_tcpv6_super_frame_becomes_segments_with_valid_checksums_and_lengths() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 11) as u8).collect();
        let buf = craft::tcp6_super_frame(&payload, 77, 1200);
        let hdr = VnetHdr::read(&buf);
        assert_eq!(hdr.gso_type, GSO_TCPV6);
        assert_eq!(
            tcp_segment_ip_len(&buf[VNET_HDR_LEN..], 1200),
            Ok(40 + 20 + 1200)
        );
        let mut out = vec![0u8; 16 * 1024];
        let s = segment_tcp(&buf, hdr, &mut out, 8).unwrap();
        assert_eq!(s.count, 5);
        let mut rebuilt = Vec::new();
        for i in 0..s.count {
            let f = &out[i * s.stride + 8..((i + 1) * s.stride).min(s.len)];
            let ip = &f[ETH_HDR_LEN..];
            assert_eq!(
                usize::from(u16::from_be_bytes([ip[4], ip[5]])),
                ip.len() - 40,
                "payload length"
            );
            let src: [u8; 16] = ip[8..24].try_into().unwrap();
            let dst: [u8; 16] = ip[24..40].try_into().unwrap();
            let tcp = &ip[40..];
            let sum = checksum::sum(tcp, checksum::pseudo_header_v6(&src, &dst, 6, tcp.len()));
            assert_eq!(checksum::finish(sum), 0, "TCP checksum of segment {i}");
            let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            assert_eq!(seq, 77 + i as u32 * 1200);
            rebuilt.extend_from_slice(&tcp[20..]);
        }
        assert_eq!(rebuilt, payload);
    }
}
