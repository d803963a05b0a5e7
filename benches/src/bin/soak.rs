//! Churn soak: pods attached and detached in a loop while two long-lived pods stream
//! TCP between them, then a check that nothing leaked.
//!
//! Cycles run four at a time. Of every ten: seven are ADD then DEL; one is ADD and then
//! the namespace vanishes without a DEL (switchd must notice and release); one is an ADD
//! that fails half-way (the namespace already has an `eth0`: the address is allocated,
//! then the interface cannot be made, and switchd must roll back), followed by the DEL a
//! runtime sends; one is ADD, CHECK, DEL. Afterwards: addresses recorded, ports, links in the
//! node's namespace, our namespaces, switchd's descriptors and RSS against the start,
//! and the stream's bytes and checksum.
//!
//! `cargo run --release -p switchd-benches --bin soak [-- --cycles N | --quick]` (root).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use switchd_benches::measure::rss_kib;
use switchd_e2e::*;

const PARALLEL: usize = 4;

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn links(ns: &Netns) -> usize {
    String::from_utf8_lossy(&ns.exec(&["ip", "-o", "link", "show"]).stdout)
        .lines()
        .count()
}

fn our_namespaces() -> usize {
    let prefix = unique("");
    let prefix = prefix.split('x').next().unwrap().to_string();
    String::from_utf8_lossy(&ip(&["netns", "list"]).stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .count()
}

/// One cycle of kind `i % 10`; returns whether it went as that kind should.
fn cycle(node: &Node, i: usize) -> Result<(), String> {
    let pod = Netns::new("sk");
    match i % 10 {
        7 => {
            let r = node.cni("ADD", &pod);
            if !r.ok() {
                return Err(format!("ADD: {:?}", r.json));
            }
            drop(pod); // the namespace vanishes; no DEL ever comes
            Ok(())
        }
        8 => {
            pod.exec(&[
                "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "x0",
            ]);
            let r = node.cni("ADD", &pod);
            if r.ok() {
                return Err("an ADD into a namespace that has eth0 succeeded".into());
            }
            let d = node.cni("DEL", &pod);
            if !d.ok() {
                return Err(format!("DEL after a failed ADD: {:?}", d.json));
            }
            Ok(())
        }
        k => {
            let r = node.cni("ADD", &pod);
            if !r.ok() {
                return Err(format!("ADD: {:?}", r.json));
            }
            if k == 9 {
                let c = node.cni("CHECK", &pod);
                if !c.ok() {
                    return Err(format!("CHECK: {:?}", c.json));
                }
            }
            let d = node.cni("DEL", &pod);
            if !d.ok() {
                return Err(format!("DEL: {:?}", d.json));
            }
            Ok(())
        }
    }
}

fn main() {
    let mut cycles = 2000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => cycles = 200,
            "--cycles" => {
                cycles = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--cycles N")
            }
            other => panic!("unknown argument {other:?}; use --quick or --cycles N"),
        }
    }
    let mut node = Node::start("10.244.1.0/24");
    node.env.push(("RUST_LOG".into(), "switchd=info".into()));
    node.restart(); // at info level: debug would log every frame of churn
    let (a, b) = (Netns::new("sa"), Netns::new("sb"));
    node.add_pod(&a);
    let addr_b = node.add_pod(&b);
    assert!(a.ping(addr_b));
    let pid = node.pid();
    // Settle, then the starting band.
    std::thread::sleep(Duration::from_millis(500));
    let (fd0, rss0, links0, ns0) = (fds(pid), rss_kib(pid), links(&node.ns), our_namespaces());

    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let t = Instant::now();
    let (stream, failures) = std::thread::scope(|s| {
        let running = stop.clone();
        let stream = s.spawn(|| {
            tcp_transfer_while(&a, &b, addr_b, move |_| !running.load(Ordering::Relaxed))
        });
        let mut failures = Vec::new();
        let mut peak_fds = 0;
        for round in 0..cycles.div_ceil(PARALLEL) {
            let results: Vec<Result<(), String>> = std::thread::scope(|c| {
                let handles: Vec<_> = (0..PARALLEL)
                    .map(|k| round * PARALLEL + k)
                    .filter(|&i| i < cycles)
                    .map(|i| {
                        let node = &node;
                        c.spawn(move || cycle(node, i))
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            failures.extend(results.into_iter().filter_map(Result::err));
            peak_fds = peak_fds.max(fds(pid));
            if round % 50 == 0 {
                eprintln!(
                    "[{:>6.1}s] {} cycles, switchd fds {}",
                    t.elapsed().as_secs_f64(),
                    round * PARALLEL,
                    fds(pid)
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        (stream.join().unwrap(), (failures, peak_fds))
    });
    let elapsed = t.elapsed();
    let (failures, peak_fds) = failures;
    // Namespaces that vanished are released as switchd notices; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while (node.pod_ports() > 2 || node.ipam_records().len() > 2) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (fd1, rss1, links1, ns1) = (fds(pid), rss_kib(pid), links(&node.ns), our_namespaces());
    let (sent, h_sent, received, h_received, _) = stream;

    println!("switchd churn soak: {cycles} cycles, {PARALLEL} at a time, while pod A streams TCP to pod B\n");
    println!("command: cargo run --release -p switchd-benches --bin soak -- --cycles {cycles}\n");
    println!("| what | start | end |");
    println!("|---|---|---|");
    println!(
        "| addresses recorded (IPAM) | 2 | {} |",
        node.ipam_records().len()
    );
    println!("| pod ports | 2 | {} |", node.pod_ports());
    println!("| links in the node's namespace | {links0} | {links1} |");
    println!("| our network namespaces | {ns0} | {ns1} |");
    println!("| switchd descriptors (peak during the churn) | {fd0} | {fd1} ({peak_fds}) |");
    println!(
        "| switchd RSS, MiB | {:.1} | {:.1} |",
        rss0 / 1024.0,
        rss1 / 1024.0
    );
    println!(
        "| churn time, s (cycles/s) | | {:.1} ({:.0}) |",
        elapsed.as_secs_f64(),
        cycles as f64 / elapsed.as_secs_f64()
    );
    println!(
        "| stream A → B, MB sent / received intact | | {} / {} |",
        sent / 1_000_000,
        if (sent, h_sent) == (received, h_received) {
            "yes"
        } else {
            "NO"
        }
    );
    println!(
        "| cycles that did not go as their kind should | | {} |",
        failures.len()
    );
    for f in failures.iter().take(5) {
        println!("  {f}");
    }

    assert!(failures.is_empty(), "{} cycles failed", failures.len());
    assert_eq!(node.ipam_records().len(), 2, "leaked addresses");
    assert_eq!(node.pod_ports(), 2, "leaked ports");
    assert_eq!(links1, links0, "leaked links in the node's namespace");
    assert_eq!(ns1, ns0, "leaked namespaces");
    assert!(fd1 <= fd0 + 2, "descriptors grew from {fd0} to {fd1}");
    assert!(
        rss1 <= rss0 * 1.25 + 2048.0,
        "RSS grew from {rss0} KiB to {rss1} KiB"
    );
    assert_eq!(
        (sent, h_sent),
        (received, h_received),
        "the long-lived stream was disturbed"
    );
    assert!(a.ping(addr_b), "the long-lived pods still reach each other");
}
