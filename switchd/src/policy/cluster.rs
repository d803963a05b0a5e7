//! ClusterNetworkPolicy as the API serves it (policy.networking.k8s.io/v1beta1, the CRD
//! of `sigs.k8s.io/network-policy-api` v0.3.1), read into the compiler's model. The
//! object arrives as a `DynamicObject` (no generated client types for a CRD); its `spec`
//! is read with the small serde types below, which name only the fields of the standard
//! channel's CRD.
//!
//! What cannot be read fails closed, as the API asks: a peer with none of the fields we
//! know (a newer CRD's `nodes` or `domainNames`), or a rule with an unreadable selector,
//! CIDR or port, makes an `Accept` rule match nothing and a `Deny` or `Pass` rule deny
//! everything. A policy whose tier or subject cannot be read is left out, and logged.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Deserialize;

use super::model::{Action, ClusterPeer, ClusterPolicy, ClusterRule, PodsIn, PortSpec, Tier};
use super::watch::{cidr_of, selector_of};

/// The API's object as the watcher delivers it (re-exported for the fuzz target, which
/// does not depend on the client crates itself).
pub use kube::core::DynamicObject;

/// The API group, version and resource switchd watches.
pub const GROUP: &str = "policy.networking.k8s.io";
pub const VERSION: &str = "v1beta1";
pub const KIND: &str = "ClusterNetworkPolicy";
pub const PLURAL: &str = "clusternetworkpolicies";

