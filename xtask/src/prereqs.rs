//! Makes sure a fresh Debian 12 machine can build and test wsfwd, idempotently.
//!
//! When everything is present this prints one line ("prerequisites ok") and takes well under
//! two seconds; it only talks when it installs something or something is wrong. It never
//! installs a Rust toolchain: the `nightly` one must already be there, with LLVM 22.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// Debian packages the build, the tests and the demo need.
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "ethtool",
    "bpftool",
    "tcpdump",
    "python3-websockets",
    "iptables",
    "nftables",
    "procps",
    // The benchmark chart's font; its unit test draws one.
    "fonts-dejavu-core",
];

/// The LLVM major version bpf-linker is built against; nightly's must match it.
const LLVM_MAJOR: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// llvm-sys 221.x (LLVM 22.1) reads its LLVM location from this variable.
const LLVM_SYS_PREFIX_VAR: &str = "LLVM_SYS_221_PREFIX";

/// Runs every check in order, installing what is missing; the first failure names its step.
pub fn check() -> Result<()> {
    debian_packages().context("prerequisites: Debian packages")?;
    nightly_toolchain().context("prerequisites: nightly Rust toolchain")?;
    rust_src().context("prerequisites: rust-src for nightly")?;
    bpf_linker().context("prerequisites: bpf-linker")?;
    println!("prerequisites ok");
    Ok(())
}

/// Step 1: Debian packages, installed with apt-get when missing.
fn debian_packages() -> Result<()> {
    ensure_debian_packages(DEBIAN_PACKAGES)
}

/// Installs those of `packages` that are missing (quietly does nothing when none is).
pub fn ensure_debian_packages(packages: &[&'static str]) -> Result<()> {
    let missing = missing_debian_packages(packages)?;
    if missing.is_empty() {
        return Ok(());
    }
    println!("installing Debian packages: {}", missing.join(" "));
    let apt_get = || {
        let mut cmd = if cmd::is_root() {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("DEBIAN_FRONTEND=noninteractive").arg("apt-get");
            sudo
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    let hint = "run as root (or with working sudo) on Debian 12 with network access, \
                and an apt source that provides llvm-22-dev";
    cmd::run(apt_get().args(["update", "-q"]).args(["-o", "DPkg::Lock::Timeout=300"]))
        .with_context(|| format!("apt-get update failed; {hint}"))?;
    cmd::run(
        apt_get()
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .args(&missing),
    )
    .with_context(|| format!("installing {} failed; {hint}", missing.join(" ")))?;

    let still_missing = missing_debian_packages(packages)?;
    if !still_missing.is_empty() {
        bail!("apt-get succeeded but these are still not installed: {}", still_missing.join(" "));
    }
    Ok(())
}

/// The packages of `packages` that dpkg does not report as "install ok installed".
fn missing_debian_packages(packages: &[&'static str]) -> Result<Vec<&'static str>> {
    // One dpkg-query for all packages. It exits non-zero when some package is unknown to dpkg
    // but still lists the others, so read stdout whatever the status.
    let mut cmd = Command::new("dpkg-query");
    cmd.args(["-W", "-f=${Package} ${Status}\\n"]).args(packages);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{}`; is this Debian?", cmd::display(&cmd)))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, status)| status.trim() == "install ok installed")
        .map(|(package, _)| package.split(':').next().unwrap_or(package))
        .collect();
    Ok(packages
        .iter()
        .copied()
        .filter(|package| !installed.contains(package))
        .collect())
}

/// Step 2: the `nightly` toolchain exists (we never install one) and uses LLVM 22.
fn nightly_toolchain() -> Result<()> {
    const INSTALL: &str = "rustup toolchain install nightly --component rust-src";
    let list = cmd::output(Command::new("rustup").args(["toolchain", "list"])).with_context(
        || format!("rustup is needed (https://rustup.rs); then run `{INSTALL}`"),
    )?;
    // `nightly-<host>`, not a dated `nightly-YYYY-MM-DD-<host>`: `+nightly` means the former.
    let has_nightly = list.lines().any(|line| {
        let name = line.split_whitespace().next().unwrap_or("");
        name == "nightly"
            || name
                .strip_prefix("nightly-")
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    });
    if !has_nightly {
        bail!(
            "no `nightly` toolchain is installed (eBPF needs nightly with rust-src); \
             run `{INSTALL}`"
        );
    }

    let version = cmd::output(Command::new("rustc").args(["+nightly", "-vV"]))
        .with_context(|| format!("the nightly rustc does not run; reinstall it with `{INSTALL}`"))?;
    let llvm = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .map(str::trim)
        .unwrap_or("unknown");
    if llvm.split('.').next() != Some(LLVM_MAJOR) {
        bail!(
            "nightly rustc uses LLVM {llvm}, but this project needs LLVM {LLVM_MAJOR}.x: \
             bpf-linker must be built against the same LLVM major as nightly's rustc, and the \
             build here uses Debian's llvm-{LLVM_MAJOR}-dev. Install a nightly whose \
             `rustc +nightly -vV` reports `LLVM version: {LLVM_MAJOR}.`"
        );
    }
    Ok(())
}

/// Step 3: the rust-src component for nightly (needed by `-Z build-std=core`).
fn rust_src() -> Result<()> {
    let installed =
        cmd::output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if installed.lines().any(|line| line.trim().starts_with("rust-src")) {
        return Ok(());
    }
    println!("adding rust-src to the nightly toolchain");
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("check network access and that rustup can write its home directory")
}

/// Step 4: bpf-linker 0.13.0 built against LLVM 22, built with cargo install when missing.
fn bpf_linker() -> Result<()> {
    if bpf_linker_version().as_deref() == Some(BPF_LINKER_VERSION) {
        return Ok(());
    }
    println!("building bpf-linker for LLVM {LLVM_MAJOR} (about two minutes)");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(format!("{LLVM_PREFIX}/bin").into()).chain(std::env::split_paths(&path)),
    )
    .context("PATH contains a directory name with ':' in it")?;
    let mut install = Command::new("cargo");
    install
        .args(["install", "bpf-linker", "--locked", "--force"])
        .args(["--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", &format!("llvm-{LLVM_MAJOR}")])
        .env("PATH", path)
        .env(LLVM_SYS_PREFIX_VAR, LLVM_PREFIX);
    cmd::run(&mut install).with_context(|| {
        format!(
            "needs llvm-{LLVM_MAJOR}-dev and libpolly-{LLVM_MAJOR}-dev (step 1), network access, \
             and about two minutes"
        )
    })?;
    match bpf_linker_version() {
        Some(version) if version == BPF_LINKER_VERSION => Ok(()),
        found => bail!(
            "installed bpf-linker {BPF_LINKER_VERSION}, but the `bpf-linker` first on PATH \
             reports {}; remove the other copy or put ~/.cargo/bin first on PATH",
            found.as_deref().unwrap_or("nothing")
        ),
    }
}

/// The version `bpf-linker --version` reports, or None if it is missing or says nothing useful.
fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    // "bpf-linker 0.13.0"
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
}
