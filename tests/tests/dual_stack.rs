//! Dual-stack nodes: every pod gets an IPv4 and an IPv6 address, and IPv6 works the way
//! IPv4 does, on one node and across nodes over the VXLAN tunnel. The switch answers
//! Neighbor Discovery itself and absorbs the link chatter of every interface coming up.
//! Needs root; CI runs these as root.

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use switchd_e2e::cluster::{start_switchd, KernelNode, NodeInfo, Underlay, CLUSTER_CIDR_V6};
use switchd_e2e::echo::{ask_tcp, ask_udp, EchoServer};
use switchd_e2e::kube_proxy::{self, Proto, Service};
use switchd_e2e::*;

const GW6: &str = "fd10:244:0:1::1";

fn gw6() -> Ipv6Addr {
    GW6.parse().unwrap()
}

/// A single dual-stack node: `10.244.1.0/24` and `fd10:244:0:1::/64`.
fn dual_stack_node() -> Node {
    let extra =
        format!("mtu = 1450\npod_cidr_v6 = \"fd10:244:0:1::/64\"\ncluster_cidr_v6 = \"{CLUSTER_CIDR_V6}\"\n");
    Node::start_with(Netns::new("n"), "10.244.1.0/24", &extra, None)
}

/// ADD `pod`; its IPv6 address.
fn add(node: &Node, pod: &Netns) -> Ipv6Addr {
    let r = node.cni("ADD", pod);
    assert!(r.ok(), "ADD failed: {}", r.json);
    r.address_v6()
        .unwrap_or_else(|| panic!("no IPv6 address in {}", r.json))
}

/// A new pod (namespace tagged `tag`) on every node, in node order, with its IPv6 address.
fn pod_on_each(nodes: &[Node], tag: &str) -> Vec<(Netns, Ipv6Addr)> {
    nodes
        .iter()
        .map(|n| {
            let ns = Netns::new(tag);
            let a = add(n, &ns);
            (ns, a)
        })
        .collect()
}

