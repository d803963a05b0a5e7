//! NetworkPolicy in the datapath: the compiled rules a node enforces, the pure classifier
//! that decides a flow's first packet against them, and [`police`], which caches that
//! verdict with the flow ([`cache::VerdictCache`]) so later packets cost one lookup.
//!
//! The rules are compiled elsewhere (`crate::policy::compile`) from the Kubernetes objects
//! into a [`Policy`]: an immutable value published in the snapshot like the forwarding
//! table. Every published `Policy` carries a new [`Policy::epoch`]; a cached verdict from
//! an older epoch is decided again on its flow's next packet, so a revoked connection stops
//! within one packet of the new rules reaching the node, while a flow in steady state pays
//! one cache lookup and no rule walk.
//!
//! What a node checks, for a packet from `src` to `dst`:
//! - **egress** of `src` when `src` is one of this node's pods that a policy isolates for
//!   egress. A packet a pod sends to the node for a Service address (`deferred`) is not
//!   judged on its way out: the node's DNAT sends it back into the switch with the chosen
//!   endpoint's address, and it is judged then, against the endpoint pod (policy applies
//!   after load balancing, as upstream requires);
//! - **ingress** of `dst` when `dst` is one of this node's pods isolated for ingress and
//!   the packet is delivered to it; the node's own addresses ([`Policy::node_addrs`]) always
//!   reach its pods (kubelet's probes).
//!
//! Replies of an allowed flow are allowed whatever the replying side's own policy says
//! (the reverse tuple is cached as a reply of it); a TCP segment that is not an opening SYN
//! and whose reverse would be allowed is taken for a reply whose entry was lost (evicted,
//! or a restarted switchd), as the kernel's conntrack picks up established connections.
//! Other protocols get no such pick-up: an unsolicited UDP "reply" is judged as new.
//!
//! ARP and IPv6 neighbour discovery never get here (the forwarding core answers them).

pub mod cache;
pub mod classify;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::table::FastU32;

pub use cache::VerdictCache;
pub use classify::{classify, police, Because, Decision, Tuple};

/// An address as the policy keys it: IPv4 as its IPv4-mapped IPv6 form, so one map holds
/// both families.
pub type IpKey = u128;

#[inline]
pub fn ip_key(ip: IpAddr) -> IpKey {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

#[inline]
pub fn ip_of(key: IpKey) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(key);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The prefix length of `net` in the [`IpKey`] space (IPv4 prefixes sit under `::ffff:0:0/96`).
pub fn key_prefix(net: ipnet::IpNet) -> (IpKey, u8) {
    let len = match net {
        ipnet::IpNet::V4(n) => n.prefix_len() + 96,
        ipnet::IpNet::V6(n) => n.prefix_len(),
    };
    (ip_key(net.network()) & mask(len), len)
}

#[inline]
pub fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

/// Which way a rule looks from the pod it protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// What a rule does with the traffic it matches. NetworkPolicy rules only accept; a
/// ClusterNetworkPolicy rule may also deny, or pass the decision to the next tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Action {
    Accept,
    Deny,
    Pass,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

/// Where a policy sits in the order of evaluation: a ClusterNetworkPolicy of the Admin
/// tier, then NetworkPolicy, then a ClusterNetworkPolicy of the Baseline tier; traffic no
/// tier decides is allowed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Tier {
    Admin,
    NetworkPolicy,
    Baseline,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::NetworkPolicy => "NetworkPolicy",
            Tier::Baseline => "Baseline",
        }
    }
}

/// One rule of one policy: an index into [`Policy::rules`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleRef(pub u32);

/// What a rule is, for the operator: "namespace/name", direction and position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    /// Index into [`Policy::policies`].
    pub policy: u32,
    pub direction: Direction,
    /// The rule's position in the policy's `ingress` or `egress` list.
    pub index: u32,
    /// Always `Accept` for a NetworkPolicy rule.
    pub action: Action,
    /// A ClusterNetworkPolicy rule's `name`, when it has one.
    pub name: Option<String>,
}

