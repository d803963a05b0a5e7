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
        } => sw
            .attach(key, network, netns, pod)
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
        })),
        Request::ListPorts => Ok(Response::Ports { ports: sw.ports() }),
        Request::ListTable => Ok(Response::Table {
            entries: sw.table(),
        }),
        Request::Stats => Ok(Response::Stats(sw.stats_info())),
        Request::ListPeers => Ok(Response::Peers { peers: sw.peers() }),
        Request::Reload => sw.reload_peers().map(|peers| Response::Reloaded { peers }),
    };
    result.unwrap_or_else(Response::Error)
}
