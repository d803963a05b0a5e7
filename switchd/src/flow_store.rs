//! The translated-flow table in a file, so it survives a restart of switchd.
//!
//! A restart must not break Service connections: a reply that the endpoint sends while
//! switchd is restarting, or right after, must still go back through the node. So the
//! table's slots live in a shared mapping of `flows.table` beside the control socket (under
//! systemd `/run/switchd`, a tmpfs kept across restarts by `RuntimeDirectoryPreserve`); the
//! next switchd maps the same file and finds every flow with its deadline. Deadlines are on
//! the system's monotonic clock, which a restart does not reset; the kernel's boot id in
//! the header makes a table from before a reboot start afresh.
//!
//! Layout: one 4 KiB header page (magic, bucket count, hash seed, boot id), then the
//! buckets. A table that does not match (another `flow_table_size`, another boot, a
//! damaged or foreign file) is never changed in place: a fresh file is written beside it
//! and renamed over it, so a switchd that still has the old one mapped is not disturbed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::ptr::NonNull;

use anyhow::{Context, Result};

use crate::datapath::flows::{buckets_for, FlowTable, Timeouts, BUCKET_BYTES};

const MAGIC: &[u8; 8] = b"SWFLOWS1";
const HEADER: usize = 4096;
const BOOT_ID_LEN: usize = 36;

/// How the table came to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The previous run's table, with its flows.
    Adopted,
    /// A new, empty table; why the file's old contents (if any) were not used.
    Fresh(String),
}

/// The kernel's boot id, or an empty string if it cannot be read.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Map the table in `path` (created if missing) with room for `capacity` entries.
pub fn open(
    path: &Path,
    capacity: usize,
    timeouts: Timeouts,
    boot: &str,
    new_seed: u64,
) -> Result<(FlowTable, Opened)> {
    let buckets = buckets_for(capacity);
    let len = HEADER + buckets * BUCKET_BYTES;
    let (file, seed, opened) = match adoptable(path, buckets, len, boot) {
        Ok((file, seed)) => (file, seed, Opened::Adopted),
        Err(why) => {
            let file = create(path, buckets, len, boot, new_seed)
                .with_context(|| format!("writing a new flow table {}", path.display()))?;
            (file, new_seed, Opened::Fresh(why))
        }
    };
    let map = Mapping::new(&file, len)
        .with_context(|| format!("mapping the flow table {}", path.display()))?;
    let region = NonNull::new(map.ptr.as_ptr().wrapping_add(HEADER)).expect("mapped memory");
    // SAFETY: the mapping is `len` bytes, page-aligned, read-write and shared; `region` is
    // its part after the header page, `buckets * BUCKET_BYTES` bytes, aligned to the page
    // (a multiple of BUCKET_BYTES), alive as long as `map`, which the table owns. Other
    // switchd processes mapping the file touch it only through the same atomic slots.
    let table = unsafe { FlowTable::in_region(region, buckets, Box::new(map), timeouts, seed) };
    Ok((table, opened))
}

/// The file at `path` if it holds a table of `buckets` buckets from this boot; its seed.
fn adoptable(path: &Path, buckets: usize, len: usize, boot: &str) -> Result<(File, u64), String> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("no table yet".into()),
        Err(e) => return Err(format!("cannot open it: {e}")),
    };
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let mut header = [0u8; 8 + 8 + 8 + BOOT_ID_LEN];
    if size != len as u64 || file.read_exact_at(&mut header, 0).is_err() {
        return Err(format!(
            "it has {size} bytes, not the {len} of a {buckets}-bucket table (flow_table_size changed?)"
        ));
    }
    if &header[..8] != MAGIC {
        return Err("it is not a switchd flow table".into());
    }
    let word = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().unwrap());
    if word(8) != buckets as u64 {
        return Err(format!("it has {} buckets, not {buckets}", word(8)));
    }
    if header[24..24 + BOOT_ID_LEN] != boot_bytes(boot) {
        return Err("it is from before the last reboot".into());
    }
    Ok((file, word(16)))
}

/// Write an empty table next to `path` and rename it into place.
fn create(path: &Path, buckets: usize, len: usize, boot: &str, seed: u64) -> Result<File> {
    let tmp = path.with_extension("new");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&(buckets as u64).to_le_bytes());
    header.extend_from_slice(&seed.to_le_bytes());
    header.extend_from_slice(&boot_bytes(boot));
    header.resize(HEADER, 0);
    file.write_all(&header)?;
    // The buckets: zeroes, allocated now so that a full disk fails here and not with a
    // SIGBUS on first use.
    file.set_len(len as u64)?;
    allocate(&file, len)?;
    std::fs::rename(&tmp, path)?;
    Ok(file)
}

