//! A stand-in for systemd's side of the notify protocol, enough to test restarts: it
//! collects `READY=1`/`WATCHDOG=1` messages and keeps descriptors sent with `FDSTORE=1`
//! (dropping them on `FDSTOREREMOVE=1`), so a test can pass them to the next switchd the
//! way systemd does (`LISTEN_FDS`, `LISTEN_FDNAMES`, fds from 3).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct FdStore {
    sock: UnixDatagram,
    pub path: PathBuf,
    pub fds: BTreeMap<String, OwnedFd>,
    pub messages: Vec<String>,
}

impl FdStore {
    pub fn new() -> FdStore {
        let dir = std::env::temp_dir().join(crate::unique("store"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        FdStore {
            sock,
            path,
            fds: BTreeMap::new(),
            messages: Vec::new(),
        }
    }

    /// Start `node` the way systemd starts a service with a stored fd set: every stored
    /// descriptor passed in (`LISTEN_FDS`), and nothing passed to later starts.
    pub fn launch_with_fds(&self, node: &mut crate::Node) {
        node.inherit = self
            .fds
            .iter()
            .map(|(name, fd)| (name.clone(), fd.as_raw_fd()))
            .collect();
        node.launch();
        node.inherit.clear();
    }

    /// Process messages until `done(self)` holds or `timeout` passes.
    pub fn pump_until(&mut self, timeout: Duration, done: impl Fn(&FdStore) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if Instant::now() > deadline {
                return false;
            }
            if !self.receive_one() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        true
    }

    /// Take in every message waiting now. The socket holds only a few datagrams
    /// (`net.unix.max_dgram_qlen`, 10 by default) before a sender blocks, as systemd's
    /// does; switchd sends one per port queue on every start.
    pub fn drain(&mut self) {
        while self.receive_one() {}
    }

    fn receive_one(&mut self) -> bool {
        let mut data = [0u8; 4096];
        let mut control = [0u8; 256];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: an all-zero msghdr is valid; the buffers outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        // SAFETY: valid msghdr on our own socket.
        let n = unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            return false;
        }
        let mut fds: Vec<OwnedFd> = Vec::new();
        // SAFETY: walking the control messages the kernel wrote into `control`.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                        / std::mem::size_of::<RawFd>();
                    for i in 0..count {
                        let fd =
                            std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>().add(i));
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        let text = String::from_utf8_lossy(&data[..n as usize]).to_string();
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("FDNAME="))
            .unwrap_or("stored")
            .to_string();
        if text.lines().any(|l| l == "FDSTORE=1") {
            if let Some(fd) = fds.pop() {
                self.fds.insert(name, fd);
            }
        } else if text.lines().any(|l| l == "FDSTOREREMOVE=1") {
            self.fds.remove(&name);
        }
        self.messages.push(text);
        true
    }
}

impl Default for FdStore {
    fn default() -> Self {
        FdStore::new()
    }
}

impl Drop for FdStore {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
