//! Helpers for the end-to-end tests: network namespaces as pods and nodes, a real switchd
//! per node, and the real `switchd-cni` binary called the way a container runtime calls it.
//!
//! Every namespace and file is named with a per-process prefix (`swt<pid>-…`) so parallel
//! tests never collide, and every guard removes what it created when dropped — also when
//! the test panics.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod cluster;
pub mod containerd;
pub mod cri;
pub mod dns;
pub mod echo;
pub mod etcd;
pub mod fdstore;
pub mod kube_proxy;
pub mod podman;
pub mod wireguard;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique name for this process: `swt<pid>x<n><tag>`, short enough for interface names.
pub fn unique(tag: &str) -> String {
    format!(
        "swt{}x{}{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        tag
    )
}

/// The directory holding the workspace's built binaries (the test binary's own profile).
pub fn bin_dir() -> PathBuf {
    // Test binaries live in target/<profile>/deps, other binaries (the e2e benchmark) in
    // target/<profile> itself.
    let exe = std::env::current_exe().expect("current_exe");
    let parent = exe.parent().expect("exe directory");
    let dir = if parent.ends_with("deps") {
        parent.parent().expect("target/<profile>")
    } else {
        parent
    }
    .to_path_buf();
    for bin in ["switchd", "switchd-cni", "switchctl"] {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: build the binaries first (`cargo build --release --workspace --bins`, which scripts/test does)",
            dir.join(bin).display()
        );
    }
    dir
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

