//! Everything that happens inside a network namespace: creating a pod's TAP there,
//! configuring it over netlink, checking it, and configuring the host port.
//!
//! A namespace is entered only on a fresh OS thread that exits afterwards (`setns` changes
//! the calling thread for good, so tokio's workers and its blocking pool must never do it).
//! That thread runs its own single-threaded runtime for the netlink connection, whose socket
//! therefore belongs to the namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::datapath::frame::format_mac;
use crate::port::tap::{Tap, TapError};

/// The network side of one pod interface, as it must look inside the pod.
#[derive(Debug, Clone)]
pub struct PodIface {
    pub ifname: String,
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    /// The IPv6 address, prefix length and gateway, on a dual-stack node.
    pub ipv6: Option<switchd_proto::Ipv6Attachment>,
}

/// Errors a caller must tell apart (the rest are plain context chains).
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path} cannot be opened: {source}")]
    Unavailable {
        path: String,
        source: std::io::Error,
    },
    #[error("interface {ifname} already exists in network namespace {path}")]
    IfaceExists { ifname: String, path: String },
    #[error("{path} now holds another network namespace than the pod's")]
    Replaced { path: String },
}

/// What [`run_in`] runs: a future over a netlink handle of the namespace.
pub trait InNetns<T>:
    for<'h> FnOnce(
        &'h Handle,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + 'h>>
    + Send
    + 'static
{
}

impl<T, F> InNetns<T> for F where
    F: for<'h> FnOnce(
            &'h Handle,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + 'h>>
        + Send
        + 'static
{
}

/// Run `f` on a new OS thread inside the network namespace at `path` (a `/proc/PID/ns/net`
/// or a bind mount such as `/var/run/netns/NAME`), with a netlink handle for that namespace.
pub fn run_in<T: Send + 'static>(path: &str, f: impl InNetns<T>) -> Result<T> {
    run_in_ns(path, None, f)
}

/// [`run_in`], refusing (with `NetnsError::Replaced`) when the namespace now at `path` is
/// not the one whose inode is `expect`: a path the runtime reused for another pod.
fn run_in_ns<T: Send + 'static>(path: &str, expect: Option<u64>, f: impl InNetns<T>) -> Result<T> {
    let ns = File::open(path).map_err(|source| NetnsError::Unavailable {
        path: path.into(),
        source,
    })?;
    if let Some(expect) = expect {
        use std::os::unix::fs::MetadataExt;
        let now = ns.metadata().map(|m| m.ino()).ok();
        if now != Some(expect) {
            return Err(NetnsError::Replaced { path: path.into() }.into());
        }
    }
    let path = path.to_string();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || -> Result<T> {
            // SAFETY: `ns` is an open namespace file; setns only changes this thread, which
            // runs nothing else and exits when `f` is done.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("setns into {path}"));
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()?;
            rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection().context("netlink socket")?;
                tokio::spawn(conn);
                f(&handle).await
            })
        })
        .context("spawning netns thread")?
        .join()
        .map_err(|_| anyhow!("netns thread panicked"))?
}

