//! NetworkPolicy: what users write (policy objects, through the API server) and what pods
//! send. Selector byte 0: the rest drives a random world of pods, namespaces and policies,
//! and the compiled classifier must agree with the literal reference
//! (`switchd::policy::oracle`) on every packet. 1: a NetworkPolicy as JSON, read as the
//! watcher reads it and compiled into a small world; judging packets must not panic, and a
//! policy that cannot be read isolates what it selects (never admits more). 3: a
//! ClusterNetworkPolicy as JSON, read as the watcher reads it and compiled into a small
//! world; the classifier must agree with the reference. Other: a frame (Ethernet, any
//! protocol, SCTP included) policed against a fixed policy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchd::datapath::policy::{enforce, Memo, VerdictCache};
use switchd::datapath::{Verdict, HOST_PORT};
use switchd::policy::cluster::{cluster_policy_of, DynamicObject};
use switchd::policy::compile::Compiler;
use switchd::policy::oracle::{self, Gen};
use switchd::policy::watch::{network_policy_of, ApiNetworkPolicy};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector {
        0 => {
            let w = oracle::world(&mut Gen::from_bytes(body));
            if let Err(e) = oracle::compare(&w) {
                panic!("{e}");
            }
        }
        1 => {
            let Ok(np) = serde_json::from_slice::<ApiNetworkPolicy>(body) else {
                return;
            };
            let (_, parsed) = network_policy_of(&np);
            let mut w = oracle::world(&mut Gen::seeded(7));
            if let Some(mut p) = parsed {
                p.namespace = "x".into();
                w.policies.push(p);
            }
            if let Err(e) = oracle::compare(&w) {
                panic!("{e}");
            }
        }
        3 => {
            let Ok(o) = serde_json::from_slice::<DynamicObject>(body) else {
                return;
            };
            let (_, parsed) = cluster_policy_of(&o);
            let mut w = oracle::world(&mut Gen::seeded(7));
            w.cluster_policies.extend(parsed);
            if let Err(e) = oracle::compare(&w) {
                panic!("{e}");
            }
        }
        _ => {
            let w = oracle::world(&mut Gen::seeded(11));
            let policy = Compiler::new(0).compile(&w);
            let cache = VerdictCache::new(1024, 5);
            let mut memo = Memo::default();
            let mut buf = vec![0u8; 10];
            buf.extend_from_slice(body);
            for (in_port, verdict) in [
                (1, Verdict::Forward(2)),
                (1, Verdict::Forward(HOST_PORT)),
                (HOST_PORT, Verdict::Forward(1)),
                (u32::MAX, Verdict::Forward(1)),
                (1, Verdict::Encap(0)),
            ] {
                let _ = enforce(&buf, in_port, verdict, &policy, &cache, 1, &mut memo);
            }
        }
    }
});
