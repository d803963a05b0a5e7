//! Several nodes on one underlay: a namespace holding a Linux bridge that every node's
//! underlay veth plugs into, switchd nodes that know each other as static peers, and a
//! node configured with plain iproute2 the way flannel's vxlan backend does it.

use std::net::Ipv4Addr;

use crate::{Netns, Node};

/// The underlay network: `192.168.77.0/24` on a bridge in its own namespace. (The range
/// exists only inside namespaces these tests create.)
pub struct Underlay {
    pub ns: Netns,
    next: u8,
}

impl Underlay {
    pub fn new() -> Underlay {
        let ns = Netns::new("ul");
        for cmd in [
            vec!["ip", "link", "add", "br0", "type", "bridge"],
            vec!["ip", "link", "set", "br0", "up"],
        ] {
            assert!(ns.exec(&cmd).status.success(), "{cmd:?}");
        }
        Underlay { ns, next: 1 }
    }

    /// Plug `node` in as `u0` with the next address and the given MTU; returns the address.
    pub fn attach(&mut self, node: &Netns, mtu: u32) -> Ipv4Addr {
        let n = self.next;
        self.next += 1;
        let addr = Ipv4Addr::new(192, 168, 77, n);
        let port = format!("v{n}");
        let mtu = mtu.to_string();
        let cidr = format!("{addr}/24");
        for cmd in [
            vec![
                "ip",
                "link",
                "add",
                "u0",
                "mtu",
                &mtu,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &self.ns.name,
            ],
            vec!["ip", "addr", "add", &cidr, "dev", "u0"],
            vec!["ip", "link", "set", "u0", "up"],
        ] {
            node.exec_ok(&cmd);
        }
        let cmd = [
            "ip", "link", "set", &port, "mtu", &mtu, "master", "br0", "up",
        ];
        self.ns.exec_ok(&cmd);
        addr
    }

    /// Plug `node` in like [`Underlay::attach`], but with an IPv6 address only
    /// (`fd00:78::N/64`, no IPv4 at all): an IPv6-only underlay. Returns the address.
    pub fn attach_v6_only(&mut self, node: &Netns, mtu: u32) -> std::net::Ipv6Addr {
        let v4 = self.attach(node, mtu);
        let addr: std::net::Ipv6Addr = format!("fd00:78::{}", v4.octets()[3]).parse().unwrap();
        for cmd in [
            vec!["ip", "-4", "addr", "flush", "dev", "u0"],
            vec![
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                "u0",
                "nodad",
            ],
        ] {
            node.exec_ok(&cmd);
        }
        addr
    }
}

impl Default for Underlay {
    fn default() -> Self {
        Underlay::new()
    }
}

/// What a peer needs to know about a node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub underlay: Ipv4Addr,
    pub pod_cidr: String,
    /// The node's IPv6 pod prefix, when it is dual-stack (cluster `fd10:244::/48`).
    pub pod_cidr_v6: Option<String>,
    pub mac: String,
    /// The node's IPv6 underlay address, when the underlay is IPv6 (then used instead of
    /// `underlay` for `underlay_addr` and the peers' `addr`).
    pub underlay6: Option<std::net::Ipv6Addr>,
}

/// The IPv6 cluster prefix of dual-stack test clusters.
pub const CLUSTER_CIDR_V6: &str = "fd10:244::/48";

impl NodeInfo {
    /// Node `i` of a test cluster: pod CIDR `10.244.i.0/24`, switchd's default router MAC.
    pub fn numbered(i: u8, underlay: Ipv4Addr) -> NodeInfo {
        NodeInfo {
            name: format!("node{i}"),
            underlay,
            pod_cidr: format!("10.244.{i}.0/24"),
            pod_cidr_v6: None,
            mac: format!("0a:58:0a:f4:{i:02x}:01"),
            underlay6: None,
        }
    }

    /// The address the tunnel uses: the IPv6 underlay address if there is one.
    pub fn tunnel_addr(&self) -> std::net::IpAddr {
        match self.underlay6 {
            Some(a) => a.into(),
            None => self.underlay.into(),
        }
    }

    /// Node `i` of a dual-stack test cluster: also `fd10:244:0:i::/64`.
    pub fn dual_stack(i: u8, underlay: Ipv4Addr) -> NodeInfo {
        NodeInfo {
            pod_cidr_v6: Some(format!("fd10:244:0:{i:x}::/64")),
            ..NodeInfo::numbered(i, underlay)
        }
    }

