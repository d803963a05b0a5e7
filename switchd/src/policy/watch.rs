//! The shell that feeds the compiler: watches Pods, Namespaces and NetworkPolicies through
//! the same API client and watcher (kube-runtime) as the Node membership, folds their
//! events into [`Objects`] (pure: relist semantics, no I/O), and compiles on a blocking
//! thread whenever something the compiler reads changed, publishing each result in the
//! switch's snapshot. The datapath never waits for a compile: it keeps the previous
//! policy until the next one is published.
//!
//! Nothing new is enforced until all three lists have arrived once: a partial view
//! (policies without the pods they admit) would deny traffic the policies allow. Until
//! then, a restarted switchd enforces what it compiled last before it stopped: the
//! compiler's input is saved in `state_dir/policy-world.json` (at most every 2 s, written
//! atomically) and compiled again at start, so a restart leaves no window in which
//! isolated pods are open.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;

use super::compile::Compiler;
use super::model::{
    self, protocol_number, ClusterPolicy, Expression, NamedPort, Namespace, NetworkPolicy,
    Operator, Peer, PortSpec, Rule, Selector, World,
};
use crate::switch::Switch;

/// The API's NetworkPolicy, as [`network_policy_of`] takes it (re-exported for the fuzz
/// target, which does not depend on the client crates itself).
pub use k8s_openapi::api::networking::v1::NetworkPolicy as ApiNetworkPolicy;

/// Where the last compiled input is saved, in `state_dir`.
pub const SAVED_WORLD: &str = "policy-world.json";
/// How often, at most, it is rewritten.
const SAVE_EVERY: Duration = Duration::from_secs(2);

/// The compiler's input as saved: what was watched (this node's own facts come from its
/// configuration at each start).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Saved {
    saved_unix: u64,
    pods: Vec<model::Pod>,
    namespaces: Vec<Namespace>,
    policies: Vec<NetworkPolicy>,
    /// Absent in a file saved before switchd read ClusterNetworkPolicies.
    #[serde(default)]
    cluster_policies: Vec<ClusterPolicy>,
}

/// The annotation that turns on the denied-flow log for a namespace's pods.
pub const ANNOTATION_LOG_DENIED: &str = "switchd.dev/log-denied";

/// Objects of one kind by "namespace/name", folded from watcher events. A relist
/// (`Init` … `InitDone`) replaces the whole set when it completes.
#[derive(Debug)]
pub struct Objects<T> {
    items: HashMap<String, T>,
    relist: Option<HashMap<String, T>>,
    /// The first complete list has arrived.
    pub synced: bool,
}

impl<T> Default for Objects<T> {
    fn default() -> Self {
        Objects {
            items: HashMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<T: PartialEq + Clone> Objects<T> {
    /// Fold one event; `convert` gives an object's key and what the compiler reads of it
    /// (`None`: nothing, e.g. a finished pod). True when what the compiler reads changed.
    pub fn apply<K>(
        &mut self,
        event: Event<K>,
        convert: impl Fn(&K) -> (String, Option<T>),
    ) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(HashMap::new());
                false
            }
            Event::InitApply(k) => {
                let (key, value) = convert(&k);
                if let (Some(r), Some(v)) = (self.relist.as_mut(), value) {
                    r.insert(key, v);
                }
                false
            }
            Event::InitDone => {
                let fresh = self.relist.take().unwrap_or_default();
                let changed = fresh != self.items || !self.synced;
                self.items = fresh;
                self.synced = true;
                changed
            }
            Event::Apply(k) => {
                let (key, value) = convert(&k);
                match value {
                    Some(v) => self.items.insert(key, v.clone()).as_ref() != Some(&v),
                    None => self.items.remove(&key).is_some(),
                }
            }
            Event::Delete(k) => self.items.remove(&convert(&k).0).is_some(),
        }
    }

