//! `switchctl trace`'s core: what the datapath would do with one packet, and why.
//!
//! A probe frame is built as the sending side would build it (after resolving its next hop
//! with ARP, which the real [`forward`] answers too) and handed to the real [`forward`]
//! against the live table; the verdict is always that call's. The steps beside it read the
//! same table fields that `forward` reads, in the order it reads them, so an operator sees
//! which one decided. Nothing is sent, and the live flow table is only read: a probe from
//! the host port, whose delivery `forward` would record as a translated flow, is decided
//! against a scratch flow table.

use std::net::Ipv4Addr;

use super::arp;
use super::flows::{FlowTable, Timeouts};
use super::forward::{forward, Verdict};
use super::frame::{ETH_HDR_LEN, VNET_HDR_LEN};
use super::table::{Endpoint, PortId, Table, HOST_PORT};
use super::{craft, icmp, DropReason};

/// The packet to trace.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub in_port: PortId,
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// IP protocol number: 1 (ICMP echo), 6 (TCP SYN), 17 (UDP).
    pub protocol: u8,
    pub dport: u16,
    /// Total IP length; smaller than the headers means the headers alone.
    pub ip_len: usize,
}

/// One thing the datapath looks at on the probe's way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The sender's ARP for its next hop (`target`), as the switch answers it.
    Neighbour {
        target: Ipv4Addr,
        answer: Result<[u8; 6], DropReason>,
    },
    /// The probe frame's IP length against the port MTU (no segmentation offload).
    PortMtu { ip_len: usize, mtu: u32 },
    /// The source address against the one the port may use (`None`: any, the host port).
    SourceCheck {
        src: Ipv4Addr,
        allowed: Option<Ipv4Addr>,
    },
    /// Multicast and broadcast are not flooded.
    Multicast,
    /// Is it a reply of a flow the node translated (a Service's), to go back to the node?
    FlowTracking { reply_of_translated: bool },
    /// The destination among the addresses on this node (pods and the gateway).
    LocalLookup(Option<Endpoint>),
    /// The destination among the other nodes' pod CIDRs.
    PeerLookup(Option<usize>),
    /// The IP length against what the tunnel carries.
    TunnelMtu { ip_len: usize, mtu: u32 },
    /// Not a pod address: where the table sends it.
    Outside {
        in_pod_cidr: bool,
        in_cluster_cidr: bool,
    },
}

/// The outcome: the steps, the real verdict, and the frame as `forward` left it.
#[derive(Debug, Clone)]
pub struct Trace {
    pub steps: Vec<Step>,
    pub verdict: Verdict,
    /// virtio-net header + Ethernet frame, MACs rewritten as the verdict needs.
    pub frame: Vec<u8>,
}

