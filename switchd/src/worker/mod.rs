//! The datapath workers: a few plain threads that own the hot path from "frame read" to
//! "frame written", one per core by default (`datapath_threads`).
//!
//! Each worker waits on its own epoll set, which holds its share of the ports' queues and
//! its own socket of the tunnel's receive group. When a descriptor is ready it loads the
//! published [`Snapshot`] once, reads a batch, asks the sans-IO core for each frame's
//! verdict and writes the frame out, all on the same thread: no task wake-up, no channel,
//! no lock on the way. After work it keeps looking for more for a short, bounded time
//! (`datapath_spin_us`) before it sleeps, so a request's answer that comes back within
//! that time is picked up without a scheduler round trip; an idle node never spins.
//!
//! Flow order: a TAP queue is read by exactly one worker, and the TUN driver keeps a
//! flow on one queue (it sends a flow's frames on the queue that last wrote that flow).
//! The tunnel's send socket of worker k has a source port that the receiving node's
//! steering program maps to its worker k (`crate::udp_socket`). So every flow has one
//! worker at each hop and its frames stay in order.
//!
//! The control plane (`crate::switch`) runs on tokio and only adds and removes
//! descriptors from the workers' epoll sets; everything else reaches the workers through
//! the published snapshot.

pub mod epoll;
pub mod from_port;
mod from_tunnel;
mod from_wireguard;
mod police;
pub mod to_peer;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::datapath::PortId;
use crate::port::{now_secs, Port, BATCH};
use crate::snapshot::SnapshotCell;
use crate::stats::Stats;
use crate::tunnel::Tunnel;
use crate::wireguard::WireGuard;
use epoll::{Epoll, Waker, READABLE};

/// Tokens of what a worker's epoll set holds. A port queue's token is `queue << 32 | id`.
const TUNNEL_TOKEN: u64 = 1 << 62;
const WAKER_TOKEN: u64 = 2 << 62;
const WIREGUARD_TOKEN: u64 = 3 << 62;
/// Longest blocking wait, so an idle worker still shows it is alive.
const IDLE_WAIT_MS: i32 = 1000;

fn port_token(id: PortId, queue: usize) -> u64 {
    (queue as u64) << 32 | u64::from(id)
}

/// What the control plane shares with one worker.
struct Shared {
    epoll: Epoll,
    waker: Waker,
    stop: AtomicBool,
    /// `now_secs()` of the worker's last loop: an idle worker still loops every second.
    alive_at: AtomicU32,
    frames: AtomicU64,
    wakeups: AtomicU64,
    polled: AtomicU64,
}

/// Settings of the worker pool.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub threads: usize,
    /// How long a worker keeps polling after its last frame before it sleeps.
    pub spin: Duration,
}

pub struct Workers {
    shared: Vec<Arc<Shared>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Workers {
    /// Start `settings.threads` workers. Each watches its socket of `tunnel`'s receive
    /// group and of `wireguard`'s; ports are handed over with [`Workers::add_port`].
    pub fn start(
        settings: Settings,
        cell: Arc<SnapshotCell>,
        stats: Arc<Stats>,
        gone: UnboundedSender<PortId>,
        tunnel: Option<&Tunnel>,
        wireguard: Option<&WireGuard>,
    ) -> std::io::Result<Workers> {
        let n = settings.threads.max(1);
        let mut shared = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for k in 0..n {
            let s = Arc::new(Shared {
                epoll: Epoll::new()?,
                waker: Waker::new()?,
                stop: AtomicBool::new(false),
                alive_at: AtomicU32::new(now_secs()),
                frames: AtomicU64::new(0),
                wakeups: AtomicU64::new(0),
                polled: AtomicU64::new(0),
            });
            s.epoll.add(s.waker.raw(), WAKER_TOKEN, READABLE)?;
            if let Some(t) = tunnel {
                s.epoll
                    .add(t.rx(k).socket.as_raw_fd(), TUNNEL_TOKEN, READABLE)?;
            }
            // Each peer's WireGuard datagrams reach one worker (steered by its address),
            // so one reader keeps all its flows in order.
            if let Some(wg) = wireguard {
                s.epoll
                    .add(wg.rx(k).socket.as_raw_fd(), WIREGUARD_TOKEN, READABLE)?;
            }
            let worker = Worker {
                k,
                shared: s.clone(),
                cell: cell.clone(),
                stats: stats.clone(),
                gone: gone.clone(),
                spin: settings.spin,
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("switchd-dp{k}"))
                    .spawn(move || worker.run())?,
            );
            shared.push(s);
        }
        tracing::info!(
            threads = n,
            spin_us = settings.spin.as_micros() as u64,
            "datapath workers started"
        );
        Ok(Workers {
            shared,
            threads: Mutex::new(threads),
        })
    }

