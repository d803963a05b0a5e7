//! The verdict of every policed flow, so that only a flow's first packet (and the first
//! after a policy change) is classified.
//!
//! Built like the translated-flow table (`super::super::flows`): a fixed number of slots in
//! buckets of [`WAYS`] (half a cache line), each slot one `AtomicU64`, so readers never wait
//! and never see half an entry. A slot holds a fingerprint of the flow's tuple, the policy
//! epoch its verdict was decided under, whether the flow was allowed, whether it is the
//! reply direction of an allowed flow, and when it was last seen (seconds, modulo 2^16).
//!
//! Losing an entry (evicted by a full bucket, or two writers racing on one slot) is never
//! wrong, only slower: the next packet is classified again. A fingerprint collision could
//! lend one flow another's verdict for as long as both live; with 26 fingerprint bits and
//! the bucket's own bits that takes two live flows agreeing in 40+ bits of their hash.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::datapath::flows::FlowKey;

pub const WAYS: usize = 4;

const TIME_BITS: u32 = 16;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
const ALLOW_BIT: u64 = 1 << TIME_BITS;
const REPLY_BIT: u64 = 1 << (TIME_BITS + 1);
const EPOCH_SHIFT: u32 = TIME_BITS + 2;
const EPOCH_BITS: u32 = 20;
const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;
const FP_SHIFT: u32 = EPOCH_SHIFT + EPOCH_BITS;

/// How long an idle entry lives, by protocol, in seconds. An expired reply of TCP is picked
/// up again by its segments (see `super::classify`); an expired UDP reply is judged as new,
/// as the kernel's conntrack would after its own UDP timeout.
pub fn idle_timeout(proto: u8) -> u32 {
    match proto {
        6 => 3600,
        17 | 132 => 180,
        1 | 58 => 30,
        _ => 600,
    }
}

/// A cached verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The policy epoch it was decided under (its low 20 bits).
    pub epoch: u32,
    pub allowed: bool,
    /// The reply direction of an allowed flow: re-checked by classifying the original.
    pub reply: bool,
}

pub struct VerdictCache {
    slots: Box<[AtomicU64]>,
    bucket_mask: usize,
    seed: u64,
}

impl std::fmt::Debug for VerdictCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerdictCache")
            .field("slots", &self.slots.len())
            .finish()
    }
}