/// Flows a policy decided, over the switch's life (kept across recompiles by name).
#[derive(Debug, Default)]
pub struct PolicyCounters {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct PolicyInfo {
    /// "namespace/name" of a NetworkPolicy; "ClusterNetworkPolicy/name" of a cluster one
    /// (no namespace can be named so: namespace names are lower case).
    pub name: String,
    pub tier: Tier,
    /// A ClusterNetworkPolicy's `priority` (0 for a NetworkPolicy).
    pub priority: u16,
    pub counters: Arc<PolicyCounters>,
}

/// The prefix of a ClusterNetworkPolicy's [`PolicyInfo::name`].
pub const CLUSTER_POLICY_PREFIX: &str = "ClusterNetworkPolicy/";

impl PolicyInfo {
    /// The namespace and name as metrics label them: no namespace for a cluster policy.
    pub fn namespace_and_name(&self) -> (&str, &str) {
        match self.name.strip_prefix(CLUSTER_POLICY_PREFIX) {
            Some(name) => ("", name),
            None => self.name.split_once('/').unwrap_or(("", &self.name)),
        }
    }
}

/// Addresses by prefix: one hash lookup per distinct prefix length, longest first, each
/// block with the addresses its `except` cuts out.
#[derive(Debug, Default, Clone)]
pub struct PrefixSet {
    lens: Vec<u8>,
    by_prefix: HashMap<(u8, IpKey), Vec<u32>, FastU32>,
    blocks: Vec<Block>,
}

#[derive(Debug, Clone)]
struct Block {
    except: Vec<(IpKey, u8)>,
    rule: RuleRef,
}

impl PrefixSet {
    pub fn insert(&mut self, net: ipnet::IpNet, except: &[ipnet::IpNet], rule: RuleRef) {
        let (prefix, len) = key_prefix(net);
        let at = self.blocks.len() as u32;
        self.blocks.push(Block {
            except: except.iter().map(|e| key_prefix(*e)).collect(),
            rule,
        });
        self.by_prefix.entry((len, prefix)).or_default().push(at);
        if !self.lens.contains(&len) {
            self.lens.push(len);
            self.lens.sort_unstable_by(|a, b| b.cmp(a));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The first (lowest-numbered) rule whose block holds `ip`: the one that takes
    /// precedence when rules are ordered, as a cluster policy's are.
    pub fn first(&self, ip: IpKey) -> Option<RuleRef> {
        let mut best: Option<RuleRef> = None;
        for &len in &self.lens {
            if let Some(blocks) = self.by_prefix.get(&(len, ip & mask(len))) {
                for &b in blocks {
                    let block = &self.blocks[b as usize];
                    if !block.except.iter().any(|&(p, l)| ip & mask(l) == p) {
                        best = min_rule(best, Some(block.rule));
                    }
                }
            }
        }
        best
    }

    pub fn lookup(&self, ip: IpKey) -> Option<RuleRef> {
        for &len in &self.lens {
            if let Some(blocks) = self.by_prefix.get(&(len, ip & mask(len))) {
                for &b in blocks {
                    let block = &self.blocks[b as usize];
                    if !block.except.iter().any(|&(p, l)| ip & mask(l) == p) {
                        return Some(block.rule);
                    }
                }
            }
        }
        None
    }
}

/// The peers one port (or every port) admits: everyone, pods by address, and blocks.
#[derive(Debug, Default, Clone)]
pub struct PeerSet {
    pub all: Option<RuleRef>,
    pub ips: HashMap<IpKey, RuleRef, FastU32>,
    pub blocks: PrefixSet,
}

impl PeerSet {
    /// Admit `ip` by `rule` unless an earlier rule already does.
    pub fn insert_ip(&mut self, ip: IpKey, rule: RuleRef) {
        self.ips.entry(ip).or_insert(rule);
    }

    pub fn insert_all(&mut self, rule: RuleRef) {
        self.all.get_or_insert(rule);
    }

    #[inline]
    pub fn lookup(&self, ip: IpKey) -> Option<RuleRef> {
        if let Some(r) = self.all {
            return Some(r);
        }
        if let Some(&r) = self.ips.get(&ip) {
            return Some(r);
        }
        if self.blocks.is_empty() {
            return None;
        }
        self.blocks.lookup(ip)
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_none() && self.ips.is_empty() && self.blocks.is_empty()
    }

    /// The lowest-numbered rule admitting `ip` (rules inserted in order of precedence).
    pub fn first(&self, ip: IpKey) -> Option<RuleRef> {
        let mut best = self.all;
        best = min_rule(best, self.ips.get(&ip).copied());
        if !self.blocks.is_empty() {
            best = min_rule(best, self.blocks.first(ip));
        }
        best
    }
}

#[inline]
fn min_rule(a: Option<RuleRef>, b: Option<RuleRef>) -> Option<RuleRef> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.0 < x.0 { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// What one pod admits in one direction, once every policy isolating it is merged: peer
/// sets per protocol and port, per port range, and for every port.
#[derive(Debug, Default, Clone)]
pub struct RuleSet {
    /// By (IP protocol, port); port 0 stands for every port of that protocol.
    pub ports: HashMap<(u8, u16), PeerSet, FastU32>,
    /// `endPort` ranges: protocol, first, last.
    pub ranges: Vec<(u8, u16, u16, PeerSet)>,
    /// Rules without ports: every protocol, every port.
    pub any: PeerSet,
    /// The policies isolating the pod in this direction (indexes into
    /// [`Policy::policies`]): who to name when nothing admits a packet.
    pub isolated_by: Vec<u32>,
}

impl RuleSet {
    /// The rule that admits `peer` on `proto`/`port`; `port` is `None` for a later IP
    /// fragment, which carries none and is admitted by any rule for its protocol.
    pub fn admits(&self, peer: IpKey, proto: u8, port: Option<u16>) -> Option<RuleRef> {
        if let Some(r) = self.any.lookup(peer) {
            return Some(r);
        }
        if self.ports.is_empty() && self.ranges.is_empty() {
            return None;
        }
        let Some(port) = port.filter(|_| has_ports(proto)) else {
            if !has_ports(proto) {
                return None;
            }
            let by_port = self
                .ports
                .iter()
                .filter(|((p, _), _)| *p == proto)
                .find_map(|(_, set)| set.lookup(peer));
            return by_port.or_else(|| {
                self.ranges
                    .iter()
                    .filter(|r| r.0 == proto)
                    .find_map(|r| r.3.lookup(peer))
            });
        };
        if let Some(r) = self.ports.get(&(proto, port)).and_then(|s| s.lookup(peer)) {
            return Some(r);
        }
        if let Some(r) = self.ports.get(&(proto, 0)).and_then(|s| s.lookup(peer)) {
            return Some(r);
        }
        self.ranges
            .iter()
            .filter(|r| r.0 == proto && r.1 <= port && port <= r.2)
            .find_map(|r| r.3.lookup(peer))
    }
}

impl RuleSet {
    /// The rule of highest precedence (lowest number) matching `peer` on `proto`/`port`,
    /// for a tier of cluster policies whose rules were numbered in their order of
    /// evaluation. A later fragment (`port` `None`) matches a rule of its protocol with
    /// any port.
    pub fn first(&self, peer: IpKey, proto: u8, port: Option<u16>) -> Option<RuleRef> {
        let mut best = self.any.first(peer);
        if self.ports.is_empty() && self.ranges.is_empty() || !has_ports(proto) {
            return best;
        }
        match port {
            Some(port) => {
                for p in [port, 0] {
                    if let Some(s) = self.ports.get(&(proto, p)) {
                        best = min_rule(best, s.first(peer));
                    }
                }
                for r in self
                    .ranges
                    .iter()
                    .filter(|r| r.0 == proto && r.1 <= port && port <= r.2)
                {
                    best = min_rule(best, r.3.first(peer));
                }
            }
            None => {
                for ((p, _), s) in &self.ports {
                    if *p == proto {
                        best = min_rule(best, s.first(peer));
                    }
                }
                for r in self.ranges.iter().filter(|r| r.0 == proto) {
                    best = min_rule(best, r.3.first(peer));
                }
            }
        }
        best
    }
}

/// Protocols whose policy rules name ports: TCP, UDP, SCTP.
#[inline]
pub fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132)
}

/// A pod of this node that some policy isolates or a cluster policy selects.
#[derive(Debug, Clone, Default)]
pub struct Guarded {
    /// Index into [`Policy::pods`].
    pub pod: u32,
    /// What the NetworkPolicies isolating it admit (`None`: not isolated that way).
    pub ingress: Option<Arc<RuleSet>>,
    pub egress: Option<Arc<RuleSet>>,
    /// The ClusterNetworkPolicies selecting it, when any do.
    pub cluster: Option<Arc<ClusterSets>>,
}

/// The rules of the cluster policies selecting one pod, per tier and direction, each set
/// numbered in order of evaluation (priority, then name, then the rule's position) so
/// that [`RuleSet::first`] finds the rule that decides.
#[derive(Debug, Clone, Default)]
pub struct ClusterSets {
    pub admin_ingress: Option<Arc<RuleSet>>,
    pub admin_egress: Option<Arc<RuleSet>>,
    pub baseline_ingress: Option<Arc<RuleSet>>,
    pub baseline_egress: Option<Arc<RuleSet>>,
}

/// How one direction of one pod judges a peer, tier by tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// Allowed by this rule.
    Accepted(RuleRef),
    /// Denied by this rule (a cluster policy's `Deny`).
    Denied(RuleRef),
    /// Isolated by NetworkPolicy and no rule admits it.
    DefaultDeny,
    /// No tier decides: allowed, as Kubernetes allows by default.
    Undecided,
}

impl Guarded {
    /// Whether anything judges this pod's traffic in `direction`.
    pub fn judges(&self, direction: Direction) -> bool {
        let np = match direction {
            Direction::Ingress => self.ingress.is_some(),
            Direction::Egress => self.egress.is_some(),
        };
        np || self.cluster.as_ref().is_some_and(|c| {
            let (a, b) = c.sides(direction);
            a.is_some() || b.is_some()
        })
    }

