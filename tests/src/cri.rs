//! The kubelet's path into the plugin: containerd 1.6's CRI plugin, driven over its gRPC
//! socket with the CRI v1 API (`k8s-cri`), as kubelet drives it.
//!
//! containerd runs in the node's network namespace with a private root, state, socket,
//! CNI configuration directory and CNI binary directory, so nothing under `/etc/cni` or
//! `/opt/cni` is touched. No registry is reachable: a pause image and a busybox image are
//! built from Debian's busybox-static (`podman import` into a private store, `podman save`)
//! and imported into containerd's `k8s.io` namespace; `sandbox_image` names the local
//! pause image. Sandboxes left behind are stopped and removed on drop, then containerd is
//! killed by its PID.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{run, unique, Node};

pub const PAUSE_IMAGE: &str = "localhost/swt-pause:1";
pub const BUSYBOX_IMAGE: &str = "localhost/swt-busybox:1";

/// containerd with its CRI plugin, and a blocking CRI client.
pub struct Cri {
    pub dir: PathBuf,
    /// Every CNI call switchd-cni received: `COMMAND CONTAINER_ID NETNS`, one per line.
    pub calls: PathBuf,
    daemon: Child,
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// A pod as kubelet describes it to the runtime.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// kubelet's sandbox attempt: 0 first, one more for each replacement sandbox.
    pub attempt: u32,
    /// (containerPort, hostPort), TCP.
    pub host_ports: Vec<(i32, i32)>,
}

impl PodSpec {
    pub fn new(namespace: &str, name: &str) -> PodSpec {
        PodSpec {
            namespace: namespace.into(),
            name: name.into(),
            uid: unique("uid"),
            attempt: 0,
            host_ports: Vec::new(),
        }
    }

    fn config(&self) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: self.attempt,
            }),
            hostname: self.name.clone(),
            port_mappings: self
                .host_ports
                .iter()
                .map(|&(container_port, host_port)| cri::PortMapping {
                    protocol: cri::Protocol::Tcp as i32,
                    container_port,
                    host_port,
                    host_ip: String::new(),
                })
                .collect(),
            labels: HashMap::from([("app".to_string(), self.name.clone())]),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Pod as i32,
                        pid: cri::NamespaceMode::Container as i32,
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

