//! A frame the core addressed to a peer node: sealed with WireGuard when we encrypt and
//! the peer has a key, else VXLAN in clear (refused when encryption is required; during a
//! rollout, `encryption_plain = "send"` keeps everything in clear).

use std::sync::atomic::Ordering::Relaxed;

use crate::config::PlainPolicy;
use crate::datapath::frame::VNET_HDR_LEN;
use crate::datapath::DropReason;
use crate::monitor::Source;
use crate::snapshot::Snapshot;
use crate::stats::Stats;
use crate::tunnel::PeerState;

/// Send `buf` (virtio-net header + frame) to `peer`; `scratch` and `sealed` are the
/// worker's buffers for segments and sealed messages.
#[allow(clippy::too_many_arguments)]
pub fn send(
    snapshot: &Snapshot,
    buf: &mut [u8],
    idx: usize,
    peer: &PeerState,
    scratch: &mut [u8],
    sealed: &mut [u8],
    stats: &Stats,
    worker: usize,
) {
    match (&snapshot.wireguard, peer.peer.wireguard.is_some()) {
        (Some(wg), true) if wg.plain != PlainPolicy::Send => {
            wg.send_frame(buf, peer, scratch, sealed, stats)
        }
        (Some(wg), false) if wg.plain == PlainPolicy::Refuse => refuse(buf, idx, peer, stats),
        _ => match &snapshot.tunnel {
            Some(tunnel) => tunnel.send_frame(buf, peer, scratch, stats, worker),
            None => refuse(buf, idx, peer, stats),
        },
    }
}

fn refuse(buf: &[u8], idx: usize, peer: &PeerState, stats: &Stats) {
    peer.counters.drops.fetch_add(1, Relaxed);
    let frame = buf.get(VNET_HDR_LEN..).unwrap_or(&[]);
    stats.drop_frame(DropReason::Unencrypted, Source::Peer(idx), frame);
}
