//! End-to-end benchmark: switchd next to the kernel's own bridge and VXLAN, in one run.
//!
//! Topology (all network namespaces, cleaned up on exit, also on failure):
//! - switchd: two nodes on a veth + bridge underlay, two pods on node 1, one on node 2;
//! - kernel: two nodes configured like flannel's vxlan backend (kernel VXLAN, pods on a
//!   Linux bridge over veth), two pods on the first, one on the second, same underlay kind;
//! - ceiling: plain routing node to node over the underlay, no overlay.
//!
//! Measures iperf3 TCP (1 and 4 streams), UDP packets/s (64 and 1400-byte payloads), TCP
//! request/response latency (1-byte ping-pong: median and p99), the same TCP and latency
//! through a ClusterIP with kube-proxy's iptables rules on every node of both clusters,
//! and the CPU seconds switchd spends per GB moved. Each line is repeated and the median reported.
//!
//! Usage (root): `cargo run --release -p switchd-benches --bin e2e -- [--quick] [--runs N] [--seconds S]`

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchd_e2e::cluster::{start_switchd, KernelNode, NodeInfo, Underlay};
use switchd_e2e::kube_proxy::{self, Mode, Proto, Service};
use switchd_e2e::{Netns, Node};

const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// ClusterIPs whose endpoint is a pod on the client's node, and on the other node.
const SAME_SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const CROSS_SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 51);

