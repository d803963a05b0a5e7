//! `membership = "etcd"` against a real etcd (Debian's etcd-server, started by the tests
//! with a temporary data dir): nodes configured with only the cluster CIDR, etcd and their
//! underlay address lease distinct subnets, find each other, keep their subnets across
//! restarts, follow joins and leaves, and keep forwarding through an etcd outage. Needs
//! root; CI runs these as root.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use switchd_e2e::cluster::Underlay;
use switchd_e2e::etcd::{Etcd, LEASE_TTL};
use switchd_e2e::*;

struct Pod {
    ns: Netns,
    addr: Ipv4Addr,
}

/// Field order is drop order: switchd first, then pods, etcd, and the underlay last.
struct EtcdCluster {
    nodes: Vec<Node>,
    pods: Vec<Vec<Pod>>,
    etcd: Etcd,
    underlay: Underlay,
}

impl EtcdCluster {
    fn new() -> EtcdCluster {
        EtcdCluster::with(Etcd::start)
    }

    fn with(start: fn(&Underlay) -> Etcd) -> EtcdCluster {
        let underlay = Underlay::new();
        let etcd = start(&underlay);
        EtcdCluster {
            nodes: Vec::new(),
            pods: Vec::new(),
            etcd,
            underlay,
        }
    }

    /// Prepare a node on the underlay (cluster 10.244.0.0/16 unless `extra` says otherwise).
    fn prepare(&mut self, cluster: &str, extra: &str) -> Node {
        let ns = Netns::new("n");
        let addr = self.underlay.attach(&ns, 1500);
        self.etcd.node(ns, addr, cluster, extra)
    }

    /// Start one more node with `pods` pods.
    fn add_node(&mut self, pods: usize) -> usize {
        let mut node = self.prepare("10.244.0.0/16", "");
        node.launch();
        let pods = (0..pods)
            .map(|_| {
                let ns = Netns::new("p");
                let addr = node.add_pod(&ns);
                Pod { ns, addr }
            })
            .collect();
        self.nodes.push(node);
        self.pods.push(pods);
        self.nodes.len() - 1
    }
}

fn status(node: &Node) -> serde_json::Value {
    node.query("status")
}

fn subnet(node: &Node) -> String {
    status(node)["pod_cidr"].as_str().unwrap().to_string()
}

