//! `switchctl trace`, the shell: names the probe's port, runs the datapath's trace core
//! ([`crate::datapath::trace`]) against the live snapshot, and says each step in words
//! with the names of the ports and peers it found.

use switchd_proto::{ErrorKind, ErrorReply, TraceInfo, TraceRequest, TraceStep};

use crate::datapath::frame::format_mac;
use crate::datapath::trace::{self, Probe, Step};
use crate::datapath::{PortId, Verdict, HOST_PORT};
use crate::snapshot::Snapshot;
use crate::switch::Switch;

/// Trace the packet `req` describes through the live table.
pub fn run(sw: &Switch, req: &TraceRequest) -> Result<TraceInfo, ErrorReply> {
    let port = sw.find_port(&req.from)?;
    let protocol = match req.protocol.as_str() {
        "icmp" => 1,
        "tcp" => 6,
        "udp" => 17,
        other => {
            return Err(ErrorReply::new(
                ErrorKind::BadRequest,
                format!("unknown protocol {other:?}: use icmp, tcp or udp"),
            ))
        }
    };
    let snap = sw.snapshot();
    let src = req.src.unwrap_or(port.address);
    let probe = Probe {
        in_port: port.id,
        src_mac: port.mac,
        src,
        dst: req.dst,
        protocol,
        dport: req.port,
        ip_len: req.size as usize,
    };
    let t = trace::trace(&snap.table, &snap.flows, &probe, crate::port::now_secs());
    let ip_len = t.frame.len() - crate::datapath::frame::VNET_HDR_LEN - 14;
    let mut steps = vec![TraceStep {
        step: "packet".into(),
        result: format!(
            "{} {src}{} > {}{} ({ip_len} bytes) entering from {}",
            req.protocol,
            if protocol == 1 { "" } else { ":40000" },
            req.dst,
            if protocol == 1 {
                String::new()
            } else {
                format!(":{}", req.port)
            },
            port.label()
        ),
    }];
    steps.extend(t.steps.iter().map(|s| say(s, &probe, &snap)));
    let mut verdict = t.verdict;
    if let Some((decision, step)) = policy_step(&snap, &probe, verdict) {
        steps.push(step);
        if !decision.allowed {
            verdict = Verdict::Drop(crate::datapath::DropReason::PolicyDenied);
        }
    }
    let (verdict, to, reason) = match verdict {
        Verdict::Forward(p) => ("forward", Some(port_name(&snap, p)), None),
        Verdict::Encap(n) => ("encap", Some(peer_name(&snap, n)), None),
        Verdict::Reply(_) => ("reply", Some(port.label()), None),
        Verdict::Reject { reason, .. } => ("reject", Some(port.label()), Some(reason)),
        Verdict::Drop(reason) => ("drop", None, Some(reason)),
    };
    if let Verdict::Encap(n) = t.verdict {
        if let (Some(tunnel), Some(peer)) = (&snap.tunnel, snap.peers.get(n)) {
            steps.push(TraceStep {
                step: "encapsulate".into(),
                result: format!(
                    "VXLAN VNI {} from {} to {} ({} bytes on the underlay); inner MACs {} > {}",
                    tunnel.vni,
                    tunnel.local,
                    peer.peer.addr,
                    ip_len
                        + crate::config::tunnel_overhead(Some(tunnel.local.ip()), false) as usize,
                    format_mac(t.frame[18..24].try_into().unwrap()),
                    format_mac(t.frame[12..18].try_into().unwrap()),
                ),
            });
        }
    }
    if let Verdict::Reject { .. } = t.verdict {
        steps.push(TraceStep {
            step: "answer".into(),
            result: format!(
                "ICMP fragmentation needed (next-hop MTU {}) back to the sender",
                snap.table.tunnel_mtu
            ),
        });
    }
    Ok(TraceInfo {
        steps,
        verdict: verdict.into(),
        to,
        reason: reason.map(|r| r.as_str().to_string()),
    })
}

/// What the node's NetworkPolicy says of the probe, when the core would deliver it and a
/// policy concerns either end: the rule that admits it, or the default deny and the
/// policies behind it. Classified afresh (the verdict cache is neither read nor written).
fn policy_step(
    snap: &Snapshot,
    probe: &Probe,
    verdict: Verdict,
) -> Option<(crate::datapath::policy::Decision, TraceStep)> {
    use crate::datapath::policy::{classify, ip_key, Tuple};
    let policy = &*snap.policy;
    let (to_local_pod, to_node) = match verdict {
        Verdict::Forward(HOST_PORT) => (false, true),
        Verdict::Forward(_) => (true, false),
        Verdict::Encap(_) => (false, false),
        _ => return None,
    };
    let t = Tuple {
        src: ip_key(probe.src.into()),
        dst: ip_key(probe.dst.into()),
        proto: probe.protocol,
        sport: if probe.protocol == 1 { 0 } else { 40000 },
        dport: Some(if probe.protocol == 1 { 0 } else { probe.dport }),
        from_node: probe.in_port == HOST_PORT,
        to_local_pod,
        to_node,
    };
    if !crate::datapath::policy::classify::concerns(policy, &t) {
        return None;
    }
    let d = classify(policy, &t);
    Some((
        d,
        TraceStep {
            step: "network policy".into(),
            result: policy.explain(&d),
        },
    ))
}

