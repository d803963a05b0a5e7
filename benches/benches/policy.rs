//! NetworkPolicy's cost, each figure beside its baseline in the same run:
//! - `established`: forwarding a packet of an established flow (forward + policy), with
//!   no policy at all next to 100 and 10,000 rules selecting both pods. The goal is no
//!   measurable difference between the rule counts: a cached verdict is one lookup
//!   whatever the rules.
//! - `first_packet`: classifying a new flow's first packet with 1,000 policies over 5,000
//!   pods (what the cache saves on every later packet).
//! - `compile`: compiling those 1,000 policies and 5,000 pods for one node.
//!
//! The `first_packet` and `compile` lines are repeated with 50 ClusterNetworkPolicies
//! added (25 per tier, 25 rules per direction each, every local pod selected by several):
//! a packet then walks the Admin tier, NetworkPolicy and the Baseline tier.
//!
//! `docs/network-policy.md` has the figures and the command.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchd::datapath::frame::{mac_for_ip, ETH_HDR_LEN, VNET_HDR_LEN};
use switchd::datapath::policy::{classify, enforce, ip_key, Memo, Policy, Tuple, VerdictCache};
use switchd::datapath::{craft, forward, FlowTable, Timeouts, Verdict};
use switchd::policy::compile::Compiler;
use switchd::policy::model::{
    Action, ClusterPeer, ClusterPolicy, ClusterRule, Labels, NamedPort, Namespace, NetworkPolicy,
    Peer, Pod, PodsIn, PortSpec, Rule, Selector, Tier, World,
};

const BATCH: usize = 64;

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn selector(pairs: &[(&str, String)]) -> Selector {
    Selector {
        match_labels: labels(pairs),
        expressions: Vec::new(),
    }
}

