//! NetworkPolicy on the worker's side: the core's verdict through
//! [`datapath::policy::enforce`], the per-policy counters, and for a denied packet the drop
//! (explained to `switchctl monitor`) and the denied-flow log.

use std::sync::atomic::Ordering::Relaxed;

use crate::datapath::frame::VNET_HDR_LEN;
use crate::datapath::policy::{self, classify, ip_of, Because, Decision, Direction, Policy, Tuple};
use crate::datapath::{DropReason, PortId, Verdict};
use crate::monitor::Source;
use crate::snapshot::Snapshot;
use crate::stats::Stats;

std::thread_local! {
    /// This worker's [`policy::Memo`]: each datapath worker is its own thread.
    static MEMO: std::cell::Cell<policy::Memo> = const { std::cell::Cell::new(policy::Memo::EMPTY) };
}

/// The verdict to carry out, or `None` when the policy dropped the frame (already counted).
#[inline]
pub fn police(
    buf: &[u8],
    in_port: PortId,
    verdict: Verdict,
    snapshot: &Snapshot,
    now: u32,
    stats: &Stats,
    source: Source,
) -> Option<Verdict> {
    let pol = &*snapshot.policy;
    if pol.is_empty() {
        return Some(verdict);
    }
    let mut memo = MEMO.get();
    let (v, judged) = policy::enforce(
        buf,
        in_port,
        verdict,
        pol,
        &snapshot.verdicts,
        now,
        &mut memo,
    );
    MEMO.set(memo);
    let Some((t, p)) = judged else {
        return Some(v);
    };
    if let Some(d) = &p.decided {
        pol.count(d);
    }
    if p.allowed {
        return Some(v);
    }
    denied(buf, &t, p.decided, pol, stats, source, now);
    None
}

#[cold]
#[inline(never)]
fn denied(
    buf: &[u8],
    t: &Tuple,
    decided: Option<Decision>,
    pol: &Policy,
    stats: &Stats,
    source: Source,
    now: u32,
) {
    // A cached denial carries no decision; classify again for the explanation (only
    // while somebody listens).
    let why = || {
        let d = decided.unwrap_or_else(|| classify(pol, t));
        Some(pol.explain(&d))
    };
    stats.drop_frame_why(DropReason::PolicyDenied, source, &buf[VNET_HDR_LEN..], why);
    if let Some(d) = decided {
        log_denied(pol, t, &d, now);
    }
}

/// One structured line per denied flow (its first packet, and the first after a policy
/// change), for pods in namespaces annotated `switchd.dev/log-denied=true`, at most
/// `policy.denied_log_rate` lines a second.
fn log_denied(pol: &Policy, t: &Tuple, d: &Decision, now: u32) {
    let (direction, pod, policies, rule) = match d.because {
        Because::DefaultDeny { direction, pod } => (
            direction,
            pod,
            pol.names(pol.isolating(pod, direction)),
            String::new(),
        ),
        Because::Denied { rule, pod } => {
            let direction = if pod == t.src {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            let policy = pol.policy_of(rule).map(|p| p.name.clone());
            (
                direction,
                pod,
                policy.unwrap_or_default(),
                pol.describe_rule(rule),
            )
        }
        _ => return,
    };
    if !pol.logs_denied(pod) || !pol.denied_log.admit(now) {
        return;
    }
    tracing::warn!(
        target: "switchd::policy::denied",
        direction = direction.as_str(),
        policies = %policies,
        rule = %rule,
        src_pod = pol.pod_name(t.src).unwrap_or("-"),
        dst_pod = pol.pod_name(t.dst).unwrap_or("-"),
        src = %ip_of(t.src),
        dst = %ip_of(t.dst),
        proto = t.proto,
        sport = t.sport,
        dport = t.dport.unwrap_or(0),
        suppressed = pol.denied_log.suppressed.swap(0, Relaxed),
        "flow denied by network policy"
    );
}
