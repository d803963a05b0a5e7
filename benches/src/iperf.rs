//! iperf3 runs between two network namespaces, read from its JSON output.

use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use switchd_e2e::Netns;

/// An iperf3 server for exactly one test, in `ns`.
fn server(ns: &Netns) -> Child {
    let child = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "iperf3", "-s", "-1", "-p", "5301",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn iperf3 server");
    std::thread::sleep(Duration::from_millis(200));
    child
}

fn client(ns: &Netns, addr: IpAddr, extra: &[&str], seconds: u32) -> Value {
    let secs = seconds.to_string();
    let addr = addr.to_string();
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "iperf3", "-c", &addr, "-p", "5301", "-J", "-t", &secs,
        ])
        .args(extra)
        .output()
        .expect("run iperf3 client");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 output ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn finish(mut server: Child) {
    // SAFETY: signalling the iperf3 server this program started, by its PID.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let _ = server.wait();
}

/// (Gbit/s received, segments the sender retransmitted); either family.
pub fn iperf_tcp(
    from: &Netns,
    to: &Netns,
    addr: impl Into<IpAddr>,
    streams: usize,
    seconds: u32,
) -> (f64, f64) {
    let server = server(to);
    let v = client(from, addr.into(), &["-P", &streams.to_string()], seconds);
    finish(server);
    let gbps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no TCP result: {}", v["error"]))
        / 1e9;
    let retransmits = v["end"]["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0);
    (gbps, retransmits)
}

/// Received packets per second (thousands) with `len`-byte UDP payloads, unlimited rate.
pub fn iperf_udp(
    from: &Netns,
    to: &Netns,
    addr: impl Into<IpAddr>,
    len: usize,
    seconds: u32,
) -> f64 {
    let server = server(to);
    let v = client(
        from,
        addr.into(),
        &["-u", "-b", "0", "-l", &len.to_string()],
        seconds,
    );
    finish(server);
    let sum = &v["end"]["sum"];
    let (packets, lost, secs) = (
        sum["packets"].as_f64(),
        sum["lost_packets"].as_f64(),
        sum["seconds"].as_f64(),
    );
    match (packets, lost, secs) {
        (Some(p), Some(l), Some(s)) if s > 0.0 => (p - l) / s / 1e3,
        _ => panic!("no UDP result: {}", v),
    }
}
