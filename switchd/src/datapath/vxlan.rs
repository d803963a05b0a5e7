//! VXLAN framing (RFC 7348): an 8-byte header in front of the inner Ethernet frame, carried
//! in UDP. `flags` has the I bit (0x08) set; the VNI takes the upper 24 bits of bytes 4..8.
//!
//! Buffers are laid out so that neither direction copies the frame: the virtio-net header
//! the TAP hands us is 12 bytes, so `buf[4..12]` is exactly where the VXLAN header goes,
//! and a datagram received at `buf[4..]` turns into a TAP frame by clearing `buf[..12]`.

use super::frame::{ETH_HDR_LEN, VNET_HDR_LEN};
use super::DropReason;

pub const VXLAN_HDR_LEN: usize = 8;
/// Where a VXLAN datagram starts inside a port buffer.
pub const DATAGRAM_OFFSET: usize = VNET_HDR_LEN - VXLAN_HDR_LEN;
const FLAG_VNI_VALID: u8 = 0x08;
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// Write the VXLAN header into `buf[DATAGRAM_OFFSET..VNET_HDR_LEN]`, over the virtio-net
/// header. The datagram to send is then `buf[DATAGRAM_OFFSET..]`.
#[inline]
pub fn encap_in_place(buf: &mut [u8], vni: u32) {
    write_header(&mut buf[DATAGRAM_OFFSET..VNET_HDR_LEN], vni);
}

/// Write a VXLAN header into the first 8 bytes of `h`.
#[inline]
pub fn write_header(h: &mut [u8], vni: u32) {
    h[0] = FLAG_VNI_VALID;
    h[1..4].fill(0);
    h[4..7].copy_from_slice(&vni.to_be_bytes()[1..4]);
    h[7] = 0;
}

/// Check a datagram received into `buf[DATAGRAM_OFFSET..]` and turn `buf` into a TAP frame
/// (zeroed virtio-net header + inner Ethernet frame).
#[inline]
pub fn decap_in_place(buf: &mut [u8], vni: u32) -> Result<(), DropReason> {
    if buf.len() < VNET_HDR_LEN + ETH_HDR_LEN {
        return Err(DropReason::BadTunnelPacket);
    }
    let h = &buf[DATAGRAM_OFFSET..VNET_HDR_LEN];
    if h[0] & FLAG_VNI_VALID == 0 {
        return Err(DropReason::BadTunnelPacket);
    }
    let got = u32::from_be_bytes([0, h[4], h[5], h[6]]);
    if got != vni {
        return Err(DropReason::WrongVni);
    }
    buf[..VNET_HDR_LEN].fill(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_rfc_7348() {
        let mut buf = vec![0xaau8; VNET_HDR_LEN + ETH_HDR_LEN];
        encap_in_place(&mut buf, 0x12_3456);
        assert_eq!(
            &buf[DATAGRAM_OFFSET..VNET_HDR_LEN],
            &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]
        );
        assert_eq!(decap_in_place(&mut buf, 0x12_3456), Ok(()));
        assert_eq!(&buf[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
        assert_eq!(buf[VNET_HDR_LEN], 0xaa, "inner frame untouched");
    }

    #[test]
    fn bad_datagrams_are_refused() {
        let mut short = vec![0u8; VNET_HDR_LEN + 3];
        assert_eq!(
            decap_in_place(&mut short, 1),
            Err(DropReason::BadTunnelPacket)
        );
        let mut no_flag = vec![0u8; 64];
        assert_eq!(
            decap_in_place(&mut no_flag, 0),
            Err(DropReason::BadTunnelPacket)
        );
        let mut other = vec![0u8; 64];
        encap_in_place(&mut other, 2);
        assert_eq!(decap_in_place(&mut other, 1), Err(DropReason::WrongVni));
    }
}
