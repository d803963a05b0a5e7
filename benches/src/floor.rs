//! The bare floor: the least work any switch built on TAP devices and UDP sockets must do
//! to move a pod's frames, measured in the same topology and run as switchd and the kernel.
//!
//! - Same node: two TAPs, one relay thread per direction. A frame (virtio-net header and
//!   super-frame, exactly as the pod's TSO made it) is read from one TAP and written to the
//!   other: no parsing, no table, no checksum, no copy in userspace. One `read` and one
//!   `write` per frame, which is the kernel's copy out of and into the pods.
//! - Across nodes: one TAP and one UDP socket per node, one thread per direction. A frame
//!   is cut into datagrams that fit the underlay's MTU, each with a 4-byte length header,
//!   and sent in one `sendmsg` with `UDP_SEGMENT` (scatter-gather: no copy in userspace).
//!   The receiver takes `UDP_GRO` batches and writes each frame back to its TAP with one
//!   `writev` of the pieces (a frame split over two batches is copied: counted). No valid
//!   inner packet is ever built on the wire: that is work a real switch must do and the
//!   floor does not, so the floor is a bound, not a rival.
//!
//! Blocking threads, one per direction, is the most parallel structure there is: a flow's
//! two directions can use both cores. It is the bound for any thread layout.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;

use switchd::port::tap::Tap;
use switchd_e2e::cluster::Underlay;
use switchd_e2e::Netns;

/// Pod MTU, as switchd and the flannel-style kernel nodes give their pods.
const POD_MTU: &str = "1450";
/// UDP payload per datagram on a 1500-byte underlay: 1500 - 20 (IPv4) - 8 (UDP).
const DATAGRAM: usize = 1472;
const CHUNK: usize = DATAGRAM - 4;
/// Datagrams per `sendmsg`: their total must stay under the 64 KiB UDP limit.
const PER_SEND: usize = 44;
const FRAME_BUF: usize = 10 + 14 + 65_535;
const FIRST: u32 = 1 << 31;
const PORT: u16 = 4790;

/// Thread names start with this, so their CPU time can be read apart.
pub const THREAD_PREFIX: &str = "floor";

/// A running floor relay between a client pod and a server pod.
pub struct Floor {
    pub client: Netns,
    pub server: Netns,
    pub server_addr: Ipv4Addr,
    stop: Arc<AtomicBool>,
    /// Frames that arrived split over two receive batches and were copied (across nodes).
    pub spilled: Arc<AtomicU64>,
    /// Zero-copy floor only: sends the kernel reported complete, and how many of them it
    /// had to copy after all (`SO_EE_CODE_ZEROCOPY_COPIED`).
    pub zerocopy: Arc<ZeroCopyCounts>,
    threads: Vec<JoinHandle<()>>,
    _nodes: Vec<Netns>,
    _underlay: Option<Underlay>,
}

impl Floor {
    /// Two pods on one node, their TAPs relayed to each other.
    pub fn same_node() -> Floor {
        let node = Netns::new("fl");
        let taps = node
            .spawn(|| (open("fl0"), open("fl1")))
            .join()
            .expect("floor TAPs");
        let (client, server) = (Netns::new("fa"), Netns::new("fb"));
        plug(&node, "fl0", &client, "10.98.0.1/24");
        plug(&node, "fl1", &server, "10.98.0.2/24");
        let (a, b) = (Arc::new(taps.0), Arc::new(taps.1));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = vec![
            relay("floor-ab", stop.clone(), {
                let (a, b) = (a.clone(), b.clone());
                move |stop| tap_to_tap(&a, &b, stop)
            }),
            relay("floor-ba", stop.clone(), move |stop| {
                tap_to_tap(&b, &a, stop)
            }),
        ];
        Floor {
            client,
            server,
            server_addr: Ipv4Addr::new(10, 98, 0, 2),
            stop,
            spilled: Arc::new(AtomicU64::new(0)),
            zerocopy: Arc::default(),
            threads,
            _nodes: vec![node],
            _underlay: None,
        }
    }

    /// Two nodes on their own underlay of the kind switchd's nodes use, a pod on each.
    pub fn cross_node() -> Floor {
        Floor::cross_node_with(false)
    }

    /// The cross-node floor with `MSG_ZEROCOPY` sends: the TAP's frame is handed to the
    /// UDP socket without the kernel copying it, if the kernel can; each buffer is reused
    /// only once the kernel reported its sends complete.
    pub fn cross_node_zerocopy() -> Floor {
        Floor::cross_node_with(true)
    }

