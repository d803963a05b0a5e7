//! The running switch: its ports, the published forwarding table, and the control-plane
//! operations (attach, detach, check, gc) that change them.
//!
//! Writers (these operations) rebuild the whole [`Snapshot`] and publish it with one atomic
//! pointer swap; the datapath workers (`crate::worker`) load it once per batch and never
//! wait. `dashmap` stays where it fits, in the control-plane maps below.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use dashmap::DashMap;
use switchd_proto::{
    Attachment, AttachmentKey, Bandwidth, ErrorKind, ErrorReply, Ipv6Attachment, PeerInfo, PodRef,
    PortInfo, RouteInfo, StatsInfo, TableEntry,
};

use crate::config::{tunnel_overhead, Config, Peer, HOST_PORT_NAME};

/// The smallest link MTU IPv6 allows (RFC 8200 section 5).
const IPV6_MIN_MTU: u32 = 1280;
use crate::datapath::frame::{format_mac, mac_for_ip};
use crate::datapath::{FlowTable, PeerRoute, PortId, Table, HOST_PORT};
use crate::health::Health;
use crate::ipam::{Ipam, IpamError};
use crate::netns::{self, NetnsError, PodIface};
use crate::port::tap::Tap;
use crate::port::{shaper, Limits, Port, PortCounters, PortOwner};
use crate::snapshot::{Snapshot, SnapshotCell};
use crate::stats::Stats;
use crate::tunnel::{PeerSource, PeerState, Tunnel};
use crate::worker::{self, Workers};

struct Slot {
    port: Arc<Port>,
    /// Whether the workers watch this port yet (they are told after the first publish
    /// that holds it).
    registered: bool,
    /// The ingress shaper's drain task, for rate-limited pods.
    drain: Option<tokio::task::JoinHandle<()>>,
    /// A pod's network namespace (its inode when attached), watched by `reap_loop`.
    netns: Option<(String, u64)>,
}

pub struct Switch {
    pub cfg: Config,
    /// Pod interface MTU.
    pub mtu: u32,
    /// Largest IP packet the tunnel carries.
    pub tunnel_mtu: u32,
    tunnel: Option<Arc<Tunnel>>,
    /// The WireGuard socket and key, when the node encrypts.
    pub wireguard: Option<Arc<crate::wireguard::WireGuard>>,
    peers: Mutex<Vec<Arc<PeerState>>>,
    slots: DashMap<PortId, Slot>,
    by_key: DashMap<AttachmentKey, PortId>,
    cell: Arc<SnapshotCell>,
    pub stats: Arc<Stats>,
    ipam: Arc<Ipam>,
    next_id: AtomicU32,
    publish_lock: Mutex<()>,
    /// The etcd membership's state for `switchctl status`; `None` in static mode.
    pub membership: Mutex<Option<switchd_proto::MembershipInfo>>,
    ready: AtomicBool,
    /// Held for the daemon's lifetime: one switchd per state directory.
    _state_lock: std::fs::File,
    /// Attach durations, exported by `/metrics`.
    pub attach_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Attach and detach durations by step, exported by `/metrics`.
    pub pod_steps: crate::stats::StepHistograms,
    /// Unix milliseconds of the last datapath-runtime heartbeat (see `run_heartbeat`).
    pub heartbeat: std::sync::atomic::AtomicU64,
    /// Flows the node translated (Services): their replies go back through the node.
    pub flows: Arc<FlowTable>,
    /// The egress masquerade rules' state.
    pub masquerade: Arc<crate::masquerade::Masquerade>,
    /// The datapath threads that read and write the ports and the tunnel.
    pub workers: Workers,
    /// RTT, loss and path MTU of every peer, from probes through the tunnel.
    pub health: Arc<Health>,
    /// The compiled NetworkPolicy this node enforces (`crate::policy` compiles it).
    policy: arc_swap::ArcSwap<crate::datapath::policy::Policy>,
    /// Verdicts of policed flows; one cache for the switch's life.
    pub verdicts: Arc<crate::datapath::policy::VerdictCache>,
}

type OpResult<T> = std::result::Result<T, ErrorReply>;

fn ipam_error(e: IpamError) -> ErrorReply {
    let kind = match e {
        IpamError::Exhausted { .. } => ErrorKind::AddressesExhausted,
        IpamError::AlreadyAllocated { .. } => ErrorKind::AlreadyExists,
        _ => ErrorKind::Internal,
    };
    ErrorReply::new(kind, e.to_string())
}

/// Run a blocking netns operation off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("netns worker failed")?
}