fn text(out: std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A transfer's bytes all arrived unchanged; the peer address the server saw.
fn intact(t: Transfer, what: &str) -> std::net::SocketAddr {
    let (sent, sent_hash, received, received_hash, peer) = t;
    assert_eq!((received, received_hash), (sent, sent_hash), "{what}");
    peer
}

/// Wait up to `limit` for `cond`.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

#[test]
fn dual_stack_pods_reach_each_other_and_their_node_over_ipv6() {
    let node = dual_stack_node();
    let (a, b) = (Netns::new("p"), Netns::new("p"));
    let r = node.cni("ADD", &a);
    assert!(r.ok(), "{}", r.json);
    let ips = r.json["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 2, "one address per family: {}", r.json);
    assert_eq!(
        ips[0]["address"], "10.244.1.2/24",
        "IPv4 first (kubelet's primary)"
    );
    assert_eq!(ips[1]["address"], "fd10:244:0:1::2/64");
    assert_eq!(ips[1]["gateway"], GW6);
    assert!(r.json["routes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|route| route["dst"] == "::/0" && route["gw"] == GW6));
    let a6 = r.address_v6().unwrap();
    let b6 = add(&node, &b);

    // The address is usable at once (no duplicate-address detection), with its route.
    let addr = text(a.exec(&["ip", "-6", "addr", "show", "dev", "eth0", "scope", "global"]));
    assert!(addr.contains("fd10:244:0:1::2/64"), "{addr}");
    assert!(!addr.contains("tentative"), "{addr}");
    let route = text(a.exec(&["ip", "-6", "route", "show", "default"]));
    assert!(route.contains(&format!("via {GW6} dev eth0")), "{route}");

    assert!(a.ping(b6), "pod to pod");
    assert!(b.ping(a6), "pod to pod, back");
    assert!(a.ping(gw6()), "pod to its node");
    assert!(node.ns.ping(a6), "node to pod");

    // 64 MiB intact, the pod's own source address kept (TCPv6 super-frames switched whole).
    let peer = intact(tcp_transfer(&a, &b, b6, 64 << 20), "transfer intact");
    assert_eq!(peer.ip(), IpAddr::V6(a6), "source address kept");
    let peer = intact(
        tcp_transfer(&node.ns, &a, a6, 8 << 20),
        "node to pod intact",
    );
    assert_eq!(
        peer.ip(),
        IpAddr::V6(gw6()),
        "the node speaks from its gateway address"
    );

    // Router solicitations, MLD reports and DAD are absorbed, never unsupported or malformed.
    assert!(
        eventually(Duration::from_secs(10), || node.drops("nd_ignored") > 0),
        "the pods' link chatter reached the switch"
    );
    assert_eq!(node.drops("unsupported_protocol"), 0);
    assert_eq!(node.drops("malformed"), 0);

    // switchctl shows both families.
    let ports = node.query("ports").to_string();
    assert!(
        ports.contains(&a6.to_string()) && ports.contains(GW6),
        "{ports}"
    );
    let table = text(node.switchctl(&["table"]));
    assert!(table.contains(&b6.to_string()), "{table}");
    assert!(table.contains("10.244.1.3"), "{table}");
}

#[test]
fn restart_keeps_both_addresses_check_sees_both_and_del_frees_both() {
    let mut node = dual_stack_node();
    let a = Netns::new("p");
    let a6 = add(&node, &a);
    let records = node.ipam_records();
    assert_eq!(records[0]["address_v6"], a6.to_string(), "persisted");

    node.restart();
    assert!(node.ns.ping(a6), "IPv6 forwarding after a restart");
    assert!(a.ping(gw6()));
    assert!(node.cni("CHECK", &a).ok(), "CHECK after the restart");

    // CHECK notices a missing IPv6 address.
    let out = a.exec(&[
        "ip",
        "-6",
        "addr",
        "del",
        &format!("{a6}/64"),
        "dev",
        "eth0",
    ]);
    assert!(out.status.success());
    let check = node.cni("CHECK", &a);
    assert!(!check.ok());
    assert!(
        check.json["msg"].to_string().contains(&a6.to_string())
            || check.json.to_string().contains(&a6.to_string()),
        "{}",
        check.json
    );

    assert!(node.cni("DEL", &a).ok());
    assert!(node.ipam_records().is_empty(), "both addresses released");
    assert!(!a.has_link("eth0"));
    // Round robin per family: the next pod does not get the just-freed address.
    let b = Netns::new("p");
    let b6 = add(&node, &b);
    assert_eq!(b6, "fd10:244:0:1::3".parse::<Ipv6Addr>().unwrap());
    assert!(node.ns.ping(b6));
}

#[test]
fn spoofed_ipv6_and_a_stolen_neighbor_advertisement_are_dropped_and_counted() {
    let node = dual_stack_node();
    let (a, b) = (Netns::new("p"), Netns::new("p"));
    let _a6 = add(&node, &a);
    let b6 = add(&node, &b);
    assert!(node.ns.ping(b6));
    let before = node.drops("spoofed_source");

    // Pod a claims b's address. With ndisc_notify its kernel announces the address with
    // an unsolicited Neighbor Advertisement once duplicate-address detection is over
    // (the switch never answers a pod's DAD probe, so DAD passes).
    for cmd in [
        vec!["sysctl", "-qw", "net.ipv6.conf.eth0.ndisc_notify=1"],
        vec![
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{b6}/128"),
            "dev",
            "eth0",
        ],
    ] {
        let out = a.exec(&cmd);
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        eventually(Duration::from_secs(10), || node.drops("spoofed_source")
            > before),
        "the advertisement of b's address was counted as spoofed"
    );
    // Traffic from the stolen address goes nowhere.
    let from_b6 = b6.to_string();
    let spoofed = a.exec(&[
        "ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", "-I", &from_b6, GW6,
    ]);
    assert!(
        !spoofed.status.success(),
        "a ping from the stolen address got an answer"
    );
    let after_advertisement = node.drops("spoofed_source");
    assert!(
        after_advertisement >= before + 3,
        "the spoofed pings were counted too"
    );

    // b keeps its address: the node still reaches it, at b's MAC.
    assert!(node.ns.ping(b6));
    let neigh = text(node.ns.exec(&["ip", "-6", "neigh", "show", &from_b6]));
    assert!(neigh.contains("0a:58:0a:f4:01:03"), "{neigh}");
}

struct Nodes {
    nodes: Vec<Node>,
    infos: Vec<NodeInfo>,
    _underlay: Underlay,
}

fn two_dual_stack_nodes(extra: [&str; 2]) -> Nodes {
    dual_stack_nodes(&extra)
}

/// Dual-stack nodes 1..=n on one IPv4 underlay, node i with `extra[i]` in its config.
fn dual_stack_nodes(extra: &[&str]) -> Nodes {
    let mut underlay = Underlay::new();
    let spaces: Vec<Netns> = extra.iter().map(|_| Netns::new("n")).collect();
    let infos: Vec<NodeInfo> = spaces
        .iter()
        .enumerate()
        .map(|(i, ns)| NodeInfo::dual_stack(i as u8 + 1, underlay.attach(ns, 1500)))
        .collect();
    let nodes = spaces
        .into_iter()
        .zip(&infos)
        .zip(extra)
        .map(|((ns, me), extra)| start_switchd(ns, me, &infos, extra))
        .collect();
    Nodes {
        nodes,
        infos,
        _underlay: underlay,
    }
}

#[test]
fn three_dual_stack_nodes_reach_every_pod_and_node_over_ipv6_through_the_tunnel() {
    let c = dual_stack_nodes(&["", "", ""]);
    let pods = pod_on_each(&c.nodes, "p");
    for (i, (_, a)) in pods.iter().enumerate() {
        let want: Ipv6Addr = format!("fd10:244:0:{}::2", i + 1).parse().unwrap();
        assert_eq!(*a, want, "node {}'s first pod", i + 1);
    }
    // Every pod to every other pod, every node to every other node's pod, every pod to
    // every other node: the sig-network matrix, over IPv6.
    let mut failed = Vec::new();
    for i in 0..3 {
        for j in (0..3).filter(|&j| j != i) {
            let gw = c.infos[j].gateway_v6().unwrap();
            for (from, what, to) in [
                (&pods[i].0, "pod -> pod", pods[j].1),
                (&c.nodes[i].ns, "node -> pod", pods[j].1),
                (&pods[i].0, "pod -> node", gw),
            ] {
                if !from.ping(to) {
                    failed.push(format!("{what} {} -> {} ({to})", i + 1, j + 1));
                }
            }
        }
    }
    assert!(failed.is_empty(), "unreachable over IPv6: {failed:?}");
    // TCPv6 super-frames are cut to the tunnel MTU and arrive intact, source kept.
    let (p1, a6) = (&pods[0].0, pods[0].1);
    let (p2, b6) = (&pods[1].0, pods[1].1);
    let peer = intact(tcp_transfer(p1, p2, b6, 64 << 20), "transfer intact");
    assert_eq!(peer.ip(), IpAddr::V6(a6));
    intact(tcp_transfer(p2, p1, a6, 16 << 20), "the other way");
    for node in &c.nodes {
        assert_eq!(node.drops("spoofed_source"), 0);
        assert_eq!(node.drops("unsupported_protocol"), 0);
        assert_eq!(node.drops("malformed"), 0);
    }
}

#[test]
fn a_pod_sending_more_than_the_tunnel_carries_gets_packet_too_big() {
    // Node 1's pods get MTU 1500 over a tunnel that carries 1450-byte packets; IPv6 is
    // never fragmented on the way, so only the ICMPv6 answer lets them through.
    let c = two_dual_stack_nodes(["mtu = 1500\n", ""]);
    let (p1, p2) = (Netns::new("p"), Netns::new("p"));
    let _a6 = add(&c.nodes[0], &p1);
    let b6 = add(&c.nodes[1], &p2);
    let big = p1.exec(&[
        "ping",
        "-6",
        "-M",
        "do",
        "-s",
        "1420",
        "-c",
        "2",
        "-W",
        "1",
        &b6.to_string(),
    ]);
    assert!(
        !big.status.success(),
        "1468-byte packets crossed a 1450-byte tunnel"
    );
    assert!(c.nodes[0].drops("too_big") > 0);
    let route = text(p1.exec(&["ip", "-6", "route", "get", &b6.to_string()]));
    assert!(
        route.contains("mtu 1450"),
        "the pod learned the path MTU: {route}"
    );
    // At the learned MTU it gets through, and TCP finds it by itself.
    assert!(p1.ping(b6));
    intact(tcp_transfer(&p1, &p2, b6, 8 << 20), "transfer intact");
}

/// Two dual-stack switchd nodes and a host outside the cluster, on an underlay with IPv6
/// too (`fd00:77::/64`): the outside host is the nodes' default router in both families.
struct WithOutside {
    nodes: Vec<Node>,
    /// The nodes' own IPv6 addresses on the underlay.
    node6: Vec<Ipv6Addr>,
    outside: Netns,
    outside6: Ipv6Addr,
    _underlay: Underlay,
}

fn dual_stack_cluster_with_outside() -> WithOutside {
    let mut underlay = Underlay::new();
    let spaces = [Netns::new("n"), Netns::new("n")];
    let infos: Vec<NodeInfo> = spaces
        .iter()
        .enumerate()
        .map(|(i, ns)| NodeInfo::dual_stack(i as u8 + 1, underlay.attach(ns, 1500)))
        .collect();
    let outside = Netns::new("out");
    let outside4 = underlay.attach(&outside, 1500);
    let address6 = |ns: &Netns, n: u8| -> Ipv6Addr {
        let a = format!("fd00:77::{n}");
        ns.exec_ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{a}/64"),
            "dev",
            "u0",
            "nodad",
        ]);
        a.parse().unwrap()
    };
    let outside6 = address6(&outside, 9);
    let node6: Vec<Ipv6Addr> = spaces
        .iter()
        .zip(1..)
        .map(|(ns, n)| address6(ns, n))
        .collect();
    for ns in &spaces {
        ns.exec_ok(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &outside4.to_string(),
        ]);
        ns.exec_ok(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &outside6.to_string(),
        ]);
    }
    let nodes = spaces
        .into_iter()
        .zip(&infos)
        .map(|(ns, me)| start_switchd(ns, me, &infos, ""))
        .collect();
    WithOutside {
        nodes,
        node6,
        outside,
        outside6,
        _underlay: underlay,
    }
}

