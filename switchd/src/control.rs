//! The control socket: a Unix stream socket (mode 0600) speaking `switchd-proto`, one
//! request/response at a time per connection.
//!
//! Who may talk to it, and how much one client may take:
//! - The peer's credentials (`SO_PEERCRED`) are checked on accept: root, or the user
//!   switchd runs as. The 0600 mode already keeps others out; the check still holds if
//!   someone loosens the mode, and the refusal is logged with the peer's uid and pid.
//! - At most [`MAX_CONNECTIONS`] connections at once; more are answered "not ready" and
//!   closed, so a flood of idle clients cannot take the socket from CNI calls for long,
//!   and a burst of CNI calls wider than the limit (a node deleting 250 pods at once) is
//!   retried by `switchd-cni` instead of failing.
//! - A request may be at most [`MAX_REQUEST_LEN`] bytes (the largest real one, a GC with
//!   every attachment of a full node, is tens of KiB), so a huge length prefix allocates
//!   nothing.
//! - An idle connection is closed after [`IDLE_TIMEOUT`], and a request whose bytes stop
//!   arriving after [`REQUEST_TIMEOUT`].

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use switchd_proto::{
    self as proto, ErrorKind, ErrorReply, FrameError, Request, Response, StatusInfo,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::switch::Switch;

/// Bind the control socket, refusing to steal it from a live daemon. Mode 0600, or 0660
/// and owned by `group` when members of a group may use it.
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating socket directory {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another switchd is already listening on {}; give this one its own `socket`",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    let mode = match group {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid))
                .with_context(|| format!("chown :{gid} {}", path.display()))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))?;
    Ok(listener)
}

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 128;
/// The largest request accepted (responses may be larger, up to the protocol's limit).
pub const MAX_REQUEST_LEN: usize = 1 << 20;
/// How long a connection may sit without starting a request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the rest of a request may take once its length has arrived.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(sw: Arc<Switch>, listener: UnixListener) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((mut stream, _)) => {
                if let Err(why) = allowed(&stream, sw.cfg.socket_group.as_ref()) {
                    tracing::warn!(reason = %why, "refused a control connection");
                    refuse(stream, ErrorKind::BadRequest, why);
                    continue;
                }
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::warn!(
                        limit = MAX_CONNECTIONS,
                        "refused a control connection: too many open"
                    );
                    let why = format!(
                        "switchd already serves {MAX_CONNECTIONS} control connections; try again shortly"
                    );
                    // NotReady: every switchd-cni retries it until its connect timeout.
                    refuse(stream, ErrorKind::NotReady, why);
                    continue;
                };
                let sw = sw.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_connection(sw, &mut stream).await {
                        tracing::debug!(error = %e, "control connection ended");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept on control socket failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Root, the user switchd runs as, and members of `group` (primary or supplementary, as
/// the kernel saw them at connect time) may use the socket. The socket's mode says the
/// same; this holds even if someone loosens the mode or bind-mounts the socket elsewhere.
fn allowed(stream: &UnixStream, group: Option<&(String, u32)>) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if cred.uid() == 0 || cred.uid() == me {
        return Ok(());
    }
    if let Some((_, gid)) = group {
        if cred.gid() == *gid || peer_groups(stream).contains(gid) {
            return Ok(());
        }
    }
    let others = match group {
        Some((name, gid)) => format!(", uid {me} or members of group {name} (gid {gid})"),
        None => format!(" or uid {me} (set socket_group to let a group in)"),
    };
    Err(format!(
        "uid {} gid {} (pid {}) may not use the control socket: only root{others} may",
        cred.uid(),
        cred.gid(),
        cred.pid().map_or("?".into(), |p| p.to_string()),
    ))
}

/// The peer's supplementary groups when it connected (`SO_PEERGROUPS`); empty if unknown.
fn peer_groups(stream: &UnixStream) -> Vec<u32> {
    use std::os::fd::AsRawFd;
    /// `SO_PEERGROUPS` from include/uapi/asm-generic/socket.h (Linux 4.13).
    const SO_PEERGROUPS: libc::c_int = 59;
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `groups`, which holds that many,
    // and stores the length it wrote in `len`; the descriptor is the stream's own.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Vec::new();
    }
    groups.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
    groups
}

/// Answer the client's first request with an error and close. The request is read (and
/// discarded) first: a client whose request had not been read would get a broken pipe
/// instead of the reason. Bounded by [`REQUEST_TIMEOUT`] and [`MAX_REQUEST_LEN`].
fn refuse(mut stream: UnixStream, kind: ErrorKind, why: String) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let mut prefix = [0u8; 4];
            stream.read_exact(&mut prefix).await?;
            let len = (u32::from_be_bytes(prefix) as usize).min(MAX_REQUEST_LEN);
            let mut sink = vec![0u8; len];
            stream.read_exact(&mut sink).await
        })
        .await;
        let reply = Response::Error(ErrorReply::new(kind, why));
        if let Ok(frame) = proto::encode(&reply) {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(&frame)).await;
        }
    });
}

