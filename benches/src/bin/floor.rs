//! Runs one of the bare floors (`switchd_benches::floor`) under an iperf3 TCP stream, so
//! that a profiler can watch it alone: `perf record -a -g -- target/release/floor cross 5`.
//!
//! Usage (root): `floor same|cross|cross-zerocopy [SECONDS] [STREAMS]`; prints Gbit/s and
//! retransmits, and for `cross-zerocopy` how many sends the kernel copied after all.

use switchd_benches::floor::Floor;
use switchd_benches::iperf::iperf_tcp;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let floor = match args.first().map(String::as_str) {
        Some("same") => Floor::same_node(),
        Some("cross") => Floor::cross_node(),
        Some("cross-zerocopy") => Floor::cross_node_zerocopy(),
        _ => {
            eprintln!("usage: floor same|cross|cross-zerocopy [SECONDS] [STREAMS]");
            std::process::exit(2);
        }
    };
    let number = |i: usize, default: u32| -> u32 {
        args.get(i).map_or(default, |s| {
            s.parse().unwrap_or_else(|_| {
                eprintln!("floor: {s:?} is not a number");
                std::process::exit(2)
            })
        })
    };
    let (seconds, streams) = (number(1, 5), number(2, 1));
    assert!(
        floor.client.ping(floor.server_addr),
        "floor: client cannot reach {}",
        floor.server_addr
    );
    let (gbps, retransmits) = iperf_tcp(
        &floor.client,
        &floor.server,
        floor.server_addr,
        streams as usize,
        seconds,
    );
    println!("{gbps:.2} Gbit/s, {retransmits} segments retransmitted");
    let zc = &floor.zerocopy;
    let completed = zc.completed.load(std::sync::atomic::Ordering::Relaxed);
    if completed > 0 {
        println!(
            "zero-copy sends completed: {completed}, of which the kernel copied anyway: {}",
            zc.copied.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
}
