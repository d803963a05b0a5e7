//! `membership = "etcd"`: lease a subnet, publish this node, watch the others.
//!
//! Start ([`join`]): connect, take a lease, claim a subnet with a transaction that creates
//! the subnet key only if it is absent (or already ours), publish the node record, read the
//! other nodes. Then [`run`] keeps the lease alive and applies every change under
//! `nodes/` to the switch's peers, until the process ends.
//!
//! Forwarding never waits for etcd. When etcd cannot be reached, switchd keeps the peers
//! it knows, says so (`switchctl status`, logs), and retries with backoff; a node that
//! starts while etcd is down uses the subnet it remembers (`state_dir/membership.json`) and
//! the peers it last saw (`state_dir/etcd-peers.json`). When etcd is back, the node
//! re-establishes its lease and records. If another node holds its subnet by then, it says
//! so loudly and keeps its pods' addresses: it never renumbers them on its own.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use switchd_proto::MembershipInfo;

use super::{
    candidates, choose, now_unix, parse_subnet_key, read_json, subnet_key, write_json, NodeRecord,
};
use crate::config::{Config, EtcdConfig};
use crate::switch::Switch;
use crate::tunnel::PeerSource;

/// How long one etcd request may take before we call etcd unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
const LOCAL_CLAIM: &str = "membership.json";
const PEER_CACHE: &str = "etcd-peers.json";
/// The longest a change to `nodes/` waits before it is published to the forwarding table:
/// changes that arrive within this window of the last publication are published together.
pub const COALESCE: Duration = Duration::from_millis(100);
/// How often, at most, the peer cache in `state_dir` is rewritten while nodes change: the
/// first change after a quiet second is written at once, a burst's tail a second later.
const CACHE_EVERY: Duration = Duration::from_secs(1);
/// How many refused records are named one by one in the log per publication.
const LOG_NAMES: usize = 10;

/// What this node remembers of its claim, so a restart asks for the same subnet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct LocalClaim {
    node_name: String,
    subnet: Ipv4Net,
    cluster_cidr: Ipv4Net,
}

/// The outcome of [`join`]: this node's subnet and what it knows of the others.
pub struct Joined {
    pub subnet: Ipv4Net,
    client: Option<Client>,
    lease: i64,
    records: HashMap<String, NodeRecord>,
    since_unix: u64,
}

#[derive(Debug, thiserror::Error)]
enum ClaimError {
    #[error("etcd: {0:#}")]
    Etcd(anyhow::Error),
    #[error("subnet {subnet} is held by node {holder}")]
    Taken { subnet: Ipv4Net, holder: String },
    #[error("node_name {name:?} is already used by the live node at {other}; every node needs its own node_name")]
    NameInUse { name: String, other: IpAddr },
    #[error("no free /{len} left in cluster_cidr {cluster}: all {total} are held by live nodes ({holders})")]
    Exhausted {
        cluster: Ipv4Net,
        len: u8,
        total: usize,
        holders: String,
    },
}

impl From<etcd_client::Error> for ClaimError {
    fn from(e: etcd_client::Error) -> Self {
        ClaimError::Etcd(e.into())
    }
}

impl From<tokio::time::error::Elapsed> for ClaimError {
    fn from(_: tokio::time::error::Elapsed) -> Self {
        ClaimError::Etcd(anyhow!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))
    }
}

/// Keys under the configured prefix.
struct Keys<'a>(&'a str);

impl Keys<'_> {
    fn subnets(&self) -> String {
        format!("{}subnets/", self.0)
    }
    fn subnet(&self, s: Ipv4Net) -> String {
        format!("{}subnets/{}", self.0, subnet_key(s))
    }
    fn nodes(&self) -> String {
        format!("{}nodes/", self.0)
    }
    fn node(&self, name: &str) -> String {
        format!("{}nodes/{name}", self.0)
    }
    fn reservations(&self) -> String {
        format!("{}reservations/", self.0)
    }
    fn reservation(&self, name: &str) -> String {
        format!("{}reservations/{name}", self.0)
    }
}

async fn timed<T, E: Into<ClaimError>>(
    f: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<T, ClaimError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(e.into()),
    }
}

