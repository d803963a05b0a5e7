//! Flows the node translated, so that their replies go back through the node.
//!
//! kube-proxy DNATs a pod's packet for a ClusterIP inside the node's netfilter; the packet
//! then comes back in through the host port (`switchd0`) towards the endpoint, still carrying
//! the client pod's address. The endpoint's reply must cross the same node again, or its
//! conntrack cannot turn the endpoint's address back into the ClusterIP and the client
//! resets the connection. So: a frame that arrives from the host port with a pod's source
//! address (the node forwarded it) records its *reply* tuple here, and a frame from a pod or
//! from the tunnel that matches a recorded tuple goes to the host port instead of being
//! switched directly. Flows the node never touched are never recorded and stay switched.
//!
//! Sending a frame to the node when it was not needed is always correct (the node routes it
//! back out through `switchd0`), only slower; missing one is not. The table is built on that:
//!
//! - **Bounded.** A fixed number of slots in buckets of [`WAYS`] (one cache line each), set
//!   at start (`flow_table_size`). A full bucket evicts its entry nearest to expiry, which is
//!   counted (`evicted`).
//! - **Lock-free.** Each slot is one `AtomicU64`: a 43-bit fingerprint of the tuple, a 3-bit
//!   state and a 18-bit deadline. Every change is one compare-and-swap, so readers never
//!   wait and never see half an entry. A fingerprint collision (the tuples' 64-bit hashes
//!   agree in bucket and fingerprint) sends a frame through the node needlessly, never wrong.
//! - **No state longer than the kernel's.** Entries expire on the kernel's own conntrack
//!   timeouts (read from the node at start, see [`Timeouts`]), refreshed by the same packets
//!   that refresh the kernel's entry: every packet of a recorded flow crosses the node in both
//!   directions, so the two clocks run together.
//! - **Gated.** Before any lookup, one counter per hash of the frame's source address says
//!   whether any recorded flow has its replies coming from there; most pod-to-pod frames
//!   (from pods that are not Service endpoints) stop at that one load.
//! - **IP fragments.** Only a flow's first fragment carries its ports. When the first
//!   fragment of a reply matches a flow, its IP identification is recorded too, and the
//!   later fragments of that datagram follow it to the node (they must, or the node's
//!   defragmentation would wait for them in vain).
//! - **ICMP errors** about a recorded flow (their quoted header is the flow's original
//!   direction) go to the node too, which rewrites them.
//!
//! - **Survives restarts.** The slots can live in memory the caller maps from a file
//!   ([`FlowTable::in_region`]; `switchd/src/flow_store.rs` does it), so the next switchd
//!   finds the flows of the one before. Deadlines are on the system's monotonic clock.
//!
//! Nothing here performs a system call: the caller passes the time in seconds.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

pub const WAYS: usize = 8;

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = super::ipv6::NEXT_HEADER_ICMPV6;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

const DEADLINE_BITS: u32 = 18;
const DEADLINE_MASK: u64 = (1 << DEADLINE_BITS) - 1;
const STATE_SHIFT: u32 = DEADLINE_BITS;
const STATE_MASK: u64 = 0b111;
const FP_SHIFT: u32 = DEADLINE_BITS + 3;
/// Deadlines are seconds modulo 2^18 (about 3 days) and counted in units of
/// `1 << TIME_SHIFT` seconds, so the range covers 2^(18+TIME_SHIFT) seconds. With 4-second
/// units it is about 12 days, of which half (6 days) is usable ahead of "now": the kernel's
/// default established-TCP timeout (5 days) fits.
const TIME_SHIFT: u32 = 2;
const MAX_AHEAD: u32 = (1 << (DEADLINE_BITS - 1)) - 2;

/// What a slot means, as one number: a table in memory written under another layout
/// (another build of switchd) must not be adopted. Bump the last term whenever the hash,
/// the fingerprint or the state encoding changes.
pub const LAYOUT: u64 = ((WAYS as u64) << 48)
    | ((DEADLINE_BITS as u64) << 40)
    | ((TIME_SHIFT as u64) << 32)
    | ((FP_SHIFT as u64) << 24)
    | ((GATE_BITS as u64) << 16)
    | 2;

/// The longest a table may go unswept and still be adopted, in seconds: well inside the
/// half of the deadline range in which an expired entry cannot yet look live again.
pub const MAX_UNSWEPT_SECS: u32 = (1 << (DEADLINE_BITS - 2)) << TIME_SHIFT;

/// A flow as the core sees it: addresses, protocol and ports (ICMP echo: the identifier in
/// both; a fragment entry: the IP identification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Addresses as numbers (`u32::from_be_bytes` of the wire bytes): read straight from
    /// the frame as whole words, never assembled from bytes, which would make the next
    /// load of the key wait for the stores to drain.
    pub src: u32,
    pub dst: u32,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// Set for the entry that carries a fragmented datagram's later fragments.
    pub fragment: bool,
    /// An IPv6 flow: `src` and `dst` are then [`fold6`] digests of the addresses, and
    /// ICMPv6 is keyed as ICMP (proto 1), whose state and timeout it shares.
    pub v6: bool,
}

impl FlowKey {
    /// The tuple of the other direction of this flow.
    pub fn reversed(self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ..self
        }
    }
}

/// What the core read from a frame's IPv4 and transport headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet {
    /// A first (or only) fragment with its ports; `tcp_flags` is 0 for non-TCP.
    Flow {
        key: FlowKey,
        tcp_flags: u8,
        /// This is a first fragment with more to follow.
        more_fragments: bool,
        /// The IP identification (IPv4's 16 bits, IPv6's Fragment header's 32).
        ip_id: u32,
    },
    /// A later fragment: no ports, only the datagram's identification.
    Fragment(FlowKey),
    /// An ICMP error quoting the packet it is about; the key is that packet's flow.
    IcmpError(FlowKey),
}

