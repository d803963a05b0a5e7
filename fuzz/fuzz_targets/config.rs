//! switchd.toml (and its [[peers]] tables): any text is a valid configuration or an
//! error naming what is wrong; a valid static one has its gateway inside its pod CIDR.
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
});
