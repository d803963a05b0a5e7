//! Several nodes on a veth underlay: pods reach each other across nodes over the VXLAN
//! tunnel without NAT, a kernel VXLAN node interoperates, peers change at runtime, and the
//! tunnel refuses what it must refuse. Needs root; CI runs these as root.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchd::datapath::craft;
use switchd::datapath::frame::mac_for_ip;
use switchd_e2e::cluster::{peers_toml, start_switchd, KernelNode, NodeInfo, Underlay};
use switchd_e2e::*;

struct Pod {
    ns: Netns,
    addr: Ipv4Addr,
}

/// Nodes 1..=n on one underlay, each peering with all the others, `pods` pods each.
struct Cluster {
    pods: Vec<Vec<Pod>>,
    nodes: Vec<Node>,
    infos: Vec<NodeInfo>,
    _underlay: Underlay,
}

fn cluster(n: u8, pods: usize) -> Cluster {
    let mut underlay = Underlay::new();
    let spaces: Vec<Netns> = (0..n).map(|_| Netns::new("n")).collect();
    let infos: Vec<NodeInfo> = spaces
        .iter()
        .enumerate()
        .map(|(i, ns)| NodeInfo::numbered(i as u8 + 1, underlay.attach(ns, 1500)))
        .collect();
    let nodes: Vec<Node> = spaces
        .into_iter()
        .zip(&infos)
        .map(|(ns, me)| start_switchd(ns, me, &infos, ""))
        .collect();
    let pods = nodes
        .iter()
        .map(|node| {
            (0..pods)
                .map(|_| {
                    let ns = Netns::new("p");
                    let addr = node.add_pod(&ns);
                    Pod { ns, addr }
                })
                .collect()
        })
        .collect();
    Cluster {
        pods,
        nodes,
        infos,
        _underlay: underlay,
    }
}

/// Ping every (from, to) pair in parallel; return the pairs that failed.
fn failed_pings(pairs: &[(&Netns, Ipv4Addr)]) -> Vec<String> {
    std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .iter()
            .map(|(ns, to)| s.spawn(move || (ns.ping(*to), format!("{} -> {to}", ns.name))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|(ok, _)| !ok)
            .map(|(_, what)| what)
            .collect()
    })
}

#[test]
fn three_nodes_every_pod_reaches_every_pod_and_every_node_without_nat() {
    let c = cluster(3, 2);
    let all_pods: Vec<&Pod> = c.pods.iter().flatten().collect();
    let mut pairs = Vec::new();
    for from in &all_pods {
        for to in &all_pods {
            if from.addr != to.addr {
                pairs.push((&from.ns, to.addr));
            }
        }
        for info in &c.infos {
            pairs.push((&from.ns, info.gateway()));
        }
    }
    for node in &c.nodes {
        for pod in &all_pods {
            pairs.push((&node.ns, pod.addr));
        }
    }
    assert_eq!(pairs.len(), 6 * 5 + 6 * 3 + 3 * 6);
    let failed = failed_pings(&pairs);
    assert!(failed.is_empty(), "unreachable: {failed:?}");

    // TCP across nodes: intact, and the receiver sees the sending pod's own address.
    let (a, b) = (&c.pods[0][0], &c.pods[2][1]);
    let total = 64 << 20;
    let (sent, h_sent, received, h_received, peer) = tcp_transfer(&a.ns, &b.ns, b.addr, total);
    assert_eq!((sent, received), (total, total));
    assert_eq!(h_received, h_sent, "payload corrupted across the tunnel");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(a.addr),
        "no NAT: the receiver sees the sender pod"
    );
    // And the node itself, from its gateway address.
    let (_, h1, n, h2, peer) = tcp_transfer(&c.nodes[1].ns, &a.ns, a.addr, 4 << 20);
    assert_eq!((n, h2), (4 << 20, h1));
    assert_eq!(peer.ip(), std::net::IpAddr::V4(c.infos[1].gateway()));

    let peers = c.nodes[0].query("peers");
    let to_node3 = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "node3")
        .unwrap()
        .clone();
    assert!(
        to_node3["counters"]["tx_bytes"].as_u64().unwrap() > total as u64,
        "tunnel counters: {to_node3}"
    );
}