impl Switch {
    /// Bring the switch up: host port, state, and every pod port that survived the last run.
    /// `inherited`: TAP descriptors the service manager kept across a restart, by name
    /// (see [`fd_name`]); ports found there are adopted without their link ever going down.
    pub async fn start(
        mut cfg: Config,
        mut inherited: HashMap<String, OwnedFd>,
    ) -> Result<Arc<Switch>> {
        let underlay_addr = cfg.underlay_addr;
        let underlay_mtu = match blocking(move || netns::underlay_mtu(underlay_addr)).await? {
            Some(underlay) => underlay,
            None => {
                tracing::warn!("no underlay interface or default route to derive the MTU from; assuming a 1500-byte underlay");
                1500
            }
        };
        let mut tunnel_mtu = underlay_mtu.saturating_sub(tunnel_overhead(underlay_addr, false));
        if cfg.encryption.wireguard().is_some() {
            // WireGuard pads the inner packet to a multiple of 16 bytes.
            tunnel_mtu = tunnel_mtu
                .min(underlay_mtu.saturating_sub(tunnel_overhead(underlay_addr, true)) & !15);
        }
        let mtu = cfg.mtu.unwrap_or(tunnel_mtu);
        if cfg.ipv6.is_some() && mtu.min(tunnel_mtu) < IPV6_MIN_MTU {
            // Linux turns IPv6 off on a link below 1280 bytes, and no packet-too-big can
            // ask for less: the pods would get no working IPv6 at all.
            anyhow::bail!("pod_cidr_v6: IPv6 needs an MTU of at least {IPV6_MIN_MTU}, but pods would get {mtu} over a tunnel carrying {tunnel_mtu} (underlay MTU {underlay_mtu}); raise the underlay MTU or mtu, or run this node IPv4-only");
        }
        let ipam = Ipam::open(&cfg.state_dir, cfg.pod_cidr, cfg.ipv6.map(|v6| v6.pod_cidr))?;
        let state_lock = lock_state_dir(&cfg.state_dir)?;
        let settings = worker::Settings {
            threads: cfg.datapath_threads,
            spin: std::time::Duration::from_micros(cfg.datapath_spin_us.into()),
        };
        let tunnel = match cfg.underlay_addr {
            Some(addr) => {
                let t = Arc::new(Tunnel::bind(
                    SocketAddr::new(addr, cfg.tunnel_port),
                    cfg.vni,
                    settings.threads,
                )?);
                Some(t)
            }
            None => None,
        };
        let secret = crate::wireguard::keys::load_node_key(&mut cfg)?;
        let wireguard = match (secret, cfg.encryption.wireguard(), cfg.underlay_addr) {
            (Some(secret), Some(w), Some(addr)) => {
                Some(Arc::new(crate::wireguard::WireGuard::bind(
                    SocketAddr::new(addr, w.port),
                    secret,
                    w.plain,
                    settings.threads,
                )?))
            }
            _ => None,
        };
        let router_mac = cfg.router_mac;
        let (gateway, pod_cidr, cluster_cidr) = (cfg.gateway(), cfg.pod_cidr, cfg.cluster_cidr);
        let ipv6 = cfg.ipv6;
        let kept_host = match take_kept(&mut inherited, HOST_FD_NAME) {
            Some(fds) => Some(adopt_fds(fds, HOST_PORT_NAME)?),
            None => None,
        };
        let queues = settings.threads;
        let host_tap = blocking(move || {
            netns::setup_host_port(
                kept_host,
                queues,
                HOST_PORT_NAME,
                router_mac,
                mtu,
                gateway,
                pod_cidr,
                cluster_cidr,
                ipv6,
            )
        })
        .await
        .context("setting up the host port")?;
        if let Err(e) = crate::node::prepare_forwarding(HOST_PORT_NAME, ipv6.is_some()) {
            // Pods still reach each other; Services and egress need the node to forward.
            tracing::error!(error = %format!("{e:#}"), "cannot prepare the node to forward pod traffic; set net.ipv4.ip_forward=1 and send_redirects=0 (and net.ipv6.conf.all.forwarding=1 on a dual-stack node) by hand");
        }
        let timeouts = crate::node::conntrack_timeouts();
        let (flows, flow_file) = open_flow_table(&cfg, timeouts);
        let flows = Arc::new(flows);
        tracing::debug!(
            capacity = flows.capacity(),
            ?timeouts,
            "flow table for translated flows"
        );
        let masquerade = Arc::new(crate::masquerade::Masquerade::new(
            cfg.masquerade,
            cfg.cluster_cidr,
            cfg.ipv6.map(|v6| v6.cluster_cidr),
        ));

        let table = Table::new(cfg.pod_cidr, cfg.cluster_cidr, router_mac, mtu);
        let gateway_v6 = cfg.ipv6.map(|v6| v6.gateway());
        let peers = cfg
            .peers
            .iter()
            .map(|p| Arc::new(PeerState::new(p, PeerSource::Static)))
            .collect();
        // Ports whose device disappeared are reported here (see `Switch::reap_vanished`).
        let (gone, gone_rx) = tokio::sync::mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let health = Arc::new(Health::new(cfg.probe_interval, cfg.probe_budget));
        let policy = Arc::new(crate::datapath::policy::Policy::default());
        let verdicts = Arc::new(crate::datapath::policy::VerdictCache::new(
            cfg.policy.verdict_cache_size,
            flows.seed() ^ 0x5eed_0f70_11c7,
        ));
        let cell = Arc::new(ArcSwap::from_pointee(Snapshot {
            table,
            ports: HashMap::default(),
            tunnel: None,
            wireguard: None,
            peers: Vec::new(),
            peer_by_addr: HashMap::default(),
            flows: flows.clone(),
            health: health.clone(),
            policy: policy.clone(),
            verdicts: verdicts.clone(),
        }));
        let workers = Workers::start(
            settings,
            cell.clone(),
            stats.clone(),
            gone.clone(),
            tunnel.as_deref(),
            wireguard.as_deref(),
        )
        .context("starting the datapath workers")?;
        let sw = Arc::new(Switch {
            cfg,
            mtu,
            tunnel_mtu,
            tunnel: tunnel.clone(),
            wireguard: wireguard.clone(),
            peers: Mutex::new(peers),
            slots: DashMap::new(),
            by_key: DashMap::new(),
            cell,
            stats,
            ipam: Arc::new(ipam),
            next_id: AtomicU32::new(HOST_PORT + 1),
            publish_lock: Mutex::new(()),
            membership: Mutex::new(None),
            ready: AtomicBool::new(false),
            _state_lock: state_lock,
            attach_seconds: crate::stats::attach_histogram(),
            pod_steps: crate::stats::step_histograms(),
            heartbeat: std::sync::atomic::AtomicU64::new(crate::stats::now_millis()),
            flows,
            masquerade: masquerade.clone(),
            workers,
            health,
            policy: arc_swap::ArcSwap::new(policy),
            verdicts,
        });
        tokio::spawn(masquerade.run());
        tokio::spawn(sweep_flows(sw.flows.clone(), flow_file));
        tokio::spawn(run_probes(Arc::downgrade(&sw)));
        if sw.wireguard.is_some() {
            tokio::spawn(run_wireguard_timers(Arc::downgrade(&sw)));
        }
        sw.add_port(
            HOST_PORT,
            host_tap,
            PortOwner::Host,
            (gateway, gateway_v6),
            router_mac,
            None,
        );
        tokio::spawn(reap_loop(Arc::downgrade(&sw), gone_rx));
        sw.readopt(&mut inherited).await;
        for name in inherited.keys() {
            tracing::warn!(fd_name = %name, "closing a stored descriptor that matches no attachment");
            let _ = crate::notify::remove_fd(name);
        }
        sw.publish();
        Ok(sw)
    }

