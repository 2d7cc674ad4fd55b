//! Harness for wsfwd's end-to-end tests: network namespaces joined by veths,
//! real peers in them, the real agent, and clients that provably send only
//! from inside a test namespace. Everything is removed on drop, panics included.
pub mod agent;
pub mod apiserver;
pub mod bench;
pub mod checks;
pub mod client;
pub mod corpus;
pub mod fleet;
pub mod forge;
pub mod netns;
pub mod peers;
pub mod pkt;
pub mod progrun;
pub mod sys;
pub mod topo;
