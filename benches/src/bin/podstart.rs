//! Pod-start burst: many pods attached at once, switchd next to the reference plugins.
//!
//! What kubelet does when a node boots or takes a large rollout: up to 110 sandboxes
//! start together, and the runtime executes the CNI plugin once per pod, in parallel.
//! This benchmark does exactly that, in one run, on one machine:
//! - **switchd:** a real switchd in a node namespace; `switchd-cni ADD` executed for every
//!   pod at once (environment plus config on stdin, as a runtime does), then `DEL` for
//!   every pod at once;
//! - **bridge:** the reference `bridge` + `host-local` plugins (Debian's
//!   containernetworking-plugins), executed inside the same kind of node namespace (as a
//!   runtime on that node would), same pods, same burst.
//!
//! Rounds alternate switchd and bridge, so drift on the machine hits both. For every burst
//! it reports each call's latency (p50, p99) and the time from the burst's start until the
//! last call returned; the table gives the median of those over the rounds, with the
//! spread. Every ADD must succeed and give a distinct address, and after each ADD burst a
//! sample of pods must reach their gateway, so a fast failure never counts as a fast start.
//!
//! Usage (root): `target/release/podstart [--pods 110] [--rounds 5] [--quick]`
//! (`--quick`: 20 pods, 1 round — the CI smoke run, which times nothing).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use switchd_benches::measure::quantile;
use switchd_e2e::{cni, execute_plugin, metrics_get, CniOutput, Netns, Node};

const BRIDGE_PLUGINS: &str = "/usr/lib/cni";

struct Opts {
    pods: usize,
    rounds: usize,
    /// Run only one side (`--only switchd`), e.g. under `perf record`.
    only: Option<String>,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        pods: 110,
        rounds: 5,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut number = |what: &str| -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{what} needs a number"))
        };
        match a.as_str() {
            "--pods" => o.pods = number("--pods"),
            "--rounds" => o.rounds = number("--rounds"),
            "--only" => o.only = args.next(),
            "--quick" => {
                o.pods = 20;
                o.rounds = 1;
            }
            other => panic!(
                "unknown argument {other}; usage: podstart [--pods N] [--rounds R] [--quick]"
            ),
        }
    }
    assert!(
        (1..=250).contains(&o.pods),
        "--pods must be 1 to 250 (one /24)"
    );
    o
}

/// One burst's figures, in seconds.
#[derive(Clone, Copy)]
struct Burst {
    p50: f64,
    p99: f64,
    last: f64,
}

/// How long the machine rests before each burst, so the kernel's deferred work from the
/// previous one (RCU callbacks, namespace and device cleanup) is not charged to the next.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Run `call(i)` for every pod at once (all threads released together); the burst's figures.
fn burst(
    pods: usize,
    call: impl Fn(usize) -> CniOutput + Sync + Send + 'static,
) -> (Burst, Vec<CniOutput>) {
    std::thread::sleep(SETTLE);
    let call = Arc::new(call);
    let gate = Arc::new(Barrier::new(pods + 1));
    let threads: Vec<_> = (0..pods)
        .map(|i| {
            let (call, gate) = (call.clone(), gate.clone());
            std::thread::spawn(move || {
                gate.wait();
                let started = Instant::now();
                let out = call(i);
                (out, started, Instant::now())
            })
        })
        .collect();
    gate.wait();
    let results: Vec<(CniOutput, Instant, Instant)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    // From the first call's start to the last call's end (the main thread may be scheduled
    // late after the gate opens, so its own clock would start too late).
    let first = results.iter().map(|r| r.1).min().expect("at least one pod");
    let last = results
        .iter()
        .map(|r| r.2.duration_since(first))
        .max()
        .unwrap_or_default();
    let mut latencies: Vec<f64> = results.iter().map(|r| r.0.elapsed.as_secs_f64()).collect();
    latencies.sort_by(f64::total_cmp);
    let figures = Burst {
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
        last: last.as_secs_f64(),
    };
    (figures, results.into_iter().map(|r| r.0).collect())
}

