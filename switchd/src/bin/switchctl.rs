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
    /// Is switchd ready?
    Status,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let request = match args.command {
        Command::Ports => Request::ListPorts,
        Command::Table => Request::ListTable,
        Command::Stats => Request::Stats,
        Command::Peers => Request::ListPeers,
        Command::Reload => Request::Reload,
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
                "{:>4} {:<5} {:<28} {:<8} {:<17} {:<15} {:>10} {:>12} {:>10} {:>12} {:>7}",
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
                "DROPS"
            );
            for p in ports {
                let pod = if p.pod.name.is_empty() {
                    short(&p.container_id)
                } else {
                    format!("{}/{}", p.pod.namespace, p.pod.name)
                };
                let c = p.counters;
                println!(
                    "{:>4} {:<5} {:<28} {:<8} {:<17} {:<15} {:>10} {:>12} {:>10} {:>12} {:>7}",
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
                    c.drops
                );
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
            println!("drops by reason:");
            for (reason, n) in s.drops {
                println!("  {reason:<22} {n}");
            }
        }
        Response::Peers { peers } => {
            println!(
                "{:<16} {:<21} {:<18} {:<17} {:<7} {:>10} {:>12} {:>10} {:>12} {:>7}",
                "PEER",
                "ADDR",
                "POD_CIDR",
                "MAC",
                "SOURCE",
                "RX_PKTS",
                "RX_BYTES",
                "TX_PKTS",
                "TX_BYTES",
                "DROPS"
            );
            for p in peers {
                let c = p.counters;
                println!(
                    "{:<16} {:<21} {:<18} {:<17} {:<7} {:>10} {:>12} {:>10} {:>12} {:>7}",
                    p.name,
                    p.addr,
                    p.pod_cidr,
                    p.mac,
                    p.source,
                    c.rx_packets,
                    c.rx_bytes,
                    c.tx_packets,
                    c.tx_bytes,
                    c.drops
                );
            }
        }
        Response::Reloaded { peers } => println!("reloaded: {peers} peers"),
        Response::Status(s) => println!(
            "{} node={} pod_cidr={} router_mac={} underlay={} mtu={} ports={}",
            s.detail,
            s.node_name,
            s.pod_cidr,
            s.router_mac,
            s.underlay.as_deref().unwrap_or("none"),
            s.mtu,
            s.ports
        ),
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

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}
