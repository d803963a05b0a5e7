//! The classifier: one packet's tuple in, a verdict and the rule (or default deny) that
//! decided out. [`police`] puts the verdict cache in front of it.

use super::cache::{Entry, VerdictCache};
use super::{ip_key, Direction, IpKey, Judged, Policy, RuleRef};
use crate::datapath::flows::{self, Packet};
use crate::datapath::frame::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_HDR_LEN};
use crate::datapath::ipv6;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// A packet as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tuple {
    pub src: IpKey,
    pub dst: IpKey,
    pub proto: u8,
    /// Source port (TCP, UDP, SCTP; the identifier of an ICMP echo); 0 otherwise.
    pub sport: u16,
    /// Destination port (TCP, UDP, SCTP); `None` on a later IP fragment.
    pub dport: Option<u16>,
    /// The packet arrived from the node (the host port).
    pub from_node: bool,
    /// The packet is to be delivered to a pod of this node (not to the node, nor to a peer).
    pub to_local_pod: bool,
    /// The packet goes to the node (the host port).
    pub to_node: bool,
}

/// Why a packet was allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Because {
    /// Neither end is one of this node's isolated pods in the direction that matters.
    NotIsolated,
    /// This rule admitted it (and the other side, if isolated, admitted it too).
    Rule(RuleRef),
    /// From the node's own address to one of its pods: always allowed.
    FromNode,
    /// A pod's packet for a Service address: judged after the node's DNAT.
    Deferred,
    /// The reply direction of an allowed flow.
    Reply,
    /// Isolated in `direction` and no rule admits it: the policies isolating the pod at
    /// `pod` (its address).
    DefaultDeny { direction: Direction, pod: IpKey },
    /// A cluster policy's `Deny` rule, protecting the pod at `pod` (the source for an
    /// egress rule, the destination for an ingress one).
    Denied { rule: RuleRef, pod: IpKey },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub because: Because,
    /// The egress rule, when the source's egress was checked and admitted it; the
    /// ingress rule goes in `because` (or the egress one when ingress was not checked).
    pub egress_rule: Option<RuleRef>,
}

impl Decision {
    fn allow(because: Because) -> Decision {
        Decision {
            allowed: true,
            because,
            egress_rule: None,
        }
    }
}

/// Decide `t` against `policy` as the first packet of a new flow: the egress policy of its
/// source and the ingress policy of its destination, where this node holds them, each
/// judged tier by tier ([`Guarded::judge`](super::Guarded::judge)).
pub fn classify(policy: &Policy, t: &Tuple) -> Decision {
    let mut egress_rule = None;
    if let Some(g) = policy.guarded.get(&t.src) {
        if g.judges(Direction::Egress) {
            if !(t.to_node && policy.is_deferred(t.dst)) {
                match g.judge(&policy.rules, Direction::Egress, t.dst, t.proto, t.dport) {
                    Judged::Accepted(r) => egress_rule = Some(r),
                    Judged::Undecided => {}
                    Judged::Denied(rule) => {
                        return Decision {
                            allowed: false,
                            because: Because::Denied { rule, pod: t.src },
                            egress_rule: None,
                        }
                    }
                    Judged::DefaultDeny => {
                        return Decision {
                            allowed: false,
                            because: Because::DefaultDeny {
                                direction: Direction::Egress,
                                pod: t.src,
                            },
                            egress_rule: None,
                        }
                    }
                }
            } else if !policy.guarded.contains_key(&t.dst) {
                return Decision::allow(Because::Deferred);
            }
        }
    }
    if t.to_local_pod {
        if let Some(g) = policy.guarded.get(&t.dst) {
            if g.judges(Direction::Ingress) {
                if t.from_node && policy.node_addrs.contains(&t.src) {
                    return Decision {
                        allowed: true,
                        because: Because::FromNode,
                        egress_rule,
                    };
                }
                let judged = g.judge(&policy.rules, Direction::Ingress, t.src, t.proto, t.dport);
                let (allowed, because) = match judged {
                    Judged::Accepted(r) => (true, Because::Rule(r)),
                    Judged::Denied(rule) => (false, Because::Denied { rule, pod: t.dst }),
                    Judged::DefaultDeny => (
                        false,
                        Because::DefaultDeny {
                            direction: Direction::Ingress,
                            pod: t.dst,
                        },
                    ),
                    Judged::Undecided => match egress_rule {
                        Some(r) => (true, Because::Rule(r)),
                        None => (true, Because::NotIsolated),
                    },
                };
                return Decision {
                    allowed,
                    because,
                    egress_rule,
                };
            }
        }
    }
    match egress_rule {
        Some(r) => Decision {
            allowed: true,
            because: Because::Rule(r),
            egress_rule: Some(r),
        },
        None => Decision::allow(Because::NotIsolated),
    }
}

