//! What membership reads from strangers: an etcd node record (selector byte 0) and Node
//! objects as the Kubernetes API returns them (any other selector: a JSON array, folded as
//! a relist, then each applied again and the odd ones deleted, as a watch would). Any
//! input is peers or reasons; every accepted peer lies inside the cluster, overlaps
//! neither this node nor another peer, and is never this node itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchd::config::{overlaps, Config, Overrides, Peer};
use switchd::membership::kube::{Event, Node, NodeSet};
use switchd::membership::{peers_of, NodeRecord};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let cfg = base();
    if selector == 0 {
        // What becomes a peer goes through peers_of, which also leaves out this node's
        // own record (to_peer alone does not: it judges a record, not who wrote it).
        if let Ok(record) = serde_json::from_slice::<NodeRecord>(body) {
            check(cfg, &peers_of([&record], cfg).0);
        }
        return;
    }
    let Ok(nodes) = serde_json::from_slice::<Vec<Node>>(body) else {
        return;
    };
    let mut set = NodeSet::default();
    set.apply(Event::Init, cfg);
    for n in &nodes {
        set.apply(Event::InitApply(n.clone()), cfg);
    }
    set.apply(Event::InitDone, cfg);
    check(cfg, &peers_of(set.records(), cfg).0);
    for (i, n) in nodes.into_iter().enumerate() {
        if i % 2 == 1 {
            set.apply(Event::Delete(n), cfg);
        } else {
            set.apply(Event::Apply(n), cfg);
        }
        check(cfg, &peers_of(set.records(), cfg).0);
    }
});

fn check(cfg: &Config, peers: &[Peer]) {
    for (i, p) in peers.iter().enumerate() {
        assert_ne!(p.name, cfg.node_name, "a node is not its own peer");
        assert!(cfg.cluster_cidr.contains(&p.pod_cidr), "{p:?}");
        assert!(
            !overlaps(p.pod_cidr, cfg.pod_cidr),
            "{p:?} overlaps this node"
        );
        assert_eq!(p.addr.is_ipv4(), cfg.underlay_addr.unwrap().is_ipv4());
        for q in &peers[i + 1..] {
            assert!(!overlaps(p.pod_cidr, q.pod_cidr), "{p:?} overlaps {q:?}");
        }
    }
}

/// A dual-stack node of a Kubernetes-mode cluster, parsed once.
fn base() -> &'static Config {
    static BASE: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let mut cfg = Config::parse(
            "node_name = \"n1\"\nmembership = \"kubernetes\"\ncluster_cidr = \"10.244.0.0/16\"\ncluster_cidr_v6 = \"fd10:244::/48\"\nunderlay_addr = \"192.168.7.1\"\n",
            Overrides::default(),
        )
        .expect("the base config");
        cfg.assign_pod_cidr("10.244.1.0/24".parse().unwrap()).unwrap();
        cfg.assign_pod_cidr_v6("fd10:244:0:1::/64".parse().unwrap()).unwrap();
        cfg
    })
}