fn port_name(snap: &Snapshot, id: PortId) -> String {
    match snap.ports.get(&id) {
        Some(p) => p.label(),
        None if id == HOST_PORT => crate::config::HOST_PORT_NAME.into(),
        None => format!("port {id} (gone)"),
    }
}

fn peer_name(snap: &Snapshot, n: usize) -> String {
    match snap.peers.get(n) {
        Some(p) => format!("peer {} at {}", p.peer.name, p.peer.addr),
        None => format!("peer #{n} (gone)"),
    }
}

fn say(step: &Step, probe: &Probe, snap: &Snapshot) -> TraceStep {
    let table = &snap.table;
    let (name, result) = match step {
        Step::Neighbour { target, answer } => (
            "neighbour",
            match answer {
                Ok(mac) if *mac == table.router_mac && *target != table.gateway => format!(
                    "who-has {target}: the switch answers with the router MAC {} (routed)",
                    format_mac(*mac)
                ),
                Ok(mac) => format!(
                    "who-has {target}: the switch answers {}{}",
                    format_mac(*mac),
                    match table.lookup(target.octets()) {
                        Some(ep) => format!(", {}", port_name(snap, ep.port)),
                        None => String::new(),
                    }
                ),
                Err(reason) => format!(
                    "who-has {target}: no answer ({}); the sender cannot resolve it, traced as if it had",
                    reason.as_str()
                ),
            },
        ),
        Step::PortMtu { ip_len, mtu } => (
            "port mtu",
            if *ip_len > *mtu as usize {
                format!("{ip_len} bytes exceed the port MTU {mtu} (too_big)")
            } else {
                format!("{ip_len} bytes within the port MTU {mtu}")
            },
        ),
        Step::SourceCheck { src, allowed } => (
            "anti-spoof",
            match allowed {
                None => format!("{src}: any source may enter from the node's port"),
                Some(a) if a == src => format!("{src} is the port's own address"),
                Some(a) => format!("{src} is not the port's address {a} (spoofed_source)"),
            },
        ),
        Step::Multicast => (
            "multicast",
            format!("{} is multicast or broadcast: not flooded", probe.dst),
        ),
        Step::FlowTracking {
            reply_of_translated,
        } => (
            "flow tracking",
            if *reply_of_translated {
                "a reply of a flow the node translated (a Service): back to the node".into()
            } else {
                "not a reply of a flow the node translated".to_string()
            },
        ),
        Step::LocalLookup(Some(ep)) => (
            "local lookup",
            if ep.port == probe.in_port {
                format!("{} is on the port it came from (loop)", probe.dst)
            } else {
                format!(
                    "{} is on this node: {} ({})",
                    probe.dst,
                    port_name(snap, ep.port),
                    format_mac(ep.mac)
                )
            },
        ),
        Step::LocalLookup(None) => ("local lookup", format!("{} is not on this node", probe.dst)),
        Step::PeerLookup(Some(n)) => (
            "peer lookup",
            format!(
                "{} is in the pod CIDR {} of {}",
                probe.dst,
                table
                    .peers
                    .get(*n)
                    .map(|p| p.pod_cidr.to_string())
                    .unwrap_or_default(),
                peer_name(snap, *n),
            ),
        ),
        Step::PeerLookup(None) => (
            "peer lookup",
            format!("{} is in no peer's pod CIDR", probe.dst),
        ),
        Step::TunnelMtu { ip_len, mtu } => (
            "tunnel mtu",
            if *ip_len > *mtu as usize {
                format!("{ip_len} bytes exceed the tunnel MTU {mtu} (too_big)")
            } else {
                format!("{ip_len} bytes within the tunnel MTU {mtu}")
            },
        ),
        Step::Outside {
            in_pod_cidr,
            in_cluster_cidr,
        } => (
            "route",
            if *in_pod_cidr {
                format!(
                    "{} is in this node's pod CIDR {}, but no pod holds it (no_route)",
                    probe.dst, table.pod_cidr
                )
            } else if *in_cluster_cidr {
                format!(
                    "{} is in the cluster CIDR {}, but no node owns it (no_peer)",
                    probe.dst, table.cluster_cidr
                )
            } else if probe.in_port == HOST_PORT {
                format!("{} is not a pod address (no_route)", probe.dst)
            } else {
                format!(
                    "{} is outside the pod networks: to the node through {}, whose rules and routes take it on (Services, egress)",
                    probe.dst,
                    crate::config::HOST_PORT_NAME
                )
            },
        ),
    };
    TraceStep {
        step: name.into(),
        result,
    }
}
