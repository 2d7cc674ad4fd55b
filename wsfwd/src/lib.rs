//! wsfwd: an eBPF L4 forwarder that puts WebSocket (or any TCP/UDP) services
//! behind a virtual IP with client-IP affinity. The binary is a thin CLI over
//! these modules; the end-to-end tests use them to predict the datapath.
pub mod agent;
pub mod bpffs;
pub mod check;
pub mod choose;
pub mod collector;
pub mod config;
pub mod datapath;
pub mod drain;
pub mod kubernetes;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod netif;
pub mod placement;
pub mod reload;
pub mod route;
pub mod run;
pub mod settings;
pub mod stats;
pub mod status;
pub mod watch;
