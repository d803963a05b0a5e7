//! Throughput of the sans-IO forwarding core on in-memory frames: pod→pod on one node,
//! 64-byte and 1500-byte frames, plus the ARP answer path. No syscalls are measured here;
//! see docs/performance.md for what these numbers mean next to the kernel.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use switchd::datapath::frame::VNET_HDR_LEN;
use switchd::datapath::frame::{mac_for_ip, ETH_HDR_LEN};
use switchd::datapath::{
    coalesce, craft, flows, forward, forward_from_tunnel, offload, vxlan, FlowTable, PeerRoute,
    Timeouts, Verdict, HOST_PORT,
};

const BATCH: usize = 64;

/// The translated-flow table every benchmark forwards against: 10,000 Service flows of
/// other pods recorded, as on a busy node, so the plain paths pay the lookup they pay in
/// production (and find nothing).
static FLOWS: std::sync::LazyLock<FlowTable> = std::sync::LazyLock::new(|| {
    let flows = FlowTable::new(262_144, Timeouts::default(), 42);
    for i in 0..10_000u32 {
        let client = Ipv4Addr::new(10, 244, 3, (i % 250) as u8 + 2);
        let endpoint = Ipv4Addr::new(10, 244, 4, (i / 250) as u8 + 2);
        let mut f = craft::ipv4_udp([2; 6], [2; 6], client, endpoint, 10);
        let port = 20_000 + i as u16;
        let l4 = VNET_HDR_LEN + ETH_HDR_LEN + 20;
        f[l4..l4 + 2].copy_from_slice(&port.to_be_bytes());
        flows.track_translated(&flows::parse(&f[VNET_HDR_LEN + ETH_HDR_LEN..]).unwrap(), 0);
    }
    flows
});

/// Port and tunnel MTU of the benchmark tables: 1500-byte frames must be forwarded, not
/// refused as too big (the verdicts are asserted before timing).
const MTU: u32 = 1500;

fn table_with_pods(n: u8) -> switchd::datapath::Table {
    let mut t = craft::demo_table();
    t.mtu = MTU;
    for i in 0..n {
        let ip = Ipv4Addr::new(10, 244, 1, 2 + i);
        t.insert_pod(1 + i as u32, ip, mac_for_ip(ip));
    }
    t
}

fn pod_to_pod(c: &mut Criterion) {
    // Hoisted, as the port task does with its snapshot: one deref per batch.
    let recorded: &FlowTable = &FLOWS;
    let table = table_with_pods(100);
    let (a, b) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 3));
    let mut group = c.benchmark_group("pod_to_pod");
    for frame_len in [64usize, 1500] {
        // Ethernet frame of `frame_len` bytes: headers + UDP payload.
        let payload = frame_len - ETH_HDR_LEN - 28;
        let frame = craft::ipv4_udp(mac_for_ip(a), mac_for_ip(b), a, b, payload);
        let mut reply = [0u8; 256];
        assert_eq!(
            forward(&mut frame.clone(), 1, &table, recorded, 0, &mut reply),
            Verdict::Forward(2)
        );
        let mut frames: Vec<Vec<u8>> = vec![frame; BATCH];
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(format!("{frame_len}B_packets"), |bench| {
            bench.iter(|| {
                for f in frames.iter_mut() {
                    black_box(forward(black_box(f), 1, &table, recorded, 0, &mut reply));
                }
            })
        });
        group.throughput(Throughput::Bytes((BATCH * frame_len) as u64));
        group.bench_function(format!("{frame_len}B_bytes"), |bench| {
            bench.iter(|| {
                for f in frames.iter_mut() {
                    black_box(forward(black_box(f), 1, &table, recorded, 0, &mut reply));
                }
            })
        });
    }
    group.finish();
}

