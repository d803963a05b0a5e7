//! The rules kube-proxy writes into a node's network namespace, written by a test instead
//! of by kube-proxy (there is no apiserver here): iptables mode through `iptables-restore`
//! (the nft and the legacy backend), and nftables mode (`table ip kube-proxy`) through
//! `nft -f`. The rule shapes follow kube-proxy's own (pkg/proxy/iptables and
//! pkg/proxy/nftables, 1.31–1.33): service chains with a `! -s cluster` masquerade mark, a
//! random choice of endpoint, per-endpoint hairpin masquerade and DNAT, ClientIP affinity
//! (`-m recent` / timeout sets), NodePorts for local addresses with an unconditional
//! masquerade mark, `KUBE-POSTROUTING`'s mark-and-masquerade and `KUBE-FORWARD`'s
//! `ctstate INVALID` drop. Chain names are readable instead of kube-proxy's hashes.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};

use crate::Netns;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// iptables mode through iptables-nft (Debian's default `iptables`).
    IptablesNft,
    /// iptables mode through iptables-legacy (x_tables).
    IptablesLegacy,
    /// kube-proxy's nftables mode.
    Nftables,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::IptablesNft, Mode::IptablesLegacy, Mode::Nftables];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One Service port and its endpoints, as kube-proxy sees it.
#[derive(Debug, Clone)]
pub struct Service {
    /// Short and unique; used in chain names.
    pub name: String,
    pub proto: Proto,
    /// IPv4 or IPv6: kube-proxy writes each family's Services into that family's tables.
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub endpoints: Vec<SocketAddr>,
    /// sessionAffinity: ClientIP (timeout 10800 s).
    pub affinity: bool,
    /// externalTrafficPolicy: Cluster.
    pub node_port: Option<u16>,
}

impl Service {
    pub fn new(name: &str, proto: Proto, cluster_ip: impl Into<IpAddr>, port: u16) -> Service {
        Service {
            name: name.into(),
            proto,
            cluster_ip: cluster_ip.into(),
            port,
            endpoints: Vec::new(),
            affinity: false,
            node_port: None,
        }
    }

    pub fn endpoint(mut self, ip: impl Into<IpAddr>, port: u16) -> Service {
        self.endpoints.push(SocketAddr::new(ip.into(), port));
        self
    }

    pub fn with_affinity(mut self) -> Service {
        self.affinity = true;
        self
    }

    pub fn with_node_port(mut self, port: u16) -> Service {
        self.node_port = Some(port);
        self
    }
}

const AFFINITY_SECONDS: u32 = 10800;

