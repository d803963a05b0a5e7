//! The end-to-end benchmarks' shared measurements ([`measure`]). The frames the criterion
//! benchmarks forward are crafted by `switchd::datapath::craft`.

pub mod floor;
pub mod iperf;
pub mod measure;