/// Baseline in the same run: copying each frame once, the least any forwarding step that
/// hands the frame on must pay. The core's cost is what it adds on top of this.
fn baseline_copy(c: &mut Criterion) {
    let (a, b) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 3));
    let mut group = c.benchmark_group("baseline_copy");
    for frame_len in [64usize, 1500] {
        let frame = craft::ipv4_udp(
            mac_for_ip(a),
            mac_for_ip(b),
            a,
            b,
            frame_len - ETH_HDR_LEN - 28,
        );
        let frames: Vec<Vec<u8>> = vec![frame; BATCH];
        let mut out = vec![0u8; 2048];
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(format!("{frame_len}B_packets"), |bench| {
            bench.iter(|| {
                for f in frames.iter() {
                    out[..f.len()].copy_from_slice(black_box(f));
                    black_box(&out);
                }
            })
        });
    }
    group.finish();
}

fn arp_answer(c: &mut Criterion) {
    // Hoisted, as the port task does with its snapshot: one deref per batch.
    let recorded: &FlowTable = &FLOWS;
    let table = table_with_pods(100);
    let (a, b) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 3));
    let request = craft::arp_request(mac_for_ip(a), a, b);
    let mut reply = [0u8; 128];
    let mut group = c.benchmark_group("arp");
    group.throughput(Throughput::Elements(1));
    group.bench_function("answer", |bench| {
        bench.iter_batched_ref(
            || request.clone(),
            |f| black_box(forward(f, 1, &table, recorded, 0, &mut reply)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// Cross-node paths: decide + encapsulate (frame for a remote pod, VXLAN header written in
/// place) and decapsulate + decide (datagram from a peer to a local pod).
fn tunnel_paths(c: &mut Criterion) {
    // Hoisted, as the port task does with its snapshot: one deref per batch.
    let recorded: &FlowTable = &FLOWS;
    let mut table = craft::demo_table_with_peer();
    table.mtu = MTU;
    table.tunnel_mtu = MTU;
    let (a, remote) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 7));
    table.insert_pod(1, a, mac_for_ip(a));
    let mut reply = [0u8; 256];
    let mut group = c.benchmark_group("tunnel");
    for frame_len in [64usize, 1500] {
        let payload = frame_len - ETH_HDR_LEN - 28;
        let out = craft::ipv4_udp(mac_for_ip(a), table.router_mac, a, remote, payload);
        assert_eq!(
            forward(&mut out.clone(), 1, &table, recorded, 0, &mut reply),
            Verdict::Encap(0)
        );
        let mut frames: Vec<Vec<u8>> = vec![out; BATCH];
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(format!("encap_{frame_len}B"), |bench| {
            bench.iter(|| {
                for f in frames.iter_mut() {
                    if let Verdict::Encap(_) =
                        forward(black_box(f), 1, &table, recorded, 0, &mut reply)
                    {
                        vxlan::encap_in_place(f, 1);
                    }
                    black_box(&f[vxlan::DATAGRAM_OFFSET..]);
                }
            })
        });
        let inbound = craft::ipv4_udp(table.peers[0].mac, table.router_mac, remote, a, payload);
        assert_eq!(
            forward_from_tunnel(&mut inbound.clone(), 0, &table, recorded, 0),
            Verdict::Forward(1)
        );
        let mut datagrams: Vec<Vec<u8>> = vec![inbound; BATCH];
        for d in datagrams.iter_mut() {
            vxlan::encap_in_place(d, 1);
        }
        group.bench_function(format!("decap_{frame_len}B"), |bench| {
            bench.iter(|| {
                for d in datagrams.iter_mut() {
                    // Restore the header the previous iteration cleared.
                    vxlan::encap_in_place(d, 1);
                    if vxlan::decap_in_place(black_box(d), 1).is_ok() {
                        black_box(forward_from_tunnel(d, 0, &table, recorded, 0));
                    }
                }
            })
        });
    }
    // A 64 KiB TSO super-frame segmented into 1400-byte TCP segments with checksums.
    let payload = vec![0x5au8; 64_000];
    let superframe = craft::tcp4_super_frame(&payload, 1, 1398);
    let hdr = offload::VnetHdr::read(&superframe);
    let mut scratch = vec![0u8; 2 * 65_600];
    group.throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("encap_64KiB_segment", |bench| {
        bench.iter(|| {
            black_box(
                offload::segment_tcp(
                    black_box(&superframe),
                    hdr,
                    &mut scratch,
                    vxlan::VXLAN_HDR_LEN,
                )
                .unwrap(),
            )
        })
    });
    // The receiving side: the same 64 KB as 46 segments merged back into one super-frame
    // (each segment's checksum verified on the way).
    let segs = offload::segment_tcp(&superframe, hdr, &mut scratch, 0).unwrap();
    let frames: Vec<Vec<u8>> = (0..segs.count)
        .map(|i| scratch[i * segs.stride..((i + 1) * segs.stride).min(segs.len)].to_vec())
        .collect();
    let mut coalescer = coalesce::Coalescer::new();
    group.bench_function("decap_64KiB_coalesce", |bench| {
        bench.iter(|| {
            for f in &frames {
                assert!(coalescer.push(black_box(f), 1));
            }
            black_box(coalescer.take().map(|(_, b)| b.len()))
        })
    });
    // Same node: a 64 KiB super-frame is forwarded whole, with its virtio-net header.
    let mut local = craft::tcp4_super_frame(&payload, 1, 1398);
    local[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&table.router_mac);
    // (craft's super-frame goes 10.244.1.2 -> 10.244.2.2; here both are pods of this node.)
    let mut local_table = table_with_pods(1);
    local_table.insert_pod(
        7,
        Ipv4Addr::new(10, 244, 2, 2),
        mac_for_ip(Ipv4Addr::new(10, 244, 2, 2)),
    );
    assert_eq!(
        forward(&mut local.clone(), 1, &local_table, recorded, 0, &mut reply),
        Verdict::Forward(7)
    );
    group.bench_function("local_64KiB_forward", |bench| {
        bench.iter(|| {
            black_box(forward(
                black_box(&mut local),
                1,
                &local_table,
                recorded,
                0,
                &mut reply,
            ))
        })
    });
    group.finish();
}

/// The cost of flow tracking, next to the plain forward in the same run: a pod→pod frame
/// against an empty table and against the loaded one (the lookup every frame between pods
/// pays), a Service packet the node sends back in (recorded), and its reply (found, and
/// sent to the node).
fn translated_flows(c: &mut Criterion) {
    // Hoisted, as the port task does with its snapshot: one deref per batch.
    let recorded: &FlowTable = &FLOWS;
    let table = table_with_pods(100);
    let (a, b) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 3));
    let empty = FlowTable::new(262_144, Timeouts::default(), 42);
    let mut reply = [0u8; 256];
    let mut group = c.benchmark_group("translated_flows");
    group.throughput(Throughput::Elements(BATCH as u64));
    let plain = craft::ipv4_udp(mac_for_ip(a), mac_for_ip(b), a, b, 64 - ETH_HDR_LEN - 28);
    for (name, flows) in [("plain_empty_table", &empty), ("plain_10k_flows", &*FLOWS)] {
        let mut frames = vec![plain.clone(); BATCH];
        assert_eq!(
            forward(&mut frames[0], 1, &table, flows, 0, &mut reply),
            Verdict::Forward(2)
        );
        group.bench_function(name, |bench| {
            bench.iter(|| {
                for f in frames.iter_mut() {
                    black_box(forward(black_box(f), 1, &table, flows, 0, &mut reply));
                }
            })
        });
    }
    // A pod that is itself a Service endpoint sends plain traffic to another pod: the gate
    // lets it through to the lookup, which finds nothing (what endpoints pay).
    let endpoint_flows = FlowTable::new(262_144, Timeouts::default(), 42);
    let client = Ipv4Addr::new(10, 244, 3, 9);
    let svc = craft::ipv4_udp([2; 6], [2; 6], client, b, 10);
    endpoint_flows.track_translated(
        &flows::parse(&svc[VNET_HDR_LEN + ETH_HDR_LEN..]).unwrap(),
        0,
    );
    assert!(endpoint_flows.may_hold_replies_from(u32::from(b)));
    let from_endpoint = craft::ipv4_udp(mac_for_ip(b), mac_for_ip(a), b, a, 64 - ETH_HDR_LEN - 28);
    let mut frames = vec![from_endpoint; BATCH];
    assert_eq!(
        forward(&mut frames[0], 2, &table, &endpoint_flows, 0, &mut reply),
        Verdict::Forward(1)
    );
    group.bench_function("plain_from_an_endpoint", |bench| {
        bench.iter(|| {
            for f in frames.iter_mut() {
                black_box(forward(
                    black_box(f),
                    2,
                    &table,
                    &endpoint_flows,
                    0,
                    &mut reply,
                ));
            }
        })
    });
    // From the node, B's (DNATed) packet to A: recorded, then delivered.
    let inbound = craft::ipv4_udp(table.router_mac, table.router_mac, b, a, 10);
    let mut frames = vec![inbound; BATCH];
    assert_eq!(
        forward(&mut frames[0], HOST_PORT, &table, recorded, 0, &mut reply),
        Verdict::Forward(1)
    );
    group.bench_function("track_from_node", |bench| {
        bench.iter(|| {
            for f in frames.iter_mut() {
                black_box(forward(
                    black_box(f),
                    HOST_PORT,
                    &table,
                    recorded,
                    0,
                    &mut reply,
                ));
            }
        })
    });
    // A's reply: found, and sent to the node instead of to B.
    let mut answer = craft::ipv4_udp(mac_for_ip(a), mac_for_ip(b), a, b, 10);
    let l4 = VNET_HDR_LEN + ETH_HDR_LEN + 20;
    answer[l4..l4 + 4].copy_from_slice(&[0x13, 0x88, 0x0f, 0xa0]); // 5000 -> 4000
    let mut frames = vec![answer; BATCH];
    assert_eq!(
        forward(&mut frames[0], 1, &table, recorded, 0, &mut reply),
        Verdict::Forward(HOST_PORT)
    );
    group.bench_function("reply_to_node", |bench| {
        bench.iter(|| {
            for f in frames.iter_mut() {
                black_box(forward(black_box(f), 1, &table, recorded, 0, &mut reply));
            }
        })
    });
    group.finish();
}