/// Read the flow of an IPv4 packet (`ip` starts at the IPv4 header, which the caller has
/// already checked). `None` when the transport header is cut short: such a packet is
/// forwarded as it would be without flow tracking.
#[inline(always)]
pub fn parse(ip: &[u8]) -> Option<Packet> {
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ihl < 20 || ip.len() < ihl {
        return None;
    }
    let proto = ip[9];
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let offset = frag & 0x1fff;
    let more_fragments = frag & 0x2000 != 0;
    let ip_id = u16::from_be_bytes([ip[4], ip[5]]);
    let src = be32(ip, 12);
    let dst = be32(ip, 16);
    if offset != 0 {
        return Some(Packet::Fragment(fragment_key(
            src,
            dst,
            proto,
            u32::from(ip_id),
            false,
        )));
    }
    let l4 = &ip[ihl..];
    let (sport, dport, tcp_flags) = match proto {
        PROTO_TCP => {
            let h = l4.get(..14)?;
            (be16(h, 0), be16(h, 2), h[13])
        }
        PROTO_UDP | 132 /* SCTP */ => {
            let h = l4.get(..4)?;
            (be16(h, 0), be16(h, 2), 0)
        }
        PROTO_ICMP => {
            let h = l4.get(..8)?;
            match h[0] {
                // Echo reply / request, timestamp, information, address mask: by identifier.
                0 | 8 | 13 | 14 | 15 | 16 | 17 | 18 => {
                    let id = be16(h, 4);
                    (id, id, 0)
                }
                // Destination unreachable, time exceeded, parameter problem.
                3 | 11 | 12 => return quoted_flow(&l4[8..]).map(Packet::IcmpError),
                _ => (0, 0, 0),
            }
        }
        _ => (0, 0, 0),
    };
    Some(Packet::Flow {
        key: FlowKey {
            src,
            dst,
            proto,
            sport,
            dport,
            fragment: false,
            v6: false,
        },
        tcp_flags,
        more_fragments,
        ip_id: u32::from(ip_id),
    })
}

/// The flow of the packet an ICMP error quotes (its IPv4 header and at least 8 bytes).
fn quoted_flow(inner: &[u8]) -> Option<FlowKey> {
    let ihl = usize::from(inner.first()? & 0x0f) * 4;
    if ihl < 20 || inner.len() < ihl {
        return None;
    }
    let proto = inner[9];
    let l4 = &inner[ihl..];
    let (sport, dport) = match proto {
        PROTO_TCP | PROTO_UDP | 132 => (be16(l4.get(..4)?, 0), be16(l4, 2)),
        PROTO_ICMP => {
            let id = be16(l4.get(..8)?, 4);
            (id, id)
        }
        _ => (0, 0),
    };
    Some(FlowKey {
        src: be32(inner, 12),
        dst: be32(inner, 16),
        proto,
        sport,
        dport,
        fragment: false,
        v6: false,
    })
}

/// A 32-bit digest of an IPv6 address, for [`FlowKey`]. Two addresses that share one can
/// only send a frame through the node needlessly, never wrongly.
#[inline]
pub fn fold6(addr: &[u8; 16]) -> u32 {
    let x = u128::from_be_bytes(*addr);
    let h = ((x as u64) ^ ((x >> 64) as u64).rotate_left(23)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 32) as u32
}

/// Read the flow of an IPv6 packet (`ip` starts at its header, `info` is its parse).
/// `None` when the transport header is cut short.
pub fn parse6(ip: &[u8], info: &super::ipv6::Ipv6Info) -> Option<Packet> {
    let (src, dst) = (fold6(&info.src), fold6(&info.dst));
    let Some(upper_at) = info.upper_at else {
        let (id, _) = info.fragment?;
        let proto = key_proto6(info.upper);
        return Some(Packet::Fragment(fragment_key(src, dst, proto, id, true)));
    };
    let l4 = ip.get(upper_at..info.len)?;
    if info.upper == PROTO_ICMPV6 && matches!(l4.first(), Some(1..=4)) {
        // Unreachable, packet too big, time exceeded, parameter problem: about the
        // packet it quotes.
        let inner = l4.get(8..)?;
        let quoted = super::ipv6::parse(inner).ok()?;
        return flow_key6(inner, &quoted)
            .map(|(key, _)| key)
            .map(Packet::IcmpError);
    }
    let (key, tcp_flags) = flow_key6(ip, info)?;
    Some(Packet::Flow {
        key,
        tcp_flags,
        more_fragments: info.fragment.is_some_and(|(_, more)| more),
        ip_id: info.fragment.map_or(0, |(id, _)| id),
    })
}

/// ICMPv6 is keyed as ICMP, whose state and timeout it shares.
fn key_proto6(upper: u8) -> u8 {
    if upper == PROTO_ICMPV6 {
        PROTO_ICMP
    } else {
        upper
    }
}

/// The flow key and TCP flags of an IPv6 packet by its transport header. An ICMPv6 error
/// is keyed as a plain ICMP packet here (never by what it quotes), so a quoted error
/// inside an error is not followed.
fn flow_key6(ip: &[u8], info: &super::ipv6::Ipv6Info) -> Option<(FlowKey, u8)> {
    let l4 = ip.get(info.upper_at?..info.len)?;
    let (sport, dport, tcp_flags) = match info.upper {
        PROTO_TCP => {
            let h = l4.get(..14)?;
            (be16(h, 0), be16(h, 2), h[13])
        }
        PROTO_UDP | 132 => {
            let h = l4.get(..4)?;
            (be16(h, 0), be16(h, 2), 0)
        }
        // Echo request / reply: by identifier.
        PROTO_ICMPV6 => match l4.get(..8)? {
            h if h[0] == 128 || h[0] == 129 => (be16(h, 4), be16(h, 4), 0),
            _ => (0, 0, 0),
        },
        _ => (0, 0, 0),
    };
    let key = FlowKey {
        src: fold6(&info.src),
        dst: fold6(&info.dst),
        proto: key_proto6(info.upper),
        sport,
        dport,
        fragment: false,
        v6: true,
    };
    Some((key, tcp_flags))
}