pub async fn connect(e: &EtcdConfig) -> Result<Client> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    if let Some(ca) = &e.ca {
        let pem =
            std::fs::read(ca).with_context(|| format!("etcd_ca: cannot read {}", ca.display()))?;
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(pem));
        if let Some((cert, key)) = &e.identity {
            let c = std::fs::read(cert)
                .with_context(|| format!("etcd_cert: cannot read {}", cert.display()))?;
            let k = std::fs::read(key)
                .with_context(|| format!("etcd_key: cannot read {}", key.display()))?;
            tls = tls.identity(Identity::from_pem(c, k));
        }
        opts = opts.with_tls(tls);
    }
    let client = tokio::time::timeout(
        REQUEST_TIMEOUT,
        Client::connect(e.endpoints.clone(), Some(opts)),
    )
    .await
    .map_err(|_| anyhow!("no connection within {} s", REQUEST_TIMEOUT.as_secs()))?
    .with_context(|| format!("cannot connect to {}", e.endpoints.join(", ")))?;
    Ok(client)
}

/// Claim `subnet` for `me` under `lease`: only if nobody holds it, or we already do. A
/// reservation another node had on it (`evict`) is removed in the same transaction.
async fn take(
    client: &mut Client,
    keys: &Keys<'_>,
    me: &str,
    lease: i64,
    subnet: Ipv4Net,
    evict: Option<&str>,
) -> std::result::Result<(), ClaimError> {
    let key = keys.subnet(subnet);
    let mut puts = vec![
        TxnOp::put(key.clone(), me, Some(PutOptions::new().with_lease(lease))),
        TxnOp::put(keys.reservation(me), subnet.to_string(), None),
    ];
    if let Some(other) = evict.filter(|o| *o != me) {
        puts.push(TxnOp::delete(keys.reservation(other), None));
    }
    for compare in [
        Compare::create_revision(key.clone(), CompareOp::Equal, 0),
        Compare::value(key.clone(), CompareOp::Equal, me),
    ] {
        let txn = Txn::new().when([compare]).and_then(puts.clone());
        if timed(client.txn(txn)).await?.succeeded() {
            return Ok(());
        }
    }
    let resp = timed(client.get(key, None)).await?;
    let holder = resp
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .unwrap_or_else(|| "(gone again)".into());
    Err(ClaimError::Taken { subnet, holder })
}

/// A live record under our name from another underlay address is another machine with
/// the same `node_name` (a cloned VM, a copied config): claiming would hand it our subnet.
/// A record from our own address is ourselves before a restart.
async fn check_name_free(
    client: &mut Client,
    keys: &Keys<'_>,
    cfg: &Config,
) -> std::result::Result<(), ClaimError> {
    let resp = timed(client.get(keys.node(&cfg.node_name), None)).await?;
    let Some(kv) = resp.kvs().first() else {
        return Ok(());
    };
    match serde_json::from_slice::<NodeRecord>(kv.value()) {
        Ok(r) if Some(r.underlay_addr) != cfg.underlay_addr => Err(ClaimError::NameInUse {
            name: cfg.node_name.clone(),
            other: r.underlay_addr,
        }),
        _ => Ok(()),
    }
}

