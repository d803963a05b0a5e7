//! The deployment files: the systemd unit is covered in operate.rs; here the Kubernetes
//! manifests parse and refer to files that exist, the scripts are valid shell, and the
//! configs the DaemonSet entrypoint renders are ones switchd accepts.

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// [`switchd_check`] that must succeed; returns switchd's summary line.
fn switchd_accepts(dir: &Path, config: &str) -> String {
    let out = switchd_check(dir, config);
    assert!(
        out.status.success(),
        "switchd refused the rendered config: {}{config}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    for script in ["lib.sh", "entrypoint.sh"] {
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
fn the_node_mode_entrypoint_renders_a_config_that_switchd_accepts() {
    let render = |v6: Option<&str>| {
        let mut cmd = Command::new("sh");
        cmd.arg(repo().join("deploy/kubernetes/entrypoint.sh"))
            .arg("render-config")
            .env("NODE_NAME", "worker-3")
            .env("HOST_IP", "192.168.50.3")
            .env_remove("MEMBERSHIP")
            .env_remove("CLUSTER_CIDR_V6");
        if let Some(v6) = v6 {
            cmd.env("CLUSTER_CIDR_V6", v6);
        }
        run(&mut cmd)
    };
    for v6 in [None, Some("fd10:244::/48")] {
        let out = render(v6);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = String::from_utf8(out.stdout).unwrap();
        assert!(config.contains("membership = \"kubernetes\""), "{config}");
        assert!(
            !config.contains("pod_cidr ="),
            "the pod CIDR comes from the Node: {config}"
        );
        let dir = std::env::temp_dir().join(unique("k8s"));
        std::fs::create_dir_all(&dir).unwrap();
        let summary = switchd_accepts(&dir, &config);
        assert!(
            summary.contains("pod_cidr (from this node's Node object)"),
            "{summary}"
        );
        assert_eq!(
            summary.contains("the Node's IPv6 pod CIDR"),
            v6.is_some(),
            "{summary}"
        );
    }
    // Without the node's address there is no tunnel: the pod says which variable.
    let mut cmd = Command::new("sh");
    cmd.arg(repo().join("deploy/kubernetes/entrypoint.sh"))
        .arg("render-config")
        .env("NODE_NAME", "worker-3")
        .env_remove("HOST_IP")
        .env_remove("MEMBERSHIP");
    let out = run(&mut cmd);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOST_IP"));
}

#[test]
fn the_conflist_chains_portmap_when_the_node_has_it() {
    let out = run(Command::new("sh").arg("-c").arg(format!(
        ". {}; conflist_with_portmap < {}",
        repo().join("deploy/kubernetes/lib.sh").display(),
        repo().join("deploy/10-switchd.conflist").display()
    )));
    assert!(out.status.success());
    let conf: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    let types: Vec<&str> = conf["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["switchd-cni", "portmap"]);
    assert_eq!(conf["plugins"][1]["capabilities"]["portMappings"], true);
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
    let summary = switchd_accepts(&dir, &config);
    assert!(
        summary.contains("node worker-7 pod_cidr (leased from etcd)"),
        "{summary}"
    );

    // Dual-stack is one variable away: the node's /64 follows its leased subnet.
    let out = run(render_etcd_config()
        .env("ETCD_ENDPOINTS", "http://10.0.0.5:2379")
        .env("CLUSTER_CIDR_V6", "fd10:244::/48"));
    let config = String::from_utf8(out.stdout).unwrap();
    assert!(
        config.contains("cluster_cidr_v6 = \"fd10:244::/48\""),
        "{config}"
    );
    let dir = std::env::temp_dir().join(unique("k8s"));
    std::fs::create_dir_all(&dir).unwrap();
    let out = switchd_check(&dir, &config);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("pod_cidr_v6 (a /64 of cluster_cidr_v6 fd10:244::/48"),
        "switchd refused the rendered config: {}{config}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Encryption is one variable away, and switchd accepts what it renders.
    let out = run(render_etcd_config()
        .env("ETCD_ENDPOINTS", "http://10.0.0.5:2379")
        .env("ENCRYPTION", "wireguard")
        .env("ENCRYPTION_PLAIN", "send"));
    let config = String::from_utf8(out.stdout).unwrap();
    assert!(
        config.contains("encryption = \"wireguard\"\nencryption_plain = \"send\""),
        "{config}"
    );
    let dir = std::env::temp_dir().join(unique("k8s"));
    std::fs::create_dir_all(&dir).unwrap();
    let out = switchd_check(&dir, &config);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("encryption wireguard"),
        "switchd refused the rendered config: {}{config}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without an endpoint list it stops and says what to set.
    let out = run(render_etcd_config().env_remove("ETCD_ENDPOINTS"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ETCD_ENDPOINTS"));
}

/// A `systemctl` for a machine without systemd as PID 1: it runs the installed unit's
/// `ExecStart` in the background and records, when it does, whether the CNI conflist was
/// already there (it must not be: runtimes would send pods to a daemon that is not up).
const FAKE_SYSTEMCTL: &str = r#"#!/bin/sh
set -eu
log=$SWT_DIR/systemctl.log
echo "systemctl $*" >> "$log"
case "$*" in
    daemon-reload|"enable switchd") ;;
    "restart switchd")
        [ -f /run/switchd.pid ] && kill "$(cat /run/switchd.pid)" 2>/dev/null && sleep 0.5
        exec_start=$(sed -n 's/^ExecStart=//p' /etc/systemd/system/switchd.service)
        (
            sleep 1
            if [ -e /etc/cni/net.d/10-switchd.conflist ]; then c=yes; else c=no; fi
            echo "start: conflist present=$c" >> "$log"
            exec $exec_start
        ) >> "$SWT_DIR/switchd.log" 2>&1 &
        echo $! > /run/switchd.pid
        ;;
    "disable --now switchd") kill "$(cat /run/switchd.pid)" ;;
    *) echo "fake systemctl: unexpected: $*" >&2; exit 1 ;;
esac
"#;

/// Runs inside fresh mount, network and PID namespaces: /etc, /opt, /usr/local and
/// /var/lib are overlays whose writes land in $SWT_DIR, /run is a tmpfs, so the install
/// touches nothing of the machine; every process dies with the namespace.
const INSTALL_SCRIPT: &str = r#"
set -eu
mount --make-rprivate /
for d in /etc /opt /usr/local /var/lib; do
    n=$SWT_DIR/ovl$(echo "$d" | tr / _)
    mkdir -p "$n/up" "$n/work"
    mount -t overlay overlay -o "lowerdir=$d,upperdir=$n/up,workdir=$n/work" "$d"
done
mount -t tmpfs tmpfs /run
ip link set lo up
export PATH=$SWT_DIR/bin:$PATH
rm -f /etc/cni/net.d/10-switchd.conflist
deploy/install.sh --prebuilt "$SWT_BIN" > "$SWT_DIR/install.log" 2>&1
echo INSTALLED
[ -x /usr/local/bin/switchd ] && [ -x /usr/local/bin/switchctl ] && [ -x /opt/cni/bin/switchd-cni ] && echo BINARIES
[ -f /etc/switchd/switchd.toml ] && [ -f /etc/systemd/system/switchd.service ] && echo CONFIG_AND_UNIT
[ -f /etc/cni/net.d/10-switchd.conflist ] && echo CONFLIST
# A pod, attached the way a runtime would with the installed plugin and conflist.
ip netns add swtpod
conf=$(jq -c '.plugins[0] + {cniVersion: .cniVersion, name: .name}' /etc/cni/net.d/10-switchd.conflist)
echo "$conf" | CNI_COMMAND=ADD CNI_CONTAINERID=c1 CNI_NETNS=/run/netns/swtpod CNI_IFNAME=eth0 \
    CNI_PATH=/opt/cni/bin /opt/cni/bin/switchd-cni > "$SWT_DIR/add.json"
ip netns exec swtpod ping -c 1 -W 2 10.244.1.1 >/dev/null && echo POD_REACHES_GATEWAY
# Installing again is an upgrade: a restart, and the pod's address survives it.
deploy/install.sh --prebuilt "$SWT_BIN" >> "$SWT_DIR/install.log" 2>&1
ip netns exec swtpod ping -c 1 -W 2 10.244.1.1 >/dev/null && echo POD_SURVIVES_UPGRADE
# A config switchd refuses stops the install before anything starts.
cp /etc/switchd/switchd.toml "$SWT_DIR/good.toml"
echo 'mtu = 5' >> /etc/switchd/switchd.toml
if ! deploy/install.sh --prebuilt "$SWT_BIN" > "$SWT_DIR/bad.log" 2>&1; then echo BAD_CONFIG_REFUSED; fi
cp "$SWT_DIR/good.toml" /etc/switchd/switchd.toml
deploy/install.sh uninstall >> "$SWT_DIR/install.log" 2>&1
[ ! -e /usr/local/bin/switchd ] && [ ! -e /opt/cni/bin/switchd-cni ] && [ ! -e /etc/cni/net.d/10-switchd.conflist ] \
    && [ -f /etc/switchd/switchd.toml ] && echo UNINSTALLED_KEEPING_CONFIG
"#;

#[test]
fn install_sh_sets_up_a_working_node_upgrades_it_and_uninstalls_it() {
    let dir = std::env::temp_dir().join(unique("install"));
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let systemctl = dir.join("bin/systemctl");
    std::fs::write(&systemctl, FAKE_SYSTEMCTL).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(Command::new("unshare")
        .args(["--mount", "--net", "--pid", "--fork", "--mount-proc"])
        .args(["sh", "-c", INSTALL_SCRIPT])
        .current_dir(repo())
        .env("SWT_DIR", &dir)
        .env("SWT_BIN", bin_dir()));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    let file = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let report = format!(
        "stdout:\n{said}\nstderr:\n{}\ninstall.log:\n{}\nsystemctl.log:\n{}\nswitchd.log:\n{}\nbad.log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        file("install.log"),
        file("systemctl.log"),
        file("switchd.log"),
        file("bad.log")
    );
    let calls = file("systemctl.log");
    let bad = file("bad.log");
    let _ = std::fs::remove_dir_all(&dir);
    for step in [
        "INSTALLED",
        "BINARIES",
        "CONFIG_AND_UNIT",
        "CONFLIST",
        "POD_REACHES_GATEWAY",
        "POD_SURVIVES_UPGRADE",
        "BAD_CONFIG_REFUSED",
        "UNINSTALLED_KEEPING_CONFIG",
    ] {
        assert!(said.contains(step), "{step} missing\n{report}");
    }
    let starts: Vec<&str> = calls.lines().filter(|l| l.starts_with("start:")).collect();
    assert_eq!(
        starts,
        ["start: conflist present=no", "start: conflist present=yes"],
        "a fresh install writes the conflist only after switchd is up; an upgrade leaves it in place\n{report}"
    );
    assert!(
        bad.contains("mtu: 5 is out of range"),
        "the refusal names the key\n{report}"
    );
    assert_eq!(
        calls.matches("systemctl restart switchd").count(),
        2,
        "install and upgrade restart switchd; the refused config never gets there\n{report}"
    );
}
