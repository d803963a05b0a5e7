//! The control protocol between `switchd` and its clients (`switchd-cni`, `switchctl`).
//!
//! Transport: a Unix stream socket. Framing: every message is a 4-byte big-endian length
//! followed by that many bytes of JSON. Every request and every response is wrapped in an
//! [`Envelope`] that carries [`PROTO_VERSION`]; a server that receives a version it does not
//! speak answers with [`ErrorKind::VersionMismatch`] instead of guessing, so an old client
//! never hangs on a new daemon (or the reverse).
//!
//! This crate has no async runtime in it: `switchd-cni` must start fast and stays synchronous,
//! the daemon reads the same frames from tokio streams.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. Bump it on any incompatible change.
pub const PROTO_VERSION: u32 = 1;

/// Largest frame either side accepts (a full `switchctl ports` on a big node fits easily).
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// The wrapper around every message on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope<T> {
    pub version: u32,
    pub body: T,
}

impl<T> Envelope<T> {
    pub fn new(body: T) -> Self {
        Envelope {
            version: PROTO_VERSION,
            body,
        }
    }
}

/// Just enough of an envelope to read its version before trusting the body's shape.
#[derive(Debug, Deserialize)]
pub struct VersionProbe {
    pub version: u32,
}

/// Identifies one attachment: the CNI (container id, interface name) pair.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

/// The CNI `bandwidth` capability (the keys kubelet passes from the
/// `kubernetes.io/ingress-bandwidth` and `egress-bandwidth` annotations): rates in bits per
/// second, bursts in bits; 0 means unlimited. Ingress is traffic into the pod.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    #[serde(default)]
    pub ingress_rate: u64,
    #[serde(default)]
    pub ingress_burst: u64,
    #[serde(default)]
    pub egress_rate: u64,
    #[serde(default)]
    pub egress_burst: u64,
}

impl Bandwidth {
    pub fn is_unlimited(&self) -> bool {
        self.ingress_rate == 0 && self.egress_rate == 0
    }
}

/// The pod a network namespace belongs to, from `CNI_ARGS` (`K8S_POD_NAMESPACE` etc.).
/// Empty strings when the runtime did not say (podman, ctr).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Request {
    /// Create the pod's interface, give it an address and plug it into the switch.
    Attach {
        key: AttachmentKey,
        network: String,
        netns: String,
        pod: PodRef,
        /// Rate limits for the pod, from the CNI `bandwidth` capability.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bandwidth: Option<Bandwidth>,
    },
    /// Unplug and remove the pod's interface and release its address. Idempotent.
    Detach {
        key: AttachmentKey,
        netns: Option<String>,
    },
    /// Verify the pod's interface, address and routes are still as attached.
    Check {
        key: AttachmentKey,
        netns: String,
    },
    /// Remove every attachment of `network` whose key is not in `valid`.
    Gc {
        network: String,
        valid: Vec<AttachmentKey>,
    },
    /// Is the daemon ready to attach pods?
    Status,
    /// Operator views.
    ListPorts,
    ListTable,
    ListPeers,
    /// Re-read the peers from the configuration and apply them.
    Reload,
    /// Stream copies of the frames crossing one port: answered by `count` `Frame`
    /// responses (or until the client hangs up), then `CaptureDone`. `port` is a pod name,
    /// `namespace/name`, a container id prefix, or `switchd0` for the host port.
    Capture {
        port: String,
        count: u32,
    },
    Stats,
    /// What the switch would do with a packet, decided by the live datapath on a
    /// synthesized frame that is never sent.
    Trace(TraceRequest),
    /// Stream one `Event` per dropped frame (at most `rate` a second; the rest are counted
    /// in `Suppressed`) until the client hangs up. `port`: only frames from that port (a
    /// `Capture` selector).
    Monitor {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<String>,
        rate: u32,
    },
}

/// The packet `switchctl trace` asks about.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TraceRequest {
    /// Where the packet enters: a `Capture` selector (pod, namespace/name, container id
    /// prefix, `switchd0`).
    pub from: String,
    pub dst: Ipv4Addr,
    /// "icmp" (echo request), "tcp" (SYN) or "udp".
    pub protocol: String,
    /// Destination port for tcp and udp.
    #[serde(default)]
    pub port: u16,
    /// The IP packet's total length; 0: the smallest packet of the protocol.
    #[serde(default)]
    pub size: u32,
    /// Source address; `None`: the port's own (the node's gateway for `switchd0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<Ipv4Addr>,
}

