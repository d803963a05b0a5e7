//! The kubelet's path: containerd 1.6's CRI plugin driven over gRPC exactly as kubelet
//! drives it (RunPodSandbox, CreateContainer/StartContainer, PodSandboxStatus,
//! StopPodSandbox, RemovePodSandbox), with switchd-cni and portmap chained in its CNI
//! configuration. Needs root, containerd, runc, podman (to build the local images),
//! busybox-static and containernetworking-plugins.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use switchd_e2e::cluster::Cluster;
use switchd_e2e::cri::{Cri, PodSpec};
use switchd_e2e::*;

const HOST_PORT: i32 = 18080;

/// Retry `f` for up to 15 s until it returns Ok; the last error otherwise.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn body_of(response: Result<String, String>, want: &str) -> Result<(), String> {
    let r = response?;
    if r.contains(" 200 ") && r.contains(want) {
        Ok(())
    } else {
        Err(format!("unexpected response {r:?}"))
    }
}

/// The switchd port whose pod is `name`.
fn port_of(node: &Node, name: &str) -> serde_json::Value {
    let ports = node.query("ports");
    ports["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pod"]["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no port for pod {name}: {ports}"))
}

#[test]
fn a_cri_pod_sandbox_gets_its_address_from_switchd_shares_localhost_and_publishes_a_host_port() {
    let c = Cluster::with_outside(2);
    let (nodes, infos, outside) = (&c.nodes, &c.infos, &c.outside);
    let mut cri = Cri::start(&nodes[0]);

    let mut pod = PodSpec::new("default", "web");
    pod.host_ports.push((8080, HOST_PORT));
    let sandbox = cri
        .run_pod_sandbox(&pod)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", cri.log()));
    // What kubelet learns from the runtime is what switchd-cni returned.
    let (ready, ip) = cri.sandbox_status(&sandbox);
    assert!(ready, "sandbox not ready");
    let port = port_of(&nodes[0], "web");
    assert_eq!(port["address"].as_str().unwrap(), ip, "PodSandboxStatus IP");
    assert_eq!(port["pod"]["namespace"], "default");
    assert_eq!(port["pod"]["uid"], pod.uid.as_str(), "K8S_POD_UID");
    assert_eq!(
        port["container_id"],
        sandbox.as_str(),
        "the pause container's id"
    );
    let pod_ip: Ipv4Addr = ip.parse().unwrap();

    // Two containers in the sandbox: a server and a client, over localhost.
    cri.start_container(
        &sandbox,
        &pod,
        "server",
        "echo served-by-web > /www/index.html; exec httpd -f -p 8080 -h /www",
    );
    let client = cri.start_container(&sandbox, &pod, "client", "exec sleep infinity");
    eventually("client → server over localhost", || {
        let (code, out) = cri.exec(
            &client,
            &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"],
        );
        (code == 0 && out.contains("served-by-web"))
            .then_some(())
            .ok_or(format!("wget exit {code}: {out:?}"))
    });

    // A pod on the other node reaches the pod IP.
    let remote = Netns::new("rp");
    nodes[1].add_pod(&remote);
    eventually("other-node pod → pod IP", || {
        body_of(http_get(&remote, pod_ip, 8080, "/"), "served-by-web")
    });

    // The hostPort (portmap chained after switchd-cni) from a pod on the same node, from
    // the node itself, from the other node's pod and from a host outside the cluster ...
    let node_ip = infos[0].underlay;
    let local = Netns::new("lp");
    nodes[0].add_pod(&local);
    for (who, ns) in [
        ("same-node pod", &local),
        ("the node", &nodes[0].ns),
        ("other-node pod", &remote),
        ("outside host", outside),
    ] {
        eventually(&format!("{who} → hostPort"), || {
            body_of(
                http_get(ns, node_ip, HOST_PORT as u16, "/"),
                "served-by-web",
            )
        });
    }
    // ... and from the pod itself (portmap's hairpin masquerade).
    let url = format!("http://{node_ip}:{HOST_PORT}/");
    eventually("the pod → its own hostPort", || {
        let (code, out) = cri.exec(&client, &["wget", "-q", "-O", "-", &url]);
        (code == 0 && out.contains("served-by-web"))
            .then_some(())
            .ok_or(format!("wget exit {code}: {out:?}"))
    });

    // Stop + Remove, as kubelet does when the pod is deleted: address and port released.
    cri.stop_and_remove(&sandbox)
        .unwrap_or_else(|e| panic!("Stop/RemovePodSandbox: {e}\n{}", cri.log()));
    assert_eq!(nodes[0].pod_ports(), 1, "only the local test pod is left");
    assert_eq!(
        nodes[0].ipam_records().len(),
        1,
        "the sandbox's address is free"
    );
    let calls = cri.calls();
    for verb in ["ADD", "DEL"] {
        assert!(
            calls
                .lines()
                .any(|l| l.starts_with(&format!("{verb} {sandbox}"))),
            "{verb} for the sandbox: {calls}"
        );
    }
}

