//! The reference the compiler is checked against: NetworkPolicy v1 evaluated literally, one
//! packet at a time, straight from the objects (every policy, every rule, every peer, no
//! index, no merging, no cache), and a generator of random worlds to compare the two on.
//! Used by the differential test (`tests` below, in CI) and the `policy` fuzz target; the
//! daemon never calls it.
//!
//! Written from the API's field documentation, not from the compiler: a pod is isolated in
//! a direction when a policy of its namespace selects it with that policy type; it then
//! admits a packet when some rule of such a policy matches both the peer (any peer for an
//! empty list; a pod peer by namespace and pod labels, an ipBlock by CIDR minus except) and
//! the port (any for an empty list; a named port resolved on the destination pod).
//!
//! ClusterNetworkPolicy (from the network-policy-api's type documentation): the Admin
//! tier's policies selecting the pod, walked by priority (then name) and each one's rules
//! in order; the first rule matching the peer and port decides (Accept, Deny), or passes
//! to NetworkPolicy (Pass). NetworkPolicy decides when it isolates the pod; otherwise the
//! Baseline tier is walked the same way; otherwise the packet is allowed.

use std::net::IpAddr;

use super::model::{
    Action, ClusterPeer, ClusterPolicy, ClusterRule, Labels, NetworkPolicy, Peer, Pod, PodsIn,
    PortSpec, Rule, Tier, World,
};

/// Would `world`'s policies let `src` send `proto`/`dport` to `dst`, judged on node
/// `world.node` (egress of `src` when it is a pod there, ingress of `dst` likewise)?
pub fn allowed(world: &World, src: IpAddr, dst: IpAddr, proto: u8, dport: u16) -> bool {
    let local = |ip: IpAddr| pod_at(world, ip).filter(|p| p.node == world.node);
    if let Some(p) = local(src) {
        if !admits(world, p, Direction::Egress, dst, proto, dport) {
            return false;
        }
    }
    if let Some(p) = local(dst) {
        if !admits(world, p, Direction::Ingress, src, proto, dport) {
            return false;
        }
    }
    true
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Ingress,
    Egress,
}

fn pod_at(world: &World, ip: IpAddr) -> Option<&Pod> {
    world.pods.iter().find(|p| p.ips.contains(&ip))
}

fn ns_labels<'a>(world: &'a World, ns: &str) -> Option<&'a Labels> {
    world
        .namespaces
        .iter()
        .find(|n| n.name == ns)
        .map(|n| &n.labels)
}

/// Does `pod`'s policy in `dir` admit `peer` (the other end) on `proto`/`dport`? The tiers
/// in order: Admin, NetworkPolicy, Baseline, then allowed.
fn admits(world: &World, pod: &Pod, dir: Direction, peer: IpAddr, proto: u8, dport: u16) -> bool {
    match cluster_tier(world, Tier::Admin, pod, dir, peer, proto, dport) {
        Some(Action::Accept) => return true,
        Some(Action::Deny) => return false,
        Some(Action::Pass) | None => {}
    }
    if let Some(verdict) = network_policy(world, pod, dir, peer, proto, dport) {
        return verdict;
    }
    // Baseline: its Deny denies; Accept, Pass and no match all leave the default allow.
    cluster_tier(world, Tier::Baseline, pod, dir, peer, proto, dport) != Some(Action::Deny)
}

/// The action of the first rule of `tier` matching, when one does.
fn cluster_tier(
    world: &World,
    tier: Tier,
    pod: &Pod,
    dir: Direction,
    peer: IpAddr,
    proto: u8,
    dport: u16,
) -> Option<Action> {
    let empty = Labels::new();
    let own_ns = ns_labels(world, &pod.namespace).unwrap_or(&empty);
    let mut policies: Vec<&ClusterPolicy> = world
        .cluster_policies
        .iter()
        .filter(|c| c.tier == tier && c.subject.matches(own_ns, &pod.labels))
        .collect();
    policies.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    let dst_pod = match dir {
        Direction::Ingress => Some(pod),
        Direction::Egress => pod_at(world, peer),
    };
    for c in policies {
        let rules = match dir {
            Direction::Ingress => &c.ingress,
            Direction::Egress => &c.egress,
        };
        for r in rules {
            if cluster_peer_matches(world, r, peer) && port_matches(&r.ports, proto, dport, dst_pod)
            {
                return Some(r.action);
            }
        }
    }
    None
}

