//! `cargo xtask image`: the agent as a static binary on `scratch` (the
//! repository's `Containerfile`), built with buildah from Debian. Nothing is
//! pulled: the base is empty. The image is checked by running its binary in
//! a chroot of the image's own filesystem, where nothing else exists.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{cargo, cmd, prereqs};

/// The host target, named so the static-linking flag applies to it alone
/// (not to the eBPF programs the build script compiles).
const TARGET: &str = "x86_64-unknown-linux-gnu";

pub fn image() -> Result<()> {
    ensure!(std::env::consts::ARCH == "x86_64", "the image is built for x86_64 hosts only");
    prereqs::check()?;
    prereqs::ensure_debian_packages(&["buildah"])?;
    let binary = static_agent()?;
    let version = env!("CARGO_PKG_VERSION");
    let tag = format!("localhost/wsfwd:{version}");
    let context = cargo::target_dir().join("image");
    std::fs::create_dir_all(&context)?;
    std::fs::copy(&binary, context.join("wsfwd")).context("staging the binary")?;
    let containerfile = cargo::workspace_root().join("Containerfile");
    // vfs and chroot isolation: no overlay mounts or user namespaces needed.
    let buildah = |args: &[&str]| {
        let mut c = cmd::as_root("buildah");
        c.args(["--storage-driver", "vfs"]).args(args);
        c
    };
    cmd::run(buildah(&["build", "--isolation", "chroot", "--layers=false", "-t", &tag, "-f"]).arg(&containerfile).arg(&context))
        .context("buildah build")?;
    let archive = cargo::target_dir().join(format!("wsfwd-image-{version}.tar"));
    let _ = std::fs::remove_file(&archive);
    cmd::run(buildah(&["push", &tag]).arg(format!("oci-archive:{}:{tag}", archive.display()))).context("saving the image")?;
    check(&archive, version)?;
    println!("built {tag}, saved as {}", archive.display());
    println!("on a node: ctr -n k8s.io images import {}", archive.display());
    Ok(())
}

/// The agent linked statically (glibc's static libraries), release profile.
fn static_agent() -> Result<PathBuf> {
    let mut c = cargo::cargo("build");
    c.args(["--locked", "--release", "--package", "wsfwd", "--target", TARGET])
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", "-C target-feature=+crt-static");
    cmd::run(&mut c).context("building the static agent")?;
    let binary = cargo::target_dir().join(TARGET).join("release").join("wsfwd");
    ensure!(!has_interpreter(&std::fs::read(&binary)?), "{} is not static: it names a program interpreter", binary.display());
    Ok(binary)
}

/// Whether an ELF64 file has a PT_INTERP program header (a dynamic loader).
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |o: usize| elf.get(o..o + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize);
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| elf.get(phoff + i * phentsize..phoff + i * phentsize + 4) == Some(&3u32.to_le_bytes()[..]))
}

/// Unpacks the archive's one layer and runs `/wsfwd --version` chrooted in it.
fn check(archive: &Path, version: &str) -> Result<()> {
    let dir = cargo::target_dir().join("image-check");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("oci"))?;
    cmd::run(std::process::Command::new("tar").arg("-xf").arg(archive).arg("-C").arg(dir.join("oci")))?;
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("oci/index.json"))?)?;
    let blob = |digest: &str| dir.join("oci/blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let manifest_digest = index["manifests"][0]["digest"].as_str().context("no manifest in the archive")?;
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(manifest_digest))?)?;
    let layers = manifest["layers"].as_array().context("no layers")?;
    ensure!(layers.len() == 1, "expected one layer (the binary), found {}", layers.len());
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let layer = blob(layers[0]["digest"].as_str().context("layer digest")?);
    cmd::run(std::process::Command::new("tar").arg("-xf").arg(&layer).arg("-C").arg(&rootfs))?;
    let entries: Vec<String> = std::fs::read_dir(&rootfs)?.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned())).collect::<Result<_, _>>()?;
    ensure!(entries == ["wsfwd"], "the image holds {entries:?}, not just /wsfwd");
    let out = cmd::output(cmd::as_root("chroot").arg(&rootfs).args(["/wsfwd", "--version"]))?;
    if !out.contains(version) {
        bail!("/wsfwd --version in the image printed {out:?}");
    }
    println!("checked: the image holds /wsfwd only, and it runs there alone ({})", out.trim());
    Ok(())
}
