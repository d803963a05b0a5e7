//! `/metrics` (Prometheus/OpenMetrics text), `/healthz` and `/readyz` on a small HTTP
//! listener (default `127.0.0.1:9476`, `metrics_addr = "off"` to disable).
//!
//! Counters live where the datapath already keeps them (atomics on ports, peers and the
//! switch); a scrape copies them into a fresh `prometheus-client` registry and encodes it,
//! so the hot path pays nothing for metrics. The HTTP side is a few lines over tokio: three
//! GET paths need no web framework.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::switch::Switch;

use switchd_proto::Counters;

type Labels = Vec<(String, String)>;

/// How stale the datapath heartbeat may be before `/readyz` says no.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(5);

fn counter_family(
    registry: &mut Registry,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Labels, u64)>,
) {
    let family = Family::<Labels, Counter>::default();
    for (labels, v) in values {
        family.get_or_create(&labels).inc_by(v);
    }
    registry.register(name, help, family);
}

/// Encode every metric as OpenMetrics text.
/// The five counters every port and peer has: name suffix, help text, value.
type CounterField = (&'static str, &'static str, fn(&Counters) -> u64);

/// One counter family per field, named `<prefix>_<field>`, with one labelled sample per
/// entry of `labelled`.
fn counter_families(
    registry: &mut Registry,
    prefix: &str,
    labelled: &[(Labels, &Counters)],
    fields: &[CounterField],
) {
    for &(field, help, value) in fields {
        counter_family(
            registry,
            &format!("{prefix}_{field}"),
            help,
            labelled.iter().map(|(l, c)| (l.clone(), value(c))),
        );
    }
}

/// One float gauge family with a sample per labelled value.
fn gauge_family(
    registry: &mut Registry,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Labels, f64)>,
) {
    let family = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for (labels, v) in values {
        family.get_or_create(&labels).set(v);
    }
    registry.register(name, help, family);
}

/// The health probes' figures per peer; a peer appears once it has a figure.
fn peer_health(r: &mut Registry, peers: &[switchd_proto::PeerInfo], pod_mtu: u32) {
    let labelled = |f: fn(&switchd_proto::PeerHealth) -> Option<f64>| {
        peers
            .iter()
            .filter_map(|p| {
                let v = f(p.health.as_ref()?)?;
                Some((vec![("peer".to_string(), p.name.clone())], v))
            })
            .collect::<Vec<_>>()
    };
    gauge_family(
        r,
        "switchd_peer_rtt_seconds",
        "Smoothed round-trip time of health probes through the tunnel to the peer",
        labelled(|h| h.rtt_micros.map(|us| us as f64 / 1e6)),
    );
    gauge_family(
        r,
        "switchd_peer_loss_ratio",
        "Share of the last 30 health probes to the peer that were not answered within 1 s",
        labelled(|h| h.loss_ratio),
    );
    gauge_family(
        r,
        "switchd_peer_path_mtu_bytes",
        "Largest IP packet (DF set) known to cross the tunnel to the peer",
        labelled(|h| h.path_mtu.map(f64::from)),
    );
    let below: Vec<(Labels, f64)> = peers
        .iter()
        .filter_map(|p| {
            let mtu = p.health.as_ref()?.path_mtu?;
            Some((
                vec![("peer".to_string(), p.name.clone())],
                if mtu < pod_mtu { 1.0 } else { 0.0 },
            ))
        })
        .collect();
    gauge_family(
        r,
        "switchd_peer_path_mtu_below_pod_mtu",
        "1 when the path to the peer carries less than the MTU pods are told: their larger packets are lost",
        below,
    );
}