#[test]
fn a_flannel_style_kernel_vxlan_node_interoperates_both_ways() {
    let mut underlay = Underlay::new();
    let spaces: Vec<Netns> = (0..2).map(|_| Netns::new("n")).collect();
    let mut infos: Vec<NodeInfo> = spaces
        .iter()
        .enumerate()
        .map(|(i, ns)| NodeInfo::numbered(i as u8 + 1, underlay.attach(ns, 1500)))
        .collect();
    let kernel = KernelNode::new(&mut underlay, 9);
    infos.push(kernel.info.clone());
    let nodes: Vec<Node> = spaces
        .into_iter()
        .zip(infos.clone())
        .map(|(ns, me)| start_switchd(ns, &me, &infos, ""))
        .collect();
    for remote in &infos[..2] {
        kernel.add_remote(remote);
    }
    let pods: Vec<Pod> = nodes
        .iter()
        .map(|n| {
            let ns = Netns::new("p");
            let addr = n.add_pod(&ns);
            Pod { ns, addr }
        })
        .collect();

    let pairs = vec![
        (&pods[0].ns, kernel.pod_addr),
        (&pods[1].ns, kernel.pod_addr),
        (&kernel.pod, pods[0].addr),
        (&kernel.pod, pods[1].addr),
        (&kernel.ns, pods[0].addr),
        (&nodes[1].ns, kernel.pod_addr),
    ];
    let failed = failed_pings(&pairs);
    assert!(
        failed.is_empty(),
        "unreachable between switchd and the kernel node: {failed:?}"
    );

    for (from, to, addr) in [
        (&pods[0].ns, &kernel.pod, kernel.pod_addr),
        (&kernel.pod, &pods[1].ns, pods[1].addr),
    ] {
        let (_, h_sent, n, h_received, _) = tcp_transfer(from, to, addr, 16 << 20);
        assert_eq!(n, 16 << 20);
        assert_eq!(h_received, h_sent, "TCP {} -> {addr} corrupted", from.name);
    }
}

