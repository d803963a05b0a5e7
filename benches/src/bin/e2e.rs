//! End-to-end benchmark: switchd next to the kernel's own bridge and VXLAN, in one run.
//!
//! Topology (all network namespaces, cleaned up on exit, also on failure):
//! - switchd: two nodes on a veth + bridge underlay, two pods on node 1, one on node 2;
//! - kernel: two nodes configured like flannel's vxlan backend (kernel VXLAN, pods on a
//!   Linux bridge over veth), two pods on the first, one on the second, same underlay kind;
//! - ceiling: plain routing node to node over the underlay, no overlay;
//! - floor: the least work a TAP-and-UDP-socket switch must do (`switchd_benches::floor`):
//!   TAP to TAP on one node, TAP to UDP to TAP across two, no forwarding logic at all;
//! - encryption: two switchd nodes with `encryption = "wireguard"`, and two hosts running
//!   Debian's `wireguard-go` (this kernel has no WireGuard module), beside the plain pair;
//! - IPv6: both clusters are dual-stack; the same pods measured over IPv6 beside IPv4
//!   (the kernel's bridge and VXLAN device carry IPv6 as flannel does).
//!
//! Measures iperf3 TCP (1 and 4 streams), UDP packets/s (64 and 1400-byte payloads), TCP
//! request/response latency (1-byte ping-pong: median and p99), the same TCP and latency
//! through a ClusterIP with kube-proxy's iptables rules on every node of both clusters,
//! and the CPU seconds switchd spends per GB moved. Each line is repeated and the median reported.
//!
//! Usage (root): `cargo run --release -p switchd-benches --bin e2e -- [--quick] [--runs N]
//! [--seconds S] [--switchd-config 'datapath_threads = 1\ndatapath_spin_us = 0']`

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::Duration;
use switchd_benches::floor::{self, Floor};
use switchd_benches::iperf::{iperf_tcp, iperf_udp};
use switchd_benches::measure::{cpu_seconds, rss_kib, tcp_rr, thread_cpu_seconds};
use switchd_e2e::cluster::{start_switchd, KernelNode, NodeInfo, Underlay};
use switchd_e2e::kube_proxy::{self, Mode, Proto, Service};
use switchd_e2e::wireguard::{EncryptedCluster, WgHost, WG_PORT};
use switchd_e2e::{Netns, Node};

const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// ClusterIPs whose endpoint is a pod on the client's node, and on the other node.
const SAME_SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const CROSS_SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 51);

