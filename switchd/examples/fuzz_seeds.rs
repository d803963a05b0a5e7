//! Seed corpora for the fuzz targets in `fuzz/`, from the frames the unit tests craft:
//! `cargo run --release -p switchd --example fuzz_seeds -- DIR` writes `DIR/TARGET/NAME`.
//! (scripts/fuzz.sh runs it before fuzzing.)

use std::net::Ipv4Addr;
use std::path::Path;

use switchd::datapath::craft;
use switchd::datapath::frame::{mac_for_ip, VNET_HDR_LEN};
use switchd::datapath::vxlan::{self, DATAGRAM_OFFSET};

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("create the seed directory");
    std::fs::write(d.join(name), bytes).expect("write a seed");
}

fn with(sel: u8, frame: &[u8]) -> Vec<u8> {
    let mut v = vec![sel];
    v.extend_from_slice(frame);
    v
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/seeds".into());
    let dir = Path::new(&dir);
    let ip = |c: u8, d: u8| Ipv4Addr::new(10, 244, c, d);
    let gw = mac_for_ip(ip(1, 1));

    // forward: selector byte (port) + virtio-net header + frame.
    let local = craft::ipv4_udp(
        mac_for_ip(ip(1, 2)),
        mac_for_ip(ip(1, 3)),
        ip(1, 2),
        ip(1, 3),
        32,
    );
    let remote = craft::ipv4_packet(mac_for_ip(ip(1, 2)), gw, ip(1, 2), ip(2, 9), 6, 80, 0);
    let big = craft::ipv4_packet(mac_for_ip(ip(1, 2)), gw, ip(1, 2), ip(2, 9), 1, 0, 1480);
    let outside = craft::ipv4_packet(
        mac_for_ip(ip(1, 2)),
        gw,
        ip(1, 2),
        Ipv4Addr::new(10, 96, 0, 10),
        17,
        53,
        0,
    );
    let from_node = craft::ipv4_packet(gw, mac_for_ip(ip(1, 3)), ip(1, 2), ip(1, 3), 6, 8080, 0);
    let arp = craft::arp_request(mac_for_ip(ip(1, 2)), ip(1, 2), ip(1, 1));
    let tso = craft::tcp4_super_frame(&[7u8; 6000], 1, 1400);
    let ip6 = |c: u16, d: u16| std::net::Ipv6Addr::new(0xfd10, 0x244, c, 0, 0, 0, 0, d);
    let local6 = craft::ipv6_udp(
        mac_for_ip(ip(1, 2)),
        mac_for_ip(ip(1, 3)),
        ip6(1, 2),
        ip6(1, 3),
        32,
    );
    let remote6 = craft::ipv6_udp(mac_for_ip(ip(1, 2)), gw, ip6(1, 2), ip6(2, 9), 1400);
    let ns = craft::neighbor_solicitation(mac_for_ip(ip(1, 2)), ip6(1, 2), ip6(1, 1));
    let na = craft::neighbor_advertisement(mac_for_ip(ip(1, 2)), ip6(1, 2), ip6(1, 3));
    let rs = craft::icmpv6(
        mac_for_ip(ip(1, 2)),
        "fe80::1".parse().unwrap(),
        "ff02::2".parse().unwrap(),
        133,
        4,
    );
    let tso6 = craft::tcp6_super_frame(&[7u8; 6000], 1, 1380);
    for (name, sel, frame) in [
        ("local", 1, &local),
        ("remote", 1, &remote),
        ("too-big", 2, &big),
        ("outside", 3, &outside),
        ("from-node", 0, &from_node),
        ("arp", 1, &arp),
        ("tso", 1, &tso),
        ("ipv6", 1, &craft::ethertype(0x86dd, 60)),
        ("ipv6-local", 1, &local6),
        ("ipv6-remote", 1, &remote6),
        ("ipv6-ns", 1, &ns),
        ("ipv6-na", 1, &na),
        ("ipv6-rs", 1, &rs),
        ("ipv6-tso", 1, &tso6),
        ("runt", 1, &craft::truncate(local.clone(), 20)),
    ] {
        write(dir, "forward", name, &with(sel, frame));
    }

    // tunnel: selector byte (peer) + VXLAN datagram.
    for (name, frame) in [
        (
            "from-peer",
            craft::ipv4_udp(mac_for_ip(ip(2, 1)), gw, ip(2, 2), ip(1, 2), 32),
        ),
        (
            "tso-seg",
            craft::ipv4_packet(mac_for_ip(ip(2, 1)), gw, ip(2, 2), ip(1, 3), 6, 5201, 1400),
        ),
        (
            "from-peer-ipv6",
            craft::ipv6_udp(mac_for_ip(ip(2, 1)), gw, ip6(2, 2), ip6(1, 2), 32),
        ),
    ] {
        let mut f = frame;
        vxlan::encap_in_place(&mut f, 1);
        write(dir, "tunnel", name, &with(0, &f[DATAGRAM_OFFSET..]));
    }

    // segment: mode 0 + MSS + payload; mode 1 + raw super-frame.
    let mut rt = vec![0u8, 0x05, 0x78];
    rt.extend((0..5000u32).map(|i| (i % 251) as u8));
    write(dir, "segment", "round-trip", &rt);
    let mut uso = rt.clone();
    uso[0] = 2;
    write(dir, "segment", "uso", &uso);
    write(dir, "segment", "raw-tso", &with(1, &tso));
    write(dir, "segment", "raw-tso6", &with(1, &tso6));
    write(
        dir,
        "segment",
        "raw-frame",
        &with(1, &local[VNET_HDR_LEN..]),
    );

    // control: payloads as switchd-cni and switchctl send them.
    for (name, json) in [
        ("status", r#"{"version":1,"body":{"op":"status"}}"#),
        (
            "attach",
            r#"{"version":1,"body":{"op":"attach","key":{"container_id":"c1","ifname":"eth0"},"network":"n","netns":"/var/run/netns/x","pod":{"namespace":"ns","name":"p","uid":"u"},"bandwidth":{"ingressRate":1000000}}}"#,
        ),
        (
            "trace",
            r#"{"version":1,"body":{"op":"trace","from":"shop/a","dst":"10.244.2.2","protocol":"tcp","port":80,"size":0}}"#,
        ),
        (
            "monitor",
            r#"{"version":1,"body":{"op":"monitor","port":"switchd0","rate":100}}"#,
        ),
        (
            "peers",
            r#"{"version":1,"body":{"result":"peers","peers":[{"name":"n2","addr":"1.2.3.4:8472","pod_cidr":"10.244.2.0/24","mac":"0a:58:0a:f4:02:01","source":"static","since_unix":1,"counters":{"rx_packets":1,"rx_bytes":2,"tx_packets":3,"tx_bytes":4,"drops":0},"health":{"rtt_micros":300,"last_rtt_micros":310,"loss_ratio":0.25,"path_mtu":1450,"probes_sent":9,"probes_answered":8,"last_answer_unix":5}}]}}"#,
        ),
    ] {
        write(dir, "control", name, json.as_bytes());
    }

    // cni: a network configuration, CNI_ARGS, environment lines.
    write(dir, "cni", "netconf", br#"{"cniVersion":"1.1.0","name":"k8s","type":"switchd-cni","socket":"/run/switchd/switchd.sock","connectTimeoutMs":3000,"runtimeConfig":{"bandwidth":{"ingressRate":1000000,"ingressBurst":100000}},"prevResult":{"cniVersion":"1.1.0","interfaces":[],"ips":[]}}"#);
    write(
        dir,
        "cni",
        "args",
        b"IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc",
    );
    write(dir, "cni", "env", b"CNI_COMMAND=ADD\nCNI_CONTAINERID=abc\nCNI_NETNS=/var/run/netns/x\nCNI_IFNAME=eth0\nCNI_PATH=/opt/cni/bin\n");

    // config: the shapes the docs show.
    write(dir, "config", "static", b"node_name = \"n1\"\npod_cidr = \"10.244.1.0/24\"\nunderlay_addr = \"192.168.7.1\"\n[[peers]]\nname = \"n2\"\naddr = \"192.168.7.2\"\npod_cidr = \"10.244.2.0/24\"\nmac = \"0a:58:0a:f4:02:01\"\n");
    write(dir, "config", "etcd", b"cluster_cidr = \"10.244.0.0/16\"\nmembership = \"etcd\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\nunderlay_addr = \"192.168.7.1\"\nnode_subnet_len = 24\nprobe_interval_ms = 100\n");

    // membership: an etcd node record (selector 0), and a Node list as the API returns it.
    let mut record = vec![0u8];
    record.extend_from_slice(br#"{"name":"n2","underlay_addr":"192.168.7.2","tunnel_port":8472,"vni":1,"router_mac":"0a:58:0a:f4:02:01","pod_cidr":"10.244.2.0/24","pod_cidr_v6":"fd10:244:0:2::/64","version":"0.1.0","since_unix":1}"#);
    write(dir, "membership", "etcd-record", &record);
    let mut nodes = vec![1u8];
    nodes.extend_from_slice(br#"[{"metadata":{"name":"n1"},"spec":{"podCIDRs":["10.244.1.0/24"]},"status":{"addresses":[{"type":"InternalIP","address":"192.168.7.1"}]}},{"metadata":{"name":"n2","annotations":{"switchd.dev/tunnel-port":"4789","switchd.dev/router-mac":"02:00:00:00:00:02"}},"spec":{"podCIDRs":["10.244.2.0/24","fd10:244:0:2::/64"]},"status":{"addresses":[{"type":"Hostname","address":"n2"},{"type":"InternalIP","address":"192.168.7.2"}]}},{"metadata":{"name":"n3","annotations":{"switchd.dev/wireguard-public-key":"x","switchd.dev/wireguard-port":"51820"}},"spec":{"podCIDR":"10.244.2.128/25"},"status":{"addresses":[{"type":"InternalIP","address":"192.168.7.3"}]}}]"#);
    write(dir, "membership", "node-list", &nodes);
    // policy: a random world (0), a NetworkPolicy as the API returns it (1), frames
    // between the fixed world's pods (2), SCTP included, a ClusterNetworkPolicy (3).
    write(
        dir,
        "policy",
        "world",
        &with(0, &(0u8..=255).collect::<Vec<_>>()),
    );
    write(dir, "policy", "networkpolicy", &with(1, br#"{"metadata":{"name":"web","namespace":"x"},"spec":{"podSelector":{"matchLabels":{"app":"a"},"matchExpressions":[{"key":"tier","operator":"NotIn","values":["b"]}]},"policyTypes":["Ingress","Egress"],"ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"team":"a"}},"podSelector":{}},{"ipBlock":{"cidr":"10.0.0.0/16","except":["10.0.1.0/28"]}}],"ports":[{"protocol":"TCP","port":80},{"protocol":"UDP","port":1000,"endPort":1010},{"protocol":"SCTP","port":"serve"}]}],"egress":[{"to":[{"podSelector":{"matchLabels":{"app":"b"}}}],"ports":[{"port":"dns","protocol":"UDP"}]}]}}"#));
    write(dir, "policy", "clusternetworkpolicy", &with(3, br#"{"apiVersion":"policy.networking.k8s.io/v1beta1","kind":"ClusterNetworkPolicy","metadata":{"name":"c"},"spec":{"tier":"Admin","priority":5,"subject":{"namespaces":{"matchLabels":{"team":"a"}}},"ingress":[{"name":"r","action":"Deny","from":[{"pods":{"namespaceSelector":{},"podSelector":{"matchLabels":{"app":"b"}}}}],"protocols":[{"tcp":{"destinationPort":{"number":80}}},{"udp":{"destinationPort":{"range":{"start":1000,"end":1010}}}}]}],"egress":[{"action":"Pass","to":[{"networks":["10.0.0.0/16"]}]},{"action":"Accept","to":[{"namespaces":{}}],"protocols":[{"destinationNamedPort":"dns"}]}]}}"#));
    let pod = |n: u8| Ipv4Addr::new(10, 0, 1, n);
    for (name, proto, dport) in [
        ("tcp", 6u8, 80u16),
        ("udp", 17, 1005),
        ("icmp", 1, 0),
        ("sctp", 132, 9003),
    ] {
        let (wire, patch) = if proto == 132 {
            (17, true)
        } else {
            (proto, false)
        };
        let mut f = craft::ipv4_packet(
            mac_for_ip(pod(10)),
            mac_for_ip(pod(11)),
            pod(10),
            pod(11),
            wire,
            dport,
            64,
        );
        if patch {
            f[VNET_HDR_LEN + 14 + 9] = 132;
        }
        write(dir, "policy", name, &with(2, &f[VNET_HDR_LEN..]));
    }
    println!("seeds written under {}", dir.display());
}
