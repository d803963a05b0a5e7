//! podman as a real CNI caller: a private configuration (CNI backend, runc, cgroupfs,
//! vfs storage in a temporary directory), a busybox image built from Debian's
//! busybox-static with `podman import`, and a conflist that chains switchd-cni with the
//! reference plugins. Everything is removed on drop.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::{run, unique, Node};

pub struct Podman {
    pub dir: PathBuf,
    pub network: String,
}

impl Podman {
    /// A podman whose network `network` goes through `node`'s switchd.
    pub fn new(node: &Node) -> Podman {
        let dir = std::env::temp_dir().join(unique("podman"));
        let network = unique("net");
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
        std::fs::copy(
            crate::bin_dir().join("switchd-cni"),
            dir.join("cni-bin/switchd-cni"),
        )
        .unwrap();
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
        std::fs::write(
            dir.join(format!("net.d/10-{network}.conflist")),
            format!(
                r#"{{"cniVersion": "1.0.0", "name": "{network}", "plugins": [
                    {{"type": "switchd-cni", "socket": "{}"}},
                    {{"type": "tuning", "sysctl": {{"net.ipv4.conf.eth0.accept_local": "1"}}}}
                ]}}"#,
                node.socket().display()
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
        ] {
            std::os::unix::fs::symlink("busybox", dir.join("rootfs/bin").join(applet)).unwrap();
        }
        let p = Podman { dir, network };
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
        run(Command::new("timeout")
            .arg("120")
            .arg("podman")
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf")))
    }

    /// Start a container that sleeps, on the switchd network.
    pub fn run(&self, name: &str) -> Output {
        self.podman(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &self.network,
            "localhost/swt-busybox:1",
            "sleep",
            "600",
        ])
    }

    pub fn exec(&self, name: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", name];
        args.extend_from_slice(cmd);
        self.podman(&args)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-af", "-t", "0"]);
        let _ = self.podman(&["rmi", "-af"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
