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
use std::io::IoSliceMut;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;

use crate::datapath::coalesce::Coalescer;
use crate::datapath::frame::VNET_HDR_LEN;
use crate::datapath::offload::{self, Segments, VnetHdr, GSO_NONE, GSO_TCPV4, GSO_UDP_L4};
use crate::datapath::vxlan::{self, DATAGRAM_OFFSET, VXLAN_HDR_LEN};
use crate::datapath::{forward_from_tunnel, DropReason, Verdict};
use crate::port::PortCounters;
use crate::stats::Stats;
use crate::switch::{Snapshot, SnapshotCell};

/// A peer node as the datapath sees it: its configuration and its counters. Counters live as
/// long as the peer stays unchanged across reloads.
#[derive(Debug)]
pub struct PeerState {
    pub peer: Peer,
    pub counters: PortCounters,
    pub since: SystemTime,
    pub source: PeerSource,
}

/// Where a peer came from; each source replaces only its own peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerSource {
    /// The config file or the peers file.
    Static,
    /// A node record in etcd.
    Etcd,
}

impl PeerSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerSource::Static => "static",
            PeerSource::Etcd => "etcd",
        }
    }
}

impl PeerState {
    pub fn new(peer: &Peer, source: PeerSource) -> PeerState {
        PeerState {
            peer: peer.clone(),
            counters: PortCounters::default(),
            since: SystemTime::now(),
            source,
        }
    }
}

pub struct Tunnel {
    pub socket: tokio::net::UdpSocket,
    /// GSO/GRO state of the socket (`quinn-udp`: `UDP_SEGMENT` sends, `UDP_GRO` receives,
    /// with the fallbacks for kernels or devices without them).
    state: UdpSocketState,
    pub vni: u32,
    pub local: SocketAddrV4,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("local", &self.local)
            .field("vni", &self.vni)
            .finish()
    }
}

/// The largest UDP payload one GSO send may carry over IPv4.
const MAX_GSO_PAYLOAD: usize = 65_507;
/// Receive buffer: one GRO batch (up to 64 KiB) plus room in front for decapsulation.
const RECV_BUF_LEN: usize = DATAGRAM_OFFSET + 65_536 + 4096;

impl Tunnel {
    pub fn bind(local: SocketAddrV4, vni: u32) -> anyhow::Result<Tunnel> {
        use anyhow::Context;
        let std_socket = std::net::UdpSocket::bind(local)
            .with_context(|| format!("binding the tunnel socket to {local}"))?;
        std_socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&std_socket).into())
            .context("configuring GSO/GRO on the tunnel socket")?;
        // Deep buffers: a GSO burst is dozens of datagrams at once.
        let _ = state.set_send_buffer_size((&std_socket).into(), 4 << 20);
        let _ = state.set_recv_buffer_size((&std_socket).into(), 4 << 20);
        let socket = tokio::net::UdpSocket::from_std(std_socket)?;
        tracing::info!(%local, vni, gso_segments = state.max_gso_segments(), gro_segments = state.gro_segments(), "tunnel socket ready");
        Ok(Tunnel {
            socket,
            state,
            vni,
            local,
        })
    }

    /// Encapsulate `buf` (a port buffer whose frame the core already addressed to `peer`)
    /// and send it. A TSO super-frame is segmented into `scratch` with a VXLAN header in
    /// front of every segment and leaves in as few GSO sends as the kernel allows.
    pub fn send_frame(&self, buf: &mut [u8], peer: &PeerState, scratch: &mut [u8], stats: &Stats) {
        let hdr = VnetHdr::read(buf);
        let result = match hdr.gso_type {
            GSO_NONE => offload::finish_checksum(buf, hdr).map(|()| {
                vxlan::encap_in_place(buf, self.vni);
                self.transmit(&buf[DATAGRAM_OFFSET..], None, 1, peer, stats);
            }),
            GSO_TCPV4 => offload::segment_tcp4(buf, hdr, scratch, VXLAN_HDR_LEN)
                .map(|segs| self.send_segments(scratch, segs, peer, stats)),
            GSO_UDP_L4 => offload::segment_udp4(buf, hdr, scratch, VXLAN_HDR_LEN)
                .map(|segs| self.send_segments(scratch, segs, peer, stats)),
            _ => Err(DropReason::UnsupportedProtocol),
        };
        if let Err(reason) = result {
            tracing::debug!(
                ?reason,
                ?hdr,
                len = buf.len(),
                "cannot send frame through the tunnel"
            );
            peer.counters.drops.fetch_add(1, Relaxed);
            stats.count_drop(reason);
        }
    }

    fn send_segments(&self, out: &mut [u8], segs: Segments, peer: &PeerState, stats: &Stats) {
        for i in 0..segs.count {
            vxlan::write_header(&mut out[i * segs.stride..], self.vni);
        }
        let per_send = self
            .state
            .max_gso_segments()
            .min(MAX_GSO_PAYLOAD / segs.stride)
            .max(1);
        let mut first = 0;
        while first < segs.count {
            let n = per_send.min(segs.count - first);
            let end = ((first + n) * segs.stride).min(segs.len);
            let contents = &out[first * segs.stride..end];
            self.transmit(contents, (n > 1).then_some(segs.stride), n, peer, stats);
            first += n;
        }
    }

    /// Send one datagram, or `count` datagrams of `segment_size` bytes in one GSO call.
    #[inline]
    fn transmit(
        &self,
        contents: &[u8],
        segment_size: Option<usize>,
        count: usize,
        peer: &PeerState,
        stats: &Stats,
    ) {
        let transmit = Transmit {
            destination: SocketAddr::V4(peer.peer.addr),
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        let sent = self.socket.try_io(Interest::WRITABLE, || {
            self.state.try_send((&self.socket).into(), &transmit)
        });
        let sent = match sent {
            // A device without checksum offload refuses GSO with EIO; quinn-udp then stops
            // using GSO on this socket, so resend this batch one datagram at a time.
            Err(e) if segment_size.is_some() && e.raw_os_error() == Some(libc::EIO) => {
                let stride = segment_size.unwrap_or(contents.len());
                contents.chunks(stride).try_for_each(|d| {
                    let one = Transmit {
                        destination: transmit.destination,
                        ecn: None,
                        contents: d,
                        segment_size: None,
                        src_ip: None,
                    };
                    self.socket.try_io(Interest::WRITABLE, || {
                        self.state.try_send((&self.socket).into(), &one)
                    })
                })
            }
            other => other,
        };
        match sent {
            Ok(()) => {
                peer.counters.tx_packets.fetch_add(count as u64, Relaxed);
                peer.counters
                    .tx_bytes
                    .fetch_add(contents.len() as u64, Relaxed);
            }
            Err(_) => {
                peer.counters.drops.fetch_add(count as u64, Relaxed);
                stats.count_drop(DropReason::WriteFailed);
            }
        }
    }
}