impl Cri {
    pub fn start(node: &Node) -> Cri {
        let dir = std::env::temp_dir().join(unique("cri"));
        for sub in ["net.d", "cni-bin", "rootfs/bin", "rootfs/www", "podman"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let calls = install_cni(&dir, node);
        let sock = dir.join("containerd.sock");
        std::fs::write(
            dir.join("config.toml"),
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
address = "{sock}"
[plugins."io.containerd.internal.v1.opt"]
path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
sandbox_image = "{PAUSE_IMAGE}"
restrict_oom_score_adj = true
stream_server_address = "127.0.0.1"
stream_server_port = "0"
[plugins."io.containerd.grpc.v1.cri".containerd]
snapshotter = "native"
default_runtime_name = "runc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".cni]
bin_dir = "{d}/cni-bin"
conf_dir = "{d}/net.d"
max_conf_num = 1
"#,
                d = dir.display(),
                sock = sock.display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        // In the node's netns (the CNI plugins it runs, and portmap's rules, act there) but
        // the machine's mount namespace (`ip netns exec` would give it a private one, and
        // the sandbox netns it pins under /run/netns would be invisible to switchd).
        let daemon = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.ns.name))
            .args(["containerd", "--config"])
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd installed");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let channel = rt
            .block_on(connect(sock.clone()))
            .expect("connect to containerd's CRI socket");
        let mut c = Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            calls,
            daemon,
            rt,
            dir,
        };
        c.import_images();
        c
    }

    /// Build the pause and busybox images and import them into `k8s.io`.
    fn import_images(&mut self) {
        let rootfs = self.dir.join("rootfs");
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
        for applet in ["sh", "sleep", "httpd", "wget", "cat", "hostname", "ip"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let tar = self.dir.join("rootfs.tar");
        let out = run(Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        assert!(out.status.success(), "tar rootfs");
        for (image, entrypoint) in [
            (PAUSE_IMAGE, r#"ENTRYPOINT ["/bin/sleep", "infinity"]"#),
            (BUSYBOX_IMAGE, r#"ENTRYPOINT ["/bin/sh"]"#),
        ] {
            let archive = self
                .dir
                .join(format!("{}.tar", image.replace(['/', ':'], "_")));
            self.podman(&[
                "import",
                "--change",
                entrypoint,
                "--change",
                "ENV PATH=/bin",
            ])
            .arg(&tar)
            .arg(image)
            .output()
            .map(|o| {
                assert!(
                    o.status.success(),
                    "podman import: {}",
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap();
            let out = self
                .podman(&["save", "-o"])
                .arg(&archive)
                .arg(image)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "podman save: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let out = self.ctr(&[
                "images",
                "import",
                "--snapshotter",
                "native",
                archive.to_str().unwrap(),
            ]);
            assert!(
                out.status.success(),
                "ctr images import: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for image in [PAUSE_IMAGE, BUSYBOX_IMAGE] {
            let status = self
                .rt
                .block_on(self.images.image_status(cri::ImageStatusRequest {
                    image: Some(cri::ImageSpec {
                        image: image.into(),
                        ..Default::default()
                    }),
                    verbose: false,
                }))
                .expect("ImageStatus");
            assert!(
                status.into_inner().image.is_some(),
                "CRI does not see {image}"
            );
        }
    }

    /// podman with a private store under our directory (only to build images).
    fn podman(&self, args: &[&str]) -> Command {
        let d = self.dir.join("podman");
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .args(args);
        cmd
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        run(Command::new("timeout")
            .args(["60", "ctr", "--address"])
            .arg(self.dir.join("containerd.sock"))
            .args(["--namespace", "k8s.io"])
            .args(args))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    pub fn calls(&self) -> String {
        std::fs::read_to_string(&self.calls).unwrap_or_default()
    }

    /// RunPodSandbox: the pause container, its netns, and the CNI ADD.
    pub fn run_pod_sandbox(&mut self, pod: &PodSpec) -> Result<String, tonic::Status> {
        let req = cri::RunPodSandboxRequest {
            config: Some(pod.config()),
            runtime_handler: String::new(),
        };
        let r = self.rt.block_on(self.runtime.run_pod_sandbox(req))?;
        Ok(r.into_inner().pod_sandbox_id)
    }

    /// CreateContainer + StartContainer of busybox `sh -c script` in the sandbox.
    pub fn start_container(
        &mut self,
        sandbox: &str,
        pod: &PodSpec,
        name: &str,
        script: &str,
    ) -> String {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: BUSYBOX_IMAGE.into(),
                    ..Default::default()
                }),
                args: vec!["-c".into(), script.into()],
                linux: Some(cri::LinuxContainerConfig::default()),
                ..Default::default()
            }),
            sandbox_config: Some(pod.config()),
        };
        let id = self
            .rt
            .block_on(self.runtime.create_container(req))
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", self.log()))
            .into_inner()
            .container_id;
        self.rt
            .block_on(self.runtime.start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            }))
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e}\n{}", self.log()));
        id
    }

    /// ExecSync: (exit code, stdout).
    pub fn exec(&mut self, container: &str, cmd: &[&str]) -> (i32, String) {
        let r = self
            .rt
            .block_on(self.runtime.exec_sync(cri::ExecSyncRequest {
                container_id: container.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 10,
            }))
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}"))
            .into_inner();
        (r.exit_code, String::from_utf8_lossy(&r.stdout).into_owned())
    }

    /// PodSandboxStatus: (state is ready, pod IP).
    pub fn sandbox_status(&mut self, sandbox: &str) -> (bool, String) {
        let s = self.status(sandbox);
        let ip = s.network.map(|n| n.ip).unwrap_or_default();
        (s.state == cri::PodSandboxState::SandboxReady as i32, ip)
    }

    /// Every pod IP PodSandboxStatus reports: the primary, then the additional ones (what
    /// kubelet puts in `status.podIPs`).
    pub fn sandbox_ips(&mut self, sandbox: &str) -> Vec<String> {
        let Some(n) = self.status(sandbox).network else {
            return Vec::new();
        };
        std::iter::once(n.ip)
            .chain(n.additional_ips.into_iter().map(|a| a.ip))
            .filter(|ip| !ip.is_empty())
            .collect()
    }

    fn status(&mut self, sandbox: &str) -> cri::PodSandboxStatus {
        self.rt
            .block_on(
                self.runtime
                    .pod_sandbox_status(cri::PodSandboxStatusRequest {
                        pod_sandbox_id: sandbox.into(),
                        verbose: false,
                    }),
            )
            .unwrap_or_else(|e| panic!("PodSandboxStatus: {e}"))
            .into_inner()
            .status
            .expect("a status")
    }

    /// The sandboxes the runtime knows of: (id, ready).
    pub fn sandboxes(&mut self) -> Vec<(String, bool)> {
        self.rt
            .block_on(
                self.runtime
                    .list_pod_sandbox(cri::ListPodSandboxRequest::default()),
            )
            .expect("ListPodSandbox")
            .into_inner()
            .items
            .into_iter()
            .map(|s| (s.id, s.state == cri::PodSandboxState::SandboxReady as i32))
            .collect()
    }

    /// StopPodSandbox then RemovePodSandbox, as kubelet does when a pod is deleted.
    pub fn stop_and_remove(&mut self, sandbox: &str) -> Result<(), tonic::Status> {
        self.rt
            .block_on(self.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: sandbox.into(),
            }))?;
        self.rt.block_on(
            self.runtime
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: sandbox.into(),
                }),
        )?;
        Ok(())
    }
}

async fn connect(sock: PathBuf) -> Result<Channel, tonic::transport::Error> {
    // The URI is required but unused: every connection goes to the Unix socket.
    Endpoint::try_from("http://[::]:0")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(sock).await?))
            }
        }))
        .await
}

/// switchd-cni behind a wrapper that logs each call, `portmap` and `loopback` from
/// Debian's containernetworking-plugins, and the conflist kubelet's runtime reads.
fn install_cni(dir: &Path, node: &Node) -> PathBuf {
    let bin = dir.join("cni-bin");
    let calls = crate::install_logged_switchd_cni(dir, &bin);
    for plugin in ["portmap", "loopback"] {
        std::fs::copy(Path::new("/usr/lib/cni").join(plugin), bin.join(plugin))
            .expect("containernetworking-plugins installed");
    }
    std::fs::write(
        dir.join("net.d/10-switchd.conflist"),
        format!(
            r#"{{"cniVersion": "1.0.0", "name": "switchd", "plugins": [
                {{"type": "switchd-cni", "socket": "{}"}},
                {{"type": "portmap", "capabilities": {{"portMappings": true}}, "snat": true}}
            ]}}"#,
            node.socket().display()
        ),
    )
    .unwrap();
    calls
}

impl Drop for Cri {
    fn drop(&mut self) {
        for (id, _) in self.sandboxes() {
            let _ = self.stop_and_remove(&id);
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