fn fragment_key(src: u32, dst: u32, proto: u8, ip_id: u32, v6: bool) -> FlowKey {
    FlowKey {
        src,
        dst,
        proto,
        sport: ip_id as u16,
        dport: (ip_id >> 16) as u16,
        fragment: true,
        v6,
    }
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// The kernel's conntrack timeouts, in seconds. [`Timeouts::default`] holds the kernel's
/// defaults; switchd reads the node's own values (`net.netfilter.nf_conntrack_*`) at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn_sent: u32,
    pub tcp_syn_recv: u32,
    pub tcp_established: u32,
    pub tcp_time_wait: u32,
    pub tcp_close: u32,
    pub udp: u32,
    pub udp_stream: u32,
    pub icmp: u32,
    pub generic: u32,
    /// How long the later fragments of a datagram may trail its first (`ipfrag_time`).
    pub fragment: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: 120,
            tcp_syn_recv: 60,
            tcp_established: 432_000,
            tcp_time_wait: 120,
            tcp_close: 10,
            udp: 30,
            udp_stream: 120,
            icmp: 30,
            generic: 600,
            fragment: 30,
        }
    }
}

/// A flow's progress, as far as its timeout depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum State {
    /// Only the original direction seen (TCP: the SYN).
    New = 0,
    /// The reply direction seen once (TCP: the SYN-ACK).
    Replied = 1,
    /// Both directions seen, the handshake complete (UDP: a stream).
    Established = 2,
    /// A FIN seen.
    Closing = 3,
    /// A RST seen.
    Closed = 4,
}

impl State {
    fn from_bits(bits: u64) -> State {
        match bits {
            0 => State::New,
            1 => State::Replied,
            2 => State::Established,
            3 => State::Closing,
            _ => State::Closed,
        }
    }
}

/// Counters of the flow table, for `switchctl stats` and metrics.
#[derive(Debug, Default)]
pub struct FlowCounters {
    /// Flows recorded (a new tuple arrived from the host port with a pod's source).
    pub tracked: AtomicU64,
    /// Frames sent back to the node because they belong to a recorded flow.
    pub returned: AtomicU64,
    /// Live entries pushed out by a full bucket.
    pub evicted: AtomicU64,
}

#[repr(align(64))]
struct Bucket([AtomicU64; WAYS]);

/// Bytes of one bucket: the unit the table's memory comes in.
pub const BUCKET_BYTES: usize = std::mem::size_of::<Bucket>();

/// The gate in front of the table: one counter per hash of a reply's source address,
/// holding how many slots hold flows whose replies come from such an address. A frame
/// whose source has a zero counter cannot be a reply of a recorded flow, and is switched
/// after one load instead of a lookup: pod-to-pod traffic of pods that are not Service
/// endpoints pays nothing else.
const GATE_BITS: u32 = 16;
const GATE_SLOTS: usize = 1 << GATE_BITS;
/// Bytes of the gate, which precedes the buckets in a table's memory.
pub const GATE_BYTES: usize = GATE_SLOTS * std::mem::size_of::<AtomicU32>();
/// Fingerprint bits that come from the tuple's hash; the top `GATE_BITS` of the
/// fingerprint are the gate index of the reply's source, so a slot says which counter
/// it holds up.
const FP_TUPLE_BITS: u32 = 64 - FP_SHIFT - GATE_BITS;

/// Bytes of memory a table of `buckets` buckets lives in: the gate, then the buckets.
pub fn region_bytes(buckets: usize) -> usize {
    GATE_BYTES + buckets * BUCKET_BYTES
}

/// The number of buckets a table of at least `capacity` entries has.
pub fn buckets_for(capacity: usize) -> usize {
    capacity.div_ceil(WAYS).max(1).next_power_of_two()
}

/// The table of translated flows. Shared by every port and the tunnel; see the module docs.
pub struct FlowTable {
    /// `GATE_SLOTS` counters, then `mask + 1` buckets, in memory kept alive by `_memory`.
    gate: std::ptr::NonNull<AtomicU32>,
    buckets: std::ptr::NonNull<Bucket>,
    mask: u64,
    seed: u64,
    pub timeouts: Timeouts,
    pub counters: FlowCounters,
    _memory: Box<dyn Send + Sync>,
}

/// Buckets on the heap, given back to the allocator on drop.
struct HeapBuckets(std::ptr::NonNull<[Bucket]>);

// SAFETY: a uniquely owned allocation of atomics, like a `Box<[Bucket]>`.
unsafe impl Send for HeapBuckets {}
// SAFETY: as above.
unsafe impl Sync for HeapBuckets {}

