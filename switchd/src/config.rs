//! `switchd.toml`: what the operator writes, and the validated [`Config`] the daemon runs on.
//!
//! Every key is checked at start; an unknown key or an invalid value stops switchd with a
//! message that names the key, because a typo silently ignored is a 3 a.m. outage later.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::datapath::frame::mac_for_ip;
use crate::datapath::table::gateway_of;

/// Bytes a VXLAN tunnel adds to every frame over IPv4 (outer IP 20 + UDP 8 + VXLAN 8 +
/// inner Ethernet 14), kept off the pod MTU so pod traffic fits the underlay.
pub const TUNNEL_OVERHEAD: u32 = 50;
pub const DEFAULT_SOCKET: &str = "/run/switchd/switchd.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/switchd";
pub const DEFAULT_CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const HOST_PORT_NAME: &str = "switchd0";

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
    /// `None`: derive from the default-route interface at start.
    pub mtu: Option<u32>,
}

impl Config {
    /// Read and validate `path`, then apply `overrides`.
    pub fn load(path: &Path, overrides: Overrides) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Config::parse(&text, overrides)
            .with_context(|| format!("invalid config file {}", path.display()))
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
        Ok(Config {
            node_name,
            pod_cidr,
            cluster_cidr,
            socket,
            state_dir,
            mtu,
        })
    }

    pub fn gateway(&self) -> Ipv4Addr {
        gateway_of(self.pod_cidr)
    }

    /// The MAC the switch uses as the pods' gateway (and the host port's own MAC).
    pub fn router_mac(&self) -> [u8; 6] {
        mac_for_ip(self.gateway())
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
