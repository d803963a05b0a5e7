//! Operating switchd: the systemd notify and watchdog protocol, metrics and health
//! endpoints, and the unit file. Needs root; CI runs these as root.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use switchd_e2e::*;

#[test]
fn switchd_speaks_the_systemd_notify_and_watchdog_protocol() {
    let dir = std::env::temp_dir().join(unique("notify"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();

    let mut node = Node::prepare(Netns::new("n"), "10.244.1.0/24", "mtu = 1450\n", None);
    node.env
        .push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    node.env.push(("WATCHDOG_USEC".into(), "200000".into()));
    node.launch();

    let mut messages = Vec::new();
    let mut buf = [0u8; 256];
    let started = Instant::now();
    while messages
        .iter()
        .filter(|m: &&String| m.as_str() == "WATCHDOG=1")
        .count()
        < 3
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "messages so far: {messages:?}"
        );
        let n = sock.recv(&mut buf).expect("a notification");
        messages.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    let protocol: Vec<&String> = messages
        .iter()
        .filter(|m| !m.starts_with("FDSTORE=1"))
        .collect();
    assert_eq!(
        protocol[0], "READY=1",
        "readiness comes before any keep-alive: {messages:?}"
    );
    assert!(
        node.switchctl(&["status"]).status.success(),
        "READY=1 means the control socket answers"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The value of the sample line that starts with `name{` and contains every `needle`.
fn sample(body: &str, name: &str, needles: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_health_and_readiness_report_what_the_switch_does() {
    let node = Node::start("10.244.1.0/24");
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    node.add_k8s_pod(&a, "shop", "cart");
    let addr_b = node.add_pod(&b);
    assert!(a.ping(addr_b));
    assert!(!a.ping(Ipv4Addr::new(10, 244, 1, 200)), "nobody has .200");

    let (status, body) = metrics_get(&node.ns, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let rx = sample(
        &body,
        "switchd_port_rx_packets_total",
        &["pod=\"cart\"", "namespace=\"shop\""],
    )
    .expect("per-pod rx counter");
    assert!(rx >= 2.0, "cart sent at least the pings: {rx}");
    assert!(sample(&body, "switchd_port_tx_bytes_total", &["kind=\"host\""]).is_some());
    assert!(
        sample(
            &body,
            "switchd_drops_total",
            &["reason=\"arp_unknown_target\""]
        )
        .unwrap()
            > 0.0,
        "the unanswered ARP for .200 was counted"
    );
    assert_eq!(sample(&body, "switchd_attaches_total", &[]), Some(2.0));
    assert_eq!(
        sample(&body, "switchd_attach_duration_seconds_count", &[]),
        Some(2.0)
    );
    assert_eq!(sample(&body, "switchd_ports", &[]), Some(3.0));
    assert!(body.contains("switchd_build_info{"), "build info");
    assert!(
        body.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );

    assert_eq!(metrics_get(&node.ns, "/healthz").0, "HTTP/1.1 200 OK");
    let (status, body) = metrics_get(&node.ns, "/readyz");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert_eq!(metrics_get(&node.ns, "/nope").0, "HTTP/1.1 404 Not Found");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/switchd.service"
    ))
    .unwrap();
    assert!(
        unit.contains("Type=notify")
            && unit.contains("WatchdogSec=")
            && unit.contains("Restart=on-failure"),
        "unit essentials"
    );
    // Verify the unit as installed, with ExecStart pointing at the binary we built.
    let dir = std::env::temp_dir().join(unique("unit"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchd.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/switchd",
            &bin_dir().join("switchd").display().to_string(),
        ),
    )
    .unwrap();
    let out = run(std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `eth0` in the calling thread's namespace has carrier (IFF_RUNNING).
fn eth0_running(sock: &std::net::UdpSocket) -> bool {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..4].copy_from_slice(b"eth0");
    // SAFETY: SIOCGIFFLAGS fills `flags` of a properly sized ifreq that outlives the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req as *mut IfReq) };
    rc == 0 && req.flags & libc::IFF_RUNNING as libc::c_short != 0
}

#[test]
fn a_crash_or_a_clean_restart_with_the_fd_store_is_invisible_to_pods() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use switchd_e2e::fdstore::FdStore;

    let mut store = FdStore::new();
    // Two workers, so every port is a two-queue TAP with two descriptors in the store.
    let mut node = Node::prepare(
        Netns::new("n"),
        "10.244.1.0/24",
        "mtu = 1450\ndatapath_threads = 2\n",
        None,
    );
    node.env
        .push(("NOTIFY_SOCKET".into(), store.path.display().to_string()));
    node.launch();
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    let addr_a = node.add_pod(&a);
    let addr_b = node.add_pod(&b);
    assert!(a.ping(addr_b));
    assert!(
        store.pump_until(Duration::from_secs(10), |s| s.fds.len() == 3 * 2),
        "host + 2 pods stored, two queues each: {:?}",
        store.fds.keys().collect::<Vec<_>>()
    );

    // Watch pod a's link every 2 ms, and keep a TCP flow running, across the crash.
    let stop = Arc::new(AtomicBool::new(false));
    let (down_samples, samples) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let watcher = {
        let (stop, down, total) = (stop.clone(), down_samples.clone(), samples.clone());
        a.spawn(move || {
            let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            while !stop.load(Ordering::Relaxed) {
                if !eth0_running(&sock) {
                    down.fetch_add(1, Ordering::Relaxed);
                }
                total.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let flow_stop = Arc::new(AtomicBool::new(false));
    let flow = std::thread::scope(|s| {
        let fs = flow_stop.clone();
        let flow =
            s.spawn(|| tcp_transfer_while(&a, &b, addr_b, move |_| !fs.load(Ordering::Relaxed)));
        std::thread::sleep(Duration::from_millis(300));

        node.kill(); // SIGKILL: no chance to clean up
        std::thread::sleep(Duration::from_millis(300));
        store.launch_with_fds(&mut node);
        store.drain();

        assert!(a.ping(addr_b), "forwarding resumed");
        assert!(node.ns.ping(addr_a), "host port resumed");
        std::thread::sleep(Duration::from_millis(500));
        flow_stop.store(true, Ordering::Relaxed);
        flow.join().unwrap()
    });
    // A clean stop and start (SIGTERM; an upgrade is the same with a new binary) keeps the
    // link too: the watcher is still running.
    node.stop();
    store.launch_with_fds(&mut node);
    assert!(a.ping(addr_b), "forwarding resumed after SIGTERM and start");
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();

    assert!(samples.load(Ordering::Relaxed) > 100, "the watcher ran");
    assert_eq!(
        down_samples.load(Ordering::Relaxed),
        0,
        "pod a's link lost carrier during the restart"
    );
    let (sent, h_sent, received, h_received, _) = flow;
    assert!(sent > 0);
    assert_eq!(
        (received, h_received),
        (sent, h_sent),
        "the TCP flow across the crash arrived intact"
    );
    assert_eq!(node.pod_ports(), 2);
    assert!(node
        .log()
        .contains("adopted port descriptors kept by the service manager"));

    // DEL takes the port out of the store too.
    assert!(node.cni("DEL", &b).ok());
    assert!(
        store.pump_until(Duration::from_secs(10), |s| s.fds.len() == 2 * 2),
        "after DEL: {:?}",
        store.fds.keys().collect::<Vec<_>>()
    );
}

#[test]
fn attachments_whose_namespace_vanished_while_switchd_was_down_are_released_on_start() {
    let mut node = Node::start("10.244.1.0/24");
    let (keep, gone) = (Netns::new("k"), Netns::new("g"));
    node.add_pod(&keep);
    node.add_pod(&gone);
    node.stop();
    drop(gone); // the runtime deleted the pod while switchd was down
    node.launch();
    assert_eq!(node.pod_ports(), 1, "only the surviving pod is re-adopted");
    assert_eq!(
        node.ipam_records().len(),
        1,
        "the vanished pod's address is released"
    );
    assert!(node.log().contains("releasing stale attachment"));
    assert!(node.cni("CHECK", &keep).ok());
}

#[test]
fn switchctl_capture_writes_a_pcap_that_tcpdump_reads() {
    let node = Node::start("10.244.1.0/24");
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    node.add_k8s_pod(&a, "shop", "web");
    let addr_b = node.add_pod(&b);
    let pcap = std::env::temp_dir().join(format!("{}.pcap", unique("cap")));

    let capture = std::process::Command::new(bin_dir().join("switchctl"))
        .arg("--socket")
        .arg(node.socket())
        .args(["capture", "shop/web", "-c", "30", "-w"])
        .arg(&pcap)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // 15 requests and 15 replies outnumber the pod's own start-up chatter (IPv6, ARP).
    let ping = a.exec(&[
        "ping",
        "-c",
        "15",
        "-i",
        "0.1",
        "-W",
        "2",
        &addr_b.to_string(),
    ]);
    assert!(ping.status.success());
    let mut capture = capture;
    let deadline = Instant::now() + Duration::from_secs(15);
    while capture.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = capture.kill();
            let _ = std::fs::remove_file(&pcap);
            panic!("switchctl capture did not see 30 frames in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let done = capture.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stderr).contains("30 frames captured"));

    let read = run(std::process::Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(&pcap));
    let _ = std::fs::remove_file(&pcap);
    let text = String::from_utf8_lossy(&read.stdout);
    assert!(
        read.status.success(),
        "tcpdump -r: {}",
        String::from_utf8_lossy(&read.stderr)
    );
    let requests = text
        .lines()
        .filter(|l| l.contains("ICMP echo request"))
        .count();
    let replies = text
        .lines()
        .filter(|l| l.contains("ICMP echo reply"))
        .count();
    assert!(
        requests >= 3 && replies >= 3,
        "both directions captured:\n{text}"
    );
    assert!(
        text.contains(&format!("> {addr_b}: ICMP echo request")),
        "{text}"
    );
    // The capture is over: the port is no longer copying frames.
    assert!(node
        .switchctl(&["capture", "nobody-by-this-name", "-c", "1"])
        .stderr
        .starts_with(b"switchctl: switchd says (NotFound)"));
}

#[test]
fn metrics_parse_as_openmetrics_and_move_with_traffic() {
    let node = Node::start("10.244.1.0/24");
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    node.add_pod(&a);
    let addr_b = node.add_pod(&b);
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse
total = 0
for fam in parse(sys.stdin.read()):
    for s in fam.samples:
        if s.name == "switchd_port_rx_bytes_total":
            total += s.value
print(int(total))
"#;
    let rx_bytes = || {
        let (_, body) = metrics_get(&node.ns, "/metrics");
        let mut child = std::process::Command::new("/usr/bin/python3")
            .args(["-c", &script.replace("\\\\n", "\\n")])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "not valid OpenMetrics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let before = rx_bytes();
    let (_, h1, n, h2, _) = tcp_transfer(&a, &b, addr_b, 8 << 20);
    assert_eq!((n, h2), (8 << 20, h1));
    let after = rx_bytes();
    assert!(
        after >= before + (8 << 20),
        "rx bytes moved by the transfer: {before} -> {after}"
    );
}

#[test]
fn readyz_says_starting_until_ports_are_re_adopted() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let mut node = Node::start("10.244.1.0/24");
    let pods: Vec<Netns> = (0..40).map(|_| Netns::new("p")).collect();
    for p in &pods {
        node.add_pod(p);
    }
    node.stop();

    // Poll /readyz every 2 ms from before switchd starts until it says ready.
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (seen, done) = (seen.clone(), done.clone());
        node.ns.spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, 9476)) {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = s.write_all(b"GET /readyz HTTP/1.1\r\n\r\n");
                    let mut r = String::new();
                    let _ = s.read_to_string(&mut r);
                    let status = r.lines().next().unwrap_or("").to_string();
                    let ready = status.contains("200");
                    seen.lock().unwrap().push(status);
                    if ready {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    node.launch();
    poller.join().unwrap();
    done.store(true, Ordering::Relaxed);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.last().map(String::as_str),
        Some("HTTP/1.1 200 OK"),
        "ready in the end: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.contains("503")),
        "not ready while re-adopting 40 ports: {seen:?}"
    );
    assert_eq!(node.pod_ports(), 40);
}

/// One length-prefixed frame read from a raw control connection: the response's JSON.
fn read_response(c: &mut std::os::unix::net::UnixStream) -> String {
    let mut prefix = [0u8; 4];
    c.read_exact(&mut prefix).expect("a response");
    let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
    c.read_exact(&mut body).unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

#[test]
fn stalled_oversized_and_foreign_control_clients_cannot_block_the_socket() {
    use std::os::unix::net::UnixStream;
    let node = Node::start("10.244.1.0/24");
    let sock = node.socket();
    // Clients that connect and never send, and one that stops half-way through a request.
    let idle: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    let mut stalled = UnixStream::connect(&sock).unwrap();
    stalled.write_all(&100u32.to_be_bytes()).unwrap();
    stalled.write_all(b"{\"version\"").unwrap();
    // A huge length prefix: refused at once, nothing allocated.
    let mut huge = UnixStream::connect(&sock).unwrap();
    huge.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    huge.write_all(&(15u32 << 20).to_be_bytes()).unwrap();
    let answer = read_response(&mut huge);
    assert!(answer.contains("exceeds the limit"), "{answer}");
    // Everyone else is served meanwhile.
    let t = Instant::now();
    assert!(node.switchctl(&["status"]).status.success());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The half-sent request is dropped after the request timeout.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 1];
    let n = stalled
        .read(&mut buf)
        .expect("closed, not timed out on our side");
    assert_eq!(n, 0, "switchd closed the stalled connection");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    drop(idle);
    // A flood of idle connections: past the limit, clients are told so (and CNI retries);
    // once the flood is gone, service resumes.
    std::thread::sleep(Duration::from_millis(200));
    let flood: Vec<UnixStream> = (0..128)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let out = node.switchctl(&["status"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already serves 128"), "{stderr}");
    // A CNI ADD that arrives during the flood is told "not ready", retries, and lands
    // once the flood is gone.
    let pod = Netns::new("f");
    let added = std::thread::scope(|s| {
        let add = s.spawn(|| node.cni("ADD", &pod));
        std::thread::sleep(Duration::from_millis(500));
        drop(flood);
        add.join().unwrap()
    });
    assert!(added.ok(), "ADD during the flood: {:?}", added.json);
    assert!(
        added.elapsed >= Duration::from_millis(400),
        "it waited for the flood: {:?}",
        added.elapsed
    );
    let back = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        node.switchctl(&["status"]).status.success()
    });
    assert!(back, "service resumes once the flood is gone");

    // Another user, even with the socket's mode opened up, is refused and logged.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = run(std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin_dir().join("switchctl"))
        .arg("--socket")
        .arg(&sock)
        .arg("status"));
    assert!(!out.status.success(), "uid 65534 was served");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("uid 65534"), "{stderr}");
    assert!(
        node.log().contains("refused a control connection"),
        "{}",
        node.log()
    );
    assert!(
        node.switchctl(&["status"]).status.success(),
        "root still is"
    );
}

#[test]
fn members_of_the_socket_group_may_use_the_socket_and_nobody_else() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let node = Node::start_with(
        Netns::new("n"),
        "10.244.1.0/24",
        "socket_group = \"nogroup\"\n",
        None,
    );
    let sock = node.socket();
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "group may read and write");
    assert_eq!(meta.gid(), 65534, "owned by nogroup");
    let as_user = |ids: &[&str]| {
        run(std::process::Command::new("setpriv")
            .args(ids)
            .arg(bin_dir().join("switchctl"))
            .arg("--socket")
            .arg(&sock)
            .arg("status"))
    };
    let primary = as_user(&["--reuid=65534", "--regid=65534", "--clear-groups"]);
    assert!(
        primary.status.success(),
        "a member by its primary group: {}",
        String::from_utf8_lossy(&primary.stderr)
    );
    let supplementary = as_user(&["--reuid=65534", "--regid=1", "--groups=65534"]);
    assert!(
        supplementary.status.success(),
        "a member by a supplementary group: {}",
        String::from_utf8_lossy(&supplementary.stderr)
    );
    // Not a member, with the mode opened up so only switchd's own check stands between.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let stranger = as_user(&["--reuid=65534", "--regid=1", "--clear-groups"]);
    assert!(!stranger.status.success(), "a non-member was served");
    let stderr = String::from_utf8_lossy(&stranger.stderr);
    assert!(
        stderr.contains("members of group nogroup (gid 65534)"),
        "{stderr}"
    );

    // A group that does not exist stops switchd at start, naming the key.
    let config = write_config(
        "node_name = \"n\"\npod_cidr = \"10.244.1.0/24\"\nsocket_group = \"swt-no-such-group\"\n",
    );
    let out = run(std::process::Command::new(bin_dir().join("switchd"))
        .args(["--check", "--config"])
        .arg(&config));
    std::fs::remove_dir_all(config.parent().unwrap()).unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("socket_group") && stderr.contains("no such group"),
        "{stderr}"
    );
}

/// A config file in a fresh temporary directory.
fn write_config(body: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchd.toml");
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn a_capture_reader_too_slow_to_keep_up_is_told_how_many_frames_it_lost() {
    use std::io::Read as _;
    let node = Node::start("10.244.1.0/24");
    let pod = Netns::new("c");
    node.add_k8s_pod(&pod, "shop", "web");
    let gateway = "10.244.1.1";
    // Nobody reads switchctl's stdout while the pod floods: its pipe, the socket and then
    // the capture's queue fill up, and the datapath drops copies instead of waiting.
    let mut capture = std::process::Command::new(bin_dir().join("switchctl"))
        .arg("--socket")
        .arg(node.socket())
        .args(["capture", "shop/web", "-c", "12000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    pod.exec(&["ping", "-f", "-q", "-c", "8000", gateway]);
    // Now read, and top the count up so the capture ends.
    let mut stdout = capture.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out.lines().count()
    });
    for _ in 0..20 {
        if capture.try_wait().unwrap().is_some() {
            break;
        }
        pod.exec(&["ping", "-f", "-q", "-c", "2000", gateway]);
    }
    let status = capture.wait().unwrap();
    let lines = reader.join().unwrap();
    let mut stderr = String::new();
    capture
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
    assert_eq!(lines, 12000, "the frames it did get are all printed");
    assert!(
        stderr.contains("12000 frames captured")
            && stderr.contains("were lost: this reader was too slow"),
        "{stderr}"
    );
}
