//! Cluster membership: where this node's subnet and its peers come from.
//!
//! `membership = "static"` is the config file and peers file. `membership = "etcd"` leases
//! a subnet and publishes this node in etcd, and watches the other nodes there
//! ([`etcd`]). This module holds the parts without I/O: the records stored in etcd, the
//! key layout, and which subnet to try next.
//!
//! Keys, under the prefix (default `/switchd/`):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `subnets/<a.b.c.d>-<len>` | the holder's node name | the holder's |
//! | `nodes/<name>` | [`NodeRecord`] as JSON | the node's |
//! | `reservations/<name>` | the node's subnet, e.g. `10.244.3.0/24` | none: it outlives the node |
//!
//! The reservation is what makes a node get the same subnet back after any restart, even
//! one longer than its lease: other nodes take a subnet reserved for someone else only
//! when no unreserved one is left.

pub mod etcd;
pub mod kube;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::config::{overlaps, Config, Peer};
use crate::datapath::frame::{format_mac, parse_mac};

/// What a node publishes about itself: everything a peer needs to reach its pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    /// IPv4 or IPv6 (serialised as the address's text either way).
    pub underlay_addr: IpAddr,
    pub tunnel_port: u16,
    pub vni: u32,
    pub router_mac: String,
    pub pod_cidr: Ipv4Net,
    /// The node's IPv6 pod prefix, when it is dual-stack; older records lack it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr_v6: Option<ipnet::Ipv6Net>,
    pub version: String,
    /// When this node's switchd took its lease, seconds since the Unix epoch.
    pub since_unix: u64,
    /// The node's WireGuard public key (base64), when it encrypts; older records lack it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_port: Option<u16>,
}

impl NodeRecord {
    pub fn of(cfg: &Config, since_unix: u64) -> Option<NodeRecord> {
        Some(NodeRecord {
            name: cfg.node_name.clone(),
            underlay_addr: cfg.underlay_addr?,
            tunnel_port: cfg.tunnel_port,
            vni: cfg.vni,
            router_mac: format_mac(cfg.router_mac),
            pod_cidr: cfg.pod_cidr,
            pod_cidr_v6: cfg.ipv6.map(|v6| v6.pod_cidr),
            version: env!("CARGO_PKG_VERSION").into(),
            since_unix,
            public_key: cfg
                .encryption
                .wireguard()
                .and_then(|w| w.public_key.as_ref())
                .map(crate::config::format_wireguard_key),
            wireguard_port: cfg.encryption.wireguard().map(|w| w.port),
        })
    }

    /// This record as a peer of `cfg`'s node, or why it cannot be one.
    pub fn to_peer(&self, cfg: &Config) -> Result<Peer, String> {
        if self.vni != cfg.vni {
            return Err(format!("its VNI {} is not ours ({})", self.vni, cfg.vni));
        }
        if let Some(ours) = cfg.underlay_addr {
            if ours.is_ipv4() != self.underlay_addr.is_ipv4() {
                return Err(format!(
                    "its underlay address {} is not of our underlay's family ({ours})",
                    self.underlay_addr
                ));
            }
        }
        if !cfg.cluster_cidr.contains(&self.pod_cidr) {
            return Err(format!(
                "its subnet {} is outside cluster_cidr {}",
                self.pod_cidr, cfg.cluster_cidr
            ));
        }
        if overlaps(self.pod_cidr, cfg.pod_cidr) {
            return Err(format!("its subnet {} overlaps ours", self.pod_cidr));
        }
        let mac = parse_mac(&self.router_mac)
            .filter(|m| m[0] & 1 == 0)
            .ok_or_else(|| format!("router_mac {:?} is not a unicast MAC", self.router_mac))?;
        let pod_cidr_v6 = match (cfg.ipv6, self.pod_cidr_v6) {
            (Some(ours), Some(net)) => {
                if !ours.cluster_cidr.contains(&net) {
                    return Err(format!(
                        "its IPv6 prefix {net} is outside cluster_cidr_v6 {}",
                        ours.cluster_cidr
                    ));
                }
                if crate::config::overlaps_v6(net, ours.pod_cidr) {
                    return Err(format!("its IPv6 prefix {net} overlaps ours"));
                }
                Some(net)
            }
            _ => None,
        };
        let wireguard = match (&self.public_key, self.wireguard_port) {
            (Some(k), Some(port)) => Some(crate::config::WireGuardPeer {
                public_key: crate::config::parse_wireguard_key(k)
                    .ok_or_else(|| format!("public_key {k:?} is not a WireGuard key"))?,
                addr: std::net::SocketAddr::new(self.underlay_addr, port),
            }),
            (None, None) => None,
            _ => {
                return Err(
                    "it has a public_key without a wireguard_port, or the other way round".into(),
                )
            }
        };
        Ok(Peer {
            name: self.name.clone(),
            addr: std::net::SocketAddr::new(self.underlay_addr, self.tunnel_port),
            pod_cidr: self.pod_cidr,
            pod_cidr_v6,
            mac,
            wireguard,
        })
    }
}

