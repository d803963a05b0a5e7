//! Scale by simulation: thousands of nodes in a real etcd, digested by real switchd nodes.
//!
//! Topology (network namespaces, removed on exit, also on failure): a veth + bridge
//! underlay, a real etcd (Debian's `etcd-server`) in the underlay's namespace, two real
//! switchd nodes (A and B) with `membership = "etcd"` and one pod each. A generator
//! (this program, talking gRPC to etcd from the underlay's namespace) writes simulated
//! nodes exactly as a real node publishes itself: on its own lease, `subnets/<subnet>` =
//! its name, `nodes/<name>` = its record as JSON, and `reservations/<name>` = its subnet,
//! in one transaction per node, 32 in flight.
//!
//! For every N it measures, on node A:
//! - catch-up: from the generator's last acknowledged write to A's forwarding table
//!   holding all N (polled on A's control socket every 10 ms);
//! - CPU seconds A spent from the first write to the catch-up, all threads and the
//!   control plane alone (every thread but the `switchd-dp*` datapath workers);
//! - A's RSS (and peak) with N peers;
//! - UDP request/response latency pod A → pod B (closed loop, 1 request in flight,
//!   200 ms counts as lost), quiet beforehand and during the burst;
//! - restart relist: A stopped and started, launch to all N peers known;
//! - join: a third real node C starts, gets a pod, and pod A's ping reaches it (launch
//!   to first answer), and when A's table held C;
//! - leave: all N leases revoked at once, last revoke to A holding only B.
//!
//! Then, in full mode, the etcd side at the largest N: N leases with the default TTL kept
//! alive at switchd's rate (TTL/3), N watchers on `nodes/` (one per node, as every node
//! watches), and etcd's CPU, RSS and database size meanwhile.
//!
//! Usage (root): `cargo run --release -p switchd-benches --bin scale -- [--quick]
//! [--nodes 1000,2000,5000] [--rate RECORDS_PER_SECOND] [--switchd-config 'k = v']
//! [--no-nice]` (`--rate 0`, the default, writes as fast as etcd takes them; etcd and the
//! generator run at nice 19 unless `--no-nice`, as they stand in for other machines.)

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions, Txn, TxnOp, WatchOptions};
use ipnet::Ipv4Net;
use switchd::membership::{subnet_key, NodeRecord};
use switchd_benches::measure::{
    cpu_seconds, rss_kib, status_kib, summarize, thread_cpu_seconds, UdpRr,
};
use switchd_e2e::cluster::Underlay;
use switchd_e2e::etcd::Etcd;
use switchd_e2e::{Netns, Node};
use switchd_proto::{Request, Response};

const CLUSTER_CIDR: &str = "10.0.0.0/8";
const PREFIX: &str = "/switchd/";
/// Where the control burst goes: the same writes, watched by no switchd.
const CONTROL_PREFIX: &str = "/scale-control/";
const IN_FLIGHT: usize = 32;
/// switchd's default lease TTL, for the etcd-side keep-alive load.
const DEFAULT_TTL: i64 = switchd::config::DEFAULT_ETCD_LEASE_TTL as i64;
const RR_PORT: u16 = 5310;

struct Opts {
    sizes: Vec<usize>,
    /// Records written per second in a burst; 0: as fast as etcd takes them.
    rate: f64,
    /// etcd and the generator at nice 19 (`--no-nice`: at the node's priority).
    nice: bool,
    quick: bool,
    switchd_config: String,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        sizes: vec![1000, 2000, 5000],
        rate: 0.0,
        nice: true,
        quick: false,
        switchd_config: String::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => {
                o.quick = true;
                o.sizes = vec![300];
            }
            "--nodes" => {
                o.sizes = args
                    .next()
                    .expect("--nodes 1000,2000")
                    .split(',')
                    .map(|n| n.trim().parse().expect("--nodes takes numbers"))
                    .collect()
            }
            "--no-nice" => o.nice = false,
            "--rate" => {
                o.rate = args
                    .next()
                    .expect("--rate 500")
                    .parse()
                    .expect("--rate takes records per second")
            }
            "--switchd-config" => {
                o.switchd_config = args
                    .next()
                    .expect("--switchd-config 'k = v'")
                    .replace("\\n", "\n")
            }
            "--bench" => {}
            other => panic!(
                "unknown argument {other:?}; see the usage at the top of benches/src/bin/scale.rs"
            ),
        }
    }
    o
}

