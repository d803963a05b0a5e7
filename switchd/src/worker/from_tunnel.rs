//! Datagrams received from the tunnel: the sender checked against the peers, each VXLAN
//! datagram decapsulated in place, decided by the core, and TCP segments of one flow merged
//! back into a super-frame before the TAP write.

use std::sync::atomic::Ordering::Relaxed;

use quinn_udp::RecvMeta;

use crate::datapath::coalesce::Coalescer;
use crate::datapath::frame::VNET_HDR_LEN;
use crate::datapath::vxlan::{self, DATAGRAM_OFFSET};
use crate::datapath::{forward_from_tunnel, probe, DropReason, Verdict, HOST_PORT};
use crate::monitor::Source;
use crate::snapshot::{addr_key, Snapshot};
use crate::stats::Stats;
use crate::tunnel::{PeerState, Tunnel, RECV_BUF_LEN};

/// Per-worker state for the tunnel path.
pub struct Receiver {
    buf: Vec<u8>,
    meta: [RecvMeta; 1],
    coalescer: Coalescer,
}

/// What one call to [`Receiver::receive`] ended with.
pub enum Outcome {
    /// The socket has nothing more queued.
    Drained,
    /// A whole batch was handled; more may be queued.
    More,
    /// The socket failed (not merely empty).
    Failed(std::io::Error),
}

impl Receiver {
    pub fn new() -> Receiver {
        Receiver {
            buf: vec![0u8; RECV_BUF_LEN],
            meta: [RecvMeta::default()],
            coalescer: Coalescer::new(),
        }
    }

    /// Receive up to `batch` datagrams (or GRO batches) from worker `worker`'s socket of
    /// the tunnel and deliver them.
    /// Also returns how many datagrams arrived.
    pub fn receive(
        &mut self,
        tunnel: &Tunnel,
        snapshot: &Snapshot,
        now: u32,
        stats: &Stats,
        worker: usize,
        batch: usize,
    ) -> (Outcome, u64) {
        let socket = tunnel.rx(worker);
        let mut datagrams = 0;
        for _ in 0..batch {
            if let Err(e) = socket.recv(&mut self.buf[DATAGRAM_OFFSET..], &mut self.meta) {
                match ended(e) {
                    Some(outcome) => return (outcome, datagrams),
                    None => continue,
                }
            }
            let m = self.meta[0];
            let stranger = |buf: &[u8]| {
                // What the datagram carries, if it is VXLAN: the frame after its 8 bytes.
                let inner = buf.get(DATAGRAM_OFFSET + 8..DATAGRAM_OFFSET + m.len);
                let source = Source::Underlay(m.addr);
                stats.drop_frame(DropReason::UnknownPeer, source, inner.unwrap_or(&[]));
            };
            let from = m.addr;
            // Kernel VXLAN devices send from varying source ports: match the address only.
            let Some(&idx) = snapshot.peer_by_addr.get(&addr_key(from.ip())) else {
                stranger(&self.buf);
                tracing::trace!(%from, "datagram from an unknown sender dropped");
                continue;
            };
            let peer = &snapshot.peers[idx];
            let stride = if m.stride == 0 { m.len } else { m.stride };
            datagrams += m.len.div_ceil(stride.max(1)) as u64;
            let mut at = 0;
            while at < m.len {
                let n = stride.min(m.len - at);
                // Datagram k sits at DATAGRAM_OFFSET + at; its 4 bytes of headroom overlap
                // the tail of datagram k-1, which has been delivered already.
                deliver(
                    &mut self.buf[at..DATAGRAM_OFFSET + at + n],
                    n,
                    idx,
                    peer,
                    tunnel,
                    snapshot,
                    now,
                    stats,
                    &mut self.coalescer,
                    worker,
                );
                at += n;
            }
            flush(&mut self.coalescer, snapshot, stats, worker);
        }
        (Outcome::More, datagrams)
    }
}