fn cluster_peer_matches(world: &World, rule: &ClusterRule, peer: IpAddr) -> bool {
    let selects = |sel: &PodsIn| {
        pod_at(world, peer).is_some_and(|p| {
            let empty = Labels::new();
            sel.matches(ns_labels(world, &p.namespace).unwrap_or(&empty), &p.labels)
        })
    };
    rule.peers.iter().any(|x| match x {
        ClusterPeer::Pods(sel) => selects(sel),
        ClusterPeer::Networks(nets) => nets.iter().any(|n| n.contains(&peer)),
    })
}

/// NetworkPolicy's verdict, when it isolates `pod` in `dir`.
fn network_policy(
    world: &World,
    pod: &Pod,
    dir: Direction,
    peer: IpAddr,
    proto: u8,
    dport: u16,
) -> Option<bool> {
    let isolating: Vec<&NetworkPolicy> = world
        .policies
        .iter()
        .filter(|p| p.namespace == pod.namespace && p.pod_selector.matches(&pod.labels))
        .filter(|p| match dir {
            Direction::Ingress => p.ingress_isolates,
            Direction::Egress => p.egress_isolates,
        })
        .collect();
    if isolating.is_empty() {
        return None;
    }
    // The pod whose named ports a rule's port names refer to: the destination.
    let dst_pod = match dir {
        Direction::Ingress => Some(pod),
        Direction::Egress => pod_at(world, peer),
    };
    Some(isolating.iter().any(|p| {
        let rules = match dir {
            Direction::Ingress => &p.ingress,
            Direction::Egress => &p.egress,
        };
        rules
            .iter()
            .any(|r| rule_matches(world, p, r, peer, proto, dport, dst_pod))
    }))
}

fn rule_matches(
    world: &World,
    policy: &NetworkPolicy,
    rule: &Rule,
    peer: IpAddr,
    proto: u8,
    dport: u16,
    dst_pod: Option<&Pod>,
) -> bool {
    let peer_ok = rule.peers.is_empty()
        || rule.peers.iter().any(|x| match x {
            Peer::Block { cidr, except } => {
                cidr.contains(&peer) && !except.iter().any(|e| e.contains(&peer))
            }
            Peer::Pods { namespaces, pods } => match pod_at(world, peer) {
                None => false,
                Some(p) => {
                    let ns_ok = match namespaces {
                        None => p.namespace == policy.namespace,
                        Some(s) => {
                            let empty = Labels::new();
                            s.matches(ns_labels(world, &p.namespace).unwrap_or(&empty))
                        }
                    };
                    ns_ok && pods.as_ref().is_none_or(|s| s.matches(&p.labels))
                }
            },
        });
    peer_ok && port_matches(&rule.ports, proto, dport, dst_pod)
}

/// Any port for an empty list; a named port resolved on the destination pod.
fn port_matches(ports: &[PortSpec], proto: u8, dport: u16, dst_pod: Option<&Pod>) -> bool {
    ports.is_empty()
        || ports.iter().any(|x| match x {
            PortSpec::All { proto: p } => *p == proto,
            PortSpec::Number {
                proto: p,
                port,
                end,
            } => *p == proto && *port <= dport && dport <= *end,
            PortSpec::Named { proto: p, name } => {
                *p == proto
                    && dst_pod.is_some_and(|d| {
                        d.named_ports
                            .iter()
                            .any(|n| n.name == *name && n.proto == proto && n.port == dport)
                    })
            }
        })
}