fn main() {
    let opts = parse_args();
    for tool in ["etcd", "etcdctl", "ip", "ping"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is missing: apt-get install -y etcd-server etcd-client iproute2 iputils-ping"
        );
    }
    let mut underlay = Underlay::new();
    let etcd = Etcd::start(&underlay);
    // etcd and the generator stand in for machines elsewhere: in a cluster they do not
    // share a node's cores. At nice 19 they take what the node leaves (the control burst
    // under an unwatched prefix shows what they still cost the pods).
    if opts.nice {
        renice_all(etcd.pid().expect("etcd runs"), 19);
    }
    let generator = Generator {
        ns: etcd.netns().to_string(),
        rate: opts.rate,
        nice: opts.nice,
    };
    let mut start_node = |tag: &str| {
        let ns = Netns::new(tag);
        let addr = underlay.attach(&ns, 1500);
        let mut node = etcd.node(ns, addr, CLUSTER_CIDR, &opts.switchd_config);
        // What a deployment logs; the tests' debug level would log every record.
        node.env.push(("RUST_LOG".into(), "switchd=info".into()));
        node.launch();
        node
    };
    let mut a = start_node("sa");
    let b = start_node("sb");
    let (pa, pb) = (Netns::new("pa"), Netns::new("pb"));
    a.add_pod(&pa);
    let addr_b = b.add_pod(&pb);
    wait_peers(&a, 1, Duration::from_secs(20));
    let template: NodeRecord = serde_json::from_str(
        &etcd
            .keys(&format!("{PREFIX}nodes/"))
            .first()
            .expect("the real nodes' records")
            .1,
    )
    .expect("a node record");
    let held: HashSet<Ipv4Net> = etcd
        .keys(&format!("{PREFIX}subnets/"))
        .iter()
        .filter_map(|(k, _)| switchd::membership::parse_subnet_key(k.rsplit('/').next()?))
        .collect();

    let mut rows = Vec::new();
    for &n in &opts.sizes {
        let sims = simulated(&template, &held, n);
        let row = round(
            &opts,
            &generator,
            &mut a,
            &pa,
            &pb,
            addr_b,
            &sims,
            &mut start_node,
        );
        eprintln!("{row:?}");
        rows.push(row);
    }

    println!();
    println!("switchd scale by simulation: one real peer (B) plus N simulated nodes in a real etcd; measured on node A");
    println!();
    print!("| measured on node A |");
    for r in &rows {
        print!(" N = {} |", r.n);
    }
    println!();
    print!("|---|");
    for _ in &rows {
        print!("---|");
    }
    println!();
    let line = |name: &str, f: &dyn Fn(&Row) -> String| {
        print!("| {name} |");
        for r in &rows {
            print!(" {} |", f(r));
        }
        println!();
    };
    line(
        &format!(
            "writing N records (one txn each, 32 in flight, {}), s",
            if opts.rate > 0.0 {
                format!("{} per second", opts.rate)
            } else {
                "unpaced".into()
            }
        ),
        &|r| format!("{:.2}", r.write_secs),
    );
    line("watch events received / table publications", &|r| {
        format!("{} / {}", r.events, r.publications)
    });
    line("**catch-up after the last write, s**", &|r| {
        format!("**{:.3}**", r.catch_up)
    });
    line(
        "switchd CPU from first write to catch-up, s (all threads)",
        &|r| format!("{:.2}", r.cpu_all),
    );
    line("… of which control plane (not `switchd-dp*`), s", &|r| {
        format!("{:.2}", r.cpu_control)
    });
    line("switchd RSS with N peers, MiB (peak)", &|r| {
        format!("{:.1} ({:.1})", r.rss_mib, r.hwm_mib)
    });
    line("pod RR quiet, median / p99 µs", &|r| {
        format!("{:.0} / {:.0}", r.quiet.median_us, r.quiet.p99_us)
    });
    line(
        "pod RR during the same burst under a prefix nobody watches, median / p99 µs",
        &|r| format!("{:.0} / {:.0}", r.control.median_us, r.control.p99_us),
    );
    line("pod RR during the burst, median / p99 µs", &|r| {
        format!("{:.0} / {:.0}", r.burst.median_us, r.burst.p99_us)
    });
    line("**RR during / quiet (median, p99)**", &|r| {
        format!(
            "**{:.2}, {:.2}**",
            r.burst.median_us / r.quiet.median_us,
            r.burst.p99_us / r.quiet.p99_us
        )
    });
    line(
        "RR during / during the unwatched burst (median, p99)",
        &|r| {
            format!(
                "{:.2}, {:.2}",
                r.burst.median_us / r.control.median_us,
                r.burst.p99_us / r.control.p99_us
            )
        },
    );
    line("RR round trips during the burst / lost", &|r| {
        format!("{} / {}", r.burst.round_trips, r.burst.lost)
    });
    line("restart: launch to all N peers known, s", &|r| {
        format!("{:.2}", r.relist)
    });
    line("join: node C's launch to A's table holding it, s", &|r| {
        format!("{:.2}", r.join_known)
    });
    line(
        "join: node C's launch to pod A's first answered ping to C's pod, s",
        &|r| format!("{:.2}", r.join_reach),
    );
    line(
        "leave: N leases revoked; last revoke to A holding only B, s",
        &|r| format!("{:.3}", r.leave),
    );
    println!();
    println!(
        "command: cargo run --release -p switchd-benches --bin scale --{}{} --nodes {} --rate {}",
        if opts.quick { " --quick" } else { "" },
        if opts.nice { "" } else { " --no-nice" },
        opts.sizes
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(","),
        opts.rate
    );

    pods_at_the_limit(
        &a,
        &pa,
        if opts.quick {
            &[40, 20]
        } else {
            &[110, 110, 29]
        },
    );

    if !opts.quick {
        let n = *opts.sizes.iter().max().unwrap();
        etcd_side(&generator, &etcd, &a, &simulated(&template, &held, n));
    }
    drop((pa, pb, a, b));
}

