//! Compiles wsfwd-ebpf for the BPF target so the agent can embed the object.
use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    // aya-build watches the eBPF crate; the programs also compile the shared
    // ABI, hash and TCP tracker, so a change there must rebuild them too.
    let common = PathBuf::from(&manifest_dir).join("../wsfwd-common");
    println!("cargo:rerun-if-changed={}", common.display());
    // Features of the eBPF crate, comma-separated (`build-variant`: see the
    // live-operation tests, which start a different build over a running one).
    println!("cargo:rerun-if-env-changed=WSFWD_EBPF_FEATURES");
    let features: Vec<String> = std::env::var("WSFWD_EBPF_FEATURES")
        .unwrap_or_default()
        .split(',')
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect();
    let features: Vec<&str> = features.iter().map(String::as_str).collect();
    let root = PathBuf::from(manifest_dir).join("../wsfwd-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "wsfwd-ebpf",
            root_dir: root,
            no_default_features: false,
            features: &features,
        }],
        Toolchain::default(),
    )
}