    /// The API has no such resource: none of these exist. True when that changed
    /// something.
    pub fn absent(&mut self) -> bool {
        let changed = !self.items.is_empty() || !self.synced;
        self.items.clear();
        self.relist = None;
        self.synced = true;
        changed
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.items.values()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

fn key_of(meta: &kube::api::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

/// What the compiler reads of a Pod: nothing for host-network pods (their address is the
/// node's) and for finished ones (their address may already be another pod's).
pub fn pod_of(p: &core::Pod) -> (String, Option<model::Pod>) {
    let key = key_of(&p.metadata);
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false)
        || matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded") | Some("Failed")
        )
        || p.metadata.deletion_timestamp.is_some()
            && status.and_then(|s| s.phase.as_deref()) != Some("Running")
    {
        return (key, None);
    }
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|v| v.iter().filter_map(|i| i.ip.parse().ok()).collect())
        .unwrap_or_default();
    if ips.is_empty() {
        ips.extend(
            status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|i| i.parse::<IpAddr>().ok()),
        );
    }
    let mut named_ports = Vec::new();
    for c in spec.map(|s| s.containers.iter()).into_iter().flatten() {
        for port in c.ports.iter().flatten() {
            let (Some(name), Ok(number)) = (&port.name, u16::try_from(port.container_port)) else {
                continue;
            };
            if let Some(proto) = protocol_number(port.protocol.as_deref().unwrap_or("TCP")) {
                named_ports.push(NamedPort {
                    name: name.clone(),
                    proto,
                    port: number,
                });
            }
        }
    }
    let pod = model::Pod {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        labels: p.metadata.labels.clone().unwrap_or_default(),
        ips,
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        named_ports,
    };
    (key, Some(pod))
}

pub fn namespace_of(n: &core::Namespace) -> (String, Option<Namespace>) {
    let name = n.metadata.name.clone().unwrap_or_default();
    let log_denied = n
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_LOG_DENIED))
        .is_some_and(|v| v == "true");
    let ns = Namespace {
        name: name.clone(),
        labels: n.metadata.labels.clone().unwrap_or_default(),
        log_denied,
    };
    (name, Some(ns))
}

pub fn selector_of(s: &LabelSelector) -> Result<Selector, String> {
    let mut expressions = Vec::new();
    for e in s.match_expressions.iter().flatten() {
        let op = match e.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => return Err(format!("unknown selector operator {other:?}")),
        };
        expressions.push(Expression {
            key: e.key.clone(),
            op,
            values: e.values.clone().unwrap_or_default(),
        });
    }
    Ok(Selector {
        match_labels: s.match_labels.clone().unwrap_or_default(),
        expressions,
    })
}

/// A CIDR as a policy writes it, its host bits cleared; `field` names it in the error.
pub fn cidr_of(text: &str, field: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| format!("{field} {text:?} is not a CIDR"))
}

fn peer_of(p: &net::NetworkPolicyPeer) -> Result<Peer, String> {
    if let Some(b) = &p.ip_block {
        return Ok(Peer::Block {
            cidr: cidr_of(&b.cidr, "ipBlock.cidr")?,
            except: b
                .except
                .iter()
                .flatten()
                .map(|e| cidr_of(e, "ipBlock.except"))
                .collect::<Result<_, _>>()?,
        });
    }
    Ok(Peer::Pods {
        namespaces: p.namespace_selector.as_ref().map(selector_of).transpose()?,
        pods: p.pod_selector.as_ref().map(selector_of).transpose()?,
    })
}

fn port_of(p: &net::NetworkPolicyPort) -> Result<PortSpec, String> {
    let name = p.protocol.as_deref().unwrap_or("TCP");
    let proto = protocol_number(name).ok_or_else(|| format!("unknown protocol {name:?}"))?;
    Ok(match &p.port {
        None => PortSpec::All { proto },
        Some(IntOrString::Int(n)) => {
            let port = u16::try_from(*n).map_err(|_| format!("port {n} is out of range"))?;
            let end = match p.end_port {
                Some(e) => u16::try_from(e).map_err(|_| format!("endPort {e} is out of range"))?,
                None => port,
            };
            PortSpec::Number { proto, port, end }
        }
        Some(IntOrString::String(s)) => match s.parse::<u16>() {
            Ok(port) => PortSpec::Number {
                proto,
                port,
                end: port,
            },
            Err(_) => PortSpec::Named {
                proto,
                name: s.clone(),
            },
        },
    })
}

fn rule_of(
    peers: Option<&Vec<net::NetworkPolicyPeer>>,
    ports: Option<&Vec<net::NetworkPolicyPort>>,
) -> Result<Rule, String> {
    Ok(Rule {
        peers: peers
            .into_iter()
            .flatten()
            .map(peer_of)
            .collect::<Result<_, _>>()?,
        ports: ports
            .into_iter()
            .flatten()
            .map(port_of)
            .collect::<Result<_, _>>()?,
    })
}