fn membership_state(node: &Node) -> String {
    status(node)["membership"]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The names of the peers `node` learned from etcd.
fn etcd_peers(node: &Node) -> Vec<String> {
    let peers = node.query("peers");
    let mut names: Vec<String> = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["source"] == "etcd")
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

/// Stream TCP from `from` to `to` on a thread until `deadline`; join for the result.
fn stream_until(
    from: &Pod,
    to: &Pod,
    deadline: Instant,
) -> std::thread::JoinHandle<(usize, u64, usize, u64, std::net::SocketAddr)> {
    let (from_ns, to_ns, to_addr) = (
        Netns::borrowed(&from.ns.name),
        Netns::borrowed(&to.ns.name),
        to.addr,
    );
    std::thread::spawn(move || {
        tcp_transfer_while(&from_ns, &to_ns, to_addr, move |_| {
            Instant::now() < deadline
        })
    })
}

fn names(nodes: &[&Node]) -> Vec<String> {
    let mut v: Vec<String> = nodes.iter().map(|n| n.ns.name.clone()).collect();
    v.sort();
    v
}

#[test]
fn three_nodes_lease_distinct_subnets_reach_each_other_and_keep_them_across_restarts() {
    let mut c = EtcdCluster::new();
    for _ in 0..3 {
        c.add_node(2);
    }
    let subnets: Vec<String> = c.nodes.iter().map(subnet).collect();
    let distinct: std::collections::HashSet<&String> = subnets.iter().collect();
    assert_eq!(distinct.len(), 3, "distinct subnets: {subnets:?}");
    for s in &subnets {
        let net: ipnet::Ipv4Net = s.parse().unwrap();
        assert_eq!(net.prefix_len(), 24);
        assert!("10.244.0.0/16"
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(&net));
    }
    for (i, node) in c.nodes.iter().enumerate() {
        let others: Vec<&Node> = c
            .nodes
            .iter()
            .filter(|n| n.ns.name != node.ns.name)
            .collect();
        wait_until(
            "every node sees the other two",
            Duration::from_secs(10),
            || etcd_peers(node) == names(&others),
        );
        // Pods got addresses from the leased subnet.
        let net: ipnet::Ipv4Net = subnets[i].parse().unwrap();
        assert!(c.pods[i].iter().all(|p| net.contains(&p.addr)));
    }
    // What a node publishes: everything a peer needs.
    let records = c.etcd.keys("/switchd/nodes/");
    assert_eq!(records.len(), 3, "{records:?}");
    let rec: serde_json::Value = serde_json::from_str(&records[0].1).unwrap();
    for field in [
        "name",
        "underlay_addr",
        "tunnel_port",
        "vni",
        "router_mac",
        "pod_cidr",
        "version",
    ] {
        assert!(!rec[field].is_null(), "record lacks {field}: {rec}");
    }

    let all: Vec<Ipv4Addr> = c.pods.iter().flatten().map(|p| p.addr).collect();
    for pod in c.pods.iter().flatten() {
        for &to in all.iter().filter(|a| **a != pod.addr) {
            assert!(pod.ns.ping(to), "{} -> {to}", pod.addr);
        }
    }
    for node in &c.nodes {
        for &to in &all {
            assert!(node.ns.ping(to), "node {} -> {to}", node.ns.name);
        }
    }

    // A clean restart and a crash: both nodes come back with the same subnet.
    c.nodes[0].restart();
    c.nodes[1].kill();
    c.nodes[1].launch();
    assert_eq!(subnet(&c.nodes[0]), subnets[0]);
    assert_eq!(subnet(&c.nodes[1]), subnets[1]);
    let (p0, p1, p2) = (&c.pods[0][0], &c.pods[1][0], &c.pods[2][0]);
    assert!(p2.ns.ping(p0.addr) && p2.ns.ping(p1.addr) && p0.ns.ping(p1.addr));
    assert_eq!(c.etcd.keys("/switchd/subnets/").len(), 3);
}

#[test]
fn a_joining_node_becomes_reachable_and_a_stopped_node_leaves_after_its_ttl() {
    let mut c = EtcdCluster::new();
    for _ in 0..3 {
        c.add_node(1);
    }
    let (from, to) = (&c.pods[0][0], &c.pods[1][0]);
    let deadline = Instant::now() + Duration::from_secs(12);
    let stream = stream_until(from, to, deadline);

    // A fourth node joins while the stream runs.
    let started = Instant::now();
    let n4 = c.add_node(1);
    let new_pod = c.pods[n4][0].addr;
    let first = &c.pods[0][0];
    wait_until(
        "node 1's pod reaches the new node's pod",
        Duration::from_secs(10),
        || {
            first
                .ns
                .exec(&["ping", "-c", "1", "-W", "1", &new_pod.to_string()])
                .status
                .success()
        },
    );
    eprintln!(
        "the new node was reachable {:?} after it started",
        started.elapsed()
    );

    // The third node stops; after its lease TTL it is gone from the others' peers.
    let gone = c.nodes[2].ns.name.clone();
    let gone_pod = c.pods[2][0].addr;
    c.nodes[2].stop();
    assert!(
        etcd_peers(&c.nodes[0]).contains(&gone),
        "still there within its TTL"
    );
    let took = wait_until(
        "the stopped node leaves the peers",
        Duration::from_secs(LEASE_TTL + 8),
        || !etcd_peers(&c.nodes[0]).contains(&gone),
    );
    eprintln!("the stopped node left the peers {took:?} after it stopped (TTL {LEASE_TTL} s)");
    let before = c.nodes[0].drops("no_peer");
    assert!(!first
        .ns
        .exec(&["ping", "-c", "1", "-W", "1", &gone_pod.to_string()])
        .status
        .success());
    assert!(
        c.nodes[0].drops("no_peer") > before,
        "traffic to the gone node's subnet is dropped as no_peer"
    );

    let (sent, sent_hash, received, received_hash, _) = stream.join().unwrap();
    assert_eq!(
        (received, received_hash),
        (sent, sent_hash),
        "the stream stayed intact"
    );
}

#[test]
fn an_etcd_outage_does_not_stop_forwarding_and_leases_are_renewed_after_it() {
    let mut c = EtcdCluster::new();
    c.add_node(1);
    c.add_node(1);
    wait_until("the nodes see each other", Duration::from_secs(10), || {
        etcd_peers(&c.nodes[0]).len() == 1 && etcd_peers(&c.nodes[1]).len() == 1
    });
    let (a, b) = (&c.pods[0][0], &c.pods[1][0]);
    let outage = Duration::from_secs(30);
    let deadline = Instant::now() + outage + Duration::from_secs(12);
    let stream = stream_until(a, b, deadline);
    std::thread::sleep(Duration::from_secs(1));
    let subnet_b = subnet(&c.nodes[1]);

    c.etcd.stop();
    let down = Instant::now();
    wait_until(
        "switchd notices etcd is gone",
        Duration::from_secs(15),
        || membership_state(&c.nodes[0]) == "unreachable",
    );
    assert_eq!(
        etcd_peers(&c.nodes[0]).len(),
        1,
        "the last known peers stay"
    );
    let (_, metrics) = metrics_get(&c.nodes[0].ns, "/metrics");
    assert!(metrics.contains("switchd_etcd_connected 0"), "{metrics}");
    // A node restarted during the outage starts from what it remembers.
    c.nodes[1].kill();
    c.nodes[1].launch();
    assert_eq!(subnet(&c.nodes[1]), subnet_b);
    assert_eq!(membership_state(&c.nodes[1]), "unreachable");
    assert_eq!(etcd_peers(&c.nodes[1]).len(), 1, "peers from its cache");
    assert!(
        a.ns.ping(b.addr) && b.ns.ping(a.addr),
        "forwarding goes on without etcd"
    );
    std::thread::sleep(outage.saturating_sub(down.elapsed()));

    c.etcd.resume();
    for node in &c.nodes {
        wait_until("switchd reconnects", Duration::from_secs(20), || {
            membership_state(node) == "connected"
        });
    }
    let (_, metrics) = metrics_get(&c.nodes[0].ns, "/metrics");
    assert!(metrics.contains("switchd_etcd_connected 1"), "{metrics}");
    let (sent, sent_hash, received, received_hash, _) = stream.join().unwrap();
    assert_eq!(
        (received, received_hash),
        (sent, sent_hash),
        "the stream survived the outage"
    );
    assert!(sent > 0);
    // Leases are being renewed: after more than a TTL both records are still there.
    std::thread::sleep(Duration::from_secs(LEASE_TTL + 2));
    assert_eq!(c.etcd.keys("/switchd/nodes/").len(), 2);
    assert_eq!(c.etcd.keys("/switchd/subnets/").len(), 2);
    assert!(a.ns.ping(b.addr));
}

#[test]
fn ten_nodes_started_at_once_get_distinct_subnets_and_a_full_cluster_says_so() {
    let mut c = EtcdCluster::new();
    // 16 subnets for 10 nodes: they race for the same ones often.
    let mut nodes: Vec<Node> = (0..10).map(|_| c.prepare("10.244.0.0/20", "")).collect();
    for n in &mut nodes {
        n.spawn();
    }
    for n in &mut nodes {
        n.wait_ready();
    }
    let subnets: std::collections::HashSet<String> = nodes.iter().map(subnet).collect();
    assert_eq!(subnets.len(), 10, "distinct: {subnets:?}");

    // A second machine with an existing node's name is refused, not handed its subnet.
    let taken_name = nodes[0].ns.name.clone();
    let mut twin = c.prepare("10.244.0.0/20", "");
    let config = std::fs::read_to_string(twin.dir.join("switchd.toml")).unwrap();
    let config = config.replacen(
        &format!("node_name = \"{}\"", twin.ns.name),
        &format!("node_name = \"{taken_name}\""),
        1,
    );
    std::fs::write(twin.dir.join("switchd.toml"), config).unwrap();
    twin.spawn();
    let exit = twin
        .wait_exit(Duration::from_secs(20))
        .expect("the twin exits");
    assert!(!exit.success());
    let log = twin.log();
    assert!(
        log.contains(&format!(
            "node_name \"{taken_name}\" is already used by the live node at"
        )),
        "{log}"
    );
    let record: serde_json::Value =
        serde_json::from_str(&c.etcd.keys(&format!("/switchd/nodes/{taken_name}"))[0].1).unwrap();
    let first_addr = status(&nodes[0])["underlay"]
        .as_str()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        record["underlay_addr"], first_addr,
        "the record still points at the first machine"
    );
    c.nodes.extend(nodes);
    c.nodes.push(twin);

    // Two /24s in the cluster: the third node cannot get one and says why.
    let small = "10.245.0.0/23";
    let extra = "node_subnet_len = 24\netcd_prefix = \"/small/\"\n";
    for _ in 0..2 {
        let mut n = c.prepare(small, extra);
        n.launch();
        c.nodes.push(n);
    }
    let mut third = c.prepare(small, extra);
    third.spawn();
    let status = third
        .wait_exit(Duration::from_secs(20))
        .expect("the node without a subnet exits");
    assert!(!status.success());
    let log = third.log();
    assert!(
        log.contains("no free /24 left in cluster_cidr 10.245.0.0/23"),
        "{log}"
    );
    c.nodes.push(third);
}