impl Drop for HeapBuckets {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::leak` in `FlowTable::new` and is freed once.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

// SAFETY: the buckets are only ever accessed through shared references to atomics, and
// the memory they live in is owned by `_memory`, which is itself Send + Sync.
unsafe impl Send for FlowTable {}
// SAFETY: as above: all access is atomic.
unsafe impl Sync for FlowTable {}

impl std::fmt::Debug for FlowTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowTable")
            .field("capacity", &self.capacity())
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

impl FlowTable {
    /// A table of at least `capacity` entries (rounded up to a power-of-two number of
    /// buckets), on the heap. The seed keys the hash so that pods cannot aim collisions at
    /// each other.
    pub fn new(capacity: usize, timeouts: Timeouts, seed: u64) -> FlowTable {
        let n = buckets_for(capacity);
        // Zeroed memory in units of buckets (for their alignment); the gate is the first
        // GATE_BYTES of it.
        let heap: Box<[Bucket]> = (0..region_bytes(n) / BUCKET_BYTES)
            .map(|_| Bucket(std::array::from_fn(|_| AtomicU64::new(0))))
            .collect();
        let heap = HeapBuckets(std::ptr::NonNull::from(Box::leak(heap)));
        let region = heap.0.cast::<u8>();
        // SAFETY: `region` is `region_bytes(n)` zeroed bytes aligned to a bucket, owned by
        // `heap`, which the table keeps, and touched by nobody else.
        unsafe { FlowTable::in_region(region, n, Box::new(heap), timeouts, seed) }
    }

    /// A table whose `buckets` buckets live in memory the caller provides: a mapping shared
    /// with the switchd that ran before (or runs after) this one, so that translated flows
    /// survive a restart. Zeroed memory is an empty table; memory that held a table with
    /// the same bucket count and `seed` is that table, with its flows.
    ///
    /// # Safety
    /// `region` points to [`region_bytes`]`(buckets)` bytes, aligned to [`BUCKET_BYTES`],
    /// readable and writable for as long as `owner` lives, and touched by anyone else
    /// (another process) only through the same atomic operations (4-byte on the gate,
    /// 8-byte on the buckets). `buckets` is a power of two.
    pub unsafe fn in_region(
        region: std::ptr::NonNull<u8>,
        buckets: usize,
        owner: Box<dyn Send + Sync>,
        timeouts: Timeouts,
        seed: u64,
    ) -> FlowTable {
        assert!(buckets.is_power_of_two());
        assert_eq!(
            region.as_ptr() as usize % BUCKET_BYTES,
            0,
            "misaligned flow table"
        );
        let table = FlowTable {
            gate: region.cast(),
            // SAFETY: the buckets start GATE_BYTES into the region (a multiple of
            // BUCKET_BYTES), inside it per the contract.
            buckets: unsafe { region.add(GATE_BYTES) }.cast(),
            mask: buckets as u64 - 1,
            seed,
            timeouts,
            counters: FlowCounters::default(),
            _memory: owner,
        };
        table.recount();
        table
    }

    fn gate(&self) -> &[AtomicU32] {
        // SAFETY: `gate` points to GATE_SLOTS counters at the start of the region that
        // `_memory` keeps alive as long as `self`; every bit pattern is a valid AtomicU32.
        unsafe { std::slice::from_raw_parts(self.gate.as_ptr(), GATE_SLOTS) }
    }

    /// Count again which gate counter each occupied slot holds up (memory written by a
    /// switchd that crashed between raising a counter and filling its slot is off by one;
    /// the count is then only too high, which costs lookups, never replies).
    fn recount(&self) {
        for c in self.gate() {
            c.store(0, Relaxed);
        }
        for v in self.buckets().iter().flat_map(|b| b.0.iter()) {
            let v = v.load(Relaxed);
            if v != 0 {
                self.gate()[gate_of(v)].fetch_add(1, Relaxed);
            }
        }
    }

    /// Can a frame from `src` be a reply of a recorded flow? One load; `false` means
    /// certainly not.
    #[inline(always)]
    pub fn may_hold_replies_from(&self, src: u32) -> bool {
        self.gate()[self.gate_index(src)].load(Relaxed) != 0
    }

    #[inline(always)]
    fn gate_index(&self, addr: u32) -> usize {
        ((u64::from(addr) ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - GATE_BITS))
            as usize
    }

    /// [`FlowTable::is_reply_frame`] for an IPv6 frame (`ip` at its header, `info` its parse).
    #[inline]
    pub fn is_reply_frame6(&self, ip: &[u8], info: &super::ipv6::Ipv6Info, now: u32) -> bool {
        if info.upper != PROTO_ICMPV6 && !self.may_hold_replies_from(fold6(&info.src)) {
            return false;
        }
        parse6(ip, info).is_some_and(|p| self.is_reply_of_translated(&p, now))
    }

    /// The whole check for a frame from a pod or the tunnel (`ip` starts at its IPv4
    /// header, at least 20 bytes, already validated): does it belong to a flow the node
    /// translated? The gate first (ICMP skips it: an error about a flow may come from
    /// any address); the lookup only when the gate lets the frame through.
    #[inline(always)]
    pub fn is_reply_frame(&self, ip: &[u8], now: u32) -> bool {
        if ip[9] != PROTO_ICMP && !self.may_hold_replies_from(be32(ip, 12)) {
            return false;
        }
        parse(ip).is_some_and(|p| self.is_reply_of_translated(&p, now))
    }

    fn buckets(&self) -> &[Bucket] {
        // SAFETY: `buckets` points to `mask + 1` initialised buckets (heap-allocated in
        // `new`, or the caller's region per `in_region`'s contract) that `_memory` keeps
        // alive as long as `self`; every bit pattern is a valid `AtomicU64`.
        unsafe { std::slice::from_raw_parts(self.buckets.as_ptr(), self.mask as usize + 1) }
    }

    /// The key of the hash; a table adopted from memory must be read with the same one.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn capacity(&self) -> usize {
        self.buckets().len() * WAYS
    }

    /// Live entries (a scan of the whole table; for status, not for the datapath).
    pub fn len(&self, now: u32) -> usize {
        let now = ticks(now);
        self.buckets()
            .iter()
            .flat_map(|b| b.0.iter())
            .filter(|s| alive(s.load(Relaxed), now))
            .count()
    }

    /// Clear every expired slot; the number cleared. Deadlines are kept modulo the
    /// deadline range, so an entry left expired for half that range (about 6 days) would
    /// read as live again: the caller sweeps far more often than that (switchd: every
    /// minute), and a table that went unswept that long is not adopted (`flow_store`).
    pub fn sweep(&self, now: u32) -> usize {
        let now = ticks(now);
        let mut cleared = 0;
        for slot in self.buckets().iter().flat_map(|b| b.0.iter()) {
            let v = slot.load(Relaxed);
            if v != 0 && !alive(v, now) && slot.compare_exchange(v, 0, Relaxed, Relaxed).is_ok() {
                self.gate()[gate_of(v)].fetch_sub(1, Relaxed);
                cleared += 1;
            }
        }
        cleared
    }

    pub fn is_empty(&self, now: u32) -> bool {
        self.len(now) == 0
    }

    /// A packet the node forwarded to a pod (it arrived from the host port with a pod's
    /// source address): remember its reply tuple.
    #[inline]
    pub fn track_translated(&self, packet: &Packet, now: u32) {
        let Packet::Flow { key, tcp_flags, .. } = *packet else {
            return; // later fragments and ICMP errors start no flow
        };
        let reply = key.reversed();
        let (bucket, fp) = self.locate(&reply);
        let now_t = ticks(now);
        self.upsert(bucket, fp, now_t, |old| {
            let state = match old {
                Some(s) => self.original_step(key.proto, s, tcp_flags),
                None => self.first_state(key.proto, tcp_flags),
            };
            Some(state)
        });
    }

    /// A packet from a pod or from the tunnel: does it belong to a flow the node translated
    /// (and must therefore go to the node)? Refreshes the flow when it does.
    #[inline(always)]
    pub fn is_reply_of_translated(&self, packet: &Packet, now: u32) -> bool {
        let now_t = ticks(now);
        let hit = match *packet {
            Packet::Flow {
                key,
                tcp_flags,
                more_fragments,
                ip_id,
            } => {
                let (bucket, fp) = self.locate(&key);
                let hit = self.update_existing(bucket, fp, now_t, |s| {
                    self.reply_step(key.proto, s, tcp_flags)
                });
                if hit && more_fragments {
                    let frag = fragment_key(key.src, key.dst, key.proto, ip_id, key.v6);
                    let (bucket, fp) = self.locate(&frag);
                    self.upsert(bucket, fp, now_t, |_| Some(State::New));
                }
                hit
            }
            Packet::Fragment(key) => {
                let (bucket, fp) = self.locate(&key);
                self.find(bucket, fp, now_t).is_some()
            }
            Packet::IcmpError(quoted) => {
                // The quoted packet is the flow's original direction; we hold its reply.
                let (bucket, fp) = self.locate(&quoted.reversed());
                self.find(bucket, fp, now_t).is_some()
            }
        };
        if hit {
            self.counters.returned.fetch_add(1, Relaxed);
        }
        hit
    }

    fn first_state(&self, proto: u8, tcp_flags: u8) -> State {
        if proto == PROTO_TCP {
            if tcp_flags & TCP_RST != 0 {
                State::Closed
            } else if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
                State::New
            } else {
                // Picked up mid-stream (after a restart of switchd): the kernel's own
                // conntrack does the same (`nf_conntrack_tcp_loose`).
                State::Established
            }
        } else {
            State::New
        }
    }

    /// The state after a packet in the original direction (from the node).
    fn original_step(&self, proto: u8, s: State, tcp_flags: u8) -> State {
        if proto != PROTO_TCP {
            return s;
        }
        if tcp_flags & TCP_RST != 0 {
            State::Closed
        } else if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && s >= State::Closing {
            State::New // the tuple reused for a new connection
        } else if tcp_flags & TCP_FIN != 0 {
            s.max(State::Closing)
        } else if s == State::Replied && tcp_flags & TCP_SYN == 0 {
            State::Established
        } else {
            s
        }
    }

    /// The state after a packet in the reply direction (from the endpoint).
    fn reply_step(&self, proto: u8, s: State, tcp_flags: u8) -> State {
        match proto {
            PROTO_TCP => {
                if tcp_flags & TCP_RST != 0 {
                    State::Closed
                } else if tcp_flags & TCP_FIN != 0 {
                    s.max(State::Closing)
                } else if s == State::New {
                    State::Replied
                } else {
                    s
                }
            }
            PROTO_UDP => match s {
                State::New => State::Replied,
                _ => State::Established,
            },
            _ => s.max(State::Replied),
        }
    }

    fn timeout(&self, proto: u8, fragment: bool, s: State) -> u32 {
        let t = &self.timeouts;
        if fragment {
            return t.fragment;
        }
        match (proto, s) {
            (PROTO_TCP, State::New) => t.tcp_syn_sent,
            (PROTO_TCP, State::Replied) => t.tcp_syn_recv,
            (PROTO_TCP, State::Established) => t.tcp_established,
            (PROTO_TCP, State::Closing) => t.tcp_time_wait,
            (PROTO_TCP, State::Closed) => t.tcp_close,
            (PROTO_UDP, State::New) => t.udp,
            (PROTO_UDP, _) => t.udp_stream,
            (PROTO_ICMP, _) => t.icmp,
            _ => t.generic,
        }
    }

    #[inline(always)]
    fn locate(&self, key: &FlowKey) -> (&Bucket, Fingerprint) {
        let h = hash(key, self.seed);
        let bucket = &self.buckets()[(h & self.mask) as usize];
        // The gate index of the reply's source, then hash bits the bucket index did not
        // use; never zero (zero = empty slot).
        let tuple = (h >> FP_SHIFT) & ((1 << FP_TUPLE_BITS) - 1);
        let fp = ((self.gate_index(key.src) as u64) << FP_TUPLE_BITS) | tuple | 1;
        (
            bucket,
            Fingerprint {
                fp,
                proto: key.proto,
                fragment: key.fragment,
            },
        )
    }

    #[inline(always)]
    fn find(&self, bucket: &Bucket, fp: Fingerprint, now: u32) -> Option<(usize, u64)> {
        // A plain loop: the iterator version is not inlined and costs a call per frame.
        for (i, s) in bucket.0.iter().enumerate() {
            let v = s.load(Relaxed);
            if v >> FP_SHIFT == fp.fp && alive(v, now) {
                return Some((i, v));
            }
        }
        None
    }

    /// Refresh a live entry with `step`; false if there is none.
    #[inline(always)]
    fn update_existing(
        &self,
        bucket: &Bucket,
        fp: Fingerprint,
        now: u32,
        step: impl Fn(State) -> State,
    ) -> bool {
        let Some((i, mut v)) = self.find(bucket, fp, now) else {
            return false;
        };
        loop {
            let state = step(State::from_bits((v >> STATE_SHIFT) & STATE_MASK));
            let new = self.entry(fp, state, now);
            if new == v {
                return true;
            }
            match bucket.0[i].compare_exchange_weak(v, new, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(current) if current >> FP_SHIFT == fp.fp && alive(current, now) => v = current,
                // Replaced or expired meanwhile: as good as not found.
                Err(_) => return false,
            }
        }
    }

    /// Refresh the entry, or insert it (evicting the entry nearest to expiry when the bucket
    /// is full). `step` gets the old state (`None` for a new entry).
    fn upsert(
        &self,
        bucket: &Bucket,
        fp: Fingerprint,
        now: u32,
        step: impl Fn(Option<State>) -> Option<State>,
    ) {
        for _ in 0..4 {
            if let Some((i, v)) = self.find(bucket, fp, now) {
                let Some(state) = step(Some(State::from_bits((v >> STATE_SHIFT) & STATE_MASK)))
                else {
                    return;
                };
                let new = self.entry(fp, state, now);
                if new == v
                    || bucket.0[i]
                        .compare_exchange(v, new, Relaxed, Relaxed)
                        .is_ok()
                {
                    return;
                }
                continue;
            }
            let Some(state) = step(None) else { return };
            let new = self.entry(fp, state, now);
            let (i, v) = victim(bucket, now);
            // The gate is raised before the slot is filled, so that no slot is ever
            // counted less than once.
            let gate = &self.gate()[gate_of(new)];
            gate.fetch_add(1, Relaxed);
            if bucket.0[i]
                .compare_exchange(v, new, Relaxed, Relaxed)
                .is_ok()
            {
                if v != 0 {
                    self.gate()[gate_of(v)].fetch_sub(1, Relaxed);
                }
                self.counters.tracked.fetch_add(1, Relaxed);
                if alive(v, now) {
                    self.counters.evicted.fetch_add(1, Relaxed);
                }
                return;
            }
            gate.fetch_sub(1, Relaxed);
        }
    }

    #[inline]
    fn entry(&self, fp: Fingerprint, state: State, now: u32) -> u64 {
        let secs = self.timeout(fp.proto, fp.fragment, state);
        // Rounded up to whole ticks plus the one in progress, so an entry never dies before
        // the kernel's (and lives at most two ticks, 8 s, longer).
        let ahead = (secs.div_ceil(1 << TIME_SHIFT) + 1).min(MAX_AHEAD);
        let deadline = u64::from(now.wrapping_add(ahead)) & DEADLINE_MASK;
        (fp.fp << FP_SHIFT) | ((state as u64) << STATE_SHIFT) | deadline
    }
}

#[derive(Clone, Copy)]
struct Fingerprint {
    fp: u64,
    proto: u8,
    fragment: bool,
}

/// The gate counter a slot holds up: the top bits of its fingerprint.
#[inline(always)]
fn gate_of(v: u64) -> usize {
    (v >> (FP_SHIFT + FP_TUPLE_BITS)) as usize
}

/// The clock in ticks of `1 << TIME_SHIFT` seconds.
#[inline]
fn ticks(now_secs: u32) -> u32 {
    now_secs >> TIME_SHIFT
}

/// A slot holds a live entry: occupied, and its deadline still ahead of `now` (within half
/// the deadline range, so the wrap-around of the clock is harmless).
#[inline]
fn alive(v: u64, now: u32) -> bool {
    if v == 0 {
        return false;
    }
    let ahead = (v & DEADLINE_MASK).wrapping_sub(u64::from(now)) & DEADLINE_MASK;
    ahead != 0 && ahead < (1 << (DEADLINE_BITS - 1))
}

/// The slot to overwrite: an empty or expired one, else the live one nearest to expiry.
fn victim(bucket: &Bucket, now: u32) -> (usize, u64) {
    let mut best = (0, u64::MAX, 0);
    for (i, s) in bucket.0.iter().enumerate() {
        let v = s.load(Relaxed);
        if !alive(v, now) {
            return (i, v);
        }
        let ahead = (v & DEADLINE_MASK).wrapping_sub(u64::from(now)) & DEADLINE_MASK;
        if ahead < best.1 {
            best = (i, ahead, v);
        }
    }
    (best.0, best.2)
}

/// A keyed 64-bit mix of the tuple (two rounds of a multiply-xorshift).
#[inline(always)]
fn hash(key: &FlowKey, seed: u64) -> u64 {
    let a = (u64::from(key.src) << 32) | u64::from(key.dst);
    let b = (u64::from(key.sport) << 48)
        | (u64::from(key.dport) << 32)
        | (u64::from(key.proto) << 8)
        | (u64::from(key.v6) << 1)
        | u64::from(key.fragment);
    let mut h = seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h = (h ^ (h >> 32)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    h ^= b.wrapping_mul(0xA076_1D64_78BD_642F);
    h = (h ^ (h >> 32)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    h ^ (h >> 29)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u32 = u32::from_be_bytes([10, 244, 1, 3]); // client pod
    const A: u32 = u32::from_be_bytes([10, 244, 2, 7]); // endpoint pod

    fn table() -> FlowTable {
        FlowTable::new(1024, Timeouts::default(), 0x1234_5678)
    }

    #[test]
    fn the_gate_opens_for_endpoints_of_recorded_flows_and_closes_when_they_go() {
        let t = table();
        assert!(!t.may_hold_replies_from(A));
        t.track_translated(&udp(B, A, 5000, 53), 1000); // B's packet to endpoint A
        assert!(t.may_hold_replies_from(A), "replies come from A");
        assert!(!t.may_hold_replies_from(B), "the client is not an endpoint");
        t.track_translated(&udp(B, A, 5001, 53), 1000);
        t.sweep(1000 + Timeouts::default().udp + 8);
        assert!(
            !t.may_hold_replies_from(A),
            "closed once both flows expired and were swept"
        );
    }

    #[test]
    fn an_evicted_flow_releases_its_gate() {
        let t = FlowTable::new(WAYS, Timeouts::default(), 7); // one bucket
        let endpoint = |i: u32| u32::from_be_bytes([10, 244, 9, 10]) + i;
        for i in 0..=WAYS as u32 {
            // Each flow a tick after the last, all alive at the end: the first is the victim.
            t.track_translated(&udp(B, endpoint(i), 5000, 53), 1000 + 4 * i);
        }
        assert_eq!(t.counters.evicted.load(Relaxed), 1);
        assert!(
            !t.may_hold_replies_from(endpoint(0)),
            "the evicted flow's endpoint"
        );
        for i in 1..=WAYS as u32 {
            assert!(t.may_hold_replies_from(endpoint(i)), "endpoint {i}");
        }
    }

    #[test]
    fn a_sweep_clears_expired_entries_so_they_cannot_come_back() {
        let t = table();
        let to = Timeouts::default();
        t.track_translated(&udp(B, A, 5000, 53), 1000);
        t.track_translated(&tcp(B, A, 40000, 80, TCP_SYN), 1000);
        assert_eq!(t.sweep(1000 + 10), 0, "nothing has expired yet");
        assert_eq!(t.len(1000 + 10), 2);
        // The UDP entry is past its timeout, the SYN_SENT one is not.
        assert_eq!(t.sweep(1000 + to.udp + 8), 1);
        assert_eq!(t.len(1000 + to.udp + 8), 1);
        // Half the deadline range after it expired, an unswept entry reads as live
        // again; a swept one is gone for good.
        let unswept = table();
        unswept.track_translated(&udp(B, A, 5000, 53), 1000);
        let later = 1000 + to.udp + 16 + (1u32 << (DEADLINE_BITS - 1 + TIME_SHIFT));
        assert_eq!(unswept.len(later), 1, "the hazard the sweep exists for");
        assert!(!t.is_reply_of_translated(&udp(A, B, 53, 5000), later));
        assert_eq!(t.len(later), 0);
    }

    fn tcp(src: u32, dst: u32, sport: u16, dport: u16, flags: u8) -> Packet {
        Packet::Flow {
            key: FlowKey {
                src,
                dst,
                proto: PROTO_TCP,
                sport,
                dport,
                fragment: false,
                v6: false,
            },
            tcp_flags: flags,
            more_fragments: false,
            ip_id: 0,
        }
    }

    fn udp(src: u32, dst: u32, sport: u16, dport: u16) -> Packet {
        match tcp(src, dst, sport, dport, 0) {
            Packet::Flow { mut key, .. } => {
                key.proto = PROTO_UDP;
                Packet::Flow {
                    key,
                    tcp_flags: 0,
                    more_fragments: false,
                    ip_id: 0,
                }
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_reply_of_a_translated_flow_is_recognised_and_nothing_else() {
        let t = table();
        t.track_translated(&tcp(B, A, 40000, 8080, TCP_SYN), 100);
        assert!(t.is_reply_of_translated(&tcp(A, B, 8080, 40000, TCP_SYN | TCP_ACK), 100));
        assert!(
            !t.is_reply_of_translated(&tcp(B, A, 40000, 8080, TCP_ACK), 100),
            "the original direction itself is not a reply"
        );
        assert!(!t.is_reply_of_translated(&tcp(A, B, 8080, 40001, TCP_ACK), 100));
        assert!(!t.is_reply_of_translated(&udp(A, B, 8080, 40000), 100));
        assert_eq!(t.counters.tracked.load(Relaxed), 1);
        assert_eq!(t.counters.returned.load(Relaxed), 1);
        assert_eq!(t.len(100), 1);
    }

    #[test]
    fn entries_expire_on_the_kernels_timeouts() {
        let t = table();
        let to = Timeouts::default();
        // UDP: unreplied lives udp (30 s); once replied, udp_stream (120 s).
        t.track_translated(&udp(B, A, 5000, 53), 1000);
        assert!(!t.is_reply_of_translated(&udp(A, B, 53, 5000), 1000 + to.udp + 8));
        t.track_translated(&udp(B, A, 5001, 53), 1000);
        assert!(t.is_reply_of_translated(&udp(A, B, 53, 5001), 1000 + to.udp - 1));
        assert!(t.is_reply_of_translated(&udp(A, B, 53, 5001), 1000 + to.udp + 60));
        assert!(
            !t.is_reply_of_translated(&udp(A, B, 53, 5001), 1000 + to.udp + 60 + to.udp_stream + 8)
        );
        // TCP: a SYN alone lives syn_sent; an established flow lives days; after RST, seconds.
        t.track_translated(&tcp(B, A, 1, 80, TCP_SYN), 0);
        assert!(!t.is_reply_of_translated(&tcp(A, B, 80, 1, TCP_ACK), to.tcp_syn_sent + 8));
        t.track_translated(&tcp(B, A, 2, 80, TCP_SYN), 0);
        assert!(t.is_reply_of_translated(&tcp(A, B, 80, 2, TCP_SYN | TCP_ACK), 1));
        t.track_translated(&tcp(B, A, 2, 80, TCP_ACK), 2);
        let idle = 4 * 86_400; // four days without a packet
        assert!(t.is_reply_of_translated(&tcp(A, B, 80, 2, TCP_ACK), 2 + idle));
        assert!(!t.is_reply_of_translated(
            &tcp(A, B, 80, 2, TCP_ACK),
            2 + idle + to.tcp_established + 8
        ));
        t.track_translated(&tcp(B, A, 3, 80, TCP_ACK), 0);
        t.track_translated(&tcp(B, A, 3, 80, TCP_RST), 1);
        assert!(!t.is_reply_of_translated(&tcp(A, B, 80, 3, TCP_ACK), 1 + to.tcp_close + 8));
    }

    #[test]
    fn a_full_bucket_evicts_the_entry_nearest_expiry_and_counts_it() {
        let t = FlowTable::new(WAYS, Timeouts::default(), 7); // one bucket
        t.track_translated(&udp(B, A, 1, 53), 0); // 30 s
        for port in 2..=WAYS as u16 {
            t.track_translated(&tcp(B, A, port, 80, TCP_ACK), 0); // days
        }
        assert_eq!(t.counters.evicted.load(Relaxed), 0);
        t.track_translated(&tcp(B, A, 100, 80, TCP_ACK), 0);
        assert_eq!(t.counters.evicted.load(Relaxed), 1);
        assert!(
            !t.is_reply_of_translated(&udp(A, B, 53, 1), 0),
            "the UDP entry went"
        );
        for port in (2..=WAYS as u16).chain([100]) {
            assert!(t.is_reply_of_translated(&tcp(A, B, 80, port, TCP_ACK), 0));
        }
        assert_eq!(t.len(0), WAYS);
    }

    #[test]
    fn later_fragments_and_icmp_errors_follow_their_flow() {
        let t = table();
        t.track_translated(&udp(B, A, 7000, 9000), 0);
        let Packet::Flow { key, .. } = udp(A, B, 9000, 7000) else {
            unreachable!()
        };
        let first = Packet::Flow {
            key,
            tcp_flags: 0,
            more_fragments: true,
            ip_id: 4242,
        };
        assert!(t.is_reply_of_translated(&first, 1));
        let later = Packet::Fragment(fragment_key(A, B, PROTO_UDP, 4242, false));
        assert!(t.is_reply_of_translated(&later, 1));
        let other = Packet::Fragment(fragment_key(A, B, PROTO_UDP, 4243, false));
        assert!(!t.is_reply_of_translated(&other, 1));
        // A's "port unreachable" about B's datagram quotes B→A.
        let Packet::Flow { key: quoted, .. } = udp(B, A, 7000, 9000) else {
            unreachable!()
        };
        assert!(t.is_reply_of_translated(&Packet::IcmpError(quoted), 1));
        assert!(!t.is_reply_of_translated(&Packet::IcmpError(quoted.reversed()), 1));
    }

    #[test]
    fn parse_reads_ports_fragments_echo_ids_and_quoted_headers() {
        let mut ip = vec![0u8; 20 + 20];
        ip[0] = 0x45;
        ip[9] = PROTO_TCP;
        ip[12..16].copy_from_slice(&B.to_be_bytes());
        ip[16..20].copy_from_slice(&A.to_be_bytes());
        ip[20..22].copy_from_slice(&40000u16.to_be_bytes());
        ip[22..24].copy_from_slice(&80u16.to_be_bytes());
        ip[33] = TCP_SYN;
        assert_eq!(parse(&ip), Some(tcp(B, A, 40000, 80, TCP_SYN)));
        assert_eq!(parse(&ip[..30]), None, "cut-short TCP header");
        ip[6] = 0x00;
        ip[7] = 0xb9; // offset 185 × 8
        ip[4..6].copy_from_slice(&77u16.to_be_bytes());
        assert_eq!(
            parse(&ip),
            Some(Packet::Fragment(fragment_key(B, A, PROTO_TCP, 77, false)))
        );
        // ICMP echo request: keyed by identifier both ways.
        let mut ping = vec![0u8; 28];
        ping[0] = 0x45;
        ping[9] = PROTO_ICMP;
        ping[12..16].copy_from_slice(&B.to_be_bytes());
        ping[16..20].copy_from_slice(&A.to_be_bytes());
        ping[20] = 8;
        ping[24..26].copy_from_slice(&99u16.to_be_bytes());
        let Some(Packet::Flow { key, .. }) = parse(&ping) else {
            panic!()
        };
        assert_eq!((key.sport, key.dport), (99, 99));
        // Port unreachable quoting a UDP header.
        let mut err = vec![0u8; 20 + 8 + 28];
        err[0] = 0x45;
        err[9] = PROTO_ICMP;
        err[20] = 3;
        err[21] = 3;
        let inner = &mut err[28..];
        inner[0] = 0x45;
        inner[9] = PROTO_UDP;
        inner[12..16].copy_from_slice(&B.to_be_bytes());
        inner[16..20].copy_from_slice(&A.to_be_bytes());
        inner[20..22].copy_from_slice(&7000u16.to_be_bytes());
        inner[22..24].copy_from_slice(&9000u16.to_be_bytes());
        let Some(Packet::IcmpError(q)) = parse(&err) else {
            panic!()
        };
        assert_eq!((q.src, q.dst, q.sport, q.dport), (B, A, 7000, 9000));
    }

    #[test]
    fn concurrent_writers_and_readers_never_lose_a_live_flow() {
        let t = std::sync::Arc::new(FlowTable::new(1 << 14, Timeouts::default(), 99));
        let writers: Vec<_> = (0..2u16)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for p in 0..2000u16 {
                        t.track_translated(&tcp(B, A, w * 2000 + p, 80, TCP_ACK), 10);
                        t.is_reply_of_translated(&tcp(A, B, 80, w * 2000 + p, TCP_ACK), 10);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let lost = (0..4000u16)
            .filter(|p| !t.is_reply_of_translated(&tcp(A, B, 80, *p, TCP_ACK), 10))
            .count();
        assert_eq!(lost, t.counters.evicted.load(Relaxed) as usize);
    }

    /// An IPv6 packet: 40-byte header from fd10::2 to fd10::3, then `rest` (next header
    /// `next`).
    fn ip6(next: u8, rest: &[u8]) -> Vec<u8> {
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&(rest.len() as u16).to_be_bytes());
        ip.extend_from_slice(&[next, 64]);
        ip.extend_from_slice(&[0xfd, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        ip.extend_from_slice(&[0xfd, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
        ip.extend_from_slice(rest);
        ip
    }

    fn parsed6(ip: &[u8]) -> Option<Packet> {
        parse6(ip, &crate::datapath::ipv6::parse(ip).unwrap())
    }

    #[test]
    fn the_later_fragments_of_an_icmpv6_reply_carry_the_key_its_first_fragment_records() {
        // Echo reply, id 0x1234, cut in two: offset 0 with M set, then offset 8.
        let mut first = vec![PROTO_ICMPV6, 0, 0x00, 0x01, 0, 0, 0, 9];
        first.extend_from_slice(&[129, 0, 0, 0, 0x12, 0x34, 0, 1]);
        let later = [
            PROTO_ICMPV6,
            0,
            0x00,
            0x08,
            0,
            0,
            0,
            9,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        let Some(Packet::Flow {
            key,
            more_fragments,
            ip_id,
            ..
        }) = parsed6(&ip6(44, &first))
        else {
            panic!("a first fragment is a flow");
        };
        assert!(more_fragments && key.v6);
        assert_eq!((key.proto, key.sport, ip_id), (PROTO_ICMP, 0x1234, 9));
        let recorded = fragment_key(key.src, key.dst, key.proto, ip_id, key.v6);
        assert_eq!(parsed6(&ip6(44, &later)), Some(Packet::Fragment(recorded)));
    }

    #[test]
    fn an_icmpv6_error_quoting_errors_is_read_without_following_them() {
        // 1,000 packet-too-big messages, each quoting the next: one level is read.
        let mut inner = ip6(PROTO_UDP, &[0x9c, 0x40, 0x00, 0x35, 0, 8, 0, 0]);
        for _ in 0..1000 {
            let mut icmp = vec![2, 0, 0, 0, 0, 0, 5, 0xdc];
            icmp.extend_from_slice(&inner);
            inner = ip6(PROTO_ICMPV6, &icmp);
        }
        inner.truncate(60_000);
        let Some(Packet::IcmpError(quoted)) = parsed6(&inner) else {
            panic!("an ICMPv6 error");
        };
        assert_eq!(
            (quoted.proto, quoted.sport),
            (PROTO_ICMP, 0),
            "keyed as the quoted error itself"
        );
        // One level: the flow an error is about.
        let mut icmp = vec![1, 4, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&ip6(PROTO_UDP, &[0x9c, 0x40, 0x00, 0x35, 0, 8, 0, 0]));
        let Some(Packet::IcmpError(quoted)) = parsed6(&ip6(PROTO_ICMPV6, &icmp)) else {
            panic!("an ICMPv6 error");
        };
        assert_eq!(
            (quoted.proto, quoted.sport, quoted.dport),
            (PROTO_UDP, 40000, 53)
        );
    }
}