/// A port whose "TAP" is `/dev/null`: writes are real system calls that cost what the
/// kernel's entry and exit cost, without a pod's receive path behind them.
fn null_port(id: u32, ip: Ipv4Addr) -> std::sync::Arc<switchd::port::Port> {
    use std::sync::atomic::AtomicBool;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open("/dev/null")
        .expect("open /dev/null");
    let tap = switchd::port::tap::Tap::from_fd(file.into(), "null").expect("wrap /dev/null");
    std::sync::Arc::new(switchd::port::Port {
        id,
        tap,
        more_queues: Vec::new(),
        owner: switchd::port::PortOwner::Host,
        address: ip,
        address_v6: None,
        mac: mac_for_ip(ip),
        counters: Default::default(),
        alive: AtomicBool::new(true),
        capturing: AtomicBool::new(false),
        capture_lost: Default::default(),
        capture: std::sync::Mutex::new(None),
        limits: Default::default(),
    })
}

/// The worker's per-frame path (`worker::from_port::handle`): counters, capture check, the
/// core's verdict with the flow-table gate, and the write system call, against the bare
/// floor of the same 64 writes to the same descriptor with nothing else.
fn worker_path(c: &mut Criterion) {
    use switchd::worker::from_port::{handle, Buffers};
    let (a, b) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 3));
    let table = table_with_pods(100);
    let flows = FlowTable::new(262_144, Timeouts::default(), 42);
    let mut ports = std::collections::HashMap::default();
    for i in 0..100u8 {
        let ip = Ipv4Addr::new(10, 244, 1, 2 + i);
        ports.insert(1 + u32::from(i), null_port(1 + u32::from(i), ip));
    }
    let snapshot = switchd::snapshot::Snapshot {
        table,
        ports,
        tunnel: None,
        wireguard: None,
        peers: Vec::new(),
        peer_by_addr: Default::default(),
        flows: std::sync::Arc::new(flows),
        health: std::sync::Arc::new(switchd::health::Health::new(None, 1)),
        policy: Default::default(),
        verdicts: std::sync::Arc::new(switchd::datapath::policy::VerdictCache::new(1024, 1)),
    };
    let stats = switchd::stats::Stats::default();
    let from = snapshot.ports[&1].clone();
    let frame = craft::ipv4_udp(mac_for_ip(a), mac_for_ip(b), a, b, 64 - ETH_HDR_LEN - 28);
    let mut bufs = Buffers::new();
    let to = snapshot.ports[&2].clone();
    bufs.frame[..frame.len()].copy_from_slice(&frame);
    handle(&from, frame.len(), &mut bufs, &snapshot, 0, &stats, 0);
    assert_eq!(
        to.counters
            .tx_packets
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the frame was written to pod B's port"
    );
    let mut group = c.benchmark_group("worker");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("pod_to_pod_64B_with_write", |bench| {
        bench.iter(|| {
            for _ in 0..BATCH {
                bufs.frame[..frame.len()].copy_from_slice(&frame);
                handle(&from, frame.len(), &mut bufs, &snapshot, 0, &stats, 0);
            }
        })
    });
    group.bench_function("floor_64_writes", |bench| {
        bench.iter(|| {
            for _ in 0..BATCH {
                bufs.frame[..frame.len()].copy_from_slice(&frame);
                let _ = black_box(to.tap.write(&bufs.frame[..frame.len()]));
            }
        })
    });
    group.finish();
}