/// What the compiler reads of a NetworkPolicy. One the API server accepted but that we
/// cannot read is enforced as deny-all for the pods it selects (failing closed), and
/// logged.
pub fn network_policy_of(p: &net::NetworkPolicy) -> (String, Option<NetworkPolicy>) {
    let key = key_of(&p.metadata);
    let spec = p.spec.clone().unwrap_or_default();
    let types = spec.policy_types.clone();
    let has_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
    let (ingress_isolates, egress_isolates) = match &types {
        Some(t) if !t.is_empty() => (
            t.iter().any(|x| x == "Ingress"),
            t.iter().any(|x| x == "Egress"),
        ),
        _ => (true, has_egress),
    };
    let parsed = (|| -> Result<NetworkPolicy, String> {
        Ok(NetworkPolicy {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone().unwrap_or_default(),
            pod_selector: spec
                .pod_selector
                .as_ref()
                .map(selector_of)
                .transpose()?
                .unwrap_or_default(),
            ingress_isolates,
            egress_isolates,
            ingress: spec
                .ingress
                .iter()
                .flatten()
                .map(|r| rule_of(r.from.as_ref(), r.ports.as_ref()))
                .collect::<Result<_, _>>()?,
            egress: spec
                .egress
                .iter()
                .flatten()
                .map(|r| rule_of(r.to.as_ref(), r.ports.as_ref()))
                .collect::<Result<_, _>>()?,
        })
    })();
    match parsed {
        Ok(np) => (key, Some(np)),
        Err(e) => {
            tracing::error!(policy = %key, error = %e, "cannot read this NetworkPolicy; the pods it selects are isolated with no rule (deny) until it is fixed");
            let selector = spec.pod_selector.as_ref().map(selector_of);
            let pod_selector = match selector {
                Some(Ok(s)) => s,
                // Not even the selector: isolate the whole namespace.
                _ => Selector::default(),
            };
            (
                key,
                Some(NetworkPolicy {
                    namespace: p.metadata.namespace.clone().unwrap_or_default(),
                    name: p.metadata.name.clone().unwrap_or_default(),
                    pod_selector,
                    ingress_isolates,
                    egress_isolates,
                    ingress: Vec::new(),
                    egress: Vec::new(),
                }),
            )
        }
    }
}

/// Everything watched, as the compiler's input.
#[derive(Debug, Default)]
pub struct Watched {
    pub pods: Objects<model::Pod>,
    pub namespaces: Objects<Namespace>,
    pub policies: Objects<NetworkPolicy>,
    /// Synced also when the API has no ClusterNetworkPolicy resource (its CRD is not
    /// installed): there are none to enforce then.
    pub cluster_policies: Objects<ClusterPolicy>,
}

impl Watched {
    pub fn synced(&self) -> bool {
        self.pods.synced
            && self.namespaces.synced
            && self.policies.synced
            && self.cluster_policies.synced
    }

    pub fn world(
        &self,
        node: &str,
        node_addrs: &[IpAddr],
        service_cidrs: &[ipnet::IpNet],
    ) -> World {
        World {
            node: node.to_string(),
            pods: self.pods.values().cloned().collect(),
            namespaces: self.namespaces.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
            cluster_policies: self.cluster_policies.values().cloned().collect(),
            node_addrs: node_addrs.to_vec(),
            service_cidrs: service_cidrs.to_vec(),
        }
    }
}

enum Change {
    Pod(Box<Event<core::Pod>>),
    Namespace(Event<core::Namespace>),
    Policy(Event<net::NetworkPolicy>),
    ClusterPolicy(Box<Event<kube::core::DynamicObject>>),
    /// The API serves us no ClusterNetworkPolicy: 404 (the CRD is not installed) or 403
    /// (RBAC from before switchd read them).
    NoClusterPolicies(u16),
    Failed(&'static str, String),
}

/// The API's status code when this watch failure says the resource is not there for us:
/// 404 (no such resource: the CRD is not installed) or 403 (our RBAC does not grant it).
fn unavailable(e: &watcher::Error) -> Option<u16> {
    let code = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code,
        watcher::Error::WatchError(s) => s.code,
        _ => return None,
    };
    matches!(code, 403 | 404).then_some(code)
}