pub fn ip(args: &[&str]) -> Output {
    run(Command::new("ip").args(args))
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        let out = ip(&["netns", "add", &name]);
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A handle on a namespace someone else owns (a container's): never deleted by us.
    pub fn borrowed(name: &str) -> std::mem::ManuallyDrop<Netns> {
        std::mem::ManuallyDrop::new(Netns { name: name.into() })
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Run a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    /// Run a command inside the namespace that must succeed; panics with its stderr.
    pub fn exec_ok(&self, args: &[&str]) {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Does at least one ping to `addr` (either family) come back?
    pub fn ping(&self, addr: impl Into<IpAddr>) -> bool {
        let addr = addr.into();
        self.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", &addr.to_string()])
            .status
            .success()
    }

    pub fn has_link(&self, ifname: &str) -> bool {
        self.exec(&["ip", "link", "show", ifname]).status.success()
    }

    /// Run `f` on a thread that has entered this namespace; the thread ends afterwards.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let file = fs::File::open(self.path()).expect("open netns");
        std::thread::spawn(move || {
            // SAFETY: setns on an open namespace fd changes only this thread, which exits
            // when `f` returns.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A simulated node: its own namespace, config, state dir and switchd process.
pub struct Node {
    pub ns: Netns,
    pub dir: PathBuf,
    pub pod_cidr: String,
    child: Option<Child>,
    /// Extra environment for switchd (e.g. NOTIFY_SOCKET).
    pub env: Vec<(String, String)>,
    /// Descriptors to pass the way systemd passes its fd store (`LISTEN_FDS` from fd 3).
    pub inherit: Vec<(String, RawFd)>,
}

impl Node {
    /// Start a node whose pods live in `pod_cidr` (e.g. "10.244.1.0/24").
    pub fn start(pod_cidr: &str) -> Node {
        Node::start_in(Netns::new("n"), pod_cidr, Some(1450))
    }

    /// Start a node in an existing namespace; `mtu: None` leaves the MTU for switchd to derive.
    pub fn start_in(ns: Netns, pod_cidr: &str, mtu: Option<u32>) -> Node {
        let extra = mtu.map(|m| format!("mtu = {m}\n")).unwrap_or_default();
        Node::start_with(ns, pod_cidr, &extra, None)
    }

    /// Start a node with `extra` TOML appended to its config and, when `peers` is given, a
    /// peers file (`[[peers]]` tables) named by `peers_file`.
    pub fn start_with(ns: Netns, pod_cidr: &str, extra: &str, peers: Option<&str>) -> Node {
        let mut node = Node::prepare(ns, pod_cidr, extra, peers);
        node.launch();
        node
    }

    /// Write the node's configuration without starting switchd (see [`Node::launch`]).
    pub fn prepare(ns: Netns, pod_cidr: &str, extra: &str, peers: Option<&str>) -> Node {
        let mut node = Node::prepare_raw(
            ns,
            &format!("pod_cidr = \"{pod_cidr}\"\ncluster_cidr = \"10.244.0.0/16\"\n{extra}"),
        );
        node.pod_cidr = pod_cidr.into();
        if let Some(peers) = peers {
            fs::write(node.dir.join("peers.toml"), peers).unwrap();
            let mut config = fs::read_to_string(node.dir.join("switchd.toml")).unwrap();
            config += &format!("peers_file = \"{}/peers.toml\"\n", node.dir.display());
            fs::write(node.dir.join("switchd.toml"), config).unwrap();
        }
        node
    }

    /// Write a configuration of `node_name` (the namespace's name), `socket` and
    /// `state_dir` in the node's directory, plus `body`; start nothing.
    pub fn prepare_raw(ns: Netns, body: &str) -> Node {
        let dir = std::env::temp_dir().join(&ns.name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "node_name = \"{name}\"\nsocket = \"{dir}/switchd.sock\"\nstate_dir = \"{dir}/state\"\n{body}",
            name = ns.name,
            dir = dir.display(),
        );
        fs::write(dir.join("switchd.toml"), config).unwrap();
        Node {
            ns,
            dir,
            pod_cidr: String::new(),
            child: None,
            env: Vec::new(),
            inherit: Vec::new(),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("switchd.sock")
    }

    /// Start switchd and wait until its socket answers.
    pub fn launch(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// Wait until the socket answers; panics with the log if switchd exits or takes long.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.switchctl(&["status"]).status.success() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("switchd exited with {status}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("switchd did not become ready; log:\n{}", self.log());
    }

    /// Wait up to `limit` for switchd to exit; its exit status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut()?.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Start switchd without waiting for it.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "switchd already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("switchd.log"))
            .unwrap();
        // `sh` sets LISTEN_PID to its own PID and execs `ip netns exec`, which execs
        // switchd: one PID throughout, as systemd guarantees.
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"",
            "ip",
            "netns",
            "exec",
            &self.ns.name,
        ])
        .arg(bin_dir().join("switchd"))
        .arg("--config")
        .arg(self.dir.join("switchd.toml"))
        .env("RUST_LOG", "switchd=debug")
        .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(log);
        if !self.inherit.is_empty() {
            let names: Vec<&str> = self.inherit.iter().map(|(n, _)| n.as_str()).collect();
            cmd.env("LISTEN_FDS", self.inherit.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
            let fds: Vec<RawFd> = self.inherit.iter().map(|(_, fd)| *fd).collect();
            // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. First
            // every fd moves above the target range, then lands on 3, 4, ...
            unsafe {
                cmd.pre_exec(move || {
                    let mut high = Vec::with_capacity(fds.len());
                    for fd in &fds {
                        let h = libc::fcntl(*fd, libc::F_DUPFD, 1000);
                        if h < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        high.push(h);
                    }
                    for (i, h) in high.iter().enumerate() {
                        if libc::dup2(*h, 3 + i as i32) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("spawn switchd");
        self.child = Some(child);
    }

    /// Kill switchd with SIGKILL (a crash) and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop switchd with SIGTERM and wait for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: sending a signal to the process we spawned, by its PID.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }

    /// The running switchd's PID (`ip netns exec` execs it in place).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("switchd running").id() as i32
    }

    /// Replace the peers file (apply it with `switchctl reload` or SIGHUP).
    pub fn write_peers(&self, peers: &str) {
        fs::write(self.dir.join("peers.toml"), peers).unwrap();
    }

    /// A drop counter from `switchctl stats`.
    pub fn drops(&self, reason: &str) -> u64 {
        let stats = self.query("stats");
        stats["drops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d[0] == reason)
            .unwrap_or_else(|| panic!("no drop reason {reason} in {stats}"))[1]
            .as_u64()
            .unwrap()
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("switchd.log")).unwrap_or_default()
    }

    pub fn switchctl(&self, args: &[&str]) -> Output {
        run(Command::new(bin_dir().join("switchctl"))
            .arg("--socket")
            .arg(self.socket())
            .args(args))
    }

    /// `switchctl --json <what>` parsed.
    pub fn query(&self, what: &str) -> Value {
        let out = self.switchctl(&["--json", what]);
        assert!(
            out.status.success(),
            "switchctl {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Number of pod ports switchd has.
    pub fn pod_ports(&self) -> usize {
        self.query("ports")["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["kind"] == "pod")
            .count()
    }

    /// Wait up to `limit` until the node holds no pod port and no address, as after a DEL
    /// (or switchd's own release of a pod whose namespace vanished); panics with what is
    /// left, after `why`.
    pub fn wait_released(&self, limit: Duration, why: &str) {
        let deadline = Instant::now() + limit;
        while self.pod_ports() != 0 || !self.ipam_records().is_empty() {
            assert!(
                Instant::now() < deadline,
                "{why}: not released after {limit:?}: ports {}, records {:?}",
                self.pod_ports(),
                self.ipam_records()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The IPAM records on disk.
    pub fn ipam_records(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.dir.join("state/ipam.json"))
            .unwrap_or_else(|_| "{\"records\":[]}".into());
        serde_json::from_str::<Value>(&text).unwrap()["records"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The standard network configuration pointing at this node's socket.
    pub fn netconf(&self, cni_version: &str) -> String {
        format!(
            r#"{{"cniVersion":"{cni_version}","name":"switchd-test","type":"switchd-cni","socket":"{}"}}"#,
            self.socket().display()
        )
    }

    /// Run a CNI `command` for `pod` (container id = namespace name, interface eth0) with
    /// the standard configuration, as a runtime would.
    pub fn cni(&self, command: &str, pod: &Netns) -> CniOutput {
        cni(
            command,
            &self.netconf("1.1.0"),
            &pod.name,
            Some(&pod.path()),
            "eth0",
            "",
        )
    }

    /// ADD a pod as Kubernetes pod `namespace/name` (passed in `CNI_ARGS`, as kubelet does).
    pub fn add_k8s_pod(&self, pod: &Netns, namespace: &str, name: &str) -> CniOutput {
        let r = cni(
            "ADD",
            &self.netconf("1.1.0"),
            &pod.name,
            Some(&pod.path()),
            "eth0",
            &format!("K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"),
        );
        assert!(r.ok(), "ADD failed: {:?}", r.json);
        r
    }

    /// ADD a pod and return its address.
    pub fn add_pod(&self, pod: &Netns) -> Ipv4Addr {
        let r = self.cni("ADD", pod);
        assert!(r.ok(), "ADD failed: {:?}", r.json);
        r.address()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- switchd log of {} ---\n{}", self.ns.name, self.log());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// What `switchd-cni` printed and how it exited.
#[derive(Debug)]
pub struct CniOutput {
    pub code: Option<i32>,
    pub json: Value,
    pub elapsed: Duration,
}

impl CniOutput {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    pub fn error_code(&self) -> Option<u64> {
        self.json.get("code").and_then(Value::as_u64)
    }

    pub fn address(&self) -> Ipv4Addr {
        let cidr = self.json["ips"][0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no address in {}", self.json));
        cidr.split('/').next().unwrap().parse().unwrap()
    }

    /// The IPv6 address in the result, if there is one.
    pub fn address_v6(&self) -> Option<Ipv6Addr> {
        self.json["ips"]
            .as_array()?
            .iter()
            .filter_map(|ip| ip["address"].as_str())
            .find(|a| a.contains(':'))
            .and_then(|a| a.split('/').next()?.parse().ok())
    }
}

/// Execute `switchd-cni` exactly as a runtime does: environment plus config on stdin.
pub fn cni(
    command: &str,
    conf: &str,
    container_id: &str,
    netns: Option<&str>,
    ifname: &str,
    cni_args: &str,
) -> CniOutput {
    let mut cmd = Command::new(bin_dir().join("switchd-cni"));
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    if !command.is_empty() {
        cmd.env("CNI_COMMAND", command);
    }
    cmd.env("CNI_CONTAINERID", container_id)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/opt/cni/bin")
        .env("CNI_ARGS", cni_args);
    if let Some(ns) = netns {
        cmd.env("CNI_NETNS", ns);
    }
    execute_plugin(cmd, conf)
}

/// Execute a CNI plugin as a runtime does: `cmd` carries its environment, `conf` goes to
/// its stdin. What it printed (JSON, or null for nothing), its exit code and how long it took.
pub fn execute_plugin(mut cmd: Command, conf: &str) -> CniOutput {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let elapsed = start.elapsed();
    let json = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{:?} printed non-JSON ({e}): {}",
                cmd.get_program(),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    };
    CniOutput {
        code: out.status.code(),
        json,
        elapsed,
    }
}

/// An HTTP/1.0 GET from a thread in `ns`: the whole response, or why there is none.
pub fn http_get(ns: &Netns, addr: Ipv4Addr, port: u16, path: &str) -> Result<String, String> {
    let request = format!("GET {path} HTTP/1.0\r\n\r\n");
    ns.spawn(move || {
        let mut conn =
            TcpStream::connect_timeout(&SocketAddr::from((addr, port)), Duration::from_secs(5))
                .map_err(|e| format!("connect {addr}:{port}: {e}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(request.as_bytes())
            .map_err(|e| format!("write to {addr}:{port}: {e}"))?;
        let mut response = String::new();
        conn.read_to_string(&mut response)
            .map_err(|e| format!("read from {addr}:{port}: {e}"))?;
        Ok(response)
    })
    .join()
    .unwrap()
}

/// GET `path` from the metrics listener inside `ns`: (status line, body).
pub fn metrics_get(ns: &Netns, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    ns.spawn(move || {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, 9476)).expect("connect to metrics");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
        (head.lines().next().unwrap().to_string(), body.to_string())
    })
    .join()
    .unwrap()
}

/// A shell script that records each CNI call (`COMMAND CONTAINER_ID NETNS`) in `log`,
/// then runs `real`: how the runtime tests see which verbs a runtime really calls.
pub fn logging_plugin(real: &Path, log: &Path) -> String {
    format!(
        "#!/bin/sh\necho \"$CNI_COMMAND $CNI_CONTAINERID $CNI_NETNS\" >> '{}'\nexec '{}' \"$@\"\n",
        log.display(),
        real.display()
    )
}

/// Install switchd-cni into `bin` behind a [`logging_plugin`] wrapper (the real binary is
/// copied to `dir`); the log of calls, `COMMAND CONTAINER_ID NETNS` per line.
pub fn install_logged_switchd_cni(dir: &Path, bin: &Path) -> PathBuf {
    let real = dir.join("switchd-cni");
    fs::copy(bin_dir().join("switchd-cni"), &real).unwrap();
    let calls = dir.join("cni-calls.log");
    fs::write(bin.join("switchd-cni"), logging_plugin(&real, &calls)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(bin.join("switchd-cni"), fs::Permissions::from_mode(0o755)).unwrap();
    calls
}

/// A 64-bit FNV-1a hash, enough to tell a corrupted stream from an intact one.
pub fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(state, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
}
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Send `total` pseudo-random bytes over TCP from namespace `from` to a server in `to` at
/// `addr`; returns (bytes sent, sender hash, bytes received, receiver hash, peer address the
/// server saw).
pub fn tcp_transfer(
    from: &Netns,
    to: &Netns,
    addr: impl Into<IpAddr>,
    total: usize,
) -> (usize, u64, usize, u64, SocketAddr) {
    tcp_transfer_while(from, to, addr, move |sent| sent < total)
}

/// What [`tcp_transfer`] returns: bytes sent, sender hash, bytes received, receiver hash,
/// and the peer address the server saw.
pub type Transfer = (usize, u64, usize, u64, SocketAddr);

/// A TCP stream from `a` to `b` and one from `b` to `a` (namespace and address each), both
/// running while `during` runs and a moment after; returns them in that order.
pub fn streams_both_ways_while(
    a: (&Netns, Ipv4Addr),
    b: (&Netns, Ipv4Addr),
    during: impl FnOnce(),
) -> [Transfer; 2] {
    use std::sync::atomic::AtomicBool;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        let (f1, f2) = (stop.clone(), stop.clone());
        let there =
            s.spawn(|| tcp_transfer_while(a.0, b.0, b.1, move |_| !f1.load(Ordering::Relaxed)));
        let back =
            s.spawn(|| tcp_transfer_while(b.0, a.0, a.1, move |_| !f2.load(Ordering::Relaxed)));
        std::thread::sleep(Duration::from_millis(300));
        during();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        [there.join().unwrap(), back.join().unwrap()]
    })
}

/// Like [`tcp_transfer`], but the sender keeps going while `more(bytes_sent_so_far)` holds.
pub fn tcp_transfer_while(
    from: &Netns,
    to: &Netns,
    addr: impl Into<IpAddr>,
    more: impl Fn(usize) -> bool + Send + 'static,
) -> (usize, u64, usize, u64, SocketAddr) {
    let addr = addr.into();
    let any: IpAddr = match addr {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = to.spawn(move || {
        let listener = TcpListener::bind((any, 5201)).expect("bind server");
        ready_tx.send(()).unwrap();
        let (mut conn, peer) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let (mut n, mut h, mut buf) = (0usize, FNV_START, vec![0u8; 1 << 16]);
        loop {
            let k = match conn.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r.expect("server read"),
            };
            if k == 0 {
                break;
            }
            h = fnv1a(h, &buf[..k]);
            n += k;
        }
        (n, h, peer)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server ready");
    let client = from.spawn(move || {
        let mut conn =
            TcpStream::connect_timeout(&SocketAddr::from((addr, 5201)), Duration::from_secs(10))
                .expect("connect");
        conn.set_write_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let (mut sent, mut h, mut x) = (0usize, FNV_START, 0x9E37_79B9_7F4A_7C15u64);
        let mut buf = vec![0u8; 1 << 16];
        while more(sent) {
            for chunk in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
            let k = buf.len();
            conn.write_all(&buf[..k]).expect("client write");
            h = fnv1a(h, &buf[..k]);
            sent += k;
        }
        (sent, h)
    });
    let (sent, sent_hash) = client.join().expect("client thread");
    let (received, received_hash, peer) = server.join().expect("server thread");
    (sent, sent_hash, received, received_hash, peer)
}