/// The `iptables-restore --noflush` input for `services` (the built-in chains' jumps
/// included as `-I` lines, which kube-proxy adds with separate calls).
pub fn iptables_rules(cluster_cidr: &str, services: &[Service]) -> String {
    let filter = String::from(
        "*filter\n:KUBE-FORWARD - [0:0]\n\
         -I FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
         -A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n",
    );
    let mut chains = String::from(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let mut rules = String::from(
        "-I PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -I OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -I POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
    );
    for s in services {
        let (p, ip, port) = (s.proto.as_str(), s.cluster_ip, s.port);
        let svc = format!("KUBE-SVC-{}", s.name.to_uppercase());
        let sep = |i: usize| format!("KUBE-SEP-{}{i}", s.name.to_uppercase());
        chains += &format!(":{svc} - [0:0]\n");
        rules += &format!(
            "-A KUBE-SERVICES -m comment --comment \"{n} cluster IP\" -m {p} -p {p} -d {ip} --dport {port} -j {svc}\n\
             -A {svc} -m comment --comment \"{n} cluster IP\" -m {p} -p {p} -d {ip} --dport {port} ! -s {cluster_cidr} -j KUBE-MARK-MASQ\n",
            n = s.name
        );
        if let Some(np) = s.node_port {
            let ext = format!("KUBE-EXT-{}", s.name.to_uppercase());
            chains += &format!(":{ext} - [0:0]\n");
            rules += &format!(
                "-A KUBE-NODEPORTS -m comment --comment {n} -m {p} -p {p} --dport {np} -j {ext}\n\
                 -A {ext} -m comment --comment \"masquerade traffic for {n} external destinations\" -j KUBE-MARK-MASQ\n\
                 -A {ext} -j {svc}\n",
                n = s.name
            );
        }
        let n = s.endpoints.len();
        if s.affinity {
            for i in 0..n {
                rules += &format!(
                    "-A {svc} -m recent --name {sep} --rcheck --seconds {AFFINITY_SECONDS} --reap -j {sep}\n",
                    sep = sep(i)
                );
            }
        }
        for (i, ep) in s.endpoints.iter().enumerate() {
            chains += &format!(":{} - [0:0]\n", sep(i));
            let pick = if i + 1 < n {
                format!(
                    "-m statistic --mode random --probability {:.10} ",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            rules += &format!("-A {svc} {pick}-j {}\n", sep(i));
            let recent = if s.affinity {
                format!("-m recent --name {} --set ", sep(i))
            } else {
                String::new()
            };
            rules += &format!(
                "-A {sep} -s {epip} -j KUBE-MARK-MASQ\n\
                 -A {sep} {recent}-m {p} -p {p} -j DNAT --to-destination {ep}\n",
                sep = sep(i),
                epip = ep.ip()
            );
        }
    }
    rules += "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n";
    filter + &chains + &rules + "COMMIT\n"
}

/// The `nft -f` input of kube-proxy's nftables mode for `services`; NodePorts are
/// accepted on `node_ip` (nftables mode's default, `--nodeport-addresses=primary`).
pub fn nftables_rules(cluster_cidr: &str, node_ip: Ipv4Addr, services: &[Service]) -> String {
    nftables_family_rules(cluster_cidr, node_ip.into(), services)
}

/// kube-proxy's nftables mode for a dual-stack node's IPv6 Services: the same layout in
/// `table ip6 kube-proxy`, with IPv6 address types and matches.
pub fn nftables_rules_v6(
    cluster_cidr: &str,
    node_ip: std::net::Ipv6Addr,
    services: &[Service],
) -> String {
    nftables_family_rules(cluster_cidr, node_ip.into(), services)
        .replace(" ip kube-proxy", " ip6 kube-proxy")
        .replace("ipv4_addr", "ipv6_addr")
        .replace(" ip daddr", " ip6 daddr")
        .replace(" ip saddr", " ip6 saddr")
}

fn nftables_family_rules(cluster_cidr: &str, node_ip: IpAddr, services: &[Service]) -> String {
    let mut out = String::from(
        "add table ip kube-proxy\ndelete table ip kube-proxy\n\
         add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n\
         add chain ip kube-proxy filter-forward { type filter hook forward priority -110 ; }\n\
         add chain ip kube-proxy filter-output-post-dnat { type filter hook output priority -90 ; }\n\
         add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }\n\
         add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }\n\
         add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }\n\
         add chain ip kube-proxy services\n\
         add chain ip kube-proxy masquerading\n\
         add chain ip kube-proxy cluster-ips-check\n\
         add chain ip kube-proxy mark-for-masquerade\n\
         add rule ip kube-proxy nat-output jump services\n\
         add rule ip kube-proxy nat-prerouting jump services\n\
         add rule ip kube-proxy nat-postrouting jump masquerading\n\
         add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check\n\
         add rule ip kube-proxy filter-output-post-dnat ct state new jump cluster-ips-check\n\
         add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000\n\
         add rule ip kube-proxy masquerading mark and 0x4000 == 0 return\n\
         add rule ip kube-proxy masquerading mark set mark xor 0x4000\n\
         add rule ip kube-proxy masquerading masquerade fully-random\n\
         add set ip kube-proxy cluster-ips { type ipv4_addr ; comment \"Active ClusterIPs\" ; }\n\
         add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"\n",
    );
    out += &format!(
        "add set ip kube-proxy nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}\n\
         add element ip kube-proxy nodeport-ips {{ {node_ip} }}\n\
         add map ip kube-proxy service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}\n\
         add map ip kube-proxy service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}\n\
         add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports\n"
    );
    for s in services {
        let (p, ip, port) = (s.proto.as_str(), s.cluster_ip, s.port);
        let base = format!("{}/{p}/p{port}", s.name);
        let svc = format!("service-{base}");
        // An IPv6 address's colons are not allowed in a chain name; dots stand in.
        let ep_name = |i: usize| s.endpoints[i].ip().to_string().replace(':', ".");
        let ep_chain =
            |i: usize| format!("endpoint-{base}__{}/{}", ep_name(i), s.endpoints[i].port());
        let aff = |i: usize| format!("affinity-{base}__{}/{}", ep_name(i), s.endpoints[i].port());
        let n = s.endpoints.len();
        if s.affinity {
            for i in 0..n {
                out += &format!(
                    "add set ip kube-proxy {} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {AFFINITY_SECONDS}s ; }}\n",
                    aff(i)
                );
            }
        }
        out += &format!("add chain ip kube-proxy {svc}\n");
        for i in 0..n {
            out += &format!("add chain ip kube-proxy {}\n", ep_chain(i));
        }
        out += &format!(
            "add rule ip kube-proxy {svc} ip daddr {ip} {p} dport {port} ip saddr != {cluster_cidr} jump mark-for-masquerade\n"
        );
        if s.affinity {
            for i in 0..n {
                out += &format!(
                    "add rule ip kube-proxy {svc} ip saddr @{} goto {}\n",
                    aff(i),
                    ep_chain(i)
                );
            }
        }
        let vmap: Vec<String> = (0..n)
            .map(|i| format!("{i} : goto {}", ep_chain(i)))
            .collect();
        out += &format!(
            "add rule ip kube-proxy {svc} numgen random mod {n} vmap {{ {} }}\n",
            vmap.join(" , ")
        );
        for (i, ep) in s.endpoints.iter().enumerate() {
            let c = ep_chain(i);
            out += &format!(
                "add rule ip kube-proxy {c} ip saddr {} jump mark-for-masquerade\n",
                ep.ip()
            );
            if s.affinity {
                out += &format!(
                    "add rule ip kube-proxy {c} update @{} {{ ip saddr }}\n",
                    aff(i)
                );
            }
            out += &format!("add rule ip kube-proxy {c} meta l4proto {p} dnat to {ep}\n");
        }
        out += &format!(
            "add element ip kube-proxy cluster-ips {{ {ip} }}\n\
             add element ip kube-proxy service-ips {{ {ip} . {p} . {port} : goto {svc} }}\n"
        );
        if let Some(np) = s.node_port {
            let ext = format!("external-{base}");
            out += &format!(
                "add chain ip kube-proxy {ext}\n\
                 add rule ip kube-proxy {ext} jump mark-for-masquerade\n\
                 add rule ip kube-proxy {ext} goto {svc}\n\
                 add element ip kube-proxy service-nodeports {{ {p} . {np} : goto {ext} }}\n"
            );
        }
    }
    out
}

/// Write the rules of `mode` for `services` into node `ns` (replacing earlier ones, as a
/// kube-proxy sync does).
pub fn apply(ns: &Netns, mode: Mode, cluster_cidr: &str, node_ip: Ipv4Addr, services: &[Service]) {
    match mode {
        Mode::IptablesNft | Mode::IptablesLegacy => {
            let (save_restore, _) = iptables_binaries(mode);
            flush_iptables(ns, mode);
            feed(
                ns,
                &[save_restore, "--noflush"],
                &iptables_rules(cluster_cidr, services),
            );
        }
        Mode::Nftables => feed(
            ns,
            &["nft", "-f", "-"],
            &nftables_rules(cluster_cidr, node_ip, services),
        ),
    }
}

/// The IPv6 half of a dual-stack node's rules (`cluster_cidr` is then the IPv6 cluster
/// prefix, `node_ip` the node's IPv6 address): iptables mode writes IPv6 Services into
/// ip6tables with the same rule shapes (iptables-nft backend; legacy is not offered here),
/// nftables mode into `table ip6 kube-proxy`.
pub fn apply_v6(
    ns: &Netns,
    mode: Mode,
    cluster_cidr: &str,
    node_ip: std::net::Ipv6Addr,
    services: &[Service],
) {
    match mode {
        Mode::Nftables => feed(
            ns,
            &["nft", "-f", "-"],
            &nftables_rules_v6(cluster_cidr, node_ip, services),
        ),
        _ => {
            for table in ["nat", "filter"] {
                ns.exec(&["ip6tables-nft", "-t", table, "-F"]);
                ns.exec(&["ip6tables-nft", "-t", table, "-X"]);
            }
            feed(
                ns,
                &["ip6tables-nft-restore", "--noflush"],
                &iptables_rules(cluster_cidr, services),
            );
        }
    }
}

fn iptables_binaries(mode: Mode) -> (&'static str, &'static str) {
    match mode {
        Mode::IptablesLegacy => ("iptables-legacy-restore", "iptables-legacy"),
        _ => ("iptables-nft-restore", "iptables-nft"),
    }
}

/// Remove what an earlier [`apply`] wrote (kube-proxy rewrites its chains on every sync).
fn flush_iptables(ns: &Netns, mode: Mode) {
    let (_, iptables) = iptables_binaries(mode);
    for table in ["nat", "filter"] {
        ns.exec(&[iptables, "-t", table, "-F"]);
        ns.exec(&[iptables, "-t", table, "-X"]);
    }
}

fn feed(ns: &Netns, cmd: &[&str], input: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} refused the rules: {}\n--- input ---\n{input}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What kube-proxy does for a UDP Service whose endpoints changed: delete the conntrack
/// entries to its ClusterIP, so the next datagram is load-balanced afresh.
pub fn flush_udp_conntrack(ns: &Netns, cluster_ip: Ipv4Addr) {
    // Exit status 1 means "nothing matched", which is fine.
    ns.exec(&[
        "conntrack",
        "-D",
        "-p",
        "udp",
        "--orig-dst",
        &cluster_ip.to_string(),
    ]);
}
