//! The UDP tunnel between nodes: one socket bound to the underlay address, VXLAN framing,
//! and the peers it may talk to.
//!
//! Sending happens on the port tasks (a frame for a remote pod is encapsulated and sent by
//! the task that read it); receiving is one task that checks the sender against the peer
//! list, decapsulates in place and hands the frame to the core.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::Peer;
use crate::datapath::offload::{self, VnetHdr, GSO_NONE, GSO_TCPV4};
use crate::datapath::vxlan::{self, DATAGRAM_OFFSET};
use crate::datapath::{forward_from_tunnel, DropReason, Verdict};
use crate::port::{PortCounters, FRAME_BUF_LEN};
use crate::stats::Stats;
use crate::switch::SnapshotCell;

/// A peer node as the datapath sees it: its configuration and its counters. Counters live as
/// long as the peer stays unchanged across reloads.
#[derive(Debug)]
pub struct PeerState {
    pub peer: Peer,
    pub counters: PortCounters,
    pub since: SystemTime,
}

impl PeerState {
    pub fn new(peer: &Peer) -> PeerState {
        PeerState {
            peer: peer.clone(),
            counters: PortCounters::default(),
            since: SystemTime::now(),
        }
    }
}

#[derive(Debug)]
pub struct Tunnel {
    pub socket: tokio::net::UdpSocket,
    pub vni: u32,
    pub local: SocketAddrV4,
}

impl Tunnel {
    pub fn bind(local: SocketAddrV4, vni: u32) -> anyhow::Result<Tunnel> {
        use anyhow::Context;
        let std_socket = std::net::UdpSocket::bind(local)
            .with_context(|| format!("binding the tunnel socket to {local}"))?;
        std_socket.set_nonblocking(true)?;
        let socket = tokio::net::UdpSocket::from_std(std_socket)?;
        Ok(Tunnel { socket, vni, local })
    }

    /// Encapsulate `buf` (a port buffer whose frame the core already addressed to `peer`)
    /// and send it; super-frames are segmented and partial checksums finished first.
    /// `scratch` holds one segment at a time.
    pub fn send_frame(&self, buf: &mut [u8], peer: &PeerState, scratch: &mut [u8], stats: &Stats) {
        let hdr = VnetHdr::read(buf);
        let result = match hdr.gso_type {
            GSO_NONE => offload::finish_checksum(buf, hdr).map(|()| {
                self.send_one(buf, peer, stats);
            }),
            GSO_TCPV4 => {
                offload::segment_tcp4(buf, hdr, scratch, |seg| self.send_one(seg, peer, stats))
                    .map(|_| ())
            }
            _ => Err(DropReason::UnsupportedProtocol),
        };
        if let Err(reason) = result {
            peer.counters.drops.fetch_add(1, Relaxed);
            stats.count_drop(reason);
        }
    }

    #[inline]
    fn send_one(&self, buf: &mut [u8], peer: &PeerState, stats: &Stats) {
        vxlan::encap_in_place(buf, self.vni);
        let datagram = &buf[DATAGRAM_OFFSET..];
        match self
            .socket
            .try_send_to(datagram, SocketAddr::V4(peer.peer.addr))
        {
            Ok(_) => {
                peer.counters.tx_packets.fetch_add(1, Relaxed);
                peer.counters
                    .tx_bytes
                    .fetch_add(datagram.len() as u64, Relaxed);
            }
            Err(_) => {
                peer.counters.drops.fetch_add(1, Relaxed);
                stats.count_drop(DropReason::WriteFailed);
            }
        }
    }
}

/// Receive datagrams until the socket fails, delivering what the core accepts.
pub async fn receive(tunnel: Arc<Tunnel>, table: Arc<SnapshotCell>, stats: Arc<Stats>) {
    let mut buf = vec![0u8; FRAME_BUF_LEN];
    loop {
        if let Err(e) = tunnel.socket.readable().await {
            tracing::error!(error = %e, "tunnel socket failed; cross-node traffic stops");
            return;
        }
        let snapshot = table.load();
        for _ in 0..crate::port::BATCH {
            let (n, from) = match tunnel.socket.try_recv_from(&mut buf[DATAGRAM_OFFSET..]) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "tunnel receive error");
                    break;
                }
            };
            let SocketAddr::V4(from) = from else {
                stats.count_drop(DropReason::UnknownPeer);
                continue;
            };
            // Kernel VXLAN devices send from varying source ports: match the address only.
            let Some(&idx) = snapshot.peer_by_addr.get(&u32::from(*from.ip())) else {
                stats.count_drop(DropReason::UnknownPeer);
                tracing::trace!(%from, "datagram from an unknown sender dropped");
                continue;
            };
            let peer = &snapshot.peers[idx];
            let frame = &mut buf[..DATAGRAM_OFFSET + n];
            if let Err(reason) = vxlan::decap_in_place(frame, tunnel.vni) {
                peer.counters.drops.fetch_add(1, Relaxed);
                stats.count_drop(reason);
                continue;
            }
            peer.counters.rx_packets.fetch_add(1, Relaxed);
            peer.counters.rx_bytes.fetch_add(n as u64, Relaxed);
            match forward_from_tunnel(frame, idx, &snapshot.table) {
                Verdict::Forward(port) => match snapshot.ports.get(&port) {
                    Some(out) => out.transmit(frame, &stats),
                    None => stats.count_drop(DropReason::NoRoute),
                },
                Verdict::Drop(reason) => {
                    peer.counters.drops.fetch_add(1, Relaxed);
                    stats.count_drop(reason);
                }
                other => {
                    tracing::debug!(verdict = ?other, "unexpected verdict for a tunnel frame");
                    stats.count_drop(DropReason::NoRoute);
                }
            }
        }
    }
}