    /// Re-open the TAPs of pods attached before a restart; forget those whose namespace or
    /// interface is gone.
    async fn readopt(&self, inherited: &mut HashMap<String, OwnedFd>) {
        let records = self.ipam.records();
        for rec in records {
            let (ns, ifname) = (rec.netns.clone(), rec.key.ifname.clone());
            let kept = take_kept(inherited, &fd_name(&rec.key));
            let reopened = if !Path::new(&ns).exists() {
                Ok(None)
            } else if let Some(fds) = kept {
                // The service manager held the descriptors: the link never lost its carrier.
                adopt_fds(fds, &ifname).map(Some)
            } else {
                let queues = self.workers.len();
                blocking(move || netns::reopen_pod_tap(&ns, &ifname, queues)).await
            };
            match reopened {
                Ok(Some(tap)) => {
                    let id = self.next_id.fetch_add(1, Relaxed);
                    let owner = PortOwner::Pod {
                        key: rec.key.clone(),
                        pod: rec.pod.clone(),
                        network: rec.network.clone(),
                        netns: rec.netns.clone(),
                    };
                    self.add_port(
                        id,
                        tap,
                        owner,
                        (rec.address, rec.address_v6),
                        mac_for_ip(rec.address),
                        rec.bandwidth,
                    );
                    self.by_key.insert(rec.key.clone(), id);
                    tracing::info!(container = %rec.key.container_id, ifname = %rec.key.ifname, address = %rec.address, "re-adopted pod port");
                }
                outcome => {
                    let why = match outcome {
                        Err(e) => format!("{e:#}"),
                        _ => "network namespace or interface is gone".into(),
                    };
                    tracing::warn!(container = %rec.key.container_id, ifname = %rec.key.ifname, address = %rec.address, reason = %why, "releasing stale attachment");
                    if let Err(e) = self.release_address(&rec.key).await {
                        tracing::error!(error = %e, "cannot release stale attachment");
                    }
                }
            }
        }
    }

    fn add_port(
        &self,
        id: PortId,
        taps: Vec<Tap>,
        owner: PortOwner,
        (address, address_v6): (Ipv4Addr, Option<Ipv6Addr>),
        mac: [u8; 6],
        bandwidth: Option<Bandwidth>,
    ) {
        if crate::notify::under_service_manager() {
            let name = match &owner {
                PortOwner::Host => HOST_FD_NAME.to_string(),
                PortOwner::Pod { key, .. } => fd_name(key),
            };
            for (q, tap) in taps.iter().enumerate() {
                let name = queue_fd_name(&name, q);
                if let Err(e) = crate::notify::store_fd(&name, tap.fd()) {
                    tracing::warn!(fd_name = %name, error = %e, "cannot hand the port to the fd store; a restart will blink its link");
                }
            }
        }
        let mut taps = taps.into_iter();
        let tap = taps.next().expect("a port has at least one queue");
        let port = Arc::new(Port {
            id,
            tap,
            more_queues: taps.collect(),
            owner,
            address,
            address_v6,
            mac,
            counters: PortCounters::default(),
            alive: AtomicBool::new(true),
            capturing: AtomicBool::new(false),
            capture_lost: Default::default(),
            capture: Mutex::new(None),
            limits: Limits::new(bandwidth),
        });
        let drain = port
            .limits
            .ingress
            .as_ref()
            .map(|_| tokio::spawn(shaper::drain(port.clone(), self.stats.clone())));
        let netns = match &port.owner {
            PortOwner::Pod { netns, .. } => {
                netns::netns_inode(netns).map(|ino| (netns.clone(), ino))
            }
            PortOwner::Host => None,
        };
        self.slots.insert(
            id,
            Slot {
                port,
                registered: false,
                drain,
                netns,
            },
        );
    }

    /// Rebuild the forwarding table from the current ports and publish it.
    /// Enforce `policy` from the next batch on. Its epoch must differ from the one before
    /// (the compiler counts them) so every cached verdict is decided again.
    pub fn set_policy(&self, policy: Arc<crate::datapath::policy::Policy>) {
        self.policy.store(policy);
        self.publish();
    }

    /// The policy being enforced.
    pub fn policy(&self) -> Arc<crate::datapath::policy::Policy> {
        self.policy.load_full()
    }

