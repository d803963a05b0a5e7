//! What a frame is, in a few words, for people: `switchctl capture` summaries and
//! `switchctl monitor` drop events. Never on the hot path; tolerant of any bytes.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::frame::{ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_HDR_LEN};

/// A frame's kind and endpoints, e.g. `("ipv4 tcp", "10.244.1.2:40000", "10.244.2.3:80")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub kind: String,
    pub src: Option<String>,
    pub dst: Option<String>,
}

fn l4_name(protocol: u8) -> String {
    match protocol {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        p => format!("proto {p}"),
    }
}

fn icmpv6_name(icmp_type: u8) -> Option<&'static str> {
    Some(match icmp_type {
        1 => "unreachable",
        2 => "packet too big",
        3 => "time exceeded",
        128 => "echo request",
        129 => "echo reply",
        130 | 131 | 132 | 143 => "mld",
        133 => "router solicitation",
        134 => "router advertisement",
        135 => "neighbor solicitation",
        136 => "neighbor advertisement",
        137 => "redirect",
        _ => return None,
    })
}

/// Describe an Ethernet frame (no virtio-net header).
pub fn describe(frame: &[u8]) -> Described {
    let unknown = |kind: String| Described {
        kind,
        src: None,
        dst: None,
    };
    let Some(&[hi, lo]) = frame.get(12..14) else {
        return unknown(format!("runt ({} bytes)", frame.len()));
    };
    let payload = &frame[ETH_HDR_LEN..];
    match u16::from_be_bytes([hi, lo]) {
        ETHERTYPE_IPV4 if payload.len() >= 20 && payload[0] >> 4 == 4 => {
            let ihl = usize::from(payload[0] & 0x0f) * 4;
            let protocol = payload[9];
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(&payload[12..16]).unwrap());
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&payload[16..20]).unwrap());
            let ports = payload
                .get(ihl..ihl + 4)
                .filter(|_| protocol == 6 || protocol == 17);
            let (src, dst) = match ports {
                Some(p) => (
                    format!("{src}:{}", u16::from_be_bytes([p[0], p[1]])),
                    format!("{dst}:{}", u16::from_be_bytes([p[2], p[3]])),
                ),
                None => (src.to_string(), dst.to_string()),
            };
            Described {
                kind: format!("ipv4 {}", l4_name(protocol)),
                src: Some(src),
                dst: Some(dst),
            }
        }
        ETHERTYPE_ARP if payload.len() >= 28 => {
            let op = if payload[7] == 1 { "request" } else { "reply" };
            let ip = |at: usize| Ipv4Addr::from(<[u8; 4]>::try_from(&payload[at..at + 4]).unwrap());
            Described {
                kind: format!("arp {op}"),
                src: Some(ip(14).to_string()),
                dst: Some(ip(24).to_string()),
            }
        }
        ETHERTYPE_IPV6 if payload.len() >= 40 => {
            let ip =
                |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&payload[at..at + 16]).unwrap());
            let (src, dst) = (ip(8), ip(24));
            // Behind any extension headers: the transport's ports, or what ICMPv6 says.
            let info = super::ipv6::parse(payload).ok();
            let upper = info.map_or(payload[6], |i| i.upper);
            let l4 = info.and_then(|i| payload.get(i.upper_at?..i.len));
            let ports = l4
                .and_then(|l4| l4.get(..4))
                .filter(|_| upper == 6 || upper == 17);
            let mut kind = format!("ipv6 {}", l4_name(upper));
            if let Some(name) = l4
                .and_then(|l4| l4.first())
                .filter(|_| upper == 58)
                .and_then(|t| icmpv6_name(*t))
            {
                kind = format!("{kind} {name}");
            }
            let (src, dst) = match ports {
                Some(p) => (
                    format!("[{src}]:{}", u16::from_be_bytes([p[0], p[1]])),
                    format!("[{dst}]:{}", u16::from_be_bytes([p[2], p[3]])),
                ),
                None => (src.to_string(), dst.to_string()),
            };
            Described {
                kind,
                src: Some(src),
                dst: Some(dst),
            }
        }
        ETHERTYPE_IPV4 | ETHERTYPE_ARP | ETHERTYPE_IPV6 => {
            unknown(format!("truncated ethertype 0x{hi:02x}{lo:02x}"))
        }
        _ => unknown(format!("ethertype 0x{hi:02x}{lo:02x}")),
    }
}

impl std::fmt::Display for Described {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.src, &self.dst) {
            (Some(s), Some(d)) => write!(f, "{} {s} > {d}", self.kind),
            _ => f.write_str(&self.kind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::craft;
    use crate::datapath::frame::{mac_for_ip, VNET_HDR_LEN};

    #[test]
    fn frames_are_named_with_their_endpoints() {
        let (a, b) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 3));
        let tcp = craft::ipv4_packet(mac_for_ip(a), mac_for_ip(b), a, b, 6, 80, 0);
        assert_eq!(
            describe(&tcp[VNET_HDR_LEN..]).to_string(),
            "ipv4 tcp 10.244.1.2:40000 > 10.244.2.3:80"
        );
        let icmp = craft::ipv4_packet(mac_for_ip(a), mac_for_ip(b), a, b, 1, 0, 84);
        assert_eq!(
            describe(&icmp[VNET_HDR_LEN..]).to_string(),
            "ipv4 icmp 10.244.1.2 > 10.244.2.3"
        );
        let arp = craft::arp_request(mac_for_ip(a), a, b);
        assert_eq!(
            describe(&arp[VNET_HDR_LEN..]).to_string(),
            "arp request 10.244.1.2 > 10.244.2.3"
        );
        let (a6, b6): (Ipv6Addr, Ipv6Addr) = (
            "fd10:244:1::2".parse().unwrap(),
            "fd10:244:2::3".parse().unwrap(),
        );
        let udp6 = craft::ipv6_udp(mac_for_ip(a), mac_for_ip(b), a6, b6, 10);
        assert_eq!(
            describe(&udp6[VNET_HDR_LEN..]).to_string(),
            "ipv6 udp [fd10:244:1::2]:4000 > [fd10:244:2::3]:5000"
        );
        let ns = craft::neighbor_solicitation(mac_for_ip(a), a6, b6);
        assert_eq!(
            describe(&ns[VNET_HDR_LEN..]).to_string(),
            "ipv6 icmpv6 neighbor solicitation fd10:244:1::2 > ff02::1:ff00:3"
        );
        let lldp = craft::ethertype(0x88cc, 30);
        assert_eq!(
            describe(&lldp[VNET_HDR_LEN..]).to_string(),
            "ethertype 0x88cc"
        );
    }

    #[test]
    fn any_bytes_are_described_without_panicking() {
        let ip = craft::ipv4_packet(
            [2; 6],
            [4; 6],
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::LOCALHOST,
            6,
            1,
            0,
        );
        for len in 0..ip.len() - VNET_HDR_LEN {
            let _ = describe(&ip[VNET_HDR_LEN..VNET_HDR_LEN + len]);
        }
        assert_eq!(describe(&[0u8; 5]).kind, "runt (5 bytes)");
    }
}