/// Index of `ifname` in the calling thread's namespace, if it exists.
fn ifindex(ifname: &str) -> Option<u32> {
    let c = std::ffi::CString::new(ifname).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

fn is_errno(err: &rtnetlink::Error, errno: i32) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

/// Create the pod's TAP and configure it inside the pod's namespace, all on one thread
/// in that namespace. The TAP is persistent, so it survives a restart of switchd; on any
/// failure it is destroyed again.
///
/// The TAP is created where it lives. Creating it in switchd's namespace and moving it
/// costs the kernel three RCU synchronisations and an `rcu_barrier` with RTNL held (about
/// 20 ms in which no other interface on the machine can change), so a burst of 110 pods
/// queued for seconds behind the moves (docs/performance.md, "Pod start"). A descriptor
/// opened here pins the pod's namespace for as long as switchd holds it, so the namespace
/// no longer dies with its last process while switchd watches it: `Switch` sweeps its
/// pods' namespaces instead (`pod_netns_gone`) and lets go of those the runtime removed.
///
/// `queues` descriptors are opened (one per datapath worker).
pub fn create_pod_tap(netns: &str, iface: PodIface, queues: usize) -> Result<Vec<Tap>> {
    let path = netns.to_string();
    run_in(netns, move |h| {
        Box::pin(async move {
            if ifindex(&iface.ifname).is_some() {
                return Err(NetnsError::IfaceExists {
                    ifname: iface.ifname.clone(),
                    path,
                }
                .into());
            }
            let taps = match Tap::create_queues(&iface.ifname, queues) {
                Ok(taps) => taps,
                // Created by someone else between the check and now.
                Err(TapError::SetIff { source, .. })
                    if source.raw_os_error() == Some(libc::EBUSY) =>
                {
                    return Err(NetnsError::IfaceExists {
                        ifname: iface.ifname.clone(),
                        path,
                    }
                    .into());
                }
                Err(e) => return Err(e.into()),
            };
            let configured = async {
                taps[0].set_persistent(true)?;
                let idx = ifindex(&iface.ifname).context("TAP vanished right after creation")?;
                configure_pod_link(h, idx, &iface).await
            };
            match configured.await {
                Ok(()) => Ok(taps),
                Err(e) => {
                    let _ = taps[0].set_persistent(false); // dropping the fds now destroys it
                    Err(e)
                }
            }
        })
    })
}

/// Delete the pod's interface `ifname` inside `netns`, the namespace of inode `ino` (our TAP, while we still hold its
/// descriptors). One unregistration takes every queue off at once; closing a queue's
/// descriptor first would instead cost an RCU synchronisation with RTNL held per queue,
/// and run wherever the last reference to the port happens to drop (possibly a datapath
/// worker). `Ok(false)` when the interface is not there.
pub fn delete_pod_link(netns: &str, ino: u64, ifname: &str) -> Result<bool> {
    let ifname = ifname.to_string();
    run_in_ns(netns, Some(ino), move |h| {
        Box::pin(async move {
            let Some(idx) = ifindex(&ifname) else {
                return Ok(false);
            };
            match h.link().del(idx).execute().await {
                Ok(()) => Ok(true),
                Err(e) if is_errno(&e, libc::ENODEV) => Ok(false),
                Err(e) => Err(e).with_context(|| format!("deleting {ifname}")),
            }
        })
    })
}

/// Whether the pod namespace attached from `path` is gone: the runtime removed its path
/// (or put another namespace there) and no process is left inside it. `ino` is the
/// namespace's inode, taken when the pod was attached. Our own TAP descriptors keep the
/// namespace itself alive, so its path and its processes are what tell.
///
/// A namespace whose path was removed while its processes live on (an administrator's
/// `ip netns del`) is not gone: its pod still runs and keeps its network.
pub fn pod_netns_gone(path: &str, ino: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata(path).is_ok_and(|m| m.ino() == ino) {
        return false;
    }
    !any_process_in_netns(Path::new("/proc"), ino)
}

/// Whether a process under `proc` (a procfs mount) is in the network namespace `ino`.
fn any_process_in_netns(proc: &Path, ino: u64) -> bool {
    let want = format!("net:[{ino}]");
    let Ok(dir) = std::fs::read_dir(proc) else {
        return true; // cannot tell: keep the pod
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .any(|e| {
            std::fs::read_link(e.path().join("ns/net"))
                .is_ok_and(|l| l.as_os_str().as_encoded_bytes() == want.as_bytes())
        })
}

/// The inode of the namespace at `path` (what `pod_netns_gone` compares against).
pub fn netns_inode(path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

async fn configure_pod_link(h: &Handle, idx: u32, iface: &PodIface) -> Result<()> {
    h.link()
        .set(
            LinkUnspec::new_with_index(idx)
                .address(iface.mac.to_vec())
                .mtu(iface.mtu)
                .up()
                .build(),
        )
        .execute()
        .await
        .with_context(|| format!("setting MAC, MTU and up on {}", iface.ifname))?;
    h.address()
        .add(idx, IpAddr::V4(iface.address), iface.prefix_len)
        .execute()
        .await
        .with_context(|| {
            format!(
                "adding {}/{} to {}",
                iface.address, iface.prefix_len, iface.ifname
            )
        })?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(iface.gateway)
        .output_interface(idx)
        .build();
    h.route()
        .add(route)
        .execute()
        .await
        .with_context(|| format!("adding default route via {}", iface.gateway))?;
    if let Some(v6) = iface.ipv6 {
        add_ipv6_nodad(h, idx, v6.address, v6.prefix_len)
            .await
            .with_context(|| {
                format!(
                    "adding {}/{} to {}",
                    v6.address, v6.prefix_len, iface.ifname
                )
            })?;
        let route = RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(v6.gateway)
            .output_interface(idx)
            .build();
        h.route()
            .add(route)
            .execute()
            .await
            .with_context(|| format!("adding IPv6 default route via {}", v6.gateway))?;
    }
    Ok(())
}

/// Add an IPv6 address without duplicate-address detection. The switch knows every
/// address on the link, so nothing can collide, and DAD would keep the address tentative
/// (unusable) for a second or more after the pod starts.
async fn add_ipv6_nodad(
    h: &Handle,
    idx: u32,
    address: Ipv6Addr,
    prefix_len: u8,
) -> Result<(), rtnetlink::Error> {
    let mut request = h.address().add(idx, IpAddr::V6(address), prefix_len);
    let message = request.message_mut();
    message.header.flags |= AddressHeaderFlags::Nodad;
    message
        .attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    request.execute().await
}

/// Re-open a pod's persistent TAP after a restart. `Ok(None)` when the interface is gone.
pub fn reopen_pod_tap(netns: &str, ifname: &str, queues: usize) -> Result<Option<Vec<Tap>>> {
    let ifname = ifname.to_string();
    run_in(netns, move |_| {
        Box::pin(async move {
            if ifindex(&ifname).is_none() {
                return Ok(None);
            }
            let taps = Tap::open_queues(&ifname, queues)?;
            taps[0].set_persistent(true)?;
            Ok(Some(taps))
        })
    })
}

/// Verify the pod's interface is still as attached: present, up, with its MAC, address and
/// default route. The error says which part differs.
pub fn check_pod_iface(netns: &str, iface: PodIface) -> Result<()> {
    run_in(netns, move |h| {
        Box::pin(async move {
            let Some(idx) = ifindex(&iface.ifname) else {
                bail!("interface {} is missing", iface.ifname);
            };
            let link = h
                .link()
                .get()
                .match_index(idx)
                .execute()
                .try_next()
                .await?
                .context("link vanished while checking")?;
            let mac = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::Address(m) => Some(m.clone()),
                _ => None,
            });
            if mac.as_deref() != Some(&iface.mac[..]) {
                bail!(
                    "interface {} has MAC {:?}, expected {}",
                    iface.ifname,
                    mac.map(|m| hex_mac(&m)),
                    format_mac(iface.mac)
                );
            }
            if !link.header.flags.contains(LinkFlags::Up) {
                bail!("interface {} is down", iface.ifname);
            }
            let addrs: Vec<_> = h
                .address()
                .get()
                .set_link_index_filter(idx)
                .execute()
                .try_collect()
                .await?;
            let has_addr = addrs.iter().any(|m| {
                m.header.prefix_len == iface.prefix_len
                    && m.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(ip)) if *ip == iface.address))
            });
            if !has_addr {
                bail!(
                    "interface {} lacks address {}/{}",
                    iface.ifname,
                    iface.address,
                    iface.prefix_len
                );
            }
            if let Some(v6) = iface.ipv6 {
                let has_v6 = addrs.iter().any(|m| {
                    m.header.prefix_len == v6.prefix_len
                        && m.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(IpAddr::V6(ip)) if *ip == v6.address))
                });
                if !has_v6 {
                    bail!(
                        "interface {} lacks address {}/{}",
                        iface.ifname,
                        v6.address,
                        v6.prefix_len
                    );
                }
            }
            let routes = ipv4_routes(h).await?;
            let has_default = routes.iter().any(|r| {
                r.header.destination_prefix_length == 0
                    && r.attributes.iter().any(|a| matches!(a, RouteAttribute::Gateway(RouteAddress::Inet(gw)) if *gw == iface.gateway))
                    && r.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(o) if *o == idx))
            });
            if !has_default {
                bail!(
                    "default route via {} on {} is missing",
                    iface.gateway,
                    iface.ifname
                );
            }
            Ok(())
        })
    })
}

