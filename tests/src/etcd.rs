//! A real etcd (Debian's `etcd-server`) for the membership tests, with a temporary data
//! dir. The nodes are network namespaces, so etcd runs inside the underlay's namespace and
//! listens on its loopback and on an underlay address every node can reach. Stopped and
//! its data removed on drop.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::Underlay;
use crate::{run, unique, Node};

/// etcd's address on the underlay bridge.
pub const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 250);

pub struct Etcd {
    pub url: String,
    ns: String,
    dir: PathBuf,
    child: Option<Child>,
    /// With TLS: the directory holding ca.crt, server.{crt,key}, client.{crt,key}.
    pub tls: Option<PathBuf>,
}

/// Make a throwaway CA, a server certificate for etcd's addresses and a client
/// certificate, with the `openssl` command, in `dir`.
fn make_certs(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let sh = |script: &str| {
        let out = run(Command::new("sh").arg("-ec").arg(script).current_dir(dir));
        assert!(out.status.success(), "{script}: {out:?}");
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    sh(&format!(
        "openssl req -x509 {ec} -keyout ca.key -out ca.crt -days 2 -subj /CN=swt-test-ca"
    ));
    for (name, ext) in [
        (
            "server",
            format!("subjectAltName=IP:{ETCD_ADDR},IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"),
        ),
        ("client", "extendedKeyUsage=clientAuth".to_string()),
    ] {
        sh(&format!(
            "openssl req {ec} -keyout {name}.key -out {name}.csr -subj /CN=swt-{name}\n\
             printf '{ext}\\n' > {name}.ext\n\
             openssl x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out {name}.crt -extfile {name}.ext"
        ));
    }
}

impl Etcd {
    /// Start etcd on `underlay` and wait until it is healthy.
    pub fn start(underlay: &Underlay) -> Etcd {
        Etcd::start_with(underlay, false)
    }

    /// Like [`Etcd::start`], serving only TLS and requiring client certificates.
    pub fn start_tls(underlay: &Underlay) -> Etcd {
        Etcd::start_with(underlay, true)
    }

    fn start_with(underlay: &Underlay, tls: bool) -> Etcd {
        let out = underlay.ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{ETCD_ADDR}/24"),
            "dev",
            "br0",
        ]);
        assert!(out.status.success(), "{out:?}");
        let dir = std::env::temp_dir().join(unique("etcd"));
        let scheme = if tls { "https" } else { "http" };
        let mut e = Etcd {
            url: format!("{scheme}://{ETCD_ADDR}:2379"),
            ns: underlay.ns.name.clone(),
            tls: tls.then(|| dir.join("certs")),
            dir,
            child: None,
        };
        if let Some(certs) = &e.tls {
            make_certs(certs);
        }
        e.resume();
        e
    }

    /// (Re)start etcd on the same data dir and wait until it answers.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "etcd", "--name", "swt"]);
        if let Some(certs) = &self.tls {
            cmd.arg(format!(
                "--cert-file={}",
                certs.join("server.crt").display()
            ))
            .arg(format!("--key-file={}", certs.join("server.key").display()))
            .arg(format!(
                "--trusted-ca-file={}",
                certs.join("ca.crt").display()
            ))
            .arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg(format!(
                "--listen-client-urls={scheme}://127.0.0.1:2379,{}",
                self.url
            ))
            .arg(format!("--advertise-client-urls={}", self.url))
            .args([
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=swt=http://127.0.0.1:2380",
                "--log-level=warn",
                "--logger=zap",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd-server installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ctl(&["endpoint", "health"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "etcd did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The running etcd's PID (`ip netns exec` execs it in place).
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The namespace etcd runs in; it listens on `127.0.0.1:2379` there.
    pub fn netns(&self) -> &str {
        &self.ns
    }

    /// Stop etcd (SIGTERM) and wait for it; the data stays for [`Etcd::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling the process we spawned, by its PID (`ip netns exec`
            // execs etcd in place).
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// Throw away etcd's data (it must be stopped): the next [`Etcd::resume`] starts empty.
    pub fn wipe(&mut self) {
        assert!(self.child.is_none(), "stop etcd first");
        std::fs::remove_dir_all(self.dir.join("data")).unwrap();
    }

    /// `etcdctl` against this etcd, v3 API.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "etcdctl", "--command-timeout=3s"]);
        match &self.tls {
            Some(certs) => {
                cmd.arg("--endpoints=https://127.0.0.1:2379")
                    .arg(format!("--cacert={}", certs.join("ca.crt").display()))
                    .arg(format!("--cert={}", certs.join("client.crt").display()))
                    .arg(format!("--key={}", certs.join("client.key").display()));
            }
            None => {
                cmd.arg("--endpoints=http://127.0.0.1:2379");
            }
        }
        run(cmd.args(args).env("ETCDCTL_API", "3"))
    }

    /// The keys under `prefix`, with their values.
    pub fn keys(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.ctl(&["get", "--prefix", prefix]);
        assert!(out.status.success(), "etcdctl get: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_string(), c[1].to_string()))
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// A switchd node configured with nothing but the cluster CIDR, etcd and its underlay
    /// address: no `pod_cidr`, no peers. Not started.
    pub fn node(
        &self,
        ns: crate::Netns,
        underlay_addr: Ipv4Addr,
        cluster_cidr: &str,
        extra: &str,
    ) -> Node {
        let tls = match &self.tls {
            Some(certs) => format!(
                "etcd_ca = \"{}\"\netcd_cert = \"{}\"\netcd_key = \"{}\"\n",
                certs.join("ca.crt").display(),
                certs.join("client.crt").display(),
                certs.join("client.key").display()
            ),
            None => String::new(),
        };
        Node::prepare_raw(
            ns,
            &format!(
                "cluster_cidr = \"{cluster_cidr}\"\nmembership = \"etcd\"\netcd_endpoints = [\"{}\"]\nunderlay_addr = \"{underlay_addr}\"\netcd_lease_ttl = {LEASE_TTL}\nmtu = 1400\n{tls}{extra}",
                self.url
            ),
        )
    }
}

/// The tests' lease TTL, seconds: short, so a stopped node leaves quickly.
pub const LEASE_TTL: u64 = 4;

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- etcd log ---\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