#[test]
fn peers_change_at_runtime_without_disturbing_flows_to_unchanged_peers() {
    let mut underlay = Underlay::new();
    let spaces: Vec<Netns> = (0..3).map(|_| Netns::new("n")).collect();
    let infos: Vec<NodeInfo> = spaces
        .iter()
        .enumerate()
        .map(|(i, ns)| NodeInfo::numbered(i as u8 + 1, underlay.attach(ns, 1500)))
        .collect();
    let first_two = &infos[..2];
    let mut spaces = spaces.into_iter();
    // Node 3 knows node 1; node 1 does not know node 3 yet.
    let n1 = start_switchd(spaces.next().unwrap(), &infos[0], first_two, "");
    let n2 = start_switchd(spaces.next().unwrap(), &infos[1], first_two, "");
    let n3 = start_switchd(spaces.next().unwrap(), &infos[2], &infos, "");
    let (p1, p2, p3) = (Netns::new("p"), Netns::new("p"), Netns::new("p"));
    let (_a1, a2, a3) = (n1.add_pod(&p1), n2.add_pod(&p2), n3.add_pod(&p3));

    assert!(!p1.ping(a3), "node 3 reachable before node 1 knows it");
    let no_peer_before = n1.drops("no_peer");
    assert!(
        no_peer_before > 0,
        "traffic to an unknown pod CIDR is counted as no_peer"
    );

    // A flow to node 2 runs across both reloads.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let flow = std::thread::scope(|s| {
        let flow =
            s.spawn(|| tcp_transfer_while(&p1, &p2, a2, move |_| !flag.load(Ordering::Relaxed)));
        std::thread::sleep(std::time::Duration::from_millis(300));

        n1.write_peers(&peers_toml(&infos, "node1"));
        let out = n1.switchctl(&["reload"]);
        assert!(
            out.status.success(),
            "switchctl reload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            p1.ping(a3),
            "node 3 unreachable after adding it and reloading"
        );
        let names: Vec<String> = n1.query("peers")["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["node2", "node3"]);
        let node2_tx_before = peer_tx(&n1, "node2");

        // Remove node 3 again, this time with SIGHUP.
        n1.write_peers(&peers_toml(first_two, "node1"));
        // SAFETY: signalling the switchd process this test started, by its PID.
        assert_eq!(unsafe { libc::kill(n1.pid(), libc::SIGHUP) }, 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while n1.query("peers")["peers"].as_array().unwrap().len() != 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "SIGHUP did not apply the peers file"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let no_peer_mid = n1.drops("no_peer");
        assert!(!p1.ping(a3), "node 3 still reachable after removing it");
        assert!(
            n1.drops("no_peer") > no_peer_mid,
            "traffic to the removed node is dropped as no_peer"
        );
        assert!(
            peer_tx(&n1, "node2") >= node2_tx_before,
            "node 2's counters survived the reloads"
        );

        // A broken peers file is refused and changes nothing.
        n1.write_peers("[[peers]]\nname = \"bad\"\n");
        let out = n1.switchctl(&["reload"]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("peers unchanged"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(p1.ping(a2));

        stop.store(true, Ordering::Relaxed);
        flow.join().unwrap()
    });
    let (sent, h_sent, received, h_received, _) = flow;
    assert!(sent > 1 << 20, "the flow moved data ({sent} bytes)");
    assert_eq!(
        (received, h_received),
        (sent, h_sent),
        "the flow to the unchanged peer was disturbed"
    );
}

fn peer_tx(node: &Node, name: &str) -> u64 {
    let peers = node.query("peers");
    let peer = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()
        .clone();
    peer["counters"]["tx_packets"].as_u64().unwrap()
}

/// Send one datagram from inside `ns`, from `src`, to `dst`.
fn send_from(ns: &Netns, src: SocketAddr, dst: SocketAddr, payload: Vec<u8>) {
    ns.spawn(move || {
        let s = UdpSocket::bind(src).expect("bind sender");
        s.send_to(&payload, dst).expect("send datagram");
    })
    .join()
    .unwrap();
}

#[test]
fn strangers_and_malformed_datagrams_are_counted_and_delivered_nowhere() {
    let c = cluster(2, 1);
    let target = &c.pods[0][0];
    let node1 = &c.nodes[0];
    let tunnel = SocketAddr::from((c.infos[0].underlay, 8472));
    let pod_tx = || {
        node1.query("ports")["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["address"] == target.addr.to_string())
            .unwrap()["counters"]["tx_packets"]
            .as_u64()
            .unwrap()
    };
    let before = pod_tx();

    // A well-formed VXLAN frame for the pod, from an address that is not a peer.
    let vxlan = |vni: u32, inner_src: Ipv4Addr| {
        let mut f = craft::ipv4_udp(
            mac_for_ip(Ipv4Addr::new(10, 244, 2, 1)),
            mac_for_ip(Ipv4Addr::new(10, 244, 1, 1)),
            inner_src,
            target.addr,
            32,
        );
        switchd::datapath::vxlan::encap_in_place(&mut f, vni);
        f[switchd::datapath::vxlan::DATAGRAM_OFFSET..].to_vec()
    };
    // The stranger: a second address on node 2's underlay interface, not a peer address.
    assert!(c.nodes[1]
        .ns
        .exec(&["ip", "addr", "add", "192.168.77.200/24", "dev", "u0"])
        .status
        .success());
    send_from(
        &c.nodes[1].ns,
        "192.168.77.200:0".parse().unwrap(),
        tunnel,
        vxlan(1, Ipv4Addr::new(10, 244, 2, 2)),
    );
    // From the real peer: a truncated datagram, another VNI, and a spoofed inner source.
    let peer = SocketAddr::from((c.infos[1].underlay, 0));
    send_from(&c.nodes[1].ns, peer, tunnel, vec![0x08, 0, 0]);
    send_from(
        &c.nodes[1].ns,
        peer,
        tunnel,
        vxlan(7, Ipv4Addr::new(10, 244, 2, 2)),
    );
    send_from(
        &c.nodes[1].ns,
        peer,
        tunnel,
        vxlan(1, Ipv4Addr::new(10, 244, 3, 3)),
    );

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let counts = || {
        [
            "unknown_peer",
            "bad_tunnel_packet",
            "wrong_vni",
            "spoofed_source",
        ]
        .map(|r| node1.drops(r))
    };
    while counts().contains(&0) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        !counts().contains(&0),
        "every bad datagram counted: {:?}",
        counts()
    );
    assert_eq!(pod_tx(), before, "nothing was delivered to the pod");
    // The same frame from the peer itself is delivered.
    send_from(
        &c.nodes[1].ns,
        peer,
        tunnel,
        vxlan(1, Ipv4Addr::new(10, 244, 2, 2)),
    );
    while pod_tx() == before
        && std::time::Instant::now() < deadline + std::time::Duration::from_secs(5)
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // (Its answer may add an ARP reply to the count, hence "more than", not "one more".)
    assert!(
        pod_tx() > before,
        "a good datagram from the peer is delivered"
    );
}

#[test]
fn a_packet_too_big_for_the_tunnel_gets_fragmentation_needed() {
    let mut underlay = Underlay::new();
    let (s1, s2) = (Netns::new("n"), Netns::new("n"));
    let infos = vec![
        NodeInfo::numbered(1, underlay.attach(&s1, 1400)),
        NodeInfo::numbered(2, underlay.attach(&s2, 1400)),
    ];
    // Pods on node 1 are forced to MTU 1500 although the tunnel carries only 1400 - 50.
    let n1 = start_switchd(s1, &infos[0], &infos, "mtu = 1500\n");
    let n2 = start_switchd(s2, &infos[1], &infos, "");
    let (p1, p2) = (Netns::new("p"), Netns::new("p"));
    let (_, a2) = (n1.add_pod(&p1), n2.add_pod(&p2));
    assert_eq!(
        n2.query("status")["mtu"],
        1350,
        "default pod MTU = underlay MTU - 50"
    );

    let out = p1.exec(&[
        "ping",
        "-c",
        "2",
        "-i",
        "0.3",
        "-W",
        "2",
        "-s",
        "1400",
        "-M",
        "do",
        &a2.to_string(),
    ]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("mtu = 1350") || text.contains("mtu=1350"),
        "no fragmentation-needed seen: {text}"
    );
    assert!(n1.drops("too_big") > 0);
    assert!(p1.ping(a2), "packets that fit still cross");
}

#[test]
fn a_gigabyte_crosses_nodes_intact_and_pods_without_offloads_still_work() {
    let c = cluster(2, 2);
    let (a, b) = (&c.pods[0][0], &c.pods[1][0]);
    // With the offloads the TAPs negotiate: super-frames segmented, sent with GSO, received
    // with GRO and merged again. Every byte is hashed on both ends.
    let total = 1 << 30;
    let (sent, h_sent, received, h_received, _) = tcp_transfer(&a.ns, &b.ns, b.addr, total);
    assert_eq!((sent, received), (total, total));
    assert_eq!(h_received, h_sent, "1 GiB across nodes arrived corrupted");

    // A pod that turned its offloads off sends finished 1450-byte frames; the path must not
    // depend on super-frames or partial checksums.
    let plain = &c.pods[0][1];
    let off = plain.ns.exec(&[
        "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off",
    ]);
    assert!(
        off.status.success(),
        "ethtool: {}",
        String::from_utf8_lossy(&off.stderr)
    );
    for (to, addr) in [(&b.ns, b.addr), (&a.ns, a.addr)] {
        let (_, h_sent, n, h_received, _) = tcp_transfer(&plain.ns, to, addr, 32 << 20);
        assert_eq!(
            (n, h_received),
            (32 << 20, h_sent),
            "offload-less pod -> {addr}"
        );
        let (_, h_sent, n, h_received, _) = tcp_transfer(to, &plain.ns, plain.addr, 32 << 20);
        assert_eq!(
            (n, h_received),
            (32 << 20, h_sent),
            "{addr} -> offload-less pod"
        );
    }
}

#[test]
fn udp_segmentation_offload_from_a_pod_arrives_as_datagrams_across_nodes_and_on_the_same_node() {
    let c = cluster(2, 2);
    let (a, same, remote) = (&c.pods[0][0], &c.pods[0][1], &c.pods[1][0]);
    let features =
        String::from_utf8_lossy(&a.ns.exec(&["ethtool", "-k", "eth0"]).stdout).to_string();
    eprintln!(
        "pod eth0 USO: {:?}",
        features.lines().find(|l| l.contains("udp-segmentation"))
    );
    for to in [remote, same] {
        let addr = to.addr;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server = to.ns.spawn(move || {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 6000)).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while got.len() < 5 {
                match s.recv(&mut buf) {
                    Ok(n) => got.push(buf[..n].to_vec()),
                    Err(_) => break,
                }
            }
            got
        });
        ready_rx.recv().unwrap();
        a.ns.spawn(move || {
            use std::os::fd::AsRawFd;
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            let seg: libc::c_int = 1200;
            // SAFETY: setsockopt with a valid int option on a socket we own.
            let rc = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_UDP,
                    103, /* UDP_SEGMENT */
                    (&seg as *const libc::c_int).cast(),
                    4,
                )
            };
            assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
            let payload: Vec<u8> = (0..6000u32).map(|i| (i / 1200) as u8 + 1).collect();
            s.send_to(&payload, (addr, 6000)).unwrap();
        })
        .join()
        .unwrap();
        let got = server.join().unwrap();
        assert_eq!(got.len(), 5, "five 1200-byte datagrams to {addr}");
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d.len(), 1200);
            assert!(
                d.iter().all(|b| *b == i as u8 + 1),
                "datagram {i} to {addr} has the wrong content"
            );
        }
    }
}