async fn ipv4_routes(h: &Handle) -> Result<Vec<netlink_packet_route::route::RouteMessage>> {
    let request = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build());
    Ok(request.execute().try_collect().await?)
}

fn hex_mac(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Open (or re-attach to) the host port in switchd's own namespace and give it the gateway
/// address and a route for the cluster CIDR, so the node reaches its pods and pods reach the
/// node. Safe to repeat: existing addresses and routes are kept.
#[allow(clippy::too_many_arguments)]
pub fn setup_host_port(
    existing: Option<Vec<Tap>>,
    queues: usize,
    name: &str,
    mac: [u8; 6],
    mtu: u32,
    gateway: Ipv4Addr,
    pod_cidr: Ipv4Net,
    cluster_cidr: Ipv4Net,
    ipv6: Option<crate::config::Ipv6Config>,
) -> Result<Vec<Tap>> {
    let name = name.to_string();
    run_in("/proc/self/ns/net", move |h| {
        Box::pin(async move {
            let taps = match existing {
                Some(taps) => taps,
                None => Tap::open_queues(&name, queues)?,
            };
            let tap = &taps[0];
            tap.set_persistent(true)?;
            let idx = ifindex(&name).context("host port vanished right after creation")?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(idx)
                        .address(mac.to_vec())
                        .mtu(mtu)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .with_context(|| format!("setting MAC, MTU and up on {name}"))?;
            if let Err(e) = h
                .address()
                .add(idx, IpAddr::V4(gateway), pod_cidr.prefix_len())
                .execute()
                .await
            {
                if !is_errno(&e, libc::EEXIST) {
                    return Err(e).with_context(|| {
                        format!("adding {gateway}/{} to {name}", pod_cidr.prefix_len())
                    });
                }
            }
            if cluster_cidr != pod_cidr {
                let route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(cluster_cidr.network(), cluster_cidr.prefix_len())
                    .output_interface(idx)
                    .build();
                h.route()
                    .add(route)
                    .replace()
                    .execute()
                    .await
                    .with_context(|| format!("adding route {cluster_cidr} dev {name}"))?;
            }
            if let Some(v6) = ipv6 {
                let (gw, len) = (v6.gateway(), v6.pod_cidr.prefix_len());
                if let Err(e) = add_ipv6_nodad(h, idx, gw, len).await {
                    if !is_errno(&e, libc::EEXIST) {
                        return Err(e).with_context(|| format!("adding {gw}/{len} to {name} (is IPv6 disabled on this node? net.ipv6.conf.{name}.disable_ipv6)"));
                    }
                }
                if v6.cluster_cidr != v6.pod_cidr {
                    let net = v6.cluster_cidr;
                    let route = RouteMessageBuilder::<Ipv6Addr>::new()
                        .destination_prefix(net.network(), net.prefix_len())
                        .output_interface(idx)
                        .build();
                    h.route()
                        .add(route)
                        .replace()
                        .execute()
                        .await
                        .with_context(|| format!("adding route {net} dev {name}"))?;
                }
            }
            Ok(taps)
        })
    })
}

/// MTU of the underlay: of the interface holding `underlay_addr` when given, else of the
/// interface the default route leaves through, in switchd's own namespace.
pub fn underlay_mtu(underlay_addr: Option<IpAddr>) -> Result<Option<u32>> {
    let Some(addr) = underlay_addr else {
        return default_route_mtu();
    };
    run_in("/proc/self/ns/net", move |h| {
        Box::pin(async move {
            let addrs: Vec<_> = h.address().get().execute().try_collect().await?;
            let idx = addrs
                .iter()
                .find(|m| m.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(ip) | AddressAttribute::Local(ip) if *ip == addr)))
                .map(|m| m.header.index)
                .with_context(|| format!("underlay_addr {addr} is not assigned to any interface in switchd's namespace"))?;
            link_mtu(h, idx).await
        })
    })
}

