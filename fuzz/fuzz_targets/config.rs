//! switchd.toml (and its [[peers]] tables), and the same text as a peers file: any text
//! is a valid configuration or an error naming what is wrong; a valid static one has its
//! gateway inside its pod CIDR, and valid peers lie in the cluster CIDR.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchd::config::{Config, Membership, Overrides};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = Config::parse(text, Overrides::default()) {
        if matches!(cfg.membership, Membership::Static) {
            assert!(cfg.pod_cidr.contains(&cfg.gateway()));
        }
    }
    let base = base();
    if let Ok(peers) = base.parse_peers_file(text) {
        for p in peers {
            assert!(base.cluster_cidr.contains(&p.pod_cidr.network()), "{p:?}");
        }
    }
});

/// A node's configuration to read peers files against, parsed once.
fn base() -> &'static Config {
    static BASE: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        Config::parse(
            "node_name = \"n1\"\npod_cidr = \"10.244.1.0/24\"\nunderlay_addr = \"192.168.7.1\"\n",
            Overrides::default(),
        )
        .expect("the base config")
    })
}
