//! Switch-wide counters: drops by reason, attach and detach counts.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::datapath::DropReason;
use crate::monitor::{DropMonitor, Source};

/// A histogram of attach durations, from 1 ms to about 4 s (the switch records into it;
/// `metrics` only encodes it).
pub fn attach_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 13))
}

/// Durations of the steps of attaching and detaching a pod, by `op` and `step`, from
/// 0.1 ms to about 1.6 s: where a slow pod start spends its time.
pub type StepHistograms = prometheus_client::metrics::family::Family<
    Vec<(&'static str, &'static str)>,
    Histogram,
    fn() -> Histogram,
>;

pub fn step_histograms() -> StepHistograms {
    StepHistograms::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 15)))
}

/// Record one step of `op` that started at `since`; returns now, where the next step starts.
pub fn step(
    h: &StepHistograms,
    op: &'static str,
    step: &'static str,
    since: std::time::Instant,
) -> std::time::Instant {
    let now = std::time::Instant::now();
    h.get_or_create(&vec![("op", op), ("step", step)])
        .observe(now.duration_since(since).as_secs_f64());
    now
}

/// Wall-clock milliseconds since the Unix epoch (the datapath heartbeat).
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Default)]
pub struct Stats {
    drops: [AtomicU64; DropReason::ALL.len()],
    pub attaches: AtomicU64,
    pub detaches: AtomicU64,
    /// `switchctl monitor`'s listeners.
    pub monitor: DropMonitor,
}

impl Stats {
    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Relaxed);
    }

    /// Count a drop of `frame` (Ethernet, no virtio-net header) and show it to whoever
    /// monitors drops.
    #[inline]
    pub fn drop_frame(&self, reason: DropReason, source: Source, frame: &[u8]) {
        self.count_drop(reason);
        if self.monitor.is_on() {
            self.monitor.offer(reason, source, frame);
        }
    }

    /// [`drop_frame`](Self::drop_frame) with an explanation for the monitor, computed only
    /// while somebody listens.
    #[inline]
    pub fn drop_frame_why(
        &self,
        reason: DropReason,
        source: Source,
        frame: &[u8],
        why: impl FnOnce() -> Option<String>,
    ) {
        self.count_drop(reason);
        if self.monitor.is_on() {
            self.monitor.offer_why(reason, source, frame, why);
        }
    }

    pub fn drops(&self) -> Vec<(String, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| {
                (
                    r.as_str().to_string(),
                    self.drops[*r as usize].load(Relaxed),
                )
            })
            .collect()
    }
}