/// ifindex, MAC and addresses of `eth0` in `ns`, as `ip -o` prints them.
fn eth0_identity(ns: &Netns) -> String {
    let link =
        String::from_utf8_lossy(&ns.exec(&["ip", "-o", "link", "show", "eth0"]).stdout).to_string();
    let addr =
        String::from_utf8_lossy(&ns.exec(&["ip", "-o", "-4", "addr", "show", "eth0"]).stdout)
            .to_string();
    let ifindex = link.split(':').next().unwrap_or("").to_string();
    let mac = link
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("")
        .to_string();
    let inet = addr
        .split("inet ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("")
        .to_string();
    format!("ifindex {ifindex} mac {mac} inet {inet}")
}

#[test]
fn tcp_across_nodes_and_on_the_node_survives_a_sigkill_of_switchd() {
    use switchd_e2e::cluster::prepare_switchd;
    use switchd_e2e::fdstore::FdStore;

    let mut underlay = Underlay::new();
    let (s1, s2) = (Netns::new("n"), Netns::new("n"));
    let infos = vec![
        NodeInfo::numbered(1, underlay.attach(&s1, 1500)),
        NodeInfo::numbered(2, underlay.attach(&s2, 1500)),
    ];
    let mut store = FdStore::new();
    // Two workers: every port is a two-queue TAP, two descriptors each in the store.
    let mut n1 = prepare_switchd(s1, &infos[0], &infos, "datapath_threads = 2\n");
    n1.env
        .push(("NOTIFY_SOCKET".into(), store.path.display().to_string()));
    n1.launch();
    let n2 = start_switchd(s2, &infos[1], &infos, "");
    let (p1, p3, p2) = (Netns::new("p"), Netns::new("p"), Netns::new("p"));
    let (a1, _a3, a2) = (n1.add_pod(&p1), n1.add_pod(&p3), n2.add_pod(&p2));
    assert!(p1.ping(a2) && p3.ping(a1));
    assert!(store.pump_until(Duration::from_secs(10), |s| s.fds.len() == 3 * 2));
    let identity = [eth0_identity(&p1), eth0_identity(&p3)];

    let stop = Arc::new(AtomicBool::new(false));
    let (cross, local, gap_ms) = std::thread::scope(|s| {
        let (f1, f2) = (stop.clone(), stop.clone());
        let cross =
            s.spawn(|| tcp_transfer_while(&p1, &p2, a2, move |_| !f1.load(Ordering::Relaxed)));
        let local =
            s.spawn(|| tcp_transfer_while(&p3, &p1, a1, move |_| !f2.load(Ordering::Relaxed)));
        // A 1 ms ping stream across nodes measures the forwarding gap.
        let pinger = s.spawn(|| {
            p1.exec(&[
                "ping",
                "-q",
                "-i",
                "0.001",
                "-c",
                "3000",
                "-W",
                "1",
                &a2.to_string(),
            ])
        });
        std::thread::sleep(Duration::from_millis(500));

        n1.kill();
        store.launch_with_fds(&mut n1);

        let ping = pinger.join().unwrap();
        let text = String::from_utf8_lossy(&ping.stdout).to_string();
        let field = |word: &str| -> u64 {
            let summary = text
                .lines()
                .find(|l| l.contains("transmitted"))
                .unwrap_or_else(|| panic!("ping summary: {text}"));
            summary
                .split(", ")
                .find(|p| p.contains(word))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap()
        };
        let lost = field("transmitted") - field("received");
        // Frames the pod sends while switchd is down wait in its TAP queue (the fd store
        // keeps the device attached), so the gap shows up as delay more than as loss.
        let max_rtt = text
            .lines()
            .find(|l| l.starts_with("rtt"))
            .and_then(|l| l.split(" = ").nth(1))
            .and_then(|v| v.split('/').nth(2))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        eprintln!(
            "across SIGKILL + restart (1 ms ping stream): {lost} lost, max RTT {max_rtt:.1} ms"
        );
        stop.store(true, Ordering::Relaxed);
        (cross.join().unwrap(), local.join().unwrap(), lost)
    });
    for (what, (sent, h_sent, received, h_received, _)) in
        [("cross-node", cross), ("same-node", local)]
    {
        assert!(sent > 0);
        assert_eq!(
            (received, h_received),
            (sent, h_sent),
            "the {what} TCP connection did not survive intact"
        );
    }
    assert_eq!(
        [eth0_identity(&p1), eth0_identity(&p3)],
        identity,
        "pods kept ifindex, MAC and address"
    );
    assert!(gap_ms < 3000, "forwarding came back ({gap_ms} pings lost)");
}

/// TcpExt counters of a namespace (`/proc/net/netstat`), by name.
fn tcp_ext(ns: &Netns) -> std::collections::HashMap<String, u64> {
    let out = ns.exec(&["cat", "/proc/net/netstat"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    assert_eq!(lines.len(), 2, "TcpExt header and values: {text}");
    lines[0]
        .split_whitespace()
        .zip(lines[1].split_whitespace())
        .skip(1)
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
        .collect()
}

/// Byte `i` of test stream `s`: every stream differs and no byte depends only on `i`.
fn pattern(s: u64, i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9) ^ s.wrapping_mul(0x9e37)) as u8
}

#[test]
fn parallel_streams_across_nodes_arrive_intact_and_in_order_spread_over_two_workers() {
    use std::io::{Read, Write};
    // The TUN driver puts a new flow on a queue by its hash, so which worker a flow gets is
    // a coin toss per flow: with 16 flows, all on one worker has odds of 2 in 65536.
    const STREAMS: u64 = 16;
    const BYTES: u64 = 8 << 20;
    let mut underlay = Underlay::new();
    let (s1, s2) = (Netns::new("n"), Netns::new("n"));
    let infos = vec![
        NodeInfo::numbered(1, underlay.attach(&s1, 1500)),
        NodeInfo::numbered(2, underlay.attach(&s2, 1500)),
    ];
    let extra = "datapath_threads = 2\n";
    let n1 = start_switchd(s1, &infos[0], &infos, extra);
    let n2 = start_switchd(s2, &infos[1], &infos, extra);
    let (a, c) = (Netns::new("a"), Netns::new("c"));
    n1.add_pod(&a);
    let addr_c = n2.add_pod(&c);
    assert!(a.ping(addr_c), "setup: a cannot reach c");

    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = c.spawn(move || {
        let listener = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 5400)).unwrap();
        ready_tx.send(()).unwrap();
        let readers: Vec<_> = (0..STREAMS)
            .map(|_| {
                let (mut conn, _) = listener.accept().unwrap();
                std::thread::spawn(move || {
                    let mut id = [0u8; 8];
                    conn.read_exact(&mut id).unwrap();
                    let s = u64::from_be_bytes(id);
                    let (mut at, mut buf) = (0u64, vec![0u8; 1 << 16]);
                    loop {
                        let n = conn.read(&mut buf).unwrap();
                        if n == 0 {
                            break;
                        }
                        for &b in &buf[..n] {
                            if b != pattern(s, at) {
                                return Err(format!("stream {s}: byte {at} differs"));
                            }
                            at += 1;
                        }
                    }
                    Ok((s, at))
                })
            })
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().unwrap())
            .collect::<Vec<_>>()
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let before = tcp_ext(&a);
    let clients: Vec<_> = (0..STREAMS)
        .map(|s| {
            a.spawn(move || {
                let mut conn = std::net::TcpStream::connect((addr_c, 5400)).unwrap();
                conn.write_all(&s.to_be_bytes()).unwrap();
                let mut sent = 0u64;
                while sent < BYTES {
                    let part: Vec<u8> = (sent..sent + (1 << 20)).map(|i| pattern(s, i)).collect();
                    conn.write_all(&part).unwrap();
                    sent += 1 << 20;
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let mut results = server.join().unwrap();
    let after = tcp_ext(&a);
    results.sort_by_key(|r| r.as_ref().map(|(s, _)| *s).unwrap_or(u64::MAX));
    for r in &results {
        let (s, got) = r.as_ref().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(*got, BYTES, "stream {s} received {got} of {BYTES} bytes");
    }
    let delta = |k: &str| after.get(k).unwrap_or(&0) - before.get(k).unwrap_or(&0);
    let reordering = delta("TCPSACKReorder") + delta("TCPTSReorder") + delta("TCPRenoReorder");
    let retransmitted = delta("TCPLostRetransmit") + delta("TCPFastRetrans");
    eprintln!("sender saw reordering {reordering} times; fast retransmits + lost retransmits {retransmitted}");
    // A flow has one worker at every hop, so the sender never sees its segments reordered
    // (losses on a full socket buffer show up as retransmits, not as reordering).
    assert!(
        reordering <= 2,
        "the sender detected reordering {reordering} times: a flow was handled by two workers at once"
    );
    // Both workers of the receiving node carried traffic: the flows were spread.
    let per_worker = n2.query("stats")["workers"].clone();
    let busy = per_worker
        .as_array()
        .map(|w| {
            w.iter()
                .filter(|x| x["frames"].as_u64().unwrap_or(0) > 1000)
                .count()
        })
        .unwrap_or(0);
    assert_eq!(busy, 2, "node 2's workers: {per_worker}");
}
