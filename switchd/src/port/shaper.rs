//! Ingress shaping for pods with a bandwidth limit: frames into the pod that find no credit
//! wait here, in order, and a small task writes them to the TAP as credit comes back.
//! Pods without a limit never touch this module.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::{mono_ns, Port};
use crate::datapath::ratelimit::RateLimit;
use crate::datapath::DropReason;
use crate::stats::Stats;

#[derive(Debug)]
pub struct Shaper {
    pub limit: RateLimit,
    queue: Mutex<Queue>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
}

/// What `offer` decided for a frame.
pub enum Offer {
    /// Credit is there and nothing is queued: write it now.
    Send,
    /// Copied into the queue; the drain task writes it.
    Queued,
    /// The queue is full: drop it.
    Full,
}

impl Shaper {
    pub fn new(limit: RateLimit) -> Shaper {
        Shaper {
            limit,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
        }
    }

    pub fn offer(&self, buf: &[u8]) -> Offer {
        let mut q = self.queue.lock().unwrap();
        if q.frames.is_empty() && self.limit.admit(mono_ns(), buf.len()) {
            return Offer::Send;
        }
        if q.bytes + buf.len() > self.limit.queue_limit() {
            return Offer::Full;
        }
        q.bytes += buf.len();
        q.frames.push_back(buf.to_vec());
        drop(q);
        self.wake.notify_one();
        Offer::Queued
    }
}

/// Write `port`'s queued ingress frames as its rate allows; runs as long as the port.
pub async fn drain(port: Arc<Port>, stats: Arc<Stats>) {
    let Some(shaper) = port.limits.ingress.as_ref() else {
        return;
    };
    loop {
        let next = {
            let mut q = shaper.queue.lock().unwrap();
            match q.frames.front() {
                None => None,
                Some(f) => match shaper.limit.delay(mono_ns(), f.len()) {
                    0 => {
                        let f = q.frames.pop_front().unwrap();
                        q.bytes -= f.len();
                        shaper.limit.charge(mono_ns(), f.len());
                        Some(Ok(f))
                    }
                    wait => Some(Err(wait)),
                },
            }
        };
        match next {
            None => shaper.wake.notified().await,
            Some(Ok(frame)) => port.write_counted(&frame, &stats, 0),
            Some(Err(wait)) => tokio::time::sleep(Duration::from_nanos(wait)).await,
        }
        if !port.alive.load(Relaxed) {
            return;
        }
    }
}

/// Count a frame the full queue refused.
pub fn count_full(port: &Port, stats: &Stats) {
    port.counters.drops.fetch_add(1, Relaxed);
    stats.count_drop(DropReason::RateLimited);
}
