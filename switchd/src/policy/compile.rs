//! The policy compiler: the watched objects ([`World`]) in, the [`Policy`] the datapath
//! enforces out. Pure: no I/O, no clocks.
//!
//! For each of this node's pods, the policies of its namespace that select it are merged
//! per direction into one [`RuleSet`]: peer sets per (protocol, port), per port range and
//! for every port, each peer set a hash set of pod addresses plus a prefix set of ipBlocks.
//! Pods isolated by the same policies (and, where an ingress rule names a port, with the
//! same named ports) share one compiled set, so a thousand pods behind one policy cost one
//! compile. Named ports resolve per target pod: an ingress rule's on the pod it protects,
//! an egress rule's on each peer pod (two peers may give one name different numbers).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::model::{
    ClusterPeer, ClusterPolicy, NetworkPolicy, Peer, Pod, PodsIn, PortSpec, Rule, World,
};
use crate::datapath::policy::{
    ip_key, key_prefix, Action, ClusterSets, Direction, Guarded, PeerSet, Policy, PolicyCounters,
    PolicyInfo, RateGate, RuleInfo, RuleRef, RuleSet, Tier, CLUSTER_POLICY_PREFIX,
};

/// What survives from one compile to the next: the per-policy counters (by name) and the
/// epoch.
#[derive(Debug, Default)]
pub struct Compiler {
    counters: HashMap<String, Arc<PolicyCounters>>,
    epoch: u32,
    denied_log: Arc<RateGate>,
}

impl Compiler {
    pub fn new(denied_log_rate: u32) -> Compiler {
        Compiler {
            counters: HashMap::new(),
            epoch: 0,
            denied_log: Arc::new(RateGate::new(denied_log_rate)),
        }
    }

    /// A compiler whose first epoch follows `last`: one that replaces a compiler lost to a
    /// failure must never reuse an epoch, or verdicts cached under the old one would pass
    /// for current.
    pub fn after(denied_log_rate: u32, last: u32) -> Compiler {
        Compiler {
            epoch: last,
            ..Compiler::new(denied_log_rate)
        }
    }

    /// Compile `world` into the next [`Policy`] (a new epoch).
    pub fn compile(&mut self, world: &World) -> Policy {
        self.epoch = self.epoch.wrapping_add(1);
        let mut out = compile(world, self.epoch, &mut self.counters);
        out.denied_log = self.denied_log.clone();
        // Counters of policies that are gone are dropped with them.
        let live: std::collections::HashSet<&str> =
            out.policies.iter().map(|p| p.name.as_str()).collect();
        self.counters.retain(|name, _| live.contains(name.as_str()));
        out
    }
}

/// The namespaces' labels, by name.
struct Index<'w> {
    world: &'w World,
    ns_labels: HashMap<&'w str, &'w super::model::Labels>,
    /// Pods with an address, by namespace.
    pods_by_ns: HashMap<&'w str, Vec<&'w Pod>>,
    /// Pods with an address, by one of their labels (key, value): a selector with
    /// `matchLabels` starts from its rarest label's pods instead of every pod.
    pods_by_label: HashMap<(&'w str, &'w str), Vec<&'w Pod>>,
}

impl<'w> Index<'w> {
    fn new(world: &'w World) -> Index<'w> {
        let ns_labels = world
            .namespaces
            .iter()
            .map(|n| (n.name.as_str(), &n.labels))
            .collect();
        let mut pods_by_ns: HashMap<&str, Vec<&Pod>> = HashMap::new();
        let mut pods_by_label: HashMap<(&str, &str), Vec<&Pod>> = HashMap::new();
        for p in world.pods.iter().filter(|p| !p.ips.is_empty()) {
            pods_by_ns.entry(p.namespace.as_str()).or_default().push(p);
            for (k, v) in &p.labels {
                pods_by_label
                    .entry((k.as_str(), v.as_str()))
                    .or_default()
                    .push(p);
            }
        }
        Index {
            world,
            ns_labels,
            pods_by_ns,
            pods_by_label,
        }
    }

    /// The fewest pods that can match `sel`, when its `matchLabels` narrow them down (an
    /// empty list when some label is on no pod); `None` when every pod is a candidate.
    fn candidates<'s>(&'s self, sel: &'s super::model::Selector) -> Option<&'s [&'w Pod]> {
        let empty: &'s [&'w Pod] = &[];
        sel.match_labels
            .iter()
            .map(|(k, v)| {
                self.pods_by_label
                    .get(&(k.as_str(), v.as_str()))
                    .map_or(empty, Vec::as_slice)
            })
            .min_by_key(|c| c.len())
    }

    /// The pods a `Peer::Pods` of a policy in namespace `own_ns` selects.
    fn peer_pods(
        &self,
        own_ns: &str,
        namespaces: Option<&super::model::Selector>,
        pods: Option<&super::model::Selector>,
    ) -> Vec<&'w Pod> {
        let empty = super::model::Labels::new();
        let in_ns = |ns: &str| -> Vec<&'w Pod> {
            self.pods_by_ns
                .get(ns)
                .map(|v| {
                    v.iter()
                        .copied()
                        .filter(|p| pods.is_none_or(|s| s.matches(&p.labels)))
                        .collect()
                })
                .unwrap_or_default()
        };
        match namespaces {
            None => in_ns(own_ns),
            Some(sel) => {
                if let Some(c) = pods.and_then(|p| self.candidates(p)) {
                    let ns_ok =
                        |ns: &str| sel.matches(self.ns_labels.get(ns).copied().unwrap_or(&empty));
                    return c
                        .iter()
                        .copied()
                        .filter(|p| {
                            pods.is_none_or(|s| s.matches(&p.labels)) && ns_ok(&p.namespace)
                        })
                        .collect();
                }
                let mut out = Vec::new();
                for ns in self.pods_by_ns.keys() {
                    let labels = self.ns_labels.get(ns).copied().unwrap_or(&empty);
                    if sel.matches(labels) {
                        out.extend(in_ns(ns));
                    }
                }
                out
            }
        }
    }
}

impl<'w> Index<'w> {
    /// The pods `sel` selects (a cluster policy's subject or peer).
    fn pods_in(&self, sel: &PodsIn) -> Vec<&'w Pod> {
        let empty = super::model::Labels::new();
        let ns_ok = |ns: &str| {
            sel.namespaces
                .matches(self.ns_labels.get(ns).copied().unwrap_or(&empty))
        };
        if let Some(c) = self.candidates(&sel.pods) {
            return c
                .iter()
                .copied()
                .filter(|p| sel.pods.matches(&p.labels) && ns_ok(&p.namespace))
                .collect();
        }
        let mut out = Vec::new();
        for (ns, pods) in &self.pods_by_ns {
            let labels = self.ns_labels.get(ns).copied().unwrap_or(&empty);
            if sel.namespaces.matches(labels) {
                out.extend(pods.iter().copied().filter(|p| sel.pods.matches(&p.labels)));
            }
        }
        out
    }
}

