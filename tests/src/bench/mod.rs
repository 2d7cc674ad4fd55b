//! `cargo xtask bench`: wsfwd side by side with the direct path, iptables,
//! nftables, nginx and HAProxy, on WebSocket workloads, in one run.
pub mod contenders;
pub mod load;
pub mod micro;
pub mod reload;
pub mod report;
pub mod results;
pub mod run;
