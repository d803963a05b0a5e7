//! A real run for the dashboard picture: two switchd nodes with etcd membership on a veth
//! underlay, pods, and a scripted two minutes of what an operator wants to see (traffic
//! across and within nodes, pods attached, spoofed and misaddressed frames, a lossy
//! underlay, an underlay MTU lowered), with both nodes' `/metrics` scraped every 2 s. The
//! scrapes go to `target/dashboard/scrapes.jsonl`; `scripts/plot-dashboard.py` then draws
//! `deploy/grafana/switchd-dashboard.json` from them into `docs/dashboard.png`.
//!
//! `cargo run --release -p switchd-benches --bin dashboard` (root; needs etcd-server and
//! python3-matplotlib). `--seconds N` shortens the run.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchd_e2e::cluster::Underlay;
use switchd_e2e::etcd::Etcd;
use switchd_e2e::*;

fn main() {
    let mut seconds = 120u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--seconds N")
            }
            other => panic!("unknown argument {other:?}; use --seconds N"),
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_dir = root.join("target/dashboard");
    std::fs::create_dir_all(&out_dir).unwrap();
    let scrapes = out_dir.join("scrapes.jsonl");

    let mut underlay = Underlay::new();
    let etcd = Etcd::start(&underlay);
    let start_node = |underlay: &mut Underlay, tag: &str, name: &str| {
        let ns = Netns::new(tag);
        let addr = underlay.attach(&ns, 1500);
        let mut node = etcd.node(ns, addr, "10.244.0.0/16", "");
        // Readable names in the picture instead of the namespaces' unique ones.
        let file = node.dir.join("switchd.toml");
        let config = std::fs::read_to_string(&file).unwrap();
        let renamed = config.replacen(
            &format!("node_name = \"{}\"", node.ns.name),
            &format!("node_name = \"{name}\""),
            1,
        );
        std::fs::write(&file, renamed).unwrap();
        node.env.push(("RUST_LOG".into(), "switchd=info".into()));
        node.launch();
        node
    };
    let a = Arc::new(start_node(&mut underlay, "da", "node-a"));
    let b = Arc::new(start_node(&mut underlay, "db", "node-b"));
    let names = [("node-a", a.clone()), ("node-b", b.clone())];
    let web = Netns::new("dweb");
    let db = Netns::new("ddb");
    let api = Netns::new("dapi");
    a.add_k8s_pod(&web, "shop", "web");
    let db_addr = a.add_k8s_pod(&db, "shop", "db").address();
    let api_addr = b.add_k8s_pod(&api, "shop", "api").address();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !web.ping(api_addr) {
        assert!(Instant::now() < deadline, "pods across nodes never met");
    }

    // The scraper: every 2 s, both nodes.
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let stop = stop.clone();
        let mut file = std::fs::File::create(&scrapes).unwrap();
        let nodes: Vec<(String, String)> = names
            .iter()
            .map(|(n, node)| (n.to_string(), node.ns.name.clone()))
            .collect();
        std::thread::spawn(move || {
            let mut count = 0;
            while !stop.load(Ordering::Relaxed) {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64();
                for (name, ns) in &nodes {
                    let (_, text) = metrics_get(&Netns::borrowed(ns), "/metrics");
                    let line = serde_json::json!({"t": t, "instance": name, "text": text});
                    writeln!(file, "{line}").unwrap();
                    count += 1;
                }
                std::thread::sleep(Duration::from_secs(2));
            }
            count
        })
    };

    let phase = |share: f64| Duration::from_secs_f64(seconds as f64 * share);
    let t0 = Instant::now();
    let say = |what: &str| eprintln!("[{:>5.1}s] {what}", t0.elapsed().as_secs_f64());
    std::thread::sleep(phase(0.05));

    say("more pods attached on both nodes");
    let extra: Vec<Netns> = (0..6).map(|_| Netns::new("dx")).collect();
    for (i, pod) in extra.iter().enumerate() {
        let node = if i % 2 == 0 { &a } else { &b };
        node.add_k8s_pod(pod, "batch", &format!("job-{i}"));
    }

    say("traffic: web -> api across nodes, and web -> db on node-a part of the time");
    let end = Instant::now() + phase(0.30);
    let across = std::thread::scope(|s| {
        let across =
            s.spawn(|| tcp_transfer_while(&web, &api, api_addr, move |_| Instant::now() < end));
        std::thread::sleep(phase(0.10));
        let local_end = Instant::now() + phase(0.10);
        tcp_transfer_while(&web, &db, db_addr, move |_| Instant::now() < local_end);
        across.join().unwrap().0
    });
    say(&format!("{} MB crossed", across / 1_000_000));

    say("spoofed frames from web, and frames to an address nobody holds");
    let router_mac = a.query("status")["router_mac"]
        .as_str()
        .unwrap()
        .to_string();
    let web_addr = a.query("ports")["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pod"]["name"] == "web")
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    let spoofed = format!("{}.250", web_addr.rsplit_once('.').unwrap().0);
    let nobody = format!("{}.251", web_addr.rsplit_once('.').unwrap().0);
    web.exec(&["ip", "addr", "add", &format!("{spoofed}/32"), "dev", "eth0"]);
    web.exec(&[
        "ip",
        "neigh",
        "replace",
        &nobody,
        "lladdr",
        &router_mac,
        "dev",
        "eth0",
    ]);
    let count = (phase(0.12).as_secs_f64() / 0.1) as u32;
    let n = count.to_string();
    std::thread::scope(|s| {
        s.spawn(|| {
            web.exec(&[
                "ping",
                "-q",
                "-c",
                &n,
                "-i",
                "0.1",
                "-I",
                &spoofed,
                &db_addr.to_string(),
            ])
        });
        s.spawn(|| web.exec(&["ping", "-q", "-c", &n, "-i", "0.1", &nobody]));
    });

    say("node-b's underlay loses 30% of tunnel datagrams");
    let loss = switchd_e2e::cluster::TunnelLoss::new(&b.ns, 0.3);
    std::thread::sleep(phase(0.18));
    drop(loss);

    say("node-b's underlay MTU lowered to 1300 (pods are told 1400)");
    b.ns.exec(&["ip", "link", "set", "u0", "mtu", "1300"]);
    std::thread::sleep(phase(0.25));

    stop.store(true, Ordering::Relaxed);
    let n = scraper.join().unwrap();
    say(&format!("{n} scrapes in {}", scrapes.display()));
    drop(extra);
    let png = root.join("docs/dashboard.png");
    let status = std::process::Command::new("/usr/bin/python3")
        .arg(root.join("scripts/plot-dashboard.py"))
        .arg(root.join("deploy/grafana/switchd-dashboard.json"))
        .arg(&scrapes)
        .arg(&png)
        .status()
        .expect("run scripts/plot-dashboard.py (apt-get install -y python3-matplotlib)");
    assert!(status.success(), "plot-dashboard.py failed");
    say(&format!("wrote {}", png.display()));
}