struct Opts {
    runs: usize,
    seconds: u32,
    rr_count: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
    };
    let opts = Opts {
        runs: value("--runs").unwrap_or(if quick { 1 } else { 3 }),
        seconds: value("--seconds")
            .map(|s: usize| s as u32)
            .unwrap_or(if quick { 1 } else { 5 }),
        rr_count: if quick { 500 } else { 20_000 },
    };
    assert!(
        unsafe { libc::geteuid() } == 0,
        "e2e benchmark: run as root (it creates network namespaces)"
    );
    for tool in ["iperf3", "ethtool", "ip"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success(),
            "{tool} is missing: apt-get install -y iperf3 ethtool iproute2"
        );
    }

    // switchd: nodes 1 and 2.
    let mut ul = Underlay::new();
    let (s1, s2) = (Netns::new("n"), Netns::new("n"));
    let infos = vec![
        NodeInfo::numbered(1, ul.attach(&s1, 1500)),
        NodeInfo::numbered(2, ul.attach(&s2, 1500)),
    ];
    let n1 = start_switchd(s1, &infos[0], &infos, "");
    let n2 = start_switchd(s2, &infos[1], &infos, "");
    let (a, b, c) = (Netns::new("a"), Netns::new("b"), Netns::new("c"));
    n1.add_pod(&a);
    let (addr_b, addr_c) = (n1.add_pod(&b), n2.add_pod(&c));

    // kernel: nodes 8 and 9 on their own underlay of the same kind.
    let mut kul = Underlay::new();
    let k8 = KernelNode::with_peers_in_userspace(&mut kul, 8, false);
    let k9 = KernelNode::with_peers_in_userspace(&mut kul, 9, false);
    k8.add_remote(&k9.info);
    k9.add_remote(&k8.info);
    let (kb, addr_kb) = k8.add_pod(3);

    for (from, to) in [
        (&a, addr_b),
        (&a, addr_c),
        (&k8.pod, addr_kb),
        (&k8.pod, k9.pod_addr),
    ] {
        assert!(from.ping(to), "setup: {} cannot reach {to}", from.name);
    }

    let pids = [n1.pid(), n2.pid()];
    let mut rows: Vec<Row> = Vec::new();
    let tcp = |from: &Netns, to: &Netns, addr, streams| {
        median(opts.runs, || {
            iperf_tcp(from, to, addr, streams, opts.seconds)
        })
    };
    let udp = |from: &Netns, to: &Netns, addr, len| {
        median(opts.runs, || iperf_udp(from, to, addr, len, opts.seconds))
    };

    rows.push(Row::new(
        "same node, TCP 1 stream (Gbit/s)",
        tcp(&a, &b, addr_b, 1),
        tcp(&k8.pod, &kb, addr_kb, 1),
    ));
    rows.push(Row::new(
        "same node, TCP 4 streams (Gbit/s)",
        tcp(&a, &b, addr_b, 4),
        tcp(&k8.pod, &kb, addr_kb, 4),
    ));
    let cpu_before = cpu_seconds(&pids);
    let bytes_before = tunnel_bytes(&n1);
    let cross1 = tcp(&a, &c, addr_c, 1);
    let cpu_per_gb = (cpu_seconds(&pids) - cpu_before)
        / ((tunnel_bytes(&n1) - bytes_before) as f64 / 1e9).max(1e-9);
    rows.push(Row::new(
        "cross node, TCP 1 stream (Gbit/s)",
        cross1,
        tcp(&k8.pod, &k9.pod, k9.pod_addr, 1),
    ));
    rows.push(Row::new(
        "cross node, TCP 4 streams (Gbit/s)",
        tcp(&a, &c, addr_c, 4),
        tcp(&k8.pod, &k9.pod, k9.pod_addr, 4),
    ));
    rows.push(Row::new(
        "cross node, UDP 64 B (kpps)",
        udp(&a, &c, addr_c, 64),
        udp(&k8.pod, &k9.pod, k9.pod_addr, 64),
    ));
    rows.push(Row::new(
        "cross node, UDP 1400 B (kpps)",
        udp(&a, &c, addr_c, 1400),
        udp(&k8.pod, &k9.pod, k9.pod_addr, 1400),
    ));
    let (sw_same, k_same) = (
        rr(&a, &b, addr_b, opts.rr_count),
        rr(&k8.pod, &kb, addr_kb, opts.rr_count),
    );
    rows.push(Row::lower(
        "same node, RR latency median (µs)",
        sw_same.0,
        k_same.0,
    ));
    rows.push(Row::lower(
        "same node, RR latency p99 (µs)",
        sw_same.1,
        k_same.1,
    ));
    let (sw_cross, k_cross) = (
        rr(&a, &c, addr_c, opts.rr_count),
        rr(&k8.pod, &k9.pod, k9.pod_addr, opts.rr_count),
    );
    rows.push(Row::lower(
        "cross node, RR latency median (µs)",
        sw_cross.0,
        k_cross.0,
    ));
    rows.push(Row::lower(
        "cross node, RR latency p99 (µs)",
        sw_cross.1,
        k_cross.1,
    ));

    // Services: the same kube-proxy rules (iptables mode, nft backend) on every node of
    // both clusters; the client pod's node DNATs, switchd returns the replies through it.
    let services = |same: Ipv4Addr, cross: Ipv4Addr| {
        [
            Service::new("same", Proto::Tcp, SAME_SERVICE, 5301).endpoint(same, 5301),
            Service::new("samerr", Proto::Tcp, SAME_SERVICE, 5302).endpoint(same, 5302),
            Service::new("cross", Proto::Tcp, CROSS_SERVICE, 5301).endpoint(cross, 5301),
            Service::new("crossrr", Proto::Tcp, CROSS_SERVICE, 5302).endpoint(cross, 5302),
        ]
    };
    for (ns, ip) in [(&n1.ns, infos[0].underlay), (&n2.ns, infos[1].underlay)] {
        let rules = services(addr_b, addr_c);
        kube_proxy::apply(ns, Mode::IptablesNft, CLUSTER_CIDR, ip, &rules);
    }
    for k in [&k8, &k9] {
        let rules = services(addr_kb, k9.pod_addr);
        kube_proxy::apply(
            &k.ns,
            Mode::IptablesNft,
            CLUSTER_CIDR,
            k.info.underlay,
            &rules,
        );
    }
    rows.push(Row::new(
        "same node, pod→ClusterIP TCP 1 stream (Gbit/s)",
        tcp(&a, &b, SAME_SERVICE, 1),
        tcp(&k8.pod, &kb, SAME_SERVICE, 1),
    ));
    rows.push(Row::new(
        "cross node, pod→ClusterIP TCP 1 stream (Gbit/s)",
        tcp(&a, &c, CROSS_SERVICE, 1),
        tcp(&k8.pod, &k9.pod, CROSS_SERVICE, 1),
    ));
    let (sw_svc, k_svc) = (
        rr(&a, &b, SAME_SERVICE, opts.rr_count),
        rr(&k8.pod, &kb, SAME_SERVICE, opts.rr_count),
    );
    rows.push(Row::lower(
        "same node, pod→ClusterIP RR latency median (µs)",
        sw_svc.0,
        k_svc.0,
    ));
    let (sw_svc, k_svc) = (
        rr(&a, &c, CROSS_SERVICE, opts.rr_count),
        rr(&k8.pod, &k9.pod, CROSS_SERVICE, opts.rr_count),
    );
    rows.push(Row::lower(
        "cross node, pod→ClusterIP RR latency median (µs)",
        sw_svc.0,
        k_svc.0,
    ));
    let flows = n1.query("stats")["flows"].clone();

    let ceiling = tcp(&n1.ns, &n2.ns, infos[1].underlay, 1);

    // Memory and idle cost: node 1 with 110 pods attached.
    let extra: Vec<Netns> = (0..108).map(|_| Netns::new("m")).collect();
    for pod in &extra {
        n1.add_pod(pod);
    }
    let rss_mib = rss_kib(n1.pid()) / 1024.0;
    // Let the new pods' own start-up chatter (IPv6 DAD, router solicitations) die down.
    std::thread::sleep(Duration::from_secs(3));
    let idle_secs = f64::from(opts.seconds.max(3));
    let idle_before = cpu_seconds(&[n1.pid()]);
    std::thread::sleep(Duration::from_secs_f64(idle_secs));
    let idle_pct = (cpu_seconds(&[n1.pid()]) - idle_before) / idle_secs * 100.0;

    println!();
    println!(
        "runs per line: {} (median), iperf3 -t {}, RR round trips: {}",
        opts.runs, opts.seconds, opts.rr_count
    );
    println!("| measurement | switchd | kernel | switchd/kernel |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.2} | {:.2} | {:.2}{} |",
            r.name,
            r.switchd,
            r.kernel,
            r.switchd / r.kernel,
            if r.lower_is_better {
                " (lower is better)"
            } else {
                ""
            }
        );
    }
    println!("| ceiling: plain routing node→node, TCP 1 stream (Gbit/s) | — | {ceiling:.2} | — |");
    println!("| switchd CPU seconds per GB, cross node TCP 1 stream (both nodes) | {cpu_per_gb:.2} | — | — |");
    println!(
        "| node 1 translated flows: tracked / frames returned to the node / evicted | {} / {} / {} | — | — |",
        flows["tracked"], flows["returned"], flows["evicted"]
    );
    println!("| switchd RSS with 110 pods attached (MiB) | {rss_mib:.1} | — | — |");
    println!("| switchd CPU while idle with 110 pods (% of a core, {idle_secs:.0} s) | {idle_pct:.2} | — | — |");
    // Namespaces, switchd processes and files are removed by the guards' Drop.
}

