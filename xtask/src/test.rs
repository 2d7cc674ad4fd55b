//! `cargo xtask test`: prerequisites, then stages that all run whatever the others said: the
//! unit and CLI tests as the current user, the end-to-end tests one at a time as root, and the
//! end-to-end tests again with XDP in front of TC (`WSFWD_TEST_ATTACH=xdp`). Each test binary
//! is run by us (see `testrun`), so a crashed binary counts as a failure and ignored tests are
//! listed. The closing line is `N passed, N failed, N skipped`; only the exit status decides.

use std::{ffi::OsString, process::ExitCode};

use anyhow::{Context as _, Result};

use crate::{
    cargo, cmd, prereqs,
    testrun::{self, Report, Selection},
};

/// The package holding the end-to-end tests (the `tests/` directory).
const E2E_PACKAGE: &str = "wsfwd-tests";

pub fn test(extra: &[OsString]) -> Result<ExitCode> {
    prereqs::check()?;
    let extra = ExtraArgs::split(extra)?;
    let mut report = Report::default();

    // Stage 1: every unit and CLI test of the workspace, as the current user.
    let mut unit_args: Vec<OsString> = ["--workspace", "--exclude", "wsfwd-ebpf", "--exclude", E2E_PACKAGE]
        .map(OsString::from)
        .to_vec();
    unit_args.extend(extra.cargo.iter().cloned());
    run_stage(&Stage::UNIT, &unit_args, &extra, &extra.harness, None, &mut report);

    // Stage 2: the end-to-end tests, whatever stage 1 said: a unit failure must not hide them.
    end_to_end(&extra, &mut report);

    println!("{report}");
    Ok(if report.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// A stage: its name, what it runs, and the environment it runs them in.
struct Stage {
    name: &'static str,
    /// `WSFWD_TEST_ATTACH` for the agents the tests start.
    attach: Option<&'static str>,
    /// Test binaries left out (they choose their hooks themselves).
    skip: &'static [&'static str],
}

impl Stage {
    const UNIT: Stage = Stage { name: "unit", attach: None, skip: &[] };
    const END_TO_END: Stage = Stage { name: "end-to-end", attach: None, skip: &[] };
    /// Every end-to-end test of a path through the datapath again, with XDP
    /// (generic, on the veths) in front of TC; the packet fixtures and the
    /// corpus run both hooks in one pass already.
    const END_TO_END_XDP: Stage = Stage {
        name: "end-to-end under XDP",
        attach: Some("xdp"),
        skip: &["wsfwd-tests/test fixtures", "wsfwd-tests/test corpus", "wsfwd-tests/lib", "wsfwd-tests/bin"],
    };
}

/// Builds a stage's test binaries and runs each; `root` runs them as root with that agent.
fn run_stage(
    stage: &Stage,
    cargo_args: &[OsString],
    extra: &ExtraArgs,
    harness: &[OsString],
    root: Option<&std::path::Path>,
    report: &mut Report,
) {
    let name = stage.name;
    let binaries = match testrun::build(cargo_args) {
        Ok(b) => b,
        Err(e) => return report.stage_failed(format!("{name}: building the tests failed: {e:#}")),
    };
    if binaries.is_empty() {
        return report.stage_failed(format!("{name}: cargo built no test binary"));
    }
    let binaries: Vec<_> = binaries.into_iter().filter(|b| !stage.skip.iter().any(|s| b.name.starts_with(s))).collect();
    let built = binaries.len();
    let selected: Vec<_> = binaries.into_iter().filter(|b| extra.select.selects(b)).collect();
    if selected.len() < built {
        // Asked for: said, and not a failure.
        report.note(format!("{name}: {} of {built} test binaries selected by `{}`", selected.len(), extra.select));
    }
    for bin in selected {
        eprintln!("xtask: {name}: running {} ({})", bin.name, bin.path.display());
        let mut cmd = match root {
            Some(agent) => {
                let mut c = cmd::as_root(&bin.path);
                c.env("WSFWD_BIN", agent);
                c
            }
            None => std::process::Command::new(&bin.path),
        };
        cmd.args(harness).current_dir(&bin.dir);
        let shown = match stage.attach {
            Some(hook) => {
                cmd.env("WSFWD_TEST_ATTACH", hook);
                format!("{} [{hook}]", bin.name)
            }
            None => bin.name.clone(),
        };
        match testrun::run(&mut cmd) {
            Ok(outcome) => report.add(&shown, outcome),
            Err(e) => report.stage_failed(format!("{name}: {}: {e:#}", bin.name)),
        }
    }
}

/// The end-to-end tests, one at a time, as root (through sudo when we are not root, except
/// under CI, where not being root is a failure).
fn end_to_end(extra: &ExtraArgs, report: &mut Report) {
    if !cmd::is_root() && cmd::in_ci() {
        return report.stage_failed(
            "end-to-end: these tests need root and CI is set, so they are not run through sudo: \
             run `cargo xtask test` as root",
        );
    }
    // The upgrade tests (`live`) also start a different build over a running one.
    if extra.select.targets.is_empty() || extra.select.targets.iter().any(|(_, name)| name == "live") {
        if let Err(e) = cargo::build_agent_variant() {
            return report.stage_failed(format!("end-to-end: {e:#}"));
        }
    }
    // The tests drive the real agent binary, and refuse one older than its sources.
    let agent = match cargo::build_agent(cargo::Profile::Debug) {
        Ok(a) => a,
        Err(e) => return report.stage_failed(format!("end-to-end: {e:#}")),
    };
    let mut harness = Vec::new();
    if !extra.harness.iter().any(|arg| arg.to_string_lossy().starts_with("--test-threads")) {
        harness.push(OsString::from("--test-threads=1"));
    }
    harness.extend(extra.harness.iter().cloned());
    let mut args = vec![OsString::from("--package"), OsString::from(E2E_PACKAGE)];
    args.extend(extra.cargo.iter().cloned());
    // Compiled as ourselves; only the test binaries run as root, so no build artifact
    // becomes root-owned.
    run_stage(&Stage::END_TO_END, &args, extra, &harness, Some(&agent), report);
    run_stage(&Stage::END_TO_END_XDP, &args, extra, &harness, Some(&agent), report);
}

/// Arguments of `cargo xtask test -- ARGS`: `--test NAME`, `--bin NAME`, `--lib` and
/// `-p NAME` choose which test binaries run; other cargo options (`--release`) go to the builds;
/// a bare word is a test name filter, as with `cargo test`; everything after a further `--`
/// goes to every test binary (`--nocapture`, `--exact`).
#[derive(Debug, PartialEq)]
struct ExtraArgs {
    cargo: Vec<OsString>,
    select: Selection,
    harness: Vec<OsString>,
}

/// Cargo test options that take a value as the next argument.
const CARGO_VALUE_OPTIONS: [&str; 12] = [
    "--exclude", "--example", "--bench", "-F", "--features", "-j", "--jobs", "--profile", "--target",
    "--target-dir", "--manifest-path", "--color",
];

impl ExtraArgs {
    fn split(extra: &[OsString]) -> Result<Self> {
        let (before, after) = match extra.iter().position(|arg| arg == "--") {
            Some(at) => (&extra[..at], &extra[at + 1..]),
            None => (extra, &[][..]),
        };
        let mut out = Self { cargo: Vec::new(), select: Selection::default(), harness: Vec::new() };
        let mut words = before.iter().map(|a| a.to_string_lossy().into_owned());
        while let Some(word) = words.next() {
            let mut value = |opt: &str| words.next().with_context(|| format!("{opt} needs a value"));
            match word.as_str() {
                "-p" | "--package" => out.select.packages.push(value(&word)?),
                "--test" | "--bin" => out.select.targets.push((word[2..].to_owned(), value(&word)?)),
                "--lib" => out.select.targets.push(("lib".to_owned(), String::new())),
                w if CARGO_VALUE_OPTIONS.contains(&w) => {
                    let v = value(w)?;
                    out.cargo.extend([OsString::from(w), OsString::from(v)]);
                }
                w if w.starts_with('-') => out.cargo.push(OsString::from(w)),
                _ => out.harness.push(OsString::from(word)),
            }
        }
        out.harness.extend(after.iter().cloned());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn splits_extra_args() {
        let extra = ExtraArgs::split(&args(&["affinity", "--", "--nocapture"])).unwrap();
        assert_eq!(extra.harness, args(&["affinity", "--nocapture"]));
        assert!(extra.cargo.is_empty() && extra.select.is_empty());
        let extra = ExtraArgs::split(&args(&["--test", "t1", "-p", "wsfwd-tests", "t1_03", "--release"])).unwrap();
        assert_eq!(extra.cargo, args(&["--release"]));
        assert_eq!(extra.select.targets, vec![("test".to_owned(), "t1".to_owned())]);
        assert_eq!(extra.select.packages, vec!["wsfwd-tests".to_owned()]);
        assert_eq!(extra.harness, args(&["t1_03"]));
        let extra = ExtraArgs::split(&args(&["--features", "x", "--lib", "flows"])).unwrap();
        assert_eq!(extra.cargo, args(&["--features", "x"]));
        assert_eq!(extra.select.targets, vec![("lib".to_owned(), String::new())]);
        assert_eq!(extra.harness, args(&["flows"]));
        let err = ExtraArgs::split(&args(&["--test"])).unwrap_err();
        assert_eq!(err.to_string(), "--test needs a value");
    }
}
