//! `membership = "kubernetes"`: this node's pod CIDRs from its own Node object, its peers
//! from every other Node, followed by a watch on the API server.
//!
//! Start ([`join`]): read this node's Node until kube-controller-manager has given it
//! `spec.podCIDRs` (the IPv4 entry, and the IPv6 one on a dual-stack node). Then [`run`]
//! publishes what peers need beyond the Node's own fields as annotations on it
//! ([`annotations_of`]), and watches every Node: the watcher (kube-runtime) keeps the
//! resourceVersion, asks for bookmarks, relists after `410 Gone` and backs off on errors;
//! [`NodeSet`] folds its events into records without any I/O, and each change becomes one
//! publication of the switch's peers.
//!
//! A peer is a Node's first InternalIP of our underlay's family and its pod CIDRs; the
//! VXLAN port, VNI and router MAC are read from the annotations when present and are ours
//! (the MAC derived from its subnet) otherwise, so a Node is reachable as soon as it has a
//! pod CIDR, before its switchd has said anything.
//!
//! Forwarding never waits for the API server. While it is unreachable the peers stay as
//! they were (`switchctl status` says so); a node that starts without it uses the CIDRs
//! and peers it saw last (`state_dir/kube-node.json`, `state_dir/kube-peers.json`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use ipnet::{Ipv4Net, Ipv6Net};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use serde::{Deserialize, Serialize};
use switchd_proto::MembershipInfo;

use super::{now_unix, read_json, write_json, NodeRecord};
use crate::config::{Config, KubeConfig};
use crate::datapath::frame::{format_mac, mac_for_ip};
use crate::datapath::table::gateway_of;
use crate::switch::Switch;
use crate::tunnel::PeerSource;

/// The API's Node object and the watcher's events, as [`NodeSet`] takes them (re-exported
/// for the fuzz targets and tests, which do not depend on the client crates themselves).
pub use k8s_openapi::api::core::v1::Node;
pub use kube::runtime::watcher::Event;

/// Annotations switchd writes on its own Node and reads on the others.
pub const ANNOTATION_ROUTER_MAC: &str = "switchd.dev/router-mac";
pub const ANNOTATION_TUNNEL_PORT: &str = "switchd.dev/tunnel-port";
pub const ANNOTATION_VNI: &str = "switchd.dev/vni";
pub const ANNOTATION_WIREGUARD_KEY: &str = "switchd.dev/wireguard-public-key";
pub const ANNOTATION_WIREGUARD_PORT: &str = "switchd.dev/wireguard-port";
pub const ANNOTATION_VERSION: &str = "switchd.dev/version";

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
const LOCAL_NODE: &str = "kube-node.json";
const PEER_CACHE: &str = "kube-peers.json";
/// How often, at most, the peer cache is rewritten while Nodes change.
const CACHE_EVERY: Duration = Duration::from_secs(1);
const LOG_NAMES: usize = 10;

/// A Node's pod CIDRs by family: the first IPv4 and the first IPv6 entry of
/// `spec.podCIDRs` (or the older single `spec.podCIDR`).
pub fn pod_cidrs(node: &Node) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), String> {
    let spec = node.spec.as_ref();
    let mut listed: Vec<&str> = spec
        .and_then(|s| s.pod_cidrs.as_ref())
        .map(|v| v.iter().map(String::as_str).collect())
        .unwrap_or_default();
    if listed.is_empty() {
        listed.extend(spec.and_then(|s| s.pod_cidr.as_deref()));
    }
    let (mut v4, mut v6) = (None, None);
    for text in listed {
        let net: ipnet::IpNet = text
            .parse()
            .map_err(|_| format!("spec.podCIDRs entry {text:?} is not a CIDR"))?;
        match net {
            ipnet::IpNet::V4(n) if v4.is_none() => v4 = Some(n.trunc()),
            ipnet::IpNet::V6(n) if v6.is_none() => v6 = Some(n.trunc()),
            _ => {}
        }
    }
    Ok((v4, v6))
}

fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn parsed_annotation<T: std::str::FromStr>(node: &Node, key: &str) -> Result<Option<T>, String> {
    match annotation(node, key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("annotation {key}={v:?} does not parse")),
    }
}