/// The cross-node paths with 5,000 peers in the table (a 5,000-node cluster) against 3:
/// the peer lookup is a hash per prefix length, so the two should not differ.
fn many_peers(c: &mut Criterion) {
    let recorded: &FlowTable = &FLOWS;
    let (a, remote) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 7));
    let mut group = c.benchmark_group("peers");
    group.throughput(Throughput::Elements(BATCH as u64));
    for peers in [3u32, 5000] {
        let mut table = switchd::datapath::Table::new(
            "10.244.1.0/24".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
            mac_for_ip(Ipv4Addr::new(10, 244, 1, 1)),
            MTU,
        );
        table.tunnel_mtu = MTU;
        table.insert_pod(1, a, mac_for_ip(a));
        // The remote pod's node is the last one inserted, as a late joiner would be.
        for i in 0..peers - 1 {
            let net = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + (i << 8));
            table.insert_peer(PeerRoute {
                pod_cidr: ipnet::Ipv4Net::new(net, 24).unwrap(),
                pod_cidr_v6: None,
                mac: mac_for_ip(net),
            });
        }
        let last = table.insert_peer(PeerRoute {
            pod_cidr: "10.244.2.0/24".parse().unwrap(),
            pod_cidr_v6: None,
            mac: mac_for_ip(Ipv4Addr::new(10, 244, 2, 1)),
        });
        let mut reply = [0u8; 256];
        let out = craft::ipv4_udp(mac_for_ip(a), table.router_mac, a, remote, 22);
        assert_eq!(
            forward(&mut out.clone(), 1, &table, recorded, 0, &mut reply),
            Verdict::Encap(last)
        );
        let mut frames: Vec<Vec<u8>> = vec![out; BATCH];
        group.bench_function(format!("encap_64B_{peers}_peers"), |bench| {
            bench.iter(|| {
                for f in frames.iter_mut() {
                    black_box(forward(black_box(f), 1, &table, recorded, 0, &mut reply));
                }
            })
        });
        let inbound = craft::ipv4_udp(table.peers[last].mac, table.router_mac, remote, a, 22);
        assert_eq!(
            forward_from_tunnel(&mut inbound.clone(), last, &table, recorded, 0),
            Verdict::Forward(1)
        );
        let mut frames: Vec<Vec<u8>> = vec![inbound; BATCH];
        group.bench_function(format!("decap_64B_{peers}_peers"), |bench| {
            bench.iter(|| {
                for f in frames.iter_mut() {
                    black_box(forward_from_tunnel(black_box(f), last, &table, recorded, 0));
                }
            })
        });
    }
    group.finish();
}