    fn publish(&self) {
        let _serialised = self.publish_lock.lock().unwrap();
        let mut table = Table::new(
            self.cfg.pod_cidr,
            self.cfg.cluster_cidr,
            self.cfg.router_mac,
            self.mtu,
        );
        table.tunnel_mtu = self.tunnel_mtu;
        table.icmp_frag_needed = self.cfg.icmp_frag_needed;
        if let Some(v6) = self.cfg.ipv6 {
            table.enable_ipv6(v6.pod_cidr, v6.cluster_cidr);
        }
        let peers = self.peers.lock().unwrap().clone();
        let mut peer_by_addr = HashMap::default();
        for (i, p) in peers.iter().enumerate() {
            table.insert_peer(PeerRoute {
                pod_cidr: p.peer.pod_cidr,
                pod_cidr_v6: p.peer.pod_cidr_v6,
                mac: p.peer.mac,
            });
            peer_by_addr.insert(crate::snapshot::addr_key(p.peer.addr.ip()), i);
        }
        let mut ports = HashMap::default();
        for slot in self.slots.iter() {
            let p = &slot.port;
            if p.id != HOST_PORT {
                table.insert_pod(p.id, p.address, p.mac);
                if let Some(a) = p.address_v6 {
                    table.insert_pod_v6(p.id, a, p.mac);
                }
            }
            ports.insert(p.id, p.clone());
        }
        self.cell.store(Arc::new(Snapshot {
            table,
            ports,
            tunnel: self.tunnel.clone(),
            wireguard: self.wireguard.clone(),
            peers,
            peer_by_addr,
            flows: self.flows.clone(),
            health: self.health.clone(),
            policy: self.policy.load_full(),
            verdicts: self.verdicts.clone(),
        }));
        for mut slot in self.slots.iter_mut() {
            if slot.registered {
                continue;
            }
            match self.workers.add_port(&slot.port) {
                Ok(()) => slot.registered = true,
                Err(e) => {
                    tracing::error!(port = slot.port.id, ifname = slot.port.tap.name(), error = %e, "cannot hand the port to a datapath worker; it does not forward")
                }
            }
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    pub async fn attach(
        &self,
        key: AttachmentKey,
        network: String,
        netns: String,
        pod: PodRef,
        bandwidth: Option<Bandwidth>,
    ) -> OpResult<Attachment> {
        let started = std::time::Instant::now();
        let result = self.attach_inner(key, network, netns, pod, bandwidth).await;
        self.attach_seconds.observe(started.elapsed().as_secs_f64());
        result
    }

    async fn attach_inner(
        &self,
        key: AttachmentKey,
        network: String,
        netns: String,
        pod: PodRef,
        bandwidth: Option<Bandwidth>,
    ) -> OpResult<Attachment> {
        if key.ifname.is_empty() || key.ifname.len() > 15 || key.ifname.contains(['/', ' ', '\0']) {
            return Err(ErrorReply::new(
                ErrorKind::BadRequest,
                format!(
                    "interface name {:?} is not valid: 1 to 15 characters, no '/' or spaces",
                    key.ifname
                ),
            ));
        }
        if !Path::new(&netns).exists() {
            return Err(ErrorReply::new(
                ErrorKind::NetnsUnavailable,
                format!("network namespace {netns} does not exist"),
            ));
        }
        let started = std::time::Instant::now();
        let addresses = {
            let (key, network, netns, pod) =
                (key.clone(), network.clone(), netns.clone(), pod.clone());
            self.with_ipam(move |ipam| ipam.allocate(key, &network, &netns, pod, bandwidth))
                .await
                .map_err(ipam_error)?
        };
        let step = crate::stats::step(&self.pod_steps, "attach", "address", started);
        let address = addresses.v4;
        let iface = self.pod_iface(&key.ifname, address, addresses.v6);
        let (ns, spec) = (netns.clone(), iface.clone());
        let queues = self.workers.len();
        let tap = match blocking(move || netns::create_pod_tap(&ns, spec, queues)).await {
            Ok(tap) => tap,
            Err(e) => {
                if let Err(rel) = self.release_address(&key).await {
                    tracing::error!(error = %rel, "cannot roll back address after failed attach");
                }
                let kind = match e.downcast_ref::<NetnsError>() {
                    Some(NetnsError::IfaceExists { .. }) => ErrorKind::AlreadyExists,
                    Some(NetnsError::Unavailable { .. } | NetnsError::Replaced { .. }) => {
                        ErrorKind::NetnsUnavailable
                    }
                    None => ErrorKind::Internal,
                };
                tracing::warn!(container = %key.container_id, ifname = %key.ifname, error = %format!("{e:#}"), "attach failed");
                return Err(ErrorReply::new(kind, format!("{e:#}")));
            }
        };
        let step = crate::stats::step(&self.pod_steps, "attach", "interface", step);
        let id = self.next_id.fetch_add(1, Relaxed);
        let owner = PortOwner::Pod {
            key: key.clone(),
            pod: pod.clone(),
            network,
            netns: netns.clone(),
        };
        self.add_port(
            id,
            tap,
            owner,
            (address, addresses.v6),
            iface.mac,
            bandwidth,
        );
        self.by_key.insert(key.clone(), id);
        self.publish();
        self.stats.attaches.fetch_add(1, Relaxed);
        crate::stats::step(&self.pod_steps, "attach", "publish", step);
        tracing::info!(took_ms = started.elapsed().as_millis() as u64, port = id, container = %key.container_id, ifname = %key.ifname, pod = %pod.name, namespace = %pod.namespace, address = %address, address_v6 = ?addresses.v6, bandwidth = ?bandwidth, "attached pod");
        Ok(self.attachment_of(&iface, netns))
    }

    /// How a pod's interface must look, from its addresses.
    fn pod_iface(&self, ifname: &str, address: Ipv4Addr, address_v6: Option<Ipv6Addr>) -> PodIface {
        PodIface {
            ifname: ifname.to_string(),
            mac: mac_for_ip(address),
            address,
            prefix_len: self.cfg.pod_cidr.prefix_len(),
            gateway: self.cfg.gateway(),
            mtu: self.mtu,
            ipv6: match (address_v6, self.cfg.ipv6) {
                (Some(address), Some(v6)) => Some(Ipv6Attachment {
                    address,
                    prefix_len: v6.pod_cidr.prefix_len(),
                    gateway: v6.gateway(),
                }),
                _ => None,
            },
        }
    }

    fn attachment_of(&self, iface: &PodIface, netns: String) -> Attachment {
        let mut routes = vec![RouteInfo {
            dst: "0.0.0.0/0".into(),
            gw: iface.gateway.into(),
        }];
        if let Some(v6) = iface.ipv6 {
            routes.push(RouteInfo {
                dst: "::/0".into(),
                gw: v6.gateway.into(),
            });
        }
        Attachment {
            ifname: iface.ifname.clone(),
            mac: format_mac(iface.mac),
            address: iface.address,
            prefix_len: iface.prefix_len,
            gateway: iface.gateway,
            mtu: iface.mtu,
            routes,
            netns,
            ipv6: iface.ipv6,
        }
    }

    /// How many times the address state was written since start.
    pub fn ipam_writes(&self) -> u64 {
        self.ipam.writes()
    }

    /// Release `key`'s address (see `with_ipam`).
    async fn release_address(
        &self,
        key: &AttachmentKey,
    ) -> Result<Option<crate::ipam::Record>, IpamError> {
        let key = key.clone();
        self.with_ipam(move |ipam| ipam.release(&key)).await
    }

    /// Change the addresses off the async workers: a change returns once it is on disk.
    async fn with_ipam<T: Send + 'static>(&self, f: impl FnOnce(&Ipam) -> T + Send + 'static) -> T {
        let ipam = self.ipam.clone();
        match tokio::task::spawn_blocking(move || f(&ipam)).await {
            Ok(result) => result,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Remove a pod's port and release its address. Returns whether anything existed.
    pub async fn detach(&self, key: &AttachmentKey) -> OpResult<bool> {
        let mut existed = false;
        let started = std::time::Instant::now();
        if let Some((_, id)) = self.by_key.remove(key) {
            if let Some((_, slot)) = self.slots.remove(&id) {
                self.publish();
                self.workers.remove_port(&slot.port);
                let step = crate::stats::step(&self.pod_steps, "detach", "unpublish", started);
                let was_alive = slot.port.alive.swap(false, Relaxed);
                if let Some(drain) = slot.drain {
                    drain.abort();
                    let _ = drain.await;
                }
                for q in 0..slot.port.queues() {
                    let _ = crate::notify::remove_fd(&queue_fd_name(&fd_name(key), q));
                }
                // Not persistent any more: the device goes away when the last reference to
                // the fd is dropped. If it is already gone (namespace deleted), nothing to do.
                let _ = slot.port.tap.set_persistent(false);
                // Delete it now, in one unregistration, rather than queue by queue as the
                // descriptors close (see `netns::delete_pod_link`). A vanished device (not
                // alive) may have left its name to another interface: leave that alone.
                if let (true, Some((ns, ino))) = (was_alive, slot.netns) {
                    let ifname = key.ifname.clone();
                    if let Err(e) =
                        blocking(move || netns::delete_pod_link(&ns, ino, &ifname)).await
                    {
                        tracing::debug!(error = %format!("{e:#}"), "pod interface not deleted by name; closing its descriptors removes it");
                    }
                }
                drop(slot.port);
                crate::stats::step(&self.pod_steps, "detach", "interface", step);
                existed = true;
            }
        }
        let step = std::time::Instant::now();
        let released = self.release_address(key).await.map_err(ipam_error)?;
        crate::stats::step(&self.pod_steps, "detach", "address", step);
        if existed || released.is_some() {
            self.stats.detaches.fetch_add(1, Relaxed);
            tracing::info!(container = %key.container_id, ifname = %key.ifname, address = ?released.as_ref().map(|r| r.address), "detached pod");
        }
        Ok(existed || released.is_some())
    }

    pub async fn check(&self, key: &AttachmentKey, netns: &str) -> OpResult<Attachment> {
        let Some(rec) = self.ipam.get(key) else {
            return Err(ErrorReply::new(
                ErrorKind::NotFound,
                format!(
                    "switchd has no attachment for container {} interface {}",
                    key.container_id, key.ifname
                ),
            ));
        };
        if rec.netns != netns {
            return Err(ErrorReply::new(
                ErrorKind::CheckFailed,
                format!(
                    "attachment was made in network namespace {}, not {netns}",
                    rec.netns
                ),
            ));
        }
        let port_alive = self
            .by_key
            .get(key)
            .and_then(|id| self.slots.get(&id).map(|s| s.port.alive.load(Relaxed)));
        if port_alive != Some(true) {
            return Err(ErrorReply::new(
                ErrorKind::CheckFailed,
                format!(
                    "the switch port of interface {} is not forwarding (device deleted?)",
                    key.ifname
                ),
            ));
        }
        let iface = self.pod_iface(&key.ifname, rec.address, rec.address_v6);
        let (ns, spec) = (netns.to_string(), iface.clone());
        blocking(move || netns::check_pod_iface(&ns, spec))
            .await
            .map_err(|e| ErrorReply::new(ErrorKind::CheckFailed, format!("{e:#}")))?;
        Ok(self.attachment_of(&iface, rec.netns))
    }

    /// Detach every attachment of `network` not named in `valid`.
    pub async fn gc(&self, network: &str, valid: &[AttachmentKey]) -> OpResult<Vec<AttachmentKey>> {
        let stale: Vec<AttachmentKey> = self
            .ipam
            .records()
            .iter()
            .filter(|r| r.network == network && !valid.contains(&r.key))
            .map(|r| r.key.clone())
            .collect();
        for key in &stale {
            self.detach(key).await?;
        }
        Ok(stale)
    }

    pub fn ports(&self) -> Vec<PortInfo> {
        let mut out: Vec<PortInfo> = self
            .slots
            .iter()
            .map(|s| {
                let p = &s.port;
                let (kind, pod, container_id) = match &p.owner {
                    PortOwner::Host => ("host", PodRef::default(), String::new()),
                    PortOwner::Pod { key, pod, .. } => {
                        ("pod", pod.clone(), key.container_id.clone())
                    }
                };
                PortInfo {
                    id: p.id,
                    kind: kind.into(),
                    pod,
                    container_id,
                    ifname: p.tap.name().into(),
                    mac: format_mac(p.mac),
                    address: p.address,
                    address_v6: p.address_v6,
                    counters: p.counters.snapshot(),
                    bandwidth: p.limits.config,
                }
            })
            .collect();
        out.sort_by_key(|p| p.id);
        out
    }

    pub fn table(&self) -> Vec<TableEntry> {
        let snap = self.cell.load();
        let entry = |address: IpAddr, ep: &crate::datapath::Endpoint| TableEntry {
            address,
            mac: format_mac(ep.mac),
            port: ep.port,
            port_name: snap
                .ports
                .get(&ep.port)
                .map(|p| p.tap.name().to_string())
                .unwrap_or_default(),
        };
        let v4 = snap
            .table
            .by_ip
            .iter()
            .map(|(ip, ep)| entry(Ipv4Addr::from(*ip).into(), ep));
        let v6 = snap
            .table
            .v6
            .iter()
            .flat_map(|v6| v6.by_ip.iter())
            .map(|(ip, ep)| entry(Ipv6Addr::from(*ip).into(), ep));
        let mut out: Vec<TableEntry> = v4.chain(v6).collect();
        out.sort_by_key(|e| e.address);
        out
    }

    pub fn stats_info(&self) -> StatsInfo {
        let mut totals = switchd_proto::Counters::default();
        for s in self.slots.iter() {
            let c = s.port.counters.snapshot();
            totals.rx_packets += c.rx_packets;
            totals.rx_bytes += c.rx_bytes;
            totals.tx_packets += c.tx_packets;
            totals.tx_bytes += c.tx_bytes;
            totals.drops += c.drops;
        }
        StatsInfo {
            totals,
            drops: self.stats.drops(),
            attaches: self.stats.attaches.load(Relaxed),
            detaches: self.stats.detaches.load(Relaxed),
            flows: switchd_proto::FlowStats {
                capacity: self.flows.capacity() as u64,
                active: self.flows.len(crate::port::now_secs()) as u64,
                tracked: self.flows.counters.tracked.load(Relaxed),
                returned: self.flows.counters.returned.load(Relaxed),
                evicted: self.flows.counters.evicted.load(Relaxed),
            },
            workers: self.workers.stats(),
        }
    }

    /// Re-read the peers from the configuration (file and peers file) and apply them.
    /// Unchanged peers keep their state and counters, so their flows are not disturbed.
    pub fn reload_peers(&self) -> OpResult<usize> {
        let Some((path, overrides)) = &self.cfg.loaded_from else {
            return Err(ErrorReply::new(
                ErrorKind::BadRequest,
                "switchd was not started from a config file; nothing to reload",
            ));
        };
        let fresh = Config::load(path, overrides.clone()).map_err(|e| {
            ErrorReply::new(
                ErrorKind::BadRequest,
                format!("reload refused, peers unchanged: {e:#}"),
            )
        })?;
        let mut fresh = fresh;
        if fresh.pod_cidr_pending {
            // Leased from etcd: the file cannot change it.
            let _ = fresh.assign_pod_cidr(self.cfg.pod_cidr);
        }
        let c = &self.cfg;
        let needs_restart: Vec<&str> = [
            ("pod_cidr", fresh.pod_cidr != c.pod_cidr),
            ("cluster_cidr", fresh.cluster_cidr != c.cluster_cidr),
            ("underlay_addr", fresh.underlay_addr != c.underlay_addr),
            ("tunnel_port", fresh.tunnel_port != c.tunnel_port),
            ("vni", fresh.vni != c.vni),
            ("router_mac", fresh.router_mac != c.router_mac),
            ("mtu", fresh.mtu != c.mtu),
            ("socket", fresh.socket != c.socket),
            ("state_dir", fresh.state_dir != c.state_dir),
            (
                "icmp_frag_needed",
                fresh.icmp_frag_needed != c.icmp_frag_needed,
            ),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect();
        if !needs_restart.is_empty() {
            tracing::warn!(keys = ?needs_restart, "reload applies peers only; these changed keys take effect after a restart");
        }
        if !fresh.peers.is_empty() && self.tunnel.is_none() {
            return Err(ErrorReply::new(
                ErrorKind::BadRequest,
                "reload refused: peers need underlay_addr, which takes a restart to set",
            ));
        }
        Ok(self.set_peers(PeerSource::Static, &fresh.peers))
    }

    /// Replace the peers that came from `source` with `fresh`; peers of other sources stay.
    /// Unchanged peers keep their state and counters, so their flows are not disturbed. A
    /// peer from etcd that collides with a static one (name, subnet or address) is left
    /// out with a warning: what the operator wrote wins. Returns how many were applied.
    pub fn set_peers(&self, source: PeerSource, fresh: &[Peer]) -> usize {
        let applied;
        {
            let mut peers = self.peers.lock().unwrap();
            let (mine, mut others): (Vec<_>, Vec<_>) = std::mem::take(&mut *peers)
                .into_iter()
                .partition(|p| p.source == source);
            // By name: thousands of etcd peers must not cost a scan each.
            let mut mine: HashMap<String, Arc<PeerState>> =
                mine.into_iter().map(|p| (p.peer.name.clone(), p)).collect();
            let (mut added, mut changed) = (Vec::new(), Vec::new());
            let clash = |a: &Peer, b: &Peer| {
                a.name == b.name
                    || crate::config::overlaps(a.pod_cidr, b.pod_cidr)
                    || a.addr.ip() == b.addr.ip()
            };
            if source == PeerSource::Static {
                others.retain(|o| match fresh.iter().find(|p| clash(&o.peer, p)) {
                    Some(p) => {
                        tracing::warn!(peer = %o.peer.name, source = o.source.as_str(), conflicts_with = %p.name, "peer dropped: it collides with a static peer");
                        false
                    }
                    None => true,
                });
            }
            let mut next: Vec<Arc<PeerState>> = others;
            let fixed = next.len();
            for p in fresh {
                if source != PeerSource::Static {
                    if let Some(o) = next[..fixed].iter().find(|o| clash(&o.peer, p)) {
                        tracing::warn!(peer = %p.name, source = source.as_str(), pod_cidr = %p.pod_cidr, conflicts_with = %o.peer.name, "peer left out: it collides with a static peer");
                        continue;
                    }
                }
                let state = match mine.remove(&p.name) {
                    Some(o) if o.peer == *p => o,
                    Some(_) => {
                        changed.push(p.name.as_str());
                        Arc::new(PeerState::new(p, source))
                    }
                    None => {
                        added.push(p.name.as_str());
                        Arc::new(PeerState::new(p, source))
                    }
                };
                next.push(state);
            }
            applied = next.len() - fixed;
            let mut removed: Vec<&str> = mine.keys().map(String::as_str).collect();
            removed.sort_unstable();
            if !(added.is_empty() && changed.is_empty() && removed.is_empty()) {
                let some = |v: &[&str]| {
                    let mut s = v
                        .iter()
                        .take(LOG_NAMES)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(",");
                    if v.len() > LOG_NAMES {
                        s.push_str(&format!(",… ({} more)", v.len() - LOG_NAMES));
                    }
                    s
                };
                tracing::info!(
                    source = source.as_str(),
                    peers = applied,
                    added = added.len(),
                    changed = changed.len(),
                    removed = removed.len(),
                    added_names = %some(&added),
                    changed_names = %some(&changed),
                    removed_names = %some(&removed),
                    "peers changed"
                );
            }
            *peers = next;
        }
        self.publish();
        applied
    }

    pub fn peers(&self) -> Vec<PeerInfo> {
        self.peers
            .lock()
            .unwrap()
            .iter()
            .map(|p| PeerInfo {
                name: p.peer.name.clone(),
                addr: p.peer.addr.to_string(),
                pod_cidr: p.peer.pod_cidr.to_string(),
                mac: format_mac(p.peer.mac),
                source: p.source.as_str().into(),
                since_unix: p
                    .since
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                counters: p.counters.snapshot(),
                health: self.health.of(&p.peer.name),
                wireguard: p.peer.wireguard.map(|w| switchd_proto::PeerWireGuard {
                    public_key: crate::config::format_wireguard_key(&w.public_key),
                    endpoint: w.addr.to_string(),
                    handshake_secs_ago: self
                        .wireguard
                        .as_ref()
                        .and_then(|wg| wg.last_handshake(p))
                        .map(|d| d.as_secs()),
                }),
            })
            .collect()
    }

    /// Tick the heartbeat that `/readyz` checks and, under systemd with `WatchdogSec=`,
    /// send `WATCHDOG=1`, while the control-plane runtime and every datapath worker are
    /// alive: if either wedges, the keep-alives stop and systemd restarts switchd.
    pub async fn run_heartbeat(self: Arc<Self>) {
        let watchdog = crate::notify::watchdog_interval();
        let every = watchdog
            .map(|w| w / 2)
            .unwrap_or(std::time::Duration::from_secs(1))
            .min(std::time::Duration::from_secs(1));
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            // A datapath worker loops at least once a second, idle or not; one that has
            // not for a few seconds is wedged, and so is the switch.
            let stalest = self.workers.stalest_secs();
            if stalest > WORKER_STALL_SECS {
                tracing::error!(
                    stalest_secs = stalest,
                    "a datapath worker is stuck; withholding the heartbeat"
                );
                continue;
            }
            self.heartbeat.store(crate::stats::now_millis(), Relaxed);
            if watchdog.is_some() {
                if let Err(e) = crate::notify::notify("WATCHDOG=1") {
                    tracing::warn!(error = %e, "cannot send the watchdog keep-alive");
                }
            }
        }
    }

    /// The port a `switchctl capture` selector names: `switchd0`/`host`, a pod name,
    /// `namespace/name`, or a container id prefix of at least 4 characters.
    pub fn find_port(&self, selector: &str) -> OpResult<Arc<Port>> {
        let matches: Vec<Arc<Port>> = self
            .slots
            .iter()
            .map(|s| s.port.clone())
            .filter(|p| match &p.owner {
                PortOwner::Host => selector == HOST_PORT_NAME || selector == "host",
                PortOwner::Pod { key, pod, .. } => {
                    selector == pod.name
                        || selector == format!("{}/{}", pod.namespace, pod.name)
                        || (selector.len() >= 4 && key.container_id.starts_with(selector))
                }
            })
            .collect();
        match matches.len() {
            1 => Ok(matches[0].clone()),
            0 => Err(ErrorReply::new(
                ErrorKind::NotFound,
                format!("no port matches {selector:?}; see `switchctl ports`"),
            )),
            n => Err(ErrorReply::new(
                ErrorKind::BadRequest,
                format!(
                    "{n} ports match {selector:?}; use namespace/name or a longer container id"
                ),
            )),
        }
    }

    /// A port's device disappeared. If the pod's network namespace is gone too, the pod
    /// was deleted without a DEL reaching us (some runtimes skip DEL when the namespace
    /// path vanished): release it, as DEL would have. If the namespace is still there,
    /// someone deleted the interface by hand; keep the attachment so CHECK reports it.
    async fn reap_vanished(&self, id: PortId) {
        let owner = self.slots.get(&id).map(|s| s.port.owner.clone());
        let Some(PortOwner::Pod { key, netns, .. }) = owner else {
            return;
        };
        if Path::new(&netns).exists() {
            tracing::warn!(container = %key.container_id, ifname = %key.ifname, "pod interface vanished but its namespace exists; CHECK will fail until DEL and ADD");
            return;
        }
        tracing::warn!(container = %key.container_id, ifname = %key.ifname, netns = %netns, "pod's network namespace vanished without a DEL; releasing its address");
        if let Err(e) = self.detach(&key).await {
            tracing::error!(error = %e.message, "cannot release the vanished pod");
        }
    }

    /// Detach every pod whose network namespace is gone (`netns::pod_netns_gone`).
    async fn reap_gone_namespaces(&self) {
        let watched: Vec<(PortId, String, u64)> = self
            .slots
            .iter()
            .filter_map(|s| s.netns.clone().map(|(path, ino)| (*s.key(), path, ino)))
            .collect();
        if watched.is_empty() {
            return;
        }
        let gone = match tokio::task::spawn_blocking(move || {
            watched
                .into_iter()
                .filter(|(_, path, ino)| netns::pod_netns_gone(path, *ino))
                .map(|(id, path, _)| (id, path))
                .collect::<Vec<_>>()
        })
        .await
        {
            Ok(gone) => gone,
            Err(e) => {
                tracing::error!(error = %e, "namespace sweep panicked");
                return;
            }
        };
        for (id, netns) in gone {
            let owner = self.slots.get(&id).map(|s| s.port.owner.clone());
            let Some(PortOwner::Pod { key, .. }) = owner else {
                continue;
            };
            tracing::warn!(container = %key.container_id, ifname = %key.ifname, netns = %netns, "pod's network namespace vanished without a DEL; releasing its address");
            if let Err(e) = self.detach(&key).await {
                tracing::error!(error = %e.message, "cannot release the vanished pod");
            }
        }
    }

    /// The snapshot the datapath reads right now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.cell.load_full()
    }

    pub fn port_count(&self) -> usize {
        self.slots.len()
    }
}

/// Seconds a datapath worker may go without looping before the switch counts as wedged.
const WORKER_STALL_SECS: u32 = 5;

/// Name of the host port's descriptor in the service manager's fd store.
const HOST_FD_NAME: &str = "host";
/// How many peer names one "peers changed" log line names per kind of change.
const LOG_NAMES: usize = 10;

/// Name of a pod port's descriptor in the fd store: printable, no `:`, at most 255 bytes.
pub fn fd_name(key: &AttachmentKey) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    let mut name = format!("pod-{}-{}", clean(&key.ifname), clean(&key.container_id));
    name.truncate(248); // room for a queue suffix
    name
}

/// Name of queue `q`'s descriptor of the port stored as `base`: `base` itself for the
/// first queue (as before ports had several), `base.qN` for the others.
fn queue_fd_name(base: &str, q: usize) -> String {
    match q {
        0 => base.to_string(),
        q => format!("{base}.q{q}"),
    }
}

/// Take a port's stored queue descriptors out of `inherited`, first queue first.
fn take_kept(inherited: &mut HashMap<String, OwnedFd>, base: &str) -> Option<Vec<OwnedFd>> {
    let first = inherited.remove(base)?;
    let mut fds = vec![first];
    while let Some(fd) = inherited.remove(&queue_fd_name(base, fds.len())) {
        fds.push(fd);
    }
    Some(fds)
}

/// Adopt a port's kept descriptors as its queues.
fn adopt_fds(fds: Vec<OwnedFd>, name: &str) -> Result<Vec<Tap>> {
    fds.into_iter()
        .map(|fd| Tap::from_fd(fd, name).map_err(anyhow::Error::from))
        .collect()
}

/// Take an exclusive `flock` on `state_dir/lock`, so two daemons never share allocations.
fn lock_state_dir(dir: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on an fd we own; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!(
            "another switchd is using state_dir {}; give each instance its own",
            dir.display()
        );
    }
    Ok(file)
}

