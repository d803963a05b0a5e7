//! Kubernetes Services, cluster DNS and egress through switchd, with the rules kube-proxy
//! writes in each node's netns (no apiserver: `switchd_e2e::kube_proxy` writes them),
//! modelled on sig-network's e2e "Granular Checks: Services", `service.go`, `dns.go` and
//! `conntrack.go`. Needs root.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchd_e2e::cluster::Cluster;
use switchd_e2e::dns::{resolve, Dnsmasq};
use switchd_e2e::echo::{ask_tcp, ask_udp, EchoServer};
use switchd_e2e::kube_proxy::{self, Mode, Proto, Service};
use switchd_e2e::*;

const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// One endpoint, on node 1 (TCP and UDP).
const SOLO: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 23);
/// Two endpoints, one per node, and NodePort [`NODE_PORT`].
const PAIR: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const NODE_PORT: u16 = 30080;
/// The same two endpoints with sessionAffinity: ClientIP.
const STICKY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 31);
/// `default/kubernetes`: 443 → the apiserver on node 2's own address, port 6443.
const KUBERNETES: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// `kube-system/kube-dns`: 53 (UDP and TCP) → the DNS pod on node 2.
const KUBE_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// Two nodes on an underlay whose router is the outside host; on node 1 endpoint `ep1`, on
/// node 2 endpoint `ep2`, a host-network "apiserver" and the DNS pod; a client pod per
/// node. Fields drop in order: servers before namespaces.
struct Fixture {
    /// The Services in every node's rules.
    services: Vec<Service>,
    _dns: Vec<Dnsmasq>,
    _servers: Vec<EchoServer>,
    clients: Vec<(Netns, Ipv4Addr)>,
    endpoints: Vec<(Netns, Ipv4Addr)>,
    _dns_pod: Netns,
    c: Cluster,
}

fn pod(node: &Node, tag: &str) -> (Netns, Ipv4Addr) {
    let ns = Netns::new(tag);
    let addr = node.add_pod(&ns);
    (ns, addr)
}

fn services(endpoints: &[Ipv4Addr], apiserver: Ipv4Addr, dns: Ipv4Addr) -> Vec<Service> {
    let (ep1, ep2) = (endpoints[0], endpoints[1]);
    vec![
        Service::new("solo", Proto::Tcp, SOLO, 80).endpoint(ep1, 8080),
        Service::new("solou", Proto::Udp, SOLO, 80).endpoint(ep1, 8080),
        Service::new("pair", Proto::Tcp, PAIR, 80)
            .endpoint(ep1, 8080)
            .endpoint(ep2, 8080)
            .with_node_port(NODE_PORT),
        Service::new("sticky", Proto::Tcp, STICKY, 80)
            .endpoint(ep1, 8080)
            .endpoint(ep2, 8080)
            .with_affinity(),
        Service::new("kubernetes", Proto::Tcp, KUBERNETES, 443).endpoint(apiserver, 6443),
        Service::new("dns", Proto::Tcp, KUBE_DNS, 53).endpoint(dns, 53),
        Service::new("dnsu", Proto::Udp, KUBE_DNS, 53).endpoint(dns, 53),
    ]
}

fn fixture(mode: Mode) -> Fixture {
    let c = Cluster::with_outside(2);
    let (nodes, infos, outside_ns, outside_addr) = (&c.nodes, &c.infos, &c.outside, c.outside_addr);
    let endpoints = vec![pod(&nodes[0], "ep"), pod(&nodes[1], "ep")];
    let clients: Vec<(Netns, Ipv4Addr)> = nodes.iter().map(|n| pod(n, "c")).collect();
    let (dns_pod, dns_addr) = pod(&nodes[1], "dns");
    let apiserver = infos[1].underlay;
    let ep_addrs: Vec<Ipv4Addr> = endpoints.iter().map(|e| e.1).collect();
    let svcs = services(&ep_addrs, apiserver, dns_addr);
    for (node, info) in nodes.iter().zip(infos) {
        kube_proxy::apply(&node.ns, mode, CLUSTER_CIDR, info.underlay, &svcs);
    }
    let servers = vec![
        EchoServer::start(&endpoints[0].0, "ep1", 8080),
        EchoServer::start(&endpoints[1].0, "ep2", 8080),
        EchoServer::start(&nodes[1].ns, "apiserver", 6443),
        EchoServer::start(outside_ns, "outside", 9000),
    ];
    // The outside resolver knows one name, which resolves to the outside host itself;
    // the cluster's DNS pod answers cluster names and forwards everything else there.
    let dns = vec![
        Dnsmasq::start(outside_ns, &[("www.outside.test", outside_addr)], None),
        Dnsmasq::start(
            &dns_pod,
            &[("pair.default.svc.cluster.local", PAIR)],
            Some(outside_addr),
        ),
    ];
    Fixture {
        services: svcs,
        _dns: dns,
        _servers: servers,
        clients,
        endpoints,
        _dns_pod: dns_pod,
        c,
    }
}

