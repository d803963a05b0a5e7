//! Encrypted node links that speak WireGuard (`encryption = "wireguard"`).
//!
//! Every datagram to a peer with a public key is a WireGuard message on the WireGuard port;
//! a stock WireGuard host (`wireguard-go` with `wg set ... allowed-ips <pod cidr>`) is an
//! ordinary peer. What crosses is the inner IP packet, as WireGuard defines it: the
//! Ethernet header is left off on the way out and made again on the way in.
//!
//! The protocol's state machine (handshakes, sessions, counters and replay window, timers,
//! cookies under load) is `boringtun`'s `noise` module, one [`Tunn`] per peer, kept in the
//! peer's [`PeerState`]. Around it this module does what the datapath needs: a TSO
//! super-frame is segmented, each segment sealed, and the sealed messages leave in as few
//! GSO sends as the socket takes; received messages are opened here one by one, and the
//! worker (`crate::worker::from_wireguard`) merges TCP segments again before the TAP write.
//!
//! A message that does not authenticate (wrong key, bad tag, replayed counter, truncated)
//! is dropped and counted as `not_authenticated`; a data message for a session we do not
//! hold (the peer has not re-handshaked since a restart) as `no_session`. The inner source address must lie in the
//! peer's pod CIDR, WireGuard's allowed-IPs rule, which the forwarding core checks as it
//! does for plain VXLAN (`spoofed_source`).

pub mod keys;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

use crate::config::PlainPolicy;
use crate::datapath::frame::{ETH_HDR_LEN, VNET_HDR_LEN};
use crate::datapath::offload::{
    self, Segments, VnetHdr, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4,
};
use crate::datapath::DropReason;
use crate::stats::Stats;
use crate::tunnel::{send_gso, transmit, PeerState, TunnelSocket, WireGuardSession};

/// Bytes WireGuard adds in front of (16) and behind (16) the padded inner packet.
pub const MESSAGE_OVERHEAD: usize = 32;
/// Handshake messages a peer may send us per second before we answer with cookies
/// (WireGuard's DoS defence).
const HANDSHAKES_PER_SECOND: u64 = 100;
/// A transport data message's type byte.
const DATA: u8 = 4;
/// The smallest buffer `Tunn` writes into (a handshake initiation).
const MIN_DST: usize = 148;

pub struct WireGuard {
    /// One socket per datapath worker, one `SO_REUSEPORT` group on the WireGuard port,
    /// steered by the sender's address: each peer is opened by one worker, and the peers
    /// spread over the workers. Sends go out of the first (all share the port).
    sockets: Vec<TunnelSocket>,
    secret: StaticSecret,
    public: [u8; 32],
    limiter: Arc<RateLimiter>,
    next_index: AtomicU32,
    /// What still happens with plain VXLAN during a rollout.
    pub plain: PlainPolicy,
    pub local: SocketAddr,
}

impl std::fmt::Debug for WireGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireGuard")
            .field("local", &self.local)
            .field(
                "public_key",
                &crate::config::format_wireguard_key(&self.public),
            )
            .field("plain", &self.plain)
            .finish()
    }
}

/// What opening one received datagram gave.
pub enum Opened {
    /// A packet for the pods, `len` bytes at the start of the buffer given.
    Packet(usize),
    /// Protocol traffic (handshake, keepalive, cookie): nothing for the pods.
    Nothing,
    /// Dropped, for this reason.
    Dropped(DropReason),
}