async fn handle_connection(sw: Arc<Switch>, stream: &mut UnixStream) -> Result<(), FrameError> {
    let timed_out = |what: &str| {
        FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what}; closing the connection"),
        ))
    };
    loop {
        let mut prefix = [0u8; 4];
        match tokio::time::timeout(IDLE_TIMEOUT, stream.read_exact(&mut prefix)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(timed_out("no request for 30 s")),
        }
        let len = match proto::frame_len(prefix) {
            Ok(len) if len <= MAX_REQUEST_LEN => Ok(len),
            Ok(len) => Err(format!(
                "a request of {len} bytes exceeds the limit of {MAX_REQUEST_LEN} bytes"
            )),
            Err(e) => Err(e.to_string()),
        };
        let response = match len {
            Ok(len) => {
                let mut payload = vec![0u8; len];
                match tokio::time::timeout(REQUEST_TIMEOUT, stream.read_exact(&mut payload)).await {
                    Ok(r) => r?,
                    Err(_) => return Err(timed_out("the request stopped arriving for 5 s")),
                };
                match proto::decode::<Request>(&payload) {
                    Ok(Request::Capture { port, count }) => {
                        capture(&sw, stream, &port, count).await?;
                        continue;
                    }
                    Ok(Request::Monitor { port, rate }) => {
                        monitor(&sw, stream, port.as_deref(), rate).await?;
                        continue;
                    }
                    Ok(req) => dispatch(&sw, req).await,
                    Err(e @ FrameError::Version { .. }) => {
                        Response::Error(ErrorReply::new(ErrorKind::VersionMismatch, e.to_string()))
                    }
                    Err(e) => {
                        Response::Error(ErrorReply::new(ErrorKind::BadRequest, e.to_string()))
                    }
                }
            }
            Err(why) => {
                // We cannot resynchronise after a bad length: answer and hang up.
                let reply = Response::Error(ErrorReply::new(ErrorKind::BadRequest, why.clone()));
                stream.write_all(&proto::encode(&reply)?).await?;
                return Err(FrameError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    why,
                )));
            }
        };
        stream.write_all(&proto::encode(&response)?).await?;
    }
}

async fn dispatch(sw: &Switch, req: Request) -> Response {
    if !sw.is_ready() && !matches!(req, Request::Status) {
        return Response::Error(ErrorReply::new(
            ErrorKind::NotReady,
            "switchd is still starting; try again shortly",
        ));
    }
    let result = match req {
        Request::Attach {
            key,
            network,
            netns,
            pod,
            bandwidth,
        } => sw
            .attach(key, network, netns, pod, bandwidth)
            .await
            .map(Response::Attached),
        Request::Detach { key, .. } => sw
            .detach(&key)
            .await
            .map(|existed| Response::Detached { existed }),
        Request::Check { key, netns } => sw.check(&key, &netns).await.map(Response::Checked),
        Request::Gc { network, valid } => sw
            .gc(&network, &valid)
            .await
            .map(|removed| Response::GcDone { removed }),
        Request::Status => Ok(Response::Status(StatusInfo {
            ready: sw.is_ready(),
            node_name: sw.cfg.node_name.clone(),
            pod_cidr: sw.cfg.pod_cidr.to_string(),
            pod_cidr_v6: sw.cfg.ipv6.map(|v6| v6.pod_cidr.to_string()),
            router_mac: crate::datapath::frame::format_mac(sw.cfg.router_mac),
            underlay: sw
                .cfg
                .underlay_addr
                .map(|a| std::net::SocketAddr::new(a, sw.cfg.tunnel_port).to_string()),
            mtu: sw.mtu,
            ports: sw.port_count(),
            detail: if sw.is_ready() {
                "ready".into()
            } else {
                "starting".into()
            },
            membership: sw.membership.lock().unwrap().clone(),
            masquerade: sw.masquerade.state().0,
            masquerade_detail: sw.masquerade.state().1,
            encryption: sw.cfg.encryption.as_str().into(),
            wireguard: sw.wireguard.as_ref().map(|w| switchd_proto::WireGuardInfo {
                public_key: crate::config::format_wireguard_key(&w.public_key()),
                listen: w.local.to_string(),
                plain: w.plain.as_str().into(),
            }),
        })),
        Request::ListPorts => Ok(Response::Ports { ports: sw.ports() }),
        Request::ListTable => Ok(Response::Table {
            entries: sw.table(),
        }),
        Request::Stats => Ok(Response::Stats(sw.stats_info())),
        Request::ListPeers => Ok(Response::Peers { peers: sw.peers() }),
        Request::Reload => sw.reload_peers().map(|peers| Response::Reloaded { peers }),
        Request::Trace(t) => crate::trace::run(sw, &t).map(Response::Trace),
        Request::Capture { .. } | Request::Monitor { .. } => Err(ErrorReply::new(
            ErrorKind::BadRequest,
            "capture and monitor are streamed, not dispatched",
        )),
    };
    result.unwrap_or_else(Response::Error)
}