#[derive(Debug)]
struct Row {
    n: usize,
    write_secs: f64,
    events: u64,
    publications: u64,
    catch_up: f64,
    cpu_all: f64,
    cpu_control: f64,
    rss_mib: f64,
    hwm_mib: f64,
    quiet: switchd_benches::measure::RrSummary,
    control: switchd_benches::measure::RrSummary,
    burst: switchd_benches::measure::RrSummary,
    relist: f64,
    join_known: f64,
    join_reach: f64,
    leave: f64,
}

#[allow(clippy::too_many_arguments)]
fn round(
    opts: &Opts,
    generator: &Generator,
    a: &mut Node,
    pa: &Netns,
    pb: &Netns,
    addr_b: Ipv4Addr,
    sims: &[NodeRecord],
    start_node: &mut dyn FnMut(&str) -> Node,
) -> Row {
    let n = sims.len();
    let quiet_secs = if opts.quick { 1.0 } else { 3.0 };
    // Leases first: they are not under `nodes/`, so A sees nothing of them.
    let leases = generator.grant(n, 600);
    let control_leases = generator.grant(n, 600);
    let (rr, t0) = UdpRr::start(pa, pb, addr_b, RR_PORT);
    std::thread::sleep(Duration::from_secs_f64(quiet_secs));
    // The same burst under a prefix no switchd watches: what etcd and the generator alone
    // cost the pods on this machine, where they share its cores.
    let control_start = Instant::now();
    let control_end = generator.publish(CONTROL_PREFIX, sims, &control_leases);
    std::thread::sleep(Duration::from_millis(500));
    let pid = a.pid();
    let before = membership(a).expect("A's membership");
    let (cpu0, control0) = (
        cpu_seconds(&[pid]),
        thread_cpu_seconds(pid, "switchd-dp", false),
    );
    let burst_start = Instant::now();
    let writer = {
        let g = generator.clone();
        let sims = sims.to_vec();
        let leases = leases.clone();
        std::thread::spawn(move || g.publish(PREFIX, &sims, &leases))
    };
    let seen = wait_peers(a, n + 1, Duration::from_secs(300));
    let last_write = writer.join().unwrap();
    let (cpu1, control1) = (
        cpu_seconds(&[pid]),
        thread_cpu_seconds(pid, "switchd-dp", false),
    );
    let (rss_mib, hwm_mib) = (rss_kib(pid) / 1024.0, status_kib(pid, "VmHWM") / 1024.0);
    let after = membership(a).expect("A's membership");
    let (events, publications) = (
        after.events - before.events,
        after.publications - before.publications,
    );
    // Coalescing: at most one publication per window, plus the window that was open. (A
    // switchd from before the counters reports zeros: measured, not checked.)
    if after.events > 0 {
        let windows =
            (seen - burst_start).as_secs_f64() / switchd::membership::etcd::COALESCE.as_secs_f64();
        assert!(
            publications as f64 <= windows.ceil() + 2.0,
            "{publications} publications for {events} events in {windows:.1} coalescing windows"
        );
        assert!(events >= n as u64, "{events} watch events for {n} records");
    }
    std::thread::sleep(Duration::from_millis(200));
    let samples = rr.finish();
    let quiet = summarize(&samples, Duration::ZERO, control_start - t0);
    let control = summarize(&samples, control_start - t0, control_end - t0);
    generator.revoke(&control_leases);
    generator.clear_reservations(CONTROL_PREFIX);
    let burst = summarize(&samples, burst_start - t0, seen - t0);

    a.stop();
    let t = Instant::now();
    a.launch();
    let relist = wait_peers(a, n + 1, Duration::from_secs(120)) - t;

    let t = Instant::now();
    let mut c = start_node("sc");
    let join_known = wait_peers(a, n + 2, Duration::from_secs(30)) - t;
    let pc = Netns::new("pc");
    let addr_c = c.add_pod(&pc);
    while !pa.ping(addr_c) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "pod A never reached node C's pod"
        );
    }
    let join_reach = t.elapsed().as_secs_f64();
    c.stop();
    drop((pc, c));
    wait_peers(a, n + 1, Duration::from_secs(30));

    let last_revoke = generator.revoke(&leases);
    let left = wait_peers(a, 1, Duration::from_secs(120));
    generator.clear_reservations(PREFIX);
    assert!(pa.ping(addr_b), "pod A reaches pod B after the round");
    Row {
        n,
        write_secs: (last_write - burst_start).as_secs_f64(),
        events,
        publications,
        catch_up: seen.saturating_duration_since(last_write).as_secs_f64(),
        cpu_all: cpu1 - cpu0,
        cpu_control: control1 - control0,
        rss_mib,
        hwm_mib,
        quiet,
        control,
        burst,
        relist: relist.as_secs_f64(),
        join_known: join_known.as_secs_f64(),
        join_reach,
        leave: left.saturating_duration_since(last_revoke).as_secs_f64(),
    }
}