/// The record a Node object stands for, in `cfg`'s cluster, or why it cannot be a peer.
/// Whether the record is acceptable as a peer is [`NodeRecord::to_peer`]'s to say.
pub fn record_of(node: &Node, cfg: &Config) -> Result<NodeRecord, String> {
    let name = node
        .metadata
        .name
        .clone()
        .ok_or_else(|| "it has no metadata.name".to_string())?;
    let (v4, v6) = pod_cidrs(node)?;
    let pod_cidr = v4.ok_or_else(|| "it has no IPv4 pod CIDR yet".to_string())?;
    let want_v4 = cfg.underlay_addr.is_none_or(|a| a.is_ipv4());
    let underlay_addr = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse::<IpAddr>().ok())
        .find(|a| a.is_ipv4() == want_v4)
        .ok_or_else(|| {
            format!(
                "it has no InternalIP of our underlay's family ({})",
                if want_v4 { "IPv4" } else { "IPv6" }
            )
        })?;
    let router_mac = annotation(node, ANNOTATION_ROUTER_MAC)
        .map(str::to_string)
        .unwrap_or_else(|| format_mac(mac_for_ip(gateway_of(pod_cidr))));
    Ok(NodeRecord {
        name,
        underlay_addr,
        tunnel_port: parsed_annotation(node, ANNOTATION_TUNNEL_PORT)?.unwrap_or(cfg.tunnel_port),
        vni: parsed_annotation(node, ANNOTATION_VNI)?.unwrap_or(cfg.vni),
        router_mac,
        pod_cidr,
        pod_cidr_v6: v6,
        version: annotation(node, ANNOTATION_VERSION)
            .unwrap_or_default()
            .to_string(),
        since_unix: 0,
        public_key: annotation(node, ANNOTATION_WIREGUARD_KEY).map(str::to_string),
        wireguard_port: parsed_annotation(node, ANNOTATION_WIREGUARD_PORT)?,
    })
}

/// What this node publishes on its own Node for its peers. A key this node does not use
/// (WireGuard when it does not encrypt) maps to `None`, which removes a stale value.
pub fn annotations_of(cfg: &Config) -> BTreeMap<&'static str, Option<String>> {
    let record = NodeRecord::of(cfg, 0);
    let wg = cfg.encryption.wireguard();
    BTreeMap::from([
        (ANNOTATION_ROUTER_MAC, Some(format_mac(cfg.router_mac))),
        (ANNOTATION_TUNNEL_PORT, Some(cfg.tunnel_port.to_string())),
        (ANNOTATION_VNI, Some(cfg.vni.to_string())),
        (ANNOTATION_WIREGUARD_KEY, record.and_then(|r| r.public_key)),
        (ANNOTATION_WIREGUARD_PORT, wg.map(|w| w.port.to_string())),
        (
            ANNOTATION_VERSION,
            Some(env!("CARGO_PKG_VERSION").to_string()),
        ),
    ])
}

/// This node's pod CIDRs, as its own Node shows them.
type OwnCidrs = (Option<Ipv4Net>, Option<Ipv6Net>);

/// A Node as [`NodeSet`] keeps it: its name, its record or why it is none, and its pod
/// CIDRs when it is this node's own. `None` for a Node without a name.
fn judge(
    node: &Node,
    cfg: &Config,
) -> Option<(String, Result<NodeRecord, String>, Option<OwnCidrs>)> {
    let name = node.metadata.name.clone()?;
    let own = (name == cfg.node_name).then(|| pod_cidrs(node).unwrap_or_default());
    Some((name, record_of(node, cfg), own))
}

/// The Nodes the watch has shown, as records or the reason each is not one. Folds the
/// watcher's events without I/O: a relist (`Init` … `InitDone`) replaces the whole set at
/// its end, so a Node deleted while the watch was down is gone after it.
#[derive(Debug, Default)]
pub struct NodeSet {
    nodes: BTreeMap<String, Result<NodeRecord, String>>,
    /// This node's own pod CIDRs as its Node shows them now (`None`: not seen, or deleted).
    own: Option<OwnCidrs>,
    listing: Option<BTreeMap<String, Result<NodeRecord, String>>>,
    listing_own: Option<OwnCidrs>,
}

impl NodeSet {
    pub fn from_records(records: impl IntoIterator<Item = NodeRecord>) -> NodeSet {
        NodeSet {
            nodes: records
                .into_iter()
                .map(|r| (r.name.clone(), Ok(r)))
                .collect(),
            ..NodeSet::default()
        }
    }

