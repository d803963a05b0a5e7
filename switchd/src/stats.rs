//! Switch-wide counters: drops by reason, attach and detach counts.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::datapath::DropReason;

#[derive(Debug, Default)]
pub struct Stats {
    drops: [AtomicU64; DropReason::ALL.len()],
    pub attaches: AtomicU64,
    pub detaches: AtomicU64,
}

impl Stats {
    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Relaxed);
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
