//! `cargo xtask bench`: wsfwd side by side with the direct path, iptables,
//! nftables, nginx and HAProxy, on WebSocket workloads, in one run.
pub mod report;
pub mod results;
