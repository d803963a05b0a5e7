//! The node's own network stack, as far as pods depend on it: forwarding on, no ICMP
//! redirects on the host port, and the conntrack timeouts the flow table follows.
//!
//! All of it is read and written through `/proc/sys/net`, which shows the network namespace
//! of the process reading it: switchd's own, the node's.

use std::path::Path;

use anyhow::{Context, Result};

use crate::datapath::Timeouts;

const SYSCTL: &str = "/proc/sys/net";

/// Make the node route pods' traffic: `net.ipv4.ip_forward = 1` (pods reach the node's
/// other networks and Services through it), and no ICMP redirects, neither from `all` nor
/// from the host port: the node now sends a Service's replies back out of `switchd0`, the
/// interface they came in on, and a redirect would tell a pod to bypass the node.
///
/// A dual-stack node also gets `net.ipv6.conf.all.forwarding = 1` (pods' IPv6 egress and
/// Services). Note that Linux then ignores Router Advertisements on interfaces whose
/// `accept_ra` is 1: a node that takes its own IPv6 default route from RAs needs
/// `accept_ra = 2` on that interface (`docs/dual-stack.md`). IPv6 has no `send_redirects`;
/// the switch never passes the node's redirects on to pods.
pub fn prepare_forwarding(host_port: &str, ipv6: bool) -> Result<()> {
    for (key, value) in [
        ("ipv4/ip_forward".to_string(), "1"),
        ("ipv4/conf/all/send_redirects".to_string(), "0"),
        (format!("ipv4/conf/{host_port}/send_redirects"), "0"),
    ] {
        set(&key, value)?;
    }
    if ipv6 {
        set("ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

fn set(key: &str, value: &str) -> Result<()> {
    let path = Path::new(SYSCTL).join(key);
    let name = format!("net.{}", key.replace('/', "."));
    let before = std::fs::read_to_string(&path).with_context(|| format!("reading {name}"))?;
    if before.trim() != value {
        std::fs::write(&path, value)
            .with_context(|| format!("setting {name} = {value} (is /proc/sys read-only here?)"))?;
        tracing::info!(sysctl = %name, from = before.trim(), to = value, "changed a node sysctl pods depend on");
    }
    Ok(())
}

/// The node's conntrack timeouts (`net.netfilter.nf_conntrack_*`); a value that cannot be
/// read keeps the kernel's default.
pub fn conntrack_timeouts() -> Timeouts {
    let d = Timeouts::default();
    let get = |name: &str, default: u32| -> u32 {
        std::fs::read_to_string(Path::new(SYSCTL).join("netfilter").join(name))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(default)
    };
    Timeouts {
        tcp_syn_sent: get("nf_conntrack_tcp_timeout_syn_sent", d.tcp_syn_sent),
        tcp_syn_recv: get("nf_conntrack_tcp_timeout_syn_recv", d.tcp_syn_recv),
        tcp_established: get("nf_conntrack_tcp_timeout_established", d.tcp_established),
        tcp_time_wait: get("nf_conntrack_tcp_timeout_time_wait", d.tcp_time_wait),
        tcp_close: get("nf_conntrack_tcp_timeout_close", d.tcp_close),
        udp: get("nf_conntrack_udp_timeout", d.udp),
        udp_stream: get("nf_conntrack_udp_timeout_stream", d.udp_stream),
        icmp: get("nf_conntrack_icmp_timeout", d.icmp),
        generic: get("nf_conntrack_generic_timeout", d.generic),
        fragment: std::fs::read_to_string(Path::new(SYSCTL).join("ipv4/ipfrag_time"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(d.fragment),
    }
}