    /// The node's IPv6 gateway (its prefix's `::1`), when it is dual-stack.
    pub fn gateway_v6(&self) -> Option<std::net::Ipv6Addr> {
        let net: std::net::Ipv6Addr = self.pod_cidr_v6.as_ref()?.split('/').next()?.parse().ok()?;
        Some(std::net::Ipv6Addr::from(u128::from(net) + 1))
    }

    /// The config keys that make this node dual-stack (empty when it is not).
    pub fn ipv6_toml(&self) -> String {
        match &self.pod_cidr_v6 {
            Some(p) => format!("pod_cidr_v6 = \"{p}\"\ncluster_cidr_v6 = \"{CLUSTER_CIDR_V6}\"\n"),
            None => String::new(),
        }
    }

    pub fn gateway(&self) -> Ipv4Addr {
        let net: Ipv4Addr = self.pod_cidr.split('/').next().unwrap().parse().unwrap();
        Ipv4Addr::from(u32::from(net) + 1)
    }
}

/// `[[peers]]` tables for every node in `nodes` except `me`.
pub fn peers_toml(nodes: &[NodeInfo], me: &str) -> String {
    nodes
        .iter()
        .filter(|n| n.name != me)
        .map(|n| {
            let v6 = n
                .pod_cidr_v6
                .as_ref()
                .map(|p| format!("pod_cidr_v6 = \"{p}\"\n"))
                .unwrap_or_default();
            format!(
                "[[peers]]\nname = \"{}\"\naddr = \"{}\"\npod_cidr = \"{}\"\n{v6}mac = \"{}\"\n\n",
                n.name,
                n.tunnel_addr(),
                n.pod_cidr,
                n.mac
            )
        })
        .collect()
}

/// Start switchd on `ns` (already on the underlay) as `me`, peering with `nodes`.
pub fn start_switchd(ns: Netns, me: &NodeInfo, nodes: &[NodeInfo], extra: &str) -> Node {
    let mut node = prepare_switchd(ns, me, nodes, extra);
    node.launch();
    node
}

/// Like [`start_switchd`] without starting it (to set its environment first).
pub fn prepare_switchd(ns: Netns, me: &NodeInfo, nodes: &[NodeInfo], extra: &str) -> Node {
    let config = format!(
        "underlay_addr = \"{}\"\n{}{extra}",
        me.tunnel_addr(),
        me.ipv6_toml()
    );
    Node::prepare(
        ns,
        &me.pod_cidr,
        &config,
        Some(&peers_toml(nodes, &me.name)),
    )
}

/// `n` switchd nodes and a host outside the cluster on one underlay. The outside host is
/// the nodes' default router (real nodes have a default route; ClusterIPs are reached
/// through it from the node) and has no route to pod addresses. Fields drop in order.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub infos: Vec<NodeInfo>,
    pub outside: Netns,
    pub outside_addr: Ipv4Addr,
    pub underlay: Underlay,
}

impl Cluster {
    pub fn with_outside(n: u8) -> Cluster {
        let mut underlay = Underlay::new();
        let spaces: Vec<Netns> = (0..n).map(|_| Netns::new("n")).collect();
        let infos: Vec<NodeInfo> = spaces
            .iter()
            .zip(1..)
            .map(|(ns, i)| NodeInfo::numbered(i, underlay.attach(ns, 1500)))
            .collect();
        let outside = Netns::new("out");
        let outside_addr = underlay.attach(&outside, 1500);
        let via = outside_addr.to_string();
        for ns in &spaces {
            let out = ns.exec(&["ip", "route", "add", "default", "via", &via]);
            assert!(out.status.success(), "default route via the outside host");
        }
        let nodes = spaces
            .into_iter()
            .zip(&infos)
            .map(|(ns, me)| start_switchd(ns, me, &infos, ""))
            .collect();
        Cluster {
            nodes,
            infos,
            outside,
            outside_addr,
            underlay,
        }
    }
}