impl Fixture {
    /// Rewrite every node's rules (iptables-nft) for `services`, as a kube-proxy sync does.
    fn apply(&self, services: &[Service]) {
        for (node, info) in self.c.nodes.iter().zip(&self.c.infos) {
            kube_proxy::apply(
                &node.ns,
                Mode::IptablesNft,
                CLUSTER_CIDR,
                info.underlay,
                services,
            );
        }
    }
}

fn ask(ns: &Netns, to: Ipv4Addr, port: u16, what: &str) -> switchd_e2e::echo::Answer {
    ask_tcp(ns, to, port).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The Granular Checks for one kube-proxy mode: every client pod (same node as the
/// endpoint, other node), the node itself, the outside host and the endpoint itself.
fn granular_checks(mode: Mode) {
    let f = fixture(mode);
    let node_ips: Vec<Ipv4Addr> = f.c.infos.iter().map(|i| i.underlay).collect();
    for (i, (ns, addr)) in f.clients.iter().enumerate() {
        let on = format!("{mode:?}, client on node {}", i + 1);
        // One endpoint: TCP, and UDP with 2,000-byte requests and replies (fragments).
        let a = ask(ns, SOLO, 80, &format!("{on}: TCP to ClusterIP"));
        assert_eq!(a.server, "ep1", "{on}");
        assert_eq!(
            a.client, *addr,
            "{on}: the client pod's address is preserved"
        );
        let a = ask_udp(ns, SOLO, 80, 2000, 2000)
            .unwrap_or_else(|e| panic!("{on}: UDP 2000 B to ClusterIP: {e}"));
        assert_eq!(a.client, *addr, "{on}: UDP");
        assert_eq!(
            (a.request_len, a.reply_len),
            (2000, 2000),
            "{on}: fragments both ways"
        );
        // Two endpoints on different nodes: both answer, each sees the pod's address.
        let mut seen = BTreeSet::new();
        for _ in 0..30 {
            let a = ask(ns, PAIR, 80, &format!("{on}: two-endpoint ClusterIP"));
            assert_eq!(a.client, *addr, "{on}: two-endpoint service");
            seen.insert(a.server);
        }
        assert_eq!(seen, ["ep1".to_string(), "ep2".into()].into(), "{on}");
        // ClientIP affinity: every answer from the endpoint of the first.
        let first = ask(ns, STICKY, 80, &format!("{on}: affinity")).server;
        for _ in 0..15 {
            assert_eq!(
                ask(ns, STICKY, 80, &on).server,
                first,
                "{on}: affinity sticks"
            );
        }
        // `kubernetes`: an endpoint that is node 2's own address.
        let a = ask(ns, KUBERNETES, 443, &format!("{on}: kubernetes service"));
        assert_eq!(a.server, "apiserver", "{on}");
        // NodePort of the pod's own node and of the other node.
        for ip in &node_ips {
            let a = ask(ns, *ip, NODE_PORT, &format!("{on}: NodePort on {ip}"));
            assert!(a.server.starts_with("ep"), "{on}: {a:?}");
        }
    }
    for (node, info) in f.c.nodes.iter().zip(&f.c.infos) {
        let a = ask(
            &node.ns,
            SOLO,
            80,
            &format!("{mode:?}: {} → ClusterIP", info.name),
        );
        assert_eq!(a.server, "ep1");
        let a = ask(
            &node.ns,
            PAIR,
            80,
            &format!("{mode:?}: {} → ClusterIP", info.name),
        );
        assert!(a.server.starts_with("ep"));
    }
    for ip in &node_ips {
        let a = ask(
            &f.c.outside,
            *ip,
            NODE_PORT,
            &format!("{mode:?}: outside → NodePort {ip}"),
        );
        assert!(a.server.starts_with("ep"), "{a:?}");
    }
    // Hairpin: the endpoint reaches itself through its own Service; kube-proxy
    // masquerades that to the node's address on switchd0.
    let a = ask(&f.endpoints[0].0, SOLO, 80, &format!("{mode:?}: hairpin"));
    assert_eq!(a.server, "ep1");
    assert_eq!(
        a.client,
        f.c.infos[0].gateway(),
        "{mode:?}: hairpin is masqueraded"
    );
    for node in &f.c.nodes {
        let stats = node.query("stats");
        assert!(stats["flows"]["tracked"].as_u64().unwrap() >= 2, "{stats}");
        assert!(stats["flows"]["returned"].as_u64().unwrap() >= 2, "{stats}");
        // The same counters for Prometheus.
        let (_, body) = metrics_get(&node.ns, "/metrics");
        let value = |name: &str| -> f64 {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in\n{body}"))
        };
        assert!(value("switchd_flows_tracked_total") >= 2.0);
        assert!(value("switchd_flows_returned_total") >= 2.0);
        assert!(value("switchd_flows_active") >= 1.0);
        assert_eq!(value("switchd_flows_capacity"), 262144.0);
        assert_eq!(value("switchd_masquerade_installed"), 1.0);
    }
}

#[test]
fn granular_service_checks_with_kube_proxy_iptables_nft() {
    granular_checks(Mode::IptablesNft);
}

#[test]
fn granular_service_checks_with_kube_proxy_iptables_legacy() {
    granular_checks(Mode::IptablesLegacy);
}

#[test]
fn granular_service_checks_with_kube_proxy_nftables() {
    granular_checks(Mode::Nftables);
}

#[test]
fn pods_resolve_cluster_and_outside_names_through_the_kube_dns_cluster_ip() {
    let f = fixture(Mode::IptablesNft);
    for (i, (ns, _)) in f.clients.iter().enumerate() {
        for tcp in [false, true] {
            let on = format!("client on node {}, tcp={tcp}", i + 1);
            let got = resolve(ns, KUBE_DNS, "pair.default.svc.cluster.local", tcp)
                .unwrap_or_else(|e| panic!("{on}: cluster name: {e}"));
            assert_eq!(got, [PAIR], "{on}");
            // Forwarded by the DNS pod to the outside resolver, which only answers
            // because egress is masqueraded to node 2's address.
            let got = resolve(ns, KUBE_DNS, "www.outside.test", tcp)
                .unwrap_or_else(|e| panic!("{on}: outside name: {e}"));
            assert_eq!(got, [f.c.outside_addr], "{on}");
        }
        // And the name leads somewhere: resolve, then connect by it through the Service.
        let a = ask(ns, PAIR, 80, "the resolved Service");
        assert!(a.server.starts_with("ep"));
    }
}

#[test]
fn egress_leaves_with_the_node_address_and_direct_pod_traffic_is_not_tracked() {
    let f = fixture(Mode::IptablesNft);
    let out_addr = f.c.outside_addr;
    let (c1, _) = &f.clients[0];
    let a = ask(c1, out_addr, 9000, "pod → outside host over TCP");
    assert_eq!(
        a.client, f.c.infos[0].underlay,
        "masqueraded to the node's address"
    );
    let a = ask_udp(c1, out_addr, 9000, 10, 0).expect("pod → outside host over UDP");
    assert_eq!(a.client, f.c.infos[0].underlay);
    assert!(c1.ping(out_addr), "ping to a host outside the cluster");
    let status = f.c.nodes[0].query("status");
    assert_eq!(status["masquerade"], "installed", "{status}");
    // Direct pod → pod traffic records no flow.
    let tracked = |n: &Node| n.query("stats")["flows"]["tracked"].as_u64().unwrap();
    let before = tracked(&f.c.nodes[0]);
    assert!(c1.ping(f.endpoints[0].1));
    assert!(c1.ping(f.endpoints[1].1));
    assert_eq!(before, tracked(&f.c.nodes[0]));
    for key in [
        "net/ipv4/conf/all/send_redirects",
        "net/ipv4/conf/switchd0/send_redirects",
    ] {
        let v = f.c.nodes[0].ns.exec(&["cat", &format!("/proc/sys/{key}")]);
        assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), "0", "{key}");
    }
    // Someone flushes switchd's table: it comes back.
    assert!(f.c.nodes[0]
        .ns
        .exec(&["nft", "delete", "table", "ip", "switchd"])
        .status
        .success());
    let back = (0..40).any(|_| {
        std::thread::sleep(Duration::from_millis(250));
        f.c.nodes[0]
            .ns
            .exec(&["nft", "list", "table", "ip", "switchd"])
            .status
            .success()
    });
    assert!(back, "the masquerade table was not re-applied");
}

