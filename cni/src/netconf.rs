//! The network configuration on stdin and the `CNI_*` environment.

use serde_json::Value;
use switchd_proto::{AttachmentKey, Bandwidth, PodRef};

use crate::error::{code, CniError};

pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const DEFAULT_SOCKET: &str = "/run/switchd/switchd.sock";
/// How long to wait for switchd to accept a connection before answering "try again later".
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 3_000;

#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub socket: String,
    pub connect_timeout_ms: u64,
    pub prev_result: Option<Value>,
    pub dns: Option<Value>,
    /// GC: attachments the runtime still uses.
    pub valid_attachments: Vec<AttachmentKey>,
    /// Rate limits: `runtimeConfig.bandwidth` (the capability kubelet fills from pod
    /// annotations) wins over a static `bandwidth` object in the plugin's own config.
    pub bandwidth: Option<Bandwidth>,
}

fn invalid(msg: &str, details: String) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg, details)
}

impl NetConf {
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                "cannot decode the network configuration on stdin",
                e.to_string(),
            )
        })?;
        let obj = v.as_object().ok_or_else(|| {
            invalid(
                "invalid network configuration",
                "the configuration must be a JSON object".into(),
            )
        })?;
        let string = |key: &str| -> Result<Option<String>, CniError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(invalid(
                    "invalid network configuration",
                    format!("`{key}` must be a string, got {other}"),
                )),
            }
        };
        let cni_version = string("cniVersion")?.ok_or_else(|| {
            invalid(
                "invalid network configuration",
                "`cniVersion` is missing".into(),
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                "incompatible CNI version",
                format!(
                    "cniVersion {cni_version} is not supported; supported: {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let name = string("name")?.filter(|n| !n.is_empty()).ok_or_else(|| {
            invalid(
                "invalid network configuration",
                "`name` is missing or empty".into(),
            )
        })?;
        let socket = string("socket")?.unwrap_or_else(|| DEFAULT_SOCKET.into());
        if !socket.starts_with('/') {
            return Err(invalid(
                "invalid network configuration",
                format!("`socket` must be an absolute path, got {socket:?}"),
            ));
        }
        let connect_timeout_ms = match obj.get("connectTimeoutMs") {
            None => DEFAULT_CONNECT_TIMEOUT_MS,
            Some(v) => v.as_u64().filter(|ms| *ms <= 600_000).ok_or_else(|| {
                invalid(
                    "invalid network configuration",
                    format!("`connectTimeoutMs` must be 0..600000, got {v}"),
                )
            })?,
        };
        let valid_attachments = match obj
            .get("cni.dev/valid-attachments")
            .or_else(|| obj.get("cni.dev/attachments"))
        {
            None => Vec::new(),
            Some(list) => parse_attachments(list)?,
        };
        let bandwidth = match obj
            .get("runtimeConfig")
            .and_then(|rc| rc.get("bandwidth"))
            .or_else(|| obj.get("bandwidth"))
        {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_bandwidth(v)?),
        };
        Ok(NetConf {
            cni_version,
            name,
            socket,
            connect_timeout_ms,
            prev_result: obj.get("prevResult").filter(|v| !v.is_null()).cloned(),
            dns: obj.get("dns").cloned(),
            valid_attachments,
            bandwidth,
        })
    }
}

/// The `bandwidth` object: the reference plugin's keys, each a non-negative integer.
fn parse_bandwidth(v: &Value) -> Result<Bandwidth, CniError> {
    let bad = |d: String| invalid("invalid bandwidth", d);
    let obj = v
        .as_object()
        .ok_or_else(|| bad(format!("must be an object, got {v}")))?;
    const KEYS: [&str; 4] = ["ingressRate", "ingressBurst", "egressRate", "egressBurst"];
    if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown key `{k}`; expected {}",
            KEYS.join(", ")
        )));
    }
    let get = |k: &str| -> Result<u64, CniError> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(0),
            Some(n) => n.as_u64().ok_or_else(|| {
                bad(format!(
                    "`{k}` must be a non-negative integer (bits per second or bits), got {n}"
                ))
            }),
        }
    };
    Ok(Bandwidth {
        ingress_rate: get("ingressRate")?,
        ingress_burst: get("ingressBurst")?,
        egress_rate: get("egressRate")?,
        egress_burst: get("egressBurst")?,
    })
}

fn parse_attachments(list: &Value) -> Result<Vec<AttachmentKey>, CniError> {
    let bad = |d: String| invalid("invalid cni.dev/valid-attachments", d);
    let items = list
        .as_array()
        .ok_or_else(|| bad("must be a list".into()))?;
    items
        .iter()
        .map(|item| {
            let cid = item
                .get("containerID")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("entry {item} lacks containerID")))?;
            let ifname = item
                .get("ifname")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("entry {item} lacks ifname")))?;
            Ok(AttachmentKey {
                container_id: cid.into(),
                ifname: ifname.into(),
            })
        })
        .collect()
}