/// Set every thread of `pid` to `nice` (threads it makes later inherit it).
fn renice_all(pid: i32, nice: i32) {
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("etcd's threads")
        .flatten()
    {
        if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
            // SAFETY: setpriority on a thread of a process this program started.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
        }
    }
}

/// What `node` says of its etcd membership, from its control socket.
fn membership(node: &Node) -> Option<switchd_proto::MembershipInfo> {
    let mut s = UnixStream::connect(node.socket()).ok()?;
    match switchd_proto::call(&mut s, &Request::Status).ok()? {
        Response::Status(st) => st.membership,
        _ => None,
    }
}

/// How many peers `node` has learned from etcd.
fn etcd_peers(node: &Node) -> Option<usize> {
    membership(node).map(|m| m.peers)
}

/// Poll until `node` has exactly `want` peers from etcd; when it first did.
fn wait_peers(node: &Node, want: usize, limit: Duration) -> Instant {
    let t = Instant::now();
    loop {
        let have = etcd_peers(node);
        if have == Some(want) {
            return Instant::now();
        }
        assert!(
            t.elapsed() < limit,
            "node has {have:?} peers from etcd after {limit:?}, want {want}; its log:\n{}",
            node.log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `n` simulated nodes like `template`, each with its own subnet (none of `held`) and
/// underlay address (198.18.0.0/15, the benchmarking range; the nodes' namespaces have no
/// route there, so the health probes switchd sends them, 100 a second in all by default,
/// fail at the sender and nothing leaves).
fn simulated(template: &NodeRecord, held: &HashSet<Ipv4Net>, n: usize) -> Vec<NodeRecord> {
    let cluster: Ipv4Net = CLUSTER_CIDR.parse().unwrap();
    cluster
        .subnets(template.pod_cidr.prefix_len())
        .unwrap()
        .filter(|s| !held.contains(s))
        .take(n)
        .enumerate()
        .map(|(i, subnet)| NodeRecord {
            name: format!("sim-{i:05}"),
            underlay_addr: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + i as u32)
                .into(),
            pod_cidr: subnet,
            router_mac: format!("0a:58:0a:{:02x}:{:02x}:01", (i >> 8) as u8, i as u8),
            ..template.clone()
        })
        .collect()
}

/// Writes simulated nodes into etcd from etcd's namespace, one short-lived runtime per
/// step.
#[derive(Clone)]
struct Generator {
    ns: String,
    /// Records per second [`Generator::publish`] writes; 0: as fast as etcd takes them.
    rate: f64,
    /// Run at nice 19.
    nice: bool,
}

impl Generator {
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(Client) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>>
            + Send
            + 'static,
    ) -> T {
        let nice = self.nice;
        Netns::borrowed(&self.ns)
            .spawn(move || {
                if nice {
                    // SAFETY: setpriority on this thread (who = 0) has no memory effects.
                    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let client = Client::connect(["http://127.0.0.1:2379"], None)
                        .await
                        .expect("connect to etcd");
                    f(client).await
                })
            })
            .join()
            .unwrap()
    }

    /// `n` leases of `ttl` seconds.
    fn grant(&self, n: usize, ttl: i64) -> Vec<i64> {
        self.run(move |client| {
            Box::pin(async move {
                in_flight(client, (0..n).collect(), move |mut c, _| async move {
                    c.lease_grant(ttl, None).await.expect("lease grant").id()
                })
                .await
            })
        })
    }

    /// Publish `sims[i]` on `leases[i]` under `prefix`; when the last write was
    /// acknowledged.
    fn publish(&self, prefix: &'static str, sims: &[NodeRecord], leases: &[i64]) -> Instant {
        let work: Vec<(usize, NodeRecord, i64)> = sims
            .iter()
            .cloned()
            .zip(leases.iter().copied())
            .enumerate()
            .map(|(i, (r, l))| (i, r, l))
            .collect();
        let rate = self.rate;
        self.run(move |client| {
            Box::pin(async move {
                let t0 = tokio::time::Instant::now();
                in_flight(client, work, move |mut c, (i, r, lease)| async move {
                    if rate > 0.0 {
                        tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / rate))
                            .await;
                    }
                    let on_lease = || Some(PutOptions::new().with_lease(lease));
                    let txn = Txn::new().and_then([
                        TxnOp::put(
                            format!("{prefix}subnets/{}", subnet_key(r.pod_cidr)),
                            r.name.clone(),
                            on_lease(),
                        ),
                        TxnOp::put(
                            format!("{prefix}reservations/{}", r.name),
                            r.pod_cidr.to_string(),
                            None,
                        ),
                        TxnOp::put(
                            format!("{prefix}nodes/{}", r.name),
                            serde_json::to_vec(&r).unwrap(),
                            on_lease(),
                        ),
                    ]);
                    c.txn(txn).await.expect("publish a simulated node");
                    Instant::now()
                })
                .await
                .into_iter()
                .max()
                .unwrap_or_else(Instant::now)
            })
        })
    }

    /// Revoke every lease at once (32 in flight); when the last revoke was acknowledged.
    fn revoke(&self, leases: &[i64]) -> Instant {
        let leases = leases.to_vec();
        self.run(move |client| {
            Box::pin(async move {
                in_flight(client, leases, |mut c, id| async move {
                    c.lease_revoke(id).await.expect("lease revoke");
                    Instant::now()
                })
                .await
                .into_iter()
                .max()
                .unwrap_or_else(Instant::now)
            })
        })
    }

    /// Remove the simulated nodes' reservations (they have no lease) under `prefix`.
    fn clear_reservations(&self, prefix: &'static str) {
        self.run(move |mut client| {
            Box::pin(async move {
                let opts = etcd_client::DeleteOptions::new().with_prefix();
                client
                    .delete(format!("{prefix}reservations/sim-"), Some(opts))
                    .await
                    .expect("delete reservations");
            })
        })
    }
}

