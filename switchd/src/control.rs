//! The control socket: a Unix stream socket (mode 0600) speaking `switchd-proto`, one
//! request/response at a time per connection.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use switchd_proto::{
    self as proto, ErrorKind, ErrorReply, FrameError, Request, Response, StatusInfo,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::switch::Switch;

/// Bind the control socket, refusing to steal it from a live daemon.
pub fn bind(path: &Path) -> Result<UnixListener> {
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

pub async fn serve(sw: Arc<Switch>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let sw = sw.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_connection(sw, stream).await {
                        tracing::debug!(error = %e, "control connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept on control socket failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle_connection(sw: Arc<Switch>, mut stream: UnixStream) -> Result<(), FrameError> {
    loop {
        let mut prefix = [0u8; 4];
        match stream.read_exact(&mut prefix).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let response = match proto::frame_len(prefix) {
            Ok(len) => {
                let mut payload = vec![0u8; len];
                stream.read_exact(&mut payload).await?;
                match proto::decode::<Request>(&payload) {
                    Ok(Request::Capture { port, count }) => {
                        capture(&sw, &mut stream, &port, count).await?;
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
            Err(e) => {
                // We cannot resynchronise after a bad length: answer and hang up.
                let reply = Response::Error(ErrorReply::new(ErrorKind::BadRequest, e.to_string()));
                stream.write_all(&proto::encode(&reply)?).await?;
                return Err(e);
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
            router_mac: crate::datapath::frame::format_mac(sw.cfg.router_mac),
            underlay: sw
                .cfg
                .underlay_addr
                .map(|a| format!("{a}:{}", sw.cfg.tunnel_port)),
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
        })),
        Request::ListPorts => Ok(Response::Ports { ports: sw.ports() }),
        Request::ListTable => Ok(Response::Table {
            entries: sw.table(),
        }),
        Request::Stats => Ok(Response::Stats(sw.stats_info())),
        Request::ListPeers => Ok(Response::Peers { peers: sw.peers() }),
        Request::Reload => sw.reload_peers().map(|peers| Response::Reloaded { peers }),
        Request::Capture { .. } => Err(ErrorReply::new(
            ErrorKind::BadRequest,
            "capture is streamed, not dispatched",
        )),
    };
    result.unwrap_or_else(Response::Error)
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
        Err(e) => {
            stream
                .write_all(&proto::encode(&Response::Error(e))?)
                .await?;
            return Ok(());
        }
    };
    if port.capturing.load(std::sync::atomic::Ordering::Relaxed) {
        let e = ErrorReply::new(
            ErrorKind::AlreadyExists,
            format!("port {} is already being captured", port.tap.name()),
        );
        stream
            .write_all(&proto::encode(&Response::Error(e))?)
            .await?;
        return Ok(());
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
        .write_all(&proto::encode(&Response::CaptureDone { frames: sent })?)
        .await?;
    tracing::info!(port = port.id, frames = sent, "capture ended");
    Ok(())
}