/// The peers `cfg`'s node takes from `records` (its own record left out), sorted by name,
/// and the records it refuses with the reason. Two records whose subnets overlap cannot
/// both be peers (the claim transaction makes that impossible unless someone wrote etcd
/// by hand): the first name wins, the same on every node.
///
/// Costs O(n log n) for n records: the accepted subnets are kept in a map ordered by their
/// first address, and prefixes either nest or are disjoint, so a new subnet overlaps an
/// accepted one only if the nearest one starting at or before it reaches into it, or one
/// starts inside it.
pub fn peers_of<'a>(
    records: impl IntoIterator<Item = &'a NodeRecord>,
    cfg: &Config,
) -> (Vec<Peer>, Vec<(String, String)>) {
    let mut records: Vec<&NodeRecord> = records
        .into_iter()
        .filter(|r| r.name != cfg.node_name)
        .collect();
    records.sort_by(|a, b| a.name.cmp(&b.name));
    let mut taken: BTreeMap<u32, (u32, usize)> = BTreeMap::new();
    let mut peers: Vec<Peer> = Vec::with_capacity(records.len());
    let mut refused = Vec::new();
    for r in records {
        let p = match r.to_peer(cfg) {
            Ok(p) => p,
            Err(why) => {
                refused.push((r.name.clone(), why));
                continue;
            }
        };
        let (start, end) = (
            u32::from(p.pod_cidr.network()),
            u32::from(p.pod_cidr.broadcast()),
        );
        let holder = taken
            .range(..=start)
            .next_back()
            .filter(|(_, (e, _))| *e >= start)
            .or_else(|| taken.range(start..=end).next())
            .map(|(_, (_, i))| *i);
        match holder {
            Some(i) => refused.push((
                r.name.clone(),
                format!(
                    "its subnet {} overlaps {}'s {}",
                    p.pod_cidr, peers[i].name, peers[i].pod_cidr
                ),
            )),
            None => {
                taken.insert(start, (end, peers.len()));
                peers.push(p);
            }
        }
    }
    (peers, refused)
}

/// `10.244.3.0/24` → `10.244.3.0-24` (a key segment without a second '/').
pub fn subnet_key(subnet: Ipv4Net) -> String {
    format!("{}-{}", subnet.network(), subnet.prefix_len())
}

pub fn parse_subnet_key(key: &str) -> Option<Ipv4Net> {
    let (addr, len) = key.rsplit_once('-')?;
    Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()
}

/// The order in which a node tries the free subnets of `cluster`: all of them, starting
/// at a place derived from its name, so that nodes starting together mostly try different
/// subnets first instead of all racing for the lowest one.
pub fn candidates(cluster: Ipv4Net, len: u8, node_name: &str) -> Vec<Ipv4Net> {
    let all: Vec<Ipv4Net> = match cluster.subnets(len) {
        Ok(s) => s.collect(),
        Err(_) => return Vec::new(),
    };
    if all.is_empty() {
        return all;
    }
    let start = (fnv1a(node_name.as_bytes()) % all.len() as u64) as usize;
    all[start..].iter().chain(&all[..start]).copied().collect()
}

