//! The translated-flow table in a file, so it survives a restart of switchd.
//!
//! A restart must not break Service connections: a reply that the endpoint sends while
//! switchd is restarting, or right after, must still go back through the node. So the
//! table's slots live in a shared mapping of the file beside the control socket
//! (`switchd.flows` for `switchd.sock`; under
//! systemd `/run/switchd`, a tmpfs kept across restarts by `RuntimeDirectoryPreserve`); the
//! next switchd maps the same file and finds every flow with its deadline. Deadlines are on
//! the system's monotonic clock, which a restart does not reset; the kernel's boot id in
//! the header makes a table from before a reboot start afresh.
//!
//! Layout: one 4 KiB header page (magic, slot layout, bucket count, hash seed, boot id,
//! time of the last sweep), then the buckets. A table that does not match (another `flow_table_size`, another boot, a
//! damaged or foreign file) is never changed in place: a fresh file is written beside it
//! and renamed over it, so a switchd that still has the old one mapped is not disturbed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::ptr::NonNull;

use anyhow::{Context, Result};

use crate::datapath::flows::{
    buckets_for, region_bytes, FlowTable, Timeouts, LAYOUT, MAX_UNSWEPT_SECS,
};

const MAGIC: &[u8; 8] = b"SWFLOWS1";
const HEADER: usize = 4096;
const BOOT_ID_LEN: usize = 36;
/// Header fields: magic, slot layout, bucket count, hash seed, boot id; and, at
/// `SWEPT_AT`, when the table was last swept (monotonic seconds), rewritten every sweep.
const FIXED_LEN: usize = 8 + 8 + 8 + 8 + BOOT_ID_LEN;
const SWEPT_AT: u64 = 128;

/// How the table came to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The previous run's table, with its flows.
    Adopted,
    /// A new, empty table; why the file's old contents (if any) were not used.
    Fresh(String),
}

/// The table, how it was opened, and its file (to record sweeps in).
pub struct Stored {
    pub table: FlowTable,
    pub opened: Opened,
    pub file: FlowFile,
}

/// The open table file.
pub struct FlowFile(File);

impl FlowFile {
    /// Record that the table was swept at `now` (see [`FlowTable::sweep`]): a table not
    /// swept for `MAX_UNSWEPT_SECS` is not adopted.
    pub fn mark_swept(&self, now: u32) -> std::io::Result<()> {
        self.0.write_all_at(&u64::from(now).to_le_bytes(), SWEPT_AT)
    }
}

/// The kernel's boot id, or an empty string if it cannot be read (then no table is ever
/// adopted, since one from before a reboot could not be told apart).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Map the table in `path` (created if missing) with room for `capacity` entries. `now`
/// is the monotonic clock in seconds, `new_seed` the hash key if a fresh table is needed.
/// Do not truncate the file while a switchd has it mapped: that switchd would fault.
pub fn open(
    path: &Path,
    capacity: usize,
    timeouts: Timeouts,
    boot: &str,
    now: u32,
    new_seed: u64,
) -> Result<Stored> {
    let buckets = buckets_for(capacity);
    let len = HEADER + region_bytes(buckets);
    let (file, seed, opened) = match adoptable(path, buckets, len, boot, now) {
        Ok((file, seed)) => {
            allocate(&file, len).with_context(|| format!("allocating {}", path.display()))?;
            (file, seed, Opened::Adopted)
        }
        Err(why) => {
            let file = create(path, buckets, len, boot, now, new_seed)
                .with_context(|| format!("writing a new flow table {}", path.display()))?;
            (file, new_seed, Opened::Fresh(why))
        }
    };
    let map = Mapping::new(&file, len)
        .with_context(|| format!("mapping the flow table {}", path.display()))?;
    let region = NonNull::new(map.ptr.as_ptr().wrapping_add(HEADER)).expect("mapped memory");
    // SAFETY: the mapping is `len` bytes, page-aligned, read-write and shared; `region` is
    // its part after the header page, `region_bytes(buckets)` bytes, page-aligned (so
    // aligned to a bucket), alive as long as `map`, which the table owns. Other switchd
    // processes mapping the file touch it only through the same atomic operations.
    let table = unsafe { FlowTable::in_region(region, buckets, Box::new(map), timeouts, seed) };
    Ok(Stored {
        table,
        opened,
        file: FlowFile(file),
    })
}