/// Run `f` over `items` with [`IN_FLIGHT`] requests outstanding; results in item order.
async fn in_flight<I, T, F, Fut>(client: Client, items: Vec<I>, f: F) -> Vec<T>
where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(Client, I) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let n = items.len();
    let mut lanes: Vec<Vec<(usize, I)>> = (0..IN_FLIGHT).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        lanes[i % IN_FLIGHT].push((i, item));
    }
    let local = tokio::task::LocalSet::new();
    let handles: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            let (c, f) = (client.clone(), f.clone());
            local.spawn_local(async move {
                let mut out = Vec::with_capacity(lane.len());
                for (i, item) in lane {
                    out.push((i, f(c.clone(), item).await));
                }
                out
            })
        })
        .collect();
    let mut all: Vec<(usize, T)> = local
        .run_until(async move {
            let mut all = Vec::with_capacity(n);
            for h in handles {
                all.extend(h.await.unwrap());
            }
            all
        })
        .await;
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, t)| t).collect()
}

/// One node at its pod limit: waves of parallel CNI ADDs (kubelet starts up to 110 pods
/// on a node at once), each timed as the runtime sees it; RSS with them all; every pod
/// reached; then all deleted, wave by wave.
fn pods_at_the_limit(a: &Node, pa: &Netns, waves: &[usize]) {
    let mut pods: Vec<(Netns, Ipv4Addr)> = Vec::new();
    println!();
    println!("| pods attached on node A (CNI ADD through switchd-cni, all of a wave at once) | ADD median / p99 / max, ms | A's RSS after, MiB |");
    println!("|---|---|---|");
    for &wave in waves {
        let namespaces: Vec<Netns> = (0..wave).map(|_| Netns::new("q")).collect();
        let results: Vec<(Ipv4Addr, f64)> = std::thread::scope(|s| {
            let handles: Vec<_> = namespaces
                .iter()
                .map(|ns| {
                    s.spawn(move || {
                        let r = a.cni("ADD", ns);
                        assert!(r.ok(), "ADD failed: {:?}", r.json);
                        (r.address(), r.elapsed.as_secs_f64() * 1e3)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut ms: Vec<f64> = results.iter().map(|r| r.1).collect();
        ms.sort_by(|x, y| x.partial_cmp(y).unwrap());
        pods.extend(namespaces.into_iter().zip(results.iter().map(|r| r.0)));
        println!(
            "| {wave} more, {} in all (with pod A) | {:.0} / {:.0} / {:.0} | {:.1} |",
            pods.len() + 1,
            switchd_benches::measure::quantile(&ms, 0.5),
            switchd_benches::measure::quantile(&ms, 0.99),
            ms.last().copied().unwrap_or(0.0),
            rss_kib(a.pid()) / 1024.0
        );
    }
    let addrs: HashSet<Ipv4Addr> = pods.iter().map(|p| p.1).collect();
    assert_eq!(addrs.len(), pods.len(), "every pod has its own address");
    std::thread::scope(|s| {
        for chunk in pods.chunks(pods.len().div_ceil(8).max(1)) {
            s.spawn(move || {
                for (_, addr) in chunk {
                    assert!(pa.ping(*addr), "pod A reaches {addr}");
                }
            });
        }
    });
    // Deleted in the same waves (more than the control socket's 128 connections at once
    // would be told to retry, and give up after switchd-cni's 3 s connect timeout).
    let mut delete_ms: Vec<f64> = Vec::new();
    let mut left = &pods[..];
    for &wave in waves {
        let (now, rest) = left.split_at(wave.min(left.len()));
        left = rest;
        delete_ms.extend(std::thread::scope(|s| {
            let handles: Vec<_> = now
                .iter()
                .map(|(ns, _)| {
                    s.spawn(move || {
                        let r = a.cni("DEL", ns);
                        assert!(
                            r.ok(),
                            "DEL {} after {:?}: {:?}",
                            ns.name,
                            r.elapsed,
                            r.json
                        );
                        r.elapsed.as_secs_f64() * 1e3
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        }));
    }
    delete_ms.sort_by(|x, y| x.partial_cmp(y).unwrap());
    println!(
        "| all deleted in the same waves: DEL median / p99 / max, ms | {:.0} / {:.0} / {:.0} | {:.1} |",
        switchd_benches::measure::quantile(&delete_ms, 0.5),
        switchd_benches::measure::quantile(&delete_ms, 0.99),
        delete_ms.last().copied().unwrap_or(0.0),
        rss_kib(a.pid()) / 1024.0
    );
    assert_eq!(a.pod_ports(), 1, "only pod A is left");
}

/// etcd at the largest N: N leases at switchd's default TTL kept alive at switchd's rate,
/// then N watchers on `nodes/` (every node watches), then a wave of changed records
/// fanned out to all of them; etcd's CPU in each phase.
fn etcd_side(generator: &Generator, etcd: &Etcd, a: &Node, sims: &[NodeRecord]) {
    let n = sims.len();
    let pid = etcd.pid().expect("etcd runs");
    let leases = generator.grant(n, DEFAULT_TTL);
    generator.publish(PREFIX, sims, &leases);
    wait_peers(a, n + 1, Duration::from_secs(120));
    let every = Duration::from_secs(DEFAULT_TTL as u64 / 3);
    let updates = 20usize;
    let sims = sims.to_vec();
    let m = generator.run(move |client| {
        Box::pin(async move {
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async move {
                    // One keep-alive stream per lease, as every node holds one, spread over
                    // the period.
                    let acks = std::rc::Rc::new(std::cell::Cell::new(0usize));
                    for (i, id) in leases.iter().copied().enumerate() {
                        let (mut c, acks) = (client.clone(), acks.clone());
                        tokio::task::spawn_local(async move {
                            tokio::time::sleep(every.mul_f64(i as f64 / n as f64)).await;
                            let (mut keeper, mut stream) =
                                c.lease_keep_alive(id).await.expect("keep-alive stream");
                            let mut tick = tokio::time::interval(every);
                            loop {
                                tick.tick().await;
                                if keeper.keep_alive().await.is_err() {
                                    break;
                                }
                                match stream.message().await {
                                    Ok(Some(r)) if r.ttl() > 0 => acks.set(acks.get() + 1),
                                    _ => break,
                                }
                            }
                        });
                    }
                    tokio::time::sleep(every).await;
                    let (cpu0, acks0, t) = (cpu_seconds(&[pid]), acks.get(), Instant::now());
                    tokio::time::sleep(2 * every).await;
                    let keepalive = EtcdPhase {
                        secs: t.elapsed().as_secs_f64(),
                        cpu: cpu_seconds(&[pid]) - cpu0,
                        count: acks.get() - acks0,
                    };
                    // Every node's watch on nodes/.
                    let t = Instant::now();
                    let received = std::rc::Rc::new(std::cell::Cell::new(0usize));
                    for _ in 0..n {
                        let mut c = client.clone();
                        let mut w = c
                            .watch(
                                format!("{PREFIX}nodes/"),
                                Some(WatchOptions::new().with_prefix()),
                            )
                            .await
                            .expect("watch");
                        let received = received.clone();
                        tokio::task::spawn_local(async move {
                            while let Ok(Some(resp)) = w.message().await {
                                received.set(received.get() + resp.events().len());
                            }
                        });
                    }
                    let watch_setup = t.elapsed().as_secs_f64();
                    tokio::time::sleep(every).await;
                    let (cpu0, t) = (cpu_seconds(&[pid]), Instant::now());
                    tokio::time::sleep(every).await;
                    let watching = EtcdPhase {
                        secs: t.elapsed().as_secs_f64(),
                        cpu: cpu_seconds(&[pid]) - cpu0,
                        count: 0,
                    };
                    // A wave of changed records, as a rolling restart makes.
                    let (cpu0, t) = (cpu_seconds(&[pid]), Instant::now());
                    let mut c = client.clone();
                    for (r, lease) in sims.iter().zip(&leases).take(updates) {
                        let rec = NodeRecord {
                            since_unix: r.since_unix + 1,
                            public_key: None,
                            wireguard_port: None,
                            ..r.clone()
                        };
                        c.put(
                            format!("{PREFIX}nodes/{}", r.name),
                            serde_json::to_vec(&rec).unwrap(),
                            Some(PutOptions::new().with_lease(*lease)),
                        )
                        .await
                        .expect("update");
                    }
                    while received.get() < updates * n && t.elapsed() < Duration::from_secs(120) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let wave = EtcdPhase {
                        secs: t.elapsed().as_secs_f64(),
                        cpu: cpu_seconds(&[pid]) - cpu0,
                        count: received.get(),
                    };
                    (keepalive, watch_setup, watching, wave)
                })
                .await
        })
    });
    let (keepalive, watch_setup, watching, wave) = m;
    let status = etcd.ctl(&["endpoint", "status", "-w", "json"]);
    let db = serde_json::from_slice::<serde_json::Value>(&status.stdout)
        .ok()
        .and_then(|v| v[0]["Status"]["dbSize"].as_f64())
        .unwrap_or(f64::NAN);
    let pct = |p: &EtcdPhase| p.cpu / p.secs * 100.0;
    println!();
    println!("etcd (one member, this machine) with {n} nodes: leases with TTL {DEFAULT_TTL} s kept alive every {} s, as switchd does", every.as_secs());
    println!();
    println!("| etcd with {n} nodes | measured |");
    println!("|---|---|");
    println!(
        "| keep-alives answered per second (switchd's rate: {:.0}) | {:.0} |",
        n as f64 / every.as_secs_f64(),
        keepalive.count as f64 / keepalive.secs
    );
    println!(
        "| etcd CPU keeping {n} leases alive, % of a core | {:.1} |",
        pct(&keepalive)
    );
    println!(
        "| … per keep-alive, µs of CPU | {:.0} |",
        keepalive.cpu / keepalive.count.max(1) as f64 * 1e6
    );
    println!("| opening {n} watches on nodes/, s | {:.2} |", watch_setup);
    println!(
        "| etcd CPU with {n} leases and {n} idle watches, % of a core | {:.1} |",
        pct(&watching)
    );
    println!(
        "| {updates} changed records fanned out to {n} watchers: {} of {} events, s | {:.2} |",
        wave.count,
        updates * n,
        wave.secs
    );
    println!(
        "| … events delivered per second | {:.0} |",
        wave.count as f64 / wave.secs
    );
    println!(
        "| … etcd CPU per delivered event, µs | {:.1} |",
        wave.cpu / wave.count.max(1) as f64 * 1e6
    );
    println!("| etcd RSS, MiB | {:.0} |", rss_kib(pid) / 1024.0);
    println!("| etcd database size, MiB | {:.1} |", db / 1048576.0);
}

/// CPU etcd spent over one phase, and how many things it did (answers, events).
struct EtcdPhase {
    secs: f64,
    cpu: f64,
    count: usize,
}
