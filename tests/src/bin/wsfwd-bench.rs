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
    /// Per-packet cost of each program next to a verdict-only program of
    /// the same hook (1 and 10,000 services, 1,000,000 flows), instead of
    /// the workloads; writes bench-micro.md and bench-micro.json.
    #[arg(long)]
    micro: bool,
    /// With `--micro`: how many established flows are tracked while timing
    /// (fewer set up faster, for a quick look; the report says how many).
    #[arg(long, value_name = "N", default_value_t = wsfwd_tests::bench::micro::FLOWS, requires = "micro")]
    flows: usize,
    /// Run one section only and print it, writing no report: "reload";
    /// "bulk" or "echo" (latency and highest rate): direct, wsfwd and
    /// iptables, three rounds interleaved (one with --short).
    #[arg(long, value_name = "SECTION")]
    only: Option<String>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let sizes = if args.short { Sizes::SHORT } else { Sizes::FULL };
    if args.micro {
        return micro(&args);
    }
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
        Some("bulk") => {
            return match wsfwd_tests::bench::run::run_bulk(sizes, if args.short { 1 } else { 3 }) {
                Ok(rows) => {
                    println!("| contender | 1 stream Gbit/s | 4 streams Gbit/s | programs ms/s | agent ms/s |\n| --- | ---: | ---: | ---: | ---: |");
                    let ms = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1}"));
                    for r in rows {
                        println!(
                            "| {} | {:.1} | {:.1} | {} | {} |",
                            r.name,
                            r.bulk.one_stream_gbps,
                            r.bulk.four_streams_gbps,
                            ms(r.bpf_ms_per_s),
                            ms(r.agent_ms_per_s)
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bulk benchmark failed: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Some("echo") => {
            return match wsfwd_tests::bench::run::run_echo(sizes, if args.short { 1 } else { 3 }).await {
                Ok(rows) => {
                    println!("| contender | 64 B p99 µs | 16 KiB p99 µs | highest rate msgs/s | programs ns/packet |\n| --- | ---: | ---: | ---: | ---: |");
                    for r in rows {
                        let at = |size: usize| r.echo.iter().find(|e| e.message_bytes == size);
                        let p99 = |size: usize| at(size).map_or("–".to_owned(), |e| format!("{:.0}", e.p99_us));
                        let bpf = at(64).and_then(|e| e.bpf_ns_per_packet).map_or("–".to_owned(), |v| format!("{v:.0}"));
                        let rate = r.max_rate.map_or("–".to_owned(), |v| v.to_string());
                        println!("| {} | {} | {} | {rate} | {bpf} |", r.name, p99(64), p99(16 * 1024));
                        for e in &r.errors {
                            eprintln!("{}: {e}", r.name);
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("echo benchmark failed: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(other) => {
            eprintln!("--only {other}: the sections that run alone are: reload, bulk, echo");
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

fn micro(args: &Args) -> ExitCode {
    let samples = if args.short { 2_000 } else { 20_000 };
    let mut rows = Vec::new();
    for services in [1, 10_000] {
        eprintln!("timing the programs with {services} services and {} flows...", args.flows);
        match wsfwd_tests::bench::micro::measure(services, args.flows, samples) {
            Ok(r) => rows.extend(r),
            Err(e) => {
                eprintln!("micro benchmark failed: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    let table = wsfwd_tests::bench::micro::table(&rows);
    let machine = wsfwd_tests::bench::run::machine();
    println!("{table}");
    let md = format!(
        "# Per-packet cost\n\n`{}` on {} ({} cores), kernel {}. Each packet is one `BPF_PROG_TEST_RUN` (repeat 1, so \
         every sample starts from the original frame), timed by the kernel; {samples} packets per row. \
         The verdict-only program of the same hook runs the same frames in the same run; its time is \
         mostly the test run's own. \"established\" and \"reply\" rows pick a different one of the \
         tracked flows for each packet (their entries mostly out of cache); \"one flow\" rows send \
         the same flow's packet every time. The two \"reference\" rows time a program that does \
         nothing but look the packet's addresses and ports up in an LRU map of the conntrack's shape \
         and size holding as many flows: what one flow-table access costs on this machine, for a \
         different flow each time and for the same one.\n\n{table}",
        args.command,
        machine.cpu,
        machine.cores,
        machine.kernel,
    );
    let write = || -> anyhow::Result<()> {
        std::fs::write(args.out.join("bench-micro.md"), md)?;
        std::fs::write(args.out.join("bench-micro.json"), serde_json::to_string_pretty(&rows)?)?;
        Ok(())
    };
    match write() {
        Ok(()) => {
            println!("wrote {}/bench-micro.md, bench-micro.json", args.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("writing the report: {e:#}");
            ExitCode::FAILURE
        }
    }
}