/// `pods` pods in 50 namespaces (the first 100 on this node, the others on 49 more), and
/// `policies` policies: each selects the app of one slice of pods (every one selects the
/// app of the two benchmark pods when `all_select_bench`) and admits a few apps in a few
/// namespaces on a port, a range and a named port.
fn world(pods: usize, policies: usize, all_select_bench: bool) -> World {
    let mut w = World {
        node: "n1".into(),
        node_addrs: vec!["10.244.1.1".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        ..World::default()
    };
    for n in 0..50 {
        w.namespaces.push(Namespace {
            name: format!("ns{n}"),
            labels: labels(&[("team", format!("t{}", n % 10))]),
            log_denied: false,
        });
    }
    for i in 0..pods {
        let node = i / 100;
        let ip = Ipv4Addr::new(10, 244, 1 + node as u8, 2 + (i % 100) as u8);
        w.pods.push(Pod {
            namespace: if i < 2 {
                "ns0".into()
            } else {
                format!("ns{}", i % 50)
            },
            name: format!("pod{i}"),
            labels: labels(&[("app", format!("app{}", if i < 2 { 0 } else { i % 200 }))]),
            ips: vec![IpAddr::V4(ip)],
            node: format!("n{}", node + 1),
            named_ports: vec![NamedPort {
                name: "http".into(),
                proto: 6,
                port: 8080,
            }],
        });
    }
    for p in 0..policies {
        let app = if all_select_bench { 0 } else { p % 200 };
        w.policies.push(NetworkPolicy {
            namespace: if all_select_bench {
                "ns0".into()
            } else {
                format!("ns{}", p % 50)
            },
            name: format!("np{p}"),
            pod_selector: selector(&[("app", format!("app{app}"))]),
            ingress_isolates: true,
            egress_isolates: true,
            ingress: vec![Rule {
                peers: vec![
                    Peer::Pods {
                        namespaces: Some(selector(&[("team", format!("t{}", p % 10))])),
                        pods: Some(selector(&[("app", format!("app{}", (p * 7) % 200))])),
                    },
                    Peer::Pods {
                        namespaces: None,
                        pods: Some(selector(&[("app", "app0".to_string())])),
                    },
                ],
                ports: vec![
                    PortSpec::Number {
                        proto: 6,
                        port: 80,
                        end: 80,
                    },
                    PortSpec::Number {
                        proto: 6,
                        port: 9000 + (p % 100) as u16,
                        end: 9100,
                    },
                    PortSpec::Named {
                        proto: 6,
                        name: "http".into(),
                    },
                ],
            }],
            egress: vec![Rule {
                peers: vec![
                    Peer::Block {
                        cidr: format!("192.168.{}.0/24", p % 250).parse().unwrap(),
                        except: Vec::new(),
                    },
                    Peer::Pods {
                        namespaces: None,
                        pods: Some(selector(&[("app", "app0".to_string())])),
                    },
                ],
                ports: Vec::new(),
            }],
        });
    }
    w
}

/// `w` with 50 cluster policies: 25 in each tier, each selecting the pods of the
/// namespaces of one team, with 25 rules per direction. Most rules name pods of other
/// apps on ports nobody uses (no match: the walk goes on); the Admin tier's last rule
/// passes everything to NetworkPolicy, the Baseline tier's denies one team.
fn with_cluster_policies(mut w: World) -> World {
    for i in 0..50 {
        let tier = if i < 25 { Tier::Admin } else { Tier::Baseline };
        let rules = |dir: u16| -> Vec<ClusterRule> {
            let mut rules: Vec<ClusterRule> = (0..24)
                .map(|r| ClusterRule {
                    name: format!("r{r}"),
                    action: if r % 2 == 0 {
                        Action::Deny
                    } else {
                        Action::Accept
                    },
                    peers: vec![
                        ClusterPeer::Pods(PodsIn {
                            namespaces: Selector::default(),
                            pods: selector(&[("app", format!("app{}", (i * 24 + r) % 200))]),
                        }),
                        ClusterPeer::Networks(vec![format!("172.{}.{r}.0/24", 16 + i % 16)
                            .parse()
                            .unwrap()]),
                    ],
                    ports: vec![PortSpec::Number {
                        proto: 17,
                        port: 20_000 + dir * 100 + r as u16,
                        end: 20_000 + dir * 100 + r as u16,
                    }],
                })
                .collect();
            rules.push(ClusterRule {
                name: "last".into(),
                action: if tier == Tier::Admin {
                    Action::Pass
                } else {
                    Action::Deny
                },
                peers: vec![ClusterPeer::Pods(PodsIn {
                    namespaces: selector(&[("team", format!("t{}", i % 10))]),
                    pods: Selector::default(),
                })],
                ports: Vec::new(),
            });
            rules
        };
        w.cluster_policies.push(ClusterPolicy {
            name: format!("cnp{i}"),
            tier,
            priority: (i % 10) as u16,
            subject: PodsIn {
                namespaces: selector(&[("team", format!("t{}", i % 10))]),
                pods: Selector::default(),
            },
            ingress: rules(0),
            egress: rules(1),
        });
    }
    w
}

/// 64-byte TCP segments (ACK) from pod0 to pod1's port 80, both on this node.
fn frames() -> Vec<Vec<u8>> {
    let (a, b) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 3));
    let mut f = craft::ipv4_packet(mac_for_ip(a), mac_for_ip(b), a, b, 6, 80, 50);
    f[VNET_HDR_LEN + ETH_HDR_LEN + 20 + 13] = 0x10; // ACK
    vec![f; BATCH]
}

fn established(c: &mut Criterion) {
    let mut table = craft::demo_table();
    table.mtu = 1500;
    for i in 0..100u8 {
        let ip = Ipv4Addr::new(10, 244, 1, 2 + i);
        table.insert_pod(1 + u32::from(i), ip, mac_for_ip(ip));
    }
    let flows = FlowTable::new(1024, Timeouts::default(), 1);
    let mut group = c.benchmark_group("policy_established");
    group.throughput(Throughput::Elements(BATCH as u64));
    let none = Policy::default();
    for (name, policy) in [
        ("no_policy", none),
        (
            "100_rules",
            Compiler::new(0).compile(&world(200, 100, true)),
        ),
        (
            "10000_rules",
            Compiler::new(0).compile(&world(200, 10_000, true)),
        ),
    ] {
        let cache = VerdictCache::new(262_144, 9);
        let mut fs = frames();
        let mut reply = [0u8; 256];
        // The flow is established: its first packet has been judged (and allowed).
        let v = forward(&mut fs[0], 1, &table, &flows, 0, &mut reply);
        assert_eq!(v, Verdict::Forward(2));
        assert_eq!(
            enforce(&fs[0], 1, v, &policy, &cache, 0, &mut Memo::default()).0,
            Verdict::Forward(2)
        );
        // Consecutive frames of one flow, as a GRO batch or a stream delivers them: the
        // worker's memo answers.
        let mut memo = Memo::default();
        group.bench_function(name, |bench| {
            bench.iter(|| {
                for f in fs.iter_mut() {
                    let v = forward(black_box(f), 1, &table, &flows, 0, &mut reply);
                    black_box(enforce(f, 1, v, &policy, &cache, 0, &mut memo));
                }
            })
        });
        // Frames of many flows interleaved: every frame goes to the verdict cache.
        group.bench_function(format!("{name}_interleaved"), |bench| {
            bench.iter(|| {
                for f in fs.iter_mut() {
                    let v = forward(black_box(f), 1, &table, &flows, 0, &mut reply);
                    black_box(enforce(f, 1, v, &policy, &cache, 0, &mut Memo::default()));
                }
            })
        });
    }
    group.finish();
}

