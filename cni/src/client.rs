//! Talking to switchd: connect with a bounded wait, one request, one response.

use std::io::ErrorKind as IoKind;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use switchd_proto::{self as proto, FrameError, Request, Response};

use crate::error::{code, CniError};

/// Per-request budget once connected; attaching a pod takes milliseconds, so this only
/// bounds a wedged daemon.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// Send `req`, retrying the connection (and "not ready" answers) until `connect_timeout`
/// passes; then answer code 11 so the runtime tries again later.
pub fn call(socket: &str, connect_timeout: Duration, req: &Request) -> Result<Response, CniError> {
    let deadline = Instant::now() + connect_timeout;
    loop {
        let last_error = match UnixStream::connect(socket) {
            Ok(mut stream) => {
                let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
                let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
                match proto::call(&mut stream, req) {
                    Ok(Response::Error(e)) if e.kind == proto::ErrorKind::NotReady => e.message,
                    Ok(resp) => return Ok(resp),
                    Err(FrameError::Version { .. } | FrameError::Json(_)) => {
                        return Err(CniError::new(
                            code::PROTOCOL_MISMATCH,
                            "switchd-cni and switchd speak different protocol versions",
                            "install switchd-cni from the same release as switchd",
                        ))
                    }
                    Err(FrameError::Io(e))
                        if matches!(e.kind(), IoKind::WouldBlock | IoKind::TimedOut) =>
                    {
                        return Err(CniError::new(
                            code::TRY_AGAIN_LATER,
                            "switchd did not answer in time",
                            format!(
                                "no response on {socket} within {}s",
                                REQUEST_TIMEOUT.as_secs()
                            ),
                        ))
                    }
                    Err(e) => e.to_string(),
                }
            }
            Err(e) if matches!(e.kind(), IoKind::NotFound | IoKind::ConnectionRefused) => {
                e.to_string()
            }
            Err(e) => {
                return Err(CniError::new(
                    code::IO_FAILURE,
                    "cannot connect to switchd",
                    format!("{socket}: {e}"),
                ))
            }
        };
        if Instant::now() + RETRY_EVERY > deadline {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                "switchd is not reachable; try again later",
                format!("{socket}: {last_error} (waited {} ms; is switchd running? `systemctl status switchd`)", connect_timeout.as_millis()),
            ));
        }
        std::thread::sleep(RETRY_EVERY);
    }
}