    fn cross_node_with(zerocopy: bool) -> Floor {
        let mut underlay = Underlay::new();
        let (n1, n2) = (Netns::new("fn"), Netns::new("fn"));
        let (u1, u2) = (underlay.attach(&n1, 1500), underlay.attach(&n2, 1500));
        let stop = Arc::new(AtomicBool::new(false));
        let spilled = Arc::new(AtomicU64::new(0));
        let counts = Arc::new(ZeroCopyCounts::default());
        let (client, server) = (Netns::new("fa"), Netns::new("fb"));
        let mut threads = Vec::new();
        for (i, (node, (local, remote), pod, addr)) in [
            (&n1, (u1, u2), &client, "10.98.1.1/24"),
            (&n2, (u2, u1), &server, "10.98.1.2/24"),
        ]
        .into_iter()
        .enumerate()
        {
            let (tap, socket) = node
                .spawn(move || (open("fl0"), tunnel_socket(local, remote)))
                .join()
                .expect("floor node");
            plug(node, "fl0", pod, addr);
            let (tap, socket) = (Arc::new(tap), Arc::new(socket));
            threads.push(relay(&format!("floor-tx{i}"), stop.clone(), {
                let (tap, socket, counts) = (tap.clone(), socket.clone(), counts.clone());
                move |stop| match zerocopy {
                    false => tap_to_udp(&tap, &socket, stop),
                    true => tap_to_udp_zerocopy(&tap, &socket, stop, &counts),
                }
            }));
            let spilled = spilled.clone();
            threads.push(relay(&format!("floor-rx{i}"), stop.clone(), move |stop| {
                udp_to_tap(&socket, &tap, stop, &spilled)
            }));
        }
        Floor {
            client,
            server,
            server_addr: Ipv4Addr::new(10, 98, 1, 2),
            stop,
            spilled,
            zerocopy: counts,
            threads,
            _nodes: vec![n1, n2],
            _underlay: Some(underlay),
        }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn open(name: &str) -> Tap {
    Tap::open(name).unwrap_or_else(|e| panic!("floor: TAP {name}: {e}"))
}

/// Move TAP `ifname` from `node` into `pod` as eth0 with `cidr`.
fn plug(node: &Netns, ifname: &str, pod: &Netns, cidr: &str) {
    let run = |ns: &Netns, cmd: &[&str]| {
        let out = ns.exec(cmd);
        assert!(
            out.status.success(),
            "floor: {cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(node, &["ip", "link", "set", ifname, "netns", &pod.name]);
    run(pod, &["ip", "link", "set", ifname, "name", "eth0"]);
    run(pod, &["ip", "link", "set", "eth0", "mtu", POD_MTU]);
    run(pod, &["ip", "addr", "add", cidr, "dev", "eth0"]);
    run(pod, &["ip", "link", "set", "eth0", "up"]);
}

fn relay(
    name: &str,
    stop: Arc<AtomicBool>,
    f: impl FnOnce(&AtomicBool) + Send + 'static,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || f(&stop))
        .expect("spawn floor thread")
}

/// Wait until `fd` is readable or 100 ms passed; false once asked to stop.
fn wait(fd: RawFd, stop: &AtomicBool) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, 100) };
    !stop.load(Relaxed)
}

fn tap_to_tap(from: &Tap, to: &Tap, stop: &AtomicBool) {
    let mut buf = vec![0u8; FRAME_BUF];
    while wait(from.as_raw_fd(), stop) {
        while let Ok(n) = from.read(&mut buf) {
            let _ = to.write(&buf[..n]);
        }
    }
}

fn tunnel_socket(local: Ipv4Addr, remote: Ipv4Addr) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddrV4::new(local, PORT)).expect("floor: bind");
    s.connect(SocketAddrV4::new(remote, PORT))
        .expect("floor: connect");
    s.set_nonblocking(true).unwrap();
    for (level, opt, v) in [
        (libc::SOL_UDP, libc::UDP_SEGMENT, DATAGRAM as libc::c_int),
        (libc::SOL_UDP, libc::UDP_GRO, 1),
        (libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20),
        (libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20),
    ] {
        // SAFETY: setsockopt reads one int through a pointer valid for the call.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                level,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            0,
            "floor: setsockopt {opt}: {}",
            io::Error::last_os_error()
        );
    }
    s
}

fn iov(bytes: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    }
}

/// Read frames from the TAP and send each as length-prefixed datagrams, up to
/// [`PER_SEND`] of them per `sendmsg` (the socket's `UDP_SEGMENT` cuts them apart).
fn tap_to_udp(tap: &Tap, socket: &UdpSocket, stop: &AtomicBool) {
    let mut buf = vec![0u8; FRAME_BUF];
    let mut heads = [[0u8; 4]; PER_SEND];
    let mut iovs = Vec::with_capacity(2 * PER_SEND);
    while wait(tap.as_raw_fd(), stop) {
        while let Ok(n) = tap.read(&mut buf) {
            let _ = send_datagrams(
                socket.as_raw_fd(),
                &buf[..n],
                &mut heads,
                &mut iovs,
                0,
                || {},
            );
        }
    }
}