struct Row {
    name: &'static str,
    switchd: f64,
    kernel: f64,
    lower_is_better: bool,
}

impl Row {
    fn new(name: &'static str, switchd: f64, kernel: f64) -> Row {
        Row {
            name,
            switchd,
            kernel,
            lower_is_better: false,
        }
    }
    fn lower(name: &'static str, switchd: f64, kernel: f64) -> Row {
        Row {
            name,
            switchd,
            kernel,
            lower_is_better: true,
        }
    }
}

fn median(runs: usize, mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..runs).map(|_| f()).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// An iperf3 server for exactly one test, in `ns`.
fn iperf_server(ns: &Netns) -> Child {
    let child = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "iperf3", "-s", "-1", "-p", "5301",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn iperf3 server");
    std::thread::sleep(Duration::from_millis(200));
    child
}

fn iperf_client(ns: &Netns, addr: Ipv4Addr, extra: &[&str], seconds: u32) -> Value {
    let secs = seconds.to_string();
    let addr = addr.to_string();
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "iperf3", "-c", &addr, "-p", "5301", "-J", "-t", &secs,
        ])
        .args(extra)
        .output()
        .expect("run iperf3 client");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 output ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn finish(mut server: Child) {
    // SAFETY: signalling the iperf3 server this program started, by its PID.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let _ = server.wait();
}

fn iperf_tcp(from: &Netns, to: &Netns, addr: Ipv4Addr, streams: usize, seconds: u32) -> f64 {
    let server = iperf_server(to);
    let v = iperf_client(from, addr, &["-P", &streams.to_string()], seconds);
    finish(server);
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no TCP result: {}", v["error"]))
        / 1e9
}

/// Received packets per second (thousands) with `len`-byte UDP payloads, unlimited rate.
fn iperf_udp(from: &Netns, to: &Netns, addr: Ipv4Addr, len: usize, seconds: u32) -> f64 {
    let server = iperf_server(to);
    let v = iperf_client(
        from,
        addr,
        &["-u", "-b", "0", "-l", &len.to_string()],
        seconds,
    );
    finish(server);
    let sum = &v["end"]["sum"];
    let (packets, lost, secs) = (
        sum["packets"].as_f64(),
        sum["lost_packets"].as_f64(),
        sum["seconds"].as_f64(),
    );
    match (packets, lost, secs) {
        (Some(p), Some(l), Some(s)) if s > 0.0 => (p - l) / s / 1e3,
        _ => panic!("no UDP result: {}", v),
    }
}

/// 1-byte TCP ping-pong: (median, p99) round-trip time in microseconds.
fn rr(from: &Netns, to: &Netns, addr: Ipv4Addr, count: usize) -> (f64, f64) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = to.spawn(move || {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 5302)).expect("bind rr server");
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
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

/// User + system CPU seconds of the given processes so far.
fn cpu_seconds(pids: &[i32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("switchd stat");
            // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / ticks
        })
        .sum()
}

/// Resident set size of a process, KiB.
fn rss_kib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("switchd status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Bytes node 1 sent into the tunnel so far.
fn tunnel_bytes(node: &Node) -> u64 {
    node.query("peers")["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["counters"]["tx_bytes"].as_u64().unwrap())
        .sum()
}