    /// Fold one event; true when the peers it implies may have changed.
    pub fn apply(&mut self, event: Event<Node>, cfg: &Config) -> bool {
        match event {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                self.listing_own = None;
                false
            }
            Event::InitApply(node) => {
                let Some((name, entry, own)) = judge(&node, cfg) else {
                    return false;
                };
                if own.is_some() {
                    self.listing_own = own;
                }
                self.listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, entry);
                false
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                self.own = self.listing_own.take();
                let changed = listed != self.nodes;
                self.nodes = listed;
                changed
            }
            Event::Apply(node) => {
                let Some((name, entry, own)) = judge(&node, cfg) else {
                    return false;
                };
                if own.is_some() {
                    self.own = own;
                }
                if self.nodes.get(&name) == Some(&entry) {
                    return false;
                }
                self.nodes.insert(name, entry);
                true
            }
            Event::Delete(node) => {
                let Some(name) = node.metadata.name.as_deref() else {
                    return false;
                };
                if name == cfg.node_name {
                    self.own = None;
                }
                self.nodes.remove(name).is_some()
            }
        }
    }

    pub fn records(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values().filter_map(|r| r.as_ref().ok())
    }

    /// Nodes that are not records, with the reason (this node's own left out).
    pub fn unusable<'a>(&'a self, me: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.nodes.iter().filter_map(move |(n, r)| match r {
            Err(why) if n != me => Some((n.as_str(), why.as_str())),
            _ => None,
        })
    }

    /// How this node's own Node disagrees with the CIDRs its pods use, if it does.
    pub fn own_conflict(&self, cfg: &Config) -> Option<String> {
        let (v4, v6) = self.own?;
        if v4 != Some(cfg.pod_cidr) {
            return Some(format!(
                "its Node now has pod CIDR {}, but this node's pods use {}",
                v4.map_or("none".to_string(), |n| n.to_string()),
                cfg.pod_cidr
            ));
        }
        if let (Some(ours), Some(theirs)) = (cfg.ipv6, v6) {
            if ours.pod_cidr != theirs {
                return Some(format!(
                    "its Node now has IPv6 pod CIDR {theirs}, but this node's pods use {}",
                    ours.pod_cidr
                ));
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// What this node remembers of its Node, for a start while the API server is down.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct LocalNode {
    node_name: String,
    pod_cidr: Ipv4Net,
    #[serde(default)]
    pod_cidr_v6: Option<Ipv6Net>,
}

/// The outcome of [`join`]: this node's pod CIDRs and what it knows of the others.
pub struct Joined {
    pub pod_cidr: Ipv4Net,
    pub pod_cidr_v6: Option<Ipv6Net>,
    client: Option<kube::Client>,
    server: String,
    cached: Vec<NodeRecord>,
}

impl Joined {
    /// The API client `join` connected with, for the other watches (NetworkPolicy) to
    /// share; `None` when the node started from its cache with the API server down.
    pub fn client(&self) -> Option<kube::Client> {
        self.client.clone()
    }
}

/// A client for the API server from `k`'s kubeconfig, or inferred (service account in a
/// pod, else `$KUBECONFIG` or `~/.kube/config`).
pub async fn client(k: &KubeConfig) -> Result<(kube::Client, String)> {
    let config = match &k.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("kubeconfig: cannot read {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .with_context(|| format!("kubeconfig: {} is not usable", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "membership = \"kubernetes\": no service account token (not in a pod?) and no kubeconfig; set kubeconfig = \"/path\"",
        )?,
    };
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).context("cannot build the API client")?;
    Ok((client, server))
}

/// What an API error means for the operator.
fn explain(err: &kube::Error, node: &str) -> String {
    match err {
        kube::Error::Api(s) if s.code == 403 => format!(
            "the API server refuses switchd ({}): its service account needs get/list/watch/patch on nodes (deploy/kubernetes/switchd.yaml's ClusterRole)",
            s.message
        ),
        kube::Error::Api(s) if s.code == 404 => {
            format!("Node {node:?} does not exist yet (has its kubelet registered it?)")
        }
        other => format!("{other}"),
    }
}

