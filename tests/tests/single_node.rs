//! Single-node pod networking through switchd, driven through the real CNI contract.
//! Needs root (network namespaces, TAP devices); CI runs these as root.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use switchd_e2e::*;

const GW: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);

#[test]
fn two_pods_ping_each_other_and_move_100_mb_over_tcp_intact() {
    let node = Node::start("10.244.1.0/24");
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    let addr_a = node.add_pod(&a);
    let addr_b = node.add_pod(&b);
    assert_eq!(
        addr_a,
        Ipv4Addr::new(10, 244, 1, 2),
        "first pod on a fresh node gets .2"
    );
    assert_eq!(addr_b, Ipv4Addr::new(10, 244, 1, 3));
    assert!(a.ping(addr_b), "pod a cannot ping pod b");
    assert!(b.ping(addr_a), "pod b cannot ping pod a");

    let total = 100 * 1024 * 1024;
    let (sent, sent_hash, received, received_hash, peer) = tcp_transfer(&a, &b, addr_b, total);
    assert_eq!(sent, total);
    assert_eq!(received, total, "receiver got a different byte count");
    assert_eq!(received_hash, sent_hash, "payload corrupted in transit");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(addr_a),
        "receiver sees the sender's own address (no NAT)"
    );

    let ports = node.query("ports");
    let pod_a = ports["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"] == addr_a.to_string())
        .unwrap()
        .clone();
    assert!(
        pod_a["counters"]["rx_bytes"].as_u64().unwrap() > total as u64,
        "switch counted the transfer: {pod_a}"
    );
}

#[test]
fn host_and_pods_reach_each_other_both_ways() {
    let node = Node::start("10.244.1.0/24");
    let pod = Netns::new("p");
    let addr = node.add_pod(&pod);
    assert!(pod.ping(GW), "pod cannot reach its gateway on the node");
    assert!(node.ns.ping(addr), "node cannot reach the pod");
    // TCP both ways, with the node's address seen as it is.
    let (_, h1, n1, h2, peer) = tcp_transfer(&node.ns, &pod, addr, 1 << 20);
    assert_eq!((n1, h1), (1 << 20, h2));
    assert_eq!(peer.ip(), std::net::IpAddr::V4(GW));
    let (_, h1, n1, h2, peer) = tcp_transfer(&pod, &node.ns, GW, 1 << 20);
    assert_eq!((n1, h1), (1 << 20, h2));
    assert_eq!(peer.ip(), std::net::IpAddr::V4(addr));
    // The node's route for the cluster CIDR goes through the host port.
    let routes = String::from_utf8(
        node.ns
            .exec(&["ip", "route", "show", "10.244.0.0/16"])
            .stdout,
    )
    .unwrap();
    assert!(
        routes.contains("dev switchd0"),
        "cluster route missing: {routes}"
    );
}

#[test]
fn del_removes_the_interface_and_frees_the_address_and_is_idempotent() {
    let node = Node::start("10.244.1.0/24");
    let pod = Netns::new("p");
    let conf = node.netconf("1.0.0");
    node.add_pod(&pod);
    assert!(pod.has_link("eth0"));
    assert_eq!(node.ipam_records().len(), 1);

    let del = cni("DEL", &conf, &pod.name, Some(&pod.path()), "eth0", "");
    assert!(del.ok(), "DEL failed: {:?}", del.json);
    assert_eq!(
        del.json,
        serde_json::Value::Null,
        "DEL prints nothing on success"
    );
    assert!(
        !pod.has_link("eth0"),
        "interface still in the pod after DEL"
    );
    assert_eq!(node.pod_ports(), 0);
    assert!(
        node.ipam_records().is_empty(),
        "address not released: {:?}",
        node.ipam_records()
    );

    assert!(
        cni("DEL", &conf, &pod.name, Some(&pod.path()), "eth0", "").ok(),
        "second DEL must succeed"
    );
    assert!(
        cni("DEL", &conf, "never-added", Some(&pod.path()), "eth0", "").ok(),
        "DEL of unknown container must succeed"
    );
    assert!(
        cni("DEL", &conf, "never-added", None, "eth0", "").ok(),
        "DEL without CNI_NETNS must succeed"
    );

    // DEL after the namespace is gone (the runtime deleted it first).
    let gone = Netns::new("g");
    node.add_pod(&gone);
    let (name, path) = (gone.name.clone(), gone.path());
    drop(gone);
    assert!(
        cni("DEL", &conf, &name, Some(&path), "eth0", "").ok(),
        "DEL with a vanished netns must succeed"
    );
    assert!(node.ipam_records().is_empty());
    assert_eq!(node.pod_ports(), 0);
}

