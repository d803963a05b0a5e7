//! Real container runtimes calling switchd-cni through their own CNI libraries: podman 4.3
//! with its CNI backend, chained with the reference `portmap` and `tuning` plugins. Needs root and the
//! Debian packages podman, runc, conmon, containernetworking-plugins and busybox-static,
//! which CI installs.

use std::net::Ipv4Addr;

use switchd_e2e::containerd::Containerd;
use switchd_e2e::podman::{self, Podman};
use switchd_e2e::*;

/// The port (from `switchctl ports`) that `matches`.
fn port_where(
    node: &Node,
    what: &str,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let ports = node.query("ports");
    ports["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| matches(p))
        .cloned()
        .unwrap_or_else(|| panic!("no port for {what}: {ports}"))
}

/// The port of the container `name` (podman passes it as K8S_POD_NAME).
fn port_of(node: &Node, name: &str) -> serde_json::Value {
    port_where(node, name, |p| p["pod"]["name"] == name)
}

/// The address switchd gave the container `name`.
fn addr_of(node: &Node, name: &str) -> Ipv4Addr {
    port_of(node, name)["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn podman_containers_reach_each_other_and_the_node_and_release_everything() {
    let node = Node::start("10.244.1.0/24");
    let pm = Podman::new(&node);
    ok(&pm.run("c1"), "podman run c1");
    ok(&pm.run("c2"), "podman run c2");
    let (a1, a2) = (addr_of(&node, "c1"), addr_of(&node, "c2"));
    assert_ne!(a1, a2);

    ok(
        &pm.exec("c1", &["ping", "-c", "2", "-W", "2", &a2.to_string()]),
        "c1 pings c2",
    );
    ok(
        &pm.exec("c2", &["ping", "-c", "2", "-W", "2", "10.244.1.1"]),
        "c2 pings the node",
    );
    assert!(node.ns.ping(a1), "the node reaches c1");
    // TCP between the two containers' own namespaces, checksummed at both ends.
    let (sent, sent_hash, received, received_hash, peer) =
        tcp_transfer(&pm.netns_of("c1"), &pm.netns_of("c2"), a2, 32 << 20);
    assert_eq!((received, received_hash), (sent, sent_hash), "intact");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(a1), "no NAT between pods");
    // The chained tuning plugin ran inside the pod, on the interface we created.
    assert_eq!(
        ok(
            &pm.exec("c1", &["cat", "/proc/sys/net/ipv4/conf/eth0/accept_local"]),
            "sysctl"
        )
        .trim(),
        "1"
    );

    // podman stop and podman rm -f both release everything.
    ok(&pm.podman(&["stop", "-t", "0", "c1"]), "podman stop");
    ok(&pm.podman(&["rm", "-f", "c2"]), "podman rm -f");
    assert_eq!(node.pod_ports(), 0, "no port left");
    assert!(
        node.ipam_records().is_empty(),
        "no address left: {:?}",
        node.ipam_records()
    );
    ok(&pm.podman(&["rm", "-f", "c1"]), "podman rm");
    assert!(node.ipam_records().is_empty());

    // What podman 4.3 actually called (docs/compatibility.md lists it).
    let calls = pm.calls();
    eprintln!("podman's CNI calls:\n{calls}");
    let verbs: std::collections::BTreeSet<&str> =
        calls.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(
        verbs,
        ["ADD", "DEL", "VERSION"].into(),
        "podman calls VERSION, ADD and DEL only: {calls}"
    );
}

#[test]
fn portmap_publishes_a_container_port_on_the_node() {
    let node = Node::start("10.244.1.0/24");
    let pm = Podman::new(&node);
    ok(
        &pm.run_with(
            "web",
            &[
                "--network",
                &pm.network,
                "--hostname",
                "web-c",
                "-p",
                "18080:8080",
            ],
            &["httpd", "-f", "-p", "8080", "-h", "/etc"],
        ),
        "podman run -p",
    );
    let web = addr_of(&node, "web");
    let wait_for = |f: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "httpd never answered");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    // Straight to the pod first, so we know the server is up ...
    wait_for(&|| http_get(&node.ns, web, 8080, "/hostname").is_ok_and(|r| r.contains("web-c")));
    // ... then through the host port that portmap's DNAT rules publish on the node.
    let response = http_get(&node.ns, Ipv4Addr::new(10, 244, 1, 1), 18080, "/hostname").unwrap();
    assert!(response.contains(" 200 OK"), "{response}");
    assert!(response.contains("web-c"), "{response}");
    let rules = ok(
        &node.ns.exec(&["iptables", "-t", "nat", "-S"]),
        "iptables -S",
    );
    assert!(
        rules.contains(&format!("{web}:8080")),
        "portmap's DNAT rule names our address: {rules}"
    );

    // DEL reaches portmap too: the rules go with the container.
    ok(&pm.podman(&["rm", "-f", "-t", "0", "web"]), "podman rm");
    let rules = ok(
        &node.ns.exec(&["iptables", "-t", "nat", "-S"]),
        "iptables -S",
    );
    assert!(!rules.contains(&format!("{web}:8080")), "{rules}");
    assert_eq!(node.pod_ports(), 0);
}

