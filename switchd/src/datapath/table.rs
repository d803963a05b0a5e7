//! The forwarding table the core reads: an immutable value, rebuilt by the control plane on
//! every attach or detach and published as a whole (see `crate::switch`), so readers never
//! wait and never see half an update.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// A port number. 0 is always the host port (`switchd0`).
pub type PortId = u32;
pub const HOST_PORT: PortId = 0;

/// Where an address lives: which port, and the MAC to put in the frame for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub port: PortId,
    pub mac: [u8; 6],
}

/// What the core needs to know about a port itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortEntry {
    /// The only source address this port may send from; `None` for the host port, which
    /// carries the node's traffic from any of its addresses.
    pub allowed_src: Option<Ipv4Addr>,
    /// The only IPv6 source a pod port may send from; `None` on a pod port without an
    /// IPv6 address (it may send none). The host port is never checked.
    pub allowed_src6: Option<Ipv6Addr>,
}

/// The IPv6 half of a dual-stack node: its own prefix, the cluster's, and the pods in it.
#[derive(Debug, Clone)]
pub struct Table6 {
    /// The prefix's `::1`: the pods' IPv6 gateway, on the host port.
    pub gateway: Ipv6Addr,
    pub pod_cidr: Ipv6Net,
    pub cluster_cidr: Ipv6Net,
    /// Every IPv6 address the switch answers for: pods, and the gateway on the host port.
    pub by_ip: HashMap<u128, Endpoint, FastU32>,
}

#[derive(Debug, Clone)]
pub struct Table {
    pub router_mac: [u8; 6],
    pub gateway: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub cluster_cidr: Ipv4Net,
    /// Largest Ethernet payload a port accepts without segmentation offload.
    pub mtu: u32,
    /// Every address the switch answers for: pods, and the gateway on the host port.
    pub by_ip: HashMap<u32, Endpoint, FastU32>,
    pub ports: HashMap<PortId, PortEntry, FastU32>,
    /// Largest IP packet the tunnel carries (underlay MTU minus VXLAN overhead).
    pub tunnel_mtu: u32,
    /// Answer packets too big for the tunnel with ICMP "fragmentation needed".
    pub icmp_frag_needed: bool,
    /// Other nodes, indexed by the position the shell uses for their sockets and counters.
    pub peers: Vec<PeerRoute>,
    peer_index: HashMap<u64, usize, FastU32>,
    peer_prefix_lens: Vec<u8>,
    /// IPv6, on a dual-stack node; `None` on an IPv4-only one.
    pub v6: Option<Table6>,
    peer_index6: HashMap<(u8, u128), usize, FastU32>,
    peer_prefix_lens6: Vec<u8>,
}

/// Another node: the pod CIDRs it owns and its router (VTEP) MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRoute {
    pub pod_cidr: Ipv4Net,
    pub pod_cidr_v6: Option<Ipv6Net>,
    pub mac: [u8; 6],
}

#[inline]
fn peer_key6(prefix_len: u8, ip: u128) -> (u8, u128) {
    let mask = if prefix_len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix_len))
    };
    (prefix_len, ip & mask)
}

#[inline]
fn peer_key(prefix_len: u8, ip: u32) -> u64 {
    let mask = if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len))
    };
    (u64::from(prefix_len) << 32) | u64::from(ip & mask)
}

impl Table {
    pub fn new(pod_cidr: Ipv4Net, cluster_cidr: Ipv4Net, router_mac: [u8; 6], mtu: u32) -> Self {
        let gateway = gateway_of(pod_cidr);
        let mut table = Table {
            router_mac,
            gateway,
            pod_cidr,
            cluster_cidr,
            mtu,
            by_ip: HashMap::default(),
            ports: HashMap::default(),
            tunnel_mtu: mtu,
            icmp_frag_needed: true,
            peers: Vec::new(),
            peer_index: HashMap::default(),
            peer_prefix_lens: Vec::new(),
            v6: None,
            peer_index6: HashMap::default(),
            peer_prefix_lens6: Vec::new(),
        };
        table.by_ip.insert(
            u32::from(gateway),
            Endpoint {
                port: HOST_PORT,
                mac: router_mac,
            },
        );
        table.ports.insert(
            HOST_PORT,
            PortEntry {
                allowed_src: None,
                allowed_src6: None,
            },
        );
        table
    }

    /// Make the node dual-stack: pods may get addresses in `pod_cidr`, whose `::1` (the
    /// IPv6 gateway) is the host port's.
    pub fn enable_ipv6(&mut self, pod_cidr: Ipv6Net, cluster_cidr: Ipv6Net) {
        let gateway = gateway_of_v6(pod_cidr);
        let mut by_ip = HashMap::default();
        by_ip.insert(
            u128::from(gateway),
            Endpoint {
                port: HOST_PORT,
                mac: self.router_mac,
            },
        );
        self.v6 = Some(Table6 {
            gateway,
            pod_cidr,
            cluster_cidr,
            by_ip,
        });
    }

    /// Add a pod port.
    pub fn insert_pod(&mut self, port: PortId, ip: Ipv4Addr, mac: [u8; 6]) {
        self.by_ip.insert(u32::from(ip), Endpoint { port, mac });
        self.ports.insert(
            port,
            PortEntry {
                allowed_src: Some(ip),
                allowed_src6: None,
            },
        );
    }