pub fn render(sw: &Switch) -> String {
    let mut r = Registry::default();
    let ports = sw.ports();
    let port_labels = |p: &switchd_proto::PortInfo| -> Labels {
        vec![
            ("kind".into(), p.kind.clone()),
            ("namespace".into(), p.pod.namespace.clone()),
            ("pod".into(), p.pod.name.clone()),
            (
                "container".into(),
                p.container_id.chars().take(12).collect(),
            ),
            ("ifname".into(), p.ifname.clone()),
        ]
    };
    let port_counters: Vec<(Labels, &Counters)> = ports
        .iter()
        .map(|p| (port_labels(p), &p.counters))
        .collect();
    counter_families(
        &mut r,
        "switchd_port",
        &port_counters,
        &[
            ("rx_packets", "Frames read from the port", |c| c.rx_packets),
            ("rx_bytes", "Bytes read from the port", |c| c.rx_bytes),
            ("tx_packets", "Frames written to the port", |c| c.tx_packets),
            ("tx_bytes", "Bytes written to the port", |c| c.tx_bytes),
            (
                "drops",
                "Frames from or to the port that were dropped",
                |c| c.drops,
            ),
            (
                "ignored",
                "Link chatter from the port absorbed on purpose (IPv6 router solicitations, MLD, duplicate-address probes, gratuitous ARP)",
                |c| c.ignored,
            ),
        ],
    );

    let peers = sw.peers();
    let peer_counters: Vec<(Labels, &Counters)> = peers
        .iter()
        .map(|p| {
            (
                vec![
                    ("peer".to_string(), p.name.clone()),
                    ("addr".to_string(), p.addr.clone()),
                ],
                &p.counters,
            )
        })
        .collect();
    counter_families(
        &mut r,
        "switchd_peer",
        &peer_counters,
        &[
            (
                "rx_packets",
                "Tunnel datagrams received from the peer",
                |c| c.rx_packets,
            ),
            ("rx_bytes", "Tunnel bytes received from the peer", |c| {
                c.rx_bytes
            }),
            ("tx_packets", "Tunnel datagrams sent to the peer", |c| {
                c.tx_packets
            }),
            ("tx_bytes", "Tunnel bytes sent to the peer", |c| c.tx_bytes),
            (
                "drops",
                "Frames to or from the peer that were dropped",
                |c| c.drops,
            ),
        ],
    );

    let stats = sw.stats_info();
    counter_family(
        &mut r,
        "switchd_drops",
        "Frames dropped, by reason",
        stats
            .drops
            .into_iter()
            .map(|(reason, n)| (vec![("reason".to_string(), reason)], n)),
    );
    counter_family(
        &mut r,
        "switchd_attaches",
        "Pods attached",
        [(Labels::new(), stats.attaches)],
    );
    counter_family(
        &mut r,
        "switchd_detaches",
        "Pods detached",
        [(Labels::new(), stats.detaches)],
    );
    counter_family(
        &mut r,
        "switchd_ipam_writes",
        "Times the address state file was written (one write covers every change queued behind the one before)",
        [(Labels::new(), sw.ipam_writes())],
    );
    let f = &stats.flows;
    for (name, help, v) in [
        (
            "switchd_flows_tracked",
            "Flows the node translated (DNAT) whose replies the switch sends back through the node",
            f.tracked,
        ),
        (
            "switchd_flows_returned",
            "Frames of translated flows sent to the node instead of straight to a pod or peer",
            f.returned,
        ),
        (
            "switchd_flows_evicted",
            "Translated flows evicted from a full bucket before they expired",
            f.evicted,
        ),
        (
            "switchd_masquerade_reapplied",
            "Times the egress masquerade table was found missing or changed and written again",
            sw.masquerade
                .reapplied
                .load(std::sync::atomic::Ordering::Relaxed),
        ),
    ] {
        counter_family(&mut r, name, help, [(Labels::new(), v)]);
    }
    let worker = |i: usize| vec![("worker".to_string(), i.to_string())];
    for (name, help, field) in [
        (
            "switchd_worker_frames",
            "Frames a datapath worker read from ports and the tunnel",
            (|w: &switchd_proto::WorkerStats| w.frames) as fn(&switchd_proto::WorkerStats) -> u64,
        ),
        (
            "switchd_worker_wakeups",
            "Times a datapath worker slept and was woken by work",
            |w| w.wakeups,
        ),
        (
            "switchd_worker_polled",
            "Times a datapath worker found more work while polling after work, without sleeping",
            |w| w.polled,
        ),
    ] {
        let values = stats
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| (worker(i), field(w)));
        counter_family(&mut r, name, help, values);
    }
    r.register(
        "switchd_attach_duration_seconds",
        "Time to attach a pod",
        sw.attach_seconds.clone(),
    );
    r.register(
        "switchd_pod_step_duration_seconds",
        "Time spent in each step of attaching (address, interface, publish) and detaching (unpublish, interface, address) a pod",
        sw.pod_steps.clone(),
    );

    peer_health(&mut r, &peers, sw.mtu);

    let gauge = |r: &mut Registry, name: &str, help: &str, v: usize| {
        let g = Gauge::<i64>::default();
        g.set(v as i64);
        r.register(name, help, g);
    };
    gauge(
        &mut r,
        "switchd_ports",
        "Ports, the host port included",
        ports.len(),
    );
    gauge(
        &mut r,
        "switchd_table_entries",
        "Addresses in the forwarding table",
        sw.table().len(),
    );
    gauge(&mut r, "switchd_peers", "Peer nodes", peers.len());
    gauge(
        &mut r,
        "switchd_flows_active",
        "Translated flows in the table that have not expired",
        f.active as usize,
    );
    gauge(
        &mut r,
        "switchd_flows_capacity",
        "Slots in the translated-flow table (flow_table_size)",
        f.capacity as usize,
    );
    gauge(
        &mut r,
        "switchd_masquerade_installed",
        "1 while the egress masquerade rules are in place; 0 when off, pending or failed",
        usize::from(sw.masquerade.state().0 == "installed"),
    );
    if let Some(m) = sw.membership.lock().unwrap().clone() {
        gauge(
            &mut r,
            "switchd_etcd_connected",
            "1 while etcd answers and this node's lease is kept alive; forwarding goes on either way",
            usize::from(m.state == "connected"),
        );
        gauge(
            &mut r,
            "switchd_etcd_subnet_lost",
            "1 when another node holds this node's subnet in etcd (pods keep their addresses)",
            usize::from(m.state == "subnet_lost"),
        );
        gauge(
            &mut r,
            "switchd_etcd_state_since_seconds",
            "When the etcd state last changed, seconds since the Unix epoch",
            m.since_unix as usize,
        );
        counter_family(
            &mut r,
            "switchd_etcd_events",
            "Changes under nodes/ received from etcd's watch",
            [(Labels::new(), m.events)],
        );
        counter_family(
            &mut r,
            "switchd_etcd_publications",
            "Forwarding-table publications caused by etcd changes (coalesced: at most one per 100 ms)",
            [(Labels::new(), m.publications)],
        );
    }
    if sw.cfg.policy.enabled {
        use std::sync::atomic::Ordering::Relaxed;
        let policy = sw.policy();
        let per_policy = |verdict: &'static str| {
            policy.policies.iter().map(move |p| {
                let c = &p.counters;
                let v = if verdict == "allowed" {
                    c.allowed.load(Relaxed)
                } else {
                    c.denied.load(Relaxed)
                };
                let (ns, name) = p.namespace_and_name();
                (
                    vec![
                        ("tier".to_string(), p.tier.as_str().to_string()),
                        ("namespace".to_string(), ns.to_string()),
                        ("policy".to_string(), name.to_string()),
                        ("verdict".to_string(), verdict.to_string()),
                    ],
                    v,
                )
            })
        };
        counter_family(
            &mut r,
            "switchd_policy_flows",
            "Flows a policy decided on this node (first packets, and re-checks after a policy change): allowed by one of its rules, denied by a ClusterNetworkPolicy's Deny rule, or denied while a NetworkPolicy isolated the pod; tier is Admin or Baseline for a ClusterNetworkPolicy (no namespace), NetworkPolicy otherwise",
            per_policy("allowed").chain(per_policy("denied")),
        );
        gauge_family(
            &mut r,
            "switchd_policy_epoch",
            "Compiles of the node's policy so far (each re-judges cached verdicts)",
            [(Labels::new(), f64::from(policy.epoch))],
        );
        gauge_family(
            &mut r,
            "switchd_policy_guarded_addresses",
            "Addresses of this node's pods that a policy isolates",
            [(Labels::new(), policy.guarded.len() as f64)],
        );
    }
    r.register(
        "switchd_build",
        "Build information",
        Info::new(vec![
            ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ("node".to_string(), sw.cfg.node_name.clone()),
        ]),
    );

    let mut out = String::new();
    encode(&mut out, &r).expect("encoding metrics into a String cannot fail");
    out
}

