//! `cargo xtask bench`: wsfwd side by side with the direct path, iptables,
//! nftables, nginx and HAProxy, on WebSocket workloads, in one run. Writes
//! BENCHMARKS.md, the raw results as JSON and a PNG chart.
use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use wsfwd_tests::bench::{
    report,
    run::{Sizes, run_all},
};

#[derive(Parser)]
#[command(name = "wsfwd-bench")]
struct Args {
    /// Smaller workloads: everything in under five minutes.
    #[arg(long)]
    short: bool,
    /// Where BENCHMARKS.md, bench-results.json and bench-chart.png go.
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// The command line to record in the report (set by `cargo xtask bench`).
    #[arg(long, value_name = "CMD", default_value = "cargo xtask bench")]
    command: String,
    /// Run one section only and print it, writing no report ("reload").
    #[arg(long, value_name = "SECTION")]
    only: Option<String>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let sizes = if args.short { Sizes::SHORT } else { Sizes::FULL };
    match args.only.as_deref() {
        None => {}
        Some("reload") => {
            return match wsfwd_tests::bench::run::run_reload(sizes).await {
                Ok(r) => {
                    let results = wsfwd_tests::bench::results::Results { reload: Some(r), ..Default::default() };
                    println!("{}", report::reload_section(&results));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("reload benchmark failed: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(other) => {
            eprintln!("--only {other}: the sections that run alone are: reload");
            return ExitCode::from(2);
        }
    }
    let results = match run_all(sizes, args.short, args.command.clone()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("benchmark failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let write = || -> anyhow::Result<()> {
        std::fs::create_dir_all(&args.out)?;
        std::fs::write(args.out.join("bench-results.json"), serde_json::to_string_pretty(&results)?)?;
        std::fs::write(args.out.join("BENCHMARKS.md"), report::markdown(&results))?;
        report::chart(&results, &args.out.join("bench-chart.png"))?;
        Ok(())
    };
    println!("{}", report::table(&results));
    if let Err(e) = write() {
        eprintln!("writing the report: {e:#}");
        return ExitCode::FAILURE;
    }
    println!("wrote {}/BENCHMARKS.md, bench-results.json, bench-chart.png", args.out.display());
    ExitCode::SUCCESS
}
