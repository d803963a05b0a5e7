//! NetworkPolicy's and ClusterNetworkPolicy's control side: the objects they are compiled
//! from ([`model`]), the pure compiler ([`compile`]), the watcher that feeds it from the
//! API server ([`watch`]) and the reading of the ClusterNetworkPolicy CRD ([`cluster`]).
//! What the datapath does with the result lives in `crate::datapath::policy`.

pub mod cluster;
pub mod compile;
pub mod model;
pub mod oracle;
pub mod watch;
