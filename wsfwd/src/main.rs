//! wsfwd: an eBPF L4 forwarder that puts WebSocket (or any TCP/UDP) services
//! behind a virtual IP with client-IP affinity.
mod check;
mod config;
mod maglev;
mod model;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// Exit code for a configuration that was rejected (clap also uses 2 for bad usage).
const EXIT_BAD_CONFIG: u8 = 2;

/// eBPF L4 forwarder: a virtual IP:port (a Service's externalIPs, or a NodePort)
/// DNATed in the kernel to pod or node endpoints, with client-IP affinity by
/// consistent (Maglev) hashing. The TCP stream, and so a WebSocket upgrade,
/// passes through untouched.
///
/// Configuration is the Kubernetes YAML you already have: v1 Service plus
/// discovery.k8s.io/v1 EndpointSlice (or v1 Endpoints), several documents in
/// one file. wsfwd serves each Service's externalIPs and, for NodePort and
/// LoadBalancer Services, their nodePorts. ClusterIPs are not served: kube-proxy
/// keeps them.
#[derive(Parser)]
#[command(name = "wsfwd", version, propagate_version = true)]
struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file and print the plan the datapath would get.
    ///
    /// Needs no privileges and touches no kernel state: run it before deploying.
    /// Exits 2 when the file is rejected, naming each bad document and field.
    Check {
        /// Multi-document YAML file of Services and EndpointSlices/Endpoints.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print the plan as JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Seed of the flow hash; every node of a deployment must use the same one.
        #[arg(long, value_name = "N", default_value_t = wsfwd_common::DEFAULT_HASH_SEED)]
        hash_seed: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .parse_filters(&cli.log_level)
        .parse_env("RUST_LOG")
        .format_target(false)
        .init();
    match cli.command {
        Command::Check { config, json, hash_seed } => check(&config, json, hash_seed),
    }
}

fn check(path: &std::path::Path, json: bool, seed: u32) -> ExitCode {
    let config = match config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!("{}: rejected ({} error(s)); nothing applied", path.display(), errors.0.len());
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    config.notes.log();
    let plan = check::plan(&config.services, seed);
    if json {
        match serde_json::to_string_pretty(&plan) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: cannot encode the plan as JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", check::render(&plan));
    }
    ExitCode::SUCCESS
}
