//! `switchd.toml`: what the operator writes, and the validated [`Config`] the daemon runs on.
//!
//! Every key is checked at start; an unknown key or an invalid value stops switchd with a
//! message that names the key, because a typo silently ignored is a 3 a.m. outage later.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::datapath::frame::{mac_for_ip, parse_mac};
use crate::datapath::table::gateway_of;

/// Bytes a VXLAN tunnel adds to every frame over IPv4 (outer IP 20 + UDP 8 + VXLAN 8 +
/// inner Ethernet 14), kept off the pod MTU so pod traffic fits the underlay.
pub const TUNNEL_OVERHEAD: u32 = 50;
pub const DEFAULT_SOCKET: &str = "/run/switchd/switchd.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/switchd";
pub const DEFAULT_CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const HOST_PORT_NAME: &str = "switchd0";
/// The port Linux (and flannel) use for VXLAN; IANA's 4789 is the other common choice.
pub const DEFAULT_TUNNEL_PORT: u16 = 8472;
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9476";

/// The file as written, before validation. Values that need parsing stay strings here so
/// that the error can name the key.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub node_name: Option<String>,
    pub pod_cidr: Option<String>,
    pub cluster_cidr: Option<String>,
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub mtu: Option<u32>,
    pub underlay_addr: Option<String>,
    pub tunnel_port: Option<u16>,
    pub vni: Option<u32>,
    pub router_mac: Option<String>,
    pub icmp_frag_needed: Option<bool>,
    pub peers_file: Option<PathBuf>,
    pub peers: Option<Vec<PeerEntry>>,
    pub metrics_addr: Option<String>,
}

/// One `[[peers]]` table, in the config file or in the peers file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    pub name: String,
    /// The peer's underlay address.
    pub addr: String,
    /// The peer's pod CIDR.
    pub pod_cidr: String,
    /// The peer's router/VTEP MAC: the inner destination MAC of frames sent to it.
    pub mac: String,
    /// The peer's VXLAN port, if it differs from ours.
    pub port: Option<u16>,
}

/// The peers file: nothing but `[[peers]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersFile {
    #[serde(default)]
    peers: Vec<PeerEntry>,
}

/// A validated peer node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub addr: SocketAddrV4,
    pub pod_cidr: Ipv4Net,
    pub mac: [u8; 6],
}

/// Values given on the command line; each replaces the file's. Same keys as the file.
pub type Overrides = FileConfig;

#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub pod_cidr: Ipv4Net,
    pub cluster_cidr: Ipv4Net,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// `None`: derive from the underlay (or default-route) interface at start.
    pub mtu: Option<u32>,
    /// The address the tunnel socket binds to; `None` runs a single node without a tunnel.
    pub underlay_addr: Option<Ipv4Addr>,
    pub tunnel_port: u16,
    pub vni: u32,
    /// The pods' gateway MAC, the host port's MAC and our VTEP MAC.
    pub router_mac: [u8; 6],
    pub icmp_frag_needed: bool,
    pub peers_file: Option<PathBuf>,
    /// Peers from the config file and the peers file together.
    pub peers: Vec<Peer>,
    /// Where `/metrics`, `/healthz` and `/readyz` listen; `None` when turned off.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The file and command-line overrides this was loaded from, for reloading peers.
    pub loaded_from: Option<(PathBuf, Overrides)>,
}