/// Send `frame` as length-prefixed datagrams, `heads.len()` of them per `sendmsg` with
/// `flags` (the socket's `UDP_SEGMENT` cuts them apart); `sent()` runs after every call
/// that succeeded. A failed call (a full send buffer) loses the rest of the frame, as a
/// full NIC queue would, and is returned.
fn send_datagrams(
    fd: RawFd,
    frame: &[u8],
    heads: &mut [[u8; 4]],
    iovs: &mut Vec<libc::iovec>,
    flags: libc::c_int,
    mut sent: impl FnMut(),
) -> io::Result<()> {
    let n = frame.len() as u32;
    let mut chunks = frame.chunks(CHUNK).enumerate().peekable();
    while chunks.peek().is_some() {
        iovs.clear();
        for (slot, (i, chunk)) in chunks.by_ref().take(heads.len()).enumerate() {
            let first = if i == 0 { FIRST } else { 0 };
            heads[slot] = (first | n).to_be_bytes();
            iovs.push(iov(&heads[slot]));
            iovs.push(iov(chunk));
        }
        // SAFETY: a zeroed msghdr is valid; iov points at `iovs`, whose entries point into
        // `heads` and `frame`, all alive and unmodified during the call. (With
        // `MSG_ZEROCOPY` the caller keeps `frame` untouched until the kernel says so.)
        let rc = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = iovs.as_mut_ptr();
            msg.msg_iovlen = iovs.len();
            libc::sendmsg(fd, &msg, flags)
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        sent();
    }
    Ok(())
}

/// What the kernel said about the zero-copy floor's sends.
#[derive(Debug, Default)]
pub struct ZeroCopyCounts {
    /// Sends reported complete.
    pub completed: AtomicU64,
    /// Of those, sends the kernel copied anyway (`SO_EE_CODE_ZEROCOPY_COPIED`).
    pub copied: AtomicU64,
}

/// Frame buffers the zero-copy sender cycles through while the kernel still holds earlier
/// ones.
const ZC_RING: usize = 32;
/// Datagrams per zero-copy `sendmsg`: each takes two page fragments (its header and its
/// slice of the frame), and a zero-copy skb holds at most `MAX_SKB_FRAGS` (17) of them;
/// more fail with `EMSGSIZE`.
const ZC_PER_SEND: usize = 4;
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;
const SO_EE_CODE_ZEROCOPY_COPIED: u8 = 1;

/// [`tap_to_udp`] with `MSG_ZEROCOPY`: the kernel pins the buffer's pages instead of
/// copying them, and reports on the socket's error queue when it is done with each send
/// (numbered from 0 per socket). A buffer is read into again only once every send made
/// from it has completed.
fn tap_to_udp_zerocopy(tap: &Tap, socket: &UdpSocket, stop: &AtomicBool, counts: &ZeroCopyCounts) {
    let fd = socket.as_raw_fd();
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one int through a pointer valid for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ZEROCOPY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "floor: SO_ZEROCOPY: {}", io::Error::last_os_error());
    let mut ring: Vec<Vec<u8>> = (0..ZC_RING).map(|_| vec![0u8; FRAME_BUF]).collect();
    // Sends still outstanding per buffer, and which buffer each send id came from.
    let mut pending = [0u32; ZC_RING];
    let mut owner = vec![0u8; 1 << 16];
    let mut next_id: u32 = 0;
    let mut heads = [[0u8; 4]; ZC_PER_SEND];
    let mut iovs = Vec::with_capacity(2 * ZC_PER_SEND);
    let mut slot = 0;
    while wait(tap.as_raw_fd(), stop) {
        loop {
            while pending[slot] != 0 {
                if !reap_completions(fd, &mut pending, &owner, counts) {
                    // Nothing queued yet: wait for the error queue (POLLERR), or stop.
                    let mut p = libc::pollfd {
                        fd,
                        events: 0,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd for the duration of the call.
                    unsafe { libc::poll(&mut p, 1, 10) };
                    if stop.load(Relaxed) {
                        return;
                    }
                }
            }
            let Ok(n) = tap.read(&mut ring[slot]) else {
                break;
            };
            // The pages of `ring[slot]` stay untouched until the kernel reports every send
            // made from them complete (`pending`).
            let result = send_datagrams(
                fd,
                &ring[slot][..n],
                &mut heads,
                &mut iovs,
                libc::MSG_ZEROCOPY,
                || {
                    owner[(next_id & 0xffff) as usize] = slot as u8;
                    pending[slot] += 1;
                    next_id = next_id.wrapping_add(1);
                },
            );
            if let Err(e) = result {
                static SHOWN: AtomicBool = AtomicBool::new(false);
                if !SHOWN.swap(true, Relaxed) {
                    eprintln!("floor: zero-copy send failed: {e}");
                }
            }
            slot = (slot + 1) % ZC_RING;
        }
    }
}

