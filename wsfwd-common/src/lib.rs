//! What the wsfwd agent and its eBPF programs must agree on, byte for byte:
//! the flow hash that picks a Maglev slot, and the map key/value layouts.
//!
//! `no_std` so the eBPF crate can use it; the `user` feature adds what only
//! userspace needs.
#![no_std]

pub mod abi;
pub mod csum;
pub mod hash;
pub mod tcp;

pub use hash::{DEFAULT_HASH_SEED, hash_client, hash_flow};
