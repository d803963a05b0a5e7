//! Ports: a TAP device plus who it belongs to and its counters, and the I/O loop that feeds
//! its frames to the forwarding core.

pub mod shaper;
pub mod tap;

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use std::sync::Mutex;

use switchd_proto::{AttachmentKey, Bandwidth, CapturedFrame, Counters, PodRef};
use tokio::sync::mpsc;

use crate::datapath::frame::VNET_HDR_LEN;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::datapath::ratelimit::RateLimit;
use crate::datapath::{self, icmp, DropReason, PortId, Verdict};
use crate::stats::Stats;
use crate::switch::{Snapshot, SnapshotCell};
use tap::Tap;

/// Big enough for the largest TSO super-frame the kernel hands over: a 64 KiB IP packet plus
/// Ethernet and virtio-net headers.
pub const FRAME_BUF_LEN: usize = 65_536 + 64;
/// Room for a super-frame cut into segments, each with its own headers and VXLAN header.
pub const SEGMENT_BUF_LEN: usize = 2 * FRAME_BUF_LEN;
/// Frames handled per wake-up before yielding to other ports.
pub const BATCH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortOwner {
    /// The node's own port, `switchd0`.
    Host,
    Pod {
        key: AttachmentKey,
        pod: PodRef,
        network: String,
        netns: String,
    },
}

#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub drops: AtomicU64,
}

impl PortCounters {
    pub fn snapshot(&self) -> Counters {
        Counters {
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            drops: self.drops.load(Relaxed),
        }
    }
}

#[derive(Debug)]
pub struct Port {
    pub id: PortId,
    pub tap: Tap,
    pub owner: PortOwner,
    pub address: Ipv4Addr,
    pub mac: [u8; 6],
    pub counters: PortCounters,
    /// Cleared when the device disappeared under us (deleted by hand, namespace gone).
    pub alive: AtomicBool,
    /// `switchctl capture`: checked with one relaxed load per frame; frames are copied
    /// only while a capture runs.
    pub capturing: AtomicBool,
    pub capture: Mutex<Option<mpsc::Sender<CapturedFrame>>>,
    /// Rate limits: into the pod (queued on transmit while over the rate) and out of it
    /// (charged as frames are read; reading pauses while over the rate).
    pub limits: Limits,
}

/// A pod's bandwidth limits as the datapath enforces them.
#[derive(Debug, Default)]
pub struct Limits {
    pub config: Option<Bandwidth>,
    pub ingress: Option<shaper::Shaper>,
    pub egress: Option<RateLimit>,
}

impl Limits {
    pub fn new(config: Option<Bandwidth>) -> Limits {
        let Some(bw) = config.filter(|b| !b.is_unlimited()) else {
            return Limits::default();
        };
        Limits {
            config: Some(bw),
            ingress: RateLimit::new(bw.ingress_rate, bw.ingress_burst).map(shaper::Shaper::new),
            egress: RateLimit::new(bw.egress_rate, bw.egress_burst),
        }
    }
}

/// Seconds on the system's monotonic clock (since boot, not since switchd started: the
/// flow table's deadlines must mean the same to the next switchd), read once per batch.
#[inline]
pub fn now_secs() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into memory we own; CLOCK_MONOTONIC always
    // exists on Linux (it is answered by the vDSO, no system call).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}

/// Nanoseconds on a monotonic clock, for the rate limiters.
fn mono_ns() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

impl AsRawFd for Port {
    fn as_raw_fd(&self) -> RawFd {
        self.tap.as_raw_fd()
    }
}

impl Port {
    /// Hand a copy of `buf` (virtio-net header + frame) to a running capture.
    #[cold]
    fn capture_frame(&self, buf: &[u8], direction: &str) {
        if let Some(tx) = self.capture.lock().unwrap().as_ref() {
            let frame = CapturedFrame {
                ts_micros: now_micros(),
                direction: direction.into(),
                data: buf.get(VNET_HDR_LEN..).unwrap_or(&[]).to_vec(),
            };
            let _ = tx.try_send(frame); // a slow reader loses frames, never the datapath
        }
    }

    /// Start (`Some`) or stop (`None`) capturing this port's frames.
    pub fn set_capture(&self, tx: Option<mpsc::Sender<CapturedFrame>>) {
        let on = tx.is_some();
        *self.capture.lock().unwrap() = tx;
        self.capturing.store(on, Relaxed);
    }

    /// Write one buffer to this port, counting it either way.
    #[inline]
    pub fn transmit(&self, buf: &[u8], stats: &Stats) {
        if self.capturing.load(Relaxed) {
            self.capture_frame(buf, "tx");
        }
        if let Some(shaper) = &self.limits.ingress {
            match shaper.offer(buf) {
                shaper::Offer::Send => {}
                shaper::Offer::Queued => return,
                shaper::Offer::Full => return shaper::count_full(self, stats),
            }
        }
        self.write_counted(buf, stats);
    }

