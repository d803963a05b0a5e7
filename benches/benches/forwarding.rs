//! Throughput of the sans-IO forwarding core on in-memory frames: pod→pod on one node,
//! 64-byte and 1500-byte frames, plus the ARP answer path. No syscalls are measured here;
//! see docs/performance.md for what these numbers mean next to the kernel.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use switchd::datapath::frame::{mac_for_ip, ETH_HDR_LEN};
use switchd::datapath::{craft, forward, Verdict};

const BATCH: usize = 64;

fn table_with_pods(n: u8) -> switchd::datapath::Table {
    let mut t = craft::demo_table();
    for i in 0..n {
        let ip = Ipv4Addr::new(10, 244, 1, 2 + i);
        t.insert_pod(1 + i as u32, ip, mac_for_ip(ip));
    }
    t
}

fn pod_to_pod(c: &mut Criterion) {
    let table = table_with_pods(100);
    let (a, b) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 3));
    let mut group = c.benchmark_group("pod_to_pod");
    for frame_len in [64usize, 1500] {
        // Ethernet frame of `frame_len` bytes: headers + UDP payload.
        let payload = frame_len - ETH_HDR_LEN - 28;
        let frame = craft::ipv4_udp(mac_for_ip(a), mac_for_ip(b), a, b, payload);
        let mut frames: Vec<Vec<u8>> = vec![frame; BATCH];
        let mut reply = [0u8; 128];
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(format!("{frame_len}B_packets"), |bench| {
            bench.iter(|| {
                for f in frames.iter_mut() {
                    let v = forward(black_box(f), 1, &table, &mut reply);
                    debug_assert_eq!(v, Verdict::Forward(2));
                    black_box(v);
                }
            })
        });
        group.throughput(Throughput::Bytes((BATCH * frame_len) as u64));
        group.bench_function(format!("{frame_len}B_bytes"), |bench| {
            bench.iter(|| {
                for f in frames.iter_mut() {
                    black_box(forward(black_box(f), 1, &table, &mut reply));
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
    let table = table_with_pods(100);
    let (a, b) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 3));
    let request = craft::arp_request(mac_for_ip(a), a, b);
    let mut reply = [0u8; 128];
    let mut group = c.benchmark_group("arp");
    group.throughput(Throughput::Elements(1));
    group.bench_function("answer", |bench| {
        bench.iter_batched_ref(
            || request.clone(),
            |f| black_box(forward(f, 1, &table, &mut reply)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, pod_to_pod, baseline_copy, arp_answer);
criterion_main!(benches);
