//! WireGuard in the tests: switchd nodes that encrypt (`encryption = "wireguard"`), and a
//! stock WireGuard host, Debian's `wireguard-go` driven by `wg` from `wireguard-tools`.
//!
//! `wireguard-go` keeps its control socket in `/var/run/wireguard/<ifname>.sock`, shared by
//! every namespace of the machine, so each host gets an interface name from [`unique`].

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchd::config::format_wireguard_key;
use switchd::wireguard::keys;

use crate::cluster::{NodeInfo, Underlay};
use crate::{run, unique, Netns, Node};

pub const WG_PORT: u16 = 51820;

/// Switchd on `ns` as `me`, encrypting, not started yet: its key is made in its state
/// directory now, so that the peers' files can name it. Returns the node and its public key.
pub fn prepare_encrypted(ns: Netns, me: &NodeInfo, extra: &str) -> (Node, String) {
    let config = format!(
        "underlay_addr = \"{}\"\n{}encryption = \"wireguard\"\n{extra}",
        me.tunnel_addr(),
        me.ipv6_toml()
    );
    let node = Node::prepare(ns, &me.pod_cidr, &config, Some(""));
    let (secret, _) = keys::load_or_create(&node.dir.join("state")).expect("node key");
    (node, format_wireguard_key(&keys::public_of(&secret)))
}

/// A `[[peers]]` table for a node reached over WireGuard.
pub fn peer_toml(info: &NodeInfo, public_key: &str) -> String {
    let v6 = info
        .pod_cidr_v6
        .as_ref()
        .map(|p| format!("pod_cidr_v6 = \"{p}\"\n"))
        .unwrap_or_default();
    format!(
        "[[peers]]\nname = \"{}\"\naddr = \"{}\"\npod_cidr = \"{}\"\n{v6}mac = \"{}\"\npublic_key = \"{public_key}\"\n\n",
        info.name,
        info.tunnel_addr(),
        info.pod_cidr,
        info.mac
    )
}

/// `n` encrypting switchd nodes on one underlay, each a peer of all others by key.
pub struct EncryptedCluster {
    pub nodes: Vec<Node>,
    pub infos: Vec<NodeInfo>,
    pub keys: Vec<String>,
    pub underlay: Underlay,
}

impl EncryptedCluster {
    pub fn new(n: u8, extra: &str) -> EncryptedCluster {
        EncryptedCluster::with_nodes(n, extra, |u, ns, i| {
            NodeInfo::numbered(i, u.attach(ns, 1500))
        })
    }

    /// The same with dual-stack nodes (`NodeInfo::dual_stack`).
    pub fn dual_stack(n: u8, extra: &str) -> EncryptedCluster {
        EncryptedCluster::with_nodes(n, extra, |u, ns, i| {
            NodeInfo::dual_stack(i, u.attach(ns, 1500))
        })
    }

    /// Dual-stack nodes on an IPv6-only underlay (`Underlay::attach_v6_only`).
    pub fn over_ipv6_underlay(n: u8, extra: &str) -> EncryptedCluster {
        EncryptedCluster::with_nodes(n, extra, |u, ns, i| NodeInfo {
            underlay6: Some(u.attach_v6_only(ns, 1500)),
            ..NodeInfo::dual_stack(i, Ipv4Addr::UNSPECIFIED)
        })
    }

    fn with_nodes(
        n: u8,
        extra: &str,
        mut info: impl FnMut(&mut Underlay, &Netns, u8) -> NodeInfo,
    ) -> EncryptedCluster {
        let mut underlay = Underlay::new();
        let spaces: Vec<Netns> = (0..n).map(|_| Netns::new("n")).collect();
        let infos: Vec<NodeInfo> = spaces
            .iter()
            .enumerate()
            .map(|(i, ns)| info(&mut underlay, ns, i as u8 + 1))
            .collect();
        let (mut nodes, keys): (Vec<Node>, Vec<String>) = spaces
            .into_iter()
            .zip(&infos)
            .map(|(ns, me)| prepare_encrypted(ns, me, extra))
            .unzip();
        for (i, node) in nodes.iter_mut().enumerate() {
            let peers: String = (0..infos.len())
                .filter(|&j| j != i)
                .map(|j| peer_toml(&infos[j], &keys[j]))
                .collect();
            node.write_peers(&peers);
            node.launch();
        }
        EncryptedCluster {
            nodes,
            infos,
            keys,
            underlay,
        }
    }
    /// One new pod on every node, in node order: its namespace and address.
    pub fn pod_on_each(&self) -> Vec<(Netns, Ipv4Addr)> {
        self.nodes
            .iter()
            .map(|n| {
                let ns = Netns::new("p");
                let addr = n.add_pod(&ns);
                (ns, addr)
            })
            .collect()
    }
}