/// The resource, for a dynamic `Api`.
pub fn api_resource() -> kube::core::ApiResource {
    kube::core::ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: KIND.into(),
        plural: PLURAL.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    tier: String,
    priority: i64,
    subject: Subject,
    #[serde(default)]
    ingress: Vec<ApiRule>,
    #[serde(default)]
    egress: Vec<ApiRule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Subject {
    namespaces: Option<LabelSelector>,
    pods: Option<NamespacedPod>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NamespacedPod {
    #[serde(default)]
    namespace_selector: LabelSelector,
    #[serde(default)]
    pod_selector: LabelSelector,
}

/// An ingress rule (`from`) or an egress one (`to`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiRule {
    #[serde(default)]
    name: String,
    action: String,
    #[serde(default, alias = "to")]
    from: Vec<ApiPeer>,
    #[serde(default)]
    protocols: Vec<Protocol>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiPeer {
    namespaces: Option<LabelSelector>,
    pods: Option<NamespacedPod>,
    networks: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Protocol {
    tcp: Option<Ports>,
    udp: Option<Ports>,
    sctp: Option<Ports>,
    destination_named_port: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ports {
    destination_port: Option<Port>,
}

#[derive(Debug, Deserialize)]
struct Port {
    number: Option<i64>,
    range: Option<Range>,
}

#[derive(Debug, Deserialize)]
struct Range {
    start: i64,
    end: i64,
}

fn pods_in(namespaces: &LabelSelector, pods: Option<&LabelSelector>) -> Result<PodsIn, String> {
    Ok(PodsIn {
        namespaces: selector_of(namespaces)?,
        pods: pods.map(selector_of).transpose()?.unwrap_or_default(),
    })
}

fn subject_of(s: &Subject) -> Result<PodsIn, String> {
    match (&s.namespaces, &s.pods) {
        (Some(ns), None) => pods_in(ns, None),
        (None, Some(p)) => pods_in(&p.namespace_selector, Some(&p.pod_selector)),
        _ => Err("the subject must set exactly one of namespaces and pods".into()),
    }
}

fn peer_of(p: &ApiPeer) -> Result<ClusterPeer, String> {
    match (&p.namespaces, &p.pods, &p.networks) {
        (Some(ns), None, None) => Ok(ClusterPeer::Pods(pods_in(ns, None)?)),
        (None, Some(pods), None) => Ok(ClusterPeer::Pods(pods_in(
            &pods.namespace_selector,
            Some(&pods.pod_selector),
        )?)),
        (None, None, Some(nets)) => nets
            .iter()
            .map(|n| cidr_of(n, "networks entry"))
            .collect::<Result<_, _>>()
            .map(ClusterPeer::Networks),
        (None, None, None) => {
            Err("a peer with no field switchd knows (a newer CRD's peer type?)".into())
        }
        _ => Err("a peer must set exactly one field".into()),
    }
}

fn port_range(p: &Port) -> Result<(u16, u16), String> {
    let in_range = |n: i64| u16::try_from(n).ok().filter(|&n| n > 0);
    match (p.number, &p.range) {
        (Some(n), None) => in_range(n)
            .map(|n| (n, n))
            .ok_or_else(|| format!("port {n} is out of range")),
        (None, Some(r)) => match (in_range(r.start), in_range(r.end)) {
            (Some(s), Some(e)) if s <= e => Ok((s, e)),
            _ => Err(format!("port range {}-{} is invalid", r.start, r.end)),
        },
        _ => Err("destinationPort must set exactly one of number and range".into()),
    }
}

fn ports_of(protocols: &[Protocol]) -> Result<Vec<PortSpec>, String> {
    let mut out = Vec::new();
    for p in protocols {
        let by_proto = [(6, &p.tcp), (17, &p.udp), (132, &p.sctp)];
        let set = by_proto.iter().filter(|(_, x)| x.is_some()).count()
            + usize::from(p.destination_named_port.is_some());
        if set != 1 {
            return Err("a protocols entry must set exactly one field".into());
        }
        if let Some(name) = &p.destination_named_port {
            // A container port by name, whatever its protocol.
            for proto in [6, 17, 132] {
                out.push(PortSpec::Named {
                    proto,
                    name: name.clone(),
                });
            }
            continue;
        }
        for (proto, ports) in by_proto {
            let Some(ports) = ports else { continue };
            out.push(match &ports.destination_port {
                None => PortSpec::All { proto },
                Some(port) => {
                    let (port, end) = port_range(port)?;
                    PortSpec::Number { proto, port, end }
                }
            });
        }
    }
    Ok(out)
}

fn rule_of(policy: &str, direction: &str, index: usize, r: &ApiRule) -> ClusterRule {
    let action = match r.action.as_str() {
        "Accept" => Ok(Action::Accept),
        "Deny" => Ok(Action::Deny),
        "Pass" => Ok(Action::Pass),
        other => Err(format!("unknown action {other:?}")),
    };
    let read = || -> Result<ClusterRule, String> {
        Ok(ClusterRule {
            name: r.name.clone(),
            action: action.clone()?,
            peers: r.from.iter().map(peer_of).collect::<Result<_, _>>()?,
            ports: ports_of(&r.protocols)?,
        })
    };
    match read() {
        Ok(rule) => rule,
        Err(e) => {
            let accept = action == Ok(Action::Accept);
            tracing::error!(policy, direction, rule = index, name = %r.name, error = %e,
                "cannot read this ClusterNetworkPolicy rule; it {} until it is fixed",
                if accept { "matches nothing (an Accept rule fails closed)" } else { "denies all traffic of the pods its policy selects (fails closed)" });
            ClusterRule {
                name: r.name.clone(),
                action: if accept { Action::Accept } else { Action::Deny },
                peers: if accept {
                    Vec::new()
                } else {
                    vec![ClusterPeer::Networks(vec![
                        "0.0.0.0/0".parse().expect("literal"),
                        "::/0".parse().expect("literal"),
                    ])]
                },
                ports: Vec::new(),
            }
        }
    }
}

/// What the compiler reads of a ClusterNetworkPolicy; `None` (and an error logged) when
/// its tier, priority or subject cannot be read.
pub fn cluster_policy_of(o: &kube::core::DynamicObject) -> (String, Option<ClusterPolicy>) {
    let name = o.metadata.name.clone().unwrap_or_default();
    let read = || -> Result<ClusterPolicy, String> {
        let spec: Spec = serde_json::from_value(
            o.data
                .get("spec")
                .cloned()
                .ok_or("the object has no spec")?,
        )
        .map_err(|e| format!("the spec does not read as {GROUP}/{VERSION}: {e}"))?;
        let tier = match spec.tier.as_str() {
            "Admin" => Tier::Admin,
            "Baseline" => Tier::Baseline,
            other => return Err(format!("unknown tier {other:?}")),
        };
        let priority = u16::try_from(spec.priority)
            .ok()
            .filter(|p| *p <= 1000)
            .ok_or_else(|| format!("priority {} is outside 0-1000", spec.priority))?;
        let rules = |list: &[ApiRule], direction: &str| {
            list.iter()
                .enumerate()
                .map(|(i, r)| rule_of(&name, direction, i, r))
                .collect()
        };
        Ok(ClusterPolicy {
            name: name.clone(),
            tier,
            priority,
            subject: subject_of(&spec.subject)?,
            ingress: rules(&spec.ingress, "ingress"),
            egress: rules(&spec.egress, "egress"),
        })
    };
    match read() {
        Ok(p) => (name, Some(p)),
        Err(e) => {
            tracing::error!(policy = %name, error = %e, "cannot read this ClusterNetworkPolicy; it is not enforced until it is fixed");
            (name, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cnp(spec: serde_json::Value) -> Option<ClusterPolicy> {
        let o: kube::core::DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "policy.networking.k8s.io/v1beta1",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "p"},
            "spec": spec,
        }))
        .unwrap();
        cluster_policy_of(&o).1
    }

    #[test]
    fn every_field_of_the_standard_crd_is_read() {
        let p = cnp(serde_json::json!({
            "tier": "Admin", "priority": 10,
            "subject": {"pods": {"namespaceSelector": {"matchLabels": {"team": "x"}},
                                 "podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}}},
            "ingress": [{"name": "from-y", "action": "Deny",
                         "from": [{"namespaces": {"matchLabels": {"team": "y"}}}],
                         "protocols": [{"tcp": {"destinationPort": {"number": 80}}},
                                       {"udp": {"destinationPort": {"range": {"start": 1000, "end": 2000}}}},
                                       {"sctp": {"destinationPort": {"number": 9003}}}]}],
            "egress": [{"action": "Pass", "to": [{"networks": ["10.1.2.3/16", "fd00::/8"]}]},
                       {"action": "Accept", "to": [{"pods": {"namespaceSelector": {}, "podSelector": {}}}],
                        "protocols": [{"destinationNamedPort": "web"}]}]
        }))
        .unwrap();
        assert_eq!((p.tier, p.priority), (Tier::Admin, 10));
        assert_eq!(p.subject.namespaces.match_labels["team"], "x");
        assert_eq!(p.subject.pods.expressions.len(), 1);
        let r = &p.ingress[0];
        assert_eq!((r.name.as_str(), r.action), ("from-y", Action::Deny));
        assert_eq!(
            r.ports,
            vec![
                PortSpec::Number {
                    proto: 6,
                    port: 80,
                    end: 80
                },
                PortSpec::Number {
                    proto: 17,
                    port: 1000,
                    end: 2000
                },
                PortSpec::Number {
                    proto: 132,
                    port: 9003,
                    end: 9003
                },
            ]
        );
        assert_eq!(
            p.egress[0].peers,
            vec![ClusterPeer::Networks(vec![
                "10.1.0.0/16".parse().unwrap(),
                "fd00::/8".parse().unwrap()
            ])]
        );
        assert_eq!(p.egress[0].action, Action::Pass);
        assert_eq!(
            p.egress[1].ports.len(),
            3,
            "a named port, for each protocol"
        );
        assert_eq!(
            p.egress[1].peers,
            vec![ClusterPeer::Pods(PodsIn::default())]
        );
    }

    #[test]
    fn what_cannot_be_read_fails_closed() {
        let p = cnp(serde_json::json!({
            "tier": "Baseline", "priority": 0, "subject": {"namespaces": {}},
            "egress": [{"action": "Accept", "to": [{"nodes": {}}]},
                       {"action": "Pass", "to": [{"domainNames": ["example.com"]}]},
                       {"action": "Deny", "to": [{"networks": ["not-a-cidr"]}]}]
        }))
        .unwrap();
        // The Accept rule matches nothing; the Pass and Deny rules deny everything.
        assert_eq!(p.egress[0].action, Action::Accept);
        assert!(p.egress[0].peers.is_empty());
        for r in &p.egress[1..] {
            assert_eq!(r.action, Action::Deny);
            assert!(r.ports.is_empty());
            assert!(
                matches!(&r.peers[0], ClusterPeer::Networks(n) if n.len() == 2 && n[0].prefix_len() == 0)
            );
        }
        // A policy whose tier or subject is unreadable is left out.
        assert!(cnp(
            serde_json::json!({"tier": "Middle", "priority": 1, "subject": {"namespaces": {}}})
        )
        .is_none());
        assert!(cnp(serde_json::json!({"tier": "Admin", "priority": 1, "subject": {}})).is_none());
        assert!(cnp(
            serde_json::json!({"tier": "Admin", "priority": 1001, "subject": {"namespaces": {}}})
        )
        .is_none());
    }
}