/// The key pods share a compiled rule set by: its tier, which policies, and (when an
/// ingress rule names a port) the pod's own named ports.
type SetKey = (Direction, Tier, Vec<u32>, Option<Vec<(String, u8, u16)>>);

fn compile(
    world: &World,
    epoch: u32,
    counters: &mut HashMap<String, Arc<PolicyCounters>>,
) -> Policy {
    let index = Index::new(world);
    let mut out = Policy {
        epoch,
        ..Policy::default()
    };
    for a in &world.node_addrs {
        out.node_addrs.insert(ip_key(*a));
    }
    out.deferred = world.service_cidrs.iter().map(|n| key_prefix(*n)).collect();
    // Every pod by address, for explanations and logs.
    for p in world.pods.iter().filter(|p| !p.ips.is_empty()) {
        let at = out.pods.len() as u32;
        out.pods.push(format!("{}/{}", p.namespace, p.name));
        for ip in &p.ips {
            out.pod_by_ip.insert(ip_key(*ip), at);
        }
    }
    // Policies in a stable order (namespace, name), so rule numbers do not move.
    let mut policies: Vec<&NetworkPolicy> = world.policies.iter().collect();
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for p in &policies {
        let name = format!("{}/{}", p.namespace, p.name);
        let c = counters.entry(name.clone()).or_default().clone();
        out.policies.push(PolicyInfo {
            name,
            tier: Tier::NetworkPolicy,
            priority: 0,
            counters: c,
        });
    }
    // Cluster policies in their order of evaluation: tier, priority, then name (the API
    // leaves ties to the implementation; the name makes ours stable). Their rules are
    // numbered first, in that order, so the lowest-numbered match is the one that decides.
    let mut cluster: Vec<&ClusterPolicy> = world.cluster_policies.iter().collect();
    cluster.sort_by(|a, b| (a.tier, a.priority, &a.name).cmp(&(b.tier, b.priority, &b.name)));
    let mut cluster_rules: Vec<[Vec<RuleRef>; 2]> = Vec::with_capacity(cluster.len());
    for c in &cluster {
        let name = format!("{CLUSTER_POLICY_PREFIX}{}", c.name);
        let counters = counters.entry(name.clone()).or_default().clone();
        let at = out.policies.len() as u32;
        out.policies.push(PolicyInfo {
            name,
            tier: c.tier,
            priority: c.priority,
            counters,
        });
        let mut refs = [Vec::new(), Vec::new()];
        for (d, list) in [
            (Direction::Ingress, &c.ingress),
            (Direction::Egress, &c.egress),
        ] {
            for (i, rule) in list.iter().enumerate() {
                out.rules.push(RuleInfo {
                    policy: at,
                    direction: d,
                    index: i as u32,
                    action: rule.action,
                    name: (!rule.name.is_empty()).then(|| rule.name.clone()),
                });
                refs[d as usize].push(RuleRef(out.rules.len() as u32 - 1));
            }
        }
        cluster_rules.push(refs);
    }
    let log_ns: std::collections::HashSet<&str> = world
        .namespaces
        .iter()
        .filter(|n| n.log_denied)
        .map(|n| n.name.as_str())
        .collect();
    let mut sets: HashMap<SetKey, Arc<RuleSet>> = HashMap::new();
    // Pods with the same cluster sets share one `ClusterSets` (keyed by the sets' addresses,
    // which `sets` keeps alive).
    let mut shared_cluster: HashMap<[usize; 4], Arc<ClusterSets>> = HashMap::new();
    // Rule numbers are assigned per (policy, direction, rule) once, in `rule_ids`.
    let mut rule_ids: HashMap<(u32, Direction, u32), RuleRef> = HashMap::new();
    for pod in world
        .pods
        .iter()
        .filter(|p| p.node == world.node && !p.ips.is_empty())
    {
        let mut ingress = Vec::new();
        let mut egress = Vec::new();
        for (i, p) in policies.iter().enumerate() {
            if p.namespace != pod.namespace || !p.pod_selector.matches(&pod.labels) {
                continue;
            }
            if p.ingress_isolates {
                ingress.push(i as u32);
            }
            if p.egress_isolates {
                egress.push(i as u32);
            }
        }
        // The cluster policies selecting it, per tier and direction, in order.
        let no_labels = super::model::Labels::new();
        let ns_labels = index
            .ns_labels
            .get(pod.namespace.as_str())
            .copied()
            .unwrap_or(&no_labels);
        let mut by_tier: [[Vec<u32>; 2]; 2] = Default::default();
        for (i, c) in cluster.iter().enumerate() {
            if !c.subject.matches(ns_labels, &pod.labels) {
                continue;
            }
            let t = usize::from(c.tier == Tier::Baseline);
            if !c.ingress.is_empty() {
                by_tier[t][Direction::Ingress as usize].push(i as u32);
            }
            if !c.egress.is_empty() {
                by_tier[t][Direction::Egress as usize].push(i as u32);
            }
        }
        let selected = by_tier.iter().flatten().any(|ids| !ids.is_empty());
        if ingress.is_empty() && egress.is_empty() && !selected {
            continue;
        }
        let mut set_for = |direction: Direction,
                           tier: Tier,
                           ids: Vec<u32>|
         -> Option<Arc<RuleSet>> {
            if ids.is_empty() {
                return None;
            }
            let names_ports =
                |ports: &[PortSpec]| ports.iter().any(|p| matches!(p, PortSpec::Named { .. }));
            let uses_names = direction == Direction::Ingress
                && ids.iter().any(|&i| match tier {
                    Tier::NetworkPolicy => policies[i as usize]
                        .ingress
                        .iter()
                        .any(|r| names_ports(&r.ports)),
                    _ => cluster[i as usize]
                        .ingress
                        .iter()
                        .any(|r| names_ports(&r.ports)),
                });
            let named = uses_names.then(|| {
                pod.named_ports
                    .iter()
                    .map(|n| (n.name.clone(), n.proto, n.port))
                    .collect()
            });
            let key = (direction, tier, ids, named);
            if let Some(s) = sets.get(&key) {
                return Some(s.clone());
            }
            let set = Arc::new(match tier {
                Tier::NetworkPolicy => build_set(
                    &index,
                    &policies,
                    direction,
                    &key.2,
                    pod,
                    &mut out.rules,
                    &mut rule_ids,
                ),
                _ => build_cluster_set(&index, &cluster, &cluster_rules, direction, &key.2, pod),
            });
            sets.insert(key, set.clone());
            Some(set)
        };
        let ingress = set_for(Direction::Ingress, Tier::NetworkPolicy, ingress);
        let egress = set_for(Direction::Egress, Tier::NetworkPolicy, egress);
        let cluster_sets = selected.then(|| {
            let [[ai, ae], [bi, be]] = by_tier;
            let sets = ClusterSets {
                admin_ingress: set_for(Direction::Ingress, Tier::Admin, ai),
                admin_egress: set_for(Direction::Egress, Tier::Admin, ae),
                baseline_ingress: set_for(Direction::Ingress, Tier::Baseline, bi),
                baseline_egress: set_for(Direction::Egress, Tier::Baseline, be),
            };
            let ptr = |s: &Option<Arc<RuleSet>>| s.as_ref().map_or(0, |a| Arc::as_ptr(a) as usize);
            let key = [
                ptr(&sets.admin_ingress),
                ptr(&sets.admin_egress),
                ptr(&sets.baseline_ingress),
                ptr(&sets.baseline_egress),
            ];
            shared_cluster
                .entry(key)
                .or_insert_with(|| Arc::new(sets))
                .clone()
        });
        let pod_at = out.pod_by_ip[&ip_key(pod.ips[0])];
        for ip in &pod.ips {
            let key = ip_key(*ip);
            out.guarded.insert(
                key,
                Guarded {
                    pod: pod_at,
                    ingress: ingress.clone(),
                    egress: egress.clone(),
                    cluster: cluster_sets.clone(),
                },
            );
            if log_ns.contains(pod.namespace.as_str()) {
                out.log_denied.insert(key);
            }
        }
    }
    out
}

