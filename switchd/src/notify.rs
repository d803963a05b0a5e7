//! The systemd service protocol, in a few lines of std and libc rather than a crate:
//! readiness and watchdog datagrams to `$NOTIFY_SOCKET`, and the file-descriptor store.
//!
//! The fd store is what makes a restart invisible to pods: every TAP descriptor is handed
//! to systemd (`FDSTORE=1`, with the descriptor attached as `SCM_RIGHTS`), systemd keeps it
//! open while switchd is down — after a crash or `SIGKILL` too — and passes it back to the
//! next switchd (`LISTEN_FDS`/`LISTEN_FDNAMES`). A TAP with a descriptor open keeps its
//! carrier, so the pod's link never goes down.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

fn socket() -> io::Result<Option<UnixDatagram>> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(None);
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes())?,
        None => SocketAddr::from_pathname(&path)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.connect_addr(&addr)?;
    Ok(Some(sock))
}

/// Send `state` (e.g. `READY=1`) if switchd runs under systemd; a no-op otherwise.
pub fn notify(state: &str) -> io::Result<()> {
    if let Some(sock) = socket()? {
        sock.send(state.as_bytes())?;
    }
    Ok(())
}

/// Whether there is a service manager to talk to.
pub fn under_service_manager() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Hand `fd` to the service manager's fd store under `name` (printable, no `:`).
pub fn store_fd(name: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
    let Some(sock) = socket()? else { return Ok(()) };
    let text = format!("FDSTORE=1\nFDNAME={name}");
    let mut iov = libc::iovec {
        iov_base: text.as_ptr() as *mut libc::c_void,
        iov_len: text.len(),
    };
    let raw = fd.as_raw_fd();
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `control` is CMSG_SPACE(int) bytes, so the first header and its int payload
    // fit; CMSG_FIRSTHDR/CMSG_DATA point inside it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), raw);
    }
    // SAFETY: `msg` describes valid buffers; the socket is open.
    if unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drop `name` from the service manager's fd store.
pub fn remove_fd(name: &str) -> io::Result<()> {
    notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}"))
}

/// Descriptors passed to this process by the service manager (`LISTEN_FDS` from fd 3 on,
/// named by `LISTEN_FDNAMES`), if they are meant for this process.
pub fn inherited_fds() -> HashMap<String, OwnedFd> {
    let mut out = HashMap::new();
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if !for_us || count <= 0 {
        return out;
    }
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let names: Vec<&str> = names.split(':').collect();
    for i in 0..count {
        let raw = 3 + i;
        // SAFETY: the service manager passed fds 3..3+LISTEN_FDS to this process, which owns
        // them from now on; nothing else in switchd uses these numbers before this runs.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: fcntl on an fd we own.
        unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) };
        out.insert(names.get(i as usize).unwrap_or(&"unknown").to_string(), fd);
    }
    // SAFETY: removing environment variables before any other thread reads them (called
    // first thing at start, before the runtime starts).
    unsafe {
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    out
}

/// The keep-alive interval systemd asked for (`WatchdogSec=`), if it is meant for us.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| std::time::Duration::from_micros(usec))
}