/// A plain host running `wireguard-go`, its interface holding `addr` of `cidr`, the way a
/// node of another WireGuard mesh (or a VM with `wg-quick`) would be set up.
pub struct WgHost {
    pub ifname: String,
    pub public_key: String,
    pub underlay: Ipv4Addr,
    pub addr: Ipv4Addr,
    pub cidr: String,
    key_file: PathBuf,
    child: Child,
    pub ns: Netns,
}

impl WgHost {
    pub fn new(underlay: &mut Underlay, cidr: &str, addr: Ipv4Addr) -> WgHost {
        let ns = Netns::new("wg");
        let under = underlay.attach(&ns, 1500);
        let ifname = unique("w");
        let log = std::fs::File::create(std::env::temp_dir().join(format!("{ifname}.log")))
            .expect("wireguard-go log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "wireguard-go", "-f", &ifname])
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start wireguard-go (apt-get install wireguard-go wireguard-tools)");
        let sock = PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "wireguard-go made no {}",
                sock.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let private = run(Command::new("wg").arg("genkey"));
        assert!(private.status.success(), "wg genkey");
        let key_file = std::env::temp_dir().join(format!("{ifname}.key"));
        std::fs::write(&key_file, &private.stdout).unwrap();
        let mut pubkey = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("wg pubkey");
        pubkey
            .stdin
            .take()
            .unwrap()
            .write_all(&private.stdout)
            .unwrap();
        let out = pubkey.wait_with_output().unwrap();
        let public_key = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let host = WgHost {
            ifname,
            public_key,
            underlay: under,
            addr,
            cidr: cidr.into(),
            key_file,
            child,
            ns,
        };
        let key = host.key_file.display().to_string();
        let port = WG_PORT.to_string();
        host.wg(&[
            "set",
            &host.ifname,
            "private-key",
            &key,
            "listen-port",
            &port,
        ]);
        let with_len = format!("{addr}/32");
        for cmd in [
            vec!["ip", "addr", "add", &with_len, "dev", &host.ifname],
            vec!["ip", "link", "set", &host.ifname, "up"],
        ] {
            host.ip(&cmd);
        }
        host
    }

    fn ip(&self, cmd: &[&str]) {
        let out = self.ns.exec(cmd);
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn wg(&self, args: &[&str]) -> String {
        let out = self.ns.exec(&[&["wg"], args].concat());
        assert!(
            out.status.success(),
            "wg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Peer with `public_key` at `endpoint`, whose pods are `allowed` (routed through the
    /// WireGuard interface).
    pub fn add_peer(&self, public_key: &str, endpoint: SocketAddrV4, allowed: &str) {
        let endpoint = endpoint.to_string();
        self.wg(&[
            "set",
            &self.ifname,
            "peer",
            public_key,
            "endpoint",
            &endpoint,
            "allowed-ips",
            allowed,
        ]);
        self.ip(&["ip", "route", "add", allowed, "dev", &self.ifname]);
    }

    /// Seconds since the epoch of the last completed handshake with each peer (0: none).
    pub fn latest_handshakes(&self) -> Vec<u64> {
        self.wg(&["show", &self.ifname, "latest-handshakes"])
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect()
    }

    /// This host as a switchd peer.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            name: "wghost".into(),
            underlay: self.underlay,
            pod_cidr: self.cidr.clone(),
            pod_cidr_v6: None,
            mac: "0a:58:0a:f4:63:01".into(),
            underlay6: None,
        }
    }
}

impl Drop for WgHost {
    fn drop(&mut self) {
        // SAFETY: signalling the wireguard-go process this helper started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.key_file);
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.ifname));
        if std::thread::panicking() {
            let log = std::env::temp_dir().join(format!("{}.log", self.ifname));
            eprintln!(
                "--- wireguard-go log ---\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let _ = std::fs::remove_file(std::env::temp_dir().join(format!("{}.log", self.ifname)));
    }
}
