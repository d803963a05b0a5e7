//! Address allocation for the node's pod CIDR, keyed by CNI (container id, ifname); on a
//! dual-stack node one IPv4 and one IPv6 address per attachment, taken and released
//! together in the same write.
//!
//! Round-robin like the reference `host-local` plugin: the search starts after the address
//! handed out last, so a just-released address is not reused at once (a late packet for a
//! deleted pod must not reach its successor). The whole state is one small JSON file,
//! rewritten crash-safely on every change: temp file, fsync, rename, fsync of the directory.
//! A change that cannot be written is rolled back in memory and reported, so memory and
//! disk never disagree about it. No caller hears "done" before its change is on disk.
//!
//! Writes are grouped: a change is made in memory, then its caller waits for the writer.
//! The writer writes the whole current state, so callers who queued behind one fsync are
//! all covered by the next (110 pods starting at once cost a handful of fsyncs, not 110).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use switchd_proto::{AttachmentKey, Bandwidth, PodRef};

const STATE_FILE: &str = "ipam.json";
const STATE_VERSION: u32 = 1;

/// One attachment as remembered across restarts: enough to re-adopt its port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub key: AttachmentKey,
    pub network: String,
    pub netns: String,
    pub pod: PodRef,
    pub address: Ipv4Addr,
    /// The IPv6 address, on a dual-stack node (pods attached before it became one have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_v6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
}

/// The addresses one attachment got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    pub v4: Ipv4Addr,
    pub v6: Option<Ipv6Addr>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    version: u32,
    pod_cidr: Option<Ipv4Net>,
    last_reserved: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod_cidr_v6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_reserved_v6: Option<Ipv6Addr>,
    records: Vec<Record>,
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("container {} interface {} already has address {address}; delete it first", key.container_id, key.ifname)]
    AlreadyAllocated {
        key: AttachmentKey,
        address: Ipv4Addr,
    },
    #[error("no free address left in {cidr} ({used} in use): release pods on this node or give it a larger pod_cidr")]
    Exhausted { cidr: String, used: usize },
    #[error("cannot write IPAM state {path}: {source}; nothing was changed (is the disk full or read-only?)")]
    Persist { path: PathBuf, source: io::Error },
    #[error("cannot read IPAM state {path}: {detail}")]
    Load { path: PathBuf, detail: String },
}

/// The allocations, shared by every control-plane task (`&self` everywhere).
#[derive(Debug)]
pub struct Ipam {
    path: PathBuf,
    book: Mutex<Book>,
    /// The generation last written to disk. Held while writing, so writers queue here and
    /// the first one through writes every change made meanwhile.
    durable: Mutex<u64>,
    /// Files written so far (each one a temp file, fsync, rename, fsync of the directory).
    writes: AtomicU64,
}

/// The state in memory and the pure allocation rules over it.
#[derive(Debug)]
struct Book {
    pod_cidr: Ipv4Net,
    pod_cidr_v6: Option<Ipv6Net>,
    state: State,
    /// Bumped by every change, so a writer knows which changes a file covers.
    generation: u64,
}

