//! `cargo xtask bench` — not written yet; this module is its place.
//!
//! Plan: build the agent with `--release`, then measure the datapath's cost per packet with
//! aya's `TestRun` (BPF_PROG_TEST_RUN; no network needed), for a first packet of a flow and for
//! an established flow, against the floor measured on these machines (DESIGN.md, "Toolchain
//! facts"). When it exists: add a `Bench` variant to `Cmd` in main.rs that calls a
//! `pub fn bench(...) -> anyhow::Result<()>` here, after `prereqs::check()`.