/// Trace `probe` through `table` (and `flows` for replies of translated flows).
pub fn trace(table: &Table, flows: &FlowTable, probe: &Probe, now: u32) -> Trace {
    let mut steps = Vec::new();
    let mut reply = [0u8; icmp::MAX_REPLY_LEN];

    // The sender resolves the destination itself when it is on its own link (a pod's /24,
    // or the node's on-link route to the cluster CIDR), the gateway otherwise.
    let on_link = probe.in_port == HOST_PORT || table.pod_cidr.contains(&probe.dst);
    let target = if on_link { probe.dst } else { table.gateway };
    let mut arp_frame = craft::arp_request(probe.src_mac, probe.src, target);
    let answer = match forward(&mut arp_frame, probe.in_port, table, flows, now, &mut reply) {
        Verdict::Reply(n) if n >= arp::REPLY_LEN => {
            // The answer's sender hardware address: after the virtio-net header, Ethernet
            // and the ARP fixed part.
            let at = VNET_HDR_LEN + ETH_HDR_LEN + 8;
            Ok(<[u8; 6]>::try_from(&reply[at..at + 6]).unwrap())
        }
        Verdict::Drop(reason) | Verdict::Reject { reason, .. } => Err(reason),
        _ => Err(DropReason::ArpIgnored),
    };
    steps.push(Step::Neighbour { target, answer });
    // Without an answer the sender would not send at all; trace the frame it would send
    // if its neighbour were resolved anyway (a static entry), to the router's MAC.
    let dst_mac = answer.unwrap_or(table.router_mac);

    let mut frame = craft::ipv4_packet(
        probe.src_mac,
        dst_mac,
        probe.src,
        probe.dst,
        probe.protocol,
        probe.dport,
        probe.ip_len,
    );
    let ip_len = frame.len() - VNET_HDR_LEN - ETH_HDR_LEN;
    let scratch;
    let flows = if probe.in_port == HOST_PORT {
        scratch = FlowTable::new(16, Timeouts::default(), 0);
        &scratch
    } else {
        flows
    };
    let verdict = forward(&mut frame, probe.in_port, table, flows, now, &mut reply);

    steps.push(Step::PortMtu {
        ip_len,
        mtu: table.mtu,
    });
    let allowed = table.ports.get(&probe.in_port).and_then(|p| p.allowed_src);
    steps.push(Step::SourceCheck {
        src: probe.src,
        allowed,
    });
    let d = probe.dst.octets();
    if d[0] >= 224 || d == [255; 4] {
        steps.push(Step::Multicast);
        return Trace {
            steps,
            verdict,
            frame,
        };
    }
    if probe.in_port != HOST_PORT
        && table.cluster_cidr.contains(&probe.dst)
        && probe.dst != table.gateway
    {
        let ip = &frame[VNET_HDR_LEN + ETH_HDR_LEN..];
        steps.push(Step::FlowTracking {
            reply_of_translated: flows.is_reply_frame(ip, now),
        });
    }
    let local = table.lookup(d).copied();
    steps.push(Step::LocalLookup(local));
    if local.is_none() {
        let peer = table.lookup_peer(d);
        steps.push(Step::PeerLookup(peer));
        match peer {
            Some(_) => steps.push(Step::TunnelMtu {
                ip_len,
                mtu: table.tunnel_mtu,
            }),
            None => steps.push(Step::Outside {
                in_pod_cidr: table.pod_cidr.contains(&probe.dst),
                in_cluster_cidr: table.cluster_cidr.contains(&probe.dst),
            }),
        }
    }
    Trace {
        steps,
        verdict,
        frame,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::craft::demo_table_with_peer;
    use crate::datapath::frame::mac_for_ip;

    fn probe(table: &Table, from: PortId, src: Ipv4Addr, dst: Ipv4Addr, ip_len: usize) -> Trace {
        let flows = FlowTable::new(64, Timeouts::default(), 1);
        trace(
            table,
            &flows,
            &Probe {
                in_port: from,
                src_mac: mac_for_ip(src),
                src,
                dst,
                protocol: 1,
                dport: 0,
                ip_len,
            },
            100,
        )
    }

    fn table() -> Table {
        let mut t = demo_table_with_peer();
        t.insert_pod(
            1,
            Ipv4Addr::new(10, 244, 1, 2),
            mac_for_ip(Ipv4Addr::new(10, 244, 1, 2)),
        );
        t.insert_pod(
            2,
            Ipv4Addr::new(10, 244, 1, 3),
            mac_for_ip(Ipv4Addr::new(10, 244, 1, 3)),
        );
        t
    }

    #[test]
    fn each_kind_of_destination_gets_the_real_verdict_and_the_step_that_decided() {
        let t = table();
        let me = Ipv4Addr::new(10, 244, 1, 2);
        let local = probe(&t, 1, me, Ipv4Addr::new(10, 244, 1, 3), 84);
        assert_eq!(local.verdict, Verdict::Forward(2));
        assert!(local.steps.contains(&Step::Neighbour {
            target: Ipv4Addr::new(10, 244, 1, 3),
            answer: Ok(mac_for_ip(Ipv4Addr::new(10, 244, 1, 3)))
        }));

        let remote = probe(&t, 1, me, Ipv4Addr::new(10, 244, 2, 9), 84);
        assert_eq!(remote.verdict, Verdict::Encap(0));
        assert!(remote.steps.contains(&Step::PeerLookup(Some(0))));
        assert_eq!(
            &remote.frame[VNET_HDR_LEN..VNET_HDR_LEN + 6],
            &t.peers[0].mac,
            "the frame carries the peer's MAC, as it would cross the tunnel"
        );

        let unknown = probe(&t, 1, me, Ipv4Addr::new(10, 244, 1, 77), 84);
        assert_eq!(unknown.verdict, Verdict::Drop(DropReason::NoRoute));
        assert_eq!(
            unknown.steps[0],
            Step::Neighbour {
                target: Ipv4Addr::new(10, 244, 1, 77),
                answer: Err(DropReason::ArpUnknownTarget)
            }
        );

        let spoofed = probe(
            &t,
            1,
            Ipv4Addr::new(10, 244, 1, 99),
            Ipv4Addr::new(10, 244, 1, 3),
            84,
        );
        assert_eq!(spoofed.verdict, Verdict::Drop(DropReason::SpoofedSource));

        // Pods told MTU 1500 over a tunnel that carries 1450: the tunnel's check decides.
        let mut wide = table();
        wide.mtu = 1500;
        let big = probe(&wide, 1, me, Ipv4Addr::new(10, 244, 2, 9), 1450 + 1);
        assert!(matches!(
            big.verdict,
            Verdict::Reject {
                reason: DropReason::TooBig,
                ..
            }
        ));
        assert!(big.steps.contains(&Step::TunnelMtu {
            ip_len: 1451,
            mtu: 1450
        }));

        let outside = probe(&t, 1, me, Ipv4Addr::new(10, 96, 0, 10), 84);
        assert_eq!(outside.verdict, Verdict::Forward(HOST_PORT));
        assert!(outside.steps.contains(&Step::Outside {
            in_pod_cidr: false,
            in_cluster_cidr: false
        }));
    }

    #[test]
    fn a_probe_from_the_node_records_no_flow() {
        let t = table();
        let flows = FlowTable::new(64, Timeouts::default(), 1);
        // A pod's address as source from the host port: what a Service's DNAT sends.
        let p = Probe {
            in_port: HOST_PORT,
            src_mac: t.router_mac,
            src: Ipv4Addr::new(10, 244, 1, 2),
            dst: Ipv4Addr::new(10, 244, 1, 3),
            protocol: 6,
            dport: 80,
            ip_len: 0,
        };
        assert_eq!(trace(&t, &flows, &p, 100).verdict, Verdict::Forward(2));
        assert!(flows.is_empty(100), "the live flow table is untouched");
    }
}
