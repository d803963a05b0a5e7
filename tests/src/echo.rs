//! "Who are you and who am I talking to": a TCP and UDP server that answers every request
//! with its own name and the source address it saw, like the agnhost `netexec` server that
//! Kubernetes' e2e network tests use (`/hostname`, `/clientip`). It runs on a thread inside
//! a namespace and stops when dropped.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::Netns;

/// Both protocols on `port` of every address in the namespace.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(ns: &Netns, name: &str, port: u16) -> EchoServer {
        EchoServer::start_on(ns, name, Ipv4Addr::UNSPECIFIED.into(), port)
    }

    /// Listen on `any` (`0.0.0.0`, or `::` for IPv6 clients too) instead.
    pub fn start_on(ns: &Netns, name: &str, any: IpAddr, port: u16) -> EchoServer {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let tcp = {
            let (stop, name, ready) = (stop.clone(), name.to_string(), ready_tx.clone());
            ns.spawn(move || {
                let l = TcpListener::bind((any, port)).expect("bind tcp");
                l.set_nonblocking(true).unwrap();
                ready.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut c, peer)) => {
                            c.set_nonblocking(false).unwrap();
                            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                            let mut line = [0u8; 64];
                            let _ = c.read(&mut line);
                            let _ = c.write_all(format!("{name} {}\n", peer.ip()).as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        let udp = {
            let (stop, name, ready) = (stop.clone(), name.to_string(), ready_tx);
            ns.spawn(move || {
                let s = UdpSocket::bind((any, port)).expect("bind udp");
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                ready.send(()).unwrap();
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, peer)) = s.recv_from(&mut buf) else {
                        continue;
                    };
                    // The request may ask for a reply of a given size: "size N".
                    let want = std::str::from_utf8(&buf[..n.min(32)])
                        .ok()
                        .and_then(|t| t.strip_prefix("size "))
                        .and_then(|t| t.split_whitespace().next())
                        .and_then(|t| t.parse::<usize>().ok())
                        .unwrap_or(0);
                    let mut reply = format!("{name} {} {n}\n", peer.ip()).into_bytes();
                    if reply.len() < want {
                        reply.resize(want, b'.');
                    }
                    let _ = s.send_to(&reply, peer);
                }
            })
        };
        for _ in 0..2 {
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("echo server did not start");
        }
        EchoServer {
            stop,
            threads: vec![tcp, udp],
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What a server answered: its name and the client address it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub server: String,
    pub client: IpAddr,
    /// UDP: the size of the request as the server received it; and of the whole reply.
    pub request_len: usize,
    pub reply_len: usize,
}

fn parse(bytes: &[u8]) -> Result<Answer, String> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().next().unwrap_or_default();
    let mut f = line.split_whitespace();
    let (Some(server), Some(client)) = (f.next(), f.next()) else {
        return Err(format!("unexpected answer {line:?}"));
    };
    Ok(Answer {
        server: server.into(),
        client: client
            .parse()
            .map_err(|_| format!("bad address in {line:?}"))?,
        request_len: f.next().and_then(|n| n.parse().ok()).unwrap_or(0),
        reply_len: bytes.len(),
    })
}

/// Ask over TCP from inside `ns`.
pub fn ask_tcp(ns: &Netns, to: impl Into<IpAddr>, port: u16) -> Result<Answer, String> {
    let to = to.into();
    ns.spawn(move || {
        let mut c =
            TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_secs(3))
                .map_err(|e| format!("connect {to}:{port}: {e}"))?;
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.write_all(b"hello\n").map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        c.read_to_end(&mut buf)
            .map_err(|e| format!("read from {to}:{port}: {e}"))?;
        parse(&buf)
    })
    .join()
    .unwrap()
}

/// Ask over UDP from inside `ns`, with a request of `request_len` bytes asking for a reply
/// of `reply_len`; retried a few times (UDP may lose the first datagram while ARP settles).
pub fn ask_udp(
    ns: &Netns,
    to: impl Into<IpAddr>,
    port: u16,
    request_len: usize,
    reply_len: usize,
) -> Result<Answer, String> {
    let to = to.into();
    let any: IpAddr = match to {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    ns.spawn(move || {
        let s = UdpSocket::bind((any, 0)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        let mut req = format!("size {reply_len} ").into_bytes();
        req.resize(request_len.max(req.len()), b'x');
        let mut buf = vec![0u8; 65536];
        let mut last = String::new();
        for _ in 0..4 {
            s.send_to(&req, (to, port))
                .map_err(|e| format!("send: {e}"))?;
            match s.recv_from(&mut buf) {
                Ok((n, from)) if from == SocketAddr::from((to, port)) => return parse(&buf[..n]),
                Ok((_, from)) => last = format!("answer from {from}, not from {to}:{port}"),
                Err(e) => last = format!("no answer from {to}:{port}: {e}"),
            }
        }
        Err(last)
    })
    .join()
    .unwrap()
}