/// The file at `path` if it holds a table of `buckets` buckets in this build's layout,
/// from this boot, swept recently enough; its seed. Otherwise why not.
fn adoptable(
    path: &Path,
    buckets: usize,
    len: usize,
    boot: &str,
    now: u32,
) -> Result<(File, u64), String> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("no table yet".into()),
        Err(e) => return Err(format!("cannot open it: {e}")),
    };
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let mut header = [0u8; FIXED_LEN];
    let mut swept = [0u8; 8];
    if size != len as u64
        || file.read_exact_at(&mut header, 0).is_err()
        || file.read_exact_at(&mut swept, SWEPT_AT).is_err()
    {
        return Err(format!(
            "it has {size} bytes, not the {len} of a {buckets}-bucket table (flow_table_size changed?)"
        ));
    }
    if &header[..8] != MAGIC {
        return Err("it is not a switchd flow table".into());
    }
    let word = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().unwrap());
    if word(8) != LAYOUT {
        return Err("it was written by a switchd with another slot layout".into());
    }
    if word(16) != buckets as u64 {
        return Err(format!("it has {} buckets, not {buckets}", word(16)));
    }
    if boot.is_empty() {
        return Err(
            "the boot id cannot be read, so a table from before a reboot cannot be told apart"
                .into(),
        );
    }
    if header[32..32 + BOOT_ID_LEN] != boot_bytes(boot) {
        return Err("it is from before the last reboot".into());
    }
    let since = u64::from(now).saturating_sub(u64::from_le_bytes(swept));
    if since > u64::from(MAX_UNSWEPT_SECS) {
        return Err(format!("it was last swept {since} s ago"));
    }
    Ok((file, word(24)))
}