    /// Judge `peer` on `proto`/`port` in `direction`: the Admin tier's first matching
    /// rule (unless it passes), then NetworkPolicy (which decides whenever it isolates
    /// the pod), then the Baseline tier's first matching rule.
    pub fn judge(
        &self,
        rules: &[RuleInfo],
        direction: Direction,
        peer: IpKey,
        proto: u8,
        port: Option<u16>,
    ) -> Judged {
        let action = |r: RuleRef| rules.get(r.0 as usize).map_or(Action::Deny, |i| i.action);
        let (admin, baseline) = self
            .cluster
            .as_ref()
            .map_or((None, None), |c| c.sides(direction));
        if let Some(r) = admin.and_then(|s| s.first(peer, proto, port)) {
            match action(r) {
                Action::Accept => return Judged::Accepted(r),
                Action::Deny => return Judged::Denied(r),
                Action::Pass => {}
            }
        }
        let np = match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        };
        if let Some(set) = np {
            return match set.admits(peer, proto, port) {
                Some(r) => Judged::Accepted(r),
                None => Judged::DefaultDeny,
            };
        }
        if let Some(r) = baseline.and_then(|s| s.first(peer, proto, port)) {
            match action(r) {
                Action::Accept => return Judged::Accepted(r),
                Action::Deny => return Judged::Denied(r),
                Action::Pass => {}
            }
        }
        Judged::Undecided
    }
}

