//! Per-pod bandwidth policing, the CNI `bandwidth` capability done inside the switch.
//!
//! The reference `bandwidth` plugin shapes the host end of a veth pair; our pods have no
//! host-side device (the TAP's other end is this process), so the reference plugin refuses
//! them ("container interface eth0 has no veth peer"). The switch polices instead: a frame
//! entering or leaving a pod is admitted only if the pod's bucket holds enough credit.
//!
//! Out of a pod the switch *shapes*: it charges each frame it reads and, once the pod is
//! over its rate, stops reading the pod's TAP until the credit is back ([`RateLimit::charge`]).
//! The frames wait in the pod's own TAP queue, so TCP in the pod slows down instead of
//! losing segments, as with the reference plugin's `tbf`. Into a pod it queues: a frame
//! that finds no credit waits in a short per-pod queue (`crate::port::shaper`) until
//! [`RateLimit::delay`] says it may go; only a frame that finds the queue full is dropped
//! and counted as `rate_limited`.
//!
//! The bucket is GCRA (the "virtual scheduling" form of a token bucket): one atomic
//! timestamp, the theoretical arrival time, so any port task may police any port without a
//! lock, and the caller passes the clock in (sans-IO).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The smallest burst we accept, in bytes: one TSO super-frame must always fit, or a pod
/// with segmentation offload could never send anything.
pub const MIN_BURST_BYTES: u64 = 64 * 1024 + 1024;

#[derive(Debug)]
pub struct RateLimit {
    /// Nanoseconds of credit one byte costs.
    ns_per_byte: f64,
    /// How far ahead of `now` the theoretical arrival time may run: the burst, in ns.
    tolerance_ns: u64,
    /// Theoretical arrival time of the next byte, in ns on the caller's clock.
    tat: AtomicU64,
    rate_bps: u64,
    burst_bytes: u64,
}

impl RateLimit {
    /// `rate_bits` per second with a bucket of `burst_bits`, as the CNI `bandwidth`
    /// capability states them. `None` when `rate_bits` is 0 (no limit).
    pub fn new(rate_bits: u64, burst_bits: u64) -> Option<RateLimit> {
        if rate_bits == 0 {
            return None;
        }
        let burst_bytes = (burst_bits / 8).max(MIN_BURST_BYTES);
        let ns_per_byte = 8e9 / rate_bits as f64;
        Some(RateLimit {
            ns_per_byte,
            tolerance_ns: (burst_bytes as f64 * ns_per_byte) as u64,
            tat: AtomicU64::new(0),
            rate_bps: rate_bits,
            burst_bytes,
        })
    }

    pub fn rate_bits(&self) -> u64 {
        self.rate_bps
    }

    /// The burst actually used, in bytes (at least [`MIN_BURST_BYTES`]).
    pub fn burst_bytes(&self) -> u64 {
        self.burst_bytes
    }

    /// Charge `bytes` at `now_ns` unconditionally; returns how many nanoseconds the caller
    /// must wait before the bucket has room again (0 when it still has).
    #[inline]
    pub fn charge(&self, now_ns: u64, bytes: usize) -> u64 {
        let cost = (bytes as f64 * self.ns_per_byte) as u64;
        let mut tat = self.tat.load(Relaxed);
        loop {
            let next = tat.max(now_ns) + cost;
            match self.tat.compare_exchange_weak(tat, next, Relaxed, Relaxed) {
                Ok(_) => return next.saturating_sub(now_ns + self.tolerance_ns),
                Err(current) => tat = current,
            }
        }
    }

    /// How many nanoseconds from `now_ns` until a frame of `bytes` would be admitted; 0
    /// means now. Charges nothing.
    #[inline]
    pub fn delay(&self, now_ns: u64, bytes: usize) -> u64 {
        let cost = (bytes as f64 * self.ns_per_byte) as u64;
        (self.tat.load(Relaxed).max(now_ns) + cost).saturating_sub(now_ns + self.tolerance_ns)
    }