/// Merge the rules of `ids` (indexes into `policies`) in `direction` for `target` (the
/// pod they protect; its named ports resolve ingress rules' port names).
fn build_set(
    index: &Index<'_>,
    policies: &[&NetworkPolicy],
    direction: Direction,
    ids: &[u32],
    target: &Pod,
    rules: &mut Vec<RuleInfo>,
    rule_ids: &mut HashMap<(u32, Direction, u32), RuleRef>,
) -> RuleSet {
    let mut set = RuleSet {
        isolated_by: ids.to_vec(),
        ..RuleSet::default()
    };
    for &pi in ids {
        let p = policies[pi as usize];
        let list = match direction {
            Direction::Ingress => &p.ingress,
            Direction::Egress => &p.egress,
        };
        for (ri, rule) in list.iter().enumerate() {
            let r = *rule_ids
                .entry((pi, direction, ri as u32))
                .or_insert_with(|| {
                    rules.push(RuleInfo {
                        policy: pi,
                        direction,
                        index: ri as u32,
                        action: Action::Accept,
                        name: None,
                    });
                    RuleRef(rules.len() as u32 - 1)
                });
            add_rule(index, p, rule, direction, target, r, &mut set);
        }
    }
    set
}

/// The rules of the cluster policies `ids` (indexes into `cluster`, ascending: their order
/// of evaluation) in `direction` for `target`, numbered by `cluster_rules`.
fn build_cluster_set(
    index: &Index<'_>,
    cluster: &[&ClusterPolicy],
    cluster_rules: &[[Vec<RuleRef>; 2]],
    direction: Direction,
    ids: &[u32],
    target: &Pod,
) -> RuleSet {
    let mut set = RuleSet::default();
    for &ci in ids {
        let c = cluster[ci as usize];
        let list = match direction {
            Direction::Ingress => &c.ingress,
            Direction::Egress => &c.egress,
        };
        for (ri, rule) in list.iter().enumerate() {
            let r = cluster_rules[ci as usize][direction as usize][ri];
            let mut peers = Peers {
                all: false,
                pods: Vec::new(),
                blocks: Vec::new(),
            };
            for peer in &rule.peers {
                match peer {
                    ClusterPeer::Pods(sel) => peers.pods.extend(index.pods_in(sel)),
                    ClusterPeer::Networks(nets) => {
                        peers.blocks.extend(nets.iter().map(|n| (*n, Vec::new())))
                    }
                }
            }
            add_ports(index, &peers, &rule.ports, direction, target, r, &mut set);
        }
    }
    set
}

/// The peers of one rule, resolved: everyone, or pods and blocks.
struct Peers<'w> {
    all: bool,
    pods: Vec<&'w Pod>,
    blocks: Vec<(ipnet::IpNet, Vec<ipnet::IpNet>)>,
}

fn resolve_peers<'w>(index: &Index<'w>, p: &NetworkPolicy, rule: &Rule) -> Peers<'w> {
    if rule.peers.is_empty() {
        return Peers {
            all: true,
            pods: Vec::new(),
            blocks: Vec::new(),
        };
    }
    let mut out = Peers {
        all: false,
        pods: Vec::new(),
        blocks: Vec::new(),
    };
    for peer in &rule.peers {
        match peer {
            Peer::Pods { namespaces, pods } => {
                out.pods
                    .extend(index.peer_pods(&p.namespace, namespaces.as_ref(), pods.as_ref()));
            }
            Peer::Block { cidr, except } => out.blocks.push((*cidr, except.clone())),
        }
    }
    out
}

fn fill(set: &mut PeerSet, peers: &Peers<'_>, r: RuleRef) {
    if peers.all {
        set.insert_all(r);
        return;
    }
    for pod in &peers.pods {
        for ip in &pod.ips {
            set.insert_ip(ip_key(*ip), r);
        }
    }
    for (cidr, except) in &peers.blocks {
        set.blocks.insert(*cidr, except, r);
    }
}

fn add_rule(
    index: &Index<'_>,
    p: &NetworkPolicy,
    rule: &Rule,
    direction: Direction,
    target: &Pod,
    r: RuleRef,
    set: &mut RuleSet,
) {
    let peers = resolve_peers(index, p, rule);
    add_ports(index, &peers, &rule.ports, direction, target, r, set);
}