/// What a failed receive means for the batch: the socket is empty or broken (the batch
/// ends with that outcome), or the call was interrupted (`None`: try again).
pub(super) fn ended(e: std::io::Error) -> Option<Outcome> {
    match e.kind() {
        std::io::ErrorKind::WouldBlock => Some(Outcome::Drained),
        std::io::ErrorKind::Interrupted => None,
        _ => Some(Outcome::Failed(e)),
    }
}

/// Write the pending super-frame, if any, to its port.
pub(super) fn flush(coalescer: &mut Coalescer, snapshot: &Snapshot, stats: &Stats, worker: usize) {
    if let Some((port, merged)) = coalescer.take() {
        match snapshot.ports.get(&port) {
            Some(out) => out.transmit(merged, stats, worker),
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
    worker: usize,
) {
    if let Err(reason) = vxlan::decap_in_place(frame, tunnel.vni) {
        peer.counters.drops.fetch_add(1, Relaxed);
        let inner = frame.get(DATAGRAM_OFFSET + 8..).unwrap_or(&[]);
        stats.drop_frame(reason, Source::Peer(idx), inner);
        return;
    }
    if snapshot
        .wireguard
        .as_ref()
        .is_some_and(|w| !w.plain.accepts())
    {
        peer.counters.drops.fetch_add(1, Relaxed);
        stats.drop_frame(
            DropReason::Unencrypted,
            Source::Peer(idx),
            &frame[VNET_HDR_LEN..],
        );
        return;
    }
    route(frame, n, idx, peer, snapshot, now, stats, coalescer, worker);
}

/// Forward a frame a peer sent (`frame` = virtio-net header + the inner frame, `n` bytes
/// on the wire): to a local pod or the node, TCP segments of one flow merged first.
#[inline]
#[allow(clippy::too_many_arguments)]
pub(super) fn route(
    frame: &mut [u8],
    n: usize,
    idx: usize,
    peer: &PeerState,
    snapshot: &Snapshot,
    now: u32,
    stats: &Stats,
    coalescer: &mut Coalescer,
    worker: usize,
) {
    peer.counters.rx_packets.fetch_add(1, Relaxed);
    peer.counters.rx_bytes.fetch_add(n as u64, Relaxed);
    let verdict = forward_from_tunnel(frame, idx, &snapshot.table, &snapshot.flows, now);
    let from = Source::Peer(idx);
    let Some(verdict) = super::police::police(
        frame,
        crate::datapath::PortId::MAX,
        verdict,
        snapshot,
        now,
        stats,
        from,
    ) else {
        peer.counters.drops.fetch_add(1, Relaxed);
        return;
    };
    match verdict {
        Verdict::Forward(port) => {
            // A reply to one of our health probes is for the prober, not for the node.
            if port == HOST_PORT {
                if let Some((seq, _)) = probe::echo_reply(&frame[VNET_HDR_LEN..]) {
                    snapshot.health.answer(seq);
                    return;
                }
            }
            // TCP segments of one flow are merged back into a super-frame (one TAP write);
            // anything else is written as it is, after whatever was pending.
            if coalescer.push(&frame[VNET_HDR_LEN..], port) {
                return;
            }
            flush(coalescer, snapshot, stats, worker);
            if coalescer.push(&frame[VNET_HDR_LEN..], port) {
                return;
            }
            match snapshot.ports.get(&port) {
                Some(out) => out.transmit(frame, stats, worker),
                None => stats.count_drop(DropReason::NoRoute),
            }
        }
        Verdict::Drop(reason) => {
            peer.counters.drops.fetch_add(1, Relaxed);
            stats.drop_frame(reason, Source::Peer(idx), &frame[VNET_HDR_LEN..]);
        }
        other => {
            tracing::debug!(verdict = ?other, "unexpected verdict for a tunnel frame");
            stats.count_drop(DropReason::NoRoute);
        }
    }
}
