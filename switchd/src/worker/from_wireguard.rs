//! Datagrams received on the WireGuard socket: the sender checked against the peers, each
//! message opened by its peer's session, the inner IP packet given an Ethernet header and
//! forwarded like a VXLAN frame, TCP segments of one flow merged again before the TAP write.

use std::sync::atomic::Ordering::Relaxed;

use quinn_udp::RecvMeta;

use super::from_tunnel::{ended, flush, route, Outcome};
use crate::datapath::coalesce::Coalescer;
use crate::datapath::frame::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_HDR_LEN, VNET_HDR_LEN};
use crate::datapath::DropReason;
use crate::monitor::Source;
use crate::snapshot::{addr_key, Snapshot};
use crate::stats::Stats;
use crate::tunnel::RECV_BUF_LEN;
use crate::wireguard::{Opened, WireGuard};

/// Where an opened packet starts in the frame buffer: room for the virtio-net and
/// Ethernet headers in front.
const INNER: usize = VNET_HDR_LEN + ETH_HDR_LEN;

pub struct Receiver {
    buf: Vec<u8>,
    frame: Vec<u8>,
    meta: [RecvMeta; 1],
    coalescer: Coalescer,
}

impl Receiver {
    pub fn new() -> Receiver {
        Receiver {
            buf: vec![0u8; RECV_BUF_LEN],
            frame: vec![0u8; crate::port::FRAME_BUF_LEN],
            meta: [RecvMeta::default()],
            coalescer: Coalescer::new(),
        }
    }

    /// Receive up to `batch` datagrams (or GRO batches) and deliver what they carry. Also
    /// returns how many datagrams arrived.
    pub fn receive(
        &mut self,
        wg: &WireGuard,
        snapshot: &Snapshot,
        now: u32,
        stats: &Stats,
        worker: usize,
        batch: usize,
    ) -> (Outcome, u64) {
        let mut datagrams = 0;
        for _ in 0..batch {
            if let Err(e) = wg.rx(worker).recv(&mut self.buf, &mut self.meta) {
                match ended(e) {
                    Some(outcome) => return (outcome, datagrams),
                    None => continue,
                }
            }
            let m = self.meta[0];
            let from = m.addr;
            let peer = snapshot
                .peer_by_addr
                .get(&addr_key(from.ip()))
                .map(|&idx| (idx, from));
            let Some((idx, from)) = peer else {
                stats.drop_frame(DropReason::UnknownPeer, Source::Underlay(m.addr), &[]);
                tracing::trace!(from = %m.addr, "WireGuard datagram from an unknown sender dropped");
                continue;
            };
            let peer = &snapshot.peers[idx];
            let stride = if m.stride == 0 { m.len } else { m.stride };
            let mut at = 0;
            while at < m.len {
                let n = stride.min(m.len - at);
                datagrams += 1;
                let datagram = &self.buf[at..at + n];
                match wg.open(peer, from, datagram, &mut self.frame[INNER..], stats) {
                    Opened::Packet(len) => {
                        // The core routes by the IP header and sets both MACs for the pod.
                        let frame = &mut self.frame[..INNER + len];
                        let ethertype = match frame.get(INNER).map(|b| b >> 4) {
                            Some(6) => ETHERTYPE_IPV6,
                            _ => ETHERTYPE_IPV4,
                        };
                        frame[..INNER].fill(0);
                        frame[INNER - 2..INNER].copy_from_slice(&ethertype.to_be_bytes());
                        route(
                            frame,
                            n,
                            idx,
                            peer,
                            snapshot,
                            now,
                            stats,
                            &mut self.coalescer,
                            worker,
                        );
                    }
                    Opened::Nothing => {}
                    Opened::Dropped(reason) => {
                        peer.counters.drops.fetch_add(1, Relaxed);
                        stats.drop_frame(reason, Source::Peer(idx), &[]);
                    }
                }
                at += n;
            }
            flush(&mut self.coalescer, snapshot, stats, worker);
        }
        (Outcome::More, datagrams)
    }
}
