//! `switchd`: the per-node userspace switch daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use switchd::config::{Config, Overrides};
use switchd::{control, switch::Switch};
use tokio::signal::unix::{signal, SignalKind};

/// Per-node userspace virtual switch for Kubernetes pods.
///
/// Reads its configuration from a TOML file; flags override the file's values.
/// Logging follows RUST_LOG (e.g. RUST_LOG=switchd=debug); the default is info.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = "/etc/switchd/switchd.toml")]
    config: PathBuf,
    /// This node's name (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// This node's pod CIDR, e.g. 10.244.1.0/24.
    #[arg(long)]
    pod_cidr: Option<String>,
    /// The whole cluster's pod CIDR, e.g. 10.244.0.0/16.
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// Control socket path.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Directory for persistent state (address allocations).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Pod interface MTU (default: underlay interface MTU minus 50).
    #[arg(long)]
    mtu: Option<u32>,
    /// Underlay address the VXLAN tunnel binds to.
    #[arg(long)]
    underlay_addr: Option<String>,
    /// VXLAN UDP port (default 8472).
    #[arg(long)]
    tunnel_port: Option<u16>,
    /// VXLAN network identifier (default 1).
    #[arg(long)]
    vni: Option<u32>,
    /// File with `[[peers]]` tables; re-read on SIGHUP and `switchctl reload`.
    #[arg(long)]
    peers_file: Option<PathBuf>,
    /// Address for /metrics, /healthz and /readyz (default 127.0.0.1:9476; "off" disables).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Where the subnet and peers come from: "static" (the config), "etcd" or "kubernetes".
    #[arg(long)]
    membership: Option<String>,
    /// etcd endpoints, comma-separated (e.g. https://10.0.0.5:2379,https://10.0.0.6:2379).
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Option<Vec<String>>,
    /// Masquerade pod traffic leaving the cluster CIDR through the node (default true).
    #[arg(long)]
    masquerade: Option<bool>,
    /// Entries in the table of flows the node translated (default 262144).
    #[arg(long)]
    flow_table_size: Option<u32>,
    /// Log format: "text" (journald-friendly: no colours or timestamps under systemd) or
    /// "json" (one object per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Validate the configuration (and peers file), print a summary and exit.
    #[arg(long)]
    check: bool,
    /// Make this node's WireGuard key in state_dir if it has none, print its public key
    /// (what peers put in `public_key`) and exit. The running daemon uses the same file.
    #[arg(long)]
    keygen: bool,
    /// Replace this node's WireGuard key with a new one (the old one is kept as
    /// wireguard.key.old), print the new public key and exit. Restart switchd to use it:
    /// under systemd's fd store pods keep their links; etcd peers learn the key from the
    /// record the restarted node publishes, static peers need it in their [[peers]].
    #[arg(long, conflicts_with = "keygen")]
    rotate_key: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // journald stamps every line itself and shows no colours.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text if journald => builder.without_time().with_ansi(false).init(),
        // Colours only for a person at a terminal: a log file or a pipe gets plain text
        // (NO_COLOR, https://no-color.org, turns them off at a terminal too).
        LogFormat::Text => builder
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none(),
            )
            .init(),
    }
}