impl Config {
    /// Read and validate `path`, then apply `overrides`.
    pub fn load(path: &Path, overrides: Overrides) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut cfg = Config::parse(&text, overrides.clone())
            .with_context(|| format!("invalid config file {}", path.display()))?;
        if let Some(pf) = cfg.peers_file.clone() {
            let text = std::fs::read_to_string(&pf)
                .with_context(|| format!("cannot read peers_file {}", pf.display()))?;
            let file: PeersFile = toml::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "invalid peers_file {}: {}{}",
                    pf.display(),
                    e.message(),
                    span_hint(&text, e.span())
                )
            })?;
            let extra = cfg
                .parse_peers(&file.peers)
                .with_context(|| format!("invalid peers_file {}", pf.display()))?;
            cfg.peers.extend(extra);
            cfg.check_peers().with_context(|| {
                format!("invalid peers ({} and {})", path.display(), pf.display())
            })?;
        }
        cfg.loaded_from = Some((path.to_path_buf(), overrides));
        Ok(cfg)
    }

    fn parse_peers(&self, entries: &[PeerEntry]) -> Result<Vec<Peer>> {
        entries
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let key = |field: &str| format!("peers[{i}].{field}");
                let addr: Ipv4Addr = p.addr.parse().with_context(|| {
                    format!("{}: {:?} is not an IPv4 address", key("addr"), p.addr)
                })?;
                let mac = parse_mac(&p.mac)
                    .filter(|m| m[0] & 1 == 0)
                    .with_context(|| {
                        format!(
                            "{}: {:?} is not a unicast MAC such as \"0a:58:0a:f4:02:01\"",
                            key("mac"),
                            p.mac
                        )
                    })?;
                if p.name.is_empty() {
                    bail!("{}: must not be empty", key("name"));
                }
                Ok(Peer {
                    name: p.name.clone(),
                    addr: SocketAddrV4::new(addr, p.port.unwrap_or(self.tunnel_port)),
                    pod_cidr: parse_cidr(&key("pod_cidr"), &p.pod_cidr)?,
                    mac,
                })
            })
            .collect()
    }

    /// Peers must not collide with each other or with this node.
    fn check_peers(&self) -> Result<()> {
        if !self.peers.is_empty() && self.underlay_addr.is_none() {
            bail!("underlay_addr: required when peers are configured (the tunnel binds to it)");
        }
        for (i, p) in self.peers.iter().enumerate() {
            if !self.cluster_cidr.contains(&p.pod_cidr) {
                bail!(
                    "peer {}: pod_cidr {} is not inside cluster_cidr {}",
                    p.name,
                    p.pod_cidr,
                    self.cluster_cidr
                );
            }
            if overlaps(p.pod_cidr, self.pod_cidr) {
                bail!(
                    "peer {}: pod_cidr {} overlaps this node's pod_cidr {}",
                    p.name,
                    p.pod_cidr,
                    self.pod_cidr
                );
            }
            if Some(*p.addr.ip()) == self.underlay_addr {
                bail!(
                    "peer {}: addr {} is this node's own underlay_addr",
                    p.name,
                    p.addr.ip()
                );
            }
            for q in &self.peers[..i] {
                if q.name == p.name {
                    bail!("peer {}: the name appears twice", p.name);
                }
                if overlaps(p.pod_cidr, q.pod_cidr) {
                    bail!(
                        "peer {}: pod_cidr {} overlaps peer {}'s {}",
                        p.name,
                        p.pod_cidr,
                        q.name,
                        q.pod_cidr
                    );
                }
                if q.addr.ip() == p.addr.ip() {
                    bail!(
                        "peer {}: addr {} is also peer {}'s",
                        p.name,
                        p.addr.ip(),
                        q.name
                    );
                }
            }
        }
        Ok(())
    }

    pub fn parse(text: &str, o: Overrides) -> Result<Config> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            anyhow::anyhow!("{}", e.message().to_string() + &span_hint(text, e.span()))
        })?;
        let node_name = match o.node_name.or(file.node_name) {
            Some(n) => n,
            None => hostname().context("node_name: not set and the hostname cannot be read")?,
        };
        if node_name.is_empty() || node_name.len() > 253 {
            bail!("node_name: must be 1 to 253 characters, got {node_name:?}");
        }
        let pod_cidr: Ipv4Net = match o.pod_cidr.or(file.pod_cidr) {
            Some(s) => parse_cidr("pod_cidr", &s)?,
            None => bail!("pod_cidr: required, e.g. pod_cidr = \"10.244.1.0/24\" (this node's share of cluster_cidr)"),
        };
        let cluster_cidr = parse_cidr(
            "cluster_cidr",
            &o.cluster_cidr
                .or(file.cluster_cidr)
                .unwrap_or_else(|| DEFAULT_CLUSTER_CIDR.into()),
        )?;
        if pod_cidr.prefix_len() > 30 {
            bail!("pod_cidr: {pod_cidr} leaves no address for pods; use a /30 or larger (a /24 is usual)");
        }
        if !cluster_cidr.contains(&pod_cidr) {
            bail!("pod_cidr: {pod_cidr} is not inside cluster_cidr {cluster_cidr}");
        }
        let mtu = o.mtu.or(file.mtu);
        if let Some(m) = mtu {
            if !(576..=65_535).contains(&m) {
                bail!("mtu: {m} is out of range; use 576 to 65535 (or leave it out to derive it from the default route)");
            }
        }
        let socket = o
            .socket
            .or(file.socket)
            .unwrap_or_else(|| DEFAULT_SOCKET.into());
        if !socket.is_absolute() {
            bail!("socket: {} must be an absolute path", socket.display());
        }
        let state_dir = o
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        if !state_dir.is_absolute() {
            bail!(
                "state_dir: {} must be an absolute path",
                state_dir.display()
            );
        }
        let underlay_addr = match o.underlay_addr.or(file.underlay_addr) {
            Some(s) => Some(
                s.parse::<Ipv4Addr>()
                    .with_context(|| format!("underlay_addr: {s:?} is not an IPv4 address"))?,
            ),
            None => None,
        };
        let vni = o.vni.or(file.vni).unwrap_or(1);
        if vni > crate::datapath::vxlan::MAX_VNI {
            bail!(
                "vni: {vni} does not fit VXLAN's 24 bits (0 to {})",
                crate::datapath::vxlan::MAX_VNI
            );
        }
        let router_mac = match o.router_mac.or(file.router_mac) {
            Some(s) => parse_mac(&s).filter(|m| m[0] & 1 == 0).with_context(|| {
                format!("router_mac: {s:?} is not a unicast MAC such as \"0a:58:0a:f4:01:01\"")
            })?,
            None => mac_for_ip(gateway_of(pod_cidr)),
        };
        let peers_file = o.peers_file.or(file.peers_file);
        if let Some(pf) = &peers_file {
            if !pf.is_absolute() {
                bail!("peers_file: {} must be an absolute path", pf.display());
            }
        }
        let mut cfg = Config {
            node_name,
            pod_cidr,
            cluster_cidr,
            socket,
            state_dir,
            mtu,
            underlay_addr,
            tunnel_port: o
                .tunnel_port
                .or(file.tunnel_port)
                .unwrap_or(DEFAULT_TUNNEL_PORT),
            vni,
            router_mac,
            icmp_frag_needed: o.icmp_frag_needed.or(file.icmp_frag_needed).unwrap_or(true),
            peers_file,
            peers: Vec::new(),
            metrics_addr: match o.metrics_addr.or(file.metrics_addr).as_deref() {
                None => Some(DEFAULT_METRICS_ADDR.parse().expect("default metrics address")),
                Some("off") | Some("") => None,
                Some(s) => Some(s.parse().with_context(|| format!("metrics_addr: {s:?} is not ADDRESS:PORT such as \"127.0.0.1:9476\" (or \"off\")"))?),
            },
            loaded_from: None,
        };
        cfg.peers = cfg.parse_peers(&file.peers.unwrap_or_default())?;
        cfg.check_peers()?;
        Ok(cfg)
    }

    pub fn gateway(&self) -> Ipv4Addr {
        gateway_of(self.pod_cidr)
    }
}