/// Find this node's pod CIDRs before the switch starts. Waits (with backoff) while the
/// Node has none or the API server does not answer; with CIDRs remembered from an earlier
/// run it starts without the API server instead.
pub async fn join(cfg: &Config) -> Result<Joined> {
    let k = cfg
        .kubernetes()
        .context("join needs membership = \"kubernetes\"")?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create state_dir {}", cfg.state_dir.display()))?;
    let local_path = cfg.state_dir.join(LOCAL_NODE);
    let local: Option<LocalNode> =
        read_json(&local_path).filter(|l: &LocalNode| l.node_name == cfg.node_name);
    let mut backoff = Duration::from_millis(250);
    let mut connected: Option<(kube::Client, String)> = None;
    loop {
        let outcome: Result<Node, String> = async {
            if connected.is_none() {
                connected = Some(client(k).await.map_err(|e| format!("{e:#}"))?);
            }
            let (c, _) = connected.as_ref().expect("set above");
            let nodes: Api<Node> = Api::all(c.clone());
            match tokio::time::timeout(REQUEST_TIMEOUT, nodes.get(&cfg.node_name)).await {
                Ok(Ok(node)) => Ok(node),
                Ok(Err(e)) => Err(explain(&e, &cfg.node_name)),
                Err(_) => Err(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())),
            }
        }
        .await;
        let wait_reason = match outcome {
            Ok(node) => match pod_cidrs(&node) {
                Ok((Some(v4), v6)) => {
                    if let Some(fixed) = k.fixed_subnet.filter(|f| *f != v4) {
                        bail!("pod_cidr: {fixed} is configured, but Node {:?} has pod CIDR {v4}; leave pod_cidr out with membership = \"kubernetes\"", cfg.node_name);
                    }
                    let mine = LocalNode {
                        node_name: cfg.node_name.clone(),
                        pod_cidr: v4,
                        pod_cidr_v6: v6,
                    };
                    write_json(&local_path, &mine)?;
                    let (client, server) = connected.take().expect("answered");
                    tracing::info!(node = %cfg.node_name, pod_cidr = %v4, pod_cidr_v6 = ?v6, server = %server, "pod CIDRs from this node's Node object");
                    return Ok(Joined {
                        pod_cidr: v4,
                        pod_cidr_v6: v6,
                        client: Some(client),
                        server,
                        cached: Vec::new(),
                    });
                }
                Ok((None, _)) => format!("Node {:?} has no IPv4 spec.podCIDRs yet (kube-controller-manager assigns them with --allocate-node-cidrs)", cfg.node_name),
                Err(why) => format!("Node {:?}: {why}", cfg.node_name),
            },
            Err(why) => {
                if let Some(l) = &local {
                    let cached: Vec<NodeRecord> =
                        read_json(&cfg.state_dir.join(PEER_CACHE)).unwrap_or_default();
                    tracing::warn!(error = %why, pod_cidr = %l.pod_cidr, cached_peers = cached.len(), "the API server is unreachable; starting with the pod CIDRs and peers this node saw last, and watching when it answers");
                    return Ok(Joined {
                        pod_cidr: l.pod_cidr,
                        pod_cidr_v6: l.pod_cidr_v6,
                        client: connected.take().map(|(c, _)| c),
                        server: String::new(),
                        cached,
                    });
                }
                why
            }
        };
        tracing::warn!(reason = %wait_reason, retry_in_ms = backoff.as_millis() as u64, "waiting for this node's pod CIDRs");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Apply [`Joined`]'s CIDRs to the config the switch starts with.
pub fn assign(cfg: &mut Config, joined: &Joined) -> Result<()> {
    cfg.assign_pod_cidr(joined.pod_cidr)?;
    match (joined.pod_cidr_v6, cfg.ipv6.is_some()) {
        (Some(v6), true) => cfg.assign_pod_cidr_v6(v6)?,
        (Some(v6), false) => tracing::warn!(pod_cidr_v6 = %v6, "this node's Node has an IPv6 pod CIDR, but cluster_cidr_v6 is not set; staying IPv4-only"),
        (None, true) => bail!("cluster_cidr_v6 is set, but Node {:?} has no IPv6 entry in spec.podCIDRs; run kube-controller-manager with --cluster-cidr=<IPv4>,<IPv6> or leave cluster_cidr_v6 out", cfg.node_name),
        (None, false) => {}
    }
    Ok(())
}

struct Watch<'a> {
    sw: &'a Switch,
    set: NodeSet,
    server: String,
    state: &'static str,
    last_error: String,
    events: u64,
    publications: u64,
    cache_dirty: bool,
    cache_written: Instant,
    /// The conflict with our own Node last logged, so it is said once per change.
    own_conflict: Option<String>,
}

