//! `switchctl monitor`: dropped frames as events, for whoever listens.
//!
//! The datapath pays one relaxed load per drop while nobody listens. While someone does,
//! each drop is described (a few header fields, no copy of the payload) and offered to
//! every listener's bounded queue; a full queue loses the event, counted, never blocking
//! a worker. The control plane turns events into lines at the listener's rate.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::datapath::describe::{describe, Described};
use crate::datapath::{DropReason, PortId};

/// Events a listener may have queued before further ones are lost.
pub const QUEUE: usize = 1024;

/// Where a dropped frame came from.
/// Wall-clock microseconds since the Unix epoch: the time stamp of events and captured
/// frames.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Port(PortId),
    /// Index into the snapshot's peers.
    Peer(usize),
    /// A datagram from an address that is not a peer.
    Underlay(SocketAddr),
}

#[derive(Debug, Clone)]
pub struct Dropped {
    pub ts_micros: u64,
    pub reason: DropReason,
    pub source: Source,
    pub what: Described,
    pub len: u32,
    /// More about why, when the reason has it (the policy behind `policy_denied`).
    pub why: Option<String>,
}

#[derive(Debug)]
struct Listener {
    id: u64,
    /// Only frames from this port.
    port: Option<PortId>,
    tx: mpsc::Sender<Dropped>,
    lost: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
pub struct DropMonitor {
    on: AtomicBool,
    listeners: Mutex<Vec<Listener>>,
    next_id: AtomicU64,
}

/// A listener's end; dropping it stops the events.
pub struct Subscription<'a> {
    monitor: &'a DropMonitor,
    id: u64,
    pub rx: mpsc::Receiver<Dropped>,
    /// Events lost because the queue was full.
    pub lost: Arc<AtomicU64>,
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        let mut l = self.monitor.listeners.lock().unwrap();
        l.retain(|x| x.id != self.id);
        self.monitor.on.store(!l.is_empty(), Relaxed);
    }
}

impl DropMonitor {
    /// Is anybody listening? One relaxed load: the datapath's whole cost when not.
    #[inline(always)]
    pub fn is_on(&self) -> bool {
        self.on.load(Relaxed)
    }

    /// Start listening, to every drop or only to those from `port`.
    pub fn subscribe(&self, port: Option<PortId>) -> Subscription<'_> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = self.next_id.fetch_add(1, Relaxed);
        let lost = Arc::new(AtomicU64::new(0));
        let mut l = self.listeners.lock().unwrap();
        l.push(Listener {
            id,
            port,
            tx,
            lost: lost.clone(),
        });
        self.on.store(true, Relaxed);
        Subscription {
            monitor: self,
            id,
            rx,
            lost,
        }
    }

    /// Offer a dropped frame (Ethernet, no virtio-net header; may be empty) to the listeners.
    #[cold]
    #[inline(never)]
    pub fn offer(&self, reason: DropReason, source: Source, frame: &[u8]) {
        self.offer_why(reason, source, frame, || None)
    }

    /// [`offer`](Self::offer) with an explanation, computed only when somebody wants the
    /// event.
    #[cold]
    #[inline(never)]
    pub fn offer_why(
        &self,
        reason: DropReason,
        source: Source,
        frame: &[u8],
        why: impl FnOnce() -> Option<String>,
    ) {
        let mut why = Some(why);
        let listeners = self.listeners.lock().unwrap();
        let wanted = |l: &&Listener| match (l.port, source) {
            (None, _) => true,
            (Some(p), Source::Port(q)) => p == q,
            _ => false,
        };
        let mut event = None;
        for l in listeners.iter().filter(wanted) {
            let e = event.get_or_insert_with(|| Dropped {
                ts_micros: now_micros(),
                reason,
                source,
                what: describe(frame),
                len: frame.len() as u32,
                why: why.take().and_then(|f| f()),
            });
            if l.tx.try_send(e.clone()).is_err() {
                l.lost.fetch_add(1, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_reach_the_listeners_that_want_them_and_a_full_queue_counts_losses() {
        let m = DropMonitor::default();
        assert!(!m.is_on());
        let mut all = m.subscribe(None);
        let mut port_2 = m.subscribe(Some(2));
        assert!(m.is_on());
        m.offer(DropReason::SpoofedSource, Source::Port(1), &[]);
        m.offer(DropReason::NoRoute, Source::Port(2), &[]);
        assert_eq!(all.rx.try_recv().unwrap().reason, DropReason::SpoofedSource);
        assert_eq!(all.rx.try_recv().unwrap().reason, DropReason::NoRoute);
        assert_eq!(port_2.rx.try_recv().unwrap().source, Source::Port(2));
        assert!(port_2.rx.try_recv().is_err());
        for _ in 0..QUEUE + 5 {
            m.offer(DropReason::Malformed, Source::Peer(0), &[]);
        }
        assert_eq!(all.lost.load(Relaxed), 5);
        drop(all);
        drop(port_2);
        assert!(!m.is_on(), "off again once nobody listens");
    }
}
