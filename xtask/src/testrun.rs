//! Test binaries, built by cargo and run one by one by us, so that every binary is accounted
//! for: its summary line, its failed and ignored tests, and a crash (no summary line, or a
//! non-zero exit that the summary does not explain) counted as a failure.

use std::{
    ffi::OsString,
    fmt,
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// One test executable cargo built.
#[derive(Debug, Clone)]
pub struct TestBinary {
    /// `<package>/<target kind> <target name>`, e.g. `wsfwd-tests/test t1` or `wsfwd/lib wsfwd`.
    pub name: String,
    pub package: String,
    /// `lib`, `bin`, `test`, ...
    pub kind: String,
    pub target: String,
    pub path: PathBuf,
    /// The package's directory: cargo test runs each binary there.
    pub dir: PathBuf,
}

/// Which binaries to run, from `cargo test`'s own selection options.
#[derive(Debug, Default, PartialEq)]
pub struct Selection {
    pub packages: Vec<String>,
    /// (kind, target name); the name is empty for `--lib`.
    pub targets: Vec<(String, String)>,
}

impl fmt::Display for Selection {
    /// As it was asked for: `-p wsfwd --test t1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words: Vec<String> = self.packages.iter().map(|p| format!("-p {p}")).collect();
        words.extend(self.targets.iter().map(|(kind, name)| match kind.as_str() {
            "lib" => "--lib".to_owned(),
            k => format!("--{k} {name}"),
        }));
        f.write_str(&words.join(" "))
    }
}

impl Selection {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty() && self.targets.is_empty()
    }

    pub fn selects(&self, b: &TestBinary) -> bool {
        (self.packages.is_empty() || self.packages.contains(&b.package))
            && (self.targets.is_empty()
                || self.targets.iter().any(|(kind, name)| *kind == b.kind && (name.is_empty() || *name == b.target)))
    }
}

/// Builds the test binaries `cargo test --no-run <args>` selects and returns them, in the order
/// cargo reported them.
pub fn build(args: &[OsString]) -> Result<Vec<TestBinary>> {
    let mut cmd = crate::cargo::cargo("test");
    cmd.args(["--locked", "--no-run", "--message-format=json-render-diagnostics"]).args(args);
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{}`", cmd::display(&cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", cmd::display(&cmd), cmd::describe(out.status));
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(binary) = parse_artifact(line)? {
            binaries.push(binary);
        }
    }
    Ok(binaries)
}

/// A test executable from one line of cargo's JSON messages; `None` for any other message.
fn parse_artifact(line: &str) -> Result<Option<TestBinary>> {
    let msg: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("cargo printed a line that is not JSON: {line:?}"))?;
    if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
        return Ok(None);
    }
    let Some(path) = msg["executable"].as_str() else { return Ok(None) };
    let manifest = msg["manifest_path"].as_str().context("compiler-artifact without manifest_path")?;
    let dir = PathBuf::from(manifest).parent().map(PathBuf::from).unwrap_or_default();
    let dir_name = dir.file_name().map(|d| d.to_string_lossy().into_owned()).unwrap_or_default();
    // `path+file:///w/tests#wsfwd-tests@0.1.0`, or `path+file:///w/wsfwd#0.1.0` when the
    // directory is named after the package.
    let package = match msg["package_id"].as_str().and_then(|id| id.rsplit_once('#')) {
        Some((_, name_version)) => match name_version.split_once('@') {
            Some((name, _)) => name.to_owned(),
            None => dir_name,
        },
        None => dir_name,
    };
    let kind = msg["target"]["kind"][0].as_str().unwrap_or("?").to_owned();
    let target = msg["target"]["name"].as_str().unwrap_or("?").to_owned();
    Ok(Some(TestBinary {
        name: format!("{package}/{kind} {target}"),
        package,
        kind,
        target,
        path: PathBuf::from(path),
        dir,
    }))
}

/// What one test binary (or one cargo run) reported.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub passed: u64,
    pub failed: u64,
    /// Names of failed and ignored tests, as libtest printed them.
    pub failures: Vec<String>,
    pub ignored: Vec<String>,
    /// Set when the binary ended in a way its summary does not account for.
    pub crash: Option<String>,
}

impl Outcome {
    /// Failures to count: the failed tests, or one for a binary that crashed without any.
    pub fn failed_count(&self) -> u64 {
        if self.crash.is_some() { self.failed.max(1) } else { self.failed }
    }
}

/// Reads libtest's output line by line. Only a line that *starts* with `test result: ` is a
/// summary (a test's own output may contain those words), and only the last one counts.
#[derive(Default)]
pub struct OutputReader {
    summary: Option<(u64, u64)>,
    failures: Vec<String>,
    ignored: Vec<String>,
}

