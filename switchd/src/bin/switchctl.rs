//! `switchctl`: look inside a running switchd.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use switchd_proto::{self as proto, Request, Response};

/// Operator CLI for switchd: ports, forwarding table, counters.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// switchd's control socket.
    #[arg(
        long,
        global = true,
        default_value = "/run/switchd/switchd.sock",
        env = "SWITCHD_SOCKET"
    )]
    socket: PathBuf,
    /// Print the raw JSON response instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One row per port: pod, interface, MAC, IP, counters.
    Ports,
    /// The forwarding table: address, MAC, port.
    Table,
    /// Totals, drops by reason, attach and detach counts.
    Stats,
    /// Peer nodes: underlay address, pod CIDR, MAC, tunnel counters.
    Peers,
    /// Re-read the peers from the configuration and apply them (like SIGHUP).
    Reload,
    /// Capture the frames crossing a pod's port: a summary per frame, or a pcap file that
    /// tcpdump and Wireshark read (`-w file.pcap`, `-w -` for stdout).
    Capture {
        /// Pod name, namespace/name, container id prefix, or switchd0 for the host port.
        port: String,
        /// Stop after this many frames (0: until interrupted).
        #[arg(short = 'c', long, default_value_t = 0)]
        count: u32,
        /// Write a pcap file instead of printing summaries.
        #[arg(short = 'w', long)]
        write: Option<PathBuf>,
    },
    /// Is switchd ready?
    Status,
    /// What would the switch do with a packet from a pod (or switchd0) to an address, and
    /// why? Decided by the live datapath on a probe frame that is never sent.
    Trace {
        /// Where the packet enters: pod name, namespace/name, container id prefix, switchd0.
        from: String,
        /// Destination address.
        dst: std::net::Ipv4Addr,
        /// icmp (echo request), tcp (SYN) or udp.
        #[arg(long = "proto", default_value = "icmp", value_parser = ["icmp", "tcp", "udp"])]
        protocol: String,
        /// Destination port (tcp, udp).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Total IP length in bytes (default: the smallest packet; 84 for icmp like ping).
        #[arg(long)]
        size: Option<u32>,
        /// Source address (default: the port's own), e.g. to see what spoofing gets.
        #[arg(long)]
        src: Option<std::net::Ipv4Addr>,
    },
    /// Stream one line per dropped frame: time, reason, where it came from, what it was.
    Monitor {
        /// Drop events: the default, and so far the only kind (new-flow events are not
        /// streamed yet).
        #[arg(long, default_value_t = true)]
        drops: bool,
        /// Only frames from this pod (or switchd0), as for capture.
        #[arg(long)]
        pod: Option<String>,
        /// At most this many lines a second (0: no limit); the rest are counted.
        #[arg(long, default_value_t = 100)]
        rate: u32,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Command::Capture { port, count, write } = &args.command {
        return match capture(&args.socket, port, *count, write.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchctl: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Monitor { pod, rate, .. } = &args.command {
        return match monitor(&args.socket, pod.clone(), *rate, args.json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchctl: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let request = match args.command {
        Command::Ports => Request::ListPorts,
        Command::Table => Request::ListTable,
        Command::Stats => Request::Stats,
        Command::Peers => Request::ListPeers,
        Command::Reload => Request::Reload,
        Command::Capture { .. } | Command::Monitor { .. } => unreachable!("handled above"),
        Command::Trace {
            from,
            dst,
            protocol,
            port,
            size,
            src,
        } => Request::Trace(proto::TraceRequest {
            size: size.unwrap_or(if protocol == "icmp" { 84 } else { 0 }),
            from,
            dst,
            protocol,
            port,
            src,
        }),
        Command::Status => Request::Status,
    };
    let response = UnixStream::connect(&args.socket)
        .map_err(|e| {
            format!(
                "cannot reach switchd at {}: {e} (is it running? see `systemctl status switchd`)",
                args.socket.display()
            )
        })
        .and_then(|mut s| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            proto::call(&mut s, &request).map_err(|e| e.to_string())
        });
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&response).expect("response serialises")
        );
        return ExitCode::SUCCESS;
    }
    match response {
        Response::Ports { ports } => {
            println!(
                "{:>4} {:<5} {:<28} {:<8} {:<17} {:<15} {:>10} {:>12} {:>10} {:>12} {:>7} {:>7}",
                "PORT",
                "KIND",
                "POD",
                "IFNAME",
                "MAC",
                "IP",
                "RX_PKTS",
                "RX_BYTES",
                "TX_PKTS",
                "TX_BYTES",
                "DROPS",
                "IGNORED"
            );
            for p in ports {
                let pod = if p.pod.name.is_empty() {
                    short(&p.container_id)
                } else {
                    if p.pod.namespace.is_empty() {
                        p.pod.name.clone()
                    } else {
                        format!("{}/{}", p.pod.namespace, p.pod.name)
                    }
                };
                let c = p.counters;
                println!(
                    "{:>4} {:<5} {:<28} {:<8} {:<17} {:<15} {:>10} {:>12} {:>10} {:>12} {:>7} {:>7}",
                    p.id,
                    p.kind,
                    pod,
                    p.ifname,
                    p.mac,
                    p.address,
                    c.rx_packets,
                    c.rx_bytes,
                    c.tx_packets,
                    c.tx_bytes,
                    c.drops,
                    c.ignored
                );
                if let Some(bw) = p.bandwidth {
                    let rate = |bits: u64| match bits {
                        0 => "unlimited".to_string(),
                        b => format!("{:.1} Mbit/s", b as f64 / 1e6),
                    };
                    println!(
                        "     limits: into the pod {}, out of the pod {}",
                        rate(bw.ingress_rate),
                        rate(bw.egress_rate)
                    );
                }
            }
        }
        Response::Table { entries } => {
            println!(
                "{:<15} {:<17} {:>4} {:<8}",
                "ADDRESS", "MAC", "PORT", "IFNAME"
            );
            for e in entries {
                println!(
                    "{:<15} {:<17} {:>4} {:<8}",
                    e.address, e.mac, e.port, e.port_name
                );
            }
        }
        Response::Stats(s) => {
            let t = s.totals;
            println!(
                "rx {} packets {} bytes, tx {} packets {} bytes, {} drops",
                t.rx_packets, t.rx_bytes, t.tx_packets, t.tx_bytes, t.drops
            );
            println!("attaches {}, detaches {}", s.attaches, s.detaches);
            let f = s.flows;
            println!(
                "translated flows: {} active of {}, {} tracked, {} frames returned to the node, {} evicted",
                f.active, f.capacity, f.tracked, f.returned, f.evicted
            );
            println!("drops by reason:");
            for (reason, n) in s.drops {
                println!("  {reason:<22} {n}");
            }
        }
        Response::Peers { peers } => {
            println!(
                "{:<16} {:<21} {:<18} {:<17} {:<10} {:<9} {:>9} {:>6} {:>5} {:>10} {:>12} {:>10} {:>12} {:>7}",
                "PEER",
                "ADDR",
                "POD_CIDR",
                "MAC",
                "SOURCE",
                "SINCE",
                "RTT",
                "LOSS",
                "PMTU",
                "RX_PKTS",
                "RX_BYTES",
                "TX_PKTS",
                "TX_BYTES",
                "DROPS"
            );
            for p in peers {
                let c = p.counters;
                let h = p.health.clone().unwrap_or_default();
                let dash = || "-".to_string();
                println!(
                    "{:<16} {:<21} {:<18} {:<17} {:<10} {:<9} {:>9} {:>6} {:>5} {:>10} {:>12} {:>10} {:>12} {:>7}",
                    p.name,
                    p.addr,
                    p.pod_cidr,
                    p.mac,
                    p.source,
                    ago(p.since_unix),
                    h.rtt_micros
                        .map(|us| format!("{:.2}ms", us as f64 / 1000.0))
                        .unwrap_or_else(dash),
                    h.loss_ratio
                        .map(|l| format!("{:.0}%", l * 100.0))
                        .unwrap_or_else(dash),
                    h.path_mtu.map(|m| m.to_string()).unwrap_or_else(dash),
                    c.rx_packets,
                    c.rx_bytes,
                    c.tx_packets,
                    c.tx_bytes,
                    c.drops
                );
                if let Some(w) = &p.wireguard {
                    println!(
                        "  wireguard {} endpoint {} handshake {}",
                        w.public_key,
                        w.endpoint,
                        w.handshake_secs_ago
                            .map(|s| format!("{s}s ago"))
                            .unwrap_or_else(|| "none yet".into())
                    );
                }
            }
        }
        Response::Reloaded { peers } => println!("reloaded: {peers} peers"),
        Response::Trace(t) => {
            for (i, step) in t.steps.iter().enumerate() {
                println!("{:>2}. {:<14} {}", i + 1, step.step, step.result);
            }
            let to = t.to.as_deref().unwrap_or("-");
            let reason = t.reason.as_deref().unwrap_or("-");
            match t.verdict.as_str() {
                "reject" => println!("verdict: reject ({reason}); an ICMP error goes back to {to}"),
                "drop" => println!("verdict: drop ({reason})"),
                "reply" => println!("verdict: reply, answered by the switch to {to}"),
                v => println!("verdict: {v} to {to}"),
            }
        }
        Response::Status(s) => {
            let v6 = s
                .pod_cidr_v6
                .as_ref()
                .map(|p| format!(" pod_cidr_v6={p}"))
                .unwrap_or_default();
            println!(
                "{} node={} pod_cidr={}{v6} router_mac={} underlay={} mtu={} ports={}",
                s.detail,
                s.node_name,
                s.pod_cidr,
                s.router_mac,
                s.underlay.as_deref().unwrap_or("none"),
                s.mtu,
                s.ports
            );
            if s.masquerade == "failed" {
                println!("masquerade=failed: {}", s.masquerade_detail);
            } else {
                println!("masquerade={}", s.masquerade);
            }
            match &s.wireguard {
                Some(w) => println!(
                    "encryption=wireguard public_key={} listen={} plain={}",
                    w.public_key, w.listen, w.plain
                ),
                None => println!("encryption=none"),
            }
            if let Some(m) = s.membership {
                // Only etcd has a lease; the Kubernetes watch has an API server.
                let lease = if m.mode == "etcd" {
                    format!(" lease={:x} ttl={}s", m.lease_id, m.lease_ttl)
                } else {
                    String::new()
                };
                println!(
                    "membership={} state={} since={}{lease} peers={} events={} publications={} endpoints={}{}",
                    m.mode,
                    m.state,
                    ago(m.since_unix),
                    m.peers,
                    m.events,
                    m.publications,
                    m.endpoints.join(","),
                    if m.last_error.is_empty() {
                        String::new()
                    } else {
                        format!(" last_error={:?}", m.last_error)
                    }
                );
            }
        }
        Response::Error(e) => {
            eprintln!("switchctl: switchd says ({:?}): {}", e.kind, e.message);
            return ExitCode::FAILURE;
        }
        other => {
            eprintln!("switchctl: unexpected response {other:?}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// "42s ago", "3m ago", "2h ago", "5d ago".
fn ago(unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let s = now.saturating_sub(unix);
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

/// Run a capture: pcap to `write`, or one summary line per frame on stdout.
fn capture(
    socket: &std::path::Path,
    port: &str,
    count: u32,
    write: Option<&std::path::Path>,
) -> Result<(), String> {
    use std::io::Write;
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach switchd at {}: {e}", socket.display()))?;
    proto::write_message(
        &mut stream,
        &Request::Capture {
            port: port.into(),
            count,
        },
    )
    .map_err(|e| e.to_string())?;
    let mut out: Option<Box<dyn Write>> = match write {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::stdout().lock())),
        Some(p) => Some(Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| format!("cannot create {}: {e}", p.display()))?,
        ))),
    };
    if let Some(w) = out.as_mut() {
        // pcap global header: microsecond timestamps, version 2.4, snaplen 256 KiB (super-frames), Ethernet.
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&[0u8; 8]);
        h.extend_from_slice(&262_144u32.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes());
        w.write_all(&h).map_err(|e| e.to_string())?;
    }
    loop {
        match proto::read_message::<_, Response>(&mut stream).map_err(|e| e.to_string())? {
            Response::Frame(f) => match out.as_mut() {
                Some(w) => {
                    let mut rec = Vec::with_capacity(16 + f.data.len());
                    rec.extend_from_slice(&((f.ts_micros / 1_000_000) as u32).to_le_bytes());
                    rec.extend_from_slice(&((f.ts_micros % 1_000_000) as u32).to_le_bytes());
                    rec.extend_from_slice(&(f.data.len() as u32).to_le_bytes());
                    rec.extend_from_slice(&(f.data.len() as u32).to_le_bytes());
                    rec.extend_from_slice(&f.data);
                    w.write_all(&rec).map_err(|e| e.to_string())?;
                }
                None => println!("{}", summary(&f)),
            },
            Response::CaptureDone { frames, lost } => {
                if let Some(mut w) = out {
                    w.flush().map_err(|e| e.to_string())?;
                }
                eprintln!("switchctl: {frames} frames captured");
                if lost > 0 {
                    eprintln!("switchctl: {lost} more crossed the port but were lost: this reader was too slow (write with -w to a file)");
                }
                return Ok(());
            }
            Response::Error(e) => {
                return Err(format!("switchd says ({:?}): {}", e.kind, e.message))
            }
            other => return Err(format!("unexpected response {other:?}")),
        }
    }
}

