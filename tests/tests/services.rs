//! Kubernetes Services and egress through switchd, with the rules kube-proxy writes in
//! each node's netns (no apiserver: `switchd_e2e::kube_proxy` writes them). Needs root.

use std::net::Ipv4Addr;

use switchd_e2e::cluster::{start_switchd, NodeInfo, Underlay};
use switchd_e2e::echo::{ask_tcp, ask_udp, EchoServer};
use switchd_e2e::kube_proxy::{self, Mode, Proto, Service};
use switchd_e2e::*;

const SOLO: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 23);

/// Two nodes; on each a client pod and an endpoint pod; node 1's endpoint behind a
/// one-endpoint Service (TCP and UDP) so every client's case (same node, other node) is
/// deterministic. Fields drop in order: servers before namespaces.
struct Fixture {
    _servers: Vec<EchoServer>,
    clients: Vec<(Netns, Ipv4Addr)>,
    endpoint: (Netns, Ipv4Addr),
    nodes: Vec<Node>,
    infos: Vec<NodeInfo>,
    outside: (Netns, Ipv4Addr),
    _underlay: Underlay,
}

fn fixture(mode: Mode) -> Fixture {
    let mut underlay = Underlay::new();
    let spaces: Vec<Netns> = (0..2).map(|_| Netns::new("n")).collect();
    let infos: Vec<NodeInfo> = spaces
        .iter()
        .enumerate()
        .map(|(i, ns)| NodeInfo::numbered(i as u8 + 1, underlay.attach(ns, 1500)))
        .collect();
    let outside_ns = Netns::new("out");
    let outside_addr = underlay.attach(&outside_ns, 1500);
    let nodes: Vec<Node> = spaces
        .into_iter()
        .zip(&infos)
        .map(|(ns, me)| start_switchd(ns, me, &infos, ""))
        .collect();
    let ep_ns = Netns::new("ep");
    let ep_addr = nodes[0].add_pod(&ep_ns);
    let clients: Vec<(Netns, Ipv4Addr)> = nodes
        .iter()
        .map(|n| {
            let ns = Netns::new("c");
            let a = n.add_pod(&ns);
            (ns, a)
        })
        .collect();
    let services = [
        Service::new("solo", Proto::Tcp, SOLO, 80).endpoint(ep_addr, 8080),
        Service::new("solou", Proto::Udp, SOLO, 80).endpoint(ep_addr, 8080),
    ];
    for (node, info) in nodes.iter().zip(&infos) {
        kube_proxy::apply(&node.ns, mode, "10.244.0.0/16", info.underlay, &services);
    }
    let servers = vec![
        EchoServer::start(&ep_ns, "ep", 8080),
        EchoServer::start(&outside_ns, "outside", 9000),
    ];
    Fixture {
        _servers: servers,
        clients,
        endpoint: (ep_ns, ep_addr),
        nodes,
        infos,
        outside: (outside_ns, outside_addr),
        _underlay: underlay,
    }
}

fn pods_reach_a_cluster_ip_on_the_same_and_the_other_node(mode: Mode) {
    let f = fixture(mode);
    for (i, (ns, addr)) in f.clients.iter().enumerate() {
        let where_ = if i == 0 { "same node" } else { "other node" };
        let a = ask_tcp(ns, SOLO, 80).unwrap_or_else(|e| panic!("{mode:?} TCP, {where_}: {e}"));
        assert_eq!(a.server, "ep", "{mode:?} {where_}");
        assert_eq!(
            a.client, *addr,
            "{mode:?} {where_}: the client pod's address is preserved"
        );
        let a = ask_udp(ns, SOLO, 80, 2000, 2000)
            .unwrap_or_else(|e| panic!("{mode:?} UDP 2000 B, {where_}: {e}"));
        assert_eq!(a.client, *addr, "{mode:?} UDP {where_}");
        assert_eq!(
            (a.request_len, a.reply_len),
            (2000, 2000),
            "fragments both ways"
        );
    }
    let stats = f.nodes[0].query("stats");
    assert!(stats["flows"]["tracked"].as_u64().unwrap() >= 2, "{stats}");
    assert!(stats["flows"]["returned"].as_u64().unwrap() >= 2, "{stats}");
}

#[test]
fn pods_reach_a_cluster_ip_with_kube_proxy_iptables_nft() {
    pods_reach_a_cluster_ip_on_the_same_and_the_other_node(Mode::IptablesNft);
}

#[test]
fn pods_reach_a_cluster_ip_with_kube_proxy_iptables_legacy() {
    pods_reach_a_cluster_ip_on_the_same_and_the_other_node(Mode::IptablesLegacy);
}

#[test]
fn pods_reach_a_cluster_ip_with_kube_proxy_nftables() {
    pods_reach_a_cluster_ip_on_the_same_and_the_other_node(Mode::Nftables);
}

#[test]
fn egress_leaves_with_the_node_address_and_direct_pod_traffic_is_not_tracked() {
    let f = fixture(Mode::IptablesNft);
    let out_addr = f.outside.1;
    let (c1, _) = &f.clients[0];
    let a = ask_tcp(c1, out_addr, 9000).expect("pod → outside host over TCP");
    assert_eq!(
        a.client, f.infos[0].underlay,
        "masqueraded to the node's address"
    );
    let a = ask_udp(c1, out_addr, 9000, 10, 0).expect("pod → outside host over UDP");
    assert_eq!(a.client, f.infos[0].underlay);
    assert!(c1.ping(out_addr), "ping to a host outside the cluster");
    let status = f.nodes[0].query("status");
    assert_eq!(status["masquerade"], "installed", "{status}");
    // Direct pod → pod traffic records no flow.
    let before = f.nodes[0].query("stats")["flows"]["tracked"]
        .as_u64()
        .unwrap();
    assert!(c1.ping(f.endpoint.1));
    let after = f.nodes[0].query("stats")["flows"]["tracked"]
        .as_u64()
        .unwrap();
    assert_eq!(before, after);
    for key in [
        "net/ipv4/conf/all/send_redirects",
        "net/ipv4/conf/switchd0/send_redirects",
    ] {
        let v = f.nodes[0].ns.exec(&["cat", &format!("/proc/sys/{key}")]);
        assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), "0", "{key}");
    }
    // Someone flushes switchd's table: it comes back.
    assert!(f.nodes[0]
        .ns
        .exec(&["nft", "delete", "table", "ip", "switchd"])
        .status
        .success());
    let back = (0..40).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(250));
        f.nodes[0]
            .ns
            .exec(&["nft", "list", "table", "ip", "switchd"])
            .status
            .success()
    });
    assert!(back, "the masquerade table was not re-applied");
}