#[test]
fn the_bandwidth_capability_limits_a_pod_both_ways() {
    let mut node = Node::start("10.244.1.0/24");
    let pm = Podman::new(&node);
    ok(&pm.run("fast"), "podman run fast");
    ok(
        &pm.run_with("slow", &["--network", &pm.limited], &["sleep", "600"]),
        "podman run slow",
    );
    let (fast, slow) = (addr_of(&node, "fast"), addr_of(&node, "slow"));
    let limited = port_of(&node, "slow");
    assert_eq!(
        limited["bandwidth"]["ingressRate"].as_u64(),
        Some(podman::LIMITED_RATE),
        "{limited}"
    );
    let mbit = |from: &str, to: &str, addr: Ipv4Addr, total: usize| {
        let started = std::time::Instant::now();
        let (sent, sent_hash, received, received_hash, _) =
            tcp_transfer(&pm.netns_of(from), &pm.netns_of(to), addr, total);
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(
            (received, received_hash),
            (sent, sent_hash),
            "{from} -> {to} intact"
        );
        sent as f64 * 8.0 / secs / 1e6
    };
    let limit = podman::LIMITED_RATE as f64 / 1e6;
    let into = mbit("fast", "slow", slow, 8 << 20);
    let out_of = mbit("slow", "fast", fast, 8 << 20);
    ok(&pm.run("other"), "podman run other");
    let unlimited = mbit("fast", "other", addr_of(&node, "other"), 64 << 20);
    eprintln!("into slow {into:.1} Mbit/s, out of slow {out_of:.1} Mbit/s, unlimited {unlimited:.1} Mbit/s, limit {limit} Mbit/s");
    // The burst (100 KB) is small next to 8 MiB, so the rate cannot be much above the limit.
    assert!(into < limit * 1.15, "into the pod: {into:.1} Mbit/s");
    assert!(out_of < limit * 1.15, "out of the pod: {out_of:.1} Mbit/s");
    // Shaped, not policed: TCP keeps most of the allowed rate (dropping whatever is over
    // the rate gave about a tenth of it).
    assert!(into > limit * 0.6, "into the pod: {into:.1} Mbit/s");
    assert!(out_of > limit * 0.6, "out of the pod: {out_of:.1} Mbit/s");
    assert!(
        unlimited > limit * 4.0,
        "unlimited pods are not limited: {unlimited:.1}"
    );

    // The limits are part of the attachment's state: a restart keeps them.
    node.restart();
    let slow_port = port_of(&node, "slow");
    assert_eq!(slow_port["bandwidth"], limited["bandwidth"]);
    let again = mbit("fast", "slow", slow, 4 << 20);
    assert!(again < limit * 1.15, "after restart: {again:.1} Mbit/s");
}

#[test]
fn podman_run_while_switchd_is_down_fails_cleanly_and_works_once_it_is_back() {
    let mut node = Node::start("10.244.1.0/24");
    let pm = Podman::new(&node);
    node.stop();
    let out = pm.run("early");
    assert!(
        !out.status.success(),
        "podman run must fail while switchd is down"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("switchd is not reachable") || err.contains("try again later"),
        "the CNI error reaches the user: {err}"
    );
    let _ = pm.podman(&["rm", "-f", "early"]);

    node.launch();
    ok(&pm.run("late"), "podman run after switchd is back");
    assert_eq!(
        addr_of(&node, "late"),
        Ipv4Addr::new(10, 244, 1, 2),
        "the failed attempt leaked no address"
    );
    assert_eq!(node.ipam_records().len(), 1);
}

#[test]
fn thirty_podman_containers_started_in_parallel_get_distinct_working_addresses() {
    let node = Node::start("10.244.1.0/24");
    let pm = Podman::new(&node);
    let names: Vec<String> = (0..30).map(|i| format!("p{i}")).collect();
    std::thread::scope(|s| {
        let runs: Vec<_> = names
            .iter()
            .map(|n| s.spawn(|| (n.clone(), pm.run(n))))
            .collect();
        for r in runs {
            let (name, out) = r.join().unwrap();
            ok(&out, &format!("podman run {name}"));
        }
    });
    let addrs: std::collections::HashSet<Ipv4Addr> =
        names.iter().map(|n| addr_of(&node, n)).collect();
    assert_eq!(addrs.len(), 30, "distinct addresses");
    for a in &addrs {
        assert!(node.ns.ping(*a), "{a} unreachable");
    }
    ok(&pm.podman(&["rm", "-af", "-t", "0"]), "remove all");
    assert_eq!(node.pod_ports(), 0);
    assert!(node.ipam_records().is_empty());
}