/// One step of a trace: what was looked at and what it said.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TraceStep {
    pub step: String,
    pub result: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TraceInfo {
    pub steps: Vec<TraceStep>,
    /// "forward", "encap", "reply", "reject" or "drop".
    pub verdict: String,
    /// Where a forwarded frame is written (interface name), or the peer an encapsulated
    /// one goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Why the frame was dropped or rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One dropped frame, as `switchctl monitor` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DropEvent {
    /// Microseconds since the Unix epoch.
    pub ts_micros: u64,
    pub reason: String,
    /// Where the frame came from: a port's interface name and pod, or `peer NAME`.
    pub from: String,
    /// What it was: "arp", "ipv4 tcp", "ipv6", "ethertype 0x88cc", …
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    pub len: u32,
    /// Why, when the reason has more to say: for `policy_denied`, the policy and the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Response {
    Attached(Attachment),
    Detached {
        existed: bool,
    },
    Checked(Attachment),
    GcDone {
        removed: Vec<AttachmentKey>,
    },
    Status(StatusInfo),
    Ports {
        ports: Vec<PortInfo>,
    },
    Table {
        entries: Vec<TableEntry>,
    },
    Peers {
        peers: Vec<PeerInfo>,
    },
    Reloaded {
        peers: usize,
    },
    Frame(CapturedFrame),
    CaptureDone {
        frames: u32,
        /// Frames that crossed the port but were not sent: the reader was too slow.
        #[serde(default)]
        lost: u64,
    },
    Stats(StatsInfo),
    Trace(TraceInfo),
    Event(DropEvent),
    /// During a monitor: events not shown in the last second, over the rate or lost
    /// because the client read too slowly.
    Suppressed {
        events: u64,
    },
    Error(ErrorReply),
}

/// What the pod got: everything a CNI result needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attachment {
    pub ifname: String,
    pub mac: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    /// Routes installed in the pod, as (destination CIDR, gateway), both families.
    pub routes: Vec<RouteInfo>,
    pub netns: String,
    /// The pod's IPv6 address, on a dual-stack node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Attachment>,
}

