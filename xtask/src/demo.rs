//! `cargo xtask demo`: shows wsfwd working, one numbered step after another.
//!
//! Today it validates the demo configuration. It is meant to grow into a network-namespace
//! demo (client, forwarder and backend namespaces joined by veths, real WebSocket traffic);
//! add each stage as its own small function called from [`demo`].

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, ensure};

use crate::{
    cargo::{self, Profile},
    cmd, prereqs,
};

/// The demo's configuration, relative to the workspace root.
const CONFIG: &str = "fixtures/seed-demo.yaml";

pub fn demo() -> Result<()> {
    step(1, "checking prerequisites");
    prereqs::check()?;

    step(2, "building the agent");
    let agent = cargo::build_agent(Profile::Debug)?;

    step(3, "checking the demo configuration");
    check_config(&agent, &cargo::workspace_root().join(CONFIG))?;

    Ok(())
}

fn step(number: u32, what: &str) {
    println!("==> {number}. {what}");
}

/// Runs `wsfwd check --config <config>`; its report goes straight to our stdout.
fn check_config(agent: &Path, config: &Path) -> Result<()> {
    ensure!(config.is_file(), "the demo configuration {} does not exist", config.display());
    cmd::run(
        Command::new(agent)
            .arg("check")
            .arg("--config")
            .arg(config)
            .current_dir(cargo::workspace_root()),
    )
    .with_context(|| format!("`wsfwd check` rejected {}", config.display()))
}