/// Write an empty table next to `path` (under a name of its own, so two writers cannot
/// meet) and rename it into place. On failure nothing is left behind.
fn create(
    path: &Path,
    buckets: usize,
    len: usize,
    boot: &str,
    now: u32,
    seed: u64,
) -> Result<File> {
    let tmp = path.with_extension(format!("new.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp); // a leftover of a crashed run with our PID
    let result = (|| -> Result<File> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&LAYOUT.to_le_bytes());
        header.extend_from_slice(&(buckets as u64).to_le_bytes());
        header.extend_from_slice(&seed.to_le_bytes());
        header.extend_from_slice(&boot_bytes(boot));
        header.resize(SWEPT_AT as usize, 0);
        header.extend_from_slice(&u64::from(now).to_le_bytes());
        header.resize(HEADER, 0);
        file.write_all(&header)?;
        // The buckets, allocated now so that a full disk fails here and not with a SIGBUS
        // in the datapath on first use.
        file.set_len(len as u64)?;
        allocate(&file, len)?;
        std::fs::rename(&tmp, path)?;
        Ok(file)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn boot_bytes(boot: &str) -> [u8; BOOT_ID_LEN] {
    let mut b = [0u8; BOOT_ID_LEN];
    let n = boot.len().min(BOOT_ID_LEN);
    b[..n].copy_from_slice(&boot.as_bytes()[..n]);
    b
}

/// Make sure every byte of the file has storage behind it.
fn allocate(file: &File, len: usize) -> std::io::Result<()> {
    // SAFETY: posix_fallocate on an open descriptor we own; no memory is passed.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    match rc {
        0 => Ok(()),
        // Filesystems without fallocate: write the zeroes ourselves (the header page
        // holds data; the rest of a new table is zero, and an adopted one is only
        // re-allocated where fallocate works).
        libc::EOPNOTSUPP | libc::EINVAL => {
            let mut chunk = vec![0u8; 1 << 16];
            let mut at = HEADER;
            while at < len {
                let n = chunk.len().min(len - at);
                file.read_exact_at(&mut chunk[..n], at as u64)?;
                if chunk[..n].iter().all(|&b| b == 0) {
                    file.write_all_at(&chunk[..n], at as u64)?;
                }
                at += n;
            }
            Ok(())
        }
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
                src: u32::from_be_bytes([10, 244, 2, 5]),
                dst: u32::from_be_bytes([10, 244, 1, 7]),
                proto: 6,
                sport,
                dport: 8080,
                fragment: false,
                v6: false,
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

    fn open_at(path: &Path, capacity: usize, boot: &str, now: u32, seed: u64) -> Stored {
        open(path, capacity, Timeouts::default(), boot, now, seed).unwrap()
    }

    #[test]
    fn a_second_open_finds_the_flows_of_the_first() {
        let d = dir();
        let path = d.join("switchd.flows");
        let s = open_at(&path, 4096, "boot-a", NOW, 11);
        assert_eq!(s.opened, Opened::Fresh("no table yet".into()));
        s.table.track_translated(&packet(40000), NOW);
        drop(s);
        let s = open_at(&path, 4096, "boot-a", NOW + 3, 99);
        assert_eq!(s.opened, Opened::Adopted);
        assert_eq!(s.table.seed(), 11, "the stored seed, not the new one");
        assert!(s.table.is_reply_of_translated(&reply(40000), NOW + 5));
        assert!(!s.table.is_reply_of_translated(&reply(40001), NOW + 5));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn two_mappings_share_one_table() {
        let d = dir();
        let path = d.join("switchd.flows");
        let a = open_at(&path, 4096, "b", NOW, 1);
        let b = open_at(&path, 4096, "b", NOW, 2);
        assert_eq!(b.opened, Opened::Adopted);
        a.table.track_translated(&packet(5), NOW);
        assert!(b.table.is_reply_of_translated(&reply(5), NOW));
        std::fs::remove_dir_all(d).unwrap();
    }

    fn fresh_because(s: &Stored, why: &str) {
        assert!(
            matches!(s.opened, Opened::Fresh(ref w) if w.contains(why)),
            "{:?}, expected {why:?}",
            s.opened
        );
    }

    #[test]
    fn another_size_boot_or_layout_a_foreign_file_or_a_long_unswept_one_starts_empty() {
        let d = dir();
        let path = d.join("switchd.flows");
        let first = open_at(&path, 4096, "boot-a", NOW, 1);
        first.table.track_translated(&packet(1), NOW);
        let resized = open_at(&path, 8192, "boot-a", NOW, 1);
        fresh_because(&resized, "flow_table_size");
        // The first mapping still works: the new file replaced the old one by rename.
        assert!(first.table.is_reply_of_translated(&reply(1), NOW));
        drop((first, resized));

        let s = open_at(&path, 8192, "boot-a", NOW, 1);
        assert_eq!(s.opened, Opened::Adopted);
        s.table.track_translated(&packet(2), NOW);
        drop(s);
        fresh_because(&open_at(&path, 8192, "boot-b", NOW, 1), "reboot");
        fresh_because(&open_at(&path, 8192, "", NOW, 1), "boot id cannot be read");
        fresh_because(&open_at(&path, 8192, "", NOW, 1), "boot id cannot be read");

        // Another build's slot layout.
        let s = open_at(&path, 8192, "boot-c", NOW, 1);
        drop(s);
        assert_eq!(
            open_at(&path, 8192, "boot-c", NOW, 1).opened,
            Opened::Adopted
        );
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&(LAYOUT ^ 1).to_le_bytes(), 8).unwrap();
        drop(f);
        fresh_because(
            &open_at(&path, 8192, "boot-c", NOW, 1),
            "another slot layout",
        );

        // Not swept for too long; a recorded sweep keeps it adoptable.
        let s = open_at(&path, 8192, "boot-c", NOW, 1);
        let late = NOW + MAX_UNSWEPT_SECS;
        s.file.mark_swept(late).unwrap();
        drop(s);
        assert_eq!(
            open_at(&path, 8192, "boot-c", late + 60, 1).opened,
            Opened::Adopted
        );
        fresh_because(
            &open_at(&path, 8192, "boot-c", late + MAX_UNSWEPT_SECS + 1, 1),
            "last swept",
        );

        std::fs::write(&path, vec![7u8; HEADER + region_bytes(buckets_for(8192))]).unwrap();
        fresh_because(&open_at(&path, 8192, "boot-c", NOW, 1), "not a switchd");
        let leftovers: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            leftovers,
            ["switchd.flows"],
            "no temporary files left behind"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_directory_that_cannot_hold_it_is_an_error_with_the_path() {
        let e = open(
            Path::new("/proc/swt-no-such-dir/switchd.flows"),
            1024,
            Timeouts::default(),
            "b",
            NOW,
            1,
        )
        .err()
        .expect("cannot create under /proc");
        assert!(
            format!("{e:#}").contains("/proc/swt-no-such-dir/switchd.flows"),
            "{e:#}"
        );
    }
}