/// Every ADD succeeded with its own address; panics with the first failure otherwise.
fn check_adds(who: &str, outs: &[CniOutput]) -> Vec<Ipv4Addr> {
    let mut seen = HashSet::new();
    outs.iter()
        .enumerate()
        .map(|(i, o)| {
            assert!(o.ok(), "{who}: ADD of pod {i} failed: {}", o.json);
            let a = o.address();
            assert!(seen.insert(a), "{who}: address {a} given twice");
            a
        })
        .collect()
}

fn check_dels(who: &str, outs: &[CniOutput]) {
    for (i, o) in outs.iter().enumerate() {
        assert!(o.ok(), "{who}: DEL of pod {i} failed: {}", o.json);
    }
}

/// A sample of pods (first, middle, last) reaches the gateway: the attach really worked.
fn check_reachable(who: &str, pods: &[Netns], gateway: Ipv4Addr) {
    for i in [0, pods.len() / 2, pods.len() - 1] {
        assert!(
            pods[i].ping(gateway),
            "{who}: pod {} cannot reach its gateway {gateway}",
            pods[i].name
        );
        assert!(
            pods[i]
                .exec(&["ip", "link", "show", "eth0"])
                .status
                .success(),
            "{who}: pod {} has no eth0",
            pods[i].name
        );
    }
}

/// The reference plugins, executed inside `node` as a runtime on that node executes them.
struct Bridge {
    node: Arc<std::fs::File>,
    conf: String,
    data_dir: PathBuf,
}

impl Bridge {
    fn new(node: &Netns) -> Bridge {
        assert!(
            Path::new(BRIDGE_PLUGINS).join("bridge").exists(),
            "{BRIDGE_PLUGINS}/bridge is missing: apt-get install containernetworking-plugins"
        );
        let data_dir = std::env::temp_dir().join(format!("{}-host-local", node.name));
        let _ = std::fs::remove_dir_all(&data_dir);
        let bridge = format!("{}br", &node.name[..node.name.len().min(10)]);
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"podstart","type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,"mtu":1450,"ipam":{{"type":"host-local","subnet":"10.245.1.0/24","dataDir":"{}","routes":[{{"dst":"0.0.0.0/0"}}]}}}}"#,
            data_dir.display()
        );
        Bridge {
            node: Arc::new(std::fs::File::open(node.path()).expect("open node netns")),
            conf,
            data_dir,
        }
    }

    fn call(&self, command: &str, pod: &Netns) -> CniOutput {
        let mut cmd = Command::new(Path::new(BRIDGE_PLUGINS).join("bridge"));
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.name)
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", BRIDGE_PLUGINS);
        let fd = self.node.as_raw_fd();
        // SAFETY: between fork and exec only setns (async-signal-safe) runs, on an fd the
        // parent keeps open; it moves the child into the node's namespace as a runtime on
        // that node would run it.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        execute_plugin(cmd, &self.conf)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    quantile(&v, 0.5)
}

/// `median (min–max)` in seconds, of one figure over the rounds.
fn cell(bursts: &[Burst], f: impl Fn(&Burst) -> f64) -> String {
    let v: Vec<f64> = bursts.iter().map(f).collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    format!("{:.2} ({:.2}–{:.2})", median(v), lo, hi)
}