/// The switch, once it has started; the listener is up before that, so `/healthz`
/// answers and `/readyz` says "starting" while ports are being re-adopted.
pub type SwitchSlot = Arc<std::sync::OnceLock<Arc<Switch>>>;

/// Serve `/metrics`, `/healthz` and `/readyz` until the listener fails.
pub async fn serve(slot: SwitchSlot, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let slot = slot.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(slot.get().map(|s| s.as_ref()), stream).await {
                        tracing::debug!(error = %e, "metrics connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept on the metrics listener failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(sw: Option<&Switch>, mut stream: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(5), read_head)
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let starting = (
        "503 Service Unavailable",
        "text/plain",
        "not ready: starting, re-adopting ports\n".to_string(),
    );
    let (status, content_type, body) = match (method, path, sw) {
        ("GET", "/metrics", Some(sw)) => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(sw),
        ),
        ("GET", "/metrics" | "/readyz", None) => starting,
        ("GET", "/healthz", _) => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz", Some(sw)) => match readiness(sw) {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
            Err(why) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        ("GET", _, _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz or /readyz\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let response = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Ready: control socket listening and ports adopted (`ready`), and the datapath's
/// runtime ticking.
pub fn readiness(sw: &Switch) -> Result<(), String> {
    if !sw.is_ready() {
        return Err("starting: control socket or port re-adoption not done".into());
    }
    let age = crate::stats::now_millis().saturating_sub(sw.heartbeat.load(Relaxed));
    if age > HEARTBEAT_STALE.as_millis() as u64 {
        return Err(format!("datapath heartbeat is {age} ms old"));
    }
    Ok(())
}
