//! Ports: a TAP device (one descriptor per queue) plus who it belongs to and its counters.
//! The datapath workers (`crate::worker`) read and write them.

pub mod shaper;
pub mod tap;

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use std::sync::Mutex;

use switchd_proto::{AttachmentKey, Bandwidth, CapturedFrame, Counters, PodRef};
use tokio::sync::mpsc;

use crate::datapath::frame::VNET_HDR_LEN;

use crate::datapath::ratelimit::RateLimit;
use crate::datapath::{DropReason, PortId};
use crate::stats::Stats;
use tap::Tap;

/// Big enough for the largest TSO super-frame the kernel hands over: a 64 KiB IP packet plus
/// Ethernet and virtio-net headers.
pub const FRAME_BUF_LEN: usize = 65_536 + 64;
/// Room for a super-frame cut into segments, each with its own headers and VXLAN header.
pub const SEGMENT_BUF_LEN: usize = 2 * FRAME_BUF_LEN;
/// Frames a worker reads from one descriptor before turning to the next.
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
    /// Link chatter absorbed on purpose (see [`DropReason::is_chatter`]).
    ///
    /// [`DropReason::is_chatter`]: crate::datapath::DropReason::is_chatter
    pub ignored: AtomicU64,
}

impl PortCounters {
    pub fn snapshot(&self) -> Counters {
        Counters {
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            drops: self.drops.load(Relaxed),
            ignored: self.ignored.load(Relaxed),
        }
    }
}

#[derive(Debug)]
pub struct Port {
    pub id: PortId,
    /// The device's first (or only) queue; device-wide settings go through it.
    pub tap: Tap,
    /// The other queues of a multi-queue TAP, one per further worker.
    pub more_queues: Vec<Tap>,
    pub owner: PortOwner,
    pub address: Ipv4Addr,
    /// The pod's IPv6 address (the IPv6 gateway, for the host port), on a dual-stack node.
    pub address_v6: Option<std::net::Ipv6Addr>,
    pub mac: [u8; 6],
    pub counters: PortCounters,
    /// Cleared when the device disappeared under us (deleted by hand, namespace gone).
    pub alive: AtomicBool,
    /// `switchctl capture`: checked with one relaxed load per frame; frames are copied
    /// only while a capture runs.
    pub capturing: AtomicBool,
    pub capture: Mutex<Option<mpsc::Sender<CapturedFrame>>>,
    /// Frames the running capture lost because its reader was too slow.
    pub capture_lost: std::sync::atomic::AtomicU64,
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
pub fn mono_ns() -> u64 {
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
    /// How operators know the port: `switchd0`, or the pod (`namespace/name`, else the
    /// container id's first 12 characters) with its interface name.
    pub fn label(&self) -> String {
        match &self.owner {
            PortOwner::Host => self.tap.name().to_string(),
            PortOwner::Pod { key, pod, .. } => {
                let who = match (pod.namespace.as_str(), pod.name.as_str()) {
                    (_, "") => key.container_id.chars().take(12).collect(),
                    ("", name) => name.to_string(),
                    (ns, name) => format!("{ns}/{name}"),
                };
                format!("pod {who} ({})", key.ifname)
            }
        }
    }

    /// Number of queues (descriptors) this port has.
    pub fn queues(&self) -> usize {
        1 + self.more_queues.len()
    }

    /// Queue `q`'s descriptor (`q` counts from 0; taken modulo the number of queues).
    #[inline]
    pub fn queue(&self, q: usize) -> &Tap {
        match q % self.queues() {
            0 => &self.tap,
            i => &self.more_queues[i - 1],
        }
    }

    /// Hand a copy of `buf` (virtio-net header + frame) to a running capture.
    #[cold]
    pub fn capture_frame(&self, buf: &[u8], direction: &str) {
        if let Some(tx) = self.capture.lock().unwrap().as_ref() {
            let frame = CapturedFrame {
                ts_micros: crate::monitor::now_micros(),
                direction: direction.into(),
                data: buf.get(VNET_HDR_LEN..).unwrap_or(&[]).to_vec(),
            };
            // A slow reader loses frames, counted; the datapath never waits.
            if tx.try_send(frame).is_err() {
                self.capture_lost.fetch_add(1, Relaxed);
            }
        }
    }

    /// Start (`Some`) or stop (`None`) capturing this port's frames.
    pub fn set_capture(&self, tx: Option<mpsc::Sender<CapturedFrame>>) {
        let on = tx.is_some();
        if on {
            self.capture_lost.store(0, Relaxed);
        }
        *self.capture.lock().unwrap() = tx;
        self.capturing.store(on, Relaxed);
    }

    /// Write one buffer to this port through queue `q`, counting it either way. A worker
    /// writes through its own queue, which also tells the TUN driver to send that flow's
    /// answers back on it (the driver's flow steering).
    #[inline]
    pub fn transmit(&self, buf: &[u8], stats: &Stats, q: usize) {
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
        self.write_counted(buf, stats, q);
    }

    pub fn write_counted(&self, buf: &[u8], stats: &Stats, q: usize) {
        match self.queue(q).write(buf) {
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