/// The IPv6 half of a dual-stack attachment.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Ipv6Attachment {
    pub address: Ipv6Addr,
    pub prefix_len: u8,
    pub gateway: Ipv6Addr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteInfo {
    pub dst: String,
    pub gw: IpAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusInfo {
    pub ready: bool,
    pub node_name: String,
    pub pod_cidr: String,
    /// The node's IPv6 pod prefix, on a dual-stack node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr_v6: Option<String>,
    /// The pods' gateway MAC and this node's VTEP MAC (what peers put in `mac`).
    pub router_mac: String,
    /// The tunnel's underlay address and port, if the node has one.
    pub underlay: Option<String>,
    pub mtu: u32,
    pub ports: usize,
    pub detail: String,
    /// Where this node's subnet and peers come from, and how that source is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<MembershipInfo>,
    /// The egress masquerade rules: "off", "pending", "installed" or "failed" (with why).
    #[serde(default)]
    pub masquerade: String,
    #[serde(default)]
    pub masquerade_detail: String,
    /// "none" or "wireguard".
    #[serde(default)]
    pub encryption: String,
    /// This node's WireGuard public key and port (`wg` calls it the listen port), when it
    /// encrypts: what a peer's `public_key` must be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireGuardInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WireGuardInfo {
    pub public_key: String,
    pub listen: String,
    /// What the node still does with plain VXLAN: "send", "accept" or "refuse".
    pub plain: String,
}

/// The etcd membership's state, for `switchctl status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MembershipInfo {
    /// "etcd".
    pub mode: String,
    /// "connecting", "connected", "unreachable" (forwarding goes on with the last known
    /// peers) or "subnet_lost" (another node holds our subnet; pods are not renumbered).
    pub state: String,
    /// When `state` last changed, seconds since the Unix epoch.
    pub since_unix: u64,
    pub endpoints: Vec<String>,
    /// The etcd lease holding this node's keys (0: none yet).
    pub lease_id: i64,
    pub lease_ttl: u32,
    pub subnet: String,
    /// The last error talking to etcd, empty when there was none since connecting.
    pub last_error: String,
    /// Peers currently learned from etcd.
    pub peers: usize,
    /// Changes under `nodes/` received from etcd's watch since switchd started.
    #[serde(default)]
    pub events: u64,
    /// Forwarding-table publications those changes caused: bursts are coalesced, so this
    /// grows by at most one per coalescing window (100 ms) however many nodes change.
    #[serde(default)]
    pub publications: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: u64,
    /// Frames the switch absorbs on purpose (IPv6 router solicitations, MLD, duplicate
    /// address probes, gratuitous ARP): normal chatter, kept out of `drops` so that a
    /// drop always means something went wrong.
    #[serde(default)]
    pub ignored: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PortInfo {
    pub id: u32,
    /// "host" for the node's own port, "pod" for a pod.
    pub kind: String,
    pub pod: PodRef,
    pub container_id: String,
    pub ifname: String,
    pub mac: String,
    pub address: Ipv4Addr,
    /// The pod's IPv6 address (the gateway's, for the host port), on a dual-stack node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_v6: Option<Ipv6Addr>,
    pub counters: Counters,
    /// The pod's rate limits, when it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableEntry {
    pub address: IpAddr,
    pub mac: String,
    pub port: u32,
    pub port_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerInfo {
    pub name: String,
    /// Underlay address and port.
    pub addr: String,
    pub pod_cidr: String,
    pub mac: String,
    /// Where the peer came from: "static" (config or peers file) or "etcd".
    pub source: String,
    /// When this peer (with this configuration) was added, seconds since the Unix epoch.
    pub since_unix: u64,
    /// rx/tx are tunnel datagrams from/to this peer.
    pub counters: Counters,
    /// What the health probes measured; `None` before the first probe (or probing off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<PeerHealth>,
    /// With encryption: the peer's WireGuard public key, its endpoint, and seconds since
    /// the last completed handshake (`None` before the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<PeerWireGuard>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerWireGuard {
    pub public_key: String,
    pub endpoint: String,
    pub handshake_secs_ago: Option<u64>,
}

/// A peer's health, from switchd's probes through the tunnel.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerHealth {
    /// Smoothed round-trip time; `None` until a probe came back.
    pub rtt_micros: Option<u64>,
    pub last_rtt_micros: Option<u64>,
    /// Share of the recent small probes that were lost; `None` before any was decided.
    pub loss_ratio: Option<f64>,
    /// The largest IP packet known to cross the path (DF set); `None` until one did.
    pub path_mtu: Option<u32>,
    pub probes_sent: u64,
    pub probes_answered: u64,
    pub last_answer_unix: Option<u64>,
}

/// One frame seen on a port, without the virtio-net header.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CapturedFrame {
    /// Microseconds since the Unix epoch.
    pub ts_micros: u64,
    /// "rx": read from the port (sent by the pod); "tx": written to it.
    pub direction: String,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatsInfo {
    pub totals: Counters,
    /// (reason, count), every reason listed even at zero so operators learn the names.
    pub drops: Vec<(String, u64)>,
    pub attaches: u64,
    pub detaches: u64,
    /// Flows the node translated (Services), whose replies the switch sends back to it.
    #[serde(default)]
    pub flows: FlowStats,
    /// The datapath workers, in order.
    #[serde(default)]
    pub workers: Vec<WorkerStats>,
}

/// One datapath worker's counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerStats {
    /// Frames read from ports and datagrams received from the tunnel.
    pub frames: u64,
    /// Times it slept and was woken by a ready descriptor.
    pub wakeups: u64,
    /// Times polling after work found more work, so the worker did not sleep.
    pub polled: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FlowStats {
    /// Entries the table can hold (`flow_table_size`).
    pub capacity: u64,
    /// Live entries now.
    pub active: u64,
    /// Flows recorded since start.
    pub tracked: u64,
    /// Frames sent back to the node as replies of recorded flows.
    pub returned: u64,
    /// Live entries pushed out by a full bucket (raise `flow_table_size` if this grows).
    pub evicted: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

/// Error classes, chosen so that `switchd-cni` can map each to a CNI error code.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Client and daemon speak different protocol versions.
    VersionMismatch,
    /// The request could not be decoded.
    BadRequest,
    /// The pod CIDR has no free address.
    AddressesExhausted,
    /// The attachment or interface already exists.
    AlreadyExists,
    /// No such attachment.
    NotFound,
    /// The pod's network namespace cannot be opened.
    NetnsUnavailable,
    /// CHECK found the pod's network differs from what was attached.
    CheckFailed,
    /// The daemon is starting or shutting down, or serves as many control connections
    /// as it takes: try again shortly.
    NotReady,
    /// Anything else: a kernel or I/O error.
    Internal,
}

impl ErrorReply {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorReply {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed by peer")]
    Closed,
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN} bytes")]
    TooLarge(usize),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "protocol version mismatch: this program speaks v{ours}, the other side v{theirs}; \
         install switchd, switchd-cni and switchctl from the same release"
    )]
    Version { ours: u32, theirs: u32 },
}