/// A frame's tuple and flow, read from its Ethernet frame (after the virtio-net header).
/// `None` for what policy does not judge: not IP, or a transport header cut short.
pub fn read(frame: &[u8]) -> Option<(Tuple, Packet)> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(ETH_HDR_LEN..)?;
    let (src, dst, packet) = match ethertype {
        ETHERTYPE_IPV4 => {
            if ip.len() < 20 {
                return None;
            }
            let src = u32::from_be_bytes(ip[12..16].try_into().unwrap());
            let dst = u32::from_be_bytes(ip[16..20].try_into().unwrap());
            (
                ip_key(std::net::Ipv4Addr::from(src).into()),
                ip_key(std::net::Ipv4Addr::from(dst).into()),
                flows::parse(ip)?,
            )
        }
        ETHERTYPE_IPV6 => {
            let info = ipv6::parse(ip).ok()?;
            (
                u128::from_be_bytes(info.src),
                u128::from_be_bytes(info.dst),
                flows::parse6(ip, &info)?,
            )
        }
        _ => return None,
    };
    let (proto, sport, dport) = match packet {
        Packet::Flow { key, .. } => (key.proto, key.sport, Some(key.dport)),
        Packet::Fragment(key) => (key.proto, 0, None),
        Packet::IcmpError(_) => (1, 0, Some(0)),
    };
    Some((
        Tuple {
            src,
            dst,
            proto,
            sport,
            dport,
            from_node: false,
            to_local_pod: false,
            to_node: false,
        },
        packet,
    ))
}

/// Is this tuple one the node must judge (or remember) at all? Two hash lookups; false for
/// every packet between pods no policy isolates. A pod isolated in one direction has its
/// flows of the other direction remembered too: their replies come back against its
/// isolated side (an ingress-isolated pod's UDP query to a Service gets its answer from
/// the Service's address, which no ingress rule names).
#[inline]
pub fn concerns(policy: &Policy, t: &Tuple) -> bool {
    policy.guarded.contains_key(&t.src) || (t.to_local_pod && policy.guarded.contains_key(&t.dst))
}

/// The outcome of [`police`]: allowed or not, and whether the classifier ran (a new
/// flow or a re-check after a policy change) with its decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policed {
    pub allowed: bool,
    /// `Some` when the packet was classified rather than answered from the cache.
    pub decided: Option<Decision>,
}