/// sig-network's "Granular Checks: Services" for IPv6, with the ip6tables rules
/// kube-proxy's iptables mode writes on a dual-stack node, and IPv6 egress.
#[test]
fn ipv6_services_through_kube_proxys_ip6tables_rules_and_masqueraded_ipv6_egress() {
    ipv6_services(kube_proxy::Mode::IptablesNft);
}

/// The same with kube-proxy's nftables mode (`table ip6 kube-proxy`).
#[test]
fn ipv6_services_through_kube_proxys_nftables_mode() {
    ipv6_services(kube_proxy::Mode::Nftables);
}

fn ipv6_services(mode: kube_proxy::Mode) {
    let c = dual_stack_cluster_with_outside();
    let (ep1, ep2) = (Netns::new("ep"), Netns::new("ep"));
    let ep1_6 = add(&c.nodes[0], &ep1);
    let ep2_6 = add(&c.nodes[1], &ep2);
    let clients = pod_on_each(&c.nodes, "c");
    let solo: Ipv6Addr = "fd00:96::23".parse().unwrap();
    let pair: Ipv6Addr = "fd00:96::30".parse().unwrap();
    let services = vec![
        Service::new("solo6", Proto::Tcp, solo, 80).endpoint(ep1_6, 8086),
        Service::new("solo6u", Proto::Udp, solo, 80).endpoint(ep1_6, 8086),
        Service::new("pair6", Proto::Tcp, pair, 80)
            .endpoint(ep1_6, 8086)
            .endpoint(ep2_6, 8086),
    ];
    for (node, node6) in c.nodes.iter().zip(&c.node6) {
        kube_proxy::apply_v6(&node.ns, mode, CLUSTER_CIDR_V6, *node6, &services);
    }
    let any6: IpAddr = Ipv6Addr::UNSPECIFIED.into();
    let _servers = [
        EchoServer::start_on(&ep1, "ep1", any6, 8086),
        EchoServer::start_on(&ep2, "ep2", any6, 8086),
        EchoServer::start_on(&c.outside, "outside", any6, 9000),
    ];
    for (i, (ns, addr)) in clients.iter().enumerate() {
        let on = format!("client on node {}", i + 1);
        let a = ask_tcp(ns, solo, 80).unwrap_or_else(|e| panic!("{on}: TCP to ClusterIP: {e}"));
        assert_eq!(a.server, "ep1", "{on}");
        assert_eq!(
            a.client,
            IpAddr::V6(*addr),
            "{on}: the client's address is kept"
        );
        // 3,000-byte replies leave the endpoint as IPv6 fragments; every one of them must
        // follow the first to the node that translated the flow.
        let a = ask_udp(ns, solo, 80, 100, 3000)
            .unwrap_or_else(|e| panic!("{on}: UDP to ClusterIP: {e}"));
        assert_eq!(
            (a.client, a.reply_len),
            (IpAddr::V6(*addr), 3000),
            "{on}: UDP"
        );
        let mut seen = BTreeSet::new();
        for _ in 0..30 {
            let a = ask_tcp(ns, pair, 80).unwrap_or_else(|e| panic!("{on}: two endpoints: {e}"));
            assert_eq!(a.client, IpAddr::V6(*addr), "{on}");
            seen.insert(a.server);
        }
        assert_eq!(seen, ["ep1".to_string(), "ep2".into()].into(), "{on}");
    }
    for node in &c.nodes {
        let a = ask_tcp(&node.ns, solo, 80).expect("node to ClusterIP");
        assert_eq!(a.server, "ep1");
    }
    // Egress: a pod reaches the outside host, which sees the node's own IPv6 address.
    for ((ns, _), node6) in clients.iter().zip(&c.node6) {
        let a = ask_tcp(ns, c.outside6, 9000).expect("IPv6 egress");
        assert_eq!(
            (a.server.as_str(), a.client),
            ("outside", IpAddr::V6(*node6))
        );
    }
    for node in &c.nodes {
        let stats = node.query("stats");
        assert!(stats["flows"]["tracked"].as_u64().unwrap() >= 1, "{stats}");
        assert!(stats["flows"]["returned"].as_u64().unwrap() >= 1, "{stats}");
        let table = text(node.ns.exec(&["nft", "list", "table", "ip6", "switchd"]));
        assert!(
            table.contains(&format!("ip6 saddr != {CLUSTER_CIDR_V6} return")),
            "{table}"
        );
    }
}