/// The IPv6 paths beside their IPv4 twins (the `pod_to_pod` and `tunnel` groups, same run):
/// a 64-byte frame switched on the node, encapsulated to a peer, decapsulated from one,
/// and a Neighbor Solicitation answered. The table is dual-stack with 100 pods.
fn ipv6_paths(c: &mut Criterion) {
    use std::net::Ipv6Addr;
    let recorded: &FlowTable = &FLOWS;
    let mut table = craft::demo_table_dual_stack_with_peer();
    table.mtu = MTU;
    table.tunnel_mtu = MTU;
    for i in 0..100u8 {
        let ip = Ipv4Addr::new(10, 244, 1, 2 + i);
        table.insert_pod(1 + u32::from(i), ip, mac_for_ip(ip));
        let ip6 = Ipv6Addr::new(0xfd10, 0x244, 1, 0, 0, 0, 0, 2 + u16::from(i));
        table.insert_pod_v6(1 + u32::from(i), ip6, mac_for_ip(ip));
    }
    let (a, b) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 3));
    let a6: Ipv6Addr = "fd10:244:1::2".parse().unwrap();
    let b6: Ipv6Addr = "fd10:244:1::3".parse().unwrap();
    let remote6: Ipv6Addr = "fd10:244:2::7".parse().unwrap();
    let payload = 64 - ETH_HDR_LEN - 48;
    let mut reply = [0u8; 256];
    let mut group = c.benchmark_group("ipv6");
    group.throughput(Throughput::Elements(BATCH as u64));

    let local = craft::ipv6_udp(mac_for_ip(a), mac_for_ip(b), a6, b6, payload);
    assert_eq!(
        forward(&mut local.clone(), 1, &table, recorded, 0, &mut reply),
        Verdict::Forward(2)
    );
    let mut frames: Vec<Vec<u8>> = vec![local; BATCH];
    group.bench_function("pod_to_pod_64B", |bench| {
        bench.iter(|| {
            for f in frames.iter_mut() {
                black_box(forward(black_box(f), 1, &table, recorded, 0, &mut reply));
            }
        })
    });

    let out = craft::ipv6_udp(mac_for_ip(a), table.router_mac, a6, remote6, payload);
    assert_eq!(
        forward(&mut out.clone(), 1, &table, recorded, 0, &mut reply),
        Verdict::Encap(0)
    );
    let mut frames: Vec<Vec<u8>> = vec![out; BATCH];
    group.bench_function("encap_64B", |bench| {
        bench.iter(|| {
            for f in frames.iter_mut() {
                if let Verdict::Encap(_) = forward(black_box(f), 1, &table, recorded, 0, &mut reply)
                {
                    vxlan::encap_in_place(f, 1);
                }
                black_box(&f[vxlan::DATAGRAM_OFFSET..]);
            }
        })
    });

    let inbound = craft::ipv6_udp(table.peers[0].mac, table.router_mac, remote6, a6, payload);
    assert_eq!(
        forward_from_tunnel(&mut inbound.clone(), 0, &table, recorded, 0),
        Verdict::Forward(1)
    );
    let mut datagrams: Vec<Vec<u8>> = vec![inbound; BATCH];
    for d in datagrams.iter_mut() {
        vxlan::encap_in_place(d, 1);
    }
    group.bench_function("decap_64B", |bench| {
        bench.iter(|| {
            for d in datagrams.iter_mut() {
                vxlan::encap_in_place(d, 1);
                if vxlan::decap_in_place(black_box(d), 1).is_ok() {
                    black_box(forward_from_tunnel(d, 0, &table, recorded, 0));
                }
            }
        })
    });

    let solicitation = craft::neighbor_solicitation(mac_for_ip(a), a6, b6);
    assert!(matches!(
        forward(
            &mut solicitation.clone(),
            1,
            &table,
            recorded,
            0,
            &mut reply
        ),
        Verdict::Reply(_)
    ));
    group.throughput(Throughput::Elements(1));
    group.bench_function("ndp_answer", |bench| {
        let mut f = solicitation.clone();
        bench.iter(|| {
            black_box(forward(
                black_box(&mut f),
                1,
                &table,
                recorded,
                0,
                &mut reply,
            ))
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    worker_path,
    pod_to_pod,
    ipv6_paths,
    baseline_copy,
    tunnel_paths,
    arp_answer,
    translated_flows,
    many_peers
);
criterion_main!(benches);
