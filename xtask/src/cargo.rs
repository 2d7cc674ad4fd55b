//! The workspace, and the cargo invocations that build and run the agent.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result};

use crate::cmd;

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| Path::new("."))
}

/// `cargo <subcommand>`, run from the workspace root.
pub fn cargo(subcommand: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg(subcommand).current_dir(workspace_root());
    cmd
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace root), else
/// `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Which cargo profile to build the agent with.
#[derive(Clone, Copy, Debug)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    pub fn new(release: bool) -> Self {
        if release { Self::Release } else { Self::Debug }
    }

    fn dir(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Release => "release",
        }
    }
}

/// Builds the eBPF crate alone, for the BPF target, with the flags aya-build uses. The agent's
/// build script does the same; this only surfaces eBPF compile errors quickly and readably.
pub fn build_ebpf() -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "build", "--locked", "-Z", "build-std=core"])
        .args(["--target", "bpfel-unknown-none", "--package", "wsfwd-ebpf", "--release"])
        .current_dir(workspace_root().join("wsfwd-ebpf"))
        // The same flags aya-build passes (fields separated by 0x1f).
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!(
                "--cfg=bpf_target_arch=\"{}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
                std::env::consts::ARCH
            ),
        )
        // As aya-build does: make sure the nightly toolchain's own rustc is used.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    cmd::run(&mut cmd).context("building the eBPF programs failed")
}

/// Builds the agent (its build script compiles and embeds the eBPF object); returns the path
/// of the binary.
pub fn build_agent(profile: Profile) -> Result<PathBuf> {
    let mut cmd = cargo("build");
    cmd.args(["--locked", "--package", "wsfwd"]);
    if let Profile::Release = profile {
        cmd.arg("--release");
    }
    cmd::run(&mut cmd).context("building the agent failed")?;
    let binary = target_dir().join(profile.dir()).join("wsfwd");
    anyhow::ensure!(
        binary.is_file(),
        "cargo built the agent but {} does not exist",
        binary.display()
    );
    Ok(binary)
}

/// Builds the agent with its programs' `build-variant` feature (programs that
/// differ from the default build's, same layout) and keeps it as
/// `wsfwd-variant` beside the debug build: the upgrade tests start it over a
/// running datapath. Build the default agent after it: they share a build
/// directory, and the last build is the one at `wsfwd`.
pub fn build_agent_variant() -> Result<PathBuf> {
    let mut cmd = cargo("build");
    cmd.args(["--locked", "--package", "wsfwd"]).env("WSFWD_EBPF_FEATURES", "build-variant");
    cmd::run(&mut cmd).context("building the agent's variant failed")?;
    let built = target_dir().join(Profile::Debug.dir()).join("wsfwd");
    let variant = built.with_file_name("wsfwd-variant");
    std::fs::copy(&built, &variant).with_context(|| format!("copying {} to {}", built.display(), variant.display()))?;
    Ok(variant)
}

/// Builds the agent and runs it as root with `args`; returns the agent's exit code.
pub fn run_agent(profile: Profile, args: &[OsString]) -> Result<ExitCode> {
    let binary = build_agent(profile)?;
    let mut cmd = cmd::as_root(&binary);
    cmd.args(args).current_dir(workspace_root());
    let status = cmd::status(&mut cmd)?;
    if !status.success() {
        eprintln!("xtask: `{}` ended with {}", cmd::display(&cmd), cmd::describe(status));
    }
    Ok(ExitCode::from(cmd::exit_code(status)))
}