/// Receive datagrams until the socket fails, delivering what the core accepts. With GRO one
/// receive returns many datagrams of the same sender back to back (`stride` apart).
pub async fn receive(tunnel: Arc<Tunnel>, table: Arc<SnapshotCell>, stats: Arc<Stats>) {
    let mut buf = vec![0u8; RECV_BUF_LEN];
    let mut meta = [RecvMeta::default()];
    let mut coalescer = Coalescer::new();
    loop {
        if let Err(e) = tunnel.socket.readable().await {
            tracing::error!(error = %e, "tunnel socket failed; cross-node traffic stops");
            return;
        }
        let snapshot = table.load();
        let now = crate::port::now_secs();
        for _ in 0..crate::port::BATCH {
            let received = tunnel.socket.try_io(Interest::READABLE, || {
                let mut iov = [IoSliceMut::new(&mut buf[DATAGRAM_OFFSET..])];
                tunnel
                    .state
                    .recv((&tunnel.socket).into(), &mut iov, &mut meta)
            });
            match received {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "tunnel receive error");
                    break;
                }
            }
            let m = meta[0];
            let SocketAddr::V4(from) = m.addr else {
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
            let stride = if m.stride == 0 { m.len } else { m.stride };
            let mut at = 0;
            while at < m.len {
                let n = stride.min(m.len - at);
                // Datagram k sits at DATAGRAM_OFFSET + at; its 4 bytes of headroom overlap
                // the tail of datagram k-1, which has been delivered already.
                deliver(
                    &mut buf[at..DATAGRAM_OFFSET + at + n],
                    n,
                    idx,
                    peer,
                    &tunnel,
                    &snapshot,
                    now,
                    &stats,
                    &mut coalescer,
                );
                at += n;
            }
            flush(&mut coalescer, &snapshot, &stats);
        }
    }
}

/// Write the pending super-frame, if any, to its port.
fn flush(coalescer: &mut Coalescer, snapshot: &Snapshot, stats: &Stats) {
    if let Some((port, merged)) = coalescer.take() {
        match snapshot.ports.get(&port) {
            Some(out) => out.transmit(merged, stats),
            None => stats.count_drop(DropReason::NoRoute),
        }
    }
}

#[inline]
#[allow(clippy::too_many_arguments)]
fn deliver(
    frame: &mut [u8],
    n: usize,
    idx: usize,
    peer: &PeerState,
    tunnel: &Tunnel,
    snapshot: &Snapshot,
    now: u32,
    stats: &Stats,
    coalescer: &mut Coalescer,
) {
    if let Err(reason) = vxlan::decap_in_place(frame, tunnel.vni) {
        peer.counters.drops.fetch_add(1, Relaxed);
        stats.count_drop(reason);
        return;
    }
    peer.counters.rx_packets.fetch_add(1, Relaxed);
    peer.counters.rx_bytes.fetch_add(n as u64, Relaxed);
    match forward_from_tunnel(frame, idx, &snapshot.table, &snapshot.flows, now) {
        Verdict::Forward(port) => {
            // TCP segments of one flow are merged back into a super-frame (one TAP write);
            // anything else is written as it is, after whatever was pending.
            if coalescer.push(&frame[VNET_HDR_LEN..], port) {
                return;
            }
            flush(coalescer, snapshot, stats);
            if coalescer.push(&frame[VNET_HDR_LEN..], port) {
                return;
            }
            match snapshot.ports.get(&port) {
                Some(out) => out.transmit(frame, stats),
                None => stats.count_drop(DropReason::NoRoute),
            }
        }
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
