//! Peer health: switchd probes every peer through the tunnel itself, at a low rate, and
//! keeps round-trip time, loss and the path MTU per peer for `switchctl peers` and
//! `/metrics`.
//!
//! A probe is an ICMP echo request from this node's gateway address to the peer's
//! ([`crate::datapath::probe`]), sent through the same encapsulation and socket as pods'
//! frames. The peer's node stack answers it, whether the peer runs switchd or a kernel
//! VXLAN device with a bridge holding the gateway address (flannel's layout), and the
//! datapath worker that receives the reply hands it here instead of to the node. Every
//! `interval` each peer gets one small probe (RTT and loss); every `MTU_EVERY` intervals a
//! round of probes of several sizes with DF set ([`mtu::MtuSearch`]). At most `budget`
//! probes a second go out in all: with more peers than that, each is probed less often.
//!
//! This module keeps the state and decides; `crate::switch::run_probes` sends what it
//! plans, each tick, through the tunnel.

pub mod mtu;

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use switchd_proto::PeerHealth;

use crate::datapath::probe;
use mtu::MtuSearch;

/// A probe not answered within this long is lost.
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// An MTU round every this many intervals (and at the first).
pub const MTU_EVERY: u32 = 10;
/// Loss is the share of the last this many small probes that were lost.
pub const LOSS_WINDOW: usize = 30;

#[derive(Debug)]
pub struct Health {
    /// `None`: probing is off.
    interval: Option<Duration>,
    budget: u32,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    peers: HashMap<String, PeerState>,
    pending: HashMap<u32, Pending>,
    next_seq: u32,
    cursor: usize,
}

#[derive(Debug)]
struct Pending {
    peer: String,
    sent: Instant,
    size: u32,
    mtu_round: bool,
}

#[derive(Debug)]
struct PeerState {
    srtt: Option<Duration>,
    last_rtt: Option<Duration>,
    window: VecDeque<bool>,
    sent: u64,
    answered: u64,
    search: MtuSearch,
    round: Option<Round>,
    since_mtu: u32,
    /// The path MTU last logged about, so each change is said once.
    told: Option<u32>,
    last_answer: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct Round {
    outstanding: usize,
    answered: Vec<u32>,
    lost: Vec<u32>,
}

impl PeerState {
    fn new(tunnel_mtu: u32) -> PeerState {
        PeerState {
            srtt: None,
            last_rtt: None,
            window: VecDeque::with_capacity(LOSS_WINDOW),
            sent: 0,
            answered: 0,
            search: MtuSearch::new(tunnel_mtu),
            round: None,
            since_mtu: MTU_EVERY,
            told: None,
            last_answer: None,
        }
    }

    fn record(&mut self, answered: bool) {
        if self.window.len() == LOSS_WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(answered);
    }

    fn report(&self) -> PeerHealth {
        let lost = self.window.iter().filter(|a| !**a).count();
        PeerHealth {
            rtt_micros: self.srtt.map(|d| d.as_micros() as u64),
            last_rtt_micros: self.last_rtt.map(|d| d.as_micros() as u64),
            loss_ratio: if self.window.is_empty() {
                None
            } else {
                Some(lost as f64 / self.window.len() as f64)
            },
            path_mtu: self.search.path_mtu(),
            probes_sent: self.sent,
            probes_answered: self.answered,
            last_answer_unix: self.last_answer.and_then(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs())
            }),
        }
    }
}

/// A probe to send: peer index in the snapshot, sequence number, IP length.
pub type Send = (usize, u32, u32);

impl Health {
    pub fn new(interval: Option<Duration>, budget: u32) -> Health {
        Health {
            interval,
            budget: budget.max(1),
            state: Mutex::default(),
        }
    }

    /// A datapath worker received the echo reply with sequence number `seq`.
    pub fn answer(&self, seq: u32) {
        let mut st = self.state.lock().unwrap();
        let Some(p) = st.pending.remove(&seq) else {
            return; // late (already counted lost) or not ours
        };
        let rtt = p.sent.elapsed();
        let Some(peer) = st.peers.get_mut(&p.peer) else {
            return;
        };
        peer.answered += 1;
        peer.last_answer = Some(SystemTime::now());
        if p.mtu_round {
            if let Some(r) = peer.round.as_mut() {
                r.answered.push(p.size);
                r.outstanding -= 1;
            }
        } else {
            peer.record(true);
            peer.last_rtt = Some(rtt);
            // Smoothed as TCP does (RFC 6298): srtt = 7/8 srtt + 1/8 sample.
            peer.srtt = Some(match peer.srtt {
                None => rtt,
                Some(s) => (s * 7 + rtt) / 8,
            });
        }
    }

    /// The health of peer `name`, if it has been probed.
    pub fn of(&self, name: &str) -> Option<PeerHealth> {
        let st = self.state.lock().unwrap();
        st.peers.get(name).map(PeerState::report)
    }

    /// Between two rounds of probes; `None`: probing is off.
    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// Probes per round that keep within the budget.
    pub fn per_tick(&self) -> usize {
        let secs = self.interval.map_or(1.0, |i| i.as_secs_f64());
        ((f64::from(self.budget) * secs).ceil() as usize).max(1)
    }

