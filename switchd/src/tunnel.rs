//! The UDP tunnel between nodes: its sockets on the underlay address, VXLAN framing,
//! and the peers it may talk to.
//!
//! Sending happens on the datapath workers (a frame for a remote pod is encapsulated and
//! sent by the worker that read it, from that worker's send socket); each worker also
//! receives on its own socket of the tunnel's receive group (`crate::worker::from_tunnel`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use crate::config::Peer;
use std::io::IoSliceMut;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};

use crate::datapath::offload::{
    self, Segments, VnetHdr, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4,
};
use crate::datapath::vxlan::{self, DATAGRAM_OFFSET, VXLAN_HDR_LEN};
use crate::datapath::DropReason;
use crate::port::PortCounters;
use crate::stats::Stats;
use crate::udp_socket;

/// A peer node as the datapath sees it: its configuration and its counters. Counters live as
/// long as the peer stays unchanged across reloads.
#[derive(Debug)]
pub struct PeerState {
    pub peer: Peer,
    pub counters: PortCounters,
    pub since: SystemTime,
    pub source: PeerSource,
    /// The WireGuard session with this peer (`crate::wireguard`), made on first use when
    /// the peer has a key and we encrypt.
    pub wireguard: OnceLock<WireGuardSession>,
}

/// A peer's WireGuard session, opaque here (`crate::wireguard` drives it).
pub struct WireGuardSession(pub Mutex<boringtun::noise::Tunn>);

impl std::fmt::Debug for WireGuardSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireGuardSession")
    }
}

/// Where a peer came from; each source replaces only its own peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerSource {
    /// The config file or the peers file.
    Static,
    /// A node record in etcd.
    Etcd,
    /// A Node object in the Kubernetes API.
    Kubernetes,
}

impl PeerSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerSource::Static => "static",
            PeerSource::Etcd => "etcd",
            PeerSource::Kubernetes => "kubernetes",
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
            wireguard: OnceLock::new(),
        }
    }
}

/// One UDP socket of the tunnel with its GSO/GRO state (`quinn-udp`: `UDP_SEGMENT` sends,
/// `UDP_GRO` receives, with the fallbacks for kernels or devices without them).
pub struct TunnelSocket {
    pub socket: std::net::UdpSocket,
    pub state: UdpSocketState,
}

impl TunnelSocket {
    pub fn new(socket: std::net::UdpSocket) -> anyhow::Result<TunnelSocket> {
        use anyhow::Context;
        let state = UdpSocketState::new((&socket).into())
            .context("configuring GSO/GRO on a tunnel socket")?;
        // Deep buffers: a GSO burst is dozens of datagrams at once.
        let _ = state.set_send_buffer_size((&socket).into(), 4 << 20);
        let _ = state.set_recv_buffer_size((&socket).into(), 4 << 20);
        Ok(TunnelSocket { socket, state })
    }

    /// Receive one datagram, or one GRO batch of datagrams from the same sender.
    #[inline]
    pub fn recv(&self, buf: &mut [u8], meta: &mut [RecvMeta; 1]) -> std::io::Result<usize> {
        let mut iov = [IoSliceMut::new(buf)];
        self.state.recv((&self.socket).into(), &mut iov, meta)
    }
}

/// The tunnel's sockets: one receive socket per datapath worker, all bound to the tunnel
/// port as one `SO_REUSEPORT` group whose steering program picks the socket by the
/// sender's UDP source port, and one send socket per worker whose source port picks that
/// same worker on the receiving node (RFC 7348: the source port carries the flow's
/// entropy). A flow read by worker k on one node is thus received by worker k on the
/// other, and never by two workers at once, so its order is kept.
pub struct Tunnel {
    rx: Vec<TunnelSocket>,
    tx: Vec<TunnelSocket>,
    pub vni: u32,
    pub local: SocketAddr,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("local", &self.local)
            .field("vni", &self.vni)
            .field("sockets", &self.rx.len())
            .finish()
    }
}

/// The largest UDP payload one GSO send may carry over IPv4.
const MAX_GSO_PAYLOAD: usize = 65_507;
/// Receive buffer: one GRO batch (up to 64 KiB) plus room in front for decapsulation.
pub const RECV_BUF_LEN: usize = DATAGRAM_OFFSET + 65_536 + 4096;