#[test]
fn a_sandbox_whose_cni_add_failed_while_switchd_was_down_is_retried_without_a_leak() {
    let mut node = Node::start("10.244.1.0/24");
    let mut cri = Cri::start(&node);
    node.stop();
    let pod = PodSpec::new("default", "retried");
    let err = cri
        .run_pod_sandbox(&pod)
        .expect_err("RunPodSandbox must fail while switchd is down");
    assert!(
        err.message().contains("switchd"),
        "the runtime's error names the cause: {err}"
    );
    // containerd could not DEL either (switchd was down), so it keeps the failed sandbox,
    // not ready, and its name reserved. kubelet's next sync does what it does with any pod
    // whose sandbox is not ready: StopPodSandbox on the old one (the DEL now reaches
    // switchd) and RunPodSandbox with the next attempt. Meanwhile switchd is back.
    let failed: Vec<String> = cri
        .sandboxes()
        .into_iter()
        .map(|(id, ready)| {
            assert!(!ready, "the failed sandbox is not ready");
            id
        })
        .collect();
    assert_eq!(failed.len(), 1, "one failed sandbox");
    node.launch();
    cri.stop_and_remove(&failed[0]).unwrap_or_else(|e| {
        panic!(
            "Stop/RemovePodSandbox of the failed one: {e}\n{}",
            cri.log()
        )
    });
    let pod = PodSpec { attempt: 1, ..pod };
    let sandbox = cri
        .run_pod_sandbox(&pod)
        .unwrap_or_else(|e| panic!("RunPodSandbox retry: {e}\n{}", cri.log()));
    assert_eq!(cri.sandboxes(), [(sandbox.clone(), true)]);
    assert_eq!(
        node.ipam_records().len(),
        1,
        "one address, for the sandbox that runs"
    );
    assert_eq!(node.pod_ports(), 1);
    let (_, ip) = cri.sandbox_status(&sandbox);
    assert!(
        node.ns.ping(ip.parse::<std::net::IpAddr>().unwrap()),
        "the retried sandbox is reachable"
    );
    cri.stop_and_remove(&sandbox).unwrap();
    assert_eq!(node.ipam_records().len(), 0);
    assert_eq!(node.pod_ports(), 0);
}

/// kubelet's `status.podIPs` on a dual-stack node: containerd's CRI plugin reports the
/// IPv4 address switchd-cni listed first as the pod IP and the IPv6 one as additional, and
/// the pod answers on both.
#[test]
fn a_cri_pod_sandbox_on_a_dual_stack_node_reports_both_addresses() {
    let extra = format!(
        "mtu = 1450\npod_cidr_v6 = \"fd10:244:0:1::/64\"\ncluster_cidr_v6 = \"{}\"\n",
        switchd_e2e::cluster::CLUSTER_CIDR_V6
    );
    let node = Node::start_with(Netns::new("n"), "10.244.1.0/24", &extra, None);
    let mut cri = Cri::start(&node);
    let pod = PodSpec::new("default", "dual");
    let sandbox = cri
        .run_pod_sandbox(&pod)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", cri.log()));
    let ips = cri.sandbox_ips(&sandbox);
    assert_eq!(ips.len(), 2, "both families in PodSandboxStatus: {ips:?}");
    let v4: Ipv4Addr = ips[0].parse().expect("the IPv4 address is the primary");
    let v6: std::net::Ipv6Addr = ips[1].parse().expect("the IPv6 address is additional");
    let port = port_of(&node, "dual");
    assert_eq!(port["address"].as_str().unwrap(), v4.to_string());
    assert_eq!(port["address_v6"].as_str().unwrap(), v6.to_string());
    assert!(node.ns.ping(v4), "node to pod over IPv4");
    assert!(node.ns.ping(v6), "node to pod over IPv6");
    cri.stop_and_remove(&sandbox)
        .unwrap_or_else(|e| panic!("StopPodSandbox/RemovePodSandbox: {e}"));
    assert!(node.ipam_records().is_empty(), "both addresses released");
}