    /// Expire what timed out, close finished MTU rounds, and pick this tick's probes.
    /// `peers`: the peers' names in the snapshot's order (a [`Send`] names its peer by that
    /// index).
    pub fn plan(&self, peers: &[&str], tunnel_mtu: u32, pod_mtu: u32) -> Vec<Send> {
        let per_tick = self.per_tick();
        let mut st = self.state.lock().unwrap();
        let st = &mut *st;
        let now = Instant::now();
        let expired: Vec<u32> = st
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.sent) >= TIMEOUT)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            let p = st.pending.remove(&seq).unwrap();
            if let Some(peer) = st.peers.get_mut(&p.peer) {
                match (p.mtu_round, peer.round.as_mut()) {
                    (true, Some(r)) => {
                        r.lost.push(p.size);
                        r.outstanding -= 1;
                    }
                    (true, None) => {}
                    (false, _) => peer.record(false),
                }
            }
        }
        // Forget peers that left (through a set: linear in the peers, 5,000 stay cheap).
        let names: std::collections::HashSet<&str> = peers.iter().copied().collect();
        st.peers.retain(|name, _| names.contains(name.as_str()));
        for (name, peer) in st.peers.iter_mut() {
            if peer.round.as_ref().is_some_and(|r| r.outstanding == 0) {
                let r = peer.round.take().unwrap();
                peer.search.update(&r.answered, &r.lost);
                tell_mtu(name, peer, pod_mtu, tunnel_mtu);
            }
        }
        let n = peers.len();
        let mut sends = Vec::new();
        for k in 0..n.min(per_tick) {
            let i = (st.cursor + k) % n;
            let name = peers[i];
            let peer = st
                .peers
                .entry(name.to_string())
                .or_insert_with(|| PeerState::new(tunnel_mtu));
            let mut sizes = vec![(probe::MIN_IP_LEN as u32, false)];
            peer.since_mtu += 1;
            if peer.round.is_none() && peer.since_mtu >= MTU_EVERY {
                peer.since_mtu = 0;
                let ladder = peer.search.sizes();
                peer.round = Some(Round {
                    outstanding: ladder.len(),
                    ..Round::default()
                });
                sizes.extend(ladder.into_iter().map(|s| (s, true)));
            }
            peer.sent += sizes.len() as u64;
            for (size, mtu_round) in sizes {
                let seq = st.next_seq;
                st.next_seq = st.next_seq.wrapping_add(1);
                st.pending.insert(
                    seq,
                    Pending {
                        peer: name.to_string(),
                        sent: now,
                        size,
                        mtu_round,
                    },
                );
                sends.push((i, seq, size));
            }
        }
        if n > 0 {
            st.cursor = (st.cursor + per_tick) % n;
        }
        sends
    }
}

/// Say once per change whether pods' packets fit the path to `name`, once the search has
/// settled (mid-search the figure is only a lower bound).
fn tell_mtu(name: &str, peer: &mut PeerState, pod_mtu: u32, tunnel_mtu: u32) {
    let Some(path) = peer.search.path_mtu().filter(|_| peer.search.settled()) else {
        return;
    };
    if peer.told == Some(path) {
        return;
    }
    let was = peer.told.replace(path);
    if path < pod_mtu {
        tracing::error!(
            peer = name,
            path_mtu = path,
            pod_mtu,
            tunnel_mtu,
            "the path to this peer carries only {path}-byte packets, but pods are told {pod_mtu}: larger packets between pods on the two nodes are lost; check the MTU of the underlay between the nodes (or set mtu = {path} in switchd.toml)"
        );
    } else if was.is_some_and(|w| w < pod_mtu) {
        tracing::info!(
            peer = name,
            path_mtu = path,
            pod_mtu,
            "the path to this peer carries the pods' MTU again"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_holds_however_many_peers_and_answers_and_leavers_are_accounted() {
        let h = Health::new(Some(Duration::from_secs(1)), 100);
        let names: Vec<String> = (0..500).map(|i| format!("n{i}")).collect();
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        let small = |sends: &[Send]| -> Vec<usize> {
            sends
                .iter()
                .filter(|s| s.2 == probe::MIN_IP_LEN as u32)
                .map(|s| s.0)
                .collect()
        };
        let first = h.plan(&all, 1450, 1450);
        let second = h.plan(&all, 1450, 1450);
        assert_eq!(
            small(&first).len(),
            100,
            "one small probe each for 100 peers"
        );
        assert_eq!(small(&second).len(), 100);
        assert!(
            small(&first).iter().all(|p| !small(&second).contains(p)),
            "the next tick probes the next peers"
        );
        // First contact also starts an MTU round: the full size, a ladder and the floor.
        assert!(
            first.len() > 100 && first.len() <= 100 * 10,
            "{}",
            first.len()
        );

        // A small probe answered: RTT and the answer count show.
        let (i, seq, _) = first[0];
        h.answer(seq);
        let report = h.of(all[i]).unwrap();
        assert!(report.rtt_micros.is_some());
        assert_eq!(report.probes_answered, 1);
        assert_eq!(h.of("n499"), None, "not probed yet");

        // Only ten peers are left: the others are forgotten.
        h.plan(&all[..10], 1450, 1450);
        assert!(h.of(all[200]).is_none());
        assert_eq!(h.state.lock().unwrap().peers.len(), 10);
    }
}