#[test]
fn check_passes_after_add_and_fails_once_the_interface_is_deleted_by_hand() {
    let node = Node::start("10.244.1.0/24");
    let pod = Netns::new("p");
    let add = node.add_k8s_pod(&pod, "default", "web");
    let conf_with_prev = format!(
        r#"{{"cniVersion":"1.1.0","name":"switchd-test","type":"switchd-cni","socket":"{}","prevResult":{}}}"#,
        node.socket().display(),
        add.json
    );
    let check = cni(
        "CHECK",
        &conf_with_prev,
        &pod.name,
        Some(&pod.path()),
        "eth0",
        "",
    );
    assert!(check.ok(), "CHECK after ADD failed: {:?}", check.json);
    let ports = node.query("ports");
    assert!(
        ports["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pod"]["name"] == "web" && p["pod"]["namespace"] == "default"),
        "pod identity from CNI_ARGS: {ports}"
    );

    // A prevResult that disagrees with switchd fails.
    let wrong = conf_with_prev.replace(&format!("{}/24", add.address()), "10.244.1.200/24");
    let check = cni("CHECK", &wrong, &pod.name, Some(&pod.path()), "eth0", "");
    assert_eq!(check.error_code(), Some(102), "{:?}", check.json);

    assert!(pod.exec(&["ip", "link", "del", "eth0"]).status.success());
    let check = cni(
        "CHECK",
        &conf_with_prev,
        &pod.name,
        Some(&pod.path()),
        "eth0",
        "",
    );
    assert!(!check.ok());
    assert_eq!(check.error_code(), Some(102), "{:?}", check.json);
    assert!(
        check.json["details"].as_str().unwrap().contains("eth0"),
        "message names the interface: {:?}",
        check.json
    );

    // A removed route is noticed too.
    let other = Netns::new("q");
    node.add_pod(&other);
    assert!(other
        .exec(&["ip", "route", "del", "default"])
        .status
        .success());
    let check = node.cni("CHECK", &other);
    assert_eq!(check.error_code(), Some(102));
    assert!(
        check.json["details"]
            .as_str()
            .unwrap()
            .contains("default route"),
        "{:?}",
        check.json
    );
}

#[test]
fn fifty_parallel_adds_get_fifty_distinct_working_addresses() {
    let node = Node::start("10.244.1.0/24");
    let pods: Vec<Netns> = (0..50).map(|_| Netns::new("p")).collect();
    let conf = node.netconf("1.1.0");
    let results: Vec<CniOutput> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|p| s.spawn(|| cni("ADD", &conf, &p.name, Some(&p.path()), "eth0", "")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        assert!(r.ok(), "ADD failed: {:?}", r.json);
    }
    let addrs: HashSet<Ipv4Addr> = results.iter().map(CniOutput::address).collect();
    assert_eq!(addrs.len(), 50, "duplicate addresses handed out");
    assert_eq!(node.ipam_records().len(), 50);
    for (pod, r) in pods.iter().zip(&results) {
        assert!(
            node.ns.ping(r.address()),
            "node cannot reach pod {} at {}",
            pod.name,
            r.address()
        );
    }
    assert!(
        pods[0].ping(results[49].address()),
        "first pod cannot reach the last"
    );
}

#[test]
fn restarted_switchd_still_knows_every_allocation_and_keeps_forwarding() {
    let mut node = Node::start("10.244.1.0/24");
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    let addr_a = node.add_pod(&a);
    let addr_b = node.add_pod(&b);
    node.restart();

    for pod in [&a, &b] {
        let check = node.cni("CHECK", pod);
        assert!(check.ok(), "CHECK after restart failed: {:?}", check.json);
    }
    assert_eq!(node.pod_ports(), 2, "ports re-adopted");
    assert!(a.ping(addr_b), "forwarding did not resume after restart");
    assert!(
        node.ns.ping(addr_a),
        "host port did not resume after restart"
    );

    let c = Netns::new("c");
    let addr_c = node.add_pod(&c);
    assert!(
        ![addr_a, addr_b].contains(&addr_c),
        "restart forgot an allocation: {addr_c} handed out twice"
    );
    let dup = node.cni("ADD", &a);
    assert_eq!(
        dup.error_code(),
        Some(101),
        "ADD of an attached container is refused: {:?}",
        dup.json
    );
}