fn parse_cidr(key: &str, s: &str) -> Result<Ipv4Net> {
    let net: Ipv4Net = s
        .parse()
        .with_context(|| format!("{key}: {s:?} is not an IPv4 CIDR such as \"10.244.1.0/24\""))?;
    if net.trunc() != net {
        bail!(
            "{key}: {s} has host bits set; did you mean {}?",
            net.trunc()
        );
    }
    Ok(net)
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(r) => {
            let line = text[..r.start.min(text.len())].matches('\n').count() + 1;
            format!(
                " (line {line}: {})",
                text.lines().nth(line - 1).unwrap_or("").trim()
            )
        }
        None => String::new(),
    }
}

fn hostname() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Overrides::default())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("node_name = \"n1\"\npod_cidr = \"10.244.1.0/24\"\n").unwrap();
        assert_eq!(c.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(c.mtu, None);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "node_name = \"n\"\npod_cidr = \"10.244.1.0/24\"\nmtuu = 1400\n",
                "mtuu",
            ),
            (
                "node_name = \"n\"\npod_cidr = \"10.244.1.0/33\"\n",
                "pod_cidr",
            ),
            (
                "node_name = \"n\"\npod_cidr = \"10.244.1.5/24\"\n",
                "host bits",
            ),
            (
                "node_name = \"n\"\npod_cidr = \"10.9.1.0/24\"\n",
                "not inside cluster_cidr",
            ),
            (
                "node_name = \"n\"\npod_cidr = \"10.244.1.0/24\"\nmtu = 10\n",
                "mtu",
            ),
            (
                "node_name = \"n\"\npod_cidr = \"10.244.1.0/24\"\nmtu = \"big\"\n",
                "mtu",
            ),
            ("node_name = \"n\"\n", "pod_cidr: required"),
            (
                "node_name = \"n\"\npod_cidr = \"10.244.1.0/24\"\nsocket = \"rel.sock\"\n",
                "socket",
            ),
        ];
        for (text, needle) in cases {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }

    const PEERED: &str =
        "node_name = \"n1\"\npod_cidr = \"10.244.1.0/24\"\nunderlay_addr = \"192.168.7.1\"\n";

    #[test]
    fn peers_are_parsed_with_defaults_and_checked() {
        let text = format!("{PEERED}[[peers]]\nname = \"n2\"\naddr = \"192.168.7.2\"\npod_cidr = \"10.244.2.0/24\"\nmac = \"0a:58:0a:f4:02:01\"\n");
        let c = parse(&text).unwrap();
        assert_eq!(c.tunnel_port, 8472);
        assert_eq!(c.vni, 1);
        assert_eq!(c.router_mac, mac_for_ip(Ipv4Addr::new(10, 244, 1, 1)));
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.peers[0].addr, "192.168.7.2:8472".parse().unwrap());

        let peer = |name: &str, addr: &str, cidr: &str, mac: &str| {
            format!("[[peers]]\nname = \"{name}\"\naddr = \"{addr}\"\npod_cidr = \"{cidr}\"\nmac = \"{mac}\"\n")
        };
        let ok = peer("n2", "192.168.7.2", "10.244.2.0/24", "0a:58:0a:f4:02:01");
        let cases = [
            (
                format!(
                    "{PEERED}{}",
                    peer("n2", "192.168.7.2", "10.244.1.0/24", "0a:58:0a:f4:02:01")
                ),
                "overlaps this node",
            ),
            (
                format!(
                    "{PEERED}{ok}{}",
                    peer("n3", "192.168.7.3", "10.244.2.0/25", "0a:58:0a:f4:03:01")
                ),
                "overlaps peer n2",
            ),
            (
                format!(
                    "{PEERED}{ok}{}",
                    peer("n2", "192.168.7.3", "10.244.3.0/24", "0a:58:0a:f4:03:01")
                ),
                "twice",
            ),
            (
                format!(
                    "{PEERED}{}",
                    peer("n2", "192.168.7.2", "10.9.2.0/24", "0a:58:0a:f4:02:01")
                ),
                "not inside cluster_cidr",
            ),
            (
                format!(
                    "{PEERED}{}",
                    peer("n2", "192.168.7.2", "10.244.2.0/24", "01:00:5e:00:00:01")
                ),
                "peers[0].mac",
            ),
            (
                format!(
                    "{PEERED}{}",
                    peer("n2", "bogus", "10.244.2.0/24", "0a:58:0a:f4:02:01")
                ),
                "peers[0].addr",
            ),
            (
                format!("node_name = \"n\"\npod_cidr = \"10.244.1.0/24\"\n{ok}"),
                "underlay_addr: required",
            ),
            (format!("{PEERED}vni = 16777216\n"), "vni"),
            (format!("{PEERED}router_mac = \"zz\"\n"), "router_mac"),
        ];
        for (text, needle) in cases {
            let err = format!("{:#}", parse(&text).unwrap_err());
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }

    #[test]
    fn command_line_overrides_the_file() {
        let o = Overrides {
            pod_cidr: Some("10.244.7.0/24".into()),
            mtu: Some(1400),
            ..Overrides::default()
        };
        let c = Config::parse("node_name = \"n\"\npod_cidr = \"10.244.1.0/24\"\n", o).unwrap();
        assert_eq!(c.pod_cidr.to_string(), "10.244.7.0/24");
        assert_eq!(c.mtu, Some(1400));
    }
}