impl Watch<'_> {
    fn set_state(&mut self, state: &'static str) {
        let mut m = self.sw.membership.lock().unwrap();
        let info = m.get_or_insert_with(MembershipInfo::default);
        if info.state != state {
            info.since_unix = now_unix();
        }
        self.state = state;
        info.mode = "kubernetes".into();
        info.state = state.into();
        info.endpoints = vec![self.server.clone()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        info.subnet = self.sw.cfg.pod_cidr.to_string();
        info.last_error = self.last_error.clone();
        info.events = self.events;
        info.publications = self.publications;
        info.peers = self
            .set
            .records()
            .filter(|r| r.name != self.sw.cfg.node_name)
            .count();
    }

    fn publish(&mut self) {
        let cfg = &self.sw.cfg;
        let (peers, mut refused) = super::peers_of(self.set.records(), cfg);
        refused.extend(
            self.set
                .unusable(&cfg.node_name)
                .map(|(n, why)| (n.to_string(), why.to_string())),
        );
        for (node, why) in refused.iter().take(LOG_NAMES) {
            tracing::info!(node = %node, reason = %why, "Node is not a peer");
        }
        if refused.len() > LOG_NAMES {
            tracing::info!(
                more = refused.len() - LOG_NAMES,
                "more Nodes are not peers for the same kinds of reasons"
            );
        }
        self.sw.set_peers(PeerSource::Kubernetes, &peers);
        self.publications += 1;
        self.cache_dirty = true;
        self.flush_cache(false);
        let conflict = self.set.own_conflict(cfg);
        if conflict != self.own_conflict {
            if let Some(c) = &conflict {
                tracing::error!(node = %cfg.node_name, conflict = %c, "this node's Node changed its pod CIDRs under running pods; they keep their addresses. Drain the node and restart switchd with an empty state_dir to take the new ones");
            }
            self.own_conflict = conflict;
        }
    }

    fn flush_cache(&mut self, force: bool) {
        if !self.cache_dirty || !(force || self.cache_written.elapsed() >= CACHE_EVERY) {
            return;
        }
        let cache: Vec<&NodeRecord> = self.set.records().collect();
        if let Err(err) = write_json(&self.sw.cfg.state_dir.join(PEER_CACHE), &cache) {
            tracing::warn!(error = %format!("{err:#}"), "cannot cache the peers from the Kubernetes API");
        }
        self.cache_dirty = false;
        self.cache_written = Instant::now();
    }
}

