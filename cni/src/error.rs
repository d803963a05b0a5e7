//! CNI errors: the spec's error JSON on stdout and a non-zero exit.

use serde_json::json;
use switchd_proto::ErrorKind;

/// Well-known codes from the CNI spec (0-99) and ours (100+).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const CONTAINER_UNKNOWN: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// The node's pod CIDR has no free address.
    pub const ADDRESSES_EXHAUSTED: u32 = 100;
    /// The attachment or the interface already exists.
    pub const ALREADY_EXISTS: u32 = 101;
    /// CHECK found a difference.
    pub const CHECK_FAILED: u32 = 102;
    /// switchd failed for another reason (kernel or I/O error); details say which.
    pub const INTERNAL: u32 = 103;
    /// switchd-cni and switchd come from different releases.
    pub const PROTOCOL_MISMATCH: u32 = 104;
}

#[derive(Debug, Clone, PartialEq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// Map a daemon error to the closest CNI code.
    pub fn from_daemon(kind: ErrorKind, message: String) -> Self {
        let (c, msg) = match kind {
            ErrorKind::VersionMismatch => (
                code::PROTOCOL_MISMATCH,
                "switchd-cni and switchd speak different protocol versions",
            ),
            ErrorKind::BadRequest => (code::INVALID_CONFIG, "switchd refused the request"),
            ErrorKind::AddressesExhausted => (
                code::ADDRESSES_EXHAUSTED,
                "no free pod address on this node",
            ),
            ErrorKind::AlreadyExists => (code::ALREADY_EXISTS, "interface already exists"),
            ErrorKind::NotFound => (code::CONTAINER_UNKNOWN, "switchd has no such attachment"),
            ErrorKind::NetnsUnavailable => (
                code::CONTAINER_UNKNOWN,
                "the container's network namespace is not available",
            ),
            ErrorKind::CheckFailed => (
                code::CHECK_FAILED,
                "the container's network differs from what was attached",
            ),
            ErrorKind::NotReady => (
                code::TRY_AGAIN_LATER,
                "switchd is not ready; try again later",
            ),
            ErrorKind::Internal => (code::INTERNAL, "switchd failed"),
        };
        CniError::new(c, msg, message)
    }

    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details })
    }
}
