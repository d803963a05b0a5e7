//! `switchd-cni`: the CNI plugin the container runtime executes for every pod.
//!
//! It is deliberately small and synchronous (no async runtime, starts in a millisecond): it
//! reads the network configuration from stdin and the `CNI_*` variables, asks switchd over
//! its Unix socket to do the work, and prints the result or the spec's error JSON.

use switchd_cni::{client, error, netconf, result};

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};
use switchd_proto::{AttachmentKey, Request, Response};

use error::{code, CniError};
use netconf::{Env, NetConf, SUPPORTED_VERSIONS};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        return fail(
            "1.1.0",
            CniError::new(code::IO_FAILURE, "cannot read stdin", e.to_string()),
        );
    }
    let env = match Env::from_vars(|k| std::env::var(k).ok()) {
        Ok(env) => env,
        Err(e) => return fail(&version_hint(&stdin), e),
    };
    if env.command == "VERSION" {
        let v = version_hint(&stdin);
        println!(
            "{}",
            json!({ "cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS })
        );
        return ExitCode::SUCCESS;
    }
    let conf = match NetConf::parse(&stdin) {
        Ok(c) => c,
        Err(e) => return fail(&version_hint(&stdin), e),
    };
    match run(&env, &conf) {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => fail(&conf.cni_version, e),
    }
}

fn fail(cni_version: &str, e: CniError) -> ExitCode {
    println!("{}", e.to_json(cni_version));
    ExitCode::FAILURE
}

/// The cniVersion on stdin if it can be read, for shaping output before full validation.
fn version_hint(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".into())
}

fn key(env: &Env) -> Result<AttachmentKey, CniError> {
    Ok(AttachmentKey {
        container_id: Env::require(&env.container_id, "CNI_CONTAINERID")?,
        ifname: Env::require(&env.ifname, "CNI_IFNAME")?,
    })
}

fn unexpected(resp: Response) -> CniError {
    match resp {
        Response::Error(e) => CniError::from_daemon(e.kind, e.message),
        other => CniError::new(
            code::INTERNAL,
            "unexpected response from switchd",
            format!("{other:?}"),
        ),
    }
}

fn run(env: &Env, conf: &NetConf) -> Result<Option<Value>, CniError> {
    let timeout = Duration::from_millis(conf.connect_timeout_ms);
    let call = |req: Request| client::call(&conf.socket, timeout, &req);
    match env.command.as_str() {
        "ADD" => {
            let req = Request::Attach {
                key: key(env)?,
                network: conf.name.clone(),
                netns: Env::require(&env.netns, "CNI_NETNS")?,
                pod: env.pod.clone(),
                bandwidth: conf.bandwidth,
            };
            match call(req)? {
                Response::Attached(att) => Ok(Some(result::build(
                    &conf.cni_version,
                    &att,
                    conf.prev_result.as_ref(),
                    conf.dns.as_ref(),
                ))),
                other => Err(unexpected(other)),
            }
        }
        "DEL" => match call(Request::Detach {
            key: key(env)?,
            netns: env.netns.clone(),
        })? {
            Response::Detached { .. } => Ok(None),
            other => Err(unexpected(other)),
        },
        "CHECK" => {
            if conf.cni_version.starts_with("0.3") {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    "CHECK needs cniVersion 0.4.0 or later",
                    format!("configuration says {}", conf.cni_version),
                ));
            }
            let netns = Env::require(&env.netns, "CNI_NETNS")?;
            match call(Request::Check {
                key: key(env)?,
                netns,
            })? {
                Response::Checked(att) => {
                    if let Some(prev) = &conf.prev_result {
                        result::prev_result_matches(prev, &att).map_err(|d| {
                            CniError::new(
                                code::CHECK_FAILED,
                                "prevResult does not match switchd",
                                d,
                            )
                        })?;
                    }
                    Ok(None)
                }
                other => Err(unexpected(other)),
            }
        }
        "GC" => match call(Request::Gc {
            network: conf.name.clone(),
            valid: conf.valid_attachments.clone(),
        })? {
            Response::GcDone { .. } => Ok(None),
            other => Err(unexpected(other)),
        },
        "STATUS" => match call(Request::Status) {
            Ok(Response::Status(s)) if s.ready => Ok(None),
            Ok(Response::Status(s)) => Err(CniError::new(
                code::PLUGIN_NOT_AVAILABLE,
                "switchd is not ready",
                s.detail,
            )),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(CniError::new(
                code::PLUGIN_NOT_AVAILABLE,
                "switchd is not available",
                format!("{}: {}", e.msg, e.details),
            )),
        },
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
            "use ADD, DEL, CHECK, GC, STATUS or VERSION",
        )),
    }
}