/// A node set up like flannel's vxlan backend does a host: a kernel VXLAN device
/// `flannel.1` (VNI 1, UDP 8472, no learning), onlink routes to each remote pod CIDR via the
/// remote's `.0` address, static neighbour and FDB entries pointing at the remote nodes, and
/// one pod behind a Linux bridge `cni0`. This is the recipe in docs/kernel-interop.md.
pub struct KernelNode {
    pub ns: Netns,
    pub pod: Netns,
    pub info: NodeInfo,
    pub pod_addr: Ipv4Addr,
}

impl KernelNode {
    /// A kernel node peering with switchd nodes (see `with_peers_in_userspace`).
    pub fn new(underlay: &mut Underlay, i: u8) -> KernelNode {
        KernelNode::with_peers_in_userspace(underlay, i, true)
    }

    /// `userspace_peers`: turn off the veth underlay's checksum offload so a userspace
    /// receiver gets finished inner checksums. Kernel-to-kernel setups leave it on.
    pub fn with_peers_in_userspace(
        underlay: &mut Underlay,
        i: u8,
        userspace_peers: bool,
    ) -> KernelNode {
        let ns = Netns::new("k");
        let addr = underlay.attach(&ns, 1500);
        let info = NodeInfo::numbered(i, addr);
        let pod = Netns::new("kp");
        let vtep_addr = format!("10.244.{i}.0/32");
        let bridge_addr = format!("10.244.{i}.1/24");
        let pod_addr = Ipv4Addr::new(10, 244, i, 2);
        let local = addr.to_string();
        ns.exec_ok(&["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
        // A veth underlay leaves checksums of encapsulated packets for "hardware" to finish,
        // which a userspace receiver never sees done; a real NIC does it on the wire.
        if userspace_peers {
            ns.exec_ok(&["ethtool", "-K", "u0", "tx", "off"]);
        }
        ns.exec_ok(&[
            "ip",
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &local,
            "dev",
            "u0",
            "dstport",
            "8472",
            "nolearning",
        ]);
        ns.exec_ok(&[
            "ip",
            "link",
            "set",
            "flannel.1",
            "address",
            &info.mac,
            "mtu",
            "1450",
            "up",
        ]);
        ns.exec_ok(&["ip", "addr", "add", &vtep_addr, "dev", "flannel.1"]);
        ns.exec_ok(&["ip", "link", "add", "cni0", "type", "bridge"]);
        ns.exec_ok(&["ip", "addr", "add", &bridge_addr, "dev", "cni0"]);
        ns.exec_ok(&["ip", "link", "set", "cni0", "mtu", "1450", "up"]);
        let node = KernelNode {
            ns,
            pod,
            info,
            pod_addr,
        };
        node.plug(&node.pod, pod_addr, 0);
        node
    }

    /// Another pod on this node's bridge, at `.{host}`.
    pub fn add_pod(&self, host: u8) -> (Netns, Ipv4Addr) {
        let pod = Netns::new("kp");
        let net: Ipv4Addr = self
            .info
            .pod_cidr
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let addr = Ipv4Addr::from(u32::from(net) + u32::from(host));
        self.plug(&pod, addr, host);
        (pod, addr)
    }

    /// Connect `pod` to the bridge with a veth and give it `addr`.
    fn plug(&self, pod: &Netns, addr: Ipv4Addr, n: u8) {
        let veth = format!("veth{n}");
        let cidr = format!("{addr}/24");
        let gw = self.info.gateway().to_string();
        self.ns.exec_ok(&[
            "ip", "link", "add", &veth, "mtu", "1450", "type", "veth", "peer", "name", "eth0",
            "netns", &pod.name,
        ]);
        self.ns
            .exec_ok(&["ip", "link", "set", &veth, "master", "cni0", "up"]);
        pod.exec_ok(&["ip", "addr", "add", &cidr, "dev", "eth0"]);
        pod.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        pod.exec_ok(&["ip", "route", "add", "default", "via", &gw]);
        if self.info.pod_cidr_v6.is_some() {
            self.plug_v6(pod, n.max(2));
        }
    }

    /// The IPv6 address of the pod at `.{host}` (`::{host}` in hex), once IPv6 is on.
    pub fn pod6(&self, host: u8) -> Option<std::net::Ipv6Addr> {
        let net: std::net::Ipv6Addr = self
            .info
            .pod_cidr_v6
            .as_ref()?
            .split('/')
            .next()?
            .parse()
            .ok()?;
        Some(std::net::Ipv6Addr::from(u128::from(net) + u128::from(host)))
    }

    fn plug_v6(&self, pod: &Netns, host: u8) {
        let addr = self.pod6(host).unwrap();
        let gw = self.pod6(1).unwrap().to_string();
        pod.exec_ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        pod.exec_ok(&["ip", "-6", "route", "add", "default", "via", &gw]);
    }

    /// Make the node dual-stack the way flannel's vxlan backend carries IPv6 over the same
    /// device: `fd10:244:0:i::/64` on `cni0` (gateway `::1`), the pod at `::2` with its
    /// default route, forwarding on. Returns the pod's IPv6 address; [`KernelNode::add_remote`]
    /// then also routes the remote's IPv6 prefix.
    pub fn enable_ipv6(&mut self) -> std::net::Ipv6Addr {
        let i = self
            .info
            .name
            .trim_start_matches("node")
            .parse::<u8>()
            .unwrap();
        let prefix = format!("fd10:244:0:{i:x}::");
        self.info.pod_cidr_v6 = Some(format!("{prefix}/64"));
        let gw = format!("{prefix}1");
        let pod6: std::net::Ipv6Addr = format!("{prefix}2").parse().unwrap();
        self.ns
            .exec_ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        self.ns.exec_ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{gw}/64"),
            "dev",
            "cni0",
            "nodad",
        ]);
        self.pod.exec_ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{pod6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        self.pod
            .exec_ok(&["ip", "-6", "route", "add", "default", "via", &gw]);
        pod6
    }

    /// Point the kernel node at a remote node, as flannel does for each lease it sees.
    pub fn add_remote(&self, remote: &NodeInfo) {
        if let (Some(_), Some(theirs)) = (&self.info.pod_cidr_v6, &remote.pod_cidr_v6) {
            // Flannel's IPv6 recipe: an onlink route via the remote's prefix address, whose
            // neighbour entry is the remote's VTEP MAC (the FDB entry below is shared).
            let vtep = theirs.trim_end_matches("/64");
            for cmd in [
                vec![
                    "ip",
                    "-6",
                    "route",
                    "add",
                    theirs,
                    "via",
                    vtep,
                    "dev",
                    "flannel.1",
                    "onlink",
                ],
                vec![
                    "ip",
                    "-6",
                    "neigh",
                    "add",
                    vtep,
                    "lladdr",
                    &remote.mac,
                    "dev",
                    "flannel.1",
                    "nud",
                    "permanent",
                ],
            ] {
                self.ns.exec_ok(&cmd);
            }
        }
        let vtep = remote.pod_cidr.replace(".0/24", ".0");
        let underlay = remote.underlay.to_string();
        for cmd in [
            vec![
                "ip",
                "route",
                "add",
                remote.pod_cidr.as_str(),
                "via",
                vtep.as_str(),
                "dev",
                "flannel.1",
                "onlink",
            ],
            vec![
                "ip",
                "neigh",
                "add",
                vtep.as_str(),
                "lladdr",
                remote.mac.as_str(),
                "dev",
                "flannel.1",
                "nud",
                "permanent",
            ],
            vec![
                "bridge",
                "fdb",
                "append",
                remote.mac.as_str(),
                "dev",
                "flannel.1",
                "dst",
                underlay.as_str(),
            ],
        ] {
            self.ns.exec_ok(&cmd);
        }
    }
}

/// An iptables rule in `ns` that drops a random share of the tunnel datagrams arriving
/// there (this kernel has no `netem`: the `statistic` match stands in). Removed on drop.
pub struct TunnelLoss<'a> {
    ns: &'a Netns,
    probability: String,
}

impl<'a> TunnelLoss<'a> {
    pub fn new(ns: &'a Netns, probability: f64) -> TunnelLoss<'a> {
        let loss = TunnelLoss {
            ns,
            probability: probability.to_string(),
        };
        let out = ns.exec(&loss.rule("-I"));
        assert!(
            out.status.success(),
            "iptables: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        loss
    }

    fn rule<'s>(&'s self, verb: &'s str) -> Vec<&'s str> {
        vec![
            "iptables",
            verb,
            "INPUT",
            "-p",
            "udp",
            "--dport",
            "8472",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &self.probability,
            "-j",
            "DROP",
        ]
    }
}

impl Drop for TunnelLoss<'_> {
    fn drop(&mut self) {
        let _ = self.ns.exec(&self.rule("-D"));
    }
}