impl ClusterSets {
    fn sides(&self, direction: Direction) -> (Option<&RuleSet>, Option<&RuleSet>) {
        match direction {
            Direction::Ingress => (
                self.admin_ingress.as_deref(),
                self.baseline_ingress.as_deref(),
            ),
            Direction::Egress => (
                self.admin_egress.as_deref(),
                self.baseline_egress.as_deref(),
            ),
        }
    }
}

/// Everything the datapath enforces, as one immutable value.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    /// Bumped on every compile that changed anything: cached verdicts from another epoch are
    /// decided again.
    pub epoch: u32,
    /// This node's pods with a policy, by address (both families).
    pub guarded: HashMap<IpKey, Guarded, FastU32>,
    /// The node's own addresses: always reach its pods.
    pub node_addrs: HashSet<IpKey, FastU32>,
    /// Service address ranges: a pod's packet to one is judged after the node's DNAT.
    pub deferred: Vec<(IpKey, u8)>,
    pub rules: Vec<RuleInfo>,
    pub policies: Vec<PolicyInfo>,
    /// "namespace/name" of every pod the compiler knew, for explanations and logs.
    pub pods: Vec<String>,
    /// Pod address → index into `pods`.
    pub pod_by_ip: HashMap<IpKey, u32, FastU32>,
    /// This node's pods whose denied flows are logged (their namespace asks for it).
    pub log_denied: HashSet<IpKey, FastU32>,
    pub denied_log: Arc<RateGate>,
}