/// A flannel-style kernel VXLAN node is a peer for IPv6 pods too: its IPv6 pod prefix
/// rides the same VXLAN device, and switchd's pods and node reach its pod both ways.
#[test]
fn a_kernel_vxlan_node_is_an_ipv6_peer() {
    let mut underlay = Underlay::new();
    let spaces = [Netns::new("n"), Netns::new("n")];
    let mut infos: Vec<NodeInfo> = spaces
        .iter()
        .enumerate()
        .map(|(i, ns)| NodeInfo::dual_stack(i as u8 + 1, underlay.attach(ns, 1500)))
        .collect();
    let mut kernel = KernelNode::new(&mut underlay, 9);
    let kernel_pod6 = kernel.enable_ipv6();
    infos.push(kernel.info.clone());
    let nodes: Vec<Node> = spaces
        .into_iter()
        .zip(infos.clone())
        .map(|(ns, me)| start_switchd(ns, &me, &infos, ""))
        .collect();
    for remote in &infos[..2] {
        kernel.add_remote(remote);
    }
    let pods = pod_on_each(&nodes, "p");
    for (from, name, to) in [
        (&pods[0].0, "pod1 -> kernel pod", kernel_pod6),
        (&pods[1].0, "pod2 -> kernel pod", kernel_pod6),
        (&kernel.pod, "kernel pod -> pod1", pods[0].1),
        (&kernel.pod, "kernel pod -> pod2", pods[1].1),
        (&nodes[0].ns, "node1 -> kernel pod", kernel_pod6),
    ] {
        assert!(from.ping(to), "{name} ({to})");
    }
    let peer = intact(
        tcp_transfer(&pods[0].0, &kernel.pod, kernel_pod6, 32 << 20),
        "to the kernel pod",
    );
    assert_eq!(peer.ip(), IpAddr::V6(pods[0].1));
    intact(
        tcp_transfer(&kernel.pod, &pods[1].0, pods[1].1, 32 << 20),
        "from the kernel pod",
    );
    for node in &nodes {
        assert_eq!(node.drops("spoofed_source"), 0);
        assert_eq!(node.drops("malformed"), 0);
    }
}