/// Find and claim a subnet for `me`: `wanted` if given, else the one reserved for us, else
/// a free one.
async fn claim(
    client: &mut Client,
    keys: &Keys<'_>,
    cfg: &Config,
    e: &EtcdConfig,
    lease: i64,
    wanted: Option<Ipv4Net>,
) -> std::result::Result<Ipv4Net, ClaimError> {
    let me = cfg.node_name.as_str();
    check_name_free(client, keys, cfg).await?;
    if let Some(s) = wanted {
        take(client, keys, me, lease, s, None).await?;
        return Ok(s);
    }
    let resp = timed(client.get(keys.reservation(me), None)).await?;
    if let Some(s) = resp
        .kvs()
        .first()
        .and_then(|kv| {
            std::str::from_utf8(kv.value())
                .ok()?
                .parse::<Ipv4Net>()
                .ok()
        })
        .filter(|s| cfg.cluster_cidr.contains(s) && s.prefix_len() == e.subnet_len)
    {
        match take(client, keys, me, lease, s, None).await {
            Ok(()) => return Ok(s),
            Err(ClaimError::Taken { holder, .. }) => {
                tracing::warn!(subnet = %s, holder = %holder, "the subnet reserved for this node is held by another node; taking a new one");
            }
            Err(other) => return Err(other),
        }
    }
    let order = candidates(cfg.cluster_cidr, e.subnet_len, me);
    let mut tried = HashSet::new();
    loop {
        let held_kvs =
            timed(client.get(keys.subnets(), Some(GetOptions::new().with_prefix()))).await?;
        let mut held = HashSet::new();
        let mut holders = Vec::new();
        for kv in held_kvs.kvs() {
            let k = String::from_utf8_lossy(kv.key());
            if let Some(s) = parse_subnet_key(k.rsplit('/').next().unwrap_or("")) {
                held.insert(s);
                holders.push(format!("{}={s}", String::from_utf8_lossy(kv.value())));
            }
        }
        let res_kvs =
            timed(client.get(keys.reservations(), Some(GetOptions::new().with_prefix()))).await?;
        let reserved: HashMap<Ipv4Net, String> = res_kvs
            .kvs()
            .iter()
            .filter_map(|kv| {
                let node = String::from_utf8_lossy(kv.key())
                    .rsplit('/')
                    .next()?
                    .to_string();
                let s = std::str::from_utf8(kv.value()).ok()?.parse().ok()?;
                Some((s, node))
            })
            .collect();
        let Some(pick) = choose(&order, &held, &reserved, me, &tried) else {
            holders.sort();
            return Err(ClaimError::Exhausted {
                cluster: cfg.cluster_cidr,
                len: e.subnet_len,
                total: order.len(),
                holders: holders.join(", "),
            });
        };
        let evict = reserved.get(&pick).map(String::as_str);
        match take(client, keys, me, lease, pick, evict).await {
            Ok(()) => {
                if let Some(other) = evict.filter(|o| *o != me) {
                    tracing::warn!(subnet = %pick, previous = %other, "took over the subnet reserved for a node that holds no lease; that node gets a new subnet when it returns");
                }
                return Ok(pick);
            }
            Err(ClaimError::Taken { .. }) => {
                // Another node was faster; try the next one.
                tried.insert(pick);
            }
            Err(other) => return Err(other),
        }
    }
}

/// Publish our record and read everyone's: (records by name, revision of the read).
async fn publish_and_list(
    client: &mut Client,
    keys: &Keys<'_>,
    record: &NodeRecord,
    lease: i64,
) -> std::result::Result<(HashMap<String, NodeRecord>, i64), ClaimError> {
    let value = serde_json::to_vec(record).expect("record serialises");
    timed(client.put(
        keys.node(&record.name),
        value,
        Some(PutOptions::new().with_lease(lease)),
    ))
    .await?;
    let resp = timed(client.get(keys.nodes(), Some(GetOptions::new().with_prefix()))).await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let mut records = HashMap::new();
    for kv in resp.kvs() {
        match serde_json::from_slice::<NodeRecord>(kv.value()) {
            Ok(r) => {
                records.insert(r.name.clone(), r);
            }
            Err(err) => {
                tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %err, "ignoring a node record that does not parse")
            }
        }
    }
    Ok((records, revision))
}

