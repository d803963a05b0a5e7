//! What a container runtime hands switchd-cni: the network configuration on stdin, the
//! CNI_* environment and CNI_ARGS. Anything is parsed or refused with a CNI error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchd_cni::netconf::{parse_cni_args, Env, NetConf};

fuzz_target!(|data: &[u8]| {
    let _ = NetConf::parse(data);
    let text = String::from_utf8_lossy(data);
    let _ = parse_cni_args(&text);
    let vars: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let _ = Env::from_vars(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()));
});