impl Ipam {
    /// Load the state from `dir` (creating the directory if needed), or start empty.
    /// `pod_cidr_v6`: the node's IPv6 prefix, on a dual-stack node.
    pub fn open(
        dir: &Path,
        pod_cidr: Ipv4Net,
        pod_cidr_v6: Option<Ipv6Net>,
    ) -> Result<Ipam, IpamError> {
        let path = dir.join(STATE_FILE);
        let load_err = |detail: String| IpamError::Load {
            path: path.clone(),
            detail,
        };
        fs::create_dir_all(dir)
            .map_err(|e| load_err(format!("creating {}: {e}", dir.display())))?;
        let state = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<State>(&bytes)
                .map_err(|e| load_err(format!("{e}; move the file aside to start over (pods attached so far lose their addresses)")))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => State { version: STATE_VERSION, ..State::default() },
            Err(e) => return Err(load_err(e.to_string())),
        };
        if state.version != STATE_VERSION {
            return Err(load_err(format!(
                "state version {} is not {STATE_VERSION}",
                state.version
            )));
        }
        if let Some(outside) = state
            .records
            .iter()
            .find(|r| !pod_cidr.contains(&r.address))
        {
            return Err(load_err(format!(
                "address {} of container {} lies outside pod_cidr {pod_cidr}; was pod_cidr changed while pods were attached?",
                outside.address, outside.key.container_id
            )));
        }
        if let Some((r, a)) = state.records.iter().find_map(|r| {
            r.address_v6
                .filter(|a| !pod_cidr_v6.is_some_and(|net| net.contains(a)))
                .map(|a| (r, a))
        }) {
            let why = match pod_cidr_v6 {
                Some(net) => format!("lies outside pod_cidr_v6 {net}; was pod_cidr_v6 changed while pods were attached?"),
                None => "is left from when the node had pod_cidr_v6; set it again, or delete those pods first".into(),
            };
            return Err(load_err(format!(
                "IPv6 address {a} of container {} {why}",
                r.key.container_id
            )));
        }
        let mut state = state;
        state.pod_cidr = Some(pod_cidr);
        state.pod_cidr_v6 = pod_cidr_v6;
        Ok(Ipam {
            path,
            book: Mutex::new(Book {
                pod_cidr,
                pod_cidr_v6,
                state,
                generation: 0,
            }),
            durable: Mutex::new(0),
            writes: AtomicU64::new(0),
        })
    }

    /// Every attachment, as of now.
    pub fn records(&self) -> Vec<Record> {
        self.book.lock().unwrap().state.records.clone()
    }

    pub fn get(&self, key: &AttachmentKey) -> Option<Record> {
        self.book.lock().unwrap().get(key).cloned()
    }

    /// How many times the state file was written since `open`.
    pub fn writes(&self) -> u64 {
        self.writes.load(Relaxed)
    }

    /// Reserve the next free address (one per family) for `key`, and return once that is
    /// on disk. Blocks on the disk: call it off the async workers.
    pub fn allocate(
        &self,
        key: AttachmentKey,
        network: &str,
        netns: &str,
        pod: PodRef,
        bandwidth: Option<Bandwidth>,
    ) -> Result<Addresses, IpamError> {
        let (addresses, generation) = {
            let mut book = self.book.lock().unwrap();
            let addresses = book.reserve(key.clone(), network, netns, pod, bandwidth)?;
            (addresses, book.bump())
        };
        self.commit(generation, |book| {
            book.take(&key);
        })?;
        Ok(addresses)
    }

    /// Release `key`'s address and return once that is on disk. `Ok(None)` when it had none.
    pub fn release(&self, key: &AttachmentKey) -> Result<Option<Record>, IpamError> {
        let (record, generation) = {
            let mut book = self.book.lock().unwrap();
            let Some(record) = book.take(key) else {
                return Ok(None);
            };
            (record, book.bump())
        };
        let restore = record.clone();
        self.commit(generation, move |book| book.state.records.push(restore))?;
        Ok(Some(record))
    }

    /// Make the change of `generation` durable: return at once if a write since covered
    /// it, else write the current state. If that write fails, `undo` takes the change back
    /// (still under the writer's lock, so no later write can contain it) and the error is
    /// returned.
    fn commit(&self, generation: u64, undo: impl FnOnce(&mut Book)) -> Result<(), IpamError> {
        let mut durable = self.durable.lock().unwrap();
        if *durable >= generation {
            return Ok(());
        }
        let (json, covers) = {
            let book = self.book.lock().unwrap();
            let json = serde_json::to_vec_pretty(&book.state).expect("IPAM state serialises");
            (json, book.generation)
        };
        match write_atomically(&self.path, &json) {
            Ok(()) => {
                *durable = covers;
                self.writes.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(source) => {
                let mut book = self.book.lock().unwrap();
                undo(&mut book);
                book.bump();
                Err(IpamError::Persist {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }
}

impl Book {
    fn get(&self, key: &AttachmentKey) -> Option<&Record> {
        self.state.records.iter().find(|r| &r.key == key)
    }

    fn bump(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    fn take(&mut self, key: &AttachmentKey) -> Option<Record> {
        let pos = self.state.records.iter().position(|r| &r.key == key)?;
        Some(self.state.records.remove(pos))
    }

    /// Reserve the next free address (one per family) for `key`, in memory.
    fn reserve(
        &mut self,
        key: AttachmentKey,
        network: &str,
        netns: &str,
        pod: PodRef,
        bandwidth: Option<Bandwidth>,
    ) -> Result<Addresses, IpamError> {
        if let Some(r) = self.get(&key) {
            return Err(IpamError::AlreadyAllocated {
                key,
                address: r.address,
            });
        }
        let address = self.next_free().ok_or(IpamError::Exhausted {
            cidr: self.pod_cidr.to_string(),
            used: self.state.records.len(),
        })?;
        let address_v6 = match self.pod_cidr_v6 {
            Some(net) => Some(self.next_free_v6(net).ok_or(IpamError::Exhausted {
                cidr: net.to_string(),
                used: self.state.records.len(),
            })?),
            None => None,
        };
        // The round robin moves on even if the write fails: harmless, and another change
        // may have moved it meanwhile.
        self.state.last_reserved = Some(address);
        if address_v6.is_some() {
            self.state.last_reserved_v6 = address_v6;
        }
        self.state.records.push(Record {
            key,
            network: network.into(),
            netns: netns.into(),
            pod,
            address,
            address_v6,
            bandwidth,
        });
        Ok(Addresses {
            v4: address,
            v6: address_v6,
        })
    }

    /// The usable host range: everything but the network address, the gateway (`.1`) and
    /// the broadcast address.
    fn range(&self) -> (u32, u32) {
        let first = u32::from(self.pod_cidr.network()) + 2;
        let last = u32::from(self.pod_cidr.broadcast()).saturating_sub(1);
        (first, last)
    }

    fn next_free(&self) -> Option<Ipv4Addr> {
        let (first, last) = self.range();
        if last < first {
            return None;
        }
        let size = last - first + 1;
        let start = match self.state.last_reserved.map(u32::from) {
            Some(l) if (first..=last).contains(&l) => l - first + 1,
            _ => 0,
        };
        (0..size)
            .map(|i| Ipv4Addr::from(first + (start + i) % size))
            .find(|candidate| !self.state.records.iter().any(|r| r.address == *candidate))
    }

    /// The next free IPv6 address after the one handed out last, skipping the prefix's
    /// `::` (the subnet-router anycast address) and `::1` (the gateway). However large the
    /// prefix, one more candidate than there are records always finds a free one.
    fn next_free_v6(&self, net: Ipv6Net) -> Option<Ipv6Addr> {
        let first = u128::from(net.network()) + 2;
        let last = u128::from(net.broadcast());
        if last < first {
            return None;
        }
        let size = last - first + 1;
        let start = match self.state.last_reserved_v6.map(u128::from) {
            Some(l) if (first..=last).contains(&l) => (l - first + 1) % size,
            _ => 0,
        };
        let tries = (self.state.records.len() as u128 + 1).min(size);
        (0..tries)
            .map(|i| Ipv6Addr::from(first + (start + i) % size))
            .find(|c| !self.state.records.iter().any(|r| r.address_v6 == Some(*c)))
    }
}

/// Replace `path` with `bytes` so that a crash at any point leaves either the old or the new
/// content, never a mix: write a temp file beside it, fsync it, rename it over, fsync the
/// directory so the rename itself is durable.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> AttachmentKey {
        AttachmentKey {
            container_id: format!("c{i}"),
            ifname: "eth0".into(),
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("switchd-ipam-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn alloc(ipam: &Ipam, i: usize) -> Result<Ipv4Addr, IpamError> {
        ipam.allocate(key(i), "net", "/ns", PodRef::default(), None)
            .map(|a| a.v4)
    }

    #[test]
    fn first_pod_gets_dot_two_and_released_addresses_are_not_reused_at_once() {
        let dir = tempdir("rr");
        let ipam = Ipam::open(&dir, "10.244.1.0/24".parse().unwrap(), None).unwrap();
        assert_eq!(alloc(&ipam, 0).unwrap(), Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(alloc(&ipam, 1).unwrap(), Ipv4Addr::new(10, 244, 1, 3));
        ipam.release(&key(0)).unwrap().unwrap();
        assert_eq!(
            alloc(&ipam, 2).unwrap(),
            Ipv4Addr::new(10, 244, 1, 4),
            "round robin, not .2 again"
        );
        assert!(matches!(
            alloc(&ipam, 1),
            Err(IpamError::AlreadyAllocated { .. })
        ));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn exhaustion_is_reported_and_wraps_around_to_freed_addresses() {
        let dir = tempdir("full");
        // /29: .0 network, .1 gateway, .2-.6 usable, .7 broadcast.
        let ipam = Ipam::open(&dir, "10.244.1.0/29".parse().unwrap(), None).unwrap();
        let got: Vec<_> = (0..5).map(|i| alloc(&ipam, i).unwrap()).collect();
        assert_eq!(got.last(), Some(&Ipv4Addr::new(10, 244, 1, 6)));
        let err = alloc(&ipam, 9).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { used: 5, .. }));
        assert!(err
            .to_string()
            .contains("no free address left in 10.244.1.0/29"));
        ipam.release(&key(2)).unwrap();
        assert_eq!(alloc(&ipam, 9).unwrap(), Ipv4Addr::new(10, 244, 1, 4));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn allocations_survive_a_restart_and_round_robin_continues() {
        let dir = tempdir("restart");
        let cidr: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        {
            let ipam = Ipam::open(&dir, cidr, None).unwrap();
            alloc(&ipam, 0).unwrap();
            alloc(&ipam, 1).unwrap();
            ipam.release(&key(1)).unwrap();
        }
        let ipam = Ipam::open(&dir, cidr, None).unwrap();
        assert_eq!(ipam.records().len(), 1);
        assert_eq!(
            ipam.get(&key(0)).unwrap().address,
            Ipv4Addr::new(10, 244, 1, 2)
        );
        assert_eq!(alloc(&ipam, 5).unwrap(), Ipv4Addr::new(10, 244, 1, 4));
        assert!(!dir.join("ipam.tmp").exists(), "no temp file left behind");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_changed_pod_cidr_or_a_corrupt_file_is_a_clear_error() {
        let dir = tempdir("bad");
        let ipam = Ipam::open(&dir, "10.244.1.0/24".parse().unwrap(), None).unwrap();
        alloc(&ipam, 0).unwrap();
        let err = Ipam::open(&dir, "10.244.2.0/24".parse().unwrap(), None).unwrap_err();
        assert!(err.to_string().contains("was pod_cidr changed"), "{err}");
        fs::write(dir.join(STATE_FILE), b"{not json").unwrap();
        let err = Ipam::open(&dir, "10.244.1.0/24".parse().unwrap(), None).unwrap_err();
        assert!(err.to_string().contains("move the file aside"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempdir("ro");
        let ipam = Ipam::open(&dir, "10.244.1.0/24".parse().unwrap(), None).unwrap();
        alloc(&ipam, 0).unwrap();
        // Make the temp file path a directory so the write fails the way a full disk would.
        fs::create_dir(dir.join("ipam.tmp")).unwrap();
        let err = alloc(&ipam, 1).unwrap_err();
        assert!(matches!(err, IpamError::Persist { .. }), "{err}");
        assert_eq!(ipam.records().len(), 1);
        assert!(ipam.release(&key(0)).is_err());
        assert_eq!(ipam.records().len(), 1, "release rolled back too");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn changes_queued_behind_a_write_are_written_together_and_each_waits_for_its_own() {
        let dir = tempdir("group");
        let ipam =
            std::sync::Arc::new(Ipam::open(&dir, "10.244.1.0/24".parse().unwrap(), None).unwrap());
        // Hold the writer, as a slow fsync would, while eight attaches arrive.
        let writer = ipam.durable.lock().unwrap();
        let waiting: Vec<_> = (0..8)
            .map(|i| {
                let ipam = ipam.clone();
                std::thread::spawn(move || alloc(&ipam, i))
            })
            .collect();
        while ipam.records().len() < 8 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(
            waiting.iter().all(|t| !t.is_finished()),
            "an attach returned before its address was on disk"
        );
        assert!(!dir.join(STATE_FILE).exists(), "nothing written yet");
        drop(writer);
        let mut got: Vec<Ipv4Addr> = waiting
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 8, "distinct addresses");
        assert_eq!(ipam.writes(), 1, "one write covered all eight");
        let reread = Ipam::open(&dir, "10.244.1.0/24".parse().unwrap(), None).unwrap();
        assert_eq!(reread.records().len(), 8, "all eight on disk");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_group_write_takes_back_only_what_it_could_not_write() {
        let dir = tempdir("group-fail");
        let ipam = Ipam::open(&dir, "10.244.1.0/24".parse().unwrap(), None).unwrap();
        alloc(&ipam, 0).unwrap();
        fs::create_dir(dir.join("ipam.tmp")).unwrap(); // the next write fails
        assert!(matches!(alloc(&ipam, 1), Err(IpamError::Persist { .. })));
        assert!(ipam.get(&key(1)).is_none(), "rolled back in memory");
        fs::remove_dir(dir.join("ipam.tmp")).unwrap(); // space again
        alloc(&ipam, 2).unwrap();
        let reread = Ipam::open(&dir, "10.244.1.0/24".parse().unwrap(), None).unwrap();
        let keys: Vec<_> = reread
            .records()
            .into_iter()
            .map(|r| r.key.container_id)
            .collect();
        assert_eq!(keys, ["c0", "c2"], "memory and disk agree");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_dual_stack_attachment_gets_one_address_per_family_released_together() {
        let dir = tempdir("dual");
        let v4: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let v6: Ipv6Net = "fd10:244:0:1::/64".parse().unwrap();
        let ipam = Ipam::open(&dir, v4, Some(v6)).unwrap();
        let a = ipam
            .allocate(key(1), "net", "/ns", PodRef::default(), None)
            .unwrap();
        assert_eq!(a.v4, "10.244.1.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(a.v6, Some("fd10:244:0:1::2".parse().unwrap()));
        let b = ipam
            .allocate(key(2), "net", "/ns", PodRef::default(), None)
            .unwrap();
        assert_eq!(b.v6, Some("fd10:244:0:1::3".parse().unwrap()));
        let released = ipam.release(&key(1)).unwrap().unwrap();
        assert_eq!(released.address_v6, a.v6, "both go with the record");
        // Round robin per family, and the state survives a restart.
        drop(ipam);
        let ipam = Ipam::open(&dir, v4, Some(v6)).unwrap();
        let c = ipam
            .allocate(key(3), "net", "/ns", PodRef::default(), None)
            .unwrap();
        assert_eq!(c.v6, Some("fd10:244:0:1::4".parse().unwrap()));
        assert_eq!(ipam.get(&key(2)).unwrap().address_v6, b.v6);
        // The prefix changed under attached pods, or IPv6 turned off: a clear error.
        drop(ipam);
        let err = Ipam::open(&dir, v4, Some("fd10:244:0:2::/64".parse().unwrap())).unwrap_err();
        assert!(err.to_string().contains("outside pod_cidr_v6"), "{err}");
        let err = Ipam::open(&dir, v4, None).unwrap_err();
        assert!(err.to_string().contains("set it again"), "{err}");
    }

    #[test]
    fn a_small_ipv6_prefix_runs_out_and_says_which() {
        let dir = tempdir("dual-small");
        let v6: Ipv6Net = "fd10:244:0:1::/126".parse().unwrap();
        let ipam = Ipam::open(&dir, "10.244.1.0/24".parse().unwrap(), Some(v6)).unwrap();
        alloc(&ipam, 1).unwrap();
        alloc(&ipam, 2).unwrap();
        let err = alloc(&ipam, 3).unwrap_err();
        assert!(err.to_string().contains("fd10:244:0:1::/126"), "{err}");
        assert_eq!(ipam.records().len(), 2, "nothing half-allocated");
    }
}