/// With `encryption = "wireguard"` IPv6 packets are sealed like IPv4 ones, and plain VXLAN
/// is refused (the default `encryption_plain`), so what arrives came through WireGuard.
#[test]
fn ipv6_crosses_encrypted_node_links() {
    encrypted_ipv6(switchd_e2e::wireguard::EncryptedCluster::dual_stack(2, ""));
}

/// The same over an IPv6-only underlay: WireGuard's socket binds the IPv6 address.
#[test]
fn ipv6_crosses_encrypted_node_links_over_an_ipv6_underlay() {
    encrypted_ipv6(switchd_e2e::wireguard::EncryptedCluster::over_ipv6_underlay(2, ""));
}

fn encrypted_ipv6(c: switchd_e2e::wireguard::EncryptedCluster) {
    let (p1, p2) = (Netns::new("p"), Netns::new("p"));
    let a6 = add(&c.nodes[0], &p1);
    let b6 = add(&c.nodes[1], &p2);
    assert!(p1.ping(b6), "pod1 -> pod2 sealed");
    assert!(p2.ping(a6), "pod2 -> pod1 sealed");
    assert!(c.nodes[0].ns.ping(b6), "node1 -> pod2 sealed");
    let peer = intact(tcp_transfer(&p1, &p2, b6, 16 << 20), "transfer intact");
    assert_eq!(peer.ip(), IpAddr::V6(a6));
    intact(tcp_transfer(&p2, &p1, a6, 16 << 20), "transfer intact");
    for node in &c.nodes {
        let peers = node.query("peers");
        assert!(
            peers["peers"][0]["wireguard"]["handshake_secs_ago"].is_u64(),
            "a WireGuard session carried it: {peers}"
        );
        assert_eq!(node.drops("not_authenticated"), 0);
        assert_eq!(node.drops("spoofed_source"), 0);
    }
}

