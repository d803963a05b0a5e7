//! The Kubernetes objects policy is compiled from, reduced to what the compiler reads.
//! The watcher (`super::watch`) converts API objects into these; tests and the fuzz target
//! build them directly.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub type Labels = BTreeMap<String, String>;

/// A label selector (`matchLabels` and `matchExpressions`). The empty selector selects
/// everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    pub match_labels: Labels,
    pub expressions: Vec<Expression>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expression {
    pub key: String,
    pub op: Operator,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl PodsIn {
    pub fn matches(&self, ns_labels: &Labels, pod_labels: &Labels) -> bool {
        self.namespaces.matches(ns_labels) && self.pods.matches(pod_labels)
    }
}

impl Selector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|e| {
                let have = labels.get(&e.key);
                match e.op {
                    Operator::In => have.is_some_and(|v| e.values.contains(v)),
                    Operator::NotIn => !have.is_some_and(|v| e.values.contains(v)),
                    Operator::Exists => have.is_some(),
                    Operator::DoesNotExist => have.is_none(),
                }
            })
    }
}

/// A container port with a name, which a policy may name instead of its number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    pub name: String,
    /// IP protocol number (6, 17, 132).
    pub proto: u8,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// Its addresses (`status.podIPs`); none yet while it starts.
    pub ips: Vec<IpAddr>,
    /// `spec.nodeName`.
    pub node: String,
    pub named_ports: Vec<NamedPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
    /// Denied flows of its pods are logged (`switchd.dev/log-denied: "true"`).
    pub log_denied: bool,
}

/// A NetworkPolicy (networking.k8s.io/v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// `policyTypes` contains Ingress (by default: always).
    pub ingress_isolates: bool,
    /// `policyTypes` contains Egress (by default: when there are egress rules).
    pub egress_isolates: bool,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

/// One ingress or egress rule: traffic from/to any of `peers` on any of `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Rule {
    /// Empty: every peer (the field missing or empty in the object).
    pub peers: Vec<Peer>,
    /// Empty: every port and protocol.
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Peer {
    /// Pods: `pods` selects in the namespaces `namespaces` selects; `None` for
    /// `namespaces` is the policy's own namespace, `None` for `pods` every pod.
    Pods {
        namespaces: Option<Selector>,
        pods: Option<Selector>,
    },
    /// `ipBlock`: a CIDR without the CIDRs in `except`.
    Block {
        cidr: ipnet::IpNet,
        except: Vec<ipnet::IpNet>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PortSpec {
    /// Every port of the protocol (`port` missing).
    All { proto: u8 },
    /// One port, or `port`..=`end` with `endPort`.
    Number { proto: u8, port: u16, end: u16 },
    /// A named container port, resolved on the pod that owns it.
    Named { proto: u8, name: String },
}

pub use crate::datapath::policy::{Action, Tier};

/// A ClusterNetworkPolicy (policy.networking.k8s.io/v1beta1, from
/// `sigs.k8s.io/network-policy-api`): cluster-scoped, in the Admin or the Baseline tier,
/// ordered by `priority` (lower first; ties by name), its rules in their order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPolicy {
    pub name: String,
    /// `Admin` or `Baseline` (never `NetworkPolicy`).
    pub tier: Tier,
    /// 0–1000.
    pub priority: u16,
    pub subject: PodsIn,
    pub ingress: Vec<ClusterRule>,
    pub egress: Vec<ClusterRule>,
}

/// Pods by namespace and pod labels (`subject.namespaces` is `pods` left empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodsIn {
    pub namespaces: Selector,
    pub pods: Selector,
}

/// One rule of a cluster policy: `action` for traffic from/to any of `peers` on any of
/// `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRule {
    /// The rule's `name` (may be empty).
    pub name: String,
    pub action: Action,
    pub peers: Vec<ClusterPeer>,
    /// Empty: every protocol and port. A named port is resolved as a NetworkPolicy's is.
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterPeer {
    /// `namespaces` or `pods`: pods (never host-network ones).
    Pods(PodsIn),
    /// `networks` (egress): addresses by CIDR, pods' included.
    Networks(Vec<ipnet::IpNet>),
}

/// What the compiler works from: everything watched, plus this node's facts.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// This node's name: its pods are the ones enforced here.
    pub node: String,
    pub pods: Vec<Pod>,
    pub namespaces: Vec<Namespace>,
    pub policies: Vec<NetworkPolicy>,
    pub cluster_policies: Vec<ClusterPolicy>,
    /// The node's own addresses: always reach its pods.
    pub node_addrs: Vec<IpAddr>,
    /// Service ranges, judged after DNAT.
    pub service_cidrs: Vec<ipnet::IpNet>,
}

/// A protocol name as the API spells it, to its number.
pub fn protocol_number(name: &str) -> Option<u8> {
    match name {
        "TCP" => Some(6),
        "UDP" => Some(17),
        "SCTP" => Some(132),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_follow_the_label_selector_rules() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(Selector::default().matches(&l));
        assert!(Selector::default().matches(&Labels::new()));
        let s = |op, values: &[&str]| Selector {
            match_labels: Labels::new(),
            expressions: vec![Expression {
                key: "app".into(),
                op,
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
        };
        assert!(s(Operator::In, &["web", "db"]).matches(&l));
        assert!(!s(Operator::In, &["db"]).matches(&l));
        assert!(!s(Operator::NotIn, &["web"]).matches(&l));
        assert!(s(Operator::NotIn, &["web"]).matches(&Labels::new()));
        assert!(s(Operator::Exists, &[]).matches(&l));
        assert!(!s(Operator::DoesNotExist, &[]).matches(&l));
        let both = Selector {
            match_labels: labels(&[("tier", "back")]),
            ..s(Operator::Exists, &[])
        };
        assert!(!both.matches(&l));
    }
}