/// Find this node's subnet before the switch starts. Waits (with backoff) for etcd when
/// it has nothing to go on; with a remembered subnet it starts without etcd instead.
pub async fn join(cfg: &Config) -> Result<Joined> {
    let e = cfg.etcd().context("join needs membership = \"etcd\"")?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create state_dir {}", cfg.state_dir.display()))?;
    let local_path = cfg.state_dir.join(LOCAL_CLAIM);
    let local: Option<LocalClaim> = read_json(&local_path);
    if let Some(l) = &local {
        if l.node_name != cfg.node_name || !cfg.cluster_cidr.contains(&l.subnet) {
            bail!(
                "{} says this node is {:?} with subnet {} of {}, but the config says node {:?} in cluster_cidr {}; remove the file only if this node's pods are gone",
                local_path.display(),
                l.node_name,
                l.subnet,
                l.cluster_cidr,
                cfg.node_name,
                cfg.cluster_cidr
            );
        }
    }
    if let (Some(l), Some(fixed)) = (&local, e.fixed_subnet) {
        if l.subnet != fixed {
            bail!("pod_cidr: {fixed} is configured, but this node's pods use {} ({}); remove the file only if they are gone", l.subnet, local_path.display());
        }
    }
    let wanted = e.fixed_subnet.or(local.as_ref().map(|l| l.subnet));
    let keys = Keys(&e.prefix);
    let mut backoff = Duration::from_millis(500);
    loop {
        let attempt = async {
            let mut client = connect(e).await.map_err(ClaimError::Etcd)?;
            let lease = timed(client.lease_grant(i64::from(e.lease_ttl), None))
                .await?
                .id();
            let subnet = claim(&mut client, &keys, cfg, e, lease, wanted).await?;
            let since = now_unix();
            let mut mine = cfg.clone();
            mine.assign_pod_cidr(subnet).map_err(ClaimError::Etcd)?;
            let record = NodeRecord::of(&mine, since).expect("etcd mode has an underlay");
            let (records, _) = publish_and_list(&mut client, &keys, &record, lease).await?;
            Ok::<_, ClaimError>(Joined {
                subnet,
                client: Some(client),
                lease,
                records,
                since_unix: since,
            })
        };
        match attempt.await {
            Ok(joined) => {
                write_json(
                    &local_path,
                    &LocalClaim {
                        node_name: cfg.node_name.clone(),
                        subnet: joined.subnet,
                        cluster_cidr: cfg.cluster_cidr,
                    },
                )?;
                tracing::info!(subnet = %joined.subnet, lease = format!("{:x}", joined.lease), nodes = joined.records.len(), endpoints = ?e.endpoints, "leased this node's subnet from etcd");
                return Ok(joined);
            }
            Err(ClaimError::Etcd(err)) => match wanted {
                Some(subnet) => {
                    let records: HashMap<String, NodeRecord> =
                        read_json::<Vec<NodeRecord>>(&cfg.state_dir.join(PEER_CACHE))
                            .unwrap_or_default()
                            .into_iter()
                            .map(|r| (r.name.clone(), r))
                            .collect();
                    tracing::warn!(error = %format!("{err:#}"), subnet = %subnet, cached_peers = records.len(), "etcd is unreachable; starting with the subnet this node holds and the peers it last saw, and claiming it when etcd answers");
                    return Ok(Joined {
                        subnet,
                        client: None,
                        lease: 0,
                        records,
                        since_unix: now_unix(),
                    });
                }
                None => {
                    tracing::warn!(error = %format!("{err:#}"), retry_in_ms = backoff.as_millis() as u64, "etcd is unreachable and this node has no subnet yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            },
            Err(ClaimError::Taken { subnet, holder }) => bail!(
                "subnet {subnet}, which this node's pods use, is held by node {holder:?} in etcd; refusing to renumber pods. Stop {holder:?} or, if this node's pods are gone, remove {} and restart to lease a new subnet",
                local_path.display()
            ),
            Err(exhausted @ ClaimError::Exhausted { .. }) => bail!(
                "{exhausted}; make cluster_cidr larger, node_subnet_len longer, or remove nodes"
            ),
            Err(dup @ ClaimError::NameInUse { .. }) => bail!("{dup}"),
        }
    }
}

/// One connected stretch: (re-)establish the lease and records, then keep the lease
/// alive and follow `nodes/` until something fails.
struct Session<'a> {
    sw: &'a Switch,
    e: &'a EtcdConfig,
    keys: Keys<'a>,
    client: Option<Client>,
    lease: i64,
    records: HashMap<String, NodeRecord>,
    since_unix: u64,
    last_error: String,
    /// Records changed since the last publication.
    pending: bool,
    last_apply: std::time::Instant,
    /// Records changed since the peer cache was last written.
    cache_dirty: bool,
    cache_written: std::time::Instant,
    /// Changes received from the watch, and the publications they caused.
    events: u64,
    publications: u64,
}

impl Session<'_> {
    fn set_state(&self, state: &str) {
        let mut m = self.sw.membership.lock().unwrap();
        let info = m.get_or_insert_with(MembershipInfo::default);
        if info.state != state {
            info.since_unix = now_unix();
        }
        info.mode = "etcd".into();
        info.state = state.into();
        info.endpoints = self.e.endpoints.clone();
        info.lease_id = self.lease;
        info.lease_ttl = self.e.lease_ttl;
        info.subnet = self.sw.cfg.pod_cidr.to_string();
        info.last_error = self.last_error.clone();
        info.events = self.events;
        info.publications = self.publications;
        info.peers = self
            .records
            .keys()
            .filter(|n| **n != self.sw.cfg.node_name)
            .count();
    }

    /// Turn the records into the switch's etcd peers: one table publication for however
    /// many records changed since the last one. The cache for a start without etcd is
    /// written at most every [`CACHE_EVERY`] ([`Session::flush_cache`]).
    fn apply(&mut self) {
        let (peers, refused) = super::peers_of(self.records.values(), &self.sw.cfg);
        for (node, why) in refused.iter().take(LOG_NAMES) {
            tracing::warn!(node = %node, reason = %why, "ignoring node from etcd");
        }
        if refused.len() > LOG_NAMES {
            tracing::warn!(
                more = refused.len() - LOG_NAMES,
                "ignoring more nodes from etcd for the same kinds of reasons"
            );
        }
        self.sw.set_peers(PeerSource::Etcd, &peers);
        self.publications += 1;
        self.last_apply = std::time::Instant::now();
        self.pending = false;
        self.cache_dirty = true;
        self.flush_cache(false);
    }

    /// Write the records for a start without etcd, if they changed and `force` or the last
    /// write is [`CACHE_EVERY`] old.
    fn flush_cache(&mut self, force: bool) {
        if !self.cache_dirty || !(force || self.cache_written.elapsed() >= CACHE_EVERY) {
            return;
        }
        let mut cache: Vec<&NodeRecord> = self.records.values().collect();
        cache.sort_by(|a, b| a.name.cmp(&b.name));
        if let Err(err) = write_json(&self.sw.cfg.state_dir.join(PEER_CACHE), &cache) {
            tracing::warn!(error = %format!("{err:#}"), "cannot cache the peers from etcd");
        }
        self.cache_dirty = false;
        self.cache_written = std::time::Instant::now();
    }

    /// Fold one watch response into the records; a change marks them pending.
    fn fold(&mut self, resp: &etcd_client::WatchResponse) -> std::result::Result<(), ClaimError> {
        let me = &self.sw.cfg.node_name;
        self.events += resp.events().len() as u64;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let name = String::from_utf8_lossy(kv.key())
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string();
            match ev.event_type() {
                EventType::Put => match serde_json::from_slice::<NodeRecord>(kv.value()) {
                    Ok(r) => {
                        if self.records.get(&r.name) != Some(&r) {
                            tracing::debug!(node = %r.name, subnet = %r.pod_cidr, underlay = %r.underlay_addr, "node joined or changed");
                            self.records.insert(r.name.clone(), r);
                            self.pending = true;
                        }
                    }
                    Err(err) => {
                        tracing::warn!(node = %name, error = %err, "ignoring a node record that does not parse")
                    }
                },
                EventType::Delete => {
                    if name == *me {
                        return Err(ClaimError::Etcd(anyhow!(
                            "this node's own record was deleted"
                        )));
                    }
                    if self.records.remove(&name).is_some() {
                        tracing::debug!(node = %name, "node left (lease expired or removed)");
                        self.pending = true;
                    }
                }
            }
        }
        Ok(())
    }

    async fn run(&mut self) -> std::result::Result<(), ClaimError> {
        let mut client = match self.client.take() {
            Some(c) => c,
            None => connect(self.e).await.map_err(ClaimError::Etcd)?,
        };
        if self.lease != 0 {
            let ttl = timed(client.lease_time_to_live(self.lease, None))
                .await?
                .ttl();
            if ttl <= 0 {
                tracing::warn!(
                    lease = format!("{:x}", self.lease),
                    "this node's etcd lease expired; taking a new one"
                );
                self.lease = 0;
            }
        }
        if self.lease == 0 {
            self.lease = timed(client.lease_grant(i64::from(self.e.lease_ttl), None))
                .await?
                .id();
        }
        let cfg = &self.sw.cfg;
        take(
            &mut client,
            &self.keys,
            &cfg.node_name,
            self.lease,
            cfg.pod_cidr,
            None,
        )
        .await?;
        let record = NodeRecord::of(cfg, self.since_unix).expect("etcd mode has an underlay");
        let (records, revision) =
            publish_and_list(&mut client, &self.keys, &record, self.lease).await?;
        self.records = records;
        self.last_error.clear();
        self.apply();
        self.set_state("connected");
        tracing::info!(
            lease = format!("{:x}", self.lease),
            nodes = self.records.len(),
            "connected to etcd; following nodes"
        );

        let mut watch = timed(
            client.watch(
                self.keys.nodes(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            ),
        )
        .await?;
        let (mut keeper, mut acks) = timed(client.lease_keep_alive(self.lease)).await?;
        let every = Duration::from_millis(u64::from(self.e.lease_ttl) * 1000 / 3)
            .max(Duration::from_millis(500));
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    timed(keeper.keep_alive()).await?;
                    match timed(acks.message()).await? {
                        Some(ack) if ack.ttl() > 0 => {}
                        _ => return Err(ClaimError::Etcd(anyhow!("lease {:x} expired", self.lease))),
                    }
                }
                msg = watch.message() => {
                    let Some(resp) = msg? else {
                        return Err(ClaimError::Etcd(anyhow!("the watch on {} ended", self.keys.nodes())));
                    };
                    if resp.canceled() {
                        return Err(ClaimError::Etcd(anyhow!("etcd cancelled the watch: {}", resp.cancel_reason())));
                    }
                    self.fold(&resp)?;
                }
                // A change is published at once when the last publication is older than
                // COALESCE, else when it is: one publication per window however many
                // records a burst brings.
                _ = tokio::time::sleep_until((self.last_apply + COALESCE).into()), if self.pending => {
                    self.apply();
                    self.set_state("connected");
                }
                _ = tokio::time::sleep_until((self.cache_written + CACHE_EVERY).into()), if self.cache_dirty => {
                    self.flush_cache(false);
                }
            }
        }
    }
}