impl OutputReader {
    pub fn line(&mut self, line: &str) {
        if let Some(result) = line.strip_prefix("test result: ") {
            self.summary = parse_summary(result);
        } else if let Some(rest) = line.strip_prefix("test ") {
            if let Some((name, verdict)) = rest.rsplit_once(" ... ") {
                if verdict == "FAILED" {
                    self.failures.push(name.to_owned());
                } else if verdict.starts_with("ignored") {
                    self.ignored.push(name.to_owned());
                }
            }
        }
    }

    /// The outcome, given how the process ended.
    pub fn finish(self, status: std::process::ExitStatus) -> Outcome {
        let (passed, failed) = self.summary.unwrap_or((0, 0));
        let crash = match (self.summary, status.success()) {
            (None, _) => Some(format!("{} without a `test result:` line", cmd::describe(status))),
            (Some(_), false) if failed == 0 => {
                Some(format!("{} although its summary reports no failure", cmd::describe(status)))
            }
            (Some(_), true) if failed > 0 => Some("exit status 0 although tests failed".to_owned()),
            _ => None,
        };
        Outcome { passed, failed, failures: self.failures, ignored: self.ignored, crash }
    }
}

/// `ok. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in …` → (3, 1).
fn parse_summary(result: &str) -> Option<(u64, u64)> {
    let mut passed = None;
    let mut failed = None;
    for field in result.split(';') {
        let mut words = field.split_whitespace().rev();
        let (Some(what), Some(count)) = (words.next(), words.next()) else { continue };
        let Ok(count) = count.parse::<u64>() else { continue };
        match what {
            "passed" => passed = Some(count),
            "failed" => failed = Some(count),
            _ => {}
        }
    }
    Some((passed?, failed?))
}

/// Runs `cmd`, streaming its stdout to ours as it arrives (libtest prints a test's name before
/// it finishes) while reading it.
pub fn run(cmd: &mut Command) -> Result<Outcome> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("could not start `{}`", cmd::display(cmd)))?;
    let child_stdout = child.stdout.take().context("stdout was not captured")?;
    let mut reader = OutputReader::default();
    let mut stdout = std::io::stdout().lock();
    for line in BufReader::new(child_stdout).split(b'\n') {
        let line = match line {
            Ok(line) => line,
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err).context("reading the test output");
            }
        };
        // A closed stdout (e.g. `| head`) must not stop the tests, so ignore write errors.
        let _ = stdout.write_all(&line);
        let _ = stdout.write_all(b"\n");
        let _ = stdout.flush();
        reader.line(String::from_utf8_lossy(&line).trim_end_matches('\r'));
    }
    drop(stdout);
    let status = child.wait().with_context(|| format!("waiting for `{}`", cmd::display(cmd)))?;
    Ok(reader.finish(status))
}

/// Every binary's outcome and every stage that could not run, for the closing report.
#[derive(Default)]
pub struct Report {
    pub binaries: Vec<(String, Outcome)>,
    /// Stages that failed before or outside any test binary (a build, a missing privilege).
    pub stage_failures: Vec<String>,
    /// What the reader should know but is no failure (binaries left out by a selection).
    pub notes: Vec<String>,
}

impl Report {
    pub fn add(&mut self, name: &str, outcome: Outcome) {
        self.binaries.push((name.to_owned(), outcome));
    }

    pub fn note(&mut self, what: String) {
        eprintln!("xtask: {what}");
        self.notes.push(what);
    }

    pub fn stage_failed(&mut self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("xtask: {what}");
        self.stage_failures.push(what);
    }

    pub fn passed(&self) -> u64 {
        self.binaries.iter().map(|(_, o)| o.passed).sum()
    }

    /// Failed tests, crashed binaries and failed stages.
    pub fn failed(&self) -> u64 {
        self.binaries.iter().map(|(_, o)| o.failed_count()).sum::<u64>() + self.stage_failures.len() as u64
    }

    pub fn ignored(&self) -> u64 {
        self.binaries.iter().map(|(_, o)| o.ignored.len() as u64).sum()
    }

    pub fn success(&self) -> bool {
        self.failed() == 0
    }
}