struct Opts {
    /// Extra lines for both switchd nodes' config (`--switchd-config 'datapath_spin_us = 0'`),
    /// to measure one setting against another.
    switchd_config: String,
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
        switchd_config: args
            .iter()
            .position(|a| a == "--switchd-config")
            .and_then(|i| args.get(i + 1))
            .map(|s| s.replace("\\n", "\n") + "\n")
            .unwrap_or_default(),
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
    for tool in ["iperf3", "ethtool", "ip", "wireguard-go", "wg"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success(),
            "{tool} is missing: apt-get install -y iperf3 ethtool iproute2 wireguard-go wireguard-tools"
        );
    }

    // switchd: nodes 1 and 2.
    let mut ul = Underlay::new();
    let (s1, s2) = (Netns::new("n"), Netns::new("n"));
    let infos = vec![
        NodeInfo::dual_stack(1, ul.attach(&s1, 1500)),
        NodeInfo::dual_stack(2, ul.attach(&s2, 1500)),
    ];
    let n1 = start_switchd(s1, &infos[0], &infos, &opts.switchd_config);
    let n2 = start_switchd(s2, &infos[1], &infos, &opts.switchd_config);
    let (a, b, c) = (Netns::new("a"), Netns::new("b"), Netns::new("c"));
    let add = |node: &Node, pod: &Netns| {
        let r = node.cni("ADD", pod);
        assert!(r.ok(), "ADD failed: {}", r.json);
        (
            r.address(),
            IpAddr::from(r.address_v6().expect("an IPv6 address")),
        )
    };
    add(&n1, &a);
    let ((addr_b, addr_b6), (addr_c, addr_c6)) = (add(&n1, &b), add(&n2, &c));

    // kernel: nodes 8 and 9 on their own underlay of the same kind.
    let mut kul = Underlay::new();
    let mut k8 = KernelNode::with_peers_in_userspace(&mut kul, 8, false);
    let mut k9 = KernelNode::with_peers_in_userspace(&mut kul, 9, false);
    k8.enable_ipv6();
    let k9_pod6 = IpAddr::from(k9.enable_ipv6());
    k8.add_remote(&k9.info);
    k9.add_remote(&k8.info);
    let (kb, addr_kb) = k8.add_pod(3);
    let addr_kb6 = IpAddr::from(k8.pod6(3).unwrap());

    // floor: the same two shapes with nothing but the unavoidable copies.
    let (f_same, f_cross) = (Floor::same_node(), Floor::cross_node());

    for (from, to) in [
        (&a, IpAddr::from(addr_b)),
        (&a, addr_c.into()),
        (&k8.pod, addr_kb.into()),
        (&k8.pod, k9.pod_addr.into()),
        (&f_same.client, f_same.server_addr.into()),
        (&f_cross.client, f_cross.server_addr.into()),
        (&a, addr_b6),
        (&a, addr_c6),
        (&k8.pod, addr_kb6),
        (&k8.pod, k9_pod6),
    ] {
        assert!(from.ping(to), "setup: {} cannot reach {to}", from.name);
    }

    let pids = [n1.pid(), n2.pid()];
    let mut rows: Vec<Row> = Vec::new();
    let runs = opts.runs;
    let secs = opts.seconds;
    // Each round measures switchd, then the kernel, then the floor where a line has one,
    // so slow drifts of a shared machine hit every column alike.
    type Path<'a> = (&'a Netns, &'a Netns, Ipv4Addr);
    let tcp = |sw: Path, k: Path, fl: Option<Path>, streams| {
        rounds(runs, fl.is_some(), |who| {
            let p = [sw, k, fl.unwrap_or(sw)][who];
            iperf_tcp(p.0, p.1, p.2, streams, secs).0
        })
    };
    let udp = |sw: Path, k: Path, fl: Path, len| {
        rounds(runs, true, |who| {
            let p = [sw, k, fl][who];
            iperf_udp(p.0, p.1, p.2, len, secs)
        })
    };
    // Latency: (medians, p99s) of each round.
    let latency = |sw: Path, k: Path, fl: Option<Path>| {
        let mut v: [Vec<(f64, f64)>; 3] = Default::default();
        for _ in 0..runs {
            for (who, p) in [Some(sw), Some(k), fl].into_iter().enumerate() {
                if let Some(p) = p {
                    v[who].push(tcp_rr(p.0, p.1, p.2, opts.rr_count));
                }
            }
        }
        let pick = |i: usize, f: fn(&(f64, f64)) -> f64| Samples(v[i].iter().map(f).collect());
        let floor = |f: fn(&(f64, f64)) -> f64| fl.map(|_| pick(2, f));
        (
            (pick(0, |r| r.0), pick(1, |r| r.0), floor(|r| r.0)),
            (pick(0, |r| r.1), pick(1, |r| r.1), floor(|r| r.1)),
        )
    };
    let same = (&a, &b, addr_b);
    let k_same = (&k8.pod, &kb, addr_kb);
    let cross = (&a, &c, addr_c);
    let k_cross = (&k8.pod, &k9.pod, k9.pod_addr);
    let fl_same = (&f_same.client, &f_same.server, f_same.server_addr);
    let fl_cross = (&f_cross.client, &f_cross.server, f_cross.server_addr);

    rows.push(Row::new(
        "same node, TCP 1 stream (Gbit/s)",
        tcp(same, k_same, Some(fl_same), 1),
    ));
    rows.push(Row::new(
        "same node, TCP 4 streams (Gbit/s)",
        tcp(same, k_same, Some(fl_same), 4),
    ));
    // CPU per GB on each node, over switchd-only runs of the cross-node single stream.
    let cpu_before = [cpu_seconds(&pids[..1]), cpu_seconds(&pids[1..])];
    let bytes_before = tunnel_bytes(&n1);
    for _ in 0..runs {
        iperf_tcp(&a, &c, addr_c, 1, secs);
    }
    let gb = ((tunnel_bytes(&n1) - bytes_before) as f64 / 1e9).max(1e-9);
    let cpu_per_gb = [
        (cpu_seconds(&pids[..1]) - cpu_before[0]) / gb,
        (cpu_seconds(&pids[1..]) - cpu_before[1]) / gb,
    ];
    rows.push(Row::new(
        "cross node, TCP 1 stream (Gbit/s)",
        tcp(cross, k_cross, Some(fl_cross), 1),
    ));
    // The floor's CPU per GB, over floor-only runs of the same stream.
    let floor_cpu_before =
        thread_cpu_seconds(std::process::id() as i32, floor::THREAD_PREFIX, true);
    let mut floor_gb = 0.0;
    for _ in 0..runs {
        floor_gb +=
            iperf_tcp(fl_cross.0, fl_cross.1, fl_cross.2, 1, secs).0 * f64::from(secs) / 8.0;
    }
    let floor_cpu_per_gb =
        (thread_cpu_seconds(std::process::id() as i32, floor::THREAD_PREFIX, true)
            - floor_cpu_before)
            / floor_gb.max(1e-9);
    let mut retrans: [Vec<f64>; 3] = Default::default();
    let cross4 = rounds(runs, true, |who| {
        let p = [cross, k_cross, fl_cross][who];
        let (gbps, re) = iperf_tcp(p.0, p.1, p.2, 4, secs);
        retrans[who].push(re);
        gbps
    });
    rows.push(Row::new("cross node, TCP 4 streams (Gbit/s)", cross4));
    let [re_sw, re_k, re_fl] = retrans;
    rows.push(Row::info(
        "cross node, TCP 4 streams: segments retransmitted per run",
        (Samples(re_sw), Samples(re_k), Some(Samples(re_fl))),
    ));
    rows.push(Row::new(
        "cross node, UDP 64 B (kpps)",
        udp(cross, k_cross, fl_cross, 64),
    ));
    rows.push(Row::new(
        "cross node, UDP 1400 B (kpps)",
        udp(cross, k_cross, fl_cross, 1400),
    ));
    let (median, p99) = latency(same, k_same, Some(fl_same));
    rows.push(Row::lower("same node, RR latency median (µs)", median));
    rows.push(Row::lower("same node, RR latency p99 (µs)", p99));
    let workers_before = [
        n1.query("stats")["workers"].clone(),
        n2.query("stats")["workers"].clone(),
    ];
    let (median, p99) = latency(cross, k_cross, Some(fl_cross));
    let workers_after = [
        n1.query("stats")["workers"].clone(),
        n2.query("stats")["workers"].clone(),
    ];
    rows.push(Row::lower("cross node, RR latency median (µs)", median));
    rows.push(Row::lower("cross node, RR latency p99 (µs)", p99));

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
        tcp(
            (&a, &b, SAME_SERVICE),
            (&k8.pod, &kb, SAME_SERVICE),
            None,
            1,
        ),
    ));
    rows.push(Row::new(
        "cross node, pod→ClusterIP TCP 1 stream (Gbit/s)",
        tcp(
            (&a, &c, CROSS_SERVICE),
            (&k8.pod, &k9.pod, CROSS_SERVICE),
            None,
            1,
        ),
    ));
    let (median, _) = latency((&a, &b, SAME_SERVICE), (&k8.pod, &kb, SAME_SERVICE), None);
    rows.push(Row::lower(
        "same node, pod→ClusterIP RR latency median (µs)",
        median,
    ));
    let (median, _) = latency(
        (&a, &c, CROSS_SERVICE),
        (&k8.pod, &k9.pod, CROSS_SERVICE),
        None,
    );
    rows.push(Row::lower(
        "cross node, pod→ClusterIP RR latency median (µs)",
        median,
    ));
    let flows = n1.query("stats")["flows"].clone();

    // IPv6: the same pods over IPv6; each round measures switchd over IPv4, switchd over
    // IPv6 and the kernel over IPv6, so the IPv6/IPv4 ratio comes from one run.
    type Path6<'a> = (&'a Netns, &'a Netns, IpAddr);
    fn v4<'n>(p: (&'n Netns, &'n Netns, Ipv4Addr)) -> (&'n Netns, &'n Netns, IpAddr) {
        (p.0, p.1, p.2.into())
    }
    let mut v6_rows: Vec<(&str, [Samples; 3], bool)> = Vec::new();
    let v6_paths: [(&str, &str, [Path6; 3]); 2] = [
        (
            "same node, TCP 1 stream (Gbit/s)",
            "same node, RR latency median (µs)",
            [v4(same), (&a, &b, addr_b6), (&k8.pod, &kb, addr_kb6)],
        ),
        (
            "cross node, TCP 1 stream (Gbit/s)",
            "cross node, RR latency median (µs)",
            [v4(cross), (&a, &c, addr_c6), (&k8.pod, &k9.pod, k9_pod6)],
        ),
    ];
    for (tcp_name, rr_name, paths) in v6_paths {
        let (mut gbps, mut rr): ([Vec<f64>; 3], [Vec<f64>; 3]) = Default::default();
        for _ in 0..runs {
            for (who, p) in paths.into_iter().enumerate() {
                gbps[who].push(iperf_tcp(p.0, p.1, p.2, 1, secs).0);
                rr[who].push(tcp_rr(p.0, p.1, p.2, opts.rr_count).0);
            }
        }
        v6_rows.push((tcp_name, gbps.map(Samples), true));
        v6_rows.push((rr_name, rr.map(Samples), false));
    }

    let ceiling = Samples(
        (0..runs)
            .map(|_| iperf_tcp(&n1.ns, &n2.ns, infos[1].underlay, 1, secs).0)
            .collect(),
    );

    // Encryption: two switchd nodes with `encryption = "wireguard"` beside the plain pair,
    // and two hosts running Debian's wireguard-go (the kernel here has no WireGuard), each
    // on its own underlay of the same kind. Every round measures plain, sealed, wireguard-go.
    let enc = EncryptedCluster::new(2, &opts.switchd_config);
    let (ea, ec) = (Netns::new("a"), Netns::new("c"));
    enc.nodes[0].add_pod(&ea);
    let addr_ec = enc.nodes[1].add_pod(&ec);
    let mut wul = Underlay::new();
    let g1 = WgHost::new(&mut wul, "10.245.1.0/24", Ipv4Addr::new(10, 245, 1, 1));
    let g2 = WgHost::new(&mut wul, "10.245.2.0/24", Ipv4Addr::new(10, 245, 2, 1));
    g1.add_peer(
        &g2.public_key,
        SocketAddrV4::new(g2.underlay, WG_PORT),
        &g2.cidr,
    );
    g2.add_peer(
        &g1.public_key,
        SocketAddrV4::new(g1.underlay, WG_PORT),
        &g1.cidr,
    );
    for (from, to) in [(&ea, addr_ec), (&g1.ns, g2.addr)] {
        assert!(from.ping(to), "setup: {} cannot reach {to}", from.name);
    }
    let sealed = (&ea, &ec, addr_ec);
    let wggo = (&g1.ns, &g2.ns, g2.addr);
    let mut enc_rows: Vec<(&str, [Samples; 3], bool)> = Vec::new();
    for streams in [1, 4] {
        let mut v: [Vec<f64>; 3] = Default::default();
        for _ in 0..runs {
            for (who, p) in [cross, sealed, wggo].into_iter().enumerate() {
                v[who].push(iperf_tcp(p.0, p.1, p.2, streams, secs).0);
            }
        }
        let name = if streams == 1 {
            "cross node, TCP 1 stream (Gbit/s)"
        } else {
            "cross node, TCP 4 streams (Gbit/s)"
        };
        enc_rows.push((name, v.map(Samples), true));
    }
    let mut rr: [Vec<f64>; 3] = Default::default();
    for _ in 0..runs {
        for (who, p) in [cross, sealed, wggo].into_iter().enumerate() {
            rr[who].push(tcp_rr(p.0, p.1, p.2, opts.rr_count).0);
        }
    }
    enc_rows.push(("cross node, RR latency median (µs)", rr.map(Samples), false));
    let enc_not_authenticated = enc.nodes[1].drops("not_authenticated");

    // Memory and idle cost: node 1 with 110 pods attached.
    let extra: Vec<Netns> = (0..108).map(|_| Netns::new("m")).collect();
    for pod in &extra {
        n1.add_pod(pod);
    }
    let rss_mib = rss_kib(n1.pid()) / 1024.0;
    // Let the new pods' own start-up chatter (IPv6 DAD, router solicitations) die down.
    std::thread::sleep(Duration::from_secs(3));
    let idle_secs = if opts.runs > 1 { 10.0 } else { 3.0 };
    let idle_before = cpu_seconds(&[n1.pid()]);
    std::thread::sleep(Duration::from_secs_f64(idle_secs));
    let idle_pct = (cpu_seconds(&[n1.pid()]) - idle_before) / idle_secs * 100.0;

    println!();
    println!(
        "runs per line: {} (median, min–max), iperf3 -t {}, RR round trips: {}",
        opts.runs, opts.seconds, opts.rr_count
    );
    println!("| measurement | switchd | kernel | switchd/kernel | floor | floor/kernel |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        let ratio = |x: &Samples| match r.kind {
            Kind::Info => "—".to_string(),
            Kind::Higher => format!("{:.2}", x.median() / r.kernel.median()),
            Kind::Lower => format!("{:.2} (lower is better)", x.median() / r.kernel.median()),
        };
        let (floor, floor_ratio) = match &r.floor {
            Some(f) => (f.to_string(), ratio(f)),
            None => ("—".into(), "—".into()),
        };
        println!(
            "| {} | {} | {} | {} | {floor} | {floor_ratio} |",
            r.name,
            r.switchd,
            r.kernel,
            ratio(&r.switchd)
        );
    }
    println!(
        "| ceiling: plain routing node→node, TCP 1 stream (Gbit/s) | — | {ceiling} | — | — | — |"
    );
    println!(
        "| CPU seconds per GB, cross node TCP 1 stream: node 1 (sender) + node 2 (receiver) | {:.2} + {:.2} = {:.2} | — | — | {floor_cpu_per_gb:.2} (both nodes) | — |",
        cpu_per_gb[0],
        cpu_per_gb[1],
        cpu_per_gb[0] + cpu_per_gb[1]
    );
    println!(
        "| floor: frames split over two receive batches (copied) | — | — | — | {} | — |",
        f_cross.spilled.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "| node 1 translated flows: tracked / frames returned to the node / evicted | {} / {} / {} | — | — | — | — |",
        flows["tracked"], flows["returned"], flows["evicted"]
    );
    for (node, (before, after)) in workers_before.iter().zip(&workers_after).enumerate() {
        let d = |i: usize, k: &str| {
            after[i][k].as_u64().unwrap_or(0) - before[i][k].as_u64().unwrap_or(0)
        };
        let per: Vec<String> = (0..after.as_array().map_or(0, |a| a.len()))
            .map(|i| format!("{}/{}/{}", d(i, "frames"), d(i, "wakeups"), d(i, "polled")))
            .collect();
        println!(
            "| node {} workers during the cross-node RR runs: frames / wake-ups / found by polling, per worker | {} | — | — | — | — |",
            node + 1,
            per.join(", ")
        );
    }
    println!("| switchd RSS with 110 pods attached (MiB) | {rss_mib:.1} | — | — | — | — |");
    println!("| switchd CPU while idle with 110 pods (% of a core, {idle_secs:.0} s) | {idle_pct:.2} | — | — | — | — |");

    println!();
    println!("Encryption (cross node; wireguard-go is Debian's, between two hosts of its own):");
    println!("| measurement | switchd plain | switchd WireGuard | wireguard-go | WireGuard/plain | WireGuard/wireguard-go |");
    println!("|---|---|---|---|---|---|");
    for (name, [plain, wg, go], higher) in &enc_rows {
        let note = if *higher { "" } else { " (lower is better)" };
        println!(
            "| {name} | {plain} | {wg} | {go} | {:.2}{note} | {:.2}{note} |",
            wg.median() / plain.median(),
            wg.median() / go.median()
        );
    }
    println!(
        "| receiving node's not_authenticated drops | — | {enc_not_authenticated} | — | — | — |"
    );

    println!();
    println!("IPv6 (the same pods over both families, one run; the kernel's bridge and VXLAN carry IPv6):");
    println!("| measurement | switchd IPv4 | switchd IPv6 | kernel IPv6 | switchd IPv6/IPv4 | switchd/kernel, IPv6 |");
    println!("|---|---|---|---|---|---|");
    for (name, [four, six, kernel], higher) in &v6_rows {
        let note = if *higher { "" } else { " (lower is better)" };
        println!(
            "| {name} | {four} | {six} | {kernel} | {:.2}{note} | {:.2}{note} |",
            six.median() / four.median(),
            six.median() / kernel.median()
        );
    }
    // Namespaces, switchd processes and files are removed by the guards' Drop.
}