#[test]
fn a_container_whose_netns_was_removed_behind_podmans_back_still_releases_its_address() {
    let node = Node::start("10.244.1.0/24");
    let pm = Podman::new(&node);
    ok(&pm.run("victim"), "podman run");
    let sandbox = ok(
        &pm.podman(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.SandboxKey}}",
            "victim",
        ]),
        "inspect",
    );
    let sandbox = sandbox.trim();
    assert!(
        sandbox.starts_with("/run/netns/") || sandbox.starts_with("/var/run/netns/"),
        "{sandbox}"
    );
    let name = sandbox.rsplit('/').next().unwrap();
    // Remove the namespace's bind mount as a careless admin would; the container keeps it
    // alive, but the path the runtime will pass to DEL is gone.
    assert!(
        run(std::process::Command::new("ip").args(["netns", "del", name]))
            .status
            .success()
    );
    ok(
        &pm.podman(&["rm", "-f", "-t", "0", "victim"]),
        "podman rm -f",
    );
    // podman skips DEL when the namespace path is gone; switchd notices the pod's device
    // and namespace vanished and releases the address itself.
    node.wait_released(
        std::time::Duration::from_secs(15),
        "a container whose namespace was removed behind podman's back",
    );
    assert!(node.log().contains("vanished without a DEL"));
}

#[test]
fn containerd_ctr_run_cni_attaches_chains_and_releases() {
    let node = Node::start("10.244.1.0/24");
    let ctrd = Containerd::start(&node);
    // A detached server, and a one-shot client that reaches it, the node and itself.
    ok(
        &ctrd.run("srv", &["-d"], &["httpd", "-f", "-p", "8080", "-h", "/etc"]),
        "ctr run -d srv",
    );
    let srv = addr_of_container(&node, "srv");
    let out = ok(
        &ctrd.run(
            "cli",
            &["--rm"],
            &[
                "sh",
                "-c",
                &format!(
                    "ping -c 2 -W 2 10.244.1.1 && ping -c 2 -W 2 {srv} && \
                     cat /proc/sys/net/ipv4/conf/eth0/accept_local && ip -o link show lo"
                ),
            ],
        ),
        "ctr run --rm cli",
    );
    assert!(out.contains("2 packets received"), "{out}");
    assert!(
        out.contains("\n1\n"),
        "tuning's sysctl is set in the pod: {out}"
    );
    assert!(out.contains("UP"), "loopback is up: {out}");
    assert!(node.ns.ping(srv), "the node reaches the detached container");
    // Container to container over TCP, and the container's own answer.
    let body = http_get(&node.ns, srv, 8080, "/greeting").unwrap();
    assert!(body.contains("hello from containerd"), "{body}");

    // `ctr run --rm` called DEL; `ctr run -d` never will.
    let calls = ctrd.calls();
    eprintln!("ctr's CNI calls:\n{calls}");
    let with = |verb: &str, id: &str| {
        calls
            .lines()
            .any(|l| l.starts_with(&format!("{verb} ")) && l.contains(id))
    };
    assert!(
        with("ADD", "srv") && with("ADD", "cli") && with("DEL", "cli"),
        "{calls}"
    );
    assert!(!with("DEL", "srv"), "{calls}");
    assert_eq!(node.pod_ports(), 1, "only srv is attached");

    // GC, as a runtime that knows only `keep` is valid would send it, removes srv's
    // leaked attachment while its container still runs.
    ok(
        &ctrd.run("keep", &["-d"], &["sleep", "600"]),
        "ctr run -d keep",
    );
    let keep_id = container_id_of(&node, "keep");
    let gc_conf = format!(
        r#"{{"cniVersion":"1.1.0","name":"switchd","type":"switchd-cni","socket":"{}","cni.dev/valid-attachments":[{{"containerID":"{keep_id}","ifname":"eth0"}}]}}"#,
        node.socket().display()
    );
    assert!(cni("GC", &gc_conf, "", None, "", "").ok());
    assert_eq!(node.pod_ports(), 1);
    assert!(node.ns.ping(addr_of_container(&node, "keep")));
    assert!(!node.ns.ping(srv), "srv's attachment was collected");

    // Removing a detached container without DEL: its namespace dies with the task, and
    // switchd releases the address by itself.
    ctrd.remove("keep");
    ctrd.remove("srv");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while node.pod_ports() != 0 || !node.ipam_records().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "not released: {:?}",
            node.ipam_records()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A port's record by the container ID suffix ctr uses (`<namespace>-<id>`).
fn port_of_container(node: &Node, id: &str) -> serde_json::Value {
    port_where(node, id, |p| {
        p["container_id"]
            .as_str()
            .is_some_and(|c| c.ends_with(&format!("-{id}")))
    })
}

fn addr_of_container(node: &Node, id: &str) -> Ipv4Addr {
    port_of_container(node, id)["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn container_id_of(node: &Node, id: &str) -> String {
    port_of_container(node, id)["container_id"]
        .as_str()
        .unwrap()
        .to_string()
}