/// Follow etcd for as long as switchd runs. Never returns; never stops forwarding.
pub async fn run(sw: Arc<Switch>, joined: Joined) {
    let Some(e) = sw.cfg.etcd().cloned() else {
        return;
    };
    let mut s = Session {
        sw: &sw,
        e: &e,
        keys: Keys(&e.prefix),
        client: joined.client,
        lease: joined.lease,
        records: joined.records,
        since_unix: joined.since_unix,
        last_error: String::new(),
        pending: false,
        last_apply: std::time::Instant::now(),
        cache_dirty: false,
        cache_written: std::time::Instant::now()
            .checked_sub(CACHE_EVERY)
            .unwrap_or_else(std::time::Instant::now),
        events: 0,
        publications: 0,
    };
    s.apply();
    s.set_state(if s.client.is_some() {
        "connected"
    } else {
        "unreachable"
    });
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = std::time::Instant::now();
        let err = match s.run().await {
            Ok(()) => continue,
            Err(err) => err,
        };
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(500);
        }
        s.last_error = err.to_string();
        if s.pending {
            s.apply();
        }
        s.flush_cache(true);
        match &err {
            ClaimError::Taken { subnet, holder } => {
                s.set_state("subnet_lost");
                tracing::error!(subnet = %subnet, holder = %holder, "ANOTHER NODE HOLDS THIS NODE'S SUBNET in etcd; pods keep their addresses and this node is not published; stop that node or drain this one");
            }
            _ => {
                s.set_state("unreachable");
                tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, peers = s.records.len().saturating_sub(1), "etcd is unreachable; forwarding continues with the last known peers");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
