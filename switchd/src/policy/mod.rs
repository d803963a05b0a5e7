//! NetworkPolicy's control side: the objects it is compiled from ([`model`]), the pure
//! compiler ([`compile`]) and the watcher that feeds it from the API server ([`watch`]).
//! What the datapath does with the result lives in `crate::datapath::policy`.

pub mod compile;
pub mod model;
pub mod oracle;
pub mod watch;