/// An IPv6-only underlay: the nodes' tunnel binds an IPv6 address and the peers are IPv6
/// addresses. Both families of pods ride it (VXLAN carries Ethernet frames), with 70 bytes
/// of overhead, so the pods get MTU 1430 from a 1500-byte underlay.
#[test]
fn two_dual_stack_nodes_over_an_ipv6_only_underlay() {
    let mut underlay = Underlay::new();
    let spaces = [Netns::new("n"), Netns::new("n")];
    let infos: Vec<NodeInfo> = spaces
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let a6 = underlay.attach_v6_only(ns, 1500);
            NodeInfo {
                underlay6: Some(a6),
                ..NodeInfo::dual_stack(i as u8 + 1, std::net::Ipv4Addr::UNSPECIFIED)
            }
        })
        .collect();
    let nodes: Vec<Node> = spaces
        .into_iter()
        .zip(&infos)
        .map(|(ns, me)| start_switchd(ns, me, &infos, ""))
        .collect();
    let (p1, p2) = (Netns::new("p"), Netns::new("p"));
    let r1 = nodes[0].cni("ADD", &p1);
    let r2 = nodes[1].cni("ADD", &p2);
    assert!(r1.ok() && r2.ok(), "{} {}", r1.json, r2.json);
    let (a4, a6) = (r1.address(), r1.address_v6().unwrap());
    let (b4, b6) = (r2.address(), r2.address_v6().unwrap());
    let link = text(p1.exec(&["ip", "link", "show", "eth0"]));
    assert!(
        link.contains("mtu 1430"),
        "1500 - 70 for VXLAN over IPv6: {link}"
    );
    let peers = nodes[0].query("peers");
    assert_eq!(
        peers["peers"][0]["addr"],
        format!("[{}]:8472", infos[1].underlay6.unwrap()),
        "{peers}"
    );
    for (from, name, to) in [
        (&p1, "pod1 -> pod2 (IPv6)", IpAddr::from(b6)),
        (&p2, "pod2 -> pod1 (IPv6)", a6.into()),
        (&p1, "pod1 -> pod2 (IPv4)", b4.into()),
        (&p2, "pod2 -> pod1 (IPv4)", a4.into()),
        (&nodes[0].ns, "node1 -> pod2 (IPv6)", b6.into()),
        (&nodes[1].ns, "node2 -> pod1 (IPv4)", a4.into()),
    ] {
        assert!(from.ping(to), "{name} ({to})");
    }
    for to in [IpAddr::from(b6), b4.into()] {
        intact(
            tcp_transfer(&p1, &p2, to, 32 << 20),
            &format!("TCP to {to}"),
        );
    }
    // The health probes cross the IPv6 underlay too, and find the path MTU (1430).
    assert!(
        eventually(Duration::from_secs(10), || {
            let h = &nodes[0].query("peers")["peers"][0]["health"];
            h["rtt_micros"].is_u64() && h["path_mtu"] == 1430
        }),
        "{}",
        nodes[0].query("peers")
    );
    for node in &nodes {
        assert_eq!(node.drops("unknown_peer"), 0);
        assert_eq!(node.drops("malformed"), 0);
    }
}

/// IPv6 needs links of at least 1280 bytes; a dual-stack node whose pods would get less
/// stops at start and says why, instead of attaching pods whose IPv6 cannot work.
#[test]
fn a_dual_stack_node_with_pods_below_1280_bytes_refuses_to_start() {
    let extra = format!(
        "mtu = 1200\npod_cidr_v6 = \"fd10:244:0:1::/64\"\ncluster_cidr_v6 = \"{CLUSTER_CIDR_V6}\"\n"
    );
    let mut node = Node::prepare(Netns::new("n"), "10.244.1.0/24", &extra, None);
    node.spawn();
    let status = node
        .wait_exit(Duration::from_secs(20))
        .expect("switchd stops by itself");
    assert!(!status.success());
    let log = node.log();
    assert!(
        log.contains("IPv6 needs an MTU of at least 1280, but pods would get 1200"),
        "{log}"
    );
}
