//! The ADD result, shaped for the configuration's cniVersion and merged into a chain's
//! `prevResult` when there is one.

use serde_json::{json, Map, Value};
use switchd_proto::Attachment;

/// Whether this version's `ips` entries carry `"version": "4"` (dropped in 1.0.0).
fn ips_have_version(cni_version: &str) -> bool {
    cni_version.starts_with("0.")
}

/// Build the result for `att`. Interfaces, IPs, routes and DNS from `prev` come first, so
/// plugins earlier in the chain keep what they reported.
pub fn build(
    cni_version: &str,
    att: &Attachment,
    prev: Option<&Value>,
    dns: Option<&Value>,
) -> Value {
    let list = |key: &str| -> Vec<Value> {
        prev.and_then(|p| p.get(key))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut interfaces = list("interfaces");
    let mut ips: Vec<Value> = list("ips")
        .into_iter()
        .map(|ip| normalise_ip(ip, cni_version))
        .collect();
    let mut routes = list("routes");

    let mut iface = Map::new();
    iface.insert("name".into(), json!(att.ifname));
    iface.insert("mac".into(), json!(att.mac));
    if cni_version == "1.1.0" {
        iface.insert("mtu".into(), json!(att.mtu));
    }
    iface.insert("sandbox".into(), json!(att.netns));
    let index = interfaces.len();
    interfaces.push(Value::Object(iface));

    // IPv4 first when the pod has both: kubelet takes the first as the pod's primary IP.
    let mut families = vec![(
        "4",
        format!("{}/{}", att.address, att.prefix_len),
        att.gateway.to_string(),
    )];
    if let Some(v6) = &att.ipv6 {
        families.push((
            "6",
            format!("{}/{}", v6.address, v6.prefix_len),
            v6.gateway.to_string(),
        ));
    }
    for (version, address, gateway) in families {
        let mut ip = Map::new();
        if ips_have_version(cni_version) {
            ip.insert("version".into(), json!(version));
        }
        ip.insert("address".into(), json!(address));
        ip.insert("gateway".into(), json!(gateway));
        ip.insert("interface".into(), json!(index));
        ips.push(Value::Object(ip));
    }

    for r in &att.routes {
        routes.push(json!({ "dst": r.dst, "gw": r.gw.to_string() }));
    }
    let dns = prev
        .and_then(|p| p.get("dns"))
        .filter(|d| d.as_object().is_some_and(|o| !o.is_empty()))
        .or(dns)
        .cloned()
        .unwrap_or_else(|| json!({}));
    json!({ "cniVersion": cni_version, "interfaces": interfaces, "ips": ips, "routes": routes, "dns": dns })
}

/// Re-shape an `ips` entry from a prevResult of another version.
fn normalise_ip(mut ip: Value, cni_version: &str) -> Value {
    if let Some(obj) = ip.as_object_mut() {
        if ips_have_version(cni_version) {
            if !obj.contains_key("version") {
                let v6 = obj
                    .get("address")
                    .and_then(Value::as_str)
                    .is_some_and(|a| a.contains(':'));
                obj.insert("version".into(), json!(if v6 { "6" } else { "4" }));
            }
        } else {
            obj.remove("version");
        }
    }
    ip
}

/// CHECK: the prevResult, if any, must still list our addresses on our interface.
pub fn prev_result_matches(prev: &Value, att: &Attachment) -> Result<(), String> {
    prev_result_lists(prev, att, format!("{}/{}", att.address, att.prefix_len))?;
    match &att.ipv6 {
        Some(v6) => prev_result_lists(prev, att, format!("{}/{}", v6.address, v6.prefix_len)),
        None => Ok(()),
    }
}

fn prev_result_lists(prev: &Value, att: &Attachment, want: String) -> Result<(), String> {
    let interfaces = prev
        .get("interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ips = prev
        .get("ips")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ours = ips.iter().any(|ip| {
        ip.get("address").and_then(Value::as_str) == Some(want.as_str())
            && ip
                .get("interface")
                .and_then(Value::as_u64)
                .and_then(|i| interfaces.get(i as usize))
                .and_then(|i| i.get("name"))
                .and_then(Value::as_str)
                .is_none_or(|n| n == att.ifname)
    });
    if ours {
        Ok(())
    } else {
        Err(format!("prevResult does not list {want} on {}; the runtime's cached result and switchd disagree", att.ifname))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchd_proto::RouteInfo;

    fn att() -> Attachment {
        Attachment {
            ifname: "eth0".into(),
            mac: "0a:58:0a:f4:01:02".into(),
            address: "10.244.1.2".parse().unwrap(),
            prefix_len: 24,
            gateway: "10.244.1.1".parse().unwrap(),
            mtu: 1450,
            routes: vec![RouteInfo {
                dst: "0.0.0.0/0".into(),
                gw: "10.244.1.1".parse().unwrap(),
            }],
            netns: "/var/run/netns/p".into(),
            ipv6: None,
        }
    }

    fn dual() -> Attachment {
        let mut a = att();
        a.ipv6 = Some(switchd_proto::Ipv6Attachment {
            address: "fd10:244:0:1::2".parse().unwrap(),
            prefix_len: 64,
            gateway: "fd10:244:0:1::1".parse().unwrap(),
        });
        a.routes.push(RouteInfo {
            dst: "::/0".into(),
            gw: "fd10:244:0:1::1".parse().unwrap(),
        });
        a
    }

    #[test]
    fn a_dual_stack_result_lists_ipv4_first_then_ipv6_on_every_version() {
        for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let r = build(v, &dual(), None, None);
            let ips = r["ips"].as_array().unwrap();
            assert_eq!(ips.len(), 2, "{v}");
            assert_eq!(ips[0]["address"], "10.244.1.2/24");
            assert_eq!(ips[1]["address"], "fd10:244:0:1::2/64");
            assert_eq!(ips[1]["gateway"], "fd10:244:0:1::1");
            assert_eq!(ips[1]["interface"], 0);
            if v.starts_with("0.") {
                assert_eq!(
                    (ips[0]["version"].as_str(), ips[1]["version"].as_str()),
                    (Some("4"), Some("6")),
                    "{v}"
                );
            } else {
                assert!(ips[1].get("version").is_none(), "{v}");
            }
            assert_eq!(
                r["routes"][1],
                json!({"dst": "::/0", "gw": "fd10:244:0:1::1"})
            );
        }
        // CHECK wants both addresses in the cached result.
        let ok = build("1.0.0", &dual(), None, None);
        assert!(prev_result_matches(&ok, &dual()).is_ok());
        let v4_only = build("1.0.0", &att(), None, None);
        let err = prev_result_matches(&v4_only, &dual()).unwrap_err();
        assert!(err.contains("fd10:244:0:1::2/64"), "{err}");
    }

    #[test]
    fn shape_per_version() {
        for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let r = build(v, &att(), None, None);
            assert_eq!(r["cniVersion"], v);
            assert_eq!(r["interfaces"][0]["name"], "eth0");
            assert_eq!(r["interfaces"][0]["mac"], "0a:58:0a:f4:01:02");
            assert_eq!(r["interfaces"][0]["sandbox"], "/var/run/netns/p");
            assert_eq!(r["ips"][0]["address"], "10.244.1.2/24");
            assert_eq!(r["ips"][0]["gateway"], "10.244.1.1");
            assert_eq!(r["ips"][0]["interface"], 0);
            assert_eq!(
                r["routes"][0],
                json!({"dst": "0.0.0.0/0", "gw": "10.244.1.1"})
            );
            assert_eq!(
                r["ips"][0].get("version").is_some(),
                v.starts_with("0."),
                "{v}"
            );
            assert_eq!(r["interfaces"][0].get("mtu").is_some(), v == "1.1.0", "{v}");
        }
    }

    #[test]
    fn chains_onto_a_prev_result() {
        let prev = json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "lo0", "sandbox": "/x"}],
            "ips": [{"version": "4", "address": "192.0.2.5/32", "interface": 0}],
            "routes": [{"dst": "192.0.2.0/24"}],
            "dns": {"nameservers": ["192.0.2.53"]}
        });
        let r = build(
            "1.0.0",
            &att(),
            Some(&prev),
            Some(&json!({"nameservers": ["9.9.9.9"]})),
        );
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 2);
        assert_eq!(
            r["ips"][0],
            json!({"address": "192.0.2.5/32", "interface": 0}),
            "version dropped for 1.0.0"
        );
        assert_eq!(
            r["ips"][1]["interface"], 1,
            "our IP points at our interface"
        );
        assert_eq!(r["routes"].as_array().unwrap().len(), 2);
        assert_eq!(
            r["dns"]["nameservers"][0], "192.0.2.53",
            "earlier plugin's DNS wins"
        );
    }

    #[test]
    fn config_dns_is_passed_through() {
        let r = build(
            "1.1.0",
            &att(),
            None,
            Some(&json!({"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]})),
        );
        assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
    }

    #[test]
    fn check_compares_prev_result() {
        let ok = build("1.1.0", &att(), None, None);
        assert!(prev_result_matches(&ok, &att()).is_ok());
        let mut other = att();
        other.address = "10.244.1.9".parse().unwrap();
        let err = prev_result_matches(&build("1.1.0", &other, None, None), &att()).unwrap_err();
        assert!(err.contains("10.244.1.2/24"), "{err}");
    }
}
