//! A frame read from a port: counted, offered to a running capture, decided by the core,
//! and written where the verdict says.

use std::sync::atomic::Ordering::Relaxed;

use crate::datapath::frame::VNET_HDR_LEN;
use crate::datapath::{self, DropReason, Verdict};
use crate::monitor::Source;
use crate::port::Port;
use crate::snapshot::Snapshot;
use crate::stats::Stats;

/// Per-worker buffers for the port path; allocated once, reused for every frame.
pub struct Buffers {
    pub frame: Vec<u8>,
    pub reply: [u8; datapath::icmp::MAX_REPLY_LEN],
    pub scratch: Vec<u8>,
    /// Sealed WireGuard messages of one super-frame (untouched without encryption).
    pub sealed: Vec<u8>,
}

impl Default for Buffers {
    fn default() -> Buffers {
        Buffers::new()
    }
}

impl Buffers {
    pub fn new() -> Buffers {
        Buffers {
            frame: vec![0u8; crate::port::FRAME_BUF_LEN],
            reply: [0u8; datapath::icmp::MAX_REPLY_LEN],
            scratch: vec![0u8; crate::port::SEGMENT_BUF_LEN],
            sealed: vec![0u8; crate::port::SEGMENT_BUF_LEN],
        }
    }
}

/// Handle the `len` bytes worker `worker` just read from `port` into `bufs.frame`.
#[inline]
pub fn handle(
    port: &Port,
    len: usize,
    bufs: &mut Buffers,
    snapshot: &Snapshot,
    now: u32,
    stats: &Stats,
    worker: usize,
) {
    let buf = &mut bufs.frame[..len];
    port.counters.rx_packets.fetch_add(1, Relaxed);
    port.counters.rx_bytes.fetch_add(len as u64, Relaxed);
    if port.capturing.load(Relaxed) {
        port.capture_frame(buf, "rx");
    }
    let reply = &mut bufs.reply;
    let from = Source::Port(port.id);
    let verdict = datapath::forward(buf, port.id, &snapshot.table, &snapshot.flows, now, reply);
    let Some(verdict) = super::police::police(buf, port.id, verdict, snapshot, now, stats, from)
    else {
        port.counters.drops.fetch_add(1, Relaxed);
        return;
    };
    match verdict {
        Verdict::Forward(to) => match snapshot.ports.get(&to) {
            Some(out) => out.transmit(buf, stats, worker),
            None => {
                port.counters.drops.fetch_add(1, Relaxed);
                stats.drop_frame(DropReason::NoRoute, from, &buf[VNET_HDR_LEN..]);
            }
        },
        Verdict::Reply(n) => port.transmit(&reply[..n], stats, worker),
        Verdict::Encap(idx) => match snapshot.peers.get(idx) {
            Some(peer) => super::to_peer::send(
                snapshot,
                buf,
                idx,
                peer,
                &mut bufs.scratch,
                &mut bufs.sealed,
                stats,
                worker,
            ),
            None => {
                port.counters.drops.fetch_add(1, Relaxed);
                stats.drop_frame(DropReason::NoPeer, from, &buf[VNET_HDR_LEN..]);
            }
        },
        Verdict::Reject { len, reason } => {
            port.counters.drops.fetch_add(1, Relaxed);
            stats.drop_frame(reason, from, &buf[VNET_HDR_LEN..]);
            port.transmit(&reply[..len], stats, worker);
        }
        Verdict::Drop(reason) => {
            if reason.is_chatter() {
                port.counters.ignored.fetch_add(1, Relaxed);
            } else {
                port.counters.drops.fetch_add(1, Relaxed);
            }
            stats.drop_frame(reason, from, &buf[VNET_HDR_LEN..]);
        }
    }
}