    fn write_counted(&self, buf: &[u8], stats: &Stats) {
        match self.tap.write(buf) {
            Ok(_) => {
                self.counters.tx_packets.fetch_add(1, Relaxed);
                self.counters.tx_bytes.fetch_add(buf.len() as u64, Relaxed);
            }
            Err(_) => {
                self.counters.drops.fetch_add(1, Relaxed);
                stats.count_drop(DropReason::WriteFailed);
            }
        }
    }
}

/// Read frames from `port` until the device goes away, forwarding each through the core.
/// The table snapshot is loaded once per batch; nothing here allocates per frame.
/// When the device goes away, the port's id is sent on `gone` so the control plane can
/// decide what to do (release the pod if its namespace vanished).
pub async fn run(
    port: Arc<Port>,
    table: Arc<SnapshotCell>,
    stats: Arc<Stats>,
    gone: mpsc::UnboundedSender<PortId>,
) {
    // SAFETY: the fd belongs to `port.tap`, which the Arc keeps open for as long as the
    // AsyncFd (which owns that Arc) lives, and `as_raw_fd` always returns that same fd.
    let afd = match unsafe {
        AsyncFd::register_with_interest(port.clone(), Interest::READABLE | Interest::ERROR)
    } {
        Ok(afd) => afd,
        Err(e) => {
            tracing::error!(port = port.id, ifname = port.tap.name(), error = %e.into_parts().1, "cannot poll port");
            return;
        }
    };
    // Aborted with this task, so the drain task never outlives the port loop.
    let _drain = port
        .limits
        .ingress
        .as_ref()
        .map(|_| AbortOnDrop(tokio::spawn(shaper::drain(port.clone(), stats.clone()))));
    let mut buf = vec![0u8; FRAME_BUF_LEN];
    let mut reply = [0u8; icmp::MAX_REPLY_LEN];
    let mut scratch = vec![0u8; SEGMENT_BUF_LEN];
    loop {
        // ERROR too: when the device is unregistered (its namespace was deleted) the TAP
        // polls as EPOLLERR only, and the read that follows tells us it is gone.
        let mut ready = match afd.ready(Interest::READABLE | Interest::ERROR).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(port = port.id, error = %e, "port poll failed; port stops forwarding");
                break;
            }
        };
        let snapshot = table.load();
        let now = now_secs();
        let mut drained = false;
        let mut pause = 0;
        for _ in 0..BATCH {
            match port.tap.read(&mut buf) {
                Ok(n) => {
                    handle_frame(
                        &port,
                        &mut buf[..n],
                        &snapshot,
                        now,
                        &stats,
                        &mut reply,
                        &mut scratch,
                    );
                    if let Some(rl) = &port.limits.egress {
                        pause = rl.charge(mono_ns(), n);
                        if pause > 0 {
                            break;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ready.clear_ready();
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(port = port.id, ifname = port.tap.name(), error = %e, "port device gone; it stops forwarding until detached");
                    port.alive.store(false, Relaxed);
                    let _ = gone.send(port.id);
                    return;
                }
            }
        }
        drop(ready);
        if pause > 0 {
            // Over its egress rate: leave the pod's frames queued in its TAP until the
            // bucket has room, which slows the pod's TCP down without losses.
            tokio::time::sleep(std::time::Duration::from_nanos(pause)).await;
        } else if !drained {
            tokio::task::yield_now().await;
        }
    }
    port.alive.store(false, Relaxed);
}

#[inline]
fn handle_frame(
    port: &Port,
    buf: &mut [u8],
    snapshot: &Snapshot,
    now: u32,
    stats: &Stats,
    reply: &mut [u8],
    scratch: &mut [u8],
) {
    port.counters.rx_packets.fetch_add(1, Relaxed);
    port.counters.rx_bytes.fetch_add(buf.len() as u64, Relaxed);
    if port.capturing.load(Relaxed) {
        port.capture_frame(buf, "rx");
    }
    match datapath::forward(buf, port.id, &snapshot.table, &snapshot.flows, now, reply) {
        Verdict::Forward(to) => match snapshot.ports.get(&to) {
            Some(out) => out.transmit(buf, stats),
            None => {
                port.counters.drops.fetch_add(1, Relaxed);
                stats.count_drop(DropReason::NoRoute);
            }
        },
        Verdict::Reply(len) => port.transmit(&reply[..len], stats),
        Verdict::Encap(peer) => match (&snapshot.tunnel, snapshot.peers.get(peer)) {
            (Some(tunnel), Some(peer)) => tunnel.send_frame(buf, peer, scratch, stats),
            _ => {
                port.counters.drops.fetch_add(1, Relaxed);
                stats.count_drop(DropReason::NoPeer);
            }
        },
        Verdict::Reject { len, reason } => {
            port.counters.drops.fetch_add(1, Relaxed);
            stats.count_drop(reason);
            port.transmit(&reply[..len], stats);
        }
        Verdict::Drop(reason) => {
            port.counters.drops.fetch_add(1, Relaxed);
            stats.count_drop(reason);
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
