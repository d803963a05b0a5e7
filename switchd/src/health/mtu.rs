//! Path MTU discovery by probing (the idea of RFC 8899, packetization-layer PMTUD, over the
//! tunnel): probes of several sizes with DF set go out at once; the largest that comes back
//! is a size the path carries, the smallest lost one above it bounds the search. Each round
//! narrows the range eightfold, so from 576 to 1450 bytes it settles in four rounds. Every
//! round re-tries the full tunnel MTU, so a path that grows back is seen, and the floor,
//! so a round whose probes were all lost (the peer is away) is told from a smaller path.

/// The smallest size probed: what every IPv4 host must accept (RFC 791).
pub const FLOOR: u32 = 576;
/// Sizes probed between the bounds in one round (besides the full size).
const LADDER: u32 = 7;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtuSearch {
    /// The tunnel MTU: the most a probe is sent at.
    max: u32,
    /// The largest size known to cross; 0 before any did.
    lo: u32,
    /// The smallest size lost above `lo`; `max + 1` while none was.
    hi: u32,
}

impl MtuSearch {
    pub fn new(max: u32) -> MtuSearch {
        MtuSearch {
            max,
            lo: 0,
            hi: max + 1,
        }
    }

    /// The largest IP packet the path is known to carry.
    pub fn path_mtu(&self) -> Option<u32> {
        (self.lo > 0).then_some(self.lo)
    }

    /// Is the search done: the full size crosses, or the next size up is known lost?
    /// While it is not, [`MtuSearch::path_mtu`] is a lower bound still rising.
    pub fn settled(&self) -> bool {
        self.lo > 0 && (self.lo == self.max || self.hi == self.lo + 1)
    }

    /// The sizes to probe in the next round, largest first.
    pub fn sizes(&self) -> Vec<u32> {
        let mut v = vec![self.max];
        let below = self.lo.max(FLOOR - 1);
        let gap = self.hi.saturating_sub(below + 1);
        if gap == 0 {
            if self.lo > 0 && self.lo != self.max {
                v.push(self.lo); // settled: keep checking it still crosses
            }
        } else if gap <= LADDER {
            v.extend((below + 1..self.hi).rev());
        } else {
            v.extend(
                (1..=LADDER)
                    .rev()
                    .map(|k| below + k * (gap + 1) / (LADDER + 1)),
            );
        }
        // The floor, every round: when it comes back the peer is there, and what is lost
        // is lost for its size.
        if !v.contains(&FLOOR) {
            v.push(FLOOR);
        }
        v.retain(|&s| s <= self.max);
        v.dedup();
        v
    }

    /// A round ended: these sizes came back, these did not. A round where nothing came
    /// back says nothing about the MTU (the peer is down, or the loss is total).
    pub fn update(&mut self, answered: &[u32], lost: &[u32]) {
        let Some(&best) = answered.iter().max() else {
            return;
        };
        // The size that crossed before is lost now: the path shrank.
        let shrank = self.lo > 0 && lost.contains(&self.lo) && best < self.lo;
        self.lo = if shrank { best } else { self.lo.max(best) };
        if self.hi <= self.lo || shrank {
            self.hi = self.max + 1;
        }
        for &l in lost {
            if l > self.lo && l < self.hi {
                self.hi = l;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run rounds against a path that carries `carries` bytes, until settled.
    fn settle(search: &mut MtuSearch, carries: u32) -> usize {
        for round in 1..=10 {
            let sizes = search.sizes();
            let (ok, lost): (Vec<u32>, Vec<u32>) = sizes.iter().partition(|&&s| s <= carries);
            let before = search.clone();
            search.update(&ok, &lost);
            if *search == before {
                return round;
            }
        }
        panic!("did not settle: {search:?}");
    }

    #[test]
    fn finds_the_exact_path_mtu_in_a_few_rounds_and_follows_it_down_and_up() {
        let mut s = MtuSearch::new(1450);
        assert_eq!(s.path_mtu(), None);
        settle(&mut s, 1450);
        assert_eq!(s.path_mtu(), Some(1450));
        assert_eq!(
            s.sizes(),
            vec![1450, FLOOR],
            "settled: the full size and the floor"
        );

        assert!(s.settled());
        // The underlay shrinks under us: the first round after it knows only the floor.
        let (ok, lost): (Vec<u32>, Vec<u32>) = s.sizes().iter().partition(|&&x| x <= 1250);
        s.update(&ok, &lost);
        assert_eq!((s.path_mtu(), s.settled()), (Some(FLOOR), false));
        let rounds = settle(&mut s, 1250);
        assert_eq!(s.path_mtu(), Some(1250));
        assert!(s.settled());
        assert!(rounds <= 6, "{rounds} rounds");
        assert_eq!(
            s.sizes(),
            vec![1450, 1250, FLOOR],
            "settled: full, known, floor"
        );

        // And grows back.
        settle(&mut s, 1450);
        assert_eq!(s.path_mtu(), Some(1450));

        let mut odd = MtuSearch::new(1450);
        settle(&mut odd, 1001);
        assert_eq!(odd.path_mtu(), Some(1001));
    }

    #[test]
    fn a_round_where_nothing_came_back_changes_nothing() {
        let mut s = MtuSearch::new(1450);
        settle(&mut s, 1300);
        let before = s.clone();
        let sizes = s.sizes();
        s.update(&[], &sizes);
        assert_eq!(s, before);
    }
}
