//! `cargo xtask bench`: installs the contenders (nginx with its stream module,
//! HAProxy, iperf3, a font for the chart), builds the agent and the bench in
//! release mode, and runs the bench as root. It writes BENCHMARKS.md,
//! bench-results.json and bench-chart.png at the workspace root.

use std::{ffi::OsString, process::ExitCode};

use anyhow::Result;

use crate::{cargo, cmd, prereqs};

/// Debian packages only the benchmark needs.
const PACKAGES: &[&str] = &["nginx", "libnginx-mod-stream", "haproxy", "iperf3", "conntrack", "fonts-dejavu-core"];

pub fn bench(args: &[OsString]) -> Result<ExitCode> {
    prereqs::check()?;
    prereqs::ensure_debian_packages(PACKAGES)?;
    cmd::run(cargo::cargo("build").args(["--locked", "--release", "--package", "wsfwd", "--package", "wsfwd-tests", "--bins"]))?;
    let release = cargo::target_dir().join("release");
    let mut command = String::from("cargo xtask bench");
    for a in args {
        command.push(' ');
        command.push_str(&a.to_string_lossy());
    }
    let mut run = cmd::as_root(release.join("wsfwd-bench"));
    run.env("WSFWD_BIN", release.join("wsfwd"))
        .args(args)
        .arg("--command")
        .arg(&command)
        .arg("--out")
        .arg(cargo::workspace_root())
        .current_dir(cargo::workspace_root());
    let status = cmd::status(&mut run)?;
    Ok(ExitCode::from(cmd::exit_code(status)))
}