/// At most `per_sec` events a second; the rest counted as suppressed.
#[derive(Debug, Default)]
pub struct RateGate {
    pub per_sec: u32,
    second: std::sync::atomic::AtomicU32,
    used: std::sync::atomic::AtomicU32,
    pub suppressed: AtomicU64,
}

impl RateGate {
    pub fn new(per_sec: u32) -> RateGate {
        RateGate {
            per_sec,
            ..RateGate::default()
        }
    }

    /// May one more event pass in second `now`?
    pub fn admit(&self, now: u32) -> bool {
        if self.second.swap(now, Relaxed) != now {
            self.used.store(0, Relaxed);
        }
        if self.used.fetch_add(1, Relaxed) < self.per_sec {
            return true;
        }
        self.suppressed.fetch_add(1, Relaxed);
        false
    }
}

impl Policy {
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.guarded.is_empty()
    }

    pub fn logs_denied(&self, pod: IpKey) -> bool {
        self.log_denied.contains(&pod)
    }

    pub fn is_deferred(&self, ip: IpKey) -> bool {
        self.deferred.iter().any(|&(p, l)| ip & mask(l) == p)
    }

    /// "namespace/name" of the pod at `ip`, when it is a known pod.
    pub fn pod_name(&self, ip: IpKey) -> Option<&str> {
        self.pod_by_ip
            .get(&ip)
            .map(|&i| self.pods[i as usize].as_str())
    }

    /// "namespace/name ingress rule 2" for a NetworkPolicy's rule;
    /// "ClusterNetworkPolicy/name (Admin tier, priority 10) egress rule 0 \"no-db\" (Deny)"
    /// for a cluster policy's.
    pub fn describe_rule(&self, rule: RuleRef) -> String {
        let Some(r) = self.rules.get(rule.0 as usize) else {
            return format!("rule #{}", rule.0);
        };
        let p = &self.policies[r.policy as usize];
        let mut out = p.name.clone();
        if p.tier != Tier::NetworkPolicy {
            out += &format!(" ({} tier, priority {})", p.tier.as_str(), p.priority);
        }
        out += &format!(" {} rule {}", r.direction.as_str(), r.index);
        if let Some(name) = &r.name {
            out += &format!(" {name:?}");
        }
        if p.tier != Tier::NetworkPolicy {
            out += &format!(" ({})", r.action.as_str());
        }
        out
    }

    /// The policy a rule belongs to.
    pub fn policy_of(&self, rule: RuleRef) -> Option<&PolicyInfo> {
        self.rules
            .get(rule.0 as usize)
            .map(|r| &self.policies[r.policy as usize])
    }

    /// The policies' names, comma-separated, for a list of indexes.
    pub fn names(&self, policies: &[u32]) -> String {
        policies
            .iter()
            .map(|&p| self.policies[p as usize].name.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The last flow [`enforce`] let through, which a worker keeps from one frame to the next:
/// the frames of one flow within one second and one policy epoch (the segments of a GRO
/// batch from the tunnel, a stream's consecutive frames) then pass on one comparison,
/// without the guarded lookups and the verdict cache. Within the same second, because the
/// cache entry's time is refreshed at most once a second anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Memo {
    epoch: u32,
    now: u32,
    tuple: Option<Tuple>,
}

impl Memo {
    /// Remembers nothing.
    pub const EMPTY: Memo = Memo {
        epoch: 0,
        now: 0,
        tuple: None,
    };
}

/// Apply the policy to a frame the forwarding core has decided to deliver (`verdict`):
/// the same verdict when the policy allows it (or does not concern it), a drop with
/// [`DropReason::PolicyDenied`](super::DropReason::PolicyDenied) when it denies it. `buf`
/// is the port buffer (virtio-net header, then the frame); `in_port` is where it came from
/// (`PortId::MAX` for the tunnel). The [`classify::Policed`] says whether the classifier
/// ran, for the counters and the denied-flow log. `memo` is the caller's [`Memo`].
#[inline]
pub fn enforce(
    buf: &[u8],
    in_port: super::PortId,
    verdict: super::Verdict,
    policy: &Policy,
    cache: &VerdictCache,
    now: u32,
    memo: &mut Memo,
) -> (super::Verdict, Option<(Tuple, classify::Policed)>) {
    use super::{Verdict, HOST_PORT};
    if policy.is_empty() {
        return (verdict, None);
    }
    let (to_local_pod, to_node) = match verdict {
        Verdict::Forward(HOST_PORT) => (false, true),
        Verdict::Forward(_) => (true, false),
        Verdict::Encap(_) => (false, false),
        _ => return (verdict, None),
    };
    let Some(frame) = buf.get(super::frame::VNET_HDR_LEN..) else {
        return (verdict, None);
    };
    let Some((mut t, packet)) = classify::read(frame) else {
        return (verdict, None);
    };
    t.from_node = in_port == HOST_PORT;
    t.to_local_pod = to_local_pod;
    t.to_node = to_node;
    // Only whole flows are remembered: a fragment or an ICMP error is judged each time.
    let flow = matches!(packet, crate::datapath::flows::Packet::Flow { .. });
    let seen = Memo {
        epoch: policy.epoch,
        now,
        tuple: Some(t),
    };
    if flow && *memo == seen {
        return (verdict, None);
    }
    if !classify::concerns(policy, &t) {
        if flow {
            *memo = seen;
        }
        return (verdict, None);
    }
    let p = police(policy, cache, &t, &packet, now);
    if p.allowed {
        if flow {
            *memo = seen;
        }
        (verdict, Some((t, p)))
    } else {
        (Verdict::Drop(super::DropReason::PolicyDenied), Some((t, p)))
    }
}

impl Policy {
    /// Count a classification on the policies it names: the admitting rule's policy, or
    /// every policy isolating the pod that nothing admitted.
    pub fn count(&self, d: &Decision) {
        match d.because {
            Because::Rule(r) => {
                if let Some(p) = self.policy_of(r) {
                    p.counters.allowed.fetch_add(1, Relaxed);
                }
                if let Some(e) = d.egress_rule.filter(|&e| e != r) {
                    if let Some(p) = self.policy_of(e) {
                        p.counters.allowed.fetch_add(1, Relaxed);
                    }
                }
            }
            Because::Denied { rule, .. } => {
                if let Some(p) = self.policy_of(rule) {
                    p.counters.denied.fetch_add(1, Relaxed);
                }
            }
            Because::DefaultDeny { direction, pod } => {
                for &p in self.isolating(pod, direction) {
                    self.policies[p as usize]
                        .counters
                        .denied
                        .fetch_add(1, Relaxed);
                }
            }
            _ => {}
        }
    }

    /// The policies isolating the pod at `pod` in `direction`.
    pub fn isolating(&self, pod: IpKey, direction: Direction) -> &[u32] {
        let Some(g) = self.guarded.get(&pod) else {
            return &[];
        };
        let rules = match direction {
            Direction::Ingress => &g.ingress,
            Direction::Egress => &g.egress,
        };
        rules.as_deref().map_or(&[], |r| r.isolated_by.as_slice())
    }

    /// One line saying what decided: "allowed by ns/name ingress rule 0", "denied:
    /// default deny (egress) of ns/pod, isolated by ns/a,ns/b".
    pub fn explain(&self, d: &Decision) -> String {
        match d.because {
            Because::NotIsolated => "allowed: no policy decides for either end here".into(),
            Because::Rule(r) => match d.egress_rule.filter(|&e| e != r) {
                Some(e) => format!(
                    "allowed by {} and {}",
                    self.describe_rule(e),
                    self.describe_rule(r)
                ),
                None => format!("allowed by {}", self.describe_rule(r)),
            },
            Because::FromNode => "allowed: from the pod's own node".into(),
            Because::Deferred => {
                "allowed for now: a Service address, judged after the node's DNAT".into()
            }
            Because::Reply => "allowed: reply of an allowed flow".into(),
            Because::Denied { rule, .. } => match d.egress_rule {
                Some(e) => format!(
                    "denied by {} (its egress allowed by {})",
                    self.describe_rule(rule),
                    self.describe_rule(e)
                ),
                None => format!("denied by {}", self.describe_rule(rule)),
            },
            Because::DefaultDeny { direction, pod } => format!(
                "denied: no rule admits it; {} of {} is isolated by {}",
                direction.as_str(),
                self.pod_name(pod)
                    .map(str::to_string)
                    .unwrap_or_else(|| ip_of(pod).to_string()),
                self.names(self.isolating(pod, direction))
            ),
        }
    }
}
