//! `cargo xtask demo`: the seed's scenario, end to end, one numbered step after another.
//!
//! Checks the prerequisites, builds the agent, prints the plan `wsfwd check` makes of the seed's
//! manifests, then runs the namespace demo (`wsfwd-demo` in the tests crate): a client with 16
//! addresses chats over WebSocket with three backends through the VIP and the NodePort, and the
//! demo prints where each client landed and whether affinity held. It cleans up after itself.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, ensure};

use crate::{
    cargo::{self, Profile},
    cmd, prereqs,
};

/// The demo's configuration, relative to the workspace root.
const CONFIG: &str = "fixtures/seed-demo.yaml";
const DEMO_PACKAGE: &str = "wsfwd-tests";
const DEMO_BIN: &str = "wsfwd-demo";

pub fn demo() -> Result<()> {
    step(1, "checking prerequisites");
    prereqs::check()?;

    step(2, "building the agent and the demo");
    let agent = cargo::build_agent(Profile::Debug)?;
    cmd::run(cargo::cargo("build").args(["--locked", "--package", DEMO_PACKAGE, "--bin", DEMO_BIN]))?;

    step(3, "the plan wsfwd makes of the seed's manifests (wsfwd check)");
    check_config(&agent, &cargo::workspace_root().join(CONFIG))?;

    step(4, "forwarding it for real, in network namespaces (as root)");
    let demo = cargo::target_dir().join("debug").join(DEMO_BIN);
    let status = cmd::status(cmd::as_root(&demo).env("WSFWD_BIN", &agent).current_dir(cargo::workspace_root()))?;
    ensure!(status.success(), "the demo failed ({})", cmd::describe(status));
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