/// One line per frame, tcpdump -n style: time, direction, length, what it is.
fn summary(f: &switchd_proto::CapturedFrame) -> String {
    let what = switchd::datapath::describe::describe(&f.data);
    format!(
        "{} {} {} bytes {what}",
        clock(f.ts_micros),
        f.direction,
        f.data.len()
    )
}

/// HH:MM:SS.micros (UTC) of a Unix time in microseconds.
fn clock(ts_micros: u64) -> String {
    let secs = ts_micros / 1_000_000;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        ts_micros % 1_000_000
    )
}

/// Print drop events as they come, until interrupted.
fn monitor(
    socket: &std::path::Path,
    port: Option<String>,
    rate: u32,
    json: bool,
) -> Result<(), String> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach switchd at {}: {e}", socket.display()))?;
    proto::write_message(&mut stream, &Request::Monitor { port, rate })
        .map_err(|e| e.to_string())?;
    loop {
        match proto::read_message::<_, Response>(&mut stream).map_err(|e| e.to_string())? {
            Response::Event(e) if json => println!(
                "{}",
                serde_json::to_string(&e).expect("an event serialises")
            ),
            Response::Event(e) => {
                let ends = match (&e.src, &e.dst) {
                    (Some(s), Some(d)) => format!(" {s} > {d}"),
                    _ => String::new(),
                };
                let why = e
                    .why
                    .as_deref()
                    .map(|w| format!(" ({w})"))
                    .unwrap_or_default();
                println!(
                    "{} drop {} from {}: {}{ends}, {} bytes{why}",
                    clock(e.ts_micros),
                    e.reason,
                    e.from,
                    e.kind,
                    e.len
                );
            }
            Response::Suppressed { events } => {
                eprintln!("switchctl: {events} more drops in the last second not shown (over --rate, or read too slowly)")
            }
            Response::Error(e) => {
                return Err(format!("switchd says ({:?}): {}", e.kind, e.message))
            }
            other => return Err(format!("unexpected response {other:?}")),
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
}