/// Answer a streamed request with an error instead of its stream.
async fn answer_error(stream: &mut UnixStream, e: ErrorReply) -> Result<(), FrameError> {
    stream
        .write_all(&proto::encode(&Response::Error(e))?)
        .await?;
    Ok(())
}

/// Stream `count` frames (0: until the client hangs up) crossing the port `selector` names.
async fn capture(
    sw: &Switch,
    stream: &mut UnixStream,
    selector: &str,
    count: u32,
) -> Result<(), FrameError> {
    let port = match sw.find_port(selector) {
        Ok(p) => p,
        Err(e) => return answer_error(stream, e).await,
    };
    if port.capturing.load(std::sync::atomic::Ordering::Relaxed) {
        let e = ErrorReply::new(
            ErrorKind::AlreadyExists,
            format!("port {} is already being captured", port.tap.name()),
        );
        return answer_error(stream, e).await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    port.set_capture(Some(tx));
    struct StopOnDrop(Arc<crate::port::Port>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.set_capture(None);
        }
    }
    let _stop = StopOnDrop(port.clone());
    tracing::info!(
        port = port.id,
        ifname = port.tap.name(),
        count,
        "capture started"
    );
    let (mut reader, mut writer) = stream.split();
    let mut sent = 0u32;
    let mut hangup = [0u8; 1];
    while count == 0 || sent < count {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(f) => {
                    writer.write_all(&proto::encode(&Response::Frame(f))?).await?;
                    sent += 1;
                }
                None => break,
            },
            // The client never sends during a capture: any read result means it hung up.
            _ = reader.read(&mut hangup) => break,
        }
    }
    writer
        .write_all(&proto::encode(&Response::CaptureDone {
            frames: sent,
            lost: port.capture_lost.load(std::sync::atomic::Ordering::Relaxed),
        })?)
        .await?;
    tracing::info!(port = port.id, frames = sent, "capture ended");
    Ok(())
}

/// Stream drop events (only those from the port `selector` names, if any) until the client
/// hangs up: at most `rate` a second (0: no limit), and once a second a count of those
/// over the rate or lost to a slow reader.
async fn monitor(
    sw: &Switch,
    stream: &mut UnixStream,
    selector: Option<&str>,
    rate: u32,
) -> Result<(), FrameError> {
    let port = match selector.map(|s| sw.find_port(s)).transpose() {
        Ok(p) => p,
        Err(e) => return answer_error(stream, e).await,
    };
    let mut sub = sw.stats.monitor.subscribe(port.as_ref().map(|p| p.id));
    tracing::info!(port = ?port.as_ref().map(|p| p.label()), rate, "drop monitor started");
    let (mut reader, mut writer) = stream.split();
    let mut hangup = [0u8; 1];
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let (mut shown, mut over, mut lost_told, mut sent) = (0u32, 0u64, 0u64, 0u64);
    loop {
        tokio::select! {
            event = sub.rx.recv() => match event {
                Some(e) if rate == 0 || shown < rate => {
                    let e = drop_event(sw, e);
                    writer.write_all(&proto::encode(&Response::Event(e))?).await?;
                    shown += 1;
                    sent += 1;
                }
                Some(_) => over += 1,
                None => break,
            },
            _ = tick.tick() => {
                let lost = sub.lost.load(std::sync::atomic::Ordering::Relaxed);
                let events = over + lost - lost_told;
                if events > 0 {
                    writer.write_all(&proto::encode(&Response::Suppressed { events })?).await?;
                }
                (shown, over, lost_told) = (0, 0, lost);
            }
            // The client never sends during a monitor: any read result means it hung up.
            _ = reader.read(&mut hangup) => break,
        }
    }
    tracing::info!(events = sent, "drop monitor ended");
    Ok(())
}

fn drop_event(sw: &Switch, e: crate::monitor::Dropped) -> proto::DropEvent {
    use crate::monitor::Source;
    let snap = sw.snapshot();
    let from = match e.source {
        Source::Port(id) => snap
            .ports
            .get(&id)
            .map(|p| p.label())
            .unwrap_or_else(|| format!("port {id}")),
        Source::Peer(n) => snap
            .peers
            .get(n)
            .map(|p| format!("peer {}", p.peer.name))
            .unwrap_or_else(|| format!("peer #{n}")),
        Source::Underlay(addr) => format!("{addr} (not a peer)"),
    };
    proto::DropEvent {
        ts_micros: e.ts_micros,
        reason: e.reason.as_str().into(),
        from,
        kind: e.what.kind,
        src: e.what.src,
        dst: e.what.dst,
        len: e.len,
        why: e.why,
    }
}