    /// How many bytes may wait for credit: the burst plus 25 ms at the rate (the reference
    /// plugin's tbf latency), and never less than two super-frames.
    pub fn queue_limit(&self) -> usize {
        let latency = self.rate_bps / 8 / 40;
        (self.burst_bytes + latency).max(2 * MIN_BURST_BYTES) as usize
    }

    /// Charge `bytes` at time `now_ns`; false means the frame is over the limit and must be
    /// dropped (nothing is charged for it).
    #[inline]
    pub fn admit(&self, now_ns: u64, bytes: usize) -> bool {
        let cost = (bytes as f64 * self.ns_per_byte) as u64;
        let mut tat = self.tat.load(Relaxed);
        loop {
            let start = tat.max(now_ns);
            let next = start + cost;
            if next > now_ns + self.tolerance_ns {
                return false;
            }
            match self.tat.compare_exchange_weak(tat, next, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(current) => tat = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn zero_rate_means_no_limit() {
        assert!(RateLimit::new(0, 1_000_000).is_none());
    }

    #[test]
    fn a_full_bucket_admits_the_burst_then_refuses() {
        // 8 Mbit/s = 1 byte per microsecond; a 100 KB burst.
        let rl = RateLimit::new(8_000_000, 800_000).unwrap();
        assert_eq!(rl.burst_bytes(), 100_000);
        let now = 1_000 * MS;
        let admitted = (0..200).take_while(|_| rl.admit(now, 1_000)).count();
        assert_eq!(admitted, 100, "exactly the burst");
        assert!(!rl.admit(now, 1_000));
        // 5 ms later, 5000 bytes of credit came back.
        let later = now + 5 * MS;
        assert_eq!((0..20).take_while(|_| rl.admit(later, 1_000)).count(), 5);
    }

    #[test]
    fn the_long_run_rate_is_the_configured_rate() {
        let rl = RateLimit::new(80_000_000, 0).unwrap(); // 10 MB/s, minimum burst
        let mut sent = 0u64;
        let mut now = 1_000 * MS;
        // Offer far more than the rate: 1500-byte frames every microsecond for 1 s.
        for _ in 0..1_000_000 {
            if rl.admit(now, 1_500) {
                sent += 1_500;
            }
            now += 1_000;
        }
        let expected = 10_000_000 + rl.burst_bytes();
        assert!(sent <= expected, "sent {sent} > {expected}");
        assert!(sent >= 9_900_000, "sent {sent}");
    }

    #[test]
    fn charging_past_the_burst_says_how_long_to_wait() {
        // 8 Mbit/s = 1 byte per microsecond; a 100 KB burst.
        let rl = RateLimit::new(8_000_000, 800_000).unwrap();
        let now = 1_000 * MS;
        for _ in 0..100 {
            assert_eq!(rl.charge(now, 1_000), 0);
        }
        // One more frame is sent but puts the bucket 1000 bytes (1 ms) into debt.
        assert_eq!(rl.charge(now, 1_000), MS);
        // After waiting, the next frame fits again.
        assert_eq!(rl.charge(now + 2 * MS, 1_000), 0);
    }

    #[test]
    fn delay_predicts_admission_without_charging() {
        let rl = RateLimit::new(8_000_000, 800_000).unwrap();
        let now = 1_000 * MS;
        assert_eq!(rl.delay(now, 100_000), 0);
        assert!(rl.admit(now, 100_000));
        assert_eq!(rl.delay(now, 1_000), MS);
        assert_eq!(rl.delay(now, 1_000), MS, "nothing was charged");
        assert!(!rl.admit(now, 1_000));
        assert!(rl.admit(now + MS, 1_000));
    }

    #[test]
    fn the_burst_never_drops_below_one_super_frame() {
        let rl = RateLimit::new(1_000_000, 8).unwrap();
        assert!(rl.admit(1_000 * MS, 65_536 + 12));
    }
}