#[test]
fn a_node_whose_subnet_was_taken_while_it_was_cut_off_says_so_and_keeps_its_pods() {
    let mut c = EtcdCluster::new();
    // Room for two /24s only.
    let small = "10.244.0.0/23";
    let mut a = c.prepare(small, "");
    a.launch();
    let mut b = c.prepare(small, "");
    b.launch();
    let pod_a = Netns::new("p");
    let addr_a = a.add_pod(&pod_a);
    let subnet_a = subnet(&a);

    // Cut node A off from etcd (not from the underlay): its lease runs out.
    let blackhole = ["ip", "route", "add", "blackhole", "192.168.77.250/32"];
    assert!(a.ns.exec(&blackhole).status.success());
    wait_until(
        "A's lease expires",
        Duration::from_secs(LEASE_TTL + 10),
        || c.etcd.keys("/switchd/nodes/").len() == 1,
    );
    // etcd may expire the lease a moment before A's failing keep-alive tells A.
    wait_until("A notices it is cut off", Duration::from_secs(5), || {
        membership_state(&a) == "unreachable"
    });
    // A third node needs a subnet; the only one not held is A's reservation, so it gets it.
    let mut n3 = c.prepare(small, "");
    n3.launch();
    assert_eq!(subnet(&n3), subnet_a);

    // A comes back: it says loudly that its subnet is gone and keeps its pods as they are.
    assert!(a
        .ns
        .exec(&["ip", "route", "del", "blackhole", "192.168.77.250/32"])
        .status
        .success());
    wait_until("A notices", Duration::from_secs(20), || {
        membership_state(&a) == "subnet_lost"
    });
    assert!(a.log().contains("ANOTHER NODE HOLDS THIS NODE'S SUBNET"));
    assert_eq!(subnet(&a), subnet_a, "not renumbered");
    assert_eq!(a.pod_ports(), 1);
    let gateway = Ipv4Addr::from(u32::from(addr_a) & !0xff | 1);
    assert!(pod_a.ping(gateway), "A's pod still reaches its gateway");
    let (_, metrics) = metrics_get(&a.ns, "/metrics");
    assert!(metrics.contains("switchd_etcd_subnet_lost 1"), "{metrics}");

    // Restarted, A refuses to start rather than renumber its pods.
    a.stop();
    a.spawn();
    let status = a.wait_exit(Duration::from_secs(20)).expect("A exits");
    assert!(!status.success());
    let log = a.log();
    assert!(
        log.contains(&format!(
            "subnet {subnet_a}, which this node's pods use, is held by node"
        )),
        "{log}"
    );
    assert!(log.contains("refusing to renumber pods"), "{log}");
    c.nodes.extend([a, b, n3]);
    c.pods.push(vec![Pod {
        ns: pod_a,
        addr: addr_a,
    }]);
}