/// Follow the API and keep the switch's policy current, until the process ends. `client`
/// is the membership's; without one (the API server was down at start) one is made here,
/// retrying with backoff.
pub async fn run(sw: Arc<Switch>, client: Option<kube::Client>) {
    let cfg = &sw.cfg;
    let client = match client {
        Some(c) => c,
        None => {
            let mut backoff = Duration::from_millis(250);
            loop {
                let k = cfg
                    .kubernetes()
                    .expect("policy needs kubernetes membership");
                match crate::membership::kube::client(k).await {
                    Ok((c, _)) => break c,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "network policy: cannot reach the Kubernetes API yet; nothing is enforced until it answers");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(8));
                    }
                }
            }
        }
    };
    let mut node_addrs: Vec<IpAddr> = Vec::new();
    node_addrs.extend(cfg.underlay_addr);
    node_addrs.push(crate::datapath::table::gateway_of(cfg.pod_cidr).into());
    if let Some(v6) = cfg.ipv6 {
        node_addrs.push(v6.gateway().into());
    }
    let service_cidrs = cfg.policy.service_cidrs.clone();
    let node = cfg.node_name.clone();
    let saved_path = cfg.state_dir.join(SAVED_WORLD);
    let mut compiler = Some(Compiler::new(cfg.policy.denied_log_rate));
    // What this node enforced before a restart, until the lists arrive.
    if let Some(saved) = crate::membership::read_json::<Saved>(&saved_path) {
        let world = World {
            node: node.clone(),
            pods: saved.pods,
            namespaces: saved.namespaces,
            policies: saved.policies,
            cluster_policies: saved.cluster_policies,
            node_addrs: node_addrs.clone(),
            service_cidrs: service_cidrs.clone(),
        };
        let policy = compiler.as_mut().expect("just made").compile(&world);
        tracing::info!(policies = world.policies.len(), guarded = policy.guarded.len(), saved_secs_ago = crate::membership::now_unix().saturating_sub(saved.saved_unix), "network policy: enforcing what was saved before the restart until the API's lists arrive");
        sw.set_policy(Arc::new(policy));
    }
    let wc = || watcher::Config::default();
    let pods = watcher::watcher(Api::<core::Pod>::all(client.clone()), wc())
        .default_backoff()
        .map(|r| {
            r.map(|e| Change::Pod(Box::new(e)))
                .unwrap_or_else(|e| Change::Failed("Pods", e.to_string()))
        });
    let nss = watcher::watcher(Api::<core::Namespace>::all(client.clone()), wc())
        .default_backoff()
        .map(|r| {
            r.map(Change::Namespace)
                .unwrap_or_else(|e| Change::Failed("Namespaces", e.to_string()))
        });
    let nps = watcher::watcher(Api::<net::NetworkPolicy>::all(client.clone()), wc())
        .default_backoff()
        .map(|r| {
            r.map(Change::Policy)
                .unwrap_or_else(|e| Change::Failed("NetworkPolicies", e.to_string()))
        });
    // Without the CRD this watch fails with 404 and keeps retrying (with backoff), so a
    // CRD installed later is picked up.
    let cnps = watcher::watcher(
        Api::<kube::core::DynamicObject>::all_with(client, &super::cluster::api_resource()),
        wc(),
    )
    .default_backoff()
    .map(|r| match r {
        Ok(e) => Change::ClusterPolicy(Box::new(e)),
        Err(e) => match unavailable(&e) {
            Some(code) => Change::NoClusterPolicies(code),
            None => Change::Failed("ClusterNetworkPolicies", e.to_string()),
        },
    });
    let mut changes = futures_util::stream::select(
        futures_util::stream::select(pods, nss),
        futures_util::stream::select(nps, cnps),
    )
    .boxed();
    let mut watched = Watched::default();
    let mut dirty = false;
    type Done = (Compiler, crate::datapath::policy::Policy, Duration, World);
    let mut in_flight: Option<tokio::task::JoinHandle<Done>> = None;
    let mut announced_sync = false;
    let mut unsaved: Option<World> = None;
    let mut last_epoch = sw.policy().epoch;
    let mut save_tick = tokio::time::interval(SAVE_EVERY);
    save_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if dirty && in_flight.is_none() && watched.synced() {
            if let Some(mut c) = compiler.take() {
                let world = watched.world(&node, &node_addrs, &service_cidrs);
                dirty = false;
                in_flight = Some(tokio::task::spawn_blocking(move || {
                    let started = Instant::now();
                    let p = c.compile(&world);
                    (c, p, started.elapsed(), world)
                }));
            }
        }
        tokio::select! {
            change = changes.next() => {
                let Some(change) = change else {
                    tracing::error!("the policy watch ended; enforcing the last policy compiled");
                    return;
                };
                let changed = match change {
                    Change::Pod(e) => watched.pods.apply(*e, pod_of),
                    Change::Namespace(e) => watched.namespaces.apply(e, namespace_of),
                    Change::Policy(e) => watched.policies.apply(e, network_policy_of),
                    Change::ClusterPolicy(e) => watched
                        .cluster_policies
                        .apply(*e, super::cluster::cluster_policy_of),
                    Change::NoClusterPolicies(code) => {
                        if !watched.cluster_policies.synced || !watched.cluster_policies.is_empty() {
                            if code == 403 {
                                tracing::error!("network policy: switchd may not list ClusterNetworkPolicies (403): apply deploy/ RBAC of this release; until then NetworkPolicy alone is enforced");
                            } else {
                                tracing::info!("network policy: the API serves no ClusterNetworkPolicy (its CRD is not installed); NetworkPolicy alone is enforced");
                            }
                        }
                        watched.cluster_policies.absent()
                    }
                    Change::Failed(kind, e) => {
                        tracing::warn!(kind, error = %e, "the policy watch failed; enforcing the last policy compiled, retrying with backoff");
                        false
                    }
                };
                dirty |= changed;
                if !announced_sync && watched.synced() {
                    announced_sync = true;
                    dirty = true;
                    tracing::info!(pods = watched.pods.len(), namespaces = watched.namespaces.len(), policies = watched.policies.len(), cluster_policies = watched.cluster_policies.len(), "network policy: every list has arrived; enforcing from now on");
                }
            }
            done = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                in_flight = None;
                match done {
                    Ok((c, policy, took, world)) => {
                        unsaved = Some(world);
                        last_epoch = policy.epoch;
                        tracing::debug!(epoch = policy.epoch, guarded = policy.guarded.len(), policies = policy.policies.len(), compile_ms = took.as_secs_f64() * 1e3, "network policy compiled");
                        sw.set_policy(Arc::new(policy));
                        compiler = Some(c);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the policy compiler failed; enforcing the last policy compiled");
                        compiler = Some(Compiler::after(cfg.policy.denied_log_rate, last_epoch.wrapping_add(1)));
                        dirty = true;
                    }
                }
            }
            _ = save_tick.tick(), if unsaved.is_some() => {
                let world = unsaved.take().expect("guarded");
                let path = saved_path.clone();
                let saved = Saved {
                    saved_unix: crate::membership::now_unix(),
                    pods: world.pods,
                    namespaces: world.namespaces,
                    policies: world.policies,
                    cluster_policies: world.cluster_policies,
                };
                // Off the runtime: a large cluster's state is a few MB.
                let result = tokio::task::spawn_blocking(move || crate::membership::write_json(&path, &saved)).await;
                if let Ok(Err(e)) = result {
                    tracing::warn!(error = %format!("{e:#}"), "cannot save the policy state; enforcement goes on, but a restart would enforce nothing until the API answers (disk full?)");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np(json: &str) -> NetworkPolicy {
        let api: net::NetworkPolicy = serde_json::from_str(json).unwrap();
        network_policy_of(&api).1.unwrap()
    }

    #[test]
    fn policy_types_default_as_the_api_says() {
        let ingress_only =
            np(r#"{"metadata":{"name":"a","namespace":"x"},"spec":{"podSelector":{}}}"#);
        assert!(ingress_only.ingress_isolates && !ingress_only.egress_isolates);
        let with_egress = np(
            r#"{"metadata":{"name":"a","namespace":"x"},"spec":{"podSelector":{},"egress":[{}]}}"#,
        );
        assert!(with_egress.ingress_isolates && with_egress.egress_isolates);
        let egress_only = np(
            r#"{"metadata":{"name":"a","namespace":"x"},"spec":{"podSelector":{},"policyTypes":["Egress"]}}"#,
        );
        assert!(!egress_only.ingress_isolates && egress_only.egress_isolates);
    }

    #[test]
    fn ports_peers_and_a_policy_that_cannot_be_read() {
        let p = np(
            r#"{"metadata":{"name":"a","namespace":"x"},"spec":{"podSelector":{"matchLabels":{"app":"a"}},
            "ingress":[{"from":[{"ipBlock":{"cidr":"10.1.2.3/16","except":["10.1.5.0/24"]}},
                                {"namespaceSelector":{"matchExpressions":[{"key":"t","operator":"Exists"}]}}],
                        "ports":[{"port":80},{"port":"http","protocol":"UDP"},{"port":"8080"},
                                 {"port":1000,"endPort":1010,"protocol":"SCTP"},{"protocol":"TCP"}]}]}}"#,
        );
        let r = &p.ingress[0];
        assert_eq!(
            r.peers[0],
            Peer::Block {
                cidr: "10.1.0.0/16".parse().unwrap(),
                except: vec!["10.1.5.0/24".parse().unwrap()]
            }
        );
        assert!(matches!(
            &r.peers[1],
            Peer::Pods {
                namespaces: Some(_),
                pods: None
            }
        ));
        assert_eq!(
            r.ports,
            vec![
                PortSpec::Number {
                    proto: 6,
                    port: 80,
                    end: 80
                },
                PortSpec::Named {
                    proto: 17,
                    name: "http".into()
                },
                PortSpec::Number {
                    proto: 6,
                    port: 8080,
                    end: 8080
                },
                PortSpec::Number {
                    proto: 132,
                    port: 1000,
                    end: 1010
                },
                PortSpec::All { proto: 6 },
            ]
        );
        // A protocol nobody knows: the pods it selects are isolated with no rule.
        let bad = np(
            r#"{"metadata":{"name":"b","namespace":"x"},"spec":{"podSelector":{"matchLabels":{"app":"a"}},
            "ingress":[{"ports":[{"port":80,"protocol":"QUIC"}]}]}}"#,
        );
        assert!(bad.ingress_isolates && bad.ingress.is_empty());
        assert_eq!(
            bad.pod_selector.match_labels.get("app").map(String::as_str),
            Some("a")
        );
    }

    #[test]
    fn a_relist_replaces_and_only_real_changes_count() {
        let pod = |name: &str, ip: &str, phase: &str| -> core::Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "x", "labels": {"app": "a"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 80}]}]},
                "status": {"phase": phase, "podIPs": [{"ip": ip}]}
            }))
            .unwrap()
        };
        let mut o: Objects<model::Pod> = Objects::default();
        assert!(!o.apply(Event::Init, pod_of));
        assert!(!o.apply(Event::InitApply(pod("a", "10.0.0.2", "Running")), pod_of));
        assert!(
            o.apply(Event::InitDone, pod_of),
            "the first list is a change"
        );
        assert!(o.synced);
        assert!(
            !o.apply(Event::Apply(pod("a", "10.0.0.2", "Running")), pod_of),
            "same again"
        );
        assert!(o.apply(Event::Apply(pod("b", "10.0.0.3", "Running")), pod_of));
        assert!(
            o.apply(Event::Apply(pod("b", "10.0.0.3", "Succeeded")), pod_of),
            "finished: gone"
        );
        assert_eq!(o.len(), 1);
        assert_eq!(o.values().next().unwrap().named_ports[0].port, 80);
        // A relist without "a": it is gone when the relist completes.
        o.apply(Event::Init, pod_of);
        o.apply(Event::InitApply(pod("c", "10.0.0.4", "Running")), pod_of);
        assert_eq!(o.len(), 1, "nothing replaced before InitDone");
        assert!(o.apply(Event::InitDone, pod_of));
        assert_eq!(o.values().next().unwrap().name, "c");
    }

    #[test]
    fn the_saved_state_compiles_to_the_same_verdicts() {
        let mut g = super::super::oracle::Gen::seeded(5);
        let w = super::super::oracle::world(&mut g);
        let saved = Saved {
            saved_unix: 1,
            pods: w.pods.clone(),
            namespaces: w.namespaces.clone(),
            policies: w.policies.clone(),
            cluster_policies: w.cluster_policies.clone(),
        };
        let back: Saved = serde_json::from_slice(&serde_json::to_vec(&saved).unwrap()).unwrap();
        let restored = World {
            pods: back.pods,
            namespaces: back.namespaces,
            policies: back.policies,
            cluster_policies: back.cluster_policies,
            ..w.clone()
        };
        assert_eq!(restored.policies, w.policies);
        assert_eq!(restored.cluster_policies, w.cluster_policies);
        assert_eq!(restored.pods, w.pods);
        assert!(super::super::oracle::compare(&restored).is_ok());
    }
}
