//! The deployment files: the systemd unit is covered in operate.rs; here the Kubernetes
//! manifests parse and refer to files that exist, the scripts are valid shell, and the
//! peers file the sidecar renders from Node objects is one switchd accepts.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use switchd_e2e::{bin_dir, run, unique};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Parse `deploy/kubernetes/<name>`, check it has `kinds`, and return its DaemonSet.
fn daemonset(name: &str, kinds_wanted: &[&str]) -> serde_json::Value {
    let manifest = repo().join("deploy/kubernetes").join(name);
    let script = "import sys, yaml, json; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))";
    let out = run(Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(&manifest));
    assert!(
        out.status.success(),
        "{name}: YAML does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = docs
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    for kind in kinds_wanted {
        assert!(
            kinds.contains(kind),
            "{name}: {kind} missing from {kinds:?}"
        );
    }
    docs.as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .cloned()
        .unwrap()
}

/// `switchd --check` on `config` written to `dir/switchd.toml`; removes `dir` afterwards.
fn switchd_check(dir: &Path, config: &str) -> std::process::Output {
    std::fs::write(dir.join("switchd.toml"), config).unwrap();
    let out = run(Command::new(bin_dir().join("switchd"))
        .arg("--check")
        .arg("--config")
        .arg(dir.join("switchd.toml")));
    let _ = std::fs::remove_dir_all(dir);
    out
}

#[test]
fn kubernetes_manifests_parse_and_refer_to_files_that_exist() {
    let etcd = daemonset("switchd-etcd.yaml", &["DaemonSet"]);
    let etcd_spec = &etcd["spec"]["template"]["spec"];
    let env = &etcd_spec["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "MEMBERSHIP" && e["value"] == "etcd"),
        "{env}"
    );
    assert!(etcd_spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["secret"]["secretName"] == "switchd-etcd-tls"));
    check_daemonset(&etcd);
    let ds = daemonset(
        "switchd.yaml",
        &[
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
        ],
    );
    check_daemonset(&ds);
}

fn check_daemonset(ds: &serde_json::Value) {
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    let mounts: Vec<&str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    for path in [
        "/run/switchd",
        "/var/lib/switchd",
        "/opt/cni/bin",
        "/etc/cni/net.d",
    ] {
        assert!(mounts.contains(&path), "{path} not mounted: {mounts:?}");
    }

    // Every command the DaemonSet runs is copied into the image, from a file that exists.
    let dockerfile = std::fs::read_to_string(repo().join("deploy/kubernetes/Dockerfile")).unwrap();
    let copies: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
        .collect();
    for line in &copies {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(
                repo().join(src).exists(),
                "Dockerfile copies {src}, which does not exist"
            );
        }
    }
    for c in spec["containers"].as_array().unwrap() {
        let cmd = c["command"][0].as_str().unwrap();
        let file = Path::new(cmd).file_name().unwrap().to_str().unwrap();
        assert!(
            copies.iter().any(|l| l.contains(file)),
            "{cmd} is not copied into the image"
        );
    }
    for script in ["lib.sh", "entrypoint.sh", "peers-sync.sh"] {
        let out = run(Command::new("sh")
            .arg("-n")
            .arg(repo().join("deploy/kubernetes").join(script)));
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_sidecar_renders_peers_from_node_objects_that_switchd_accepts() {
    let nodes = r#"{"items": [
        {"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"}, "status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "192.168.50.1"}]}},
        {"metadata": {"name": "n2"}, "spec": {"podCIDR": "10.244.2.0/24"}, "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.2"}]}},
        {"metadata": {"name": "n3"}, "spec": {}, "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.3"}]}}
    ]}"#;
    let mut child = Command::new("sh")
        .arg(repo().join("deploy/kubernetes/peers-sync.sh"))
        .args(["render", "n1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run peers-sync.sh (needs jq)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), nodes.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let peers = String::from_utf8(out.stdout).unwrap();
    assert!(
        peers.contains("name = \"n2\"") && peers.contains("addr = \"192.168.50.2\""),
        "{peers}"
    );
    assert!(
        peers.contains("mac = \"0a:58:0a:f4:02:01\""),
        "router MAC derived like switchd's default: {peers}"
    );
    assert!(!peers.contains("\"n1\""), "a node is not its own peer");
    assert!(
        !peers.contains("\"n3\""),
        "a node without a pod CIDR is skipped"
    );

    let dir = std::env::temp_dir().join(unique("k8s"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("peers.toml"), &peers).unwrap();
    let config = format!(
        "node_name = \"n1\"\npod_cidr = \"10.244.1.0/24\"\nunderlay_addr = \"192.168.50.1\"\npeers_file = \"{}\"\n",
        dir.join("peers.toml").display()
    );
    let out = switchd_check(&dir, &config);
    assert!(
        out.status.success(),
        "switchd refused the rendered peers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("n2=10.244.2.0/24"));
}

/// The DaemonSet entrypoint printing its etcd-mode config for node worker-7.
fn render_etcd_config() -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg(repo().join("deploy/kubernetes/entrypoint.sh"))
        .arg("render-config")
        .env("MEMBERSHIP", "etcd")
        .env("NODE_NAME", "worker-7")
        .env("HOST_IP", "192.168.50.7");
    cmd
}

#[test]
fn the_etcd_entrypoint_renders_a_config_that_switchd_accepts() {
    let dir = std::env::temp_dir().join(unique("k8s"));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::write(dir.join(f), "placeholder").unwrap();
    }
    let out = run(render_etcd_config()
        .env(
            "ETCD_ENDPOINTS",
            "https://10.0.0.5:2379,https://10.0.0.6:2379",
        )
        .env("ETCD_TLS_DIR", &dir));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = String::from_utf8(out.stdout).unwrap();
    assert!(
        config.contains(r#"etcd_endpoints = ["https://10.0.0.5:2379","https://10.0.0.6:2379"]"#),
        "{config}"
    );
    assert!(
        !config.contains("pod_cidr"),
        "leased, not configured: {config}"
    );
    let out = switchd_check(&dir, &config);
    assert!(
        out.status.success(),
        "switchd refused the rendered config: {}{config}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("node worker-7 pod_cidr (leased from etcd)"),
        "{summary}"
    );

    // Without an endpoint list it stops and says what to set.
    let out = run(render_etcd_config().env_remove("ETCD_ENDPOINTS"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ETCD_ENDPOINTS"));
}
