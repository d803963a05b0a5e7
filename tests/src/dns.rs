//! Cluster DNS stand-ins: Debian's `dnsmasq` as CoreDNS in a pod (cluster names answered
//! locally, everything else forwarded upstream) and as the resolver on a host outside the
//! cluster; `dig` as the pod's resolver client.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Netns;

/// A dnsmasq process in a namespace, serving port 53 on every address; killed (by its own
/// PID) when dropped.
pub struct Dnsmasq {
    child: Child,
}

impl Dnsmasq {
    /// `records`: (name, address) answered authoritatively; `upstream`: where every other
    /// name is forwarded.
    pub fn start(ns: &Netns, records: &[(&str, Ipv4Addr)], upstream: Option<Ipv4Addr>) -> Dnsmasq {
        let mut args: Vec<String> = [
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            "--pid-file=",
            "--log-facility=-",
            "--log-queries",
        ]
        .map(String::from)
        .to_vec();
        for (name, addr) in records {
            args.push(format!("--host-record={name},{addr}"));
        }
        if let Some(up) = upstream {
            args.push(format!("--server={up}"));
        }
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "dnsmasq"])
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (dnsmasq-base) installed");
        let d = Dnsmasq { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = ns.exec(&["ss", "-Hlun", "sport", "=", ":53"]);
            if !out.stdout.is_empty() {
                return d;
            }
            assert!(Instant::now() < deadline, "dnsmasq never listened on :53");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resolve `name`'s A record with `dig` from `ns` against `server`, over UDP or TCP; the
/// addresses in the answer, or dig's complaint.
pub fn resolve(
    ns: &Netns,
    server: Ipv4Addr,
    name: &str,
    tcp: bool,
) -> Result<Vec<Ipv4Addr>, String> {
    let at = format!("@{server}");
    let transport = if tcp { "+tcp" } else { "+notcp" };
    let out = ns.exec(&[
        "dig", "+short", "+time=2", "+tries=3", transport, &at, name, "A",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("dig {at} {name} {transport}: {text}"));
    }
    let addrs: Vec<Ipv4Addr> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    if addrs.is_empty() {
        return Err(format!(
            "dig {at} {name} {transport}: no address in {text:?}"
        ));
    }
    Ok(addrs)
}
