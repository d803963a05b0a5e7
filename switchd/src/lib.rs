//! switchd: a per-node userspace virtual switch for Kubernetes pods.
//!
//! - [`datapath`]: the sans-IO forwarding core (parse, decide, rewrite).
//! - [`port`]: TAP devices, their queues and counters; [`tunnel`]: the UDP tunnel's sockets.
//! - [`snapshot`]: the published view of ports, peers and table the workers read.
//! - [`worker`]: the datapath threads, from "frame read" to "frame written".
//! - [`switch`]: the control plane: ports, table publication, attach and detach.
//! - [`ipam`]: address allocation, persisted crash-safely.
//! - [`netns`]: configuring interfaces inside pod network namespaces (netlink).
//! - [`control`]: the Unix-socket server speaking `switchd-proto`.
//! - [`config`]: the TOML configuration and its validation.
//! - [`node`]: the node's sysctls pods depend on; [`masquerade`]: egress masquerade rules.

pub mod config;
pub mod control;
pub mod datapath;
pub mod flow_store;
pub mod health;
pub mod ipam;
pub mod masquerade;
pub mod membership;
pub mod metrics;
pub mod monitor;
pub mod netns;
pub mod node;
pub mod notify;
pub mod policy;
pub mod port;
pub mod snapshot;
pub mod stats;
pub mod switch;
pub mod trace;
pub mod tunnel;
pub mod udp_socket;
pub mod wireguard;
pub mod worker;