#[test]
fn nodes_lease_and_peer_over_tls_with_client_certificates() {
    let mut c = EtcdCluster::with(Etcd::start_tls);
    assert!(c.etcd.url.starts_with("https://"));
    c.add_node(1);
    c.add_node(1);
    wait_until(
        "the nodes see each other over TLS",
        Duration::from_secs(10),
        || etcd_peers(&c.nodes[0]).len() == 1 && etcd_peers(&c.nodes[1]).len() == 1,
    );
    assert_ne!(subnet(&c.nodes[0]), subnet(&c.nodes[1]));
    assert!(c.pods[0][0].ns.ping(c.pods[1][0].addr));
    assert_eq!(membership_state(&c.nodes[0]), "connected");

    // Without a client certificate etcd refuses us, and switchd says so while it waits.
    let mut stranger = c.prepare("10.244.0.0/16", "");
    let config = std::fs::read_to_string(stranger.dir.join("switchd.toml")).unwrap();
    let config: String = config
        .lines()
        .filter(|l| !l.starts_with("etcd_cert") && !l.starts_with("etcd_key"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(stranger.dir.join("switchd.toml"), config).unwrap();
    stranger.spawn();
    wait_until("the refusal is logged", Duration::from_secs(15), || {
        stranger
            .log()
            .contains("etcd is unreachable and this node has no subnet yet")
    });
    // Depending on TLS 1.3 timing the client sees the alert or only a closed stream; etcd
    // says why it refused.
    wait_until("etcd logs the refusal", Duration::from_secs(15), || {
        c.etcd.log().contains("client didn't provide a certificate")
    });
    assert!(
        !stranger.switchctl(&["status"]).status.success(),
        "not ready without a subnet"
    );
    c.nodes.push(stranger);
}

#[test]
fn nodes_write_their_subnets_back_when_etcd_lost_its_data() {
    let mut c = EtcdCluster::new();
    c.add_node(1);
    c.add_node(1);
    let before: Vec<String> = c.nodes.iter().map(subnet).collect();
    c.etcd.stop();
    c.etcd.wipe();
    c.etcd.resume();
    // Each node re-claims the subnet it holds and publishes itself again: nothing is
    // renumbered and the nodes find each other again.
    wait_until(
        "both nodes are back in etcd",
        Duration::from_secs(30),
        || c.etcd.keys("/switchd/nodes/").len() == 2,
    );
    let held: Vec<String> = c
        .etcd
        .keys("/switchd/subnets/")
        .into_iter()
        .map(|(k, _)| k.rsplit('/').next().unwrap().replacen('-', "/", 1))
        .collect();
    for s in &before {
        assert!(held.contains(s), "{s} is held again: {held:?}");
    }
    assert_eq!(c.nodes.iter().map(subnet).collect::<Vec<_>>(), before);
    // A node that reconnects before the other has written itself back sees it missing
    // for a moment, and back once its record returns.
    for node in &c.nodes {
        wait_until(
            "connected again, with its peer",
            Duration::from_secs(20),
            || membership_state(node) == "connected" && etcd_peers(node).len() == 1,
        );
    }
    assert!(c.pods[0][0].ns.ping(c.pods[1][0].addr));
}

#[test]
fn encrypting_nodes_publish_their_keys_and_a_rotated_key_is_taken_up_while_a_stream_flows() {
    let mut c = EtcdCluster::new();
    for _ in 0..2 {
        let mut node = c.prepare("10.244.0.0/16", "encryption = \"wireguard\"\n");
        node.launch();
        let ns = Netns::new("p");
        let addr = node.add_pod(&ns);
        c.nodes.push(node);
        c.pods.push(vec![Pod { ns, addr }]);
    }
    for (i, node) in c.nodes.iter().enumerate() {
        let other = &c.nodes[1 - i];
        wait_until("each node sees the other", Duration::from_secs(10), || {
            etcd_peers(node) == names(&[other])
        });
    }
    let key_of = |node: &Node| {
        status(node)["wireguard"]["public_key"]
            .as_str()
            .unwrap_or_else(|| panic!("no WireGuard key in status: {}", status(node)))
            .to_string()
    };
    let published = |name: &str| -> String {
        let records = c.etcd.keys("/switchd/nodes/");
        let rec = records
            .iter()
            .map(|(_, v)| serde_json::from_str::<serde_json::Value>(v).unwrap())
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no record of {name}: {records:?}"));
        assert_eq!(rec["wireguard_port"], 51820, "{rec}");
        rec["public_key"].as_str().unwrap_or("").to_string()
    };
    for node in &c.nodes {
        assert_eq!(published(&node.ns.name), key_of(node));
    }
    let (p0, p1) = (&c.pods[0][0], &c.pods[1][0]);
    assert!(p0.ns.ping(p1.addr) && p1.ns.ping(p0.addr));
    assert_eq!(c.nodes[1].drops("unencrypted"), 0);

    // Node 1 gets a new key while a stream runs from node 0's pod to its pod.
    let old = key_of(&c.nodes[1]);
    let stream = stream_until(p0, p1, Instant::now() + Duration::from_secs(6));
    std::thread::sleep(Duration::from_millis(500));
    let out = run(std::process::Command::new(bin_dir().join("switchd"))
        .args(["--rotate-key", "--config"])
        .arg(c.nodes[1].dir.join("switchd.toml")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_ne!(new, old);
    c.nodes[1].restart();
    let (p0, p1) = (&c.pods[0][0], &c.pods[1][0]);
    let resumed = wait_until("pod 0 reaches pod 1 again", Duration::from_secs(10), || {
        p0.ns.ping(p1.addr)
    });
    eprintln!("key rotated: traffic resumed {resumed:?} after the restarted node answered");
    assert_eq!(key_of(&c.nodes[1]), new);
    assert_eq!(published(&c.nodes[1].ns.name), new);
    let (sent, h_sent, received, h_received, _) = stream.join().unwrap();
    assert!(sent > 0);
    assert_eq!(
        (received, h_received),
        (sent, h_sent),
        "the stream did not survive the key change"
    );
}

/// Dual-stack with etcd: `cluster_cidr_v6` alone. Each node's IPv6 /64 follows its leased
/// IPv4 subnet, is published in its record, reaches the peers' tables, and comes back the
/// same after a restart; pods reach each other over IPv6 across nodes.
#[test]
fn dual_stack_nodes_derive_their_ipv6_prefix_from_the_lease_and_publish_it() {
    let mut c = EtcdCluster::new();
    let mut pods6 = Vec::new();
    for _ in 0..2 {
        let mut node = c.prepare("10.244.0.0/16", "cluster_cidr_v6 = \"fd10:244::/48\"\n");
        node.launch();
        let ns = Netns::new("p");
        let r = node.cni("ADD", &ns);
        assert!(r.ok(), "{}", r.json);
        let a6 = r.address_v6().expect("an IPv6 address");
        pods6.push((ns, a6, r.address()));
        c.nodes.push(node);
        c.pods.push(Vec::new());
    }
    let prefixes: Vec<String> = c
        .nodes
        .iter()
        .map(|n| {
            let v4: ipnet::Ipv4Net = subnet(n).parse().unwrap();
            let index = (u32::from(v4.network()) - u32::from(Ipv4Addr::new(10, 244, 0, 0))) >> 8;
            format!("fd10:244:0:{index:x}::/64")
        })
        .collect();
    for ((_, a6, _), prefix) in pods6.iter().zip(&prefixes) {
        let net: ipnet::Ipv6Net = prefix.parse().unwrap();
        assert!(
            net.contains(a6),
            "{a6} is in the /64 of its node's lease {prefix}"
        );
    }
    let records = c.etcd.keys("/switchd/nodes/");
    for (_, rec) in &records {
        let rec: serde_json::Value = serde_json::from_str(rec).unwrap();
        assert!(
            prefixes.iter().any(|p| rec["pod_cidr_v6"] == p.as_str()),
            "{rec}"
        );
    }
    for node in &c.nodes {
        wait_until("the peer is known", Duration::from_secs(10), || {
            etcd_peers(node).len() == 1
        });
    }
    let wait_ping = |from: &Netns, to: std::net::Ipv6Addr| {
        wait_until("IPv6 across nodes", Duration::from_secs(10), || {
            from.ping(to)
        })
    };
    wait_ping(&pods6[0].0, pods6[1].1);
    wait_ping(&pods6[1].0, pods6[0].1);
    // `switchctl status` names the prefix; the same one after a restart.
    let before = c.nodes[0].query("status")["pod_cidr_v6"].clone();
    assert_eq!(before, prefixes[0].as_str());
    c.nodes[0].restart();
    assert_eq!(c.nodes[0].query("status")["pod_cidr_v6"], before);
    wait_ping(&pods6[1].0, pods6[0].1);
    let ports = c.nodes[0].query("ports").to_string();
    assert!(ports.contains(&pods6[0].1.to_string()), "{ports}");
}