impl fmt::Display for Report {
    /// The closing report; its last line is `N passed, N failed, N skipped`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\n== {} test binaries ==", self.binaries.len())?;
        for (name, o) in &self.binaries {
            let state = match &o.crash {
                Some(why) => format!("CRASHED ({why})"),
                None if o.failed > 0 => "FAILED".to_owned(),
                None => "ok".to_owned(),
            };
            writeln!(f, "{name}: {} passed, {} failed, {} ignored: {state}", o.passed, o.failed, o.ignored.len())?;
            for t in &o.failures {
                writeln!(f, "    failed: {t}")?;
            }
            for t in &o.ignored {
                writeln!(f, "    ignored: {t}")?;
            }
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        for s in &self.stage_failures {
            writeln!(f, "stage failed: {s}")?;
        }
        write!(f, "{} passed, {} failed, {} skipped", self.passed(), self.failed(), self.ignored())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    fn read(lines: &[&str], raw_status: i32) -> Outcome {
        let mut r = OutputReader::default();
        for l in lines {
            r.line(l);
        }
        r.finish(std::process::ExitStatus::from_raw(raw_status))
    }

    const OK: i32 = 0;
    const EXIT_101: i32 = 101 << 8;
    const SIGABRT: i32 = 6;

    #[test]
    fn a_passing_binary() {
        let o = read(
            &[
                "running 3 tests",
                "test a ... ok",
                "test b ... ignored",
                "test c ... ignored, needs a NIC",
                "test result: ok. 1 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            ],
            OK,
        );
        assert_eq!(o, Outcome { passed: 1, failed: 0, failures: vec![], ignored: vec!["b".into(), "c".into()], crash: None });
        assert_eq!(o.failed_count(), 0);
    }

    #[test]
    fn a_failing_binary() {
        let o = read(
            &[
                "test a ... ok",
                "test t::b ... FAILED",
                "test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s",
            ],
            EXIT_101,
        );
        assert_eq!((o.passed, o.failed_count(), o.failures.clone(), o.crash), (1, 1, vec!["t::b".to_owned()], None));
    }

    #[test]
    fn a_crash_counts_as_a_failure() {
        // Aborted in the middle: no summary at all.
        let o = read(&["running 2 tests", "test a ... ok"], SIGABRT);
        assert_eq!(o.failed_count(), 1);
        assert!(o.crash.as_deref().unwrap().contains("signal 6"), "{:?}", o.crash);
        // A summary saying all passed, but a failing exit (e.g. a panic in a destructor).
        let o = read(&["test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s"], EXIT_101);
        assert_eq!((o.passed, o.failed_count()), (2, 1));
    }

    #[test]
    fn only_summary_lines_at_the_start_count_and_the_last_wins() {
        let o = read(
            &[
                "my output: test result: ok. 99 passed; 0 failed;",
                "test result: ok. 7 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s",
                "test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s",
            ],
            OK,
        );
        assert_eq!((o.passed, o.failed_count()), (2, 0));
    }

    #[test]
    fn report_totals_and_closing_line() {
        let mut r = Report::default();
        r.add("a", read(&["test x ... ignored", "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0s"], OK));
        r.add("b", read(&["test y ... ok"], SIGABRT));
        r.stage_failures.push("e2e build".into());
        assert_eq!((r.passed(), r.failed(), r.ignored(), r.success()), (3, 2, 1, false));
        let text = r.to_string();
        assert!(text.ends_with("\n3 passed, 2 failed, 1 skipped"), "{text}");
        assert!(text.contains("b: 0 passed, 0 failed, 0 ignored: CRASHED"), "{text}");
        assert!(text.contains("    ignored: x"), "{text}");
    }

    #[test]
    fn artifacts_name_their_package_and_target() {
        let line = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/tests#wsfwd-tests@0.1.0","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["test"],"name":"t1"},"profile":{"test":true},"executable":"/w/target/debug/deps/t1-abc"}"#;
        let b = parse_artifact(line).unwrap().unwrap();
        assert_eq!((b.name.as_str(), b.dir.to_str().unwrap()), ("wsfwd-tests/test t1", "/w/tests"));
        let same = line.replace("tests#wsfwd-tests@0.1.0", "tests#0.1.0");
        assert_eq!(parse_artifact(&same).unwrap().unwrap().package, "tests");
        let only_t1 = Selection { packages: vec![], targets: vec![("test".into(), "t1".into())] };
        assert!(only_t1.selects(&b));
        assert!(!Selection { packages: vec!["wsfwd".into()], targets: vec![] }.selects(&b));
        assert!(Selection::default().selects(&b));
        let lib = r#"{"reason":"compiler-artifact","manifest_path":"/w/x/Cargo.toml","target":{"kind":["lib"],"name":"x"},"profile":{"test":false},"executable":null}"#;
        assert!(parse_artifact(lib).unwrap().is_none());
        assert!(parse_artifact(r#"{"reason":"build-finished","success":true}"#).unwrap().is_none());
    }
}