impl WireGuard {
    pub fn bind(
        local: SocketAddr,
        secret: StaticSecret,
        plain: PlainPolicy,
        workers: usize,
    ) -> anyhow::Result<WireGuard> {
        use anyhow::Context;
        let workers = workers.max(1);
        // A reuse-port group would let a second daemon join ours silently: make sure the
        // port is free first.
        drop(
            std::net::UdpSocket::bind(local)
                .with_context(|| format!("binding the WireGuard socket to {local}"))?,
        );
        let mut sockets = Vec::with_capacity(workers);
        for _ in 0..workers {
            let s = crate::udp_socket::bind(local, workers > 1)
                .with_context(|| format!("binding a WireGuard socket to {local}"))?;
            sockets.push(TunnelSocket::new(s)?);
        }
        if workers > 1 {
            crate::udp_socket::steer_by_source_address(&sockets[0].socket, workers)
                .context("attaching the WireGuard sockets' steering program")?;
        }
        let public = keys::public_of(&secret);
        let limiter = Arc::new(RateLimiter::new(
            &PublicKey::from(public),
            HANDSHAKES_PER_SECOND,
        ));
        tracing::info!(%local, public_key = %crate::config::format_wireguard_key(&public), plain = plain.as_str(), "WireGuard socket ready");
        Ok(WireGuard {
            sockets,
            secret,
            public,
            limiter,
            next_index: AtomicU32::new(1),
            plain,
            local,
        })
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The socket sends leave from.
    fn socket(&self) -> &TunnelSocket {
        &self.sockets[0]
    }

    /// Worker `k`'s receive socket.
    pub fn rx(&self, k: usize) -> &TunnelSocket {
        &self.sockets[k % self.sockets.len()]
    }

    /// The session with `peer`, made on first use; `None` if the peer has no key.
    pub fn session<'a>(&self, peer: &'a PeerState) -> Option<&'a Mutex<Tunn>> {
        let key = peer.peer.wireguard?.public_key;
        let session = peer.wireguard.get_or_init(|| {
            // Session indices are 24 bits (`Tunn` shifts them left by 8).
            let index = self.next_index.fetch_add(1, Relaxed) & 0x00ff_ffff;
            WireGuardSession(Mutex::new(Tunn::new(
                self.secret.clone(),
                PublicKey::from(key),
                None,
                None,
                index,
                Some(self.limiter.clone()),
            )))
        });
        Some(&session.0)
    }

    /// Seal the frame in `buf` (virtio-net header + frame, addressed to `peer` by the core)
    /// and send it. A super-frame is segmented into `scratch` and its sealed segments are
    /// laid out in `sealed` for GSO.
    pub fn send_frame(
        &self,
        buf: &mut [u8],
        peer: &PeerState,
        scratch: &mut [u8],
        sealed: &mut [u8],
        stats: &Stats,
    ) {
        let (Some(session), Some(wg)) = (self.session(peer), peer.peer.wireguard) else {
            drop_counted(peer, stats, DropReason::Unencrypted);
            return;
        };
        let hdr = VnetHdr::read(buf);
        let segments = match hdr.gso_type {
            GSO_NONE => offload::finish_checksum(buf, hdr).map(|()| None),
            GSO_TCPV4 | GSO_TCPV6 => offload::segment_tcp(buf, hdr, scratch, 0).map(Some),
            GSO_UDP_L4 => offload::segment_udp(buf, hdr, scratch, 0).map(Some),
            _ => Err(DropReason::UnsupportedProtocol),
        };
        let mut tunn = lock(session);
        let mut batch = Batch::default();
        match segments {
            Ok(None) => {
                let ip = &buf[VNET_HDR_LEN + ETH_HDR_LEN..];
                self.seal(&mut tunn, ip, sealed, &mut batch, wg.addr, peer, stats);
            }
            Ok(Some(segs)) => {
                for i in 0..segs.count {
                    let start = i * segs.stride;
                    let end = (start + segs.stride).min(segs.len);
                    let ip = &scratch[start + ETH_HDR_LEN..end];
                    self.seal(&mut tunn, ip, sealed, &mut batch, wg.addr, peer, stats);
                }
            }
            Err(reason) => {
                drop(tunn);
                tracing::debug!(
                    ?reason,
                    ?hdr,
                    len = buf.len(),
                    "cannot send frame through WireGuard"
                );
                drop_counted(peer, stats, reason);
                return;
            }
        }
        drop(tunn);
        batch.flush(self.socket(), wg.addr, sealed, peer, stats);
    }

    /// Seal one IP packet into the batch; a handshake the session needs first is sent on its
    /// own (the packet then waits in the session until the handshake completes).
    #[allow(clippy::too_many_arguments)]
    fn seal(
        &self,
        tunn: &mut Tunn,
        ip: &[u8],
        sealed: &mut [u8],
        batch: &mut Batch,
        to: SocketAddr,
        peer: &PeerState,
        stats: &Stats,
    ) {
        if sealed.len() - batch.len < (ip.len() + MESSAGE_OVERHEAD + 16).max(MIN_DST) {
            batch.flush(self.socket(), to, sealed, peer, stats);
        }
        match tunn.encapsulate(ip, &mut sealed[batch.len..]) {
            TunnResult::WriteToNetwork(m) if m.first() == Some(&DATA) => {
                let n = m.len();
                if !batch.fits(n) {
                    // Move the message to the start of a new batch after sending the rest.
                    let at = batch.len;
                    batch.flush(self.socket(), to, sealed, peer, stats);
                    sealed.copy_within(at..at + n, 0);
                }
                batch.push(n);
            }
            TunnResult::WriteToNetwork(m) => {
                transmit(self.socket(), to, m, None, 1, peer, stats);
            }
            TunnResult::Done => {}
            TunnResult::Err(e) => {
                tracing::debug!(peer = %peer.peer.name, error = ?e, "WireGuard cannot seal a packet");
                drop_counted(peer, stats, DropReason::WriteFailed);
            }
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
        }
    }

    /// Open one datagram from `from` (the peer `peer`) into `out`. Handshake answers and
    /// packets that waited for a session are sent from here.
    pub fn open(
        &self,
        peer: &PeerState,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
        stats: &Stats,
    ) -> Opened {
        let Some(session) = self.session(peer) else {
            return Opened::Dropped(DropReason::NotAuthenticated);
        };
        let mut tunn = lock(session);
        let result = tunn.decapsulate(Some(from.ip()), datagram, out);
        match result {
            // Either family: the receiver gives it an Ethernet header by its IP version.
            TunnResult::WriteToTunnelV4(packet, _) | TunnResult::WriteToTunnelV6(packet, _) => {
                Opened::Packet(packet.len())
            }
            TunnResult::Done => Opened::Nothing,
            TunnResult::WriteToNetwork(m) => {
                transmit(self.socket(), from, m, None, 1, peer, stats);
                // A completed handshake releases what waited for it.
                while let TunnResult::WriteToNetwork(m) = tunn.decapsulate(None, &[], out) {
                    transmit(self.socket(), from, m, None, 1, peer, stats);
                }
                Opened::Nothing
            }
            TunnResult::Err(e) => {
                tracing::trace!(peer = %peer.peer.name, %from, error = ?e, "WireGuard datagram dropped");
                Opened::Dropped(match e {
                    WireGuardError::NoCurrentSession | WireGuardError::WrongIndex => {
                        DropReason::NoSession
                    }
                    _ => DropReason::NotAuthenticated,
                })
            }
        }
    }

    /// Run every session's timers (handshake retries, rekeying, keepalives, expiry); call
    /// a few times a second. Also refills the handshake rate limiter once a second.
    pub fn tick(&self, peers: &[Arc<PeerState>], buf: &mut [u8], stats: &Stats, second: bool) {
        if second {
            self.limiter.reset_count();
        }
        for peer in peers {
            let (Some(session), Some(wg)) = (peer.wireguard.get(), peer.peer.wireguard) else {
                continue;
            };
            let mut tunn = lock(&session.0);
            match tunn.update_timers(buf) {
                TunnResult::WriteToNetwork(m) => {
                    transmit(self.socket(), wg.addr, m, None, 1, peer, stats)
                }
                TunnResult::Err(e) => {
                    tracing::trace!(peer = %peer.peer.name, error = ?e, "WireGuard timer")
                }
                _ => {}
            }
        }
    }

    /// When the last handshake with `peer` completed, if one did.
    pub fn last_handshake(&self, peer: &PeerState) -> Option<std::time::Duration> {
        peer.wireguard
            .get()
            .and_then(|s| lock(&s.0).time_since_last_handshake())
    }
}