impl Tunnel {
    /// Bind the tunnel's sockets for `workers` datapath workers.
    pub fn bind(local: SocketAddr, vni: u32, workers: usize) -> anyhow::Result<Tunnel> {
        use anyhow::Context;
        let workers = workers.max(1);
        // A reuse-port group would let a second daemon join ours silently: make sure the
        // port is free first (a plain bind fails if anyone holds it, group or not).
        drop(
            std::net::UdpSocket::bind(local)
                .with_context(|| format!("binding the tunnel socket to {local}"))?,
        );
        let mut rx = Vec::with_capacity(workers);
        for _ in 0..workers {
            let s = udp_socket::bind(local, workers > 1)
                .with_context(|| format!("binding a tunnel receive socket to {local}"))?;
            rx.push(TunnelSocket::new(s)?);
        }
        if workers > 1 {
            udp_socket::steer_by_source_port(&rx[0].socket, workers)
                .context("attaching the tunnel's receive steering program")?;
        }
        let mut tx = Vec::with_capacity(workers);
        for k in 0..workers {
            let s = udp_socket::bind_source_port(local.ip(), k, workers)
                .with_context(|| format!("binding a tunnel send socket on {}", local.ip()))?;
            tx.push(TunnelSocket::new(s)?);
        }
        tracing::info!(%local, vni, workers, gso_segments = tx[0].state.max_gso_segments(), gro_segments = rx[0].state.gro_segments(), "tunnel sockets ready");
        Ok(Tunnel { rx, tx, vni, local })
    }

    /// Worker `k`'s receive socket.
    pub fn rx(&self, k: usize) -> &TunnelSocket {
        &self.rx[k % self.rx.len()]
    }

    /// Encapsulate `buf` (a port buffer whose frame the core already addressed to `peer`)
    /// and send it. A TSO super-frame is segmented into `scratch` with a VXLAN header in
    /// front of every segment and leaves in as few GSO sends as the kernel allows.
    pub fn send_frame(
        &self,
        buf: &mut [u8],
        peer: &PeerState,
        scratch: &mut [u8],
        stats: &Stats,
        worker: usize,
    ) {
        let tx = &self.tx[worker % self.tx.len()];
        let hdr = VnetHdr::read(buf);
        let result = match hdr.gso_type {
            GSO_NONE => offload::finish_checksum(buf, hdr).map(|()| {
                vxlan::encap_in_place(buf, self.vni);
                transmit(
                    tx,
                    peer.peer.addr,
                    &buf[DATAGRAM_OFFSET..],
                    None,
                    1,
                    peer,
                    stats,
                );
            }),
            GSO_TCPV4 | GSO_TCPV6 => offload::segment_tcp(buf, hdr, scratch, VXLAN_HDR_LEN)
                .map(|segs| self.send_segments(tx, scratch, segs, peer, stats)),
            GSO_UDP_L4 => offload::segment_udp(buf, hdr, scratch, VXLAN_HDR_LEN)
                .map(|segs| self.send_segments(tx, scratch, segs, peer, stats)),
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

    fn send_segments(
        &self,
        tx: &TunnelSocket,
        out: &mut [u8],
        segs: Segments,
        peer: &PeerState,
        stats: &Stats,
    ) {
        for i in 0..segs.count {
            vxlan::write_header(&mut out[i * segs.stride..], self.vni);
        }
        send_gso(tx, peer.peer.addr, &out[..segs.len], segs, peer, stats);
    }
}

/// Send `segs` (datagrams of `segs.stride` bytes back to back in `out`, the last one
/// possibly shorter) to `to` in as few GSO sends as the socket allows.
pub fn send_gso(
    tx: &TunnelSocket,
    to: SocketAddr,
    out: &[u8],
    segs: Segments,
    peer: &PeerState,
    stats: &Stats,
) {
    let per_send = tx
        .state
        .max_gso_segments()
        .min(MAX_GSO_PAYLOAD / segs.stride.max(1))
        .max(1);
    let mut first = 0;
    while first < segs.count {
        let n = per_send.min(segs.count - first);
        let end = ((first + n) * segs.stride).min(segs.len);
        let contents = &out[first * segs.stride..end];
        transmit(
            tx,
            to,
            contents,
            (n > 1).then_some(segs.stride),
            n,
            peer,
            stats,
        );
        first += n;
    }
}

/// Send one datagram, or `count` datagrams of `segment_size` bytes in one GSO call.
#[inline]
pub fn transmit(
    tx: &TunnelSocket,
    to: SocketAddr,
    contents: &[u8],
    segment_size: Option<usize>,
    count: usize,
    peer: &PeerState,
    stats: &Stats,
) {
    let transmit = Transmit {
        destination: to,
        ecn: None,
        contents,
        segment_size,
        src_ip: None,
    };
    let sent = tx.state.try_send((&tx.socket).into(), &transmit);
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
                tx.state.try_send((&tx.socket).into(), &one)
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