async fn link_mtu(h: &Handle, idx: u32) -> Result<Option<u32>> {
    let link = h.link().get().match_index(idx).execute().try_next().await?;
    Ok(link.and_then(|l| {
        l.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
    }))
}

/// MTU of the interface the default route leaves through, in switchd's own namespace.
fn default_route_mtu() -> Result<Option<u32>> {
    run_in("/proc/self/ns/net", |h| {
        Box::pin(async move {
            let routes = ipv4_routes(h).await?;
            let oif = routes
                .iter()
                .filter(|r| r.header.destination_prefix_length == 0)
                .find_map(|r| {
                    r.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Oif(o) => Some(*o),
                        _ => None,
                    })
                });
            let Some(oif) = oif else { return Ok(None) };
            link_mtu(h, oif).await
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake procfs: `pid -> namespace link target`, plus entries that are not processes.
    fn fake_proc(tag: &str, procs: &[(&str, &str)]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("swnsproc-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("self/ns")).unwrap();
        std::os::unix::fs::symlink("net:[7]", dir.join("self/ns/net")).unwrap();
        for (pid, target) in procs {
            std::fs::create_dir_all(dir.join(pid).join("ns")).unwrap();
            std::os::unix::fs::symlink(target, dir.join(pid).join("ns/net")).unwrap();
        }
        dir
    }

    #[test]
    fn a_namespace_is_in_use_only_while_a_process_lives_in_it() {
        let proc = fake_proc(
            "use",
            &[("1", "net:[4026531840]"), ("42", "net:[4026532999]")],
        );
        assert!(any_process_in_netns(&proc, 4026532999));
        assert!(any_process_in_netns(&proc, 4026531840));
        // Not a prefix match, and `self` is not a process.
        assert!(!any_process_in_netns(&proc, 402653299));
        assert!(!any_process_in_netns(&proc, 7));
        std::fs::remove_dir_all(&proc).unwrap();
        // Cannot read /proc at all: keep the pod rather than tear down a live one.
        assert!(any_process_in_netns(Path::new("/nonexistent-proc"), 1));
    }

    #[test]
    fn a_path_still_naming_the_same_namespace_is_never_gone() {
        let ino = netns_inode("/proc/self/ns/net").expect("own namespace");
        assert!(!pod_netns_gone("/proc/self/ns/net", ino));
        // Another namespace at the path, or none, with no process inside: gone.
        assert!(pod_netns_gone("/proc/self/ns/net", u64::MAX));
        assert!(pod_netns_gone("/nonexistent/netns", u64::MAX));
    }
}