/// Reap ports whose device vanished, and every `NETNS_SWEEP` the pods whose namespace the
/// runtime removed without a DEL (our descriptors keep such a namespace alive, so its
/// device never vanishes by itself; see `netns::create_pod_tap`). Holds only a weak
/// reference, so it never keeps a stopped switch alive.
async fn reap_loop(
    sw: std::sync::Weak<Switch>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<PortId>,
) {
    let mut sweep = tokio::time::interval(NETNS_SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            id = rx.recv() => {
                let Some(id) = id else { return };
                let Some(sw) = sw.upgrade() else { return };
                sw.reap_vanished(id).await;
            }
            _ = sweep.tick() => {
                let Some(sw) = sw.upgrade() else { return };
                sw.reap_gone_namespaces().await;
            }
        }
    }
}

/// How often `reap_loop` looks for pod namespaces removed without a DEL.
const NETNS_SWEEP: std::time::Duration = std::time::Duration::from_secs(2);

/// The translated-flow table, in the file beside the control socket (`switchd.flows` for
/// `switchd.sock`) so that the next switchd finds its flows (see `flow_store`); in memory
/// only if that file cannot be used.
fn open_flow_table(
    cfg: &Config,
    timeouts: crate::datapath::flows::Timeouts,
) -> (FlowTable, Option<crate::flow_store::FlowFile>) {
    use crate::flow_store::Opened;
    let seed =
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u64);
    let path = cfg.socket.with_extension("flows");
    let boot = crate::flow_store::boot_id();
    let opened = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            crate::flow_store::open(
                &path,
                cfg.flow_table_size,
                timeouts,
                &boot,
                crate::port::now_secs(),
                seed,
            )
        });
    match opened {
        Ok(stored) => {
            match &stored.opened {
                Opened::Adopted => tracing::info!(
                    file = %path.display(),
                    flows = stored.table.len(crate::port::now_secs()),
                    "adopted the translated flows of the previous run"
                ),
                Opened::Fresh(why) => {
                    tracing::debug!(file = %path.display(), reason = %why, "new translated-flow table")
                }
            }
            (stored.table, Some(stored.file))
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot keep the translated-flow table in a file; keeping it in memory, so a restart forgets Service flows (their replies may be reset until the client sends again)");
            (FlowTable::new(cfg.flow_table_size, timeouts, seed), None)
        }
    }
}