fn main() -> ExitCode {
    // Before any thread exists: take the descriptors a service manager kept for us.
    let inherited = switchd::notify::inherited_fds();
    let args = Args::parse();
    init_logging(args.log_format);
    let overrides = Overrides {
        node_name: args.node_name,
        pod_cidr: args.pod_cidr,
        cluster_cidr: args.cluster_cidr,
        socket: args.socket,
        state_dir: args.state_dir,
        mtu: args.mtu,
        underlay_addr: args.underlay_addr,
        tunnel_port: args.tunnel_port,
        vni: args.vni,
        peers_file: args.peers_file,
        metrics_addr: args.metrics_addr,
        membership: args.membership,
        etcd_endpoints: args.etcd_endpoints,
        masquerade: args.masquerade,
        flow_table_size: args.flow_table_size,
        ..Overrides::default()
    };
    let cfg = match Config::load(&args.config, overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchd: {e:#}");
            return ExitCode::from(2);
        }
    };
    if args.rotate_key || args.keygen {
        use switchd::wireguard::keys;
        let dir = &cfg.state_dir;
        let made = if args.rotate_key {
            keys::rotate(dir).map(|(old, new)| {
                if let Some(old) = old {
                    eprintln!(
                        "switchd: replaced WireGuard key {} (kept as {}); restart switchd to use the new one",
                        switchd::config::format_wireguard_key(&old),
                        dir.join(keys::OLD_KEY_FILE).display()
                    );
                }
                new
            })
        } else {
            keys::load_or_create(dir).map(|(secret, made)| {
                if made {
                    eprintln!(
                        "switchd: made a WireGuard key in {}",
                        keys::key_path(dir).display()
                    );
                }
                keys::public_of(&secret)
            })
        };
        return match made {
            Ok(public) => {
                println!("{}", switchd::config::format_wireguard_key(&public));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchd: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    if args.check {
        let kube = cfg.kubernetes().is_some();
        let pod_cidr = match (cfg.pod_cidr_pending, kube) {
            (false, _) => cfg.pod_cidr.to_string(),
            (true, true) => "(from this node's Node object)".to_string(),
            (true, false) => "(leased from etcd)".to_string(),
        };
        let ipv6 = match cfg.ipv6 {
            None => "ipv6 off".to_string(),
            Some(v6) if v6.derived && kube => format!(
                "pod_cidr_v6 (the Node's IPv6 pod CIDR, inside cluster_cidr_v6 {})",
                v6.cluster_cidr
            ),
            Some(v6) if v6.derived => format!(
                "pod_cidr_v6 (a /64 of cluster_cidr_v6 {}, by the leased subnet)",
                v6.cluster_cidr
            ),
            Some(v6) => format!(
                "pod_cidr_v6 {} cluster_cidr_v6 {}",
                v6.pod_cidr, v6.cluster_cidr
            ),
        };
        println!(
            "config OK: node {} pod_cidr {} cluster_cidr {} {ipv6} underlay {} encryption {} peers {}",
            cfg.node_name,
            pod_cidr,
            cfg.cluster_cidr,
            cfg.underlay_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "none".into()),
            cfg.encryption.as_str(),
            cfg.peers
                .iter()
                .map(|p| match p.pod_cidr_v6 {
                    Some(v6) => format!("{}={}+{v6}", p.name, p.pod_cidr),
                    None => format!("{}={}", p.name, p.pod_cidr),
                })
                .collect::<Vec<_>>()
                .join(",")
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("switchd")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cfg, inherited)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "switchd failed");
            eprintln!("switchd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    mut cfg: Config,
    inherited: std::collections::HashMap<String, std::os::fd::OwnedFd>,
) -> anyhow::Result<()> {
    let socket = cfg.socket.clone();
    let cfg_socket_group = cfg.socket_group.as_ref().map(|(_, gid)| *gid);
    let adopted = inherited.len();
    // The health endpoints come up first: /healthz answers and /readyz says "starting"
    // while ports are re-adopted.
    let slot: switchd::metrics::SwitchSlot = Default::default();
    if let Some(addr) = cfg.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("binding metrics_addr {addr} (set metrics_addr = \"off\" to disable)")
        })?;
        tokio::spawn(switchd::metrics::serve(slot.clone(), listener));
    }
    // The WireGuard key first: the node record published on joining names it.
    switchd::wireguard::keys::load_node_key(&mut cfg)?;
    // etcd mode: lease (or remember) this node's subnet before anything uses it.
    let joined = match cfg.etcd() {
        Some(_) => {
            let joined = switchd::membership::etcd::join(&cfg).await?;
            cfg.assign_pod_cidr(joined.subnet)?;
            Some(joined)
        }
        None => None,
    };
    // Kubernetes mode: this node's pod CIDRs from its Node object.
    let kube_joined = match cfg.kubernetes() {
        Some(_) => {
            let joined = switchd::membership::kube::join(&cfg).await?;
            switchd::membership::kube::assign(&mut cfg, &joined)?;
            Some(joined)
        }
        None => None,
    };
    let sw = Switch::start(cfg, inherited).await?;
    let _ = slot.set(sw.clone());
    if let Some(joined) = joined {
        tokio::spawn(switchd::membership::etcd::run(sw.clone(), joined));
    }
    if let Some(joined) = kube_joined {
        if sw.cfg.policy.enabled {
            tokio::spawn(switchd::policy::watch::run(sw.clone(), joined.client()));
        }
        tokio::spawn(switchd::membership::kube::run(sw.clone(), joined));
    }
    if adopted > 0 {
        tracing::info!(
            descriptors = adopted,
            "adopted port descriptors kept by the service manager"
        );
    }
    let listener = control::bind(&socket, cfg_socket_group)?;
    tokio::spawn(sw.clone().run_heartbeat());
    sw.set_ready();
    if let Err(e) = switchd::notify::notify("READY=1") {
        tracing::warn!(error = %e, "cannot notify systemd of readiness");
    }
    tracing::info!(
        node = %sw.cfg.node_name,
        pod_cidr = %sw.cfg.pod_cidr,
        gateway = %sw.cfg.gateway(),
        mtu = sw.mtu,
        tunnel_mtu = sw.tunnel_mtu,
        underlay = ?sw.cfg.underlay_addr,
        peers = sw.cfg.peers.len(),
        ports = sw.port_count(),
        socket = %socket.display(),
        "switchd ready"
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let server = tokio::spawn(control::serve(sw.clone(), listener));
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down; pod interfaces stay up and are re-adopted on start"); break }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down; pod interfaces stay up and are re-adopted on start"); break }
            _ = hup.recv() => match sw.reload_peers() {
                Ok(n) => tracing::info!(peers = n, "SIGHUP: peers reloaded"),
                Err(e) => tracing::error!(error = %e.message, "SIGHUP: reload failed; the previous peers stay in force"),
            },
        }
    }
    server.abort();
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