/// A UDP client that keeps sending from one socket (one 5-tuple) to `to:port` every
/// 100 ms and records who answered, until dropped.
struct UdpPinger {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpPinger {
    fn start(ns: &Netns, to: Ipv4Addr, port: u16) -> UdpPinger {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s2, seen2) = (stop.clone(), seen.clone());
        let thread = ns.spawn(move || {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut buf = [0u8; 2048];
            while !s2.load(Ordering::Relaxed) {
                let _ = s.send_to(b"hello", (to, port));
                // Only answers from the ClusterIP count (a reply straight from the
                // endpoint's address would be refused by a real client's connected socket).
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    if from != std::net::SocketAddr::from((to, port)) {
                        continue;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let name = text
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    seen2.lock().unwrap().push(name);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        UdpPinger {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Wait until `server` has answered at least once after the answers seen so far.
    fn wait_for(&self, server: &str, limit: Duration) -> Result<(), String> {
        let from = self.seen.lock().unwrap().len();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.seen.lock().unwrap()[from..]
                .iter()
                .any(|s| s == server)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let tail: Vec<String> = self.seen.lock().unwrap()[from..].to_vec();
        Err(format!(
            "no answer from {server} in {limit:?}; answers since: {tail:?}"
        ))
    }
}

impl Drop for UdpPinger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// e2e conntrack "should be able to preserve UDP traffic when server pod cycles": the
/// server behind a UDP ClusterIP is replaced by a pod with another address while clients
/// on both nodes keep sending from the same socket; once kube-proxy has rewritten its
/// rules and deleted the Service's UDP conntrack entries, the new pod answers them.
#[test]
fn udp_clients_keep_working_when_the_server_pod_is_replaced() {
    const CYCLE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
    let f = fixture(Mode::IptablesNft);
    // kube-proxy's sync after the endpoints changed: the rules rewritten, then the
    // Service's UDP conntrack entries deleted.
    let rules = |server: Ipv4Addr| {
        f.apply(&[Service::new("cycle", Proto::Udp, CYCLE, 80).endpoint(server, 8080)]);
        for node in &f.c.nodes {
            kube_proxy::flush_udp_conntrack(&node.ns, CYCLE);
        }
    };
    let (old_ns, old_addr) = pod(&f.c.nodes[0], "srvA");
    let old = EchoServer::start(&old_ns, "serverA", 8080);
    rules(old_addr);
    let pingers: Vec<UdpPinger> = f
        .clients
        .iter()
        .map(|(ns, _)| UdpPinger::start(ns, CYCLE, 80))
        .collect();
    for p in &pingers {
        p.wait_for("serverA", Duration::from_secs(10)).unwrap();
    }
    // The replacement is scheduled on the other node and gets another address.
    let (new_ns, new_addr) = pod(&f.c.nodes[1], "srvB");
    assert_ne!(new_addr, old_addr);
    let _new = EchoServer::start(&new_ns, "serverB", 8080);
    drop(old);
    let del = f.c.nodes[0].cni("DEL", &old_ns);
    assert!(del.ok(), "DEL {:?}", del.json);
    drop(old_ns);
    rules(new_addr);
    for (i, p) in pingers.iter().enumerate() {
        p.wait_for("serverB", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("client on node {}: {e}", i + 1));
    }
}

fn send(conn: &mut TcpStream, text: &str) {
    conn.write_all(format!("{text}\n").as_bytes())
        .unwrap_or_else(|e| panic!("send {text:?}: {e}"));
}

fn recv(conn: &mut BufReader<TcpStream>, what: &str) -> String {
    let mut line = String::new();
    match conn.read_line(&mut line) {
        Ok(n) if n > 0 => line.trim_end().to_string(),
        Ok(_) => panic!("{what}: the connection was closed"),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Service connections open across a crash of switchd: the endpoint speaks first after
/// the restart, so its reply must find the flow the previous switchd recorded (kept in
/// `switchd.flows` beside the socket), or it would be switched straight to the client pod
/// from the endpoint's address and the client would reset the connection.
#[test]
fn service_connections_survive_a_crash_and_restart_of_switchd() {
    const HELD: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 60);
    let mut f = fixture(Mode::IptablesNft);
    let mut svcs = f.services.clone();
    svcs.push(Service::new("held", Proto::Tcp, HELD, 80).endpoint(f.endpoints[0].1, 7070));
    f.apply(&svcs);
    let listener = f.endpoints[0]
        .0
        .spawn(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 7070)).unwrap())
        .join()
        .unwrap();
    // One connection per client pod: endpoint on the same node, and on the other node.
    let mut clients: Vec<(TcpStream, BufReader<TcpStream>)> = f
        .clients
        .iter()
        .map(|(ns, _)| {
            let c = ns
                .spawn(|| TcpStream::connect_timeout(&(HELD, 80).into(), Duration::from_secs(3)))
                .join()
                .unwrap()
                .expect("connect through the ClusterIP");
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            (c.try_clone().unwrap(), BufReader::new(c))
        })
        .collect();
    // Each accepted connection, in the order of `f.clients`, matched by the client
    // address the endpoint sees (preserved through the ClusterIP).
    let mut served: Vec<(Ipv4Addr, TcpStream, BufReader<TcpStream>)> = (0..clients.len())
        .map(|_| {
            let (c, peer) = listener.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let std::net::IpAddr::V4(ip) = peer.ip() else {
                panic!("{peer}")
            };
            (ip, c.try_clone().unwrap(), BufReader::new(c))
        })
        .collect();
    served.sort_by_key(|(ip, _, _)| {
        f.clients
            .iter()
            .position(|(_, a)| a == ip)
            .unwrap_or_else(|| panic!("a connection from {ip}, not from a client pod"))
    });
    let mut served: Vec<(TcpStream, BufReader<TcpStream>)> =
        served.into_iter().map(|(_, c, r)| (c, r)).collect();
    for i in 0..clients.len() {
        send(&mut clients[i].0, "before");
        assert_eq!(recv(&mut served[i].1, "server reads"), "before");
        send(&mut served[i].0, "ack");
        assert_eq!(recv(&mut clients[i].1, "client reads"), "ack");
    }

    for node in &mut f.c.nodes {
        node.kill();
        node.launch();
        let stats = node.query("stats");
        assert!(
            stats["flows"]["active"].as_u64().unwrap() >= 1,
            "the flows came back with the restart: {stats}"
        );
        assert!(
            node.log().contains("adopted the translated flows"),
            "{}",
            node.log()
        );
    }
    for i in 0..clients.len() {
        let on = format!("client on node {}", i + 1);
        // The endpoint speaks first.
        send(&mut served[i].0, "after");
        assert_eq!(
            recv(
                &mut clients[i].1,
                &format!("{on}: the endpoint's data after the restart")
            ),
            "after"
        );
        send(&mut clients[i].0, "again");
        assert_eq!(
            recv(&mut served[i].1, &format!("{on}: the server reads")),
            "again"
        );
    }
}