fn first_packet(c: &mut Criterion) {
    let w = world(5000, 1000, false);
    let policy = Compiler::new(0).compile(&w);
    let tiered = Compiler::new(0).compile(&with_cluster_policies(w.clone()));
    assert!(
        policy.guarded.len() >= 90,
        "{} guarded",
        policy.guarded.len()
    );
    // New flows to this node's pods, on varied ports: half from pods anywhere (mostly
    // denied), half from pods that a policy of the destination names (pod d is selected
    // by policy d, which admits app (7d mod 200) of team (d mod 10): such pods exist for
    // d a multiple of 5).
    let tuples: Vec<Tuple> = (0..1024)
        .map(|i| {
            let d = 5 * (1 + i % 19);
            let s = if i % 2 == 0 {
                (7 * d) % 200 + 200 * (1 + i % 20)
            } else {
                5000 - 1 - (i * 37) % 4900
            };
            let src = &w.pods[s].ips[0];
            let dst = &w.pods[d].ips[0];
            Tuple {
                src: ip_key(*src),
                dst: ip_key(*dst),
                proto: 6,
                sport: 40000 + i as u16,
                dport: Some([80, 8080, 9050, 443][i % 4]),
                from_node: false,
                to_local_pod: true,
                to_node: false,
            }
        })
        .collect();
    let allowed = tuples
        .iter()
        .filter(|t| classify(&policy, t).allowed)
        .count();
    assert!(
        allowed > 0 && allowed < tuples.len(),
        "{allowed} of {} allowed: the benchmark must see both",
        tuples.len()
    );
    // The cluster policies change some verdicts (the Baseline tier denies where no
    // NetworkPolicy isolates), not all.
    let differ = tuples
        .iter()
        .filter(|t| classify(&policy, t).allowed != classify(&tiered, t).allowed)
        .count();
    assert!(tiered.guarded.len() >= policy.guarded.len());
    let mut group = c.benchmark_group("policy_first_packet");
    group.throughput(Throughput::Elements(tuples.len() as u64));
    for (name, p) in [
        ("1000_policies_5000_pods", &policy),
        ("1000_policies_5000_pods_50_cluster_policies", &tiered),
    ] {
        group.bench_function(name, |bench| {
            bench.iter(|| {
                for t in &tuples {
                    black_box(classify(p, black_box(t)));
                }
            })
        });
    }
    group.finish();
    println!(
        "policy_first_packet: {differ} of {} verdicts differ with the cluster policies",
        tuples.len()
    );
}

fn compile(c: &mut Criterion) {
    let w = world(5000, 1000, false);
    let mut group = c.benchmark_group("policy_compile");
    group.sample_size(10);
    group.bench_function("1000_policies_5000_pods", |bench| {
        let mut compiler = Compiler::new(0);
        bench.iter(|| black_box(compiler.compile(black_box(&w))))
    });
    let tiered = with_cluster_policies(w.clone());
    group.bench_function("1000_policies_5000_pods_50_cluster_policies", |bench| {
        let mut compiler = Compiler::new(0);
        bench.iter(|| black_box(compiler.compile(black_box(&tiered))))
    });
    group.finish();
}

criterion_group!(benches, established, first_packet, compile);
criterion_main!(benches);