/// Admit `peers` on `ports` (every port when empty) by rule `r`.
fn add_ports(
    index: &Index<'_>,
    peers: &Peers<'_>,
    ports: &[PortSpec],
    direction: Direction,
    target: &Pod,
    r: RuleRef,
    set: &mut RuleSet,
) {
    if ports.is_empty() {
        fill(&mut set.any, peers, r);
        return;
    }
    for port in ports {
        match port {
            PortSpec::All { proto } => fill(set.ports.entry((*proto, 0)).or_default(), peers, r),
            PortSpec::Number { proto, port, end } if end == port => {
                fill(set.ports.entry((*proto, *port)).or_default(), peers, r)
            }
            PortSpec::Number { proto, port, end } => {
                if end < port {
                    continue;
                }
                match set
                    .ranges
                    .iter_mut()
                    .find(|x| (x.0, x.1, x.2) == (*proto, *port, *end))
                {
                    Some(x) => fill(&mut x.3, peers, r),
                    None => {
                        let mut s = PeerSet::default();
                        fill(&mut s, peers, r);
                        set.ranges.push((*proto, *port, *end, s));
                    }
                }
            }
            PortSpec::Named { proto, name } => match direction {
                // The protected pod's own port by that name.
                Direction::Ingress => {
                    if let Some(n) = target
                        .named_ports
                        .iter()
                        .find(|n| n.name == *name && n.proto == *proto)
                    {
                        fill(set.ports.entry((*proto, n.port)).or_default(), peers, r);
                    }
                }
                // Each peer pod's port by that name: the pods the rule names, the pods
                // whose addresses its ipBlocks cover, every pod when it admits all.
                Direction::Egress => {
                    let mut by_port: BTreeMap<u16, Vec<IpAddr>> = BTreeMap::new();
                    let named_pods: std::collections::HashSet<*const Pod> =
                        peers.pods.iter().map(|p| *p as *const Pod).collect();
                    for pod in &index.world.pods {
                        let Some(n) = pod
                            .named_ports
                            .iter()
                            .find(|n| n.name == *name && n.proto == *proto)
                        else {
                            continue;
                        };
                        let named = peers.all || named_pods.contains(&(pod as *const Pod));
                        for ip in &pod.ips {
                            let in_block = peers.blocks.iter().any(|(cidr, except)| {
                                cidr.contains(ip) && !except.iter().any(|e| e.contains(ip))
                            });
                            if named || in_block {
                                by_port.entry(n.port).or_default().push(*ip);
                            }
                        }
                    }
                    for (port, ips) in by_port {
                        let s = set.ports.entry((*proto, port)).or_default();
                        for ip in ips {
                            s.insert_ip(ip_key(ip), r);
                        }
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::flows::{FlowKey, Packet};
    use crate::datapath::policy::{police, Because, IpKey, Tuple, VerdictCache};
    use crate::policy::model::{Labels, NamedPort, Namespace, Selector};

    const TCP: u8 = 6;
    const UDP: u8 = 17;
    const SCTP: u8 = 132;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(pairs: &[(&str, &str)]) -> Selector {
        Selector {
            match_labels: labels(pairs),
            expressions: Vec::new(),
        }
    }

    fn pod(ns: &str, name: &str, ip: &str, node: &str, l: &[(&str, &str)]) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: labels(l),
            ips: ip.split(',').map(|i| i.parse().unwrap()).collect(),
            node: node.into(),
            named_ports: Vec::new(),
        }
    }

    fn ns(name: &str, l: &[(&str, &str)]) -> Namespace {
        Namespace {
            name: name.into(),
            labels: labels(l),
            log_denied: false,
        }
    }

    fn policy(ns: &str, name: &str, select: Selector) -> NetworkPolicy {
        NetworkPolicy {
            namespace: ns.into(),
            name: name.into(),
            pod_selector: select,
            ingress_isolates: true,
            egress_isolates: false,
            ingress: Vec::new(),
            egress: Vec::new(),
        }
    }

    /// x/a (10.0.1.2) and x/b (10.0.1.3) here on n1; y/c (10.0.2.2) on n2.
    fn world(policies: Vec<NetworkPolicy>) -> World {
        World {
            node: "n1".into(),
            pods: vec![
                pod("x", "a", "10.0.1.2", "n1", &[("app", "a")]),
                pod("x", "b", "10.0.1.3", "n1", &[("app", "b")]),
                pod("y", "c", "10.0.2.2", "n2", &[("app", "c")]),
            ],
            namespaces: vec![ns("x", &[("team", "x")]), ns("y", &[("team", "y")])],
            policies,
            cluster_policies: Vec::new(),
            node_addrs: vec!["10.0.1.1".parse().unwrap(), "172.30.0.11".parse().unwrap()],
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        }
    }

    fn t(src: &str, dst: &str, proto: u8, dport: u16) -> Tuple {
        let local = |ip: &str| ip.starts_with("10.0.1.");
        Tuple {
            src: ip_key(src.parse().unwrap()),
            dst: ip_key(dst.parse().unwrap()),
            proto,
            sport: 40000,
            dport: Some(dport),
            from_node: false,
            to_local_pod: local(dst),
            to_node: !dst.starts_with("10.0."),
        }
    }

    fn allowed(p: &Policy, src: &str, dst: &str, proto: u8, dport: u16) -> bool {
        crate::datapath::policy::classify(p, &t(src, dst, proto, dport)).allowed
    }

    fn compiled(w: &World) -> Policy {
        Compiler::new(10).compile(w)
    }

    #[test]
    fn a_policy_without_rules_isolates_and_names_itself_in_the_denial() {
        let p = compiled(&world(vec![policy("x", "deny-all", Selector::default())]));
        assert!(!allowed(&p, "10.0.2.2", "10.0.1.2", TCP, 80));
        assert!(!allowed(&p, "10.0.1.3", "10.0.1.2", UDP, 53));
        // Egress is not isolated by an ingress-only policy.
        assert!(allowed(&p, "10.0.1.2", "10.0.2.2", TCP, 80));
        let d = crate::datapath::policy::classify(&p, &t("10.0.2.2", "10.0.1.2", TCP, 80));
        assert!(matches!(d.because, Because::DefaultDeny { .. }));
        let why = p.explain(&d);
        assert!(why.contains("x/deny-all") && why.contains("x/a"), "{why}");
    }

    #[test]
    fn pod_and_namespace_selectors_alone_and_together() {
        let mut only_pods = policy("x", "p", sel(&[("app", "a")]));
        only_pods.ingress = vec![Rule {
            peers: vec![Peer::Pods {
                namespaces: None,
                pods: Some(sel(&[("app", "b")])),
            }],
            ports: Vec::new(),
        }];
        let p = compiled(&world(vec![only_pods.clone()]));
        assert!(allowed(&p, "10.0.1.3", "10.0.1.2", TCP, 80), "x/b is in x");
        assert!(!allowed(&p, "10.0.2.2", "10.0.1.2", TCP, 80), "y/c is not");
        // namespaceSelector alone: every pod of team=y.
        let mut by_ns = only_pods.clone();
        by_ns.ingress[0].peers = vec![Peer::Pods {
            namespaces: Some(sel(&[("team", "y")])),
            pods: None,
        }];
        let p = compiled(&world(vec![by_ns]));
        assert!(allowed(&p, "10.0.2.2", "10.0.1.2", TCP, 80));
        assert!(!allowed(&p, "10.0.1.3", "10.0.1.2", TCP, 80));
        // Both in one peer: pods labelled app=b in team=y namespaces (none).
        let mut both = only_pods;
        both.ingress[0].peers = vec![Peer::Pods {
            namespaces: Some(sel(&[("team", "y")])),
            pods: Some(sel(&[("app", "b")])),
        }];
        let p = compiled(&world(vec![both]));
        assert!(!allowed(&p, "10.0.2.2", "10.0.1.2", TCP, 80));
        assert!(!allowed(&p, "10.0.1.3", "10.0.1.2", TCP, 80));
        // Pods of another node are never guarded here.
        assert!(allowed(&p, "10.0.1.2", "10.0.2.2", TCP, 80));
    }

    #[test]
    fn ports_numbers_ranges_protocols_and_sctp() {
        let mut np = policy("x", "ports", sel(&[("app", "a")]));
        np.ingress = vec![Rule {
            peers: Vec::new(),
            ports: vec![
                PortSpec::Number {
                    proto: TCP,
                    port: 80,
                    end: 80,
                },
                PortSpec::Number {
                    proto: UDP,
                    port: 1000,
                    end: 1010,
                },
                PortSpec::Number {
                    proto: SCTP,
                    port: 9003,
                    end: 9003,
                },
                PortSpec::All { proto: UDP },
            ],
        }];
        np.ingress[0].ports.pop();
        let p = compiled(&world(vec![np.clone()]));
        assert!(allowed(&p, "10.0.2.2", "10.0.1.2", TCP, 80));
        assert!(!allowed(&p, "10.0.2.2", "10.0.1.2", TCP, 81));
        assert!(!allowed(&p, "10.0.2.2", "10.0.1.2", UDP, 80));
        assert!(allowed(&p, "10.0.2.2", "10.0.1.2", UDP, 1000));
        assert!(allowed(&p, "10.0.2.2", "10.0.1.2", UDP, 1010));
        assert!(!allowed(&p, "10.0.2.2", "10.0.1.2", UDP, 1011));
        assert!(allowed(&p, "10.0.2.2", "10.0.1.2", SCTP, 9003));
        assert!(!allowed(&p, "10.0.2.2", "10.0.1.2", SCTP, 9005));
        assert!(!allowed(&p, "10.0.2.2", "10.0.1.2", TCP, 9003));
        // ICMP is only admitted by a rule without ports.
        assert!(!allowed(&p, "10.0.2.2", "10.0.1.2", 1, 0));
        np.ingress[0].ports.push(PortSpec::All { proto: UDP });
        let p = compiled(&world(vec![np]));
        assert!(allowed(&p, "10.0.2.2", "10.0.1.2", UDP, 5353));
    }

    #[test]
    fn named_ports_resolve_on_the_pod_that_owns_them() {
        let mut w = world(Vec::new());
        w.pods[0].named_ports = vec![NamedPort {
            name: "serve".into(),
            proto: TCP,
            port: 8080,
        }];
        // The same name, another number, on another pod.
        w.pods[2].named_ports = vec![NamedPort {
            name: "serve".into(),
            proto: TCP,
            port: 9090,
        }];
        let mut ing = policy("x", "in", Selector::default());
        ing.ingress = vec![Rule {
            peers: Vec::new(),
            ports: vec![PortSpec::Named {
                proto: TCP,
                name: "serve".into(),
            }],
        }];
        let mut eg = policy("x", "out", sel(&[("app", "b")]));
        eg.ingress_isolates = false;
        eg.egress_isolates = true;
        eg.egress = ing.ingress.clone();
        w.policies = vec![ing, eg];
        let p = compiled(&w);
        assert!(allowed(&p, "10.0.2.2", "10.0.1.2", TCP, 8080));
        assert!(!allowed(&p, "10.0.2.2", "10.0.1.2", TCP, 9090));
        // x/b names no port "serve": nothing admits anything to it.
        assert!(!allowed(&p, "10.0.2.2", "10.0.1.3", TCP, 8080));
        // x/b's egress: to each peer on that peer's number.
        let mut out = t("10.0.1.3", "10.0.2.2", TCP, 9090);
        out.to_local_pod = false;
        assert!(crate::datapath::policy::classify(&p, &out).allowed);
        out.dport = Some(8080);
        assert!(!crate::datapath::policy::classify(&p, &out).allowed);
    }

    #[test]
    fn ip_blocks_with_except_and_both_families() {
        let mut np = policy("x", "blocks", sel(&[("app", "a")]));
        np.ingress_isolates = false;
        np.egress_isolates = true;
        np.egress = vec![Rule {
            peers: vec![
                Peer::Block {
                    cidr: "192.168.0.0/16".parse().unwrap(),
                    except: vec!["192.168.5.0/24".parse().unwrap()],
                },
                Peer::Block {
                    cidr: "fd00:1::/64".parse().unwrap(),
                    except: Vec::new(),
                },
            ],
            ports: Vec::new(),
        }];
        let mut w = world(vec![np]);
        w.pods[0].ips.push("fd10:244:1::2".parse().unwrap());
        let p = compiled(&w);
        assert!(allowed(&p, "10.0.1.2", "192.168.4.1", TCP, 443));
        assert!(!allowed(&p, "10.0.1.2", "192.168.5.1", TCP, 443));
        assert!(!allowed(&p, "10.0.1.2", "8.8.8.8", UDP, 53));
        assert!(allowed(&p, "fd10:244:1::2", "fd00:1::99", TCP, 443));
        assert!(!allowed(&p, "fd10:244:1::2", "fd00:2::99", TCP, 443));
    }

    #[test]
    fn services_are_judged_after_dnat_and_the_node_always_reaches_its_pods() {
        let mut np = policy("x", "lockdown", Selector::default());
        np.egress_isolates = true;
        // Egress only to y/c.
        np.egress = vec![Rule {
            peers: vec![Peer::Pods {
                namespaces: Some(Selector::default()),
                pods: Some(sel(&[("app", "c")])),
            }],
            ports: Vec::new(),
        }];
        let p = compiled(&world(vec![np]));
        // To a ClusterIP: out through the node, judged when it comes back translated.
        let d = crate::datapath::policy::classify(&p, &t("10.0.1.2", "10.96.0.10", UDP, 53));
        assert!(d.allowed && d.because == Because::Deferred);
        let mut back = t("10.0.1.2", "10.0.2.2", UDP, 53);
        back.from_node = true;
        assert!(crate::datapath::policy::classify(&p, &back).allowed);
        back.dst = ip_key("10.0.1.3".parse().unwrap());
        back.to_local_pod = true;
        assert!(!crate::datapath::policy::classify(&p, &back).allowed);
        // Outside, not a Service: denied on the way out.
        assert!(!allowed(&p, "10.0.1.2", "1.1.1.1", TCP, 443));
        // Kubelet's probe from the node itself.
        let mut probe = t("172.30.0.11", "10.0.1.2", TCP, 8080);
        probe.from_node = true;
        let d = crate::datapath::policy::classify(&p, &probe);
        assert!(d.allowed && d.because == Because::FromNode);
        // The same address through the tunnel is not the node.
        probe.from_node = false;
        assert!(!crate::datapath::policy::classify(&p, &probe).allowed);
    }

    #[test]
    fn several_policies_add_up() {
        let mut a = policy("x", "a", sel(&[("app", "a")]));
        a.ingress = vec![Rule {
            peers: vec![Peer::Pods {
                namespaces: None,
                pods: Some(sel(&[("app", "b")])),
            }],
            ports: Vec::new(),
        }];
        let mut b = policy("x", "b", sel(&[("app", "a")]));
        b.ingress = vec![Rule {
            peers: vec![Peer::Pods {
                namespaces: Some(sel(&[("team", "y")])),
                pods: None,
            }],
            ports: vec![PortSpec::Number {
                proto: TCP,
                port: 80,
                end: 80,
            }],
        }];
        let p = compiled(&world(vec![a, b]));
        assert!(allowed(&p, "10.0.1.3", "10.0.1.2", TCP, 81));
        assert!(allowed(&p, "10.0.2.2", "10.0.1.2", TCP, 80));
        assert!(!allowed(&p, "10.0.2.2", "10.0.1.2", TCP, 81));
        let d = crate::datapath::policy::classify(&p, &t("10.0.2.2", "10.0.1.2", TCP, 80));
        assert!(
            p.explain(&d).contains("x/b ingress rule 0"),
            "{}",
            p.explain(&d)
        );
        let d = crate::datapath::policy::classify(&p, &t("10.0.2.2", "10.0.1.2", TCP, 81));
        assert!(p.explain(&d).contains("x/a,x/b"), "{}", p.explain(&d));
    }

    fn packet(t: &Tuple, tcp_flags: u8) -> Packet {
        let v4 = |k: IpKey| -> u32 {
            crate::datapath::policy::ip_of(k)
                .to_string()
                .parse::<std::net::Ipv4Addr>()
                .unwrap()
                .into()
        };
        Packet::Flow {
            key: FlowKey {
                src: v4(t.src),
                dst: v4(t.dst),
                proto: t.proto,
                sport: t.sport,
                dport: t.dport.unwrap(),
                fragment: false,
                v6: false,
            },
            tcp_flags,
            more_fragments: false,
            ip_id: 0,
        }
    }

    fn reply(t: &Tuple) -> Tuple {
        Tuple {
            src: t.dst,
            dst: t.src,
            sport: t.dport.unwrap(),
            dport: Some(t.sport),
            ..*t
        }
    }

    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;

    #[test]
    fn replies_pass_a_revoking_policy_cuts_the_flow_at_its_next_packet_and_removal_resumes_it() {
        let mut c = Compiler::new(10);
        // x/b may reach x/a; x/a's own egress is locked down (so its replies pass only as
        // replies).
        let mut open = policy("x", "open", sel(&[("app", "a")]));
        open.egress_isolates = true;
        open.ingress = vec![Rule {
            peers: vec![Peer::Pods {
                namespaces: None,
                pods: Some(sel(&[("app", "b")])),
            }],
            ports: Vec::new(),
        }];
        let p1 = c.compile(&world(vec![open.clone()]));
        let cache = VerdictCache::new(1024, 3);
        let fwd = t("10.0.1.3", "10.0.1.2", TCP, 80);
        let back = reply(&fwd);
        assert!(police(&p1, &cache, &fwd, &packet(&fwd, SYN), 1).allowed);
        let r = police(&p1, &cache, &back, &packet(&back, SYN | ACK), 1);
        assert!(r.allowed && r.decided.is_none(), "a reply, from the cache");
        // a's own new connection to b is denied by its egress lockdown.
        let own = reply(&t("10.0.1.3", "10.0.1.2", TCP, 5555));
        let own = Tuple {
            sport: 41000,
            dport: Some(80),
            ..own
        };
        assert!(!police(&p1, &cache, &own, &packet(&own, SYN), 1).allowed);
        // Steady state: no classification.
        assert!(police(&p1, &cache, &fwd, &packet(&fwd, ACK), 2)
            .decided
            .is_none());
        // Revoke: a's ingress admits nobody now.
        let mut shut = open.clone();
        shut.ingress.clear();
        let p2 = c.compile(&world(vec![shut]));
        assert_ne!(p1.epoch, p2.epoch);
        assert!(!police(&p2, &cache, &fwd, &packet(&fwd, ACK), 3).allowed);
        assert!(!police(&p2, &cache, &back, &packet(&back, ACK), 3).allowed);
        // Restore: the same connection flows again (mid-stream segments both ways).
        let p3 = c.compile(&world(vec![open]));
        assert!(police(&p3, &cache, &fwd, &packet(&fwd, ACK), 4).allowed);
        assert!(police(&p3, &cache, &back, &packet(&back, ACK), 4).allowed);
    }

    #[test]
    fn a_udp_answer_from_a_service_reaches_an_ingress_isolated_client() {
        // x/a admits nobody, but its own query to a ClusterIP must get its answer, which
        // comes back from the node with the Service's address as source.
        let p = compiled(&world(vec![policy("x", "deny-in", Selector::default())]));
        let cache = VerdictCache::new(1024, 3);
        let query = t("10.0.1.2", "10.96.0.10", UDP, 53);
        assert!(crate::datapath::policy::classify::concerns(&p, &query));
        assert!(police(&p, &cache, &query, &packet(&query, 0), 1).allowed);
        let mut answer = reply(&query);
        answer.from_node = true;
        answer.to_local_pod = true;
        answer.to_node = false;
        assert!(police(&p, &cache, &answer, &packet(&answer, 0), 1).allowed);
        // An unsolicited datagram from the same address is not an answer.
        let other = Tuple {
            dport: Some(9),
            ..answer
        };
        assert!(!police(&p, &cache, &other, &packet(&other, 0), 1).allowed);
    }

    #[test]
    fn a_connection_older_than_the_policy_is_judged_the_way_it_runs() {
        // x/b has streamed to x/a:9000 since before any policy: no entry either way.
        let p = compiled(&world(vec![policy("x", "deny-in", sel(&[("app", "a")]))]));
        let cache = VerdictCache::new(1024, 3);
        let data = t("10.0.1.3", "10.0.1.2", TCP, 9000);
        let ack = reply(&data);
        // The server's ACK may come first: it must not make the client's data a reply.
        let first = police(&p, &cache, &ack, &packet(&ack, ACK), 1);
        assert!(first.allowed, "x/a's own egress is not isolated");
        assert!(!police(&p, &cache, &data, &packet(&data, ACK), 1).allowed);
        assert!(!police(&p, &cache, &data, &packet(&data, ACK), 2).allowed);
        // The same for a UDP flow to a server port.
        let dgram = Tuple {
            proto: UDP,
            dport: Some(53),
            ..data
        };
        let answer = reply(&dgram);
        assert!(police(&p, &cache, &answer, &packet(&answer, 0), 1).allowed);
        assert!(!police(&p, &cache, &dgram, &packet(&dgram, 0), 1).allowed);
    }

    #[test]
    fn ports_tell_a_server_from_a_client() {
        use crate::datapath::policy::classify::looks_like_reply;
        assert!(looks_like_reply(80, 40000));
        assert!(!looks_like_reply(40000, 80));
        assert!(
            looks_like_reply(9000, 61000),
            "61000 is above the range: lower wins"
        );
        assert!(!looks_like_reply(9000, 80));
        assert!(!looks_like_reply(53, 53));
    }

    #[test]
    fn the_workers_memo_never_outlives_a_policy_change() {
        use crate::datapath::policy::{enforce, Memo};
        use crate::datapath::{craft, frame::mac_for_ip, DropReason, Verdict};
        let (b, a) = ("10.0.1.3".parse().unwrap(), "10.0.1.2".parse().unwrap());
        let mut frame = craft::ipv4_packet(mac_for_ip(b), mac_for_ip(a), b, a, TCP, 80, 60);
        frame[crate::datapath::frame::VNET_HDR_LEN + 14 + 20 + 13] = ACK;
        let mut c = Compiler::new(10);
        let mut open = policy("x", "open", sel(&[("app", "a")]));
        open.ingress = vec![Rule::default()];
        let p1 = c.compile(&world(vec![open]));
        let p2 = c.compile(&world(vec![policy("x", "shut", sel(&[("app", "a")]))]));
        let cache = VerdictCache::new(1024, 3);
        let mut memo = Memo::default();
        let deliver = Verdict::Forward(1);
        for _ in 0..3 {
            assert_eq!(
                enforce(&frame, 2, deliver, &p1, &cache, 7, &mut memo).0,
                deliver
            );
        }
        assert_ne!(memo, Memo::default(), "the flow is remembered");
        // Same second, same flow, new policy: judged again, and denied.
        assert_eq!(
            enforce(&frame, 2, deliver, &p2, &cache, 7, &mut memo).0,
            Verdict::Drop(DropReason::PolicyDenied)
        );
        assert_eq!(
            enforce(&frame, 2, deliver, &p2, &cache, 7, &mut memo).0,
            Verdict::Drop(DropReason::PolicyDenied),
            "a denial is never remembered as a pass"
        );
    }

    #[test]
    fn a_lost_entry_is_picked_up_for_tcp_but_not_for_udp() {
        let mut np = policy("x", "lock", sel(&[("app", "a")]));
        np.ingress_isolates = false;
        np.egress_isolates = true;
        let p = compiled(&world(vec![np]));
        let cache = VerdictCache::new(1024, 3);
        // A reply of a connection x/b opened to x/a before this switchd started.
        let back = reply(&t("10.0.1.3", "10.0.1.2", TCP, 80));
        assert!(police(&p, &cache, &back, &packet(&back, ACK), 1).allowed);
        // ... but never an opening SYN, nor UDP.
        let open = Tuple {
            sport: 41000,
            ..back
        };
        assert!(!police(&p, &cache, &open, &packet(&open, SYN), 1).allowed);
        let udp = Tuple {
            proto: UDP,
            sport: 53,
            ..back
        };
        assert!(!police(&p, &cache, &udp, &packet(&udp, 0), 1).allowed);
    }

    #[test]
    fn a_label_change_moves_a_pod_out_of_a_policy() {
        let mut c = Compiler::new(10);
        let mut np = policy("x", "web", sel(&[("app", "a")]));
        np.ingress = vec![Rule {
            peers: vec![Peer::Pods {
                namespaces: None,
                pods: Some(sel(&[("role", "client")])),
            }],
            ports: Vec::new(),
        }];
        let mut w = world(vec![np]);
        w.pods[1].labels.insert("role".into(), "client".into());
        let p = c.compile(&w);
        assert!(allowed(&p, "10.0.1.3", "10.0.1.2", TCP, 80));
        w.pods[1].labels.remove("role");
        let p = c.compile(&w);
        assert!(!allowed(&p, "10.0.1.3", "10.0.1.2", TCP, 80));
    }

    #[test]
    fn counters_survive_recompiles_and_count_allows_and_denials() {
        let mut c = Compiler::new(10);
        let mut np = policy("x", "web", sel(&[("app", "a")]));
        np.ingress = vec![Rule {
            peers: Vec::new(),
            ports: vec![PortSpec::Number {
                proto: TCP,
                port: 80,
                end: 80,
            }],
        }];
        let w = world(vec![np]);
        let p = c.compile(&w);
        p.count(&crate::datapath::policy::classify(
            &p,
            &t("10.0.2.2", "10.0.1.2", TCP, 80),
        ));
        let p = c.compile(&w);
        p.count(&crate::datapath::policy::classify(
            &p,
            &t("10.0.2.2", "10.0.1.2", TCP, 81),
        ));
        let counters = &p.policies[0].counters;
        assert_eq!(
            counters.allowed.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(
            counters.denied.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn an_ipv6_flow_is_judged_by_its_whole_address() {
        let mut np = policy("x", "v6", sel(&[("app", "a")]));
        np.ingress = vec![Rule {
            peers: vec![Peer::Pods {
                namespaces: None,
                pods: Some(sel(&[("app", "b")])),
            }],
            ports: Vec::new(),
        }];
        let mut w = world(vec![np]);
        w.pods[0].ips.push("fd10:244:1::2".parse().unwrap());
        w.pods[1].ips.push("fd10:244:1::3".parse().unwrap());
        let p = compiled(&w);
        let mut x = t("fd10:244:1::3", "fd10:244:1::2", TCP, 80);
        x.to_local_pod = true;
        assert!(crate::datapath::policy::classify(&p, &x).allowed);
        x.src = ip_key("fd10:244:1::4".parse().unwrap());
        assert!(!crate::datapath::policy::classify(&p, &x).allowed);
    }

    use crate::policy::model::{Action, ClusterPeer, ClusterPolicy, ClusterRule, PodsIn, Tier};

    fn cnp(name: &str, tier: Tier, priority: u16, subject: PodsIn) -> ClusterPolicy {
        ClusterPolicy {
            name: name.into(),
            tier,
            priority,
            subject,
            ingress: Vec::new(),
            egress: Vec::new(),
        }
    }

    fn in_ns(team: &str) -> PodsIn {
        PodsIn {
            namespaces: sel(&[("team", team)]),
            pods: Selector::default(),
        }
    }

    fn crule(action: Action, peers: Vec<ClusterPeer>, ports: Vec<PortSpec>) -> ClusterRule {
        ClusterRule {
            name: format!("{action:?}").to_lowercase(),
            action,
            peers,
            ports,
        }
    }

    fn tcp(port: u16) -> PortSpec {
        PortSpec::Number {
            proto: TCP,
            port,
            end: port,
        }
    }

    #[test]
    fn the_admin_tier_overrides_network_policy_and_baseline_yields_to_it() {
        // x/a admits everything from y by NetworkPolicy.
        let mut np = policy("x", "from-y", sel(&[("app", "a")]));
        np.ingress = vec![Rule {
            peers: vec![Peer::Pods {
                namespaces: Some(sel(&[("team", "y")])),
                pods: None,
            }],
            ports: Vec::new(),
        }];
        // Admin: deny y to x on 22.
        let mut admin = cnp("no-ssh", Tier::Admin, 10, in_ns("x"));
        admin.ingress = vec![crule(
            Action::Deny,
            vec![ClusterPeer::Pods(in_ns("y"))],
            vec![tcp(22)],
        )];
        // Baseline: deny y to x entirely — NetworkPolicy decides for x/a first.
        let mut baseline = cnp("baseline-deny", Tier::Baseline, 0, in_ns("x"));
        baseline.ingress = vec![crule(
            Action::Deny,
            vec![ClusterPeer::Pods(in_ns("y"))],
            Vec::new(),
        )];
        let mut w = world(vec![np]);
        w.cluster_policies = vec![admin, baseline];
        let p = compiled(&w);
        assert!(
            allowed(&p, "10.0.2.2", "10.0.1.2", TCP, 80),
            "NetworkPolicy admits"
        );
        let d = crate::datapath::policy::classify(&p, &t("10.0.2.2", "10.0.1.2", TCP, 22));
        assert!(!d.allowed, "the Admin tier denies first");
        let why = p.explain(&d);
        assert!(
            why.contains("ClusterNetworkPolicy/no-ssh (Admin tier, priority 10) ingress rule 0 \"deny\" (Deny)"),
            "{why}"
        );
        // x/b: no NetworkPolicy, so Baseline decides.
        let d = crate::datapath::policy::classify(&p, &t("10.0.2.2", "10.0.1.3", TCP, 80));
        assert!(!d.allowed);
        assert!(
            p.explain(&d).contains("baseline-deny (Baseline tier"),
            "{}",
            p.explain(&d)
        );
        // Within x: nothing matches, allowed by default.
        assert!(allowed(&p, "10.0.1.2", "10.0.1.3", TCP, 80));
        // Counted on the policy whose rule denied.
        p.count(&d);
        let info = p
            .policies
            .iter()
            .find(|i| i.name.ends_with("baseline-deny"))
            .unwrap();
        assert_eq!(
            info.counters
                .denied
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(info.namespace_and_name(), ("", "baseline-deny"));
    }

    #[test]
    fn priority_then_rule_order_decide_and_pass_hands_over_to_network_policy() {
        // Priority 5 accepts 80 from y; priority 20 denies all from y; priority 1 passes 81.
        let mut accept = cnp("accept-80", Tier::Admin, 5, in_ns("x"));
        accept.ingress = vec![crule(
            Action::Accept,
            vec![ClusterPeer::Pods(in_ns("y"))],
            vec![tcp(80)],
        )];
        let mut deny = cnp("deny-y", Tier::Admin, 20, in_ns("x"));
        deny.ingress = vec![crule(
            Action::Deny,
            vec![ClusterPeer::Pods(in_ns("y"))],
            Vec::new(),
        )];
        let mut pass = cnp("pass-81", Tier::Admin, 1, in_ns("x"));
        pass.ingress = vec![
            crule(
                Action::Pass,
                vec![ClusterPeer::Pods(in_ns("y"))],
                vec![tcp(81)],
            ),
            // Never reached for 81: the rule before it matches first.
            crule(
                Action::Deny,
                vec![ClusterPeer::Pods(in_ns("y"))],
                vec![tcp(81)],
            ),
        ];
        // NetworkPolicy on x/a: nothing admitted (deny all); x/b has none.
        let mut w = world(vec![policy("x", "deny-all", sel(&[("app", "a")]))]);
        w.cluster_policies = vec![deny, accept, pass];
        let p = compiled(&w);
        assert!(
            allowed(&p, "10.0.2.2", "10.0.1.2", TCP, 80),
            "Accept at 5 before NetworkPolicy"
        );
        assert!(!allowed(&p, "10.0.2.2", "10.0.1.2", TCP, 82), "Deny at 20");
        assert!(
            !allowed(&p, "10.0.2.2", "10.0.1.2", TCP, 81),
            "passed to NetworkPolicy, which isolates x/a"
        );
        assert!(
            allowed(&p, "10.0.2.2", "10.0.1.3", TCP, 81),
            "passed; nothing else decides for x/b"
        );
        // Equal priorities: the name decides, the same way on every node.
        let mut a = cnp("a", Tier::Admin, 7, in_ns("x"));
        a.ingress = vec![crule(
            Action::Accept,
            vec![ClusterPeer::Pods(in_ns("y"))],
            Vec::new(),
        )];
        let mut b = cnp("b", Tier::Admin, 7, in_ns("x"));
        b.ingress = vec![crule(
            Action::Deny,
            vec![ClusterPeer::Pods(in_ns("y"))],
            Vec::new(),
        )];
        let mut w = world(Vec::new());
        w.cluster_policies = vec![b.clone(), a.clone()];
        assert!(allowed(&compiled(&w), "10.0.2.2", "10.0.1.3", TCP, 80));
        b.name = "0b".into();
        w.cluster_policies = vec![b, a];
        assert!(!allowed(&compiled(&w), "10.0.2.2", "10.0.1.3", TCP, 80));
    }

    #[test]
    fn egress_networks_and_an_accept_that_still_meets_the_peers_ingress() {
        // x's pods: egress to 0.0.0.0/0 denied except what an earlier Accept lets out.
        let mut out = cnp("egress", Tier::Admin, 0, in_ns("x"));
        out.egress = vec![
            crule(
                Action::Accept,
                vec![ClusterPeer::Networks(vec!["10.0.1.0/24".parse().unwrap()])],
                Vec::new(),
            ),
            crule(
                Action::Deny,
                vec![ClusterPeer::Networks(vec!["0.0.0.0/0".parse().unwrap()])],
                Vec::new(),
            ),
        ];
        // x/b isolates its ingress by NetworkPolicy (nothing admitted).
        let mut w = world(vec![policy("x", "b-closed", sel(&[("app", "b")]))]);
        w.cluster_policies = vec![out];
        let p = compiled(&w);
        assert!(
            !allowed(&p, "10.0.1.2", "10.0.2.2", UDP, 53),
            "denied by the Admin egress rule"
        );
        assert!(!allowed(&p, "10.0.1.2", "8.8.8.8", TCP, 443));
        assert!(
            !allowed(&p, "10.0.1.2", "10.0.1.3", TCP, 80),
            "accepted on egress, but x/b's own ingress policy still applies"
        );
        // The node still reaches its pods (kubelet's probes).
        let mut probe = t("10.0.1.1", "10.0.1.2", TCP, 8080);
        probe.from_node = true;
        assert!(crate::datapath::policy::classify(&p, &probe).allowed);
        // A pod no cluster policy selects is untouched.
        assert!(allowed(&p, "10.0.2.2", "10.0.1.2", TCP, 80));
    }
}