#[test]
fn add_for_an_existing_interface_fails_cleanly_and_leaves_no_allocation() {
    let node = Node::start("10.244.1.0/24");
    let pod = Netns::new("p");
    let made = pod.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let r = node.cni("ADD", &pod);
    assert_eq!(r.error_code(), Some(101), "{:?}", r.json);
    assert!(
        r.json["details"]
            .as_str()
            .unwrap()
            .contains("already exists"),
        "{:?}",
        r.json
    );
    assert!(node.ipam_records().is_empty(), "allocation left behind");
    assert_eq!(node.pod_ports(), 0);
    // The existing interface is untouched.
    assert!(
        String::from_utf8_lossy(&pod.exec(&["ip", "-d", "link", "show", "eth0"]).stdout)
            .contains("veth")
    );

    let missing = cni(
        "ADD",
        &node.netconf("1.1.0"),
        "x",
        Some("/var/run/netns/swt-does-not-exist"),
        "eth0",
        "",
    );
    assert_eq!(missing.error_code(), Some(3), "{:?}", missing.json);
    assert!(node.ipam_records().is_empty());
}

#[test]
fn bad_input_gets_the_spec_error_codes() {
    let node = Node::start("10.244.1.0/24");
    let pod = Netns::new("p");
    let malformed = r#"{"cniVersion":"1.1.0","type":"switchd-cni","socket":42}"#;
    let r = cni("ADD", malformed, &pod.name, Some(&pod.path()), "eth0", "");
    assert_eq!(r.error_code(), Some(7), "{:?}", r.json);
    assert!(r.json["msg"].is_string() && r.json["details"].is_string());
    assert_eq!(r.json["cniVersion"], "1.1.0");

    let r = cni("ADD", "{not json", &pod.name, Some(&pod.path()), "eth0", "");
    assert_eq!(r.error_code(), Some(6));

    let r = node.cni("", &pod);
    assert_eq!(r.error_code(), Some(4), "missing CNI_COMMAND: {:?}", r.json);

    let r = cni("ADD", &node.netconf("1.1.0"), &pod.name, None, "eth0", "");
    assert_eq!(
        r.error_code(),
        Some(4),
        "ADD without CNI_NETNS: {:?}",
        r.json
    );

    let r = cni(
        "ADD",
        &node.netconf("0.2.0"),
        &pod.name,
        Some(&pod.path()),
        "eth0",
        "",
    );
    assert_eq!(
        r.error_code(),
        Some(1),
        "unsupported cniVersion: {:?}",
        r.json
    );
    assert!(
        node.ipam_records().is_empty(),
        "no failed call allocated anything"
    );
}

#[test]
fn daemon_down_gets_code_11_within_seconds_and_status_50() {
    let mut node = Node::start("10.244.1.0/24");
    let pod = Netns::new("p");
    node.stop();
    let r = node.cni("ADD", &pod);
    assert_eq!(r.error_code(), Some(11), "{:?}", r.json);
    assert!(r.elapsed < Duration::from_secs(10), "took {:?}", r.elapsed);
    assert!(
        r.json["details"].as_str().unwrap().contains("switchd.sock"),
        "error names the socket: {:?}",
        r.json
    );
    let s = cni("STATUS", &node.netconf("1.1.0"), "", None, "", "");
    assert_eq!(s.error_code(), Some(50), "{:?}", s.json);
    assert!(!pod.has_link("eth0"));

    node.launch();
    assert!(cni("STATUS", &node.netconf("1.1.0"), "", None, "", "").ok());
    let addr = node.add_pod(&pod);
    assert_eq!(
        addr,
        Ipv4Addr::new(10, 244, 1, 2),
        "the failed attempt leaked nothing"
    );
}