/// Publish this node's annotations on its Node, retrying until the API server takes them.
async fn publish_annotations(client: kube::Client, cfg: Arc<Config>) {
    let nodes: Api<Node> = Api::all(client);
    let patch = serde_json::json!({ "metadata": { "annotations": annotations_of(&cfg) } });
    let mut backoff = Duration::from_millis(250);
    loop {
        match tokio::time::timeout(
            REQUEST_TIMEOUT,
            nodes.patch(
                &cfg.node_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            ),
        )
        .await
        {
            Ok(Ok(_)) => {
                tracing::info!(node = %cfg.node_name, "published this node's switchd annotations on its Node");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %explain(&e, &cfg.node_name), retry_in_ms = backoff.as_millis() as u64, "cannot annotate this node's Node; peers use defaults for it until then")
            }
            Err(_) => tracing::warn!(
                retry_in_ms = backoff.as_millis() as u64,
                "the API server did not answer the Node annotation in time"
            ),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Follow the Node objects until the process ends.
pub async fn run(sw: Arc<Switch>, joined: Joined) {
    let cfg = Arc::new(sw.cfg.clone());
    let mut w = Watch {
        sw: &sw,
        set: NodeSet::from_records(joined.cached),
        server: joined.server,
        state: "connecting",
        last_error: String::new(),
        events: 0,
        publications: 0,
        cache_dirty: false,
        cache_written: Instant::now(),
        own_conflict: None,
    };
    if !w.set.is_empty() {
        w.publish();
    }
    w.set_state("connecting");
    let mut backoff = Duration::from_millis(250);
    let client = match joined.client {
        Some(c) => c,
        None => loop {
            match client(cfg.kubernetes().expect("kubernetes mode")).await {
                Ok((c, server)) => {
                    w.server = server;
                    break c;
                }
                Err(e) => {
                    w.last_error = format!("{e:#}");
                    w.set_state("unreachable");
                    tracing::warn!(error = %w.last_error, retry_in_ms = backoff.as_millis() as u64, "cannot reach the Kubernetes API; forwarding continues with the last known peers");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        },
    };
    tokio::spawn(publish_annotations(client.clone(), cfg.clone()));
    let nodes: Api<Node> = Api::all(client);
    let mut stream = watcher::watcher(nodes, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut tick = tokio::time::interval(CACHE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            item = stream.next() => match item {
                Some(Ok(event)) => {
                    w.events += 1;
                    if w.state != "watching" {
                        if w.state == "unreachable" {
                            tracing::info!(server = %w.server, "the Kubernetes API answers again; following Nodes");
                        }
                        w.last_error.clear();
                    }
                    let done = matches!(event, Event::InitDone | Event::Apply(_) | Event::Delete(_));
                    if w.set.apply(event, &cfg) {
                        w.publish();
                    }
                    if done {
                        w.set_state("watching");
                    }
                }
                Some(Err(e)) => {
                    let text = format!("{e}");
                    if w.state != "unreachable" || w.last_error != text {
                        tracing::warn!(error = %text, peers = w.set.records().count().saturating_sub(1), "the Node watch failed; forwarding continues with the last known peers, retrying with backoff");
                    }
                    w.last_error = text;
                    w.set_state("unreachable");
                }
                None => {
                    tracing::error!("the Node watch ended; peers stay as they are");
                    return;
                }
            },
            _ = tick.tick() => w.flush_cache(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let mut c = Config::parse(
            "node_name = \"a\"\nmembership = \"kubernetes\"\nunderlay_addr = \"192.168.9.1\"\ncluster_cidr = \"10.244.0.0/16\"\n",
            Default::default(),
        )
        .unwrap();
        c.assign_pod_cidr("10.244.1.0/24".parse().unwrap()).unwrap();
        c
    }

    fn node(name: &str, cidrs: &[&str], ip: &str, annotations: &[(&str, &str)]) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "annotations": annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_,_>>(),
            },
            "spec": { "podCIDRs": cidrs },
            "status": { "addresses": [
                {"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": ip},
            ]},
        }))
        .unwrap()
    }

    #[test]
    fn a_node_with_a_pod_cidr_is_a_peer_with_derived_defaults() {
        let c = cfg();
        let r = record_of(&node("b", &["10.244.2.0/24"], "192.168.9.2", &[]), &c).unwrap();
        assert_eq!(r.pod_cidr, "10.244.2.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(r.underlay_addr, "192.168.9.2".parse::<IpAddr>().unwrap());
        assert_eq!(r.router_mac, "0a:58:0a:f4:02:01");
        assert_eq!((r.tunnel_port, r.vni), (c.tunnel_port, c.vni));
        let p = r.to_peer(&c).unwrap();
        assert_eq!(p.addr.port(), c.tunnel_port);
    }

    #[test]
    fn annotations_override_and_bad_ones_are_refused_with_the_key() {
        let c = cfg();
        let n = node(
            "b",
            &["10.244.2.0/24", "fd10:244:0:2::/64"],
            "192.168.9.2",
            &[
                (ANNOTATION_TUNNEL_PORT, "4789"),
                (ANNOTATION_ROUTER_MAC, "02:00:00:00:00:09"),
            ],
        );
        let r = record_of(&n, &c).unwrap();
        assert_eq!(r.tunnel_port, 4789);
        assert_eq!(r.router_mac, "02:00:00:00:00:09");
        assert_eq!(r.pod_cidr_v6, Some("fd10:244:0:2::/64".parse().unwrap()));
        let bad = node(
            "b",
            &["10.244.2.0/24"],
            "192.168.9.2",
            &[(ANNOTATION_VNI, "x")],
        );
        assert!(record_of(&bad, &c).unwrap_err().contains(ANNOTATION_VNI));
        let none = node("b", &[], "192.168.9.2", &[]);
        assert!(record_of(&none, &c)
            .unwrap_err()
            .contains("no IPv4 pod CIDR"));
        let v6ip = node("b", &["10.244.2.0/24"], "fd00::2", &[]);
        assert!(record_of(&v6ip, &c).unwrap_err().contains("InternalIP"));
        let garbage = node("b", &["ten"], "192.168.9.2", &[]);
        assert!(record_of(&garbage, &c).unwrap_err().contains("\"ten\""));
    }

    #[test]
    fn ipv6_first_pod_cidrs_are_sorted_by_family() {
        let n = node(
            "b",
            &["fd10:244:0:2::/64", "10.244.2.0/24"],
            "192.168.9.2",
            &[],
        );
        let (v4, v6) = pod_cidrs(&n).unwrap();
        assert_eq!(v4, Some("10.244.2.0/24".parse().unwrap()));
        assert_eq!(v6, Some("fd10:244:0:2::/64".parse().unwrap()));
    }

    #[test]
    fn watch_events_fold_into_peers_and_a_relist_drops_nodes_deleted_meanwhile() {
        let c = cfg();
        let mut set = NodeSet::default();
        assert!(!set.apply(Event::Init, &c));
        assert!(!set.apply(
            Event::InitApply(node("a", &["10.244.1.0/24"], "192.168.9.1", &[])),
            &c
        ));
        assert!(!set.apply(
            Event::InitApply(node("b", &["10.244.2.0/24"], "192.168.9.2", &[])),
            &c
        ));
        assert!(!set.apply(Event::InitApply(node("c", &[], "192.168.9.3", &[])), &c));
        assert!(set.apply(Event::InitDone, &c), "the first list publishes");
        let (peers, _) = crate::membership::peers_of(set.records(), &c);
        assert_eq!(
            peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(set.unusable("a").count(), 1, "c waits for its pod CIDR");
        assert!(set.own_conflict(&c).is_none());

        // c gets its pod CIDR: one Apply makes it a peer.
        assert!(set.apply(
            Event::Apply(node("c", &["10.244.3.0/24"], "192.168.9.3", &[])),
            &c
        ));
        // A status heartbeat that changes nothing we use publishes nothing.
        assert!(!set.apply(
            Event::Apply(node("c", &["10.244.3.0/24"], "192.168.9.3", &[])),
            &c
        ));
        let (peers, _) = crate::membership::peers_of(set.records(), &c);
        assert_eq!(peers.len(), 2);

        // The watch broke; b was deleted meanwhile; the relist drops it.
        set.apply(Event::Init, &c);
        set.apply(
            Event::InitApply(node("a", &["10.244.1.0/24"], "192.168.9.1", &[])),
            &c,
        );
        set.apply(
            Event::InitApply(node("c", &["10.244.3.0/24"], "192.168.9.3", &[])),
            &c,
        );
        assert!(set.apply(Event::InitDone, &c));
        let (peers, _) = crate::membership::peers_of(set.records(), &c);
        assert_eq!(
            peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["c"]
        );

        assert!(set.apply(
            Event::Delete(node("c", &["10.244.3.0/24"], "192.168.9.3", &[])),
            &c
        ));
        assert_eq!(crate::membership::peers_of(set.records(), &c).0.len(), 0);
        assert!(!set.apply(Event::Delete(node("zz", &[], "192.168.9.9", &[])), &c));
    }

    #[test]
    fn own_node_renumbered_under_running_pods_is_reported() {
        let c = cfg();
        let mut set = NodeSet::default();
        set.apply(
            Event::Apply(node("a", &["10.244.7.0/24"], "192.168.9.1", &[])),
            &c,
        );
        let why = set.own_conflict(&c).unwrap();
        assert!(
            why.contains("10.244.7.0/24") && why.contains("10.244.1.0/24"),
            "{why}"
        );
    }

    #[test]
    fn our_annotations_round_trip_into_the_record_peers_read() {
        let c = cfg();
        let anns: Vec<(&str, String)> = annotations_of(&c)
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        let pairs: Vec<(&str, &str)> = anns.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let me = node("a", &["10.244.1.0/24"], "192.168.9.1", &pairs);
        let r = record_of(&me, &c).unwrap();
        let expected = NodeRecord::of(&c, 0).unwrap();
        assert_eq!(r.router_mac, expected.router_mac);
        assert_eq!((r.tunnel_port, r.vni), (expected.tunnel_port, expected.vni));
        assert_eq!(r.public_key, None);
    }
}