/// Encode a message body as a complete frame (length prefix included).
pub fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, FrameError> {
    let json = serde_json::to_vec(&Envelope::new(body))?;
    if json.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(json.len()));
    }
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// Parse a frame's payload (without the length prefix), checking the version first.
pub fn decode<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, FrameError> {
    let probe: VersionProbe = serde_json::from_slice(payload)?;
    if probe.version != PROTO_VERSION {
        return Err(FrameError::Version {
            ours: PROTO_VERSION,
            theirs: probe.version,
        });
    }
    let env: Envelope<T> = serde_json::from_slice(payload)?;
    Ok(env.body)
}

/// Validate a length prefix.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Blocking write of one message.
pub fn write_message<W: Write, T: Serialize>(w: &mut W, body: &T) -> Result<(), FrameError> {
    w.write_all(&encode(body)?)?;
    w.flush()?;
    Ok(())
}

/// Blocking read of one message.
pub fn read_message<R: Read, T: for<'de> Deserialize<'de>>(r: &mut R) -> Result<T, FrameError> {
    let mut prefix = [0u8; 4];
    if let Err(e) = r.read_exact(&mut prefix) {
        return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Closed
        } else {
            e.into()
        });
    }
    let mut payload = vec![0u8; frame_len(prefix)?];
    r.read_exact(&mut payload)?;
    decode(&payload)
}

/// Blocking request/response round trip for clients.
pub fn call<S: Read + Write>(stream: &mut S, req: &Request) -> Result<Response, FrameError> {
    write_message(stream, req)?;
    read_message(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AttachmentKey {
        AttachmentKey {
            container_id: "abc".into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn request_round_trips_through_a_frame() {
        let req = Request::Attach {
            key: key(),
            network: "k8s-pod-network".into(),
            netns: "/var/run/netns/x".into(),
            pod: PodRef {
                namespace: "default".into(),
                name: "web".into(),
                uid: "u1".into(),
            },
            bandwidth: Some(Bandwidth {
                ingress_rate: 1_000_000,
                ..Default::default()
            }),
        };
        let bytes = encode(&req).unwrap();
        let back: Request = read_message(&mut &bytes[..]).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn response_round_trips_through_a_frame() {
        let resp = Response::Attached(Attachment {
            ifname: "eth0".into(),
            mac: "0a:58:0a:f4:01:02".into(),
            address: Ipv4Addr::new(10, 244, 1, 2),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            mtu: 1450,
            routes: vec![
                RouteInfo {
                    dst: "0.0.0.0/0".into(),
                    gw: Ipv4Addr::new(10, 244, 1, 1).into(),
                },
                RouteInfo {
                    dst: "::/0".into(),
                    gw: "fd10:244:0:1::1".parse().unwrap(),
                },
            ],
            netns: "/var/run/netns/x".into(),
            ipv6: Some(Ipv6Attachment {
                address: "fd10:244:0:1::2".parse().unwrap(),
                prefix_len: 64,
                gateway: "fd10:244:0:1::1".parse().unwrap(),
            }),
        });
        let bytes = encode(&resp).unwrap();
        let back: Response = read_message(&mut &bytes[..]).unwrap();
        assert_eq!(back, resp);
    }

    #[test]
    fn other_version_is_refused_with_both_numbers() {
        let payload = br#"{"version":2,"body":{"op":"status"}}"#;
        let err = decode::<Request>(payload).unwrap_err();
        assert!(
            matches!(err, FrameError::Version { ours: 1, theirs: 2 }),
            "{err}"
        );
        assert!(err.to_string().contains("v2"));
    }

    #[test]
    fn oversized_prefix_is_refused_before_allocating() {
        let prefix = (MAX_FRAME_LEN as u32 + 1).to_be_bytes();
        assert!(matches!(frame_len(prefix), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn truncated_stream_is_reported_as_closed_or_io() {
        let bytes = encode(&Request::Status).unwrap();
        let err = read_message::<_, Request>(&mut &bytes[..3]).unwrap_err();
        assert!(matches!(err, FrameError::Closed));
        let err = read_message::<_, Request>(&mut &bytes[..bytes.len() - 1]).unwrap_err();
        assert!(matches!(err, FrameError::Io(_)));
    }
}
