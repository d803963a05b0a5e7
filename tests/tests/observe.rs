//! Seeing the network: `switchctl trace` says what the datapath does with a packet, and
//! what really happens to the same packet sent from a pod agrees (checked with counters);
//! `switchctl monitor` shows drops as they happen; logs to a file carry no colour codes.
//! Needs root; CI runs these as root.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchd_e2e::cluster::{start_switchd, KernelNode, NodeInfo, TunnelLoss, Underlay};
use switchd_e2e::*;

/// `switchctl --json trace FROM DST ARGS…`, parsed.
fn trace(node: &Node, from: &str, dst: Ipv4Addr, args: &[&str]) -> Value {
    let dst = dst.to_string();
    let mut all = vec!["--json", "trace", from, &dst];
    all.extend_from_slice(args);
    let out = node.switchctl(&all);
    assert!(
        out.status.success(),
        "switchctl trace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn port_tx(node: &Node, label_pod: &str) -> u64 {
    node.query("ports")["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["ifname"] == label_pod
                || format!(
                    "{}/{}",
                    p["pod"]["namespace"].as_str().unwrap(),
                    p["pod"]["name"].as_str().unwrap()
                ) == label_pod
        })
        .unwrap_or_else(|| panic!("no port {label_pod}"))["counters"]["tx_packets"]
        .as_u64()
        .unwrap()
}

