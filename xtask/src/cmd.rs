//! Running external commands, and the few facts about the process the other modules need
//! (are we root, where does cargo install binaries).
//!
//! Every failure names the full command line, so an error message can be pasted into a shell.

use std::{
    ffi::OsStr,
    fmt::Write as _,
    path::PathBuf,
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The command line of `cmd` as a shell would read it, with its environment overrides first.
pub fn display(cmd: &Command) -> String {
    let mut out = String::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            let _ = write!(out, "{}={} ", key.to_string_lossy(), quote(value));
        }
    }
    out.push_str(&quote(cmd.get_program()));
    for arg in cmd.get_args() {
        out.push(' ');
        out.push_str(&quote(arg));
    }
    out
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=+,@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Describes how a command ended, e.g. "exit status 101" or "killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// The exit code a shell would report for `status` (128 + signal when killed).
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    u8::try_from(code).unwrap_or(1)
}

/// Runs `cmd` with inherited stdio and returns its status; fails only if it cannot be started.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("could not start `{}`", display(cmd)))
}

/// Runs `cmd` with inherited stdio; fails, naming the command line, unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({})", display(cmd), describe(status));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails, naming the command line and quoting its stderr,
/// unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`{}` failed ({}){}{}",
            display(cmd),
            describe(out.status),
            if stderr.trim().is_empty() { "" } else { ":\n" },
            stderr.trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this process runs with effective user id 0 (read from /proc, so no libc needed).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                // Real, effective, saved, filesystem: the second is the effective uid.
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Whether we run under CI (the `CI` variable is set and not empty).
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|ci| !ci.is_empty())
}

/// A command that runs `program` as root: directly if we are root, else through `sudo -E`.
///
/// sudo resets PATH (secure_path) even with `-E`, so PATH and the rustup/cargo homes are passed
/// explicitly through `env`; that keeps `cargo`, `rustup` and `bpf-linker` resolvable as root.
pub fn as_root(program: impl AsRef<OsStr>) -> Command {
    if is_root() {
        return Command::new(program);
    }
    let mut cmd = Command::new("sudo");
    cmd.args(["-E", "env"]);
    if let Some(path) = std::env::var_os("PATH") {
        let mut assignment = std::ffi::OsString::from("PATH=");
        assignment.push(path);
        cmd.arg(assignment);
    }
    for (key, dir) in [("CARGO_HOME", cargo_home()), ("RUSTUP_HOME", rustup_home())] {
        if let Some(dir) = dir {
            let mut assignment = std::ffi::OsString::from(format!("{key}="));
            assignment.push(dir);
            cmd.arg(assignment);
        }
    }
    cmd.arg(program);
    cmd
}

/// `$CARGO_HOME`, else `~/.cargo`.
pub fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| home().map(|home| home.join(".cargo")))
}

/// `$RUSTUP_HOME`, else `~/.rustup`.
fn rustup_home() -> Option<PathBuf> {
    std::env::var_os("RUSTUP_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| home().map(|home| home.join(".rustup")))
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
}

/// Puts `~/.cargo/bin` first on this process's PATH, so that every command we spawn finds
/// `cargo`, `rustup` and a freshly installed `bpf-linker`. Call before starting any thread.
pub fn prepend_cargo_bin_to_path() {
    let Some(bin) = cargo_home().map(|home| home.join("bin")) else {
        return;
    };
    let current = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&current).collect();
    if dirs.first() == Some(&bin) {
        return;
    }
    dirs.retain(|dir| dir != &bin);
    dirs.insert(0, bin);
    if let Ok(path) = std::env::join_paths(dirs) {
        // SAFETY: called at the start of main, before this process starts any thread.
        unsafe { std::env::set_var("PATH", path) };
    }
}
