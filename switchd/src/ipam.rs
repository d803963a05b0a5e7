//! Address allocation for the node's pod CIDR, keyed by CNI (container id, ifname).
//!
//! Round-robin like the reference `host-local` plugin: the search starts after the address
//! handed out last, so a just-released address is not reused at once (a late packet for a
//! deleted pod must not reach its successor). The whole state is one small JSON file,
//! rewritten crash-safely on every change: temp file, fsync, rename, fsync of the directory.
//! A change that cannot be written is rolled back in memory and reported, so memory and
//! disk never disagree.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    version: u32,
    pod_cidr: Option<Ipv4Net>,
    last_reserved: Option<Ipv4Addr>,
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
    Exhausted { cidr: Ipv4Net, used: usize },
    #[error("cannot write IPAM state {path}: {source}; nothing was changed (is the disk full or read-only?)")]
    Persist { path: PathBuf, source: io::Error },
    #[error("cannot read IPAM state {path}: {detail}")]
    Load { path: PathBuf, detail: String },
}

#[derive(Debug)]
pub struct Ipam {
    dir: PathBuf,
    pod_cidr: Ipv4Net,
    state: State,
}

impl Ipam {
    /// Load the state from `dir` (creating the directory if needed), or start empty.
    pub fn open(dir: &Path, pod_cidr: Ipv4Net) -> Result<Ipam, IpamError> {
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
        let mut state = state;
        state.pod_cidr = Some(pod_cidr);
        Ok(Ipam {
            dir: dir.to_path_buf(),
            pod_cidr,
            state,
        })
    }

    pub fn records(&self) -> &[Record] {
        &self.state.records
    }

    pub fn get(&self, key: &AttachmentKey) -> Option<&Record> {
        self.state.records.iter().find(|r| &r.key == key)
    }

    /// Reserve the next free address for `key` and persist it.
    pub fn allocate(
        &mut self,
        key: AttachmentKey,
        network: &str,
        netns: &str,
        pod: PodRef,
        bandwidth: Option<Bandwidth>,
    ) -> Result<Ipv4Addr, IpamError> {
        if let Some(r) = self.get(&key) {
            return Err(IpamError::AlreadyAllocated {
                key,
                address: r.address,
            });
        }
        let address = self.next_free().ok_or(IpamError::Exhausted {
            cidr: self.pod_cidr,
            used: self.state.records.len(),
        })?;
        let previous_last = self.state.last_reserved.replace(address);
        self.state.records.push(Record {
            key,
            network: network.into(),
            netns: netns.into(),
            pod,
            address,
            bandwidth,
        });
        if let Err(e) = self.persist() {
            self.state.records.pop();
            self.state.last_reserved = previous_last;
            return Err(e);
        }
        Ok(address)
    }

    /// Release `key`'s address. `Ok(None)` when it had none.
    pub fn release(&mut self, key: &AttachmentKey) -> Result<Option<Record>, IpamError> {
        let Some(pos) = self.state.records.iter().position(|r| &r.key == key) else {
            return Ok(None);
        };
        let record = self.state.records.remove(pos);
        if let Err(e) = self.persist() {
            self.state.records.insert(pos, record);
            return Err(e);
        }
        Ok(Some(record))
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

    fn persist(&self) -> Result<(), IpamError> {
        let path = self.dir.join(STATE_FILE);
        let json = serde_json::to_vec_pretty(&self.state).expect("IPAM state serialises");
        write_atomically(&path, &json).map_err(|source| IpamError::Persist { path, source })
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

    fn alloc(ipam: &mut Ipam, i: usize) -> Result<Ipv4Addr, IpamError> {
        ipam.allocate(key(i), "net", "/ns", PodRef::default(), None)
    }

    #[test]
    fn first_pod_gets_dot_two_and_released_addresses_are_not_reused_at_once() {
        let dir = tempdir("rr");
        let mut ipam = Ipam::open(&dir, "10.244.1.0/24".parse().unwrap()).unwrap();
        assert_eq!(alloc(&mut ipam, 0).unwrap(), Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(alloc(&mut ipam, 1).unwrap(), Ipv4Addr::new(10, 244, 1, 3));
        ipam.release(&key(0)).unwrap().unwrap();
        assert_eq!(
            alloc(&mut ipam, 2).unwrap(),
            Ipv4Addr::new(10, 244, 1, 4),
            "round robin, not .2 again"
        );
        assert!(matches!(
            alloc(&mut ipam, 1),
            Err(IpamError::AlreadyAllocated { .. })
        ));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn exhaustion_is_reported_and_wraps_around_to_freed_addresses() {
        let dir = tempdir("full");
        // /29: .0 network, .1 gateway, .2-.6 usable, .7 broadcast.
        let mut ipam = Ipam::open(&dir, "10.244.1.0/29".parse().unwrap()).unwrap();
        let got: Vec<_> = (0..5).map(|i| alloc(&mut ipam, i).unwrap()).collect();
        assert_eq!(got.last(), Some(&Ipv4Addr::new(10, 244, 1, 6)));
        let err = alloc(&mut ipam, 9).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { used: 5, .. }));
        assert!(err
            .to_string()
            .contains("no free address left in 10.244.1.0/29"));
        ipam.release(&key(2)).unwrap();
        assert_eq!(alloc(&mut ipam, 9).unwrap(), Ipv4Addr::new(10, 244, 1, 4));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn allocations_survive_a_restart_and_round_robin_continues() {
        let dir = tempdir("restart");
        let cidr: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        {
            let mut ipam = Ipam::open(&dir, cidr).unwrap();
            alloc(&mut ipam, 0).unwrap();
            alloc(&mut ipam, 1).unwrap();
            ipam.release(&key(1)).unwrap();
        }
        let mut ipam = Ipam::open(&dir, cidr).unwrap();
        assert_eq!(ipam.records().len(), 1);
        assert_eq!(
            ipam.get(&key(0)).unwrap().address,
            Ipv4Addr::new(10, 244, 1, 2)
        );
        assert_eq!(alloc(&mut ipam, 5).unwrap(), Ipv4Addr::new(10, 244, 1, 4));
        assert!(!dir.join("ipam.tmp").exists(), "no temp file left behind");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_changed_pod_cidr_or_a_corrupt_file_is_a_clear_error() {
        let dir = tempdir("bad");
        let mut ipam = Ipam::open(&dir, "10.244.1.0/24".parse().unwrap()).unwrap();
        alloc(&mut ipam, 0).unwrap();
        let err = Ipam::open(&dir, "10.244.2.0/24".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("was pod_cidr changed"), "{err}");
        fs::write(dir.join(STATE_FILE), b"{not json").unwrap();
        let err = Ipam::open(&dir, "10.244.1.0/24".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("move the file aside"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempdir("ro");
        let mut ipam = Ipam::open(&dir, "10.244.1.0/24".parse().unwrap()).unwrap();
        alloc(&mut ipam, 0).unwrap();
        // Make the temp file path a directory so the write fails the way a full disk would.
        fs::create_dir(dir.join("ipam.tmp")).unwrap();
        let err = alloc(&mut ipam, 1).unwrap_err();
        assert!(matches!(err, IpamError::Persist { .. }), "{err}");
        assert_eq!(ipam.records().len(), 1);
        assert!(ipam.release(&key(0)).is_err());
        assert_eq!(ipam.records().len(), 1, "release rolled back too");
        fs::remove_dir_all(&dir).unwrap();
    }
}