    pub fn len(&self) -> usize {
        self.shared.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.is_empty()
    }

    /// The worker that reads queue `q` of `port`: with a queue per worker, worker q; a
    /// single-queue port goes to one worker by its id, so ports spread over the workers.
    fn owner(&self, port: &Port, q: usize) -> usize {
        let n = self.shared.len();
        if port.queues() >= n {
            q % n
        } else {
            (port.id as usize + q) % n
        }
    }

    /// Hand every queue of `port` to its worker. Call after publishing a snapshot that
    /// holds the port: a worker ignores (and keeps being told about) ports it cannot find.
    pub fn add_port(&self, port: &Port) -> std::io::Result<()> {
        for q in 0..port.queues() {
            let w = &self.shared[self.owner(port, q)];
            w.epoll
                .add(port.queue(q).as_raw_fd(), port_token(port.id, q), READABLE)?;
        }
        Ok(())
    }

    /// Take `port`'s queues away from the workers (a worker in the middle of a batch may
    /// still finish it: the snapshot it holds keeps the descriptors open).
    pub fn remove_port(&self, port: &Port) {
        for q in 0..port.queues() {
            let _ = self.shared[self.owner(port, q)]
                .epoll
                .delete(port.queue(q).as_raw_fd());
        }
    }

    /// Each worker's counters, in order.
    pub fn stats(&self) -> Vec<switchd_proto::WorkerStats> {
        self.shared
            .iter()
            .map(|s| switchd_proto::WorkerStats {
                frames: s.frames.load(Relaxed),
                wakeups: s.wakeups.load(Relaxed),
                polled: s.polled.load(Relaxed),
            })
            .collect()
    }

    /// Seconds since the least recently alive worker last looped.
    pub fn stalest_secs(&self) -> u32 {
        let now = now_secs();
        self.shared
            .iter()
            .map(|s| now.saturating_sub(s.alive_at.load(Relaxed)))
            .max()
            .unwrap_or(0)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for s in &self.shared {
            s.stop.store(true, Relaxed);
            s.waker.wake();
        }
        for t in self.threads.lock().unwrap().drain(..) {
            let _ = t.join();
        }
    }
}

struct Worker {
    k: usize,
    shared: Arc<Shared>,
    cell: Arc<SnapshotCell>,
    stats: Arc<Stats>,
    gone: UnboundedSender<PortId>,
    spin: Duration,
}

/// A port queue that is over its egress rate: quiet in the epoll set until `until`.
struct Paused {
    until: Instant,
    id: PortId,
    queue: usize,
    fd: std::os::fd::RawFd,
}