/// The 64-bit hash of a flow's tuple.
#[inline]
pub fn hash_key(key: &FlowKey, seed: u64) -> u64 {
    let a = (u64::from(key.src) << 32 | u64::from(key.dst)) ^ seed;
    let b = u64::from(key.proto) << 40
        | u64::from(key.sport) << 24
        | u64::from(key.dport) << 8
        | u64::from(key.v6);
    let x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.rotate_left(31);
    let x = (x ^ (x >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 32)
}

impl VerdictCache {
    /// A cache of at least `capacity` flows (rounded up to a power of two of buckets).
    pub fn new(capacity: usize, seed: u64) -> VerdictCache {
        let buckets = capacity.div_ceil(WAYS).next_power_of_two().max(1);
        let slots = (0..buckets * WAYS).map(|_| AtomicU64::new(0)).collect();
        VerdictCache {
            slots,
            bucket_mask: buckets - 1,
            seed,
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        hash_key(key, self.seed)
    }

    #[inline]
    fn bucket(&self, hash: u64) -> &[AtomicU64] {
        let b = (hash as usize) & self.bucket_mask;
        &self.slots[b * WAYS..(b + 1) * WAYS]
    }

    #[inline]
    fn fingerprint(hash: u64) -> u64 {
        // Never 0, so an empty slot matches no flow.
        (hash >> FP_SHIFT) | 1
    }

    /// The live entry for the flow with hash `hash`, refreshing its time.
    #[inline]
    pub fn get(&self, hash: u64, proto: u8, now: u32) -> Option<Entry> {
        let fp = Self::fingerprint(hash);
        let now16 = u64::from(now) & TIME_MASK;
        for slot in self.bucket(hash) {
            let v = slot.load(Relaxed);
            if v >> FP_SHIFT != fp {
                continue;
            }
            let age = (now16.wrapping_sub(v & TIME_MASK)) & TIME_MASK;
            if age > u64::from(idle_timeout(proto)) {
                return None;
            }
            if age != 0 {
                // At most one store per flow per second; a lost race only ages the entry.
                slot.store((v & !TIME_MASK) | now16, Relaxed);
            }
            return Some(Entry {
                epoch: ((v >> EPOCH_SHIFT) & EPOCH_MASK) as u32,
                allowed: v & ALLOW_BIT != 0,
                reply: v & REPLY_BIT != 0,
            });
        }
        None
    }

    /// Record `entry` for the flow with hash `hash`: over its own slot, an empty or expired
    /// one, or else the bucket's least recently seen.
    pub fn put(&self, hash: u64, entry: Entry, proto: u8, now: u32) {
        let fp = Self::fingerprint(hash);
        let now16 = u64::from(now) & TIME_MASK;
        let value = fp << FP_SHIFT
            | (u64::from(entry.epoch) & EPOCH_MASK) << EPOCH_SHIFT
            | if entry.reply { REPLY_BIT } else { 0 }
            | if entry.allowed { ALLOW_BIT } else { 0 }
            | now16;
        let bucket = self.bucket(hash);
        let mut victim = 0;
        let mut oldest = 0;
        for (i, slot) in bucket.iter().enumerate() {
            let v = slot.load(Relaxed);
            if v == 0 || v >> FP_SHIFT == fp {
                slot.store(value, Relaxed);
                return;
            }
            let age = (now16.wrapping_sub(v & TIME_MASK)) & TIME_MASK;
            if age > u64::from(idle_timeout(proto)) {
                slot.store(value, Relaxed);
                return;
            }
            if age >= oldest {
                oldest = age;
                victim = i;
            }
        }
        bucket[victim].store(value, Relaxed);
    }

    /// Live entries, for `switchctl` and the metrics.
    pub fn len(&self, now: u32) -> usize {
        let now16 = u64::from(now) & TIME_MASK;
        self.slots
            .iter()
            .map(|s| s.load(Relaxed))
            .filter(|&v| v != 0 && ((now16.wrapping_sub(v & TIME_MASK)) & TIME_MASK) <= 3600)
            .count()
    }

    pub fn is_empty(&self, now: u32) -> bool {
        self.len(now) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            src: 0x0a00_0001,
            dst: 0x0a00_0002,
            proto: 6,
            sport,
            dport: 80,
            fragment: false,
            v6: false,
        }
    }

    #[test]
    fn an_entry_is_found_until_it_idles_out_and_holds_every_field() {
        let c = VerdictCache::new(64, 7);
        let h = c.hash(&key(1000));
        assert_eq!(c.get(h, 6, 100), None);
        let e = Entry {
            epoch: 0xabcde,
            allowed: true,
            reply: true,
        };
        c.put(h, e, 6, 100);
        assert_eq!(c.get(h, 6, 100), Some(e));
        assert_eq!(c.get(h, 6, 100 + 3600), Some(e), "refreshed at 3700 now");
        assert_eq!(
            c.get(h, 6, 3700 + 3601),
            None,
            "idle longer than TCP's timeout"
        );
        assert_eq!(c.get(c.hash(&key(1001)), 6, 100), None);
    }

    #[test]
    fn a_full_bucket_evicts_its_least_recently_seen_entry() {
        let c = VerdictCache::new(WAYS, 1);
        let deny = Entry {
            epoch: 1,
            allowed: false,
            reply: false,
        };
        let hashes: Vec<u64> = (0..WAYS as u16 + 1).map(|p| c.hash(&key(p))).collect();
        for (i, &h) in hashes[..WAYS].iter().enumerate() {
            c.put(h, deny, 6, 10 + i as u32);
        }
        // The first becomes the most recent; the second is then the oldest.
        assert!(c.get(hashes[0], 6, 20).is_some());
        c.put(hashes[WAYS], deny, 6, 21);
        assert!(c.get(hashes[1], 6, 21).is_none());
        assert!(c.get(hashes[0], 6, 21).is_some());
        assert!(c.get(hashes[WAYS], 6, 21).is_some());
    }
}