/// Peer `name` as `switchctl peers --json` shows it (`null` if it is not listed).
fn peer(node: &Node, name: &str) -> Value {
    node.query("peers")["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

fn peer_tx(node: &Node, name: &str) -> u64 {
    peer(node, name)["counters"]["tx_packets"].as_u64().unwrap()
}

fn ping(pod: &Netns, args: &[&str], dst: Ipv4Addr) {
    let dst = dst.to_string();
    let mut all = vec!["ping", "-c", "3", "-i", "0.2", "-W", "1"];
    all.extend_from_slice(args);
    all.push(&dst);
    let _ = pod.exec(&all); // answered or not: the counters say where it went
}

/// Wait up to 3 s for `f` to hold.
fn eventually(what: &str, f: impl FnMut() -> bool) {
    within(Duration::from_secs(3), what, f)
}

/// Wait up to `limit` for `f` to hold.
fn within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn trace_says_what_really_happens_to_each_kind_of_packet() {
    let mut underlay = Underlay::new();
    let (s1, s2) = (Netns::new("n"), Netns::new("n"));
    let infos = vec![
        NodeInfo::numbered(1, underlay.attach(&s1, 1400)),
        NodeInfo::numbered(2, underlay.attach(&s2, 1500)),
    ];
    // Pods on node 1 are told MTU 1500, but its tunnel carries 1400 - 50.
    let n1 = start_switchd(s1, &infos[0], &infos, "mtu = 1500\n");
    let n2 = start_switchd(s2, &infos[1], &infos, "");
    let (pa, pb, pc) = (Netns::new("p"), Netns::new("p"), Netns::new("p"));
    n1.add_k8s_pod(&pa, "shop", "a");
    let b = n1.add_k8s_pod(&pb, "shop", "b").address();
    let c = n2.add_k8s_pod(&pc, "shop", "c").address();

    // Same node: delivered to b's port.
    let t = trace(&n1, "shop/a", b, &[]);
    assert_eq!(t["verdict"], "forward", "{t}");
    assert_eq!(t["to"], "pod shop/b (eth0)", "{t}");
    let before = port_tx(&n1, "shop/b");
    ping(&pa, &[], b);
    assert!(
        port_tx(&n1, "shop/b") >= before + 3,
        "the pings reached b's port"
    );

    // Another node's pod: encapsulated to that node.
    let t = trace(&n1, "shop/a", c, &["--proto", "tcp", "--port", "80"]);
    assert_eq!(t["verdict"], "encap", "{t}");
    assert!(
        t["to"].as_str().unwrap().starts_with("peer node2 at "),
        "{t}"
    );
    let steps = t["steps"].to_string();
    assert!(steps.contains("VXLAN VNI 1"), "{t}");
    let before = peer_tx(&n1, "node2");
    ping(&pa, &[], c);
    assert!(
        peer_tx(&n1, "node2") >= before + 3,
        "the pings went to node2"
    );

    // Nobody holds the address in the node's CIDR: no ARP answer, and a frame sent anyway
    // (with a static neighbour entry) is dropped as no_route.
    let nobody = Ipv4Addr::new(10, 244, 1, 77);
    let t = trace(&n1, "shop/a", nobody, &[]);
    assert_eq!(
        (t["verdict"].as_str(), t["reason"].as_str()),
        (Some("drop"), Some("no_route")),
        "{t}"
    );
    assert!(
        t["steps"][1]["result"]
            .as_str()
            .unwrap()
            .contains("no answer (arp_unknown_target)"),
        "{t}"
    );
    let router_mac = n1.query("status")["router_mac"]
        .as_str()
        .unwrap()
        .to_string();
    let neigh = pa.exec(&[
        "ip",
        "neigh",
        "replace",
        &nobody.to_string(),
        "lladdr",
        &router_mac,
        "dev",
        "eth0",
    ]);
    assert!(neigh.status.success());
    let before = n1.drops("no_route");
    ping(&pa, &[], nobody);
    assert!(
        n1.drops("no_route") >= before + 3,
        "the pings were dropped as no_route"
    );

    // A source the pod was not given.
    let spoofed = Ipv4Addr::new(10, 244, 1, 99);
    let t = trace(&n1, "shop/a", b, &["--src", &spoofed.to_string()]);
    assert_eq!(t["reason"], "spoofed_source", "{t}");
    assert!(pa
        .exec(&["ip", "addr", "add", &format!("{spoofed}/32"), "dev", "eth0"])
        .status
        .success());
    let before = n1.drops("spoofed_source");
    ping(&pa, &["-I", &spoofed.to_string()], b);
    assert!(
        n1.drops("spoofed_source") >= before + 3,
        "the spoofed pings were dropped"
    );

    // Too big for the tunnel: rejected with fragmentation-needed, like ping -M do sees.
    let t = trace(&n1, "shop/a", c, &["--size", "1428"]);
    assert_eq!(
        (t["verdict"].as_str(), t["reason"].as_str()),
        (Some("reject"), Some("too_big")),
        "{t}"
    );
    assert!(t["steps"].to_string().contains("next-hop MTU 1350"), "{t}");
    let before = n1.drops("too_big");
    ping(&pa, &["-s", "1400", "-M", "do"], c);
    assert!(n1.drops("too_big") > before, "the big pings were refused");

    // A ClusterIP: not a pod address, so it leaves through switchd0 for kube-proxy's rules.
    let cluster_ip = Ipv4Addr::new(10, 96, 0, 10);
    let t = trace(
        &n1,
        "shop/a",
        cluster_ip,
        &["--proto", "udp", "--port", "53"],
    );
    assert_eq!(
        (t["verdict"].as_str(), t["to"].as_str()),
        (Some("forward"), Some("switchd0")),
        "{t}"
    );
    let before = port_tx(&n1, "switchd0");
    ping(&pa, &[], cluster_ip);
    assert!(
        port_tx(&n1, "switchd0") >= before + 3,
        "the pings left through switchd0"
    );

    // A trace sends nothing: the counters stand still while tracing.
    let (tx_b, drops) = (port_tx(&n1, "shop/b"), n1.drops("spoofed_source"));
    for _ in 0..5 {
        trace(&n1, "shop/a", b, &["--src", &spoofed.to_string()]);
        trace(&n1, "shop/a", b, &[]);
    }
    assert_eq!(
        (port_tx(&n1, "shop/b"), n1.drops("spoofed_source")),
        (tx_b, drops)
    );

    // Bad input is named.
    let out = n1.switchctl(&["trace", "nobody-by-this-name", &b.to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no port matches"));
}

/// `switchctl monitor` as a child, its stdout lines on a channel.
struct Monitor {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Monitor {
    fn start(node: &Node, args: &[&str]) -> Monitor {
        let mut child = Command::new(bin_dir().join("switchctl"))
            .arg("--socket")
            .arg(node.socket())
            .arg("--json")
            .args(["monitor", "--drops"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Monitor { child, lines }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn monitor_shows_a_spoofed_frame_within_a_second() {
    let node = Node::start("10.244.1.0/24");
    let (pa, pb) = (Netns::new("p"), Netns::new("p"));
    node.add_k8s_pod(&pa, "shop", "a");
    let b = node.add_k8s_pod(&pb, "shop", "b").address();
    assert!(pa.ping(b));
    let started = |n: usize| node.log().matches("drop monitor started").count() >= n;
    let all = Monitor::start(&node, &[]);
    eventually("the first monitor subscribed", || started(1));
    let only_b = Monitor::start(&node, &["--pod", "shop/b"]);
    eventually("the second monitor subscribed", || started(2));

    let spoofed = "10.244.1.99";
    assert!(pa
        .exec(&["ip", "addr", "add", &format!("{spoofed}/32"), "dev", "eth0"])
        .status
        .success());
    let sent = Instant::now();
    let _ = pa.exec(&["ping", "-c", "1", "-W", "1", "-I", spoofed, &b.to_string()]);
    let event: Value = loop {
        let left = Duration::from_secs(1).saturating_sub(sent.elapsed());
        let line = all
            .lines
            .recv_timeout(left)
            .expect("a drop event within a second of the spoofed frame");
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["reason"] == "spoofed_source" {
            break v;
        }
    };
    assert_eq!(event["from"], "pod shop/a (eth0)", "{event}");
    assert_eq!(event["kind"], "ipv4 icmp", "{event}");
    assert_eq!(event["src"], spoofed, "{event}");
    assert_eq!(event["dst"], b.to_string(), "{event}");
    // The monitor of b's port alone saw nothing of a's frame.
    std::thread::sleep(Duration::from_millis(300));
    let of_b: Vec<String> = only_b.lines.try_iter().collect();
    assert!(
        of_b.iter().all(|l| !l.contains("spoofed_source")),
        "{of_b:?}"
    );

    // Hanging up unsubscribes: the datapath stops describing drops.
    drop(all);
    drop(only_b);
    eventually("both monitors ended", || {
        node.log().matches("drop monitor ended").count() >= 2
    });
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let node = Node::start("10.244.1.0/24");
    let pod = Netns::new("p");
    node.add_pod(&pod);
    let log = node.log();
    assert!(log.contains("INFO"), "switchd logged: {log}");
    assert!(
        !log.contains('\x1b'),
        "escape sequences in the log file: {log:?}"
    );
}

/// A peer's `health` in `switchctl peers`.
fn health(node: &Node, name: &str) -> Value {
    peer(node, name)["health"].clone()
}

#[test]
fn probes_measure_rtt_loss_and_path_mtu_to_every_peer_kernel_vxlan_too() {
    let mut underlay = Underlay::new();
    let (s1, s2) = (Netns::new("n"), Netns::new("n"));
    let mut infos = vec![
        NodeInfo::numbered(1, underlay.attach(&s1, 1500)),
        NodeInfo::numbered(2, underlay.attach(&s2, 1500)),
    ];
    let kernel = KernelNode::new(&mut underlay, 9);
    infos.push(kernel.info.clone());
    kernel.add_remote(&infos[0]);
    let fast = "probe_interval_ms = 100\n";
    let n1 = start_switchd(s1, &infos[0], &infos, fast);
    let n2 = start_switchd(s2, &infos[1], &infos, fast);

    // Both peers answer: switchd's node stack and the kernel node's bridge address alike.
    within(
        Duration::from_secs(10),
        "RTT and path MTU for both peers",
        || {
            ["node2", "node9"].iter().all(|p| {
                let h = health(&n1, p);
                h["rtt_micros"].is_u64() && h["path_mtu"] == 1450 && h["loss_ratio"] == 0.0
            })
        },
    );
    let (_, metrics) = metrics_get(&n1.ns, "/metrics");
    for name in [
        "switchd_peer_rtt_seconds{peer=\"node2\"}",
        "switchd_peer_loss_ratio{peer=\"node9\"} 0.0",
        "switchd_peer_path_mtu_bytes{peer=\"node2\"} 1450.0",
        "switchd_peer_path_mtu_below_pod_mtu{peer=\"node2\"} 0",
    ] {
        assert!(
            metrics.contains(name),
            "{name} not in the scrape:\n{metrics}"
        );
    }
    let table = String::from_utf8_lossy(&n1.switchctl(&["peers"]).stdout).to_string();
    assert!(table.contains("RTT") && table.contains("PMTU"), "{table}");

    // Half of node2's incoming tunnel datagrams dropped: its loss rises, node9's does not.
    let loss = TunnelLoss::new(&n2.ns, 0.5);
    within(Duration::from_secs(10), "loss to node2 seen", || {
        health(&n1, "node2")["loss_ratio"].as_f64().unwrap_or(0.0) >= 0.2
    });
    assert_eq!(health(&n1, "node9")["loss_ratio"], 0.0);
    drop(loss);

    // node2's underlay now carries 1300-byte datagrams: 1250 bytes inside the tunnel, less
    // than the 1450 pods are told.
    assert!(n2
        .ns
        .exec(&["ip", "link", "set", "u0", "mtu", "1300"])
        .status
        .success());
    within(Duration::from_secs(20), "path MTU 1250 to node2", || {
        health(&n1, "node2")["path_mtu"] == 1250
    });
    assert!(
        n1.log()
            .contains("carries only 1250-byte packets, but pods are told 1450"),
        "the log says so"
    );
    let (_, metrics) = metrics_get(&n1.ns, "/metrics");
    assert!(
        metrics.contains("switchd_peer_path_mtu_below_pod_mtu{peer=\"node2\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        health(&n1, "node9")["path_mtu"],
        1450,
        "the other path is unchanged"
    );
}

#[test]
fn the_dashboard_queries_only_metrics_a_real_scrape_has() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/grafana/switchd-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .expect("the dashboard is JSON");
    let mut wanted = std::collections::BTreeSet::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
    for p in panels {
        assert!(
            p["gridPos"]["w"].is_u64(),
            "panel {} has a place",
            p["title"]
        );
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("switchd_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                wanted.insert(name);
            }
        }
    }
    assert!(wanted.len() >= 10, "{wanted:?}");

    // A real scrape of a node with etcd membership, a peer it probes and a pod.
    let mut underlay = Underlay::new();
    let etcd = switchd_e2e::etcd::Etcd::start(&underlay);
    let mut nodes: Vec<Node> = ["ea", "eb"]
        .iter()
        .map(|tag| {
            let ns = Netns::new(tag);
            let addr = underlay.attach(&ns, 1500);
            etcd.node(ns, addr, "10.244.0.0/16", "probe_interval_ms = 100\n")
        })
        .collect();
    for n in &mut nodes {
        n.launch();
    }
    let (pa, pb) = (Netns::new("p"), Netns::new("p"));
    nodes[0].add_k8s_pod(&pa, "shop", "a");
    let b = nodes[1].add_k8s_pod(&pb, "shop", "b").address();
    within(Duration::from_secs(20), "the nodes peer and probe", || {
        pa.ping(b) && nodes[0].query("peers")["peers"][0]["health"]["path_mtu"].is_u64()
    });
    let (_, scrape) = metrics_get(&nodes[0].ns, "/metrics");
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| {
            !scrape.lines().any(|l| {
                l.strip_prefix(name.as_str())
                    .is_some_and(|r| r.starts_with(['{', ' ']))
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not in the scrape: {missing:?}\n{scrape}"
    );
}