fn lock(session: &Mutex<Tunn>) -> MutexGuard<'_, Tunn> {
    // A panic while holding a session leaves it usable: its state is plain data.
    session.lock().unwrap_or_else(|e| e.into_inner())
}

fn drop_counted(peer: &PeerState, stats: &Stats, reason: DropReason) {
    peer.counters.drops.fetch_add(1, Relaxed);
    stats.count_drop(reason);
}

/// Sealed data messages laid out for one GSO send: all `stride` bytes long except
/// possibly the last.
#[derive(Default)]
struct Batch {
    count: usize,
    stride: usize,
    len: usize,
    short: bool,
}

impl Batch {
    /// Whether a message of `n` bytes may follow the ones already here.
    fn fits(&self, n: usize) -> bool {
        self.count == 0 || (!self.short && n <= self.stride)
    }

    fn push(&mut self, n: usize) {
        if self.count == 0 {
            self.stride = n;
        }
        self.short = n < self.stride;
        self.count += 1;
        self.len += n;
    }

    fn flush(
        &mut self,
        socket: &TunnelSocket,
        to: SocketAddr,
        sealed: &[u8],
        peer: &PeerState,
        stats: &Stats,
    ) {
        if self.count > 0 {
            let segs = Segments {
                count: self.count,
                stride: self.stride,
                len: self.len,
            };
            send_gso(socket, to, &sealed[..self.len], segs, peer, stats);
        }
        *self = Batch::default();
    }
}
