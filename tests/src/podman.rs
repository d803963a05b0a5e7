//! podman as a real CNI caller: a private configuration (CNI backend, runc, cgroupfs,
//! vfs storage in a temporary directory), a busybox image built from Debian's
//! busybox-static with `podman import`, and conflists that chain switchd-cni with the
//! reference plugins `portmap` and `tuning`. podman runs inside the node's namespace, so
//! the plugins it executes (and portmap's iptables rules) land there, not on the machine.
//! Everything is removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::{run, unique, Node};

pub struct Podman {
    pub dir: PathBuf,
    /// The plain network: switchd-cni, portmap, tuning.
    pub network: String,
    /// The same chain with switchd-cni's static `bandwidth` limits (see [`LIMITED_RATE`]).
    pub limited: String,
    /// Every CNI call switchd-cni received: `COMMAND CONTAINER_ID NETNS`, one per line.
    pub calls: PathBuf,
    netns: String,
}

/// Ingress and egress limit on the `limited` network, bits per second.
pub const LIMITED_RATE: u64 = 40_000_000;

impl Podman {
    /// A podman whose network `network` goes through `node`'s switchd.
    pub fn new(node: &Node) -> Podman {
        let dir = std::env::temp_dir().join(unique("podman"));
        let network = unique("net");
        let limited = unique("lim");
        for sub in [
            "net.d",
            "cni-bin",
            "storage",
            "run",
            "rootfs/bin",
            "rootfs/tmp",
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let calls = crate::install_logged_switchd_cni(&dir, &dir.join("cni-bin"));
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{d}/cni-bin\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{d}/net.d\"\n",
                d = dir.display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{d}/storage\"\nrunroot = \"{d}/run\"\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let conflist = |name: &str, extra: &str| {
            format!(
                r#"{{"cniVersion": "1.0.0", "name": "{name}", "plugins": [
                    {{"type": "switchd-cni", "socket": "{}", "capabilities": {{"bandwidth": true}}{extra}}},
                    {{"type": "portmap", "capabilities": {{"portMappings": true}}, "snat": true}},
                    {{"type": "tuning", "sysctl": {{"net.ipv4.conf.eth0.accept_local": "1"}}}}
                ]}}"#,
                node.socket().display()
            )
        };
        std::fs::write(
            dir.join(format!("net.d/10-{network}.conflist")),
            conflist(&network, ""),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("net.d/20-{limited}.conflist")),
            conflist(
                &limited,
                &format!(
                    r#", "bandwidth": {{"ingressRate": {LIMITED_RATE}, "ingressBurst": 800000, "egressRate": {LIMITED_RATE}, "egressBurst": 800000}}"#
                ),
            ),
        )
        .unwrap();
        // A minimal image: static busybox and the applets the tests use.
        std::fs::copy("/bin/busybox", dir.join("rootfs/bin/busybox"))
            .expect("busybox-static installed");
        for applet in [
            "sh",
            "ping",
            "nc",
            "sleep",
            "cat",
            "sha256sum",
            "dd",
            "head",
            "ip",
            "httpd",
            "hostname",
        ] {
            std::os::unix::fs::symlink("busybox", dir.join("rootfs/bin").join(applet)).unwrap();
        }
        let p = Podman {
            dir,
            network,
            limited,
            calls,
            netns: node.ns.name.clone(),
        };
        let tar = p.dir.join("rootfs.tar");
        let out = run(Command::new("tar")
            .arg("-C")
            .arg(p.dir.join("rootfs"))
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        assert!(out.status.success());
        let out = p.podman(&["import", tar.to_str().unwrap(), "localhost/swt-busybox:1"]);
        assert!(
            out.status.success(),
            "podman import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        p
    }

    pub fn podman(&self, args: &[&str]) -> Output {
        // nsenter, not `ip netns exec`: that one also makes a private mount namespace, and
        // the netns bind mounts podman makes there would be invisible to switchd. Should
        // the node's namespace be gone already, podman still runs, so cleanup never fails.
        let netns = format!("/run/netns/{}", self.netns);
        let mut cmd = Command::new("nsenter");
        if Path::new(&netns).exists() {
            cmd.arg(format!("--net={netns}"));
        }
        run(cmd
            .args(["timeout", "120", "podman"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf")))
    }

    /// Start a container that sleeps, on the switchd network.
    pub fn run(&self, name: &str) -> Output {
        self.run_with(name, &["--network", &self.network], &["sleep", "600"])
    }

    /// `podman run -d --name NAME OPTIONS... IMAGE COMMAND...`
    pub fn run_with(&self, name: &str, options: &[&str], command: &[&str]) -> Output {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(options);
        args.push("localhost/swt-busybox:1");
        args.extend_from_slice(command);
        self.podman(&args)
    }

    /// The container's network namespace (podman's SandboxKey), which podman owns.
    pub fn netns_of(&self, name: &str) -> std::mem::ManuallyDrop<crate::Netns> {
        let out = self.podman(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.SandboxKey}}",
            name,
        ]);
        assert!(out.status.success(), "inspect {name}");
        let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let ns = key.rsplit('/').next().unwrap();
        assert!(!ns.is_empty(), "{name} has no network namespace: {key:?}");
        crate::Netns::borrowed(ns)
    }

    pub fn calls(&self) -> String {
        std::fs::read_to_string(&self.calls).unwrap_or_default()
    }

    pub fn exec(&self, name: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", name];
        args.extend_from_slice(cmd);
        self.podman(&args)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let out = self.podman(&["rm", "-af", "-t", "0"]);
        if !out.status.success() {
            eprintln!(
                "podman rm -af failed; containers may be left behind: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = self.podman(&["rmi", "-af"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
