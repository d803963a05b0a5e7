//! Dual-stack nodes: every pod gets an IPv4 and an IPv6 address, and IPv6 works the way
//! IPv4 does, on one node and across nodes over the VXLAN tunnel. The switch answers
//! Neighbor Discovery itself and absorbs the link chatter of every interface coming up.
//! Needs root; CI runs these as root.

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use switchd_e2e::cluster::{start_switchd, NodeInfo, Underlay, CLUSTER_CIDR_V6};
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

fn text(out: std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    let (sent, sent_hash, received, received_hash, peer) = tcp_transfer(&a, &b, b6, 64 << 20);
    assert_eq!(
        (received, received_hash),
        (sent, sent_hash),
        "transfer intact"
    );
    assert_eq!(peer.ip(), IpAddr::V6(a6), "source address kept");
    let (sent, sent_hash, received, received_hash, peer) = tcp_transfer(&node.ns, &a, a6, 8 << 20);
    assert_eq!(
        (received, received_hash),
        (sent, sent_hash),
        "node to pod intact"
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

struct TwoNodes {
    nodes: Vec<Node>,
    infos: Vec<NodeInfo>,
    _underlay: Underlay,
}

fn two_dual_stack_nodes(extra: [&str; 2]) -> TwoNodes {
    let mut underlay = Underlay::new();
    let spaces = [Netns::new("n"), Netns::new("n")];
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
    TwoNodes {
        nodes,
        infos,
        _underlay: underlay,
    }
}

#[test]
fn two_dual_stack_nodes_reach_every_pod_and_node_over_ipv6_through_the_tunnel() {
    let c = two_dual_stack_nodes(["", ""]);
    let (p1, p2) = (Netns::new("p"), Netns::new("p"));
    let a6 = add(&c.nodes[0], &p1);
    let b6 = add(&c.nodes[1], &p2);
    assert_eq!(a6, "fd10:244:0:1::2".parse::<Ipv6Addr>().unwrap());
    assert_eq!(b6, "fd10:244:0:2::2".parse::<Ipv6Addr>().unwrap());
    let (gw1, gw2) = (
        c.infos[0].gateway_v6().unwrap(),
        c.infos[1].gateway_v6().unwrap(),
    );
    for (from, name, to) in [
        (&p1, "pod1 -> pod2", b6),
        (&p2, "pod2 -> pod1", a6),
        (&c.nodes[0].ns, "node1 -> pod2", b6),
        (&c.nodes[1].ns, "node2 -> pod1", a6),
        (&p1, "pod1 -> node2", gw2),
        (&p2, "pod2 -> node1", gw1),
    ] {
        assert!(from.ping(to), "{name} ({to})");
    }
    // TCPv6 super-frames are cut to the tunnel MTU and arrive intact, source kept.
    let (sent, sent_hash, received, received_hash, peer) = tcp_transfer(&p1, &p2, b6, 64 << 20);
    assert_eq!(
        (received, received_hash),
        (sent, sent_hash),
        "transfer intact"
    );
    assert_eq!(peer.ip(), IpAddr::V6(a6));
    let (sent, sent_hash, received, received_hash, _) = tcp_transfer(&p2, &p1, a6, 16 << 20);
    assert_eq!(
        (received, received_hash),
        (sent, sent_hash),
        "the other way"
    );
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
    let (sent, sent_hash, received, received_hash, _) = tcp_transfer(&p1, &p2, b6, 8 << 20);
    assert_eq!((received, received_hash), (sent, sent_hash));
}