/// A small deterministic generator (xorshift64*), so a failing case can be replayed from
/// its seed; the fuzz target drives it with its input instead.
pub struct Gen {
    state: u64,
    bytes: Option<(Vec<u8>, usize)>,
}

impl Gen {
    pub fn seeded(seed: u64) -> Gen {
        Gen {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            bytes: None,
        }
    }

    /// Draw from `data` first (a fuzzer's input), then zeros.
    pub fn from_bytes(data: &[u8]) -> Gen {
        Gen {
            state: 1,
            bytes: Some((data.to_vec(), 0)),
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        if let Some((data, at)) = &mut self.bytes {
            let b = data.get(*at).copied().unwrap_or(0);
            *at += 1;
            return u64::from(b);
        }
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 8
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const KEYS: [&str; 3] = ["app", "tier", "team"];
const VALUES: [&str; 3] = ["a", "b", "c"];
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PORTS: [u16; 5] = [80, 81, 1005, 8080, 9003];
pub const PROTOCOLS: [u8; 4] = [6, 17, 132, 1];
const PORT_NAMES: [&str; 2] = ["serve", "dns"];

fn labels(g: &mut Gen) -> Labels {
    let mut l = Labels::new();
    for k in KEYS {
        if g.chance(2) {
            l.insert(k.into(), g.pick(&VALUES).to_string());
        }
    }
    l
}

fn selector(g: &mut Gen) -> super::model::Selector {
    use super::model::{Expression, Operator, Selector};
    let mut s = Selector::default();
    for _ in 0..g.below(3) {
        if g.chance(2) {
            s.match_labels
                .insert(g.pick(&KEYS).to_string(), g.pick(&VALUES).to_string());
        } else {
            let op = *g.pick(&[
                Operator::In,
                Operator::NotIn,
                Operator::Exists,
                Operator::DoesNotExist,
            ]);
            let values = match op {
                Operator::In | Operator::NotIn => (0..1 + g.below(2))
                    .map(|_| g.pick(&VALUES).to_string())
                    .collect(),
                _ => Vec::new(),
            };
            s.expressions.push(Expression {
                key: g.pick(&KEYS).to_string(),
                op,
                values,
            });
        }
    }
    s
}

fn port_spec(g: &mut Gen) -> PortSpec {
    let proto = *g.pick(&PROTOCOLS[..3]);
    match g.below(4) {
        0 => PortSpec::All { proto },
        1 => PortSpec::Named {
            proto,
            name: g.pick(&PORT_NAMES).to_string(),
        },
        2 => PortSpec::Number {
            proto,
            port: 1000,
            end: 1000 + g.below(20) as u16,
        },
        _ => {
            let port = *g.pick(&PORTS);
            PortSpec::Number {
                proto,
                port,
                end: port,
            }
        }
    }
}

fn rule(g: &mut Gen) -> Rule {
    let mut r = Rule::default();
    for _ in 0..g.below(3) {
        r.peers.push(match g.below(4) {
            0 => Peer::Block {
                cidr: g
                    .pick(&[
                        "10.0.0.0/16",
                        "10.0.1.0/24",
                        "0.0.0.0/0",
                        "192.168.0.0/16",
                        "fd00::/8",
                    ])
                    .parse()
                    .unwrap(),
                except: if g.chance(2) {
                    vec![g
                        .pick(&["10.0.1.0/28", "10.0.2.0/24", "192.168.7.0/24"])
                        .parse()
                        .unwrap()]
                } else {
                    Vec::new()
                },
            },
            1 => Peer::Pods {
                namespaces: None,
                pods: Some(selector(g)),
            },
            2 => Peer::Pods {
                namespaces: Some(selector(g)),
                pods: None,
            },
            _ => Peer::Pods {
                namespaces: Some(selector(g)),
                pods: Some(selector(g)),
            },
        });
    }
    for _ in 0..g.below(3) {
        r.ports.push(port_spec(g));
    }
    r
}

/// A random world on node "n1": three namespaces, up to ten pods (most on n1, some on n2,
/// a few dual-stack), up to five policies.
pub fn world(g: &mut Gen) -> World {
    use super::model::{NamedPort, Namespace};
    let mut w = World {
        node: "n1".into(),
        node_addrs: vec!["10.0.1.1".parse().unwrap()],
        ..World::default()
    };
    for ns in NAMESPACES {
        w.namespaces.push(Namespace {
            name: ns.into(),
            labels: labels(g),
            log_denied: false,
        });
    }
    for i in 0..1 + g.below(10) {
        let local = !g.chance(4);
        let subnet = if local { 1 } else { 2 };
        let mut ips: Vec<IpAddr> = vec![format!("10.0.{subnet}.{}", 10 + i).parse().unwrap()];
        if g.chance(3) {
            ips.push(format!("fd00:{subnet}::{:x}", 10 + i).parse().unwrap());
        }
        let mut named_ports = Vec::new();
        for name in PORT_NAMES {
            if g.chance(2) {
                named_ports.push(NamedPort {
                    name: name.into(),
                    proto: *g.pick(&PROTOCOLS[..3]),
                    port: *g.pick(&PORTS),
                });
            }
        }
        w.pods.push(Pod {
            namespace: g.pick(&NAMESPACES).to_string(),
            name: format!("p{i}"),
            labels: labels(g),
            ips,
            node: if local { "n1" } else { "n2" }.into(),
            named_ports,
        });
    }
    for i in 0..g.below(6) {
        let ingress: Vec<Rule> = (0..g.below(3)).map(|_| rule(g)).collect();
        let egress: Vec<Rule> = (0..g.below(3)).map(|_| rule(g)).collect();
        let (ingress_isolates, egress_isolates) = match g.below(4) {
            0 => (true, false),
            1 => (false, true),
            2 => (true, true),
            _ => (true, !egress.is_empty()),
        };
        w.policies.push(NetworkPolicy {
            namespace: g.pick(&NAMESPACES).to_string(),
            name: format!("np{i}"),
            pod_selector: selector(g),
            ingress_isolates,
            egress_isolates,
            ingress,
            egress,
        });
    }
    w.cluster_policies = cluster_policies(g);
    w
}

fn pods_in(g: &mut Gen) -> PodsIn {
    PodsIn {
        namespaces: selector(g),
        pods: if g.chance(2) {
            super::model::Selector::default()
        } else {
            selector(g)
        },
    }
}

fn cluster_rule(g: &mut Gen) -> ClusterRule {
    let mut peers = Vec::new();
    for _ in 0..1 + g.below(2) {
        peers.push(if g.chance(3) {
            ClusterPeer::Networks(
                (0..1 + g.below(2))
                    .map(|_| {
                        g.pick(&["10.0.1.0/24", "0.0.0.0/0", "192.168.0.0/16", "fd00::/8"])
                            .parse()
                            .unwrap()
                    })
                    .collect(),
            )
        } else {
            ClusterPeer::Pods(pods_in(g))
        });
    }
    ClusterRule {
        name: if g.chance(2) {
            String::new()
        } else {
            "r".into()
        },
        action: *g.pick(&[Action::Accept, Action::Deny, Action::Pass]),
        peers,
        ports: (0..g.below(3)).map(|_| port_spec(g)).collect(),
    }
}

/// Up to three cluster policies, in either tier, with priorities that often tie.
fn cluster_policies(g: &mut Gen) -> Vec<ClusterPolicy> {
    (0..g.below(4))
        .map(|i| ClusterPolicy {
            name: format!("cnp{i}"),
            tier: if g.chance(2) {
                Tier::Admin
            } else {
                Tier::Baseline
            },
            priority: *g.pick(&[0, 5, 5, 1000]),
            subject: pods_in(g),
            ingress: (0..g.below(3)).map(|_| cluster_rule(g)).collect(),
            egress: (0..g.below(3)).map(|_| cluster_rule(g)).collect(),
        })
        .collect()
}

/// Addresses worth sending from and to in `w`: every pod's, and a few outside ones.
pub fn addresses(w: &World) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = w.pods.iter().flat_map(|p| p.ips.iter().copied()).collect();
    for a in [
        "192.168.7.9",
        "192.168.1.1",
        "10.0.3.3",
        "8.8.8.8",
        "fd00:9::1",
    ] {
        out.push(a.parse().unwrap());
    }
    out
}

/// What [`compare`] compared: packets, and how many of them a cluster policy's rule
/// decided (so a test can show the tiers were exercised, not only NetworkPolicy).
#[derive(Debug, Default, Clone, Copy)]
pub struct Compared {
    pub packets: usize,
    pub by_cluster_rule: usize,
    pub denied: usize,
}

/// Compare the compiled policy's classifier with [`allowed`] on every pair of
/// [`addresses`] of one family, every protocol and port; the first disagreement, described.
pub fn compare(w: &World) -> Result<Compared, String> {
    use crate::datapath::policy::{classify, ip_key, Tuple};
    use crate::datapath::policy::{Because, Tier};
    let compiled = super::compile::Compiler::new(0).compile(w);
    let addrs = addresses(w);
    let local = |ip: IpAddr| pod_at(w, ip).is_some_and(|p| p.node == w.node);
    let is_pod = |ip: IpAddr| pod_at(w, ip).is_some();
    let mut checked = Compared::default();
    let cluster_rule = |r| {
        compiled
            .policy_of(r)
            .is_some_and(|p| p.tier != Tier::NetworkPolicy)
    };
    for &src in &addrs {
        for &dst in &addrs {
            if src == dst || src.is_ipv4() != dst.is_ipv4() {
                continue;
            }
            // What the switch sees: a pod's packet, or one for a pod; never between two
            // outside addresses.
            if !local(src) && !local(dst) {
                continue;
            }
            for proto in PROTOCOLS {
                for port in PORTS {
                    let port = if proto == 1 { 0 } else { port };
                    let t = Tuple {
                        src: ip_key(src),
                        dst: ip_key(dst),
                        proto,
                        sport: 40000,
                        dport: Some(port),
                        from_node: false,
                        to_local_pod: local(dst),
                        to_node: !is_pod(dst),
                    };
                    let decision = classify(&compiled, &t);
                    let ours = decision.allowed;
                    let truth = allowed(w, src, dst, proto, port);
                    checked.packets += 1;
                    checked.denied += usize::from(!ours);
                    checked.by_cluster_rule += usize::from(match decision.because {
                        Because::Denied { .. } => true,
                        Because::Rule(r) => cluster_rule(r),
                        _ => decision.egress_rule.is_some_and(cluster_rule),
                    });
                    if ours != truth {
                        return Err(format!(
                            "{src} -> {dst} proto {proto} port {port}: compiled says {ours}, the reference says {truth}\nworld: {w:#?}"
                        ));
                    }
                }
            }
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_classifier_agrees_with_the_literal_reading_on_thousands_of_random_worlds() {
        let mut total = Compared::default();
        for seed in 0..3000 {
            let mut g = Gen::seeded(seed);
            let w = world(&mut g);
            match compare(&w) {
                Ok(n) => {
                    total.packets += n.packets;
                    total.by_cluster_rule += n.by_cluster_rule;
                    total.denied += n.denied;
                }
                Err(e) => panic!("seed {seed}: {e}"),
            }
        }
        assert!(total.packets > 100_000, "only {total:?} packets compared");
        // Both verdicts, and the cluster tiers, are well represented.
        assert!(total.denied * 10 > total.packets, "{total:?}");
        assert!(total.by_cluster_rule * 25 > total.packets, "{total:?}");
    }
}