/// The runtime's parameters from the environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub pod: PodRef,
}

impl Env {
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let command = get("CNI_COMMAND")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENV,
                    "CNI_COMMAND is not set",
                    "set CNI_COMMAND to ADD, DEL, CHECK, GC, STATUS or VERSION",
                )
            })?;
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let pod = parse_cni_args(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(Env {
            command,
            container_id: nonempty("CNI_CONTAINERID"),
            netns: nonempty("CNI_NETNS"),
            ifname: nonempty("CNI_IFNAME"),
            pod,
        })
    }

    pub fn require(value: &Option<String>, var: &str) -> Result<String, CniError> {
        value.clone().ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!("{var} is not set"),
                format!("the runtime must set {var} for this command"),
            )
        })
    }
}

/// `CNI_ARGS`: `K=V;K=V`. Kubernetes passes the pod's identity here.
pub fn parse_cni_args(s: &str) -> Result<PodRef, CniError> {
    let mut pod = PodRef::default();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                "invalid CNI_ARGS",
                format!("{pair:?} is not KEY=VALUE"),
            )
        })?;
        match k {
            "K8S_POD_NAMESPACE" => pod.namespace = v.into(),
            "K8S_POD_NAME" => pod.name = v.into(),
            "K8S_POD_UID" => pod.uid = v.into(),
            _ => {}
        }
    }
    Ok(pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_conflist_entry_and_fills_defaults() {
        let c = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"pods","type":"switchd-cni"}"#)
            .unwrap();
        assert_eq!(c.socket, DEFAULT_SOCKET);
        assert_eq!(c.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS);
        assert!(c.prev_result.is_none());
    }

    #[test]
    fn bad_configs_get_the_spec_codes() {
        let cases: [(&[u8], u32); 6] = [
            (b"{not json", code::DECODE_FAILURE),
            (
                br#"{"cniVersion":"1.1.0","type":"switchd-cni"}"#,
                code::INVALID_CONFIG,
            ),
            (
                br#"{"cniVersion":"1.1.0","name":"n","socket":42}"#,
                code::INVALID_CONFIG,
            ),
            (
                br#"{"cniVersion":"1.1.0","name":"n","socket":"relative"}"#,
                code::INVALID_CONFIG,
            ),
            (
                br#"{"cniVersion":"9.9.9","name":"n"}"#,
                code::INCOMPATIBLE_VERSION,
            ),
            (br#"[1,2]"#, code::INVALID_CONFIG),
        ];
        for (input, want) in cases {
            assert_eq!(
                NetConf::parse(input).unwrap_err().code,
                want,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn bandwidth_comes_from_runtime_config_before_the_static_object() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","bandwidth":{"ingressRate":1000},
                 "runtimeConfig":{"bandwidth":{"egressRate":2000,"egressBurst":300}}}"#,
        )
        .unwrap();
        let bw = c.bandwidth.unwrap();
        assert_eq!(
            (bw.ingress_rate, bw.egress_rate, bw.egress_burst),
            (0, 2000, 300)
        );
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","bandwidth":{"ingressRate":1000}}"#,
        )
        .unwrap();
        assert_eq!(c.bandwidth.unwrap().ingress_rate, 1000);
        for bad in [
            br#"{"cniVersion":"1.0.0","name":"n","bandwidth":{"ingressRate":-1}}"#.as_slice(),
            br#"{"cniVersion":"1.0.0","name":"n","bandwidth":{"ingresRate":10}}"#,
            br#"{"cniVersion":"1.0.0","name":"n","bandwidth":"10M"}"#,
        ] {
            let e = NetConf::parse(bad).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG);
            assert_eq!(e.msg, "invalid bandwidth");
        }
    }

    #[test]
    fn gc_attachments_are_read_from_either_key() {
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let text = format!(
                r#"{{"cniVersion":"1.1.0","name":"n","{key}":[{{"containerID":"a","ifname":"eth0"}}]}}"#
            );
            let c = NetConf::parse(text.as_bytes()).unwrap();
            assert_eq!(
                c.valid_attachments,
                vec![AttachmentKey {
                    container_id: "a".into(),
                    ifname: "eth0".into()
                }]
            );
        }
    }

    #[test]
    fn cni_args_give_the_pod_and_missing_command_is_code_4() {
        let pod = parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=u-1",
        )
        .unwrap();
        assert_eq!(
            (pod.namespace.as_str(), pod.name.as_str(), pod.uid.as_str()),
            ("default", "web", "u-1")
        );
        assert_eq!(
            parse_cni_args("garbage").unwrap_err().code,
            code::INVALID_ENV
        );
        assert_eq!(
            Env::from_vars(|_| None).unwrap_err().code,
            code::INVALID_ENV
        );
    }
}