/// One line's measurements, one per run.
struct Samples(Vec<f64>);

impl Samples {
    fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    }
}

impl std::fmt::Display for Samples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let min = self.0.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = self.0.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if self.0.len() == 1 {
            write!(f, "{:.2}", self.median())
        } else {
            write!(f, "{:.2} ({min:.2}–{max:.2})", self.median())
        }
    }
}

/// Measurements of one line: switchd, kernel and, where the line has one, the floor.
type Columns = (Samples, Samples, Option<Samples>);

/// `runs` rounds, each measuring `f(0)` (switchd), `f(1)` (kernel) and, with `floor`,
/// `f(2)`, in that order.
fn rounds(runs: usize, floor: bool, mut f: impl FnMut(usize) -> f64) -> Columns {
    let mut v: [Vec<f64>; 3] = Default::default();
    for _ in 0..runs {
        for (who, column) in v.iter_mut().enumerate().take(if floor { 3 } else { 2 }) {
            column.push(f(who));
        }
    }
    let [s, k, fl] = v;
    (Samples(s), Samples(k), floor.then_some(Samples(fl)))
}

enum Kind {
    Higher,
    Lower,
    Info,
}

struct Row {
    name: &'static str,
    switchd: Samples,
    kernel: Samples,
    floor: Option<Samples>,
    kind: Kind,
}

impl Row {
    fn of(name: &'static str, (switchd, kernel, floor): Columns, kind: Kind) -> Row {
        Row {
            name,
            switchd,
            kernel,
            floor,
            kind,
        }
    }
    fn new(name: &'static str, columns: Columns) -> Row {
        Row::of(name, columns, Kind::Higher)
    }
    fn lower(name: &'static str, columns: Columns) -> Row {
        Row::of(name, columns, Kind::Lower)
    }
    fn info(name: &'static str, columns: Columns) -> Row {
        Row::of(name, columns, Kind::Info)
    }
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
