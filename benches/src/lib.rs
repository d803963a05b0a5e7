//! Shared helpers for the benchmarks live in `switchd::datapath::craft`.