/// Judge one packet with the verdict cache in front of the classifier.
pub fn police(
    policy: &Policy,
    cache: &VerdictCache,
    t: &Tuple,
    packet: &Packet,
    now: u32,
) -> Policed {
    let key = match *packet {
        Packet::Flow { key, .. } => key,
        Packet::Fragment(_) => {
            // A later fragment: no ports, so no flow; judged by its protocol alone.
            let d = classify(policy, t);
            return Policed {
                allowed: d.allowed,
                decided: Some(d),
            };
        }
        Packet::IcmpError(quoted) => {
            // About a packet of a flow: allowed when that flow (either way) is allowed.
            for k in [quoted, quoted.reversed()] {
                let h = cache.hash(&k);
                if let Some(e) = cache.get(h, k.proto, now) {
                    if e.allowed && e.epoch == epoch_bits(policy.epoch) {
                        return Policed {
                            allowed: true,
                            decided: None,
                        };
                    }
                }
            }
            let d = classify(policy, t);
            return Policed {
                allowed: d.allowed,
                decided: Some(d),
            };
        }
    };
    let epoch = epoch_bits(policy.epoch);
    let hash = cache.hash(&key);
    let cached = cache.get(hash, key.proto, now);
    if let Some(e) = cached {
        if e.epoch == epoch {
            return Policed {
                allowed: e.allowed,
                decided: None,
            };
        }
        if e.reply {
            // The reply of a flow allowed under an older policy: still a reply of an
            // allowed flow only if the original direction is allowed now.
            let d = as_reply(classify(policy, &reversed(t)));
            cache.put(
                hash,
                Entry {
                    epoch,
                    allowed: d.allowed,
                    reply: true,
                },
                key.proto,
                now,
            );
            return Policed {
                allowed: d.allowed,
                decided: Some(d),
            };
        }
    }
    // A packet without an entry starts a flow, or belongs to one that began before this
    // node remembered it (its pod was not isolated yet, the entry was evicted, switchd
    // restarted). A TCP SYN is an opening for sure; otherwise the ports say which way the
    // flow most likely goes (see `looks_like_reply`).
    let opening = match *packet {
        Packet::Flow { tcp_flags, .. } => tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0,
        _ => false,
    };
    let seems_reply = cached.is_none()
        && !opening
        && super::has_ports(key.proto)
        && looks_like_reply(key.sport, key.dport);
    if seems_reply && key.proto == 6 {
        // A segment of an established connection coming back from its server: a reply
        // when the connection's own direction is allowed. (Only TCP: an unsolicited UDP
        // datagram from a low port must not pass for an answer.)
        let r = as_reply(classify(policy, &reversed(t)));
        if r.allowed {
            cache.put(
                hash,
                Entry {
                    epoch,
                    allowed: true,
                    reply: true,
                },
                key.proto,
                now,
            );
            return Policed {
                allowed: true,
                decided: Some(r),
            };
        }
    }
    let d = classify(policy, t);
    if d.allowed {
        let original = Entry {
            epoch,
            allowed: true,
            reply: false,
        };
        cache.put(hash, original, key.proto, now);
        // Its replies pass too, unless this packet itself looks like one: then the
        // other direction is the flow's own and is judged on its own packets.
        if !seems_reply {
            let back = key.reversed();
            cache.put(
                cache.hash(&back),
                Entry {
                    reply: true,
                    ..original
                },
                key.proto,
                now,
            );
        }
        return Policed {
            allowed: true,
            decided: Some(d),
        };
    }
    cache.put(
        hash,
        Entry {
            epoch,
            allowed: false,
            reply: false,
        },
        key.proto,
        now,
    );
    Policed {
        allowed: false,
        decided: Some(d),
    }
}

/// Which way does a flow seen mid-way go? A client's port is ephemeral (Linux picks it
/// from 32768–60999 by default) and a server's usually is not: a packet from a
/// non-ephemeral port to an ephemeral one is most likely the server's reply. Two ports of
/// the same kind: the lower one is taken for the server's.
#[inline]
pub fn looks_like_reply(sport: u16, dport: u16) -> bool {
    let ephemeral = |p: u16| (32768..=60999).contains(&p);
    match (ephemeral(sport), ephemeral(dport)) {
        (false, true) => true,
        (true, false) => false,
        _ => sport < dport,
    }
}

fn as_reply(d: Decision) -> Decision {
    if d.allowed {
        Decision::allow(Because::Reply)
    } else {
        d
    }
}

/// The epoch as a cache entry stores it.
#[inline]
pub fn epoch_bits(epoch: u32) -> u32 {
    epoch & ((1 << 20) - 1)
}

/// The tuple of the other direction, as its packets would be seen here. Its destination
/// is a pod of this node whenever this packet's source is one (`classify` only looks at
/// a destination's ingress when `policy.guarded`, which holds only this node's pods, has
/// it).
fn reversed(t: &Tuple) -> Tuple {
    Tuple {
        src: t.dst,
        dst: t.src,
        proto: t.proto,
        sport: t.dport.unwrap_or(0),
        dport: Some(t.sport),
        from_node: t.to_node,
        to_local_pod: true,
        to_node: t.from_node,
    }
}
