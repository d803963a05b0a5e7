//! containerd 1.6 as a real CNI caller, through `ctr run --cni`.
//!
//! ctr has no flags for its CNI paths: it reads the first conflist in `/etc/cni/net.d` and
//! runs plugins from `/opt/cni/bin`. [`Containerd::start`] therefore installs ours there,
//! remembering what was there before, and its `Drop` puts everything back: our conflist
//! removed, replaced binaries restored, directories we created deleted. A process-wide lock
//! keeps two such tests from sharing those directories. containerd itself runs with a
//! private root, state and socket, and `ctr` runs in the node's network namespace so the
//! plugins (and portmap's iptables rules) act there.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{run, unique, Node};

const NET_D: &str = "/etc/cni/net.d";
const BIN: &str = "/opt/cni/bin";
/// Reference plugins chained behind switchd-cni, from Debian's containernetworking-plugins.
const REFERENCE_PLUGINS: [&str; 3] = ["portmap", "tuning", "loopback"];

static SYSTEM_CNI_DIRS: Mutex<()> = Mutex::new(());

pub struct Containerd {
    pub dir: PathBuf,
    pub namespace: String,
    /// Every CNI call switchd-cni received: `COMMAND CONTAINER_ID NETNS`, one per line.
    pub calls: PathBuf,
    netns: String,
    daemon: Child,
    installed: Installed,
    _lock: MutexGuard<'static, ()>,
}

/// What we changed under `/etc/cni` and `/opt/cni`, to undo it.
#[derive(Default)]
struct Installed {
    created_dirs: Vec<PathBuf>,
    /// (path we wrote, backup of what was there, if anything)
    files: Vec<(PathBuf, Option<PathBuf>)>,
}

impl Installed {
    fn mkdirs(&mut self, path: &Path) {
        let mut missing = Vec::new();
        let mut p = Some(path);
        while let Some(d) = p.filter(|d| !d.exists()) {
            missing.push(d.to_path_buf());
            p = d.parent();
        }
        std::fs::create_dir_all(path).unwrap();
        // Deepest first, so they can be removed in order.
        self.created_dirs.extend(missing);
    }

    fn write(&mut self, path: &Path, backups: &Path, contents: &[u8], mode: u32) {
        let backup = path.exists().then(|| {
            let b = backups.join(path.file_name().unwrap());
            std::fs::copy(path, &b).unwrap();
            b
        });
        self.files.push((path.to_path_buf(), backup));
        // Atomically, as a runtime may be reading the directory.
        let tmp = path.with_extension("swt-tmp");
        std::fs::write(&tmp, contents).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn undo(&mut self) {
        for (path, backup) in self.files.drain(..).rev() {
            match backup {
                Some(b) => {
                    let _ = std::fs::copy(&b, &path);
                }
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        for d in self.created_dirs.drain(..) {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

impl Containerd {
    pub fn start(node: &Node) -> Containerd {
        let lock = SYSTEM_CNI_DIRS.lock().unwrap_or_else(|e| e.into_inner());
        let dir = std::env::temp_dir().join(unique("ctrd"));
        for sub in ["backup", "rootfs/bin", "rootfs/tmp", "rootfs/etc"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::copy("/bin/busybox", dir.join("rootfs/bin/busybox"))
            .expect("busybox-static installed");
        for applet in ["sh", "ping", "sleep", "cat", "ip", "httpd", "hostname"] {
            std::os::unix::fs::symlink("busybox", dir.join("rootfs/bin").join(applet)).unwrap();
        }
        std::fs::write(dir.join("rootfs/etc/greeting"), "hello from containerd\n").unwrap();
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\naddress = \"{d}/containerd.sock\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\npath = \"{d}/opt\"\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd installed");
        let calls = dir.join("cni-calls.log");
        let mut c = Containerd {
            namespace: unique("ns"),
            calls,
            netns: node.ns.name.clone(),
            daemon,
            installed: Installed::default(),
            _lock: lock,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c.install_cni(node);
        c
    }

    /// switchd-cni (behind a wrapper that logs each call), the reference plugins, and a
    /// conflist named to sort before anything already in `/etc/cni/net.d`.
    fn install_cni(&mut self, node: &Node) {
        let backups = self.dir.join("backup");
        self.installed.mkdirs(Path::new(BIN));
        self.installed.mkdirs(Path::new(NET_D));
        let real = self.dir.join("switchd-cni");
        std::fs::copy(crate::bin_dir().join("switchd-cni"), &real).unwrap();
        let wrapper = crate::logging_plugin(&real, &self.calls);
        self.installed.write(
            &Path::new(BIN).join("switchd-cni"),
            &backups,
            wrapper.as_bytes(),
            0o755,
        );
        for plugin in REFERENCE_PLUGINS {
            let bytes = std::fs::read(Path::new("/usr/lib/cni").join(plugin))
                .expect("containernetworking-plugins installed");
            self.installed
                .write(&Path::new(BIN).join(plugin), &backups, &bytes, 0o755);
        }
        let conflist = format!(
            r#"{{"cniVersion": "1.0.0", "name": "switchd", "plugins": [
                {{"type": "switchd-cni", "socket": "{}", "capabilities": {{"bandwidth": true}}}},
                {{"type": "portmap", "capabilities": {{"portMappings": true}}, "snat": true}},
                {{"type": "tuning", "sysctl": {{"net.ipv4.conf.eth0.accept_local": "1"}}}},
                {{"type": "loopback"}}
            ]}}"#,
            node.socket().display()
        );
        self.installed.write(
            &Path::new(NET_D).join("00-switchd-test.conflist"),
            &backups,
            conflist.as_bytes(),
            0o644,
        );
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        run(Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["timeout", "60", "ctr", "--address"])
            .arg(self.dir.join("containerd.sock"))
            .args(["--namespace", &self.namespace])
            .args(args))
    }

    /// `ctr run --cni [OPTIONS...] --rootfs ROOTFS ID COMMAND...` (`--rootfs` is a switch
    /// that makes the first argument a directory instead of an image).
    pub fn run(&self, id: &str, options: &[&str], command: &[&str]) -> Output {
        let rootfs = self.dir.join("rootfs");
        // No image config, so no PATH either.
        let mut args = vec!["run", "--cni", "--env", "PATH=/bin"];
        args.extend_from_slice(options);
        args.extend_from_slice(&["--rootfs", rootfs.to_str().unwrap(), id]);
        args.extend_from_slice(command);
        self.ctr(&args)
    }

    /// Kill and delete a container's task and the container, as an operator would after
    /// `ctr run -d`: ctr itself never calls DEL for it.
    pub fn remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ctr(&["task", "delete", id]).status.success() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.ctr(&["container", "delete", id]);
    }

    pub fn calls(&self) -> String {
        std::fs::read_to_string(&self.calls).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks first: their shims are separate processes that outlive containerd.
        let out = self.ctr(&["container", "list", "--quiet"]);
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            self.remove(id);
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        self.installed.undo();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
