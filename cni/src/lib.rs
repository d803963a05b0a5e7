//! The CNI plugin's parts, as a library so the binary (`main.rs`) and the fuzz targets
//! (`fuzz/`) share them: the network configuration and environment, the daemon client,
//! errors and results in the CNI spec's shapes.

pub mod client;
pub mod error;
pub mod netconf;
pub mod result;