/// switchd's own account of where its attaches and detaches spent their time: the mean of
/// each step over every call of the run (`switchd_pod_step_duration_seconds`).
fn print_steps(node: &Node) {
    let (_, body) = metrics_get(&node.ns, "/metrics");
    let value = |suffix: &str, labels: &str| -> f64 {
        let name = format!("switchd_pod_step_duration_seconds_{suffix}{{{labels}}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(name.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    println!("\nswitchd's steps, mean per call over the run (ms):");
    for (op, steps) in [
        ("attach", ["address", "interface", "publish"]),
        ("detach", ["unpublish", "interface", "address"]),
    ] {
        let cells: Vec<String> = steps
            .iter()
            .map(|step| {
                let labels = format!("op=\"{op}\",step=\"{step}\"");
                let mean = value("sum", &labels) / value("count", &labels);
                format!("{step} {:.2}", mean * 1e3)
            })
            .collect();
        println!("- {op}: {}", cells.join(", "));
    }
    let counter = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_total ")))
            .unwrap_or("?")
            .trim()
            .to_string()
    };
    println!(
        "- address state writes: {} for {} attaches and {} detaches",
        counter("switchd_ipam_writes"),
        counter("switchd_attaches"),
        counter("switchd_detaches")
    );
}

fn main() {
    let opts = parse_args();
    let n = opts.pods;
    eprintln!("podstart: {n} pods, {} rounds", opts.rounds);

    let switchd_node = Node::start_in(Netns::new("psn"), "10.244.1.0/24", Some(1450));
    let bridge_node = Netns::new("psb");
    let bridge = Arc::new(Bridge::new(&bridge_node));
    let pods: Arc<Vec<Netns>> = Arc::new((0..n).map(|_| Netns::new("psp")).collect());
    let conf = Arc::new(switchd_node.netconf("1.1.0"));

    let mut results: Vec<(&str, Vec<Burst>, Vec<Burst>)> =
        vec![("switchd", vec![], vec![]), ("bridge", vec![], vec![])];
    for round in 0..opts.rounds {
        let run = |who: &str| opts.only.as_deref().is_none_or(|o| o == who);
        if run("switchd") {
            let (p, c) = (pods.clone(), conf.clone());
            let (add, outs) = burst(n, move |i| {
                cni("ADD", &c, &p[i].name, Some(&p[i].path()), "eth0", "")
            });
            check_adds("switchd", &outs);
            check_reachable("switchd", &pods, Ipv4Addr::new(10, 244, 1, 1));
            let (p, c) = (pods.clone(), conf.clone());
            let (del, outs) = burst(n, move |i| {
                cni("DEL", &c, &p[i].name, Some(&p[i].path()), "eth0", "")
            });
            check_dels("switchd", &outs);
            assert_eq!(switchd_node.pod_ports(), 0, "switchd: ports left after DEL");
            results[0].1.push(add);
            results[0].2.push(del);
        }
        if run("bridge") {
            let (p, b) = (pods.clone(), bridge.clone());
            let (add, outs) = burst(n, move |i| b.call("ADD", &p[i]));
            check_adds("bridge", &outs);
            check_reachable("bridge", &pods, Ipv4Addr::new(10, 245, 1, 1));
            let (p, b) = (pods.clone(), bridge.clone());
            let (del, outs) = burst(n, move |i| b.call("DEL", &p[i]));
            check_dels("bridge", &outs);
            results[1].1.push(add);
            results[1].2.push(del);
        }
        for (who, adds, dels) in &results {
            if let (Some(a), Some(d)) = (adds.get(round), dels.get(round)) {
                eprintln!(
                    "round {}: {who} ADD until last {:.2}s, DEL until last {:.2}s",
                    round + 1,
                    a.last,
                    d.last
                );
            }
        }
    }

    println!(
        "\n{n} pods at once, {} rounds; seconds, median over rounds (min–max)\n",
        opts.rounds
    );
    println!(
        "| plugin | ADD p50 | ADD p99 | ADD until last | DEL p50 | DEL p99 | DEL until last |"
    );
    println!("|---|---|---|---|---|---|---|");
    results.retain(|(_, adds, _)| !adds.is_empty());
    for (who, adds, dels) in &results {
        println!(
            "| {who} | {} | {} | {} | {} | {} | {} |",
            cell(adds, |b| b.p50),
            cell(adds, |b| b.p99),
            cell(adds, |b| b.last),
            cell(dels, |b| b.p50),
            cell(dels, |b| b.p99),
            cell(dels, |b| b.last),
        );
    }
    if let [(_, switchd, _), (_, bridge, _)] = &results[..] {
        let ratio = |f: fn(&Burst) -> f64| {
            median(switchd.iter().map(f).collect()) / median(bridge.iter().map(f).collect())
        };
        println!(
            "\nswitchd / bridge, ADD: p99 {:.2}×, until last {:.2}×",
            ratio(|b| b.p99),
            ratio(|b| b.last)
        );
    }
    if results[0].0 == "switchd" {
        print_steps(&switchd_node);
    }
    drop(bridge);
    drop(switchd_node);
}
