//! What the end-to-end benchmarks measure on live processes and pods: CPU seconds and
//! resident memory from `/proc`, and request/response latency between two pods.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use switchd_e2e::Netns;

/// Clock ticks per second, for `/proc/*/stat`.
fn ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// user + system seconds in a `/proc/.../stat` line.
fn stat_seconds(stat: &str) -> f64 {
    // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / ticks()
}

/// User + system CPU seconds of the given processes so far.
pub fn cpu_seconds(pids: &[i32]) -> f64 {
    pids.iter()
        .map(|pid| {
            stat_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat"))
        })
        .sum()
}

/// CPU seconds of the threads of `pid` whose name does (`want = true`) or does not start
/// with `prefix`: e.g. switchd's datapath workers (`switchd-dp`) against everything else.
pub fn thread_cpu_seconds(pid: i32, prefix: &str, want: bool) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            (comm.trim_end().starts_with(prefix) == want)
                .then(|| std::fs::read_to_string(t.path().join("stat")).ok())
                .flatten()
        })
        .map(|s| stat_seconds(&s))
        .sum()
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: i32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Resident set size of a process, KiB.
pub fn rss_kib(pid: i32) -> f64 {
    status_kib(pid, "VmRSS")
}

/// The value at fraction `q` of sorted samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// 1-byte TCP ping-pong: (median, p99) round-trip time in microseconds; either family.
pub fn tcp_rr(from: &Netns, to: &Netns, addr: impl Into<IpAddr>, count: usize) -> (f64, f64) {
    let addr = addr.into();
    let any: IpAddr = match addr {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = to.spawn(move || {
        let listener = TcpListener::bind((any, 5302)).expect("bind rr server");
        ready_tx.send(()).unwrap();
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_nodelay(true).unwrap();
        let mut b = [0u8; 1];
        while conn.read_exact(&mut b).is_ok() {
            if conn.write_all(&b).is_err() {
                break;
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let client = from.spawn(move || {
        let mut conn =
            TcpStream::connect_timeout(&SocketAddr::from((addr, 5302)), Duration::from_secs(10))
                .expect("connect rr");
        conn.set_nodelay(true).unwrap();
        let mut b = [0u8; 1];
        let mut samples = Vec::with_capacity(count);
        for i in 0..count + 100 {
            let t = Instant::now();
            conn.write_all(&b).unwrap();
            conn.read_exact(&mut b).unwrap();
            if i >= 100 {
                samples.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        samples
    });
    let mut samples = client.join().unwrap();
    server.join().unwrap();
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (quantile(&samples, 0.5), quantile(&samples, 0.99))
}

/// A UDP ping-pong between two pods that runs until stopped: every round trip is timed
/// and stamped, and a request without an answer within [`UdpRr::TIMEOUT`] is counted
/// lost, so a window of it (a burst of control-plane work) can be read afterwards.
pub struct UdpRr {
    stop: Arc<AtomicBool>,
    client: Option<JoinHandle<Vec<RrSample>>>,
    server: Option<JoinHandle<()>>,
}

/// One round trip: when it started (since [`UdpRr::start`]), and its time in µs, or
/// `None` when it was lost.
#[derive(Debug, Clone, Copy)]
pub struct RrSample {
    pub at: Duration,
    pub rtt_us: Option<f64>,
}

/// Latency and loss over a window of [`RrSample`]s.
#[derive(Debug, Clone, Copy)]
pub struct RrSummary {
    pub round_trips: usize,
    pub median_us: f64,
    pub p99_us: f64,
    pub lost: usize,
}

impl UdpRr {
    pub const TIMEOUT: Duration = Duration::from_millis(200);

    pub fn start(from: &Netns, to: &Netns, addr: Ipv4Addr, port: u16) -> (UdpRr, Instant) {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        let server = to.spawn(move || {
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind rr server");
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut b = [0u8; 64];
            while !s.load(Relaxed) {
                if let Ok((n, peer)) = sock.recv_from(&mut b) {
                    let _ = sock.send_to(&b[..n], peer);
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let t0 = Instant::now();
        let s = stop.clone();
        let client = from.spawn(move || {
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind rr client");
            sock.connect((addr, port)).unwrap();
            sock.set_read_timeout(Some(UdpRr::TIMEOUT)).unwrap();
            let mut samples = Vec::with_capacity(1 << 20);
            let mut seq = 0u64;
            let mut b = [0u8; 64];
            while !s.load(Relaxed) {
                seq += 1;
                let t = Instant::now();
                let _ = sock.send(&seq.to_be_bytes());
                let rtt = loop {
                    match sock.recv(&mut b) {
                        Ok(8) if b[..8] == seq.to_be_bytes() => {
                            break Some(t.elapsed().as_secs_f64() * 1e6)
                        }
                        // A late answer to an earlier request.
                        Ok(_) if t.elapsed() < UdpRr::TIMEOUT => continue,
                        _ => break None,
                    }
                };
                samples.push(RrSample {
                    at: t - t0,
                    rtt_us: rtt,
                });
            }
            samples
        });
        (
            UdpRr {
                stop,
                client: Some(client),
                server: Some(server),
            },
            t0,
        )
    }

    /// Stop both ends and return every sample.
    pub fn finish(mut self) -> Vec<RrSample> {
        self.stop.store(true, Relaxed);
        let samples = self.client.take().unwrap().join().unwrap();
        self.server.take().unwrap().join().unwrap();
        samples
    }
}

impl Drop for UdpRr {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// Latency and loss of the samples that started within `[from, to)`.
pub fn summarize(samples: &[RrSample], from: Duration, to: Duration) -> RrSummary {
    let window: Vec<&RrSample> = samples
        .iter()
        .filter(|s| s.at >= from && s.at < to)
        .collect();
    let mut rtts: Vec<f64> = window.iter().filter_map(|s| s.rtt_us).collect();
    rtts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    RrSummary {
        round_trips: rtts.len(),
        median_us: quantile(&rtts, 0.5),
        p99_us: quantile(&rtts, 0.99),
        lost: window.len() - rtts.len(),
    }
}
