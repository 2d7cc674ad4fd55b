//! `cargo xtask`: build, run, test and demo wsfwd. Each subcommand's work lives in a module;
//! this file only parses the command line and dispatches.

mod bench;
mod cargo;
mod cmd;
mod demo;
mod image;
mod prereqs;
mod test;
mod testrun;
mod vm;

use std::{ffi::OsString, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::cargo::Profile;

/// Developer tasks for the wsfwd workspace.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the eBPF crate alone, to see its compile errors quickly.
    ///
    /// Runs `cargo +nightly build --locked -Z build-std=core --target bpfel-unknown-none
    /// -p wsfwd-ebpf --release` with the flags aya-build uses. `cargo xtask build` compiles
    /// the same programs through the agent's build script, where errors are harder to read.
    BuildEbpf,

    /// Build the agent (its build script compiles and embeds the eBPF programs).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },

    /// Build the agent and run it as root (through `sudo -E` unless already root).
    ///
    /// Example: `cargo xtask run -- --help`. The agent's exit code becomes ours.
    Run {
        /// Build and run the release binary.
        #[arg(long)]
        release: bool,
        /// Arguments for the agent (put them after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "AGENT_ARGS")]
        args: Vec<OsString>,
    },

    /// Check that this (Debian 12) machine has everything needed; install what is missing.
    ///
    /// Debian packages (apt-get), rust-src for the installed nightly toolchain, and bpf-linker
    /// 0.13.0 built for LLVM 22. It never installs a toolchain: `nightly` must exist and use
    /// LLVM 22. Prints only "prerequisites ok" when nothing is missing.
    CheckPrereqs,

    /// Run all tests: unit and CLI tests, then the end-to-end tests one at a time as root.
    ///
    /// Checks prerequisites first. Both stages always run, and every test binary is run and
    /// accounted for: a binary that crashes counts as a failure, ignored tests are listed.
    /// After `--`: cargo options select binaries (`--test t1`, `-p wsfwd`), a bare word is a
    /// test name filter, and what follows a second `--` goes to every test binary, e.g.
    /// `cargo xtask test -- --test t1 affinity -- --nocapture`. The last line is
    /// `N passed, N failed, N skipped`; the exit status is non-zero if anything failed.
    Test {
        /// Extra `cargo test` arguments (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "CARGO_TEST_ARGS")]
        args: Vec<OsString>,
    },

    /// Show wsfwd at work on the seed's scenario, in network namespaces (needs root).
    ///
    /// Checks prerequisites, builds, prints `wsfwd check` of fixtures/seed-demo.yaml, then runs
    /// a client with 16 addresses against three WebSocket backends through the VIP and the
    /// NodePort, printing where each client landed and whether affinity held. Cleans up after.
    Demo,

    /// Benchmark wsfwd against the direct path, iptables, nftables, nginx and HAProxy.
    ///
    /// Installs the contenders from Debian packages, builds in release mode and runs every
    /// workload in network namespaces (as root): WebSocket echo at a fixed rate, the highest
    /// rate with p99 under 10 ms, connection rate, bulk TCP, memory with idle connections, and
    /// scale with 1, 1,000 and 10,000 services. Writes BENCHMARKS.md, bench-results.json and
    /// bench-chart.png. `--short` finishes in under five minutes. `--micro` instead times each
    /// program per packet next to a verdict-only program of the same hook (1 and 10,000
    /// services, 1,000,000 flows) and writes bench-micro.md and bench-micro.json.
    Bench {
        /// Arguments for the bench, e.g. `--short` or `--micro`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "BENCH_ARGS")]
        args: Vec<OsString>,
    },

    /// Build the container image (the `Containerfile`): the agent linked statically, on
    /// `scratch`, with buildah (installed from Debian if missing; needs root).
    ///
    /// Tags it `localhost/wsfwd:VERSION`, saves it as `target/wsfwd-image-VERSION.tar` (an OCI
    /// archive, for `ctr -n k8s.io images import` on nodes), and checks it: the image holds
    /// only `/wsfwd`, which runs chrooted in the image's own filesystem.
    Image,

    /// Run a command inside a VM on Debian 12's kernel (6.1), under qemu's software emulation.
    ///
    /// The kernel comes from Debian's linux-image-6.1.0-*-amd64 package, unpacked under
    /// target/vm (never installed); the guest's root is this machine's tree shared read-only
    /// over 9p, with tmpfs on /tmp and /run and bpffs mounted, so built binaries run as they
    /// are. The command runs as root in the current directory; its exit status becomes ours.
    /// Example: `cargo xtask vm -- target/debug/wsfwd --version`.
    Vm {
        /// The guest kernel: debian-6.1.
        #[arg(long, default_value = "debian-6.1")]
        kernel: String,
        /// The command (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
        command: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    // Before anything else (and before any thread exists): spawned commands must find cargo,
    // rustup and bpf-linker in ~/.cargo/bin.
    cmd::prepend_cargo_bin_to_path();

    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Cmd) -> Result<ExitCode> {
    match command {
        Cmd::BuildEbpf => cargo::build_ebpf().map(|()| ExitCode::SUCCESS),
        Cmd::Build { release } => {
            let binary = cargo::build_agent(Profile::new(release))?;
            println!("built {}", binary.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { release, args } => cargo::run_agent(Profile::new(release), &args),
        Cmd::CheckPrereqs => prereqs::check().map(|()| ExitCode::SUCCESS),
        Cmd::Test { args } => test::test(&args),
        Cmd::Demo => demo::demo().map(|()| ExitCode::SUCCESS),
        Cmd::Bench { args } => bench::bench(&args),
        Cmd::Image => image::image().map(|()| ExitCode::SUCCESS),
        Cmd::Vm { kernel, command } => vm::vm(&kernel, &command),
    }
}
