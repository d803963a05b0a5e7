//! The sans-IO forwarding core: frames in, verdicts out.
//!
//! Nothing in here performs a system call, awaits, locks or allocates per frame. The port
//! shells (`crate::port`) read frames from TAP devices, hand each one to [`forward`] together
//! with a table snapshot loaded once per batch, and carry out the [`Verdict`].

pub mod arp;
pub mod checksum;
pub mod coalesce;
pub mod craft;
pub mod describe;
pub mod flows;
pub mod forward;
pub mod frame;
pub mod icmp;
pub mod ipv6;
pub mod ndp;
pub mod offload;
pub mod policy;
pub mod probe;
pub mod ratelimit;
pub mod table;
pub mod trace;
pub mod vxlan;

pub use flows::{FlowTable, Timeouts};
pub use forward::forward_from_tunnel;
pub use forward::{forward, Verdict};
pub use table::{Endpoint, PeerRoute, PortEntry, PortId, Table, HOST_PORT};

/// Why a frame was not delivered. Each reason has its own counter and a stable name that
/// shows up in `switchctl stats` (and later in metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Too short, or a header that does not parse.
    Malformed,
    /// Neither IPv4, IPv6 nor ARP; or IPv6 on a node without an IPv6 prefix.
    UnsupportedProtocol,
    /// Broadcast or multicast IP; the switch does not flood.
    Multicast,
    /// The destination is in a pod network but no pod has that address.
    NoRoute,
    /// A pod sent a frame whose source address is not the one it was given.
    SpoofedSource,
    /// ARP for an address the switch does not know.
    ArpUnknownTarget,
    /// ARP replies, gratuitous ARP and probes of a port's own address: nothing to answer.
    ArpIgnored,
    /// A frame without segmentation offload larger than the port MTU.
    TooBig,
    /// The destination is the port the frame came from.
    Loop,
    /// The destination port or the tunnel socket rejected the write.
    WriteFailed,
    /// The destination is in the cluster CIDR but no node (local or peer) owns it.
    NoPeer,
    /// A tunnel datagram from an address that is not a configured peer.
    UnknownPeer,
    /// A tunnel datagram too short or without the VXLAN I flag.
    BadTunnelPacket,
    /// A tunnel datagram for another VXLAN network.
    WrongVni,
    /// Over the pod's bandwidth limit (CNI `bandwidth` capability).
    RateLimited,
    /// A WireGuard datagram that does not authenticate: unknown key, bad tag, replayed
    /// or out-of-window counter, truncated, or a handshake the protocol refuses.
    NotAuthenticated,
    /// A WireGuard data message for a session this node does not hold: normal for a moment
    /// after either side restarted, until the sender's next handshake (within a second
    /// when traffic flows; WireGuard retries every 5 s otherwise).
    NoSession,
    /// Plain VXLAN where WireGuard is required, in either direction (a peer without a key
    /// while `encryption_plain` is "refuse").
    Unencrypted,
    /// IPv6 link chatter the switch absorbs: router solicitations, MLD reports,
    /// duplicate-address probes, a port's advertisements of its own addresses, and
    /// solicitations of its own address. Normal whenever an interface comes up.
    NdIgnored,
    /// A Neighbor Solicitation for an IPv6 address the switch does not know.
    NdUnknownTarget,
    /// A NetworkPolicy (or ClusterNetworkPolicy) denies the flow; `switchctl monitor` and
    /// `switchctl trace` name the policy.
    PolicyDenied,
}

impl DropReason {
    pub const ALL: [DropReason; 21] = [
        DropReason::Malformed,
        DropReason::UnsupportedProtocol,
        DropReason::Multicast,
        DropReason::NoRoute,
        DropReason::SpoofedSource,
        DropReason::ArpUnknownTarget,
        DropReason::ArpIgnored,
        DropReason::TooBig,
        DropReason::Loop,
        DropReason::WriteFailed,
        DropReason::NoPeer,
        DropReason::UnknownPeer,
        DropReason::BadTunnelPacket,
        DropReason::WrongVni,
        DropReason::RateLimited,
        DropReason::NotAuthenticated,
        DropReason::NoSession,
        DropReason::Unencrypted,
        DropReason::NdIgnored,
        DropReason::NdUnknownTarget,
        DropReason::PolicyDenied,
    ];

    /// Link chatter the switch absorbs on purpose: normal whenever an interface comes up,
    /// counted apart from the drops that mean something is wrong.
    pub fn is_chatter(self) -> bool {
        matches!(self, DropReason::NdIgnored | DropReason::ArpIgnored)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::Multicast => "multicast",
            DropReason::NoRoute => "no_route",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::ArpUnknownTarget => "arp_unknown_target",
            DropReason::ArpIgnored => "arp_ignored",
            DropReason::TooBig => "too_big",
            DropReason::Loop => "loop",
            DropReason::WriteFailed => "write_failed",
            DropReason::NoPeer => "no_peer",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::BadTunnelPacket => "bad_tunnel_packet",
            DropReason::WrongVni => "wrong_vni",
            DropReason::RateLimited => "rate_limited",
            DropReason::NotAuthenticated => "not_authenticated",
            DropReason::NoSession => "no_session",
            DropReason::Unencrypted => "unencrypted",
            DropReason::NdIgnored => "nd_ignored",
            DropReason::NdUnknownTarget => "nd_unknown_target",
            DropReason::PolicyDenied => "policy_denied",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DropReason;

    #[test]
    fn only_absorbed_link_chatter_is_kept_out_of_the_drop_counters() {
        let chatter: Vec<&str> = DropReason::ALL
            .iter()
            .filter(|r| r.is_chatter())
            .map(|r| r.as_str())
            .collect();
        assert_eq!(chatter, ["arp_ignored", "nd_ignored"]);
        assert!(!DropReason::PolicyDenied.is_chatter());
        assert!(!DropReason::NdUnknownTarget.is_chatter());
    }
}
