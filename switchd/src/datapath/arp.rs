//! ARP: the switch answers for every address it knows, so nothing is ever flooded.
//! Parsing and emitting use `smoltcp::wire`, which validates lengths and field sizes.

use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetAddress};

use super::frame::{clear_vnet_hdr, ETHERTYPE_ARP, ETH_HDR_LEN, VNET_HDR_LEN};
use super::table::{PortId, Table};
use super::DropReason;

/// Length of a reply written by [`answer`]: virtio-net header, Ethernet header, ARP body.
pub const REPLY_LEN: usize = VNET_HDR_LEN + ETH_HDR_LEN + 28;

/// Decide on an ARP frame (`frame` starts at the Ethernet header). On success the reply,
/// ready to write back to the input port, is in `reply[..REPLY_LEN]`.
pub fn answer(
    frame: &[u8],
    in_port: PortId,
    table: &Table,
    reply: &mut [u8],
) -> Result<usize, DropReason> {
    let packet =
        ArpPacket::new_checked(&frame[ETH_HDR_LEN..]).map_err(|_| DropReason::Malformed)?;
    let ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = ArpRepr::parse(&packet).map_err(|_| DropReason::Malformed)?
    else {
        return Err(DropReason::Malformed);
    };
    if operation != ArpOperation::Request {
        return Err(DropReason::ArpIgnored);
    }
    // Pods and the gateway answer with their own MAC; addresses on other nodes with the
    // router MAC, so the node's kernel sends them to us for the tunnel.
    let target = target_protocol_addr.octets();
    let (mac, owner) = match table.lookup(target) {
        Some(ep) => (ep.mac, Some(ep.port)),
        None if table.lookup_peer(target).is_some() => (table.router_mac, None),
        None => return Err(DropReason::ArpUnknownTarget),
    };
    // A port asking about its own address is probing for duplicates (RFC 5227); answering
    // would make it believe its address is taken.
    if owner == Some(in_port) {
        return Err(DropReason::ArpIgnored);
    }

    let reply = &mut reply[..REPLY_LEN];
    clear_vnet_hdr(reply);
    let eth = &mut reply[VNET_HDR_LEN..];
    eth[0..6].copy_from_slice(source_hardware_addr.as_bytes());
    eth[6..12].copy_from_slice(&mac);
    eth[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(mac),
        source_protocol_addr: target_protocol_addr,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    };
    repr.emit(&mut ArpPacket::new_unchecked(&mut eth[ETH_HDR_LEN..]));
    Ok(REPLY_LEN)
}