fn boot_bytes(boot: &str) -> [u8; BOOT_ID_LEN] {
    let mut b = [0u8; BOOT_ID_LEN];
    let n = boot.len().min(BOOT_ID_LEN);
    b[..n].copy_from_slice(&boot.as_bytes()[..n]);
    b
}

fn allocate(file: &File, len: usize) -> std::io::Result<()> {
    // SAFETY: posix_fallocate on an open descriptor we own; no memory is passed.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    match rc {
        0 => Ok(()),
        // Filesystems without fallocate: the pages are allocated on first write instead.
        libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// A shared read-write mapping of a whole file, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; the table accesses it only atomically.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(file: &File, len: usize) -> std::io::Result<Mapping> {
        // SAFETY: mapping `len` bytes of an open file that is at least that long; the
        // result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).expect("mmap never returns null on success"),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region `new` mapped, once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::flows::{FlowKey, Packet};

    fn packet(sport: u16) -> Packet {
        Packet::Flow {
            key: FlowKey {
                src: [10, 244, 2, 5],
                dst: [10, 244, 1, 7],
                proto: 6,
                sport,
                dport: 8080,
                fragment: false,
            },
            tcp_flags: 0x02,
            more_fragments: false,
            ip_id: 0,
        }
    }

    fn reply(sport: u16) -> Packet {
        let Packet::Flow { key, .. } = packet(sport) else {
            unreachable!()
        };
        Packet::Flow {
            key: key.reversed(),
            tcp_flags: 0x12,
            more_fragments: false,
            ip_id: 0,
        }
    }

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "swt{}-flowstore-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    const NOW: u32 = 1_000_000;

    #[test]
    fn a_second_open_finds_the_flows_of_the_first() {
        let d = dir();
        let path = d.join("flows.table");
        let (t, opened) = open(&path, 4096, Timeouts::default(), "boot-a", 11).unwrap();
        assert_eq!(opened, Opened::Fresh("no table yet".into()));
        t.track_translated(&packet(40000), NOW);
        drop(t);
        let (t, opened) = open(&path, 4096, Timeouts::default(), "boot-a", 99).unwrap();
        assert_eq!(opened, Opened::Adopted);
        assert_eq!(t.seed(), 11, "the stored seed, not the new one");
        assert!(t.is_reply_of_translated(&reply(40000), NOW + 5));
        assert!(!t.is_reply_of_translated(&reply(40001), NOW + 5));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn two_mappings_share_one_table() {
        let d = dir();
        let path = d.join("flows.table");
        let (a, _) = open(&path, 4096, Timeouts::default(), "b", 1).unwrap();
        let (b, opened) = open(&path, 4096, Timeouts::default(), "b", 2).unwrap();
        assert_eq!(opened, Opened::Adopted);
        a.track_translated(&packet(5), NOW);
        assert!(b.is_reply_of_translated(&reply(5), NOW));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn another_size_another_boot_or_a_foreign_file_starts_empty() {
        let d = dir();
        let path = d.join("flows.table");
        let (t, _) = open(&path, 4096, Timeouts::default(), "boot-a", 1).unwrap();
        t.track_translated(&packet(1), NOW);
        let (t2, opened) = open(&path, 8192, Timeouts::default(), "boot-a", 1).unwrap();
        assert!(
            matches!(opened, Opened::Fresh(ref why) if why.contains("flow_table_size")),
            "{opened:?}"
        );
        assert!(!t2.is_reply_of_translated(&reply(1), NOW));
        // The first mapping still works: the new file replaced the old one by rename.
        assert!(t.is_reply_of_translated(&reply(1), NOW));
        t2.track_translated(&packet(2), NOW);
        drop(t2);
        let (t3, opened) = open(&path, 8192, Timeouts::default(), "boot-b", 1).unwrap();
        assert!(
            matches!(opened, Opened::Fresh(ref why) if why.contains("reboot")),
            "{opened:?}"
        );
        assert!(!t3.is_reply_of_translated(&reply(2), NOW));
        drop(t3);
        std::fs::write(&path, vec![7u8; HEADER + buckets_for(8192) * BUCKET_BYTES]).unwrap();
        let (_, opened) = open(&path, 8192, Timeouts::default(), "boot-b", 1).unwrap();
        assert!(
            matches!(opened, Opened::Fresh(ref why) if why.contains("not a switchd")),
            "{opened:?}"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_directory_that_cannot_hold_it_is_an_error_with_the_path() {
        let e = open(
            Path::new("/proc/swt-no-such-dir/flows.table"),
            1024,
            Timeouts::default(),
            "b",
            1,
        )
        .err()
        .expect("cannot create under /proc");
        assert!(
            format!("{e:#}").contains("/proc/swt-no-such-dir/flows.table"),
            "{e:#}"
        );
    }
}