/// Every minute: clear the flow table's expired slots (so that none can look live again
/// when the clock wraps) and record the sweep in its file.
async fn sweep_flows(flows: Arc<FlowTable>, file: Option<crate::flow_store::FlowFile>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        every.tick().await;
        let now = crate::port::now_secs();
        let cleared = flows.sweep(now);
        tracing::trace!(cleared, "swept the translated-flow table");
        if let Some(f) = &file {
            match f.mark_swept(now) {
                Ok(()) => warned = false,
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "cannot record the flow table's sweep; after a long outage the next switchd will start with an empty table");
                }
                Err(_) => {}
            }
        }
    }
}

/// Send the health probes [`Health::plan`] picks, every interval, through the tunnel, until
/// the switch is gone (see `crate::health`).
async fn run_probes(sw: std::sync::Weak<Switch>) {
    let Some(interval) = sw.upgrade().and_then(|s| s.health.interval()) else {
        return;
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scratch = vec![0u8; crate::port::SEGMENT_BUF_LEN];
    let mut sealed = vec![0u8; crate::port::SEGMENT_BUF_LEN];
    loop {
        tick.tick().await;
        let Some(sw) = sw.upgrade() else { return };
        let snap = sw.snapshot();
        if snap.tunnel.is_none() {
            continue;
        }
        let names: Vec<&str> = snap.peers.iter().map(|p| p.peer.name.as_str()).collect();
        let table = &snap.table;
        for (i, seq, size) in sw.health.plan(&names, table.tunnel_mtu, sw.mtu) {
            let (Some(route), Some(peer)) = (table.peers.get(i), snap.peers.get(i)) else {
                continue;
            };
            let mut frame = crate::datapath::probe::echo_request(
                table.router_mac,
                route.mac,
                table.gateway,
                crate::datapath::table::gateway_of(route.pod_cidr),
                seq,
                size as usize,
            );
            crate::worker::to_peer::send(
                &snap,
                &mut frame,
                i,
                peer,
                &mut scratch,
                &mut sealed,
                &sw.stats,
                0,
            );
        }
    }
}

/// Drive every WireGuard session's timers: handshake retries, rekeying, keepalives and
/// expiry, as the protocol times them (it wants a look about every 100-250 ms).
async fn run_wireguard_timers(sw: std::sync::Weak<Switch>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 256];
    for n in 0u64.. {
        tick.tick().await;
        let Some(sw) = sw.upgrade() else { return };
        let Some(wg) = sw.wireguard.clone() else {
            return;
        };
        let snap = sw.snapshot();
        wg.tick(&snap.peers, &mut buf, &sw.stats, n % 4 == 0);
    }
}