/// Which subnet to try to claim, given the subnets held under a live lease (`held`) and
/// the reservations (`reserved`: subnet → node). Unreserved subnets first; then, when the
/// cluster is full of reservations, one reserved by a node that holds nothing now.
pub fn choose(
    order: &[Ipv4Net],
    held: &HashSet<Ipv4Net>,
    reserved: &HashMap<Ipv4Net, String>,
    me: &str,
    skip: &HashSet<Ipv4Net>,
) -> Option<Ipv4Net> {
    let free = |s: &&Ipv4Net| !held.contains(s) && !skip.contains(s);
    order
        .iter()
        .filter(free)
        .find(|s| reserved.get(s).is_none_or(|owner| owner == me))
        .or_else(|| order.iter().find(free))
        .copied()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

// State files both membership sources keep in `state_dir`, and the clock they stamp.

/// `path` parsed as JSON; `None` (with a warning when it exists but does not parse).
pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "ignoring a state file that does not parse");
            None
        }
    }
}

/// Write `value` as JSON to `path` atomically (temp file, fsync, rename).
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(value)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn subnet_keys_round_trip() {
        let s = net("10.244.3.0/24");
        assert_eq!(subnet_key(s), "10.244.3.0-24");
        assert_eq!(parse_subnet_key(&subnet_key(s)), Some(s));
        assert_eq!(parse_subnet_key("garbage"), None);
    }

    #[test]
    fn candidates_cover_the_cluster_once_from_a_name_dependent_start() {
        let cluster = net("10.244.0.0/20");
        let a = candidates(cluster, 24, "node-a");
        let b = candidates(cluster, 24, "node-b");
        assert_eq!(a.len(), 16);
        let set: HashSet<_> = a.iter().collect();
        assert_eq!(set.len(), 16);
        assert_ne!(a[0], b[0], "different names start at different places");
        assert!(candidates(net("10.244.0.0/24"), 23, "x").is_empty());
    }

    #[test]
    fn choose_prefers_unreserved_then_reclaims_a_dead_nodes_reservation() {
        let order = vec![net("10.0.0.0/24"), net("10.0.1.0/24"), net("10.0.2.0/24")];
        let mut held = HashSet::new();
        let mut reserved = HashMap::new();
        let none = HashSet::new();
        reserved.insert(order[0], "gone".to_string());
        assert_eq!(
            choose(&order, &held, &reserved, "me", &none),
            Some(order[1])
        );
        // Our own reservation counts as ours.
        reserved.insert(order[1], "me".to_string());
        assert_eq!(
            choose(&order, &held, &reserved, "me", &none),
            Some(order[1])
        );
        held.insert(order[1]);
        held.insert(order[2]);
        // Only a reservation of a node that holds nothing is left.
        assert_eq!(
            choose(&order, &held, &reserved, "me", &none),
            Some(order[0])
        );
        held.insert(order[0]);
        assert_eq!(choose(&order, &held, &reserved, "me", &none), None);
    }

    #[test]
    fn a_record_becomes_a_peer_only_if_it_fits_this_node() {
        let cfg = Config::parse(
            "node_name = \"a\"\npod_cidr = \"10.244.1.0/24\"\nunderlay_addr = \"192.168.0.1\"\n",
            Default::default(),
        )
        .unwrap();
        let rec = NodeRecord {
            name: "b".into(),
            underlay_addr: "192.168.0.2".parse().unwrap(),
            tunnel_port: 8472,
            vni: 1,
            router_mac: "0a:58:0a:f4:02:01".into(),
            pod_cidr: net("10.244.2.0/24"),
            pod_cidr_v6: None,
            version: "0".into(),
            since_unix: 0,
            public_key: None,
            wireguard_port: None,
        };
        let peer = rec.to_peer(&cfg).unwrap();
        assert_eq!(peer.addr.to_string(), "192.168.0.2:8472");
        assert!(NodeRecord {
            vni: 7,
            ..rec.clone()
        }
        .to_peer(&cfg)
        .is_err());
        assert!(NodeRecord {
            pod_cidr: net("10.244.1.0/24"),
            ..rec.clone()
        }
        .to_peer(&cfg)
        .is_err());
        assert!(NodeRecord {
            pod_cidr: net("10.9.0.0/24"),
            ..rec.clone()
        }
        .to_peer(&cfg)
        .is_err());
        assert!(NodeRecord {
            router_mac: "ff:ff:ff:ff:ff:ff".into(),
            ..rec
        }
        .to_peer(&cfg)
        .is_err());
    }

    #[test]
    fn peers_of_refuses_overlaps_first_name_wins_nested_either_way() {
        let cfg = Config::parse(
            "node_name = \"a\"\npod_cidr = \"10.244.1.0/24\"\ncluster_cidr = \"10.244.0.0/16\"\nunderlay_addr = \"192.168.0.1\"\n",
            Default::default(),
        )
        .unwrap();
        let rec = |name: &str, cidr: &str| NodeRecord {
            name: name.into(),
            underlay_addr: "192.168.0.2".parse().unwrap(),
            tunnel_port: 8472,
            vni: 1,
            router_mac: "0a:58:0a:f4:02:01".into(),
            pod_cidr: net(cidr),
            pod_cidr_v6: None,
            version: "0".into(),
            since_unix: 0,
            public_key: None,
            wireguard_port: None,
        };
        let records = [
            rec("d", "10.244.8.0/22"),  // holds 10.244.8.0 – 10.244.11.255
            rec("e", "10.244.9.0/24"),  // inside d's, but d is refused: e stays
            rec("c", "10.244.10.0/24"), // sorts before d, so c wins and d is refused
            rec("b", "10.244.2.0/24"),
            rec("f", "10.244.12.0/23"),
            rec("g", "10.244.13.0/24"), // inside f's
            rec("h", "10.244.14.0/24"), // touches f's end, no overlap
            rec("a", "10.244.3.0/24"),  // our own name: left out
            rec("i", "10.244.1.0/24"),  // our subnet
            rec("j", "10.244.0.0/23"),  // contains ours
        ];
        let (peers, refused) = peers_of(&records, &cfg);
        let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["b", "c", "e", "f", "h"]);
        let refused: Vec<&str> = refused.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(refused, ["d", "g", "i", "j"]);
    }

    #[test]
    fn peers_of_keeps_the_first_of_each_duplicated_subnet_among_thousands() {
        let cfg = Config::parse(
            "node_name = \"me\"\npod_cidr = \"10.0.0.0/24\"\ncluster_cidr = \"10.0.0.0/8\"\nunderlay_addr = \"192.168.0.1\"\n",
            Default::default(),
        )
        .unwrap();
        let records: Vec<NodeRecord> = (1..=20_000u32)
            .map(|i| NodeRecord {
                name: format!("sim-{i:05}"),
                underlay_addr: Ipv4Addr::from(0xc612_0000 + i).into(),
                tunnel_port: 8472,
                vni: 1,
                router_mac: "0a:58:0a:f4:02:01".into(),
                // Every 10th record repeats the previous one's subnet.
                pod_cidr: Ipv4Net::new(
                    Ipv4Addr::from((10 << 24) + ((i - u32::from(i % 10 == 0)) << 8)),
                    24,
                )
                .unwrap(),
                pod_cidr_v6: None,
                version: "0".into(),
                since_unix: 0,
                public_key: None,
                wireguard_port: None,
            })
            .collect();
        let (peers, refused) = peers_of(&records, &cfg);
        assert_eq!(peers.len(), 18_000);
        assert_eq!(refused.len(), 2_000);
        assert!(refused
            .iter()
            .all(|(n, why)| n.ends_with('0') && why.contains("overlaps")));
    }
}