/// Read every completion queued on `fd`'s error queue; false if there was none.
fn reap_completions(
    fd: RawFd,
    pending: &mut [u32; ZC_RING],
    owner: &[u8],
    counts: &ZeroCopyCounts,
) -> bool {
    let mut any = false;
    loop {
        let mut control = [0u64; 16];
        // SAFETY: a zeroed msghdr with only a control buffer we own, valid for the call;
        // the cmsg walk stays inside what recvmsg filled (the CMSG_* macros check it).
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control);
            if libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) < 0 {
                return any;
            }
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_IP && (*cmsg).cmsg_type == libc::IP_RECVERR {
                    let err = std::ptr::read_unaligned(
                        libc::CMSG_DATA(cmsg) as *const libc::sock_extended_err
                    );
                    if err.ee_origin == SO_EE_ORIGIN_ZEROCOPY {
                        complete(err, pending, owner, counts);
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        any = true;
    }
}

/// Sends `ee_info` to `ee_data` (inclusive) are complete: their buffers may be reused.
fn complete(
    err: libc::sock_extended_err,
    pending: &mut [u32; ZC_RING],
    owner: &[u8],
    counts: &ZeroCopyCounts,
) {
    let (lo, hi) = (err.ee_info, err.ee_data);
    let n = hi.wrapping_sub(lo).wrapping_add(1);
    for id in 0..n {
        let slot = owner[(lo.wrapping_add(id) & 0xffff) as usize] as usize;
        pending[slot] = pending[slot].saturating_sub(1);
    }
    counts.completed.fetch_add(n as u64, Relaxed);
    if err.ee_code & SO_EE_CODE_ZEROCOPY_COPIED != 0 {
        counts.copied.fetch_add(n as u64, Relaxed);
    }
}

/// Receive `UDP_GRO` batches and write each whole frame to the TAP with one `writev`.
fn udp_to_tap(socket: &UdpSocket, tap: &Tap, stop: &AtomicBool, spilled: &AtomicU64) {
    let buf = vec![0u8; 65_536];
    // A frame whose datagrams straddle two batches is gathered here.
    let mut spill: Vec<u8> = Vec::with_capacity(FRAME_BUF);
    let mut spill_total = 0usize;
    let mut cmsg = [0u64; 8];
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(64);
    while wait(socket.as_raw_fd(), stop) {
        loop {
            let mut v = iov(&buf);
            // SAFETY: msghdr points at one iovec over `buf` and at `cmsg`, both writable
            // and alive for the call.
            let (len, stride) = unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = &mut v;
                msg.msg_iovlen = 1;
                msg.msg_control = cmsg.as_mut_ptr().cast();
                msg.msg_controllen = std::mem::size_of_val(&cmsg);
                let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, 0);
                if n < 0 {
                    break;
                }
                let mut stride = n as usize;
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                        stride =
                            (libc::CMSG_DATA(c) as *const libc::c_int).read_unaligned() as usize;
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
                (n as usize, stride.max(5))
            };
            iovs.clear();
            let mut want = 0usize;
            let mut have = 0usize;
            for d in buf[..len].chunks(stride) {
                if d.len() < 5 {
                    continue;
                }
                let head = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
                let data = &d[4..];
                if spill_total > 0 && head & FIRST == 0 {
                    spill.extend_from_slice(data);
                    if spill.len() >= spill_total {
                        let _ = tap.write(&spill);
                        spill.clear();
                        spill_total = 0;
                    }
                    continue;
                }
                if head & FIRST != 0 {
                    spill.clear();
                    spill_total = 0;
                    iovs.clear();
                    want = (head & !FIRST) as usize;
                    have = 0;
                }
                if want == 0 {
                    continue;
                }
                iovs.push(iov(data));
                have += data.len();
                if have >= want {
                    // SAFETY: every iovec points into `buf`, alive and unmodified.
                    unsafe { libc::writev(tap.as_raw_fd(), iovs.as_ptr(), iovs.len() as i32) };
                    iovs.clear();
                    want = 0;
                }
            }
            if want > 0 {
                // The rest of this frame comes in the next batch: keep what we have.
                spilled.fetch_add(1, Relaxed);
                for piece in &iovs {
                    // SAFETY: the iovec points into `buf`, still alive.
                    let s = unsafe {
                        std::slice::from_raw_parts(piece.iov_base as *const u8, piece.iov_len)
                    };
                    spill.extend_from_slice(s);
                }
                spill_total = want;
            }
        }
    }
}
