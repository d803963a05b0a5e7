//! Bad conditions on the node itself: a state directory that fills up, and a state file
//! that is corrupt at start. Nothing already allocated is lost, and the errors say what to
//! do. Needs root (tmpfs mounts, namespaces); CI runs these as root.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use switchd_e2e::*;

/// A small tmpfs mounted on `at`; unmounted (lazily, switchd may still hold files) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = run(std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "swt-state"])
            .arg(at));
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }

    /// Write zeroes into `name` until the file system is full.
    fn fill(&self, name: &str) {
        let _ = run(std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=4096"])
            .arg(format!("of={}", self.0.join(name).display())));
        let probe = std::fs::write(self.0.join("probe"), vec![0u8; 8192]);
        assert!(probe.is_err(), "the file system is full");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run(std::process::Command::new("umount").arg("-l").arg(&self.0));
    }
}

#[test]
fn a_full_state_disk_fails_add_and_del_clearly_and_loses_nothing() {
    let mut node = Node::prepare(Netns::new("n"), "10.244.1.0/24", "", None);
    let disk = Tmpfs::mount(&node.dir.join("state"), "256k");
    node.launch();
    let (p1, p2) = (Netns::new("p"), Netns::new("p"));
    let a1 = node.add_pod(&p1);
    let before = std::fs::read(node.dir.join("state/ipam.json")).unwrap();

    disk.fill("filler");
    let add = node.cni("ADD", &p2);
    assert!(!add.ok(), "ADD on a full disk succeeded: {:?}", add.json);
    let msg = add.json.to_string();
    assert!(
        msg.contains("disk full or read-only") && msg.contains("No space left on device"),
        "the error names the cause: {msg}"
    );
    assert!(!p2.has_link("eth0"), "the failed ADD left no interface");
    assert_eq!(node.pod_ports(), 1, "and no port");
    assert_eq!(
        std::fs::read(node.dir.join("state/ipam.json")).unwrap(),
        before,
        "the state on disk is untouched"
    );
    assert!(
        p1.ping(Ipv4Addr::new(10, 244, 1, 1)),
        "the pod already attached still works"
    );

    // DEL cannot record the release either: it says so and keeps the record, so the
    // address is neither lost nor handed out twice; the runtime retries DEL.
    let del = node.cni("DEL", &p1);
    assert!(!del.ok(), "DEL on a full disk claimed success");
    assert!(
        del.json.to_string().contains("No space left on device"),
        "{:?}",
        del.json
    );
    assert_eq!(
        node.ipam_records().len(),
        1,
        "p1's address is still recorded"
    );

    // Space is back: everything works, the retried DEL included.
    std::fs::remove_file(disk.0.join("filler")).unwrap();
    let a2 = node.add_pod(&p2);
    assert_ne!(a1, a2, "p1's address was not reused while its record stood");
    let del = node.cni("DEL", &p1);
    assert!(del.ok(), "the retried DEL: {:?}", del.json);
    assert_eq!(node.ipam_records().len(), 1, "only p2 left");
    assert!(p2.ping(Ipv4Addr::new(10, 244, 1, 1)));
}

#[test]
fn a_corrupt_or_truncated_state_file_stops_switchd_with_how_to_recover() {
    let mut node = Node::start("10.244.1.0/24");
    let pod = Netns::new("p");
    node.add_pod(&pod);
    node.stop();
    let state = node.dir.join("state/ipam.json");
    let whole = std::fs::read(&state).unwrap();
    for broken in [&whole[..whole.len() / 2], b"\0\0\0\0".as_slice()] {
        std::fs::write(&state, broken).unwrap();
        node.spawn();
        let status = node
            .wait_exit(std::time::Duration::from_secs(10))
            .expect("switchd refuses to start");
        assert!(!status.success());
        let log = node.log();
        assert!(
            log.contains("ipam.json") && log.contains("move the file aside to start over"),
            "{log}"
        );
        assert_eq!(
            std::fs::read(&state).unwrap(),
            broken,
            "never silently reset"
        );
    }
    // Put back, it starts and keeps the pod.
    std::fs::write(&state, &whole).unwrap();
    node.launch();
    assert_eq!(node.pod_ports(), 1);
}