impl Worker {
    fn run(self) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        let mut bufs = from_port::Buffers::new();
        let mut rx = from_tunnel::Receiver::new();
        let mut wg_rx: Option<from_wireguard::Receiver> = None;
        let mut paused: Vec<Paused> = Vec::new();
        let mut busy_until = Instant::now();
        loop {
            if self.shared.stop.load(Relaxed) {
                return;
            }
            let now_i = Instant::now();
            let timeout = if now_i < busy_until {
                // Polling must not keep a pod (or, on a shared machine, another node's
                // worker) that has work from running on this CPU: that work is usually
                // what produces the frame we are waiting for.
                // SAFETY: sched_yield has no arguments or preconditions.
                unsafe { libc::sched_yield() };
                0
            } else {
                paused
                    .iter()
                    .map(|p| p.until.saturating_duration_since(now_i).as_millis() as i32 + 1)
                    .min()
                    .unwrap_or(IDLE_WAIT_MS)
                    .min(IDLE_WAIT_MS)
            };
            let n = match self.shared.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(worker = self.k, error = %e, "datapath worker cannot wait for its ports; it stops");
                    return;
                }
            };
            let now = now_secs();
            self.shared.alive_at.store(now, Relaxed);
            if !paused.is_empty() {
                self.resume(&mut paused);
            }
            if n == 0 {
                continue;
            }
            if timeout == 0 {
                self.shared.polled.fetch_add(1, Relaxed);
            } else {
                self.shared.wakeups.fetch_add(1, Relaxed);
            }
            let snapshot = self.cell.load();
            let mut worked = false;
            let mut frames = 0u64;
            for e in &events[..n] {
                let ev = epoll::event(e);
                match ev.token {
                    WAKER_TOKEN => {
                        let mut b = [0u8; 8];
                        // SAFETY: reads 8 bytes into a local buffer from our eventfd.
                        unsafe { libc::read(self.shared.waker.raw(), b.as_mut_ptr().cast(), 8) };
                    }
                    TUNNEL_TOKEN => {
                        let Some(t) = &snapshot.tunnel else { continue };
                        worked = true;
                        let (outcome, got) =
                            rx.receive(t, &snapshot, now, &self.stats, self.k, BATCH);
                        frames += got;
                        if let from_tunnel::Outcome::Failed(e) = outcome {
                            tracing::debug!(worker = self.k, error = %e, "tunnel receive error");
                        }
                    }
                    WIREGUARD_TOKEN => {
                        let Some(wg) = &snapshot.wireguard else {
                            continue;
                        };
                        worked = true;
                        let rx = wg_rx.get_or_insert_with(from_wireguard::Receiver::new);
                        let (outcome, got) =
                            rx.receive(wg, &snapshot, now, &self.stats, self.k, BATCH);
                        frames += got;
                        if let from_tunnel::Outcome::Failed(e) = outcome {
                            tracing::debug!(worker = self.k, error = %e, "WireGuard receive error");
                        }
                    }
                    token => {
                        let (id, queue) = (token as u32, (token >> 32) as usize);
                        let Some(port) = snapshot.ports.get(&id) else {
                            continue;
                        };
                        worked = true;
                        let (pause, got) = self.read_port(port, queue, &mut bufs, &snapshot, now);
                        frames += got;
                        if let Some(p) = pause {
                            paused.push(p);
                        }
                    }
                }
            }
            if worked {
                self.shared.frames.fetch_add(frames, Relaxed);
                busy_until = Instant::now() + self.spin;
            }
        }
    }

    /// Read up to a batch from queue `queue` of `port`, handling each frame. Returns the
    /// pause to take when the pod went over its egress rate, and the frames read.
    fn read_port(
        &self,
        port: &Arc<Port>,
        queue: usize,
        bufs: &mut from_port::Buffers,
        snapshot: &crate::snapshot::Snapshot,
        now: u32,
    ) -> (Option<Paused>, u64) {
        let tap = port.queue(queue);
        let mut frames = 0;
        for _ in 0..BATCH {
            match tap.read(&mut bufs.frame) {
                Ok(len) => {
                    frames += 1;
                    from_port::handle(port, len, bufs, snapshot, now, &self.stats, self.k);
                    if let Some(rl) = &port.limits.egress {
                        let pause = rl.charge(crate::port::mono_ns(), len);
                        if pause > 0 {
                            // Leave the pod's frames queued in its TAP until the bucket
                            // has room, which slows the pod's TCP down without losses.
                            let fd = tap.as_raw_fd();
                            let _ = self.shared.epoll.modify(fd, port_token(port.id, queue), 0);
                            let p = Paused {
                                until: Instant::now() + Duration::from_nanos(pause),
                                id: port.id,
                                queue,
                                fd,
                            };
                            return (Some(p), frames);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return (None, frames),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // When the device is unregistered (its namespace was deleted) the TAP
                    // polls as EPOLLERR only, and the read tells us it is gone.
                    tracing::warn!(port = port.id, ifname = port.tap.name(), error = %e, "port device gone; it stops forwarding until detached");
                    let _ = self.shared.epoll.delete(tap.as_raw_fd());
                    port.alive.store(false, Relaxed);
                    let _ = self.gone.send(port.id);
                    return (None, frames);
                }
            }
        }
        (None, frames)
    }

    /// Give paused queues whose time has come back to the epoll set, unless their port is
    /// gone (its descriptor number may belong to another port by now).
    fn resume(&self, paused: &mut Vec<Paused>) {
        let now = Instant::now();
        let snapshot = self.cell.load();
        paused.retain(|p| {
            if p.until > now {
                return true;
            }
            let same = snapshot
                .ports
                .get(&p.id)
                .is_some_and(|port| port.queue(p.queue).as_raw_fd() == p.fd);
            if same {
                let _ = self
                    .shared
                    .epoll
                    .modify(p.fd, port_token(p.id, p.queue), READABLE);
            }
            false
        });
    }
}
