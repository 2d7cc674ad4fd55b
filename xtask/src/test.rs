//! `cargo xtask test`: prerequisites, unit tests, then the end-to-end tests one at a time as
//! root, and a final `N passed, N failed` line summed over both runs.

use std::{
    ffi::OsString,
    io::{Read as _, Write as _},
    process::{Command, ExitCode, ExitStatus, Stdio},
};

use anyhow::{Context as _, Result};

use crate::{cargo, cmd, prereqs};

/// The package holding the end-to-end tests (the `tests/` directory).
const E2E_PACKAGE: &str = "wsfwd-tests";

/// Test counts summed over every `test result:` line cargo test printed.
#[derive(Default, Debug, PartialEq)]
struct Totals {
    passed: u64,
    failed: u64,
}

pub fn test(extra: &[OsString]) -> Result<ExitCode> {
    prereqs::check()?;
    let extra = ExtraArgs::split(extra);
    let mut totals = Totals::default();

    // Step 1: every unit test of the workspace, in parallel, as the current user.
    let mut unit = cargo::cargo("test");
    unit.args(["--locked", "--workspace"])
        .args(["--exclude", "wsfwd-ebpf", "--exclude", E2E_PACKAGE])
        .args(&extra.cargo);
    if !extra.harness.is_empty() {
        unit.arg("--").args(&extra.harness);
    }
    let unit_ok = run_counting(&mut unit, &mut totals)?;

    // Step 2: the end-to-end tests, only once the unit tests pass.
    let e2e_ok = if unit_ok {
        end_to_end(&extra, &mut totals)?
    } else {
        eprintln!("xtask: unit tests failed; not running the end-to-end tests");
        false
    };

    println!("{} passed, {} failed", totals.passed, totals.failed);
    Ok(if unit_ok && e2e_ok && totals.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the end-to-end tests one at a time, as root (through sudo when we are not root, except
/// under CI, where not being root is a failure). Returns whether cargo test succeeded.
fn end_to_end(extra: &ExtraArgs, totals: &mut Totals) -> Result<bool> {
    let root = cmd::is_root();
    if !root && cmd::in_ci() {
        eprintln!(
            "xtask: the end-to-end tests need root and CI is set, so they are not run through \
             sudo: run `cargo xtask test` as root"
        );
        return Ok(false);
    }

    // The tests drive the real agent binary.
    let agent = cargo::build_agent(cargo::Profile::Debug)?;

    let mut harness = Vec::new();
    if !extra.harness.iter().any(|arg| arg.to_string_lossy().starts_with("--test-threads")) {
        harness.push(OsString::from("--test-threads=1"));
    }
    harness.extend(extra.harness.iter().cloned());
    if !root {
        // Compile as ourselves first, so the root run below only executes tests and leaves no
        // root-owned build artifacts behind.
        let mut build = cargo::cargo("test");
        build
            .args(["--locked", "--package", E2E_PACKAGE, "--no-run"])
            .args(&extra.cargo);
        if !cmd::status(&mut build)?.success() {
            return Ok(false);
        }
        eprintln!("xtask: the end-to-end tests need root; running them through sudo");
    }
    let mut e2e = cmd::as_root("cargo");
    e2e.env("WSFWD_BIN", &agent)
        .args(["test", "--locked", "--package", E2E_PACKAGE])
        .args(&extra.cargo)
        .arg("--")
        .args(&harness)
        .current_dir(cargo::workspace_root());
    run_counting(&mut e2e, totals)
}

/// Extra arguments after `cargo xtask test --`: the ones before a further `--` go to cargo
/// test (e.g. a test name filter), the ones after it to the test harness.
struct ExtraArgs {
    cargo: Vec<OsString>,
    harness: Vec<OsString>,
}

impl ExtraArgs {
    fn split(extra: &[OsString]) -> Self {
        match extra.iter().position(|arg| arg == "--") {
            Some(at) => Self { cargo: extra[..at].to_vec(), harness: extra[at + 1..].to_vec() },
            None => Self { cargo: extra.to_vec(), harness: Vec::new() },
        }
    }
}

/// Runs cargo test, streaming its stdout to ours as it arrives (libtest prints a test's name
/// before it finishes) while adding up its `test result:` lines. Returns whether it exited 0.
fn run_counting(cmd: &mut Command, totals: &mut Totals) -> Result<bool> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{}`", cmd::display(cmd)))?;
    let mut child_stdout = child
        .stdout
        .take()
        .context("cargo test's stdout was not captured")?;
    let mut stdout = std::io::stdout().lock();
    let mut line = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match child_stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err).context("reading cargo test's output");
            }
        };
        // A closed stdout (e.g. `| head`) must not stop the tests, so ignore write errors.
        let _ = stdout.write_all(&buf[..n]);
        let _ = stdout.flush();
        for &byte in &buf[..n] {
            if byte == b'\n' {
                count_line(&String::from_utf8_lossy(&line), totals);
                line.clear();
            } else {
                line.push(byte);
            }
        }
    }
    count_line(&String::from_utf8_lossy(&line), totals);
    drop(stdout);
    let status: ExitStatus = child
        .wait()
        .with_context(|| format!("waiting for `{}`", cmd::display(cmd)))?;
    if !status.success() {
        eprintln!("xtask: `{}` failed ({})", cmd::display(cmd), cmd::describe(status));
    }
    Ok(status.success())
}

/// Adds the counts of a libtest summary line,
/// `test result: ok. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in …`.
fn count_line(line: &str, totals: &mut Totals) {
    let Some((_, result)) = line.split_once("test result: ") else {
        return;
    };
    for field in result.split(';') {
        let mut words = field.split_whitespace().rev();
        let (Some(what), Some(count)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        match what {
            "passed" => totals.passed += count,
            "failed" => totals.failed += count,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_summary_lines() {
        let mut totals = Totals::default();
        for line in [
            "running 3 tests",
            "test a ... ok",
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
            "",
        ] {
            count_line(line, &mut totals);
        }
        assert_eq!(totals, Totals { passed: 5, failed: 1 });
    }

    #[test]
    fn splits_extra_args() {
        let args: Vec<OsString> = ["flows", "--", "--nocapture"].map(OsString::from).to_vec();
        let extra = ExtraArgs::split(&args);
        assert_eq!(extra.cargo, [OsString::from("flows")]);
        assert_eq!(extra.harness, [OsString::from("--nocapture")]);
        let extra = ExtraArgs::split(&args[..1]);
        assert_eq!(extra.cargo, [OsString::from("flows")]);
        assert!(extra.harness.is_empty());
    }
}
