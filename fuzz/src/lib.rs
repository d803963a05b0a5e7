//! What the fuzz targets share: a node's table with pods, the gateway and peers, and
//! flows the node translated, built as switchd builds its own.

use std::net::{Ipv4Addr, Ipv6Addr};

use switchd::datapath::craft;
use switchd::datapath::flows::{FlowTable, Timeouts};
use switchd::datapath::frame::mac_for_ip;
use switchd::datapath::table::{PeerRoute, Table};

/// The table, built once (building it per input would cost more than the decision).
pub fn table() -> &'static Table {
    static TABLE: std::sync::OnceLock<Table> = std::sync::OnceLock::new();
    TABLE.get_or_init(build_table)
}

/// The flow table, shared by every input: flows recorded by one input are seen by later
/// ones, as on a node.
pub fn flows() -> &'static FlowTable {
    static FLOWS: std::sync::OnceLock<FlowTable> = std::sync::OnceLock::new();
    FLOWS.get_or_init(|| FlowTable::new(1024, Timeouts::default(), 7))
}

/// A dual-stack node: pods on ports 1..=3 (10.244.1.2..4, fd10:244:1::2..4), peers owning
/// 10.244.2.0/24 with fd10:244:2::/64 (index 0), 10.244.3.0/24 with fd10:244:3::/64 and
/// 10.200.0.0/16; tunnel MTU 1450, port MTU 1500.
fn build_table() -> Table {
    let mut t = craft::demo_table_dual_stack_with_peer();
    t.mtu = 1500;
    for (port, last) in [(1u32, 2u8), (2, 3), (3, 4)] {
        let ip = Ipv4Addr::new(10, 244, 1, last);
        t.insert_pod(port, ip, mac_for_ip(ip));
        let ip6 = Ipv6Addr::new(0xfd10, 0x244, 1, 0, 0, 0, 0, u16::from(last));
        t.insert_pod_v6(port, ip6, mac_for_ip(ip));
    }
    t.insert_peer(PeerRoute {
        pod_cidr: "10.244.3.0/24".parse().unwrap(),
        pod_cidr_v6: Some("fd10:244:3::/64".parse().unwrap()),
        mac: mac_for_ip(Ipv4Addr::new(10, 244, 3, 1)),
    });
    t.insert_peer(PeerRoute {
        pod_cidr: "10.200.0.0/16".parse().unwrap(),
        pod_cidr_v6: None,
        mac: mac_for_ip(Ipv4Addr::new(10, 200, 0, 1)),
    });
    t
}