#[test]
fn version_gc_and_every_supported_result_shape() {
    let node = Node::start("10.244.1.0/24");
    let v = cni("VERSION", r#"{"cniVersion":"1.0.0"}"#, "", None, "", "");
    assert!(v.ok());
    assert_eq!(v.json["cniVersion"], "1.0.0");
    assert_eq!(
        v.json["supportedVersions"],
        serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );

    let pods: Vec<Netns> = (0..5).map(|_| Netns::new("p")).collect();
    for (pod, ver) in pods
        .iter()
        .zip(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    {
        let r = cni(
            "ADD",
            &node.netconf(ver),
            &pod.name,
            Some(&pod.path()),
            "eth0",
            "",
        );
        assert!(r.ok(), "{ver}: {:?}", r.json);
        assert_eq!(r.json["cniVersion"], ver);
        assert_eq!(
            r.json["ips"][0].get("version").is_some(),
            ver.starts_with("0."),
            "{ver}: {}",
            r.json
        );
    }
    // GC keeps only the listed attachments.
    let keep: Vec<String> = pods[..2]
        .iter()
        .map(|p| format!(r#"{{"containerID":"{}","ifname":"eth0"}}"#, p.name))
        .collect();
    let gc_conf = format!(
        r#"{{"cniVersion":"1.1.0","name":"switchd-test","type":"switchd-cni","socket":"{}","cni.dev/valid-attachments":[{}]}}"#,
        node.socket().display(),
        keep.join(",")
    );
    let gc = cni("GC", &gc_conf, "", None, "", "");
    assert!(gc.ok(), "{:?}", gc.json);
    assert_eq!(node.pod_ports(), 2);
    assert!(pods[0].has_link("eth0") && pods[1].has_link("eth0"));
    assert!(
        !pods[2].has_link("eth0") && !pods[4].has_link("eth0"),
        "GC removed the interfaces"
    );
}

#[test]
fn control_socket_is_private_and_refuses_other_protocol_versions() {
    let node = Node::start("10.244.1.0/24");
    let mode = std::fs::metadata(node.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let mut s = UnixStream::connect(node.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = br#"{"version":99,"body":{"op":"status"}}"#;
    s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("an answer, not a hang");
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut payload).unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(reply["body"]["result"], "error");
    assert_eq!(reply["body"]["kind"], "version_mismatch");
    assert!(
        reply["body"]["message"].as_str().unwrap().contains("v99"),
        "{reply}"
    );
}

#[test]
fn invalid_config_stops_switchd_with_the_key_named() {
    let dir = std::env::temp_dir().join(unique("cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    for (text, key) in [
        (
            "node_name = \"n\"\npod_cidr = \"10.244.1.0/24\"\npod_cdir = \"x\"\n",
            "pod_cdir",
        ),
        (
            "node_name = \"n\"\npod_cidr = \"10.244.1.0/99\"\n",
            "pod_cidr",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let out = run(std::process::Command::new(bin_dir().join("switchd"))
            .arg("--config")
            .arg(&path));
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{key} not named in: {err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn pod_mtu_defaults_to_the_default_route_mtu_minus_tunnel_overhead() {
    let ns = Netns::new("n");
    // The veth lives entirely inside the node's own namespace, so its names cannot collide.
    let up = "u1".to_string();
    for cmd in [
        vec![
            "ip",
            "link",
            "add",
            "u0",
            "mtu",
            "1400",
            "type",
            "veth",
            "peer",
            "name",
            up.as_str(),
        ],
        vec!["ip", "link", "set", "u0", "up"],
        vec!["ip", "link", "set", up.as_str(), "up"],
        vec!["ip", "addr", "add", "192.0.2.1/24", "dev", "u0"],
        vec![
            "ip",
            "route",
            "add",
            "default",
            "via",
            "192.0.2.254",
            "dev",
            "u0",
        ],
    ] {
        let out = ns.exec(&cmd);
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let node = Node::start_in(ns, "10.244.1.0/24", None);
    let pod = Netns::new("p");
    let add = node.cni("ADD", &pod);
    assert!(add.ok(), "{:?}", add.json);
    assert_eq!(
        add.json["interfaces"][0]["mtu"], 1350,
        "1400-byte underlay minus 50"
    );
    let link = String::from_utf8(pod.exec(&["ip", "link", "show", "eth0"]).stdout).unwrap();
    assert!(link.contains("mtu 1350"), "{link}");
    // A full-MTU packet with DF set crosses the switch.
    let other = Netns::new("q");
    let addr = node.add_pod(&other);
    assert!(
        pod.exec(&[
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "-s",
            "1322",
            "-M",
            "do",
            &addr.to_string()
        ])
        .status
        .success(),
        "1350-byte packet fits"
    );
}

/// switchd's descriptors keep a pod's namespace alive, so it watches the namespace instead:
/// removing its path while a process still lives inside keeps the pod's network; once the
/// last process is gone too, the port and address are released without any DEL.
#[test]
fn a_namespace_removed_without_del_is_released_once_its_last_process_is_gone() {
    let node = Node::start("10.244.1.0/24");
    let pod = Netns::new("v");
    let addr = node.add_pod(&pod);
    let mut sleeper = std::process::Command::new("ip")
        .args(["netns", "exec", &pod.name, "sleep", "120"])
        .spawn()
        .expect("spawn sleep in the pod");
    // The process is inside before the path goes.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        sleeper.try_wait().unwrap().is_none(),
        "sleep in the pod exited early"
    );
    let name = pod.name.clone();
    drop(pod); // ip netns del: the path is gone, the sleeper keeps the namespace in use
    std::thread::sleep(std::time::Duration::from_secs(5)); // more than two sweeps
    assert_eq!(
        node.pod_ports(),
        1,
        "a namespace with a live process lost its pod"
    );
    assert_eq!(node.ipam_records().len(), 1);
    assert!(
        !node.log().contains("vanished without a DEL"),
        "reaped while in use: {}",
        node.log()
    );

    sleeper.kill().expect("kill sleep");
    sleeper.wait().unwrap();
    node.wait_released(
        std::time::Duration::from_secs(10),
        &format!("{name} ({addr}), its last process gone"),
    );
    assert!(node.log().contains("vanished without a DEL"));
}
