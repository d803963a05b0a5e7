//! UDP sockets the standard library cannot make: members of an `SO_REUSEPORT` group with a
//! steering program, and send sockets whose source port is chosen for the receiver.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A non-blocking UDP socket bound to `addr` (either family), in the address's reuse-port
/// group if `group`.
pub fn bind(addr: SocketAddr, group: bool) -> io::Result<UdpSocket> {
    let family = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: socket() takes plain integers; a non-negative result is a new fd we own.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned to us and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if group {
        let one: libc::c_int = 1;
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, &one)?;
    }
    let rc = match addr {
        SocketAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sa` is a valid sockaddr_in for the length passed, alive for the call.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: `sa` is a valid sockaddr_in6 for the length passed, alive for the call.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UdpSocket::from(fd))
}

/// Steer each datagram arriving at `member`'s reuse-port group of `n` sockets to socket
/// number `source port % n` (classic BPF, `SO_ATTACH_REUSEPORT_CBPF`). The socket index is
/// the order in which the members were bound. Datagrams of one sender's port, which is one
/// flow's port (RFC 7348), therefore always reach the same socket.
pub fn steer_by_source_port(member: &UdpSocket, n: usize) -> io::Result<()> {
    if member.local_addr()?.is_ipv6() {
        let program = [
            // A = the UDP source port, right behind the 40-byte IPv6 header (tunnel
            // datagrams carry no extension headers).
            ins(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, SKF_NET_OFF + 40),
            ins(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, n as u32),
            ins(libc::BPF_RET | libc::BPF_A, 0),
        ];
        return attach_steering(member, &program);
    }
    let program = [
        // X = 4 * (ip[0] & 0xf): the IPv4 header's length.
        ins(libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH, SKF_NET_OFF),
        // A = the halfword at ip + X: the UDP source port.
        ins(libc::BPF_LD | libc::BPF_H | libc::BPF_IND, SKF_NET_OFF),
        // A = A % n, the socket index.
        ins(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, n as u32),
        ins(libc::BPF_RET | libc::BPF_A, 0),
    ];
    attach_steering(member, &program)
}

/// Steer each datagram arriving at `member`'s group of `n` sockets to socket number
/// `source address % n`: one sender, whatever its port, always reaches the same socket,
/// and the nodes of one underlay subnet spread evenly (WireGuard peers send from one port,
/// so their port says nothing).
pub fn steer_by_source_address(member: &UdpSocket, n: usize) -> io::Result<()> {
    // A = the IPv4 source address (ip + 12), or the last word of the IPv6 one (ip + 20).
    let at = if member.local_addr()?.is_ipv6() {
        20
    } else {
        12
    };
    let program = [
        ins(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, SKF_NET_OFF + at),
        ins(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, n as u32),
        ins(libc::BPF_RET | libc::BPF_A, 0),
    ];
    attach_steering(member, &program)
}

/// When a steering program runs, the packet data starts after the UDP header; the network
/// header is reachable at SKF_NET_OFF, whatever the IPv4 header's length.
const SKF_NET_OFF: u32 = (-0x100000i32) as u32;

fn ins(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn attach_steering(member: &UdpSocket, program: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `program`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            member.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A send socket on `ip` whose (ephemeral) source port is `k` modulo `n`, so that the
/// peer's [`steer_by_source_port`] hands its datagrams to the peer's worker `k`. Tries a
/// few ephemeral ports; if none fits, any port works, only less evenly spread.
pub fn bind_source_port(ip: IpAddr, k: usize, n: usize) -> io::Result<UdpSocket> {
    let mut refused = Vec::new();
    for _ in 0..64 {
        let s = bind(SocketAddr::new(ip, 0), false)?;
        let port = s.local_addr()?.port() as usize;
        if n <= 1 || port % n == k % n {
            return Ok(s);
        }
        refused.push(s); // held until we return, so the kernel does not offer it again
    }
    tracing::warn!(
        worker = k,
        "no ephemeral port fits this worker; its flows spread by hash"
    );
    Ok(refused.pop().expect("64 sockets were bound"))
}

fn setsockopt(fd: &OwnedFd, level: i32, name: i32, value: &libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a valid int for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