    /// Give a pod port, already inserted, its IPv6 address. Ignored on an IPv4-only node.
    pub fn insert_pod_v6(&mut self, port: PortId, ip: Ipv6Addr, mac: [u8; 6]) {
        let (Some(v6), Some(entry)) = (self.v6.as_mut(), self.ports.get_mut(&port)) else {
            return;
        };
        v6.by_ip.insert(u128::from(ip), Endpoint { port, mac });
        entry.allowed_src6 = Some(ip);
    }

    /// Add another node; returns its index in [`Table::peers`].
    pub fn insert_peer(&mut self, route: PeerRoute) -> usize {
        let idx = self.peers.len();
        let len = route.pod_cidr.prefix_len();
        self.peer_index
            .insert(peer_key(len, u32::from(route.pod_cidr.network())), idx);
        if !self.peer_prefix_lens.contains(&len) {
            self.peer_prefix_lens.push(len);
            self.peer_prefix_lens.sort_unstable_by(|a, b| b.cmp(a));
        }
        if let Some(net6) = route.pod_cidr_v6 {
            let len = net6.prefix_len();
            self.peer_index6
                .insert(peer_key6(len, u128::from(net6.network())), idx);
            if !self.peer_prefix_lens6.contains(&len) {
                self.peer_prefix_lens6.push(len);
                self.peer_prefix_lens6.sort_unstable_by(|a, b| b.cmp(a));
            }
        }
        self.peers.push(route);
        idx
    }

    /// The peer whose IPv6 pod prefix holds `ip` (longest prefix first).
    #[inline]
    pub fn lookup_peer6(&self, ip: [u8; 16]) -> Option<usize> {
        let ip = u128::from_be_bytes(ip);
        for len in &self.peer_prefix_lens6 {
            if let Some(&peer) = self.peer_index6.get(&peer_key6(*len, ip)) {
                return Some(peer);
            }
        }
        None
    }

    /// The pod (or the gateway) holding IPv6 address `ip` on this node.
    #[inline]
    pub fn lookup6(&self, ip: [u8; 16]) -> Option<&Endpoint> {
        self.v6.as_ref()?.by_ip.get(&u128::from_be_bytes(ip))
    }

    /// The peer whose pod CIDR holds `ip` (longest prefix first).
    #[inline(always)]
    pub fn lookup_peer(&self, ip: [u8; 4]) -> Option<usize> {
        let ip = u32::from_be_bytes(ip);
        // Always inlined, and a plain loop: as a call (which `find_map` also became) it
        // cost a quarter of an encapsulating forward.
        for len in &self.peer_prefix_lens {
            if let Some(&peer) = self.peer_index.get(&peer_key(*len, ip)) {
                return Some(peer);
            }
        }
        None
    }

    #[inline]
    pub fn lookup(&self, ip: [u8; 4]) -> Option<&Endpoint> {
        self.by_ip.get(&u32::from_be_bytes(ip))
    }
}

/// The gateway of a pod CIDR: its first host address (`.1` of a /24).
pub fn gateway_of(pod_cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(pod_cidr.network()) + 1)
}

/// The IPv6 gateway of a pod prefix: its `::1`, as the reference bridge plugin picks it.
pub fn gateway_of_v6(pod_cidr: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(pod_cidr.network()) + 1)
}

/// A multiplicative hasher for the `u32` keys of the table. SipHash, the std default, guards
/// against hash flooding by untrusted keys; these keys are addresses and port numbers that
/// the control plane chose, so the cheaper hash is safe and the lookup is the hot path.
pub type FastU32 = BuildHasherDefault<U32Hasher>;

#[derive(Default)]
pub struct U32Hasher(u64);

impl Hasher for U32Hasher {
    #[inline]
    fn finish(&self) -> u64 {
        // A product's low bits depend only on the input's low bits, and hashbrown picks the
        // bucket from the low bits: keys that differ only above them (subnets /24 apart)
        // would share a few buckets. Fold the well-mixed high half down.
        self.0 ^ (self.0 >> 32)
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    #[inline]
    fn write_u128(&mut self, n: u128) {
        let x = (n as u64) ^ ((n >> 64) as u64).rotate_left(29) ^ self.0;
        self.0 = (x ^ (x >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.0 = (self.0 ^ u64::from(n)).rotate_left(8);
    }
    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn subnets_a_slash_24_apart_spread_over_the_buckets() {
        // 4,096 node subnets (10.0.0.0/24, 10.0.1.0/24, …) into 4,096 buckets, picked by the
        // hash's low bits as hashbrown does: a uniform hash fills about 63 % of them.
        let h = FastU32::default();
        let buckets: std::collections::HashSet<u64> = (0..4096u32)
            .map(|i| h.hash_one(peer_key(24, (10 << 24) + (i << 8))) & 4095)
            .collect();
        assert!(
            buckets.len() > 2000,
            "only {} of 4096 buckets used",
            buckets.len()
        );
        let pods: std::collections::HashSet<u64> = (0..4096u32)
            .map(|i| h.hash_one((10u32 << 24) + i) & 4095)
            .collect();
        assert!(
            pods.len() > 2000,
            "only {} of 4096 buckets used",
            pods.len()
        );
    }
}
