//! The benchmark run: one T1 topology, every contender in turn on the same
//! client and backends, every workload, then the scale runs.
use std::{process::Command, time::Duration};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};

use super::{
    contenders::{self, ALL, Kind, Running},
    load,
    results::{Bulk, ConnRate, Contender, Echo, Machine, Memory, Results, Scale},
};
use crate::{
    client,
    sys::{Proc, run},
    topo::{Spec, Topo},
};

/// Sizes of the workloads: the full run, or `--short` (under five minutes).
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub connections: usize,
    pub rate: u32,
    pub warmup: Duration,
    pub echo_time: Duration,
    pub max_rates: &'static [u32],
    pub max_rate_time: Duration,
    pub churn_workers: usize,
    pub churn_time: Duration,
    pub bulk_seconds: u32,
    pub idle_connections: usize,
    pub scale_services: &'static [usize],
    pub scale_time: Duration,
    /// Reloads timed with a small file, and during the echo run.
    pub reload_changes: usize,
    /// The big file's services, and the changes timed in it.
    pub reload_big_services: usize,
    pub reload_big_changes: usize,
}

impl Sizes {
    pub const FULL: Sizes = Sizes {
        connections: 1000,
        rate: 10_000,
        warmup: Duration::from_secs(3),
        echo_time: Duration::from_secs(15),
        max_rates: &[2_500, 5_000, 10_000, 20_000, 40_000, 80_000],
        max_rate_time: Duration::from_secs(6),
        churn_workers: 32,
        churn_time: Duration::from_secs(10),
        bulk_seconds: 10,
        idle_connections: 10_000,
        scale_services: &[1, 1000, 10_000],
        scale_time: Duration::from_secs(8),
        reload_changes: 100,
        reload_big_services: 10_000,
        reload_big_changes: 20,
    };
    pub const SHORT: Sizes = Sizes {
        connections: 200,
        rate: 2000,
        warmup: Duration::from_secs(1),
        echo_time: Duration::from_secs(3),
        max_rates: &[2_500, 5_000, 10_000, 20_000],
        max_rate_time: Duration::from_secs(2),
        churn_workers: 16,
        churn_time: Duration::from_secs(2),
        bulk_seconds: 2,
        idle_connections: 2000,
        scale_services: &[1, 1000, 10_000],
        scale_time: Duration::from_secs(2),
        reload_changes: 20,
        reload_big_services: 10_000,
        reload_big_changes: 5,
    };
}

/// The highest rate a contender holds: up the coarse steps until one fails,
/// then halving the gap between the last held and the first failed until it
/// is within `RESOLUTION` of the held one. Coarse steps alone ended most
/// contenders on the same step, where the load generator's own limit lies,
/// hiding what the forwarders cost.
#[derive(Debug)]
pub struct RateSearch {
    steps: &'static [u32],
    next_step: usize,
    held: Option<u32>,
    failed: Option<u32>,
}

/// Bisection stops when the gap is below this share of the held rate.
const RESOLUTION: f64 = 0.05;

impl RateSearch {
    pub fn new(steps: &'static [u32]) -> Self {
        Self { steps, next_step: 0, held: None, failed: None }
    }

    /// The next rate to try, if any.
    pub fn next(&self) -> Option<u32> {
        match (self.held, self.failed) {
            (_, None) => self.steps.get(self.next_step).copied(),
            (None, Some(_)) => None,
            (Some(lo), Some(hi)) => {
                let mid = (lo + (hi - lo) / 2) / 100 * 100;
                (f64::from(hi - lo) > f64::from(lo) * RESOLUTION && mid > lo).then_some(mid)
            }
        }
    }

    pub fn record(&mut self, rate: u32, held: bool) {
        if self.failed.is_none() {
            self.next_step += 1;
        }
        if held {
            self.held = Some(rate);
        } else {
            self.failed = Some(rate);
        }
    }

    pub fn best(&self) -> Option<u32> {
        self.held
    }
}

const MESSAGE_SIZES: [usize; 2] = [64, 16 * 1024];
const MAX_P99_US: u64 = 10_000;

pub struct Bench {
    pub t: Topo,
    pub sizes: Sizes,
    pub progress: ProgressBar,
    _peers: Vec<Proc>,
}

fn echo_server() -> std::path::PathBuf {
    let bench = std::env::current_exe().unwrap_or_default();
    bench.with_file_name("wsfwd-echo")
}

impl Bench {
    pub fn new(sizes: Sizes, steps: u64) -> anyhow::Result<Self> {
        raise_fd_limit();
        let t = Topo::new("bench", Spec { clients: 64, ..Spec::T1 })?;
        // The direct path: the client routes to the backends through the node.
        t.client.ip(&["route", "add", "10.244.0.0/16", "via", &t.node_addr.to_string()])?;
        let mut peers = Vec::new();
        for b in &t.backends {
            let mut p = Proc::spawn(b.ns.command(&echo_server().display().to_string()).args([&b.name, "9080"]), &t.dir.join(format!("{}-echo.log", b.name)))?;
            p.wait_for_line("listening", Duration::from_secs(10))?;
            peers.push(p);
        }
        let mut iperf = Proc::spawn(t.backends[0].ns.command("iperf3").args(["-s", "-p", "5201", "--forceflush"]), &t.dir.join("iperf3.log"))?;
        iperf.wait_for_line("Server listening", Duration::from_secs(10))?;
        peers.push(iperf);
        let progress = ProgressBar::new(steps);
        progress.set_style(
            ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Ok(Self { t, sizes, progress, _peers: peers })
    }

    fn step(&self, what: &str) {
        self.progress.set_message(what.to_owned());
    }

    fn done(&self) {
        self.progress.inc(1);
    }

    pub async fn contender(&self, kind: Kind) -> Contender {
        let mut c = Contender { name: kind.name().into(), ..Contender::default() };
        self.step(&format!("{}: setting up", kind.name()));
        let running = match contenders::start(kind, &self.t, 0) {
            Ok(r) => r,
            Err(e) => {
                c.errors.push(format!("setup: {e:#}"));
                self.progress.inc(5);
                return c;
            }
        };
        for size in MESSAGE_SIZES {
            self.step(&format!("{}: echo {size} B at {}/s", kind.name(), self.sizes.rate));
            match self.echo(kind, size, self.sizes.rate, self.sizes.echo_time).await {
                Ok(e) => c.echo.push(e),
                Err(e) => c.errors.push(format!("echo {size} B: {e:#}")),
            }
        }
        self.done();
        self.step(&format!("{}: highest rate with p99 < 10 ms", kind.name()));
        c.max_rate = self.max_rate(kind).await;
        self.done();
        self.step(&format!("{}: connection rate", kind.name()));
        c.conn_rate = Some(self.churn(kind).await);
        self.done();
        if kind == Kind::NginxHttp {
            c.not_applicable.push("bulk TCP: an HTTP proxy does not carry raw TCP streams".into());
        } else {
            self.step(&format!("{}: bulk TCP", kind.name()));
            match self.bulk(kind) {
                Ok(b) => c.bulk = Some(b),
                Err(e) => c.errors.push(format!("bulk: {e:#}")),
            }
        }
        self.done();
        self.step(&format!("{}: {} idle connections", kind.name(), self.sizes.idle_connections));
        match self.memory(kind, &running).await {
            Ok(m) => c.memory = Some(m),
            Err(e) => c.errors.push(format!("memory: {e:#}")),
        }
        self.done();
        if let Err(e) = contenders::stop(&self.t, running) {
            c.errors.push(format!("teardown: {e:#}"));
        }
        c
    }

    async fn echo(&self, kind: Kind, size: usize, rate: u32, time: Duration) -> anyhow::Result<Echo> {
        let t = &self.t;
        let conns = match load::open(&t.client, &t.clients, &|i| kind.target(t, i), self.sizes.connections).await {
            Ok(c) => c,
            // What the node held when a connection could not be opened.
            Err(e) => return Err(e.context(contenders::node_state(t))),
        };
        // Only the paced run is measured, not the handshakes before it.
        let bpf_before = (kind == Kind::Wsfwd).then(bpf_run_time);
        let cpu_before = cpu_ns();
        let r = load::echo_run(conns, rate, size, self.sizes.warmup, time).await?;
        let cpu = cpu_ns().saturating_sub(cpu_before);
        let received = r.received.max(1) as f64;
        let bpf = bpf_before.map(|(t0, n0)| {
            let (t1, n1) = bpf_run_time();
            (t1.saturating_sub(t0) as f64, n1.saturating_sub(n0).max(1) as f64)
        });
        Ok(Echo {
            message_bytes: size,
            connections: self.sizes.connections,
            rate,
            seconds: (self.sizes.warmup + time).as_secs_f64(),
            sent: r.sent,
            received: r.received,
            errors: r.errors,
            p50_us: r.hist.value_at_quantile(0.5) as f64,
            p99_us: r.hist.value_at_quantile(0.99) as f64,
            p999_us: r.hist.value_at_quantile(0.999) as f64,
            cpu_ns_per_msg: cpu as f64 / received,
            bpf_ns_per_msg: bpf.map(|(ns, _)| ns / received),
            bpf_ns_per_packet: bpf.map(|(ns, runs)| ns / runs),
        })
    }

    async fn max_rate(&self, kind: Kind) -> Option<u32> {
        let mut search = RateSearch::new(self.sizes.max_rates);
        while let Some(rate) = search.next() {
            let held = matches!(self.echo(kind, 64, rate, self.sizes.max_rate_time).await,
                Ok(e) if (e.p99_us as u64) < MAX_P99_US && e.received * 100 >= e.sent * 99);
            search.record(rate, held);
        }
        search.best()
    }

    async fn churn(&self, kind: Kind) -> ConnRate {
        let t = &self.t;
        let (ok, hist, errors) = load::conn_churn(&t.client, &t.clients, &|i| kind.target(t, i), self.sizes.churn_workers, self.sizes.churn_time).await;
        ConnRate { per_second: ok as f64 / self.sizes.churn_time.as_secs_f64(), p99_us: hist.value_at_quantile(0.99) as f64, errors }
    }

    fn bulk(&self, kind: Kind) -> anyhow::Result<Bulk> {
        let dst = kind.bulk_target(&self.t);
        let gbps = |streams: u32| -> anyhow::Result<f64> {
            let out = run(self.t.client.command("iperf3").args([
                "-c",
                &dst.ip().to_string(),
                "-p",
                &dst.port().to_string(),
                "-B",
                &self.t.clients[0].to_string(),
                "-t",
                &self.sizes.bulk_seconds.to_string(),
                "-P",
                &streams.to_string(),
                "-J",
            ]))?;
            let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
            v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .map(|b| b / 1e9)
                .with_context(|| format!("no bits_per_second in iperf3's output; its error: {}", v["error"]))
        };
        Ok(Bulk { one_stream_gbps: gbps(1)?, four_streams_gbps: gbps(4)? })
    }

    /// RSS of the contender's processes plus its maps (wsfwd), bytes.
    fn footprint(running: &Running) -> (u64, Option<(u64, Option<f64>)>) {
        let rss = running.pids().into_iter().map(contenders::rss_tree).sum();
        (rss, running.agent.as_ref().map(|a| contenders::map_memory(a.pid())))
    }

    async fn memory(&self, kind: Kind, running: &Running) -> anyhow::Result<Memory> {
        let t = &self.t;
        let n = self.sizes.idle_connections.min(contenders::max_connections());
        let (rss0, maps0) = Self::footprint(running);
        let baseline_bytes = rss0 + maps0.map_or(0, |(m, _)| m);
        let mut conns = Vec::with_capacity(n);
        for i in 0..n {
            let (ws, _) = client::ws_connect(&t.client, t.clients[i % t.clients.len()], kind.target(t, i)).await.with_context(|| format!("idle connection {i}"))?;
            conns.push(ws);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rss_bytes, maps) = Self::footprint(running);
        drop(conns);
        Ok(Memory {
            connections: n,
            rss_bytes,
            map_bytes: maps.map(|(m, _)| m),
            bytes_per_ct_entry: maps.and_then(|(_, per)| per),
            baseline_bytes,
        })
    }

    /// Connection rate with `services` configured, for the forwarders that scale with them.
    pub async fn scale(&self, kind: Kind, services: usize) -> anyhow::Result<Scale> {
        let running = contenders::start(kind, &self.t, services.saturating_sub(1))?;
        let map_bytes = running.agent.as_ref().map(|a| contenders::map_memory(a.pid()).0);
        let t = &self.t;
        let (ok, hist, errors) = load::conn_churn(&t.client, &t.clients, &|i| kind.target(t, i), self.sizes.churn_workers, self.sizes.scale_time).await;
        contenders::stop(&self.t, running)?;
        Ok(Scale {
            contender: kind.name().into(),
            services,
            conn_rate: ConnRate { per_second: ok as f64 / self.sizes.scale_time.as_secs_f64(), p99_us: hist.value_at_quantile(0.99) as f64, errors },
            map_bytes,
        })
    }
}

/// Runs everything and returns the results.
pub async fn run_all(sizes: Sizes, short: bool, command: String) -> anyhow::Result<Results> {
    let scale_runs = 3 * sizes.scale_services.len() as u64;
    let bench = Bench::new(sizes, ALL.len() as u64 * 5 + scale_runs + 1)?;
    let mut results = Results {
        command,
        short,
        started: run(Command::new("date").arg("-u").arg("+%Y-%m-%dT%H:%M:%SZ")).unwrap_or_default().trim().to_owned(),
        machine: machine(),
        versions: versions(),
        ipvs: ipvs(&bench.t),
        ..Results::default()
    };
    let bpf_stats = BpfStats::enable();
    for kind in ALL {
        results.contenders.push(bench.contender(kind).await);
    }
    drop(bpf_stats);
    for kind in [Kind::Wsfwd, Kind::Iptables, Kind::Nftables] {
        for &services in sizes.scale_services {
            bench.step(&format!("scale: {} with {services} services", kind.name()));
            match bench.scale(kind, services).await {
                Ok(s) => results.scale.push(s),
                Err(e) => results.contenders.iter_mut().find(|c| c.name == kind.name()).into_iter().for_each(|c| c.errors.push(format!("scale {services}: {e:#}"))),
            }
            bench.done();
        }
    }
    bench.step("reload: time to live, echo latency during reloads");
    let dir = bench.t.dir.join("reload");
    std::fs::create_dir_all(&dir)?;
    match super::reload::reload(&bench.t, &sizes, &dir).await {
        Ok(r) => results.reload = Some(r),
        Err(e) => results.contenders.iter_mut().filter(|c| c.name == Kind::Wsfwd.name()).for_each(|c| c.errors.push(format!("reload: {e:#}"))),
    }
    bench.done();
    bench.progress.finish_with_message("done");
    Ok(results)
}

/// Only the reload section (`wsfwd-bench --only reload`): printed, nothing written.
pub async fn run_reload(sizes: Sizes) -> anyhow::Result<super::results::Reload> {
    let bench = Bench::new(sizes, 1)?;
    bench.step("reload: time to live, echo latency during reloads");
    let dir = bench.t.dir.join("reload");
    std::fs::create_dir_all(&dir)?;
    let r = super::reload::reload(&bench.t, &sizes, &dir).await;
    bench.done();
    bench.progress.finish_with_message("done");
    r
}

/// One contender's bulk TCP run, for `wsfwd-bench --only bulk`.
#[derive(Debug)]
pub struct BulkRun {
    pub name: &'static str,
    pub bulk: Bulk,
    /// wsfwd only: its programs' run time and the agent's CPU time over both
    /// iperf3 runs, in ms per second of traffic.
    pub bpf_ms_per_s: Option<f64>,
    pub agent_ms_per_s: Option<f64>,
}

/// Only bulk TCP (`wsfwd-bench --only bulk`) for direct, wsfwd and iptables,
/// `rounds` times each, interleaved so that the machine's drift hits all
/// three alike.
pub fn run_bulk(sizes: Sizes, rounds: usize) -> anyhow::Result<Vec<BulkRun>> {
    let bench = Bench::new(sizes, (3 * rounds) as u64)?;
    let _stats = BpfStats::enable();
    let seconds = f64::from(2 * sizes.bulk_seconds);
    let mut out = Vec::new();
    for _ in 0..rounds {
        for kind in [Kind::Direct, Kind::Wsfwd, Kind::Iptables] {
            bench.step(&format!("{}: bulk TCP", kind.name()));
            let running = contenders::start(kind, &bench.t, 0)?;
            let agent_pid = running.agent.as_ref().map(|a| a.pid());
            let (bpf0, cpu0) = (bpf_run_time().0, agent_pid.map(process_cpu_ns));
            let b = bench.bulk(kind);
            let (bpf1, cpu1) = (bpf_run_time().0, agent_pid.map(process_cpu_ns));
            contenders::stop(&bench.t, running)?;
            // The iperf3 server finishes its side of the last test first.
            std::thread::sleep(Duration::from_secs(2));
            let bulk = b.with_context(|| kind.name())?;
            let per_s = |ns: u64| ns as f64 / 1e6 / seconds;
            out.push(BulkRun {
                name: kind.name(),
                bulk,
                bpf_ms_per_s: agent_pid.map(|_| per_s(bpf1.saturating_sub(bpf0))),
                agent_ms_per_s: cpu0.zip(cpu1).map(|(a, b)| per_s(b.saturating_sub(a))),
            });
            bench.done();
        }
    }
    bench.progress.finish_with_message("done");
    Ok(out)
}

/// One contender's echo runs, for `wsfwd-bench --only echo`.
#[derive(Debug)]
pub struct EchoRun {
    pub name: &'static str,
    /// At the standard rate: 64 B and 16 KiB messages.
    pub echo: Vec<Echo>,
    pub max_rate: Option<u32>,
    pub errors: Vec<String>,
}

/// Only the echo latencies and the highest rate (`wsfwd-bench --only echo`)
/// for direct, wsfwd and iptables, `rounds` times each, interleaved.
pub async fn run_echo(sizes: Sizes, rounds: usize) -> anyhow::Result<Vec<EchoRun>> {
    let bench = Bench::new(sizes, (3 * rounds) as u64)?;
    let _stats = BpfStats::enable();
    let mut out = Vec::new();
    for _ in 0..rounds {
        for kind in [Kind::Direct, Kind::Wsfwd, Kind::Iptables] {
            bench.step(&format!("{}: echo", kind.name()));
            let running = contenders::start(kind, &bench.t, 0)?;
            let (mut echo, mut errors) = (Vec::new(), Vec::new());
            for size in MESSAGE_SIZES {
                match bench.echo(kind, size, sizes.rate, sizes.echo_time).await {
                    Ok(e) => echo.push(e),
                    Err(e) => errors.push(format!("echo {size} B: {e:#}")),
                }
            }
            let max_rate = bench.max_rate(kind).await;
            contenders::stop(&bench.t, running)?;
            out.push(EchoRun { name: kind.name(), echo, max_rate, errors });
            bench.done();
        }
    }
    bench.progress.finish_with_message("done");
    Ok(out)
}

/// User and system CPU time of process `pid`, ns (0 if it cannot be read).
fn process_cpu_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are the 14th and 15th fields: 12th and 13th after the name.
    (ticks(11) + ticks(12)) * 10_000_000
}

/// Raises the open-file limit as far as allowed: to 1M, else to the hard limit.
fn raise_fd_limit() {
    for want in [Some(1u64 << 20), None] {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit/setrlimit with a valid struct.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        let n = want.unwrap_or(lim.rlim_max);
        let new = libc::rlimit { rlim_cur: n, rlim_max: n.max(lim.rlim_max) };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            return;
        }
    }
}

/// Non-idle CPU time of the whole machine so far, nanoseconds (USER_HZ = 100).
fn cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else { return 0 };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle) * 10_000_000
}

/// Total run time and run count of wsfwd's programs (kernel.bpf_stats_enabled must be on).
fn bpf_run_time() -> (u64, u64) {
    let Ok(out) = run(Command::new("bpftool").args(["prog", "show", "-j"])) else { return (0, 0) };
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("wsfwd_tc")))
        .fold((0, 0), |(t, n), p| (t + p["run_time_ns"].as_u64().unwrap_or(0), n + p["run_cnt"].as_u64().unwrap_or(0)))
}

/// Turns kernel.bpf_stats_enabled on for the run, and back to what it was.
struct BpfStats(Option<String>);

impl BpfStats {
    fn enable() -> Self {
        let before = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").ok();
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
        Self(before)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(v) = &self.0 {
            let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", v.trim());
        }
    }
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        cpu: cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()).unwrap_or_default(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_bytes: meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).map_or(0, |kb| kb * 1024),
        kernel: run(Command::new("uname").arg("-r")).unwrap_or_default().trim().to_owned(),
    }
}

fn versions() -> Vec<(String, String)> {
    let v = |name: &str, cmd: &[&str]| {
        let out = Command::new(cmd[0]).args(&cmd[1..]).output();
        let text = out.map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))).unwrap_or_default();
        (name.to_owned(), text.lines().next().unwrap_or("not found").trim().to_owned())
    };
    vec![
        v("wsfwd", &[&crate::agent::binary().display().to_string(), "--version"]),
        v("nginx", &["nginx", "-v"]),
        v("haproxy", &["haproxy", "-v"]),
        v("iptables", &["iptables", "-V"]),
        v("nftables", &["nft", "-v"]),
        v("iperf3", &["iperf3", "-v"]),
    ]
}

/// Whether IPVS (kube-router's `sh`) can run on this kernel.
fn ipvs(t: &Topo) -> String {
    let loaded = t.node.exec(&["sh", "-c", "test -e /proc/net/ip_vs"]).is_ok();
    if loaded || Command::new("modprobe").arg("ip_vs").status().is_ok_and(|s| s.success()) {
        "IPVS is available on this kernel, but kube-router's `sh` is not measured yet".into()
    } else {
        "IPVS is not available on this kernel (no ip_vs module): kube-router's `sh` is not measured".into()
    }
}

#[cfg(test)]
mod tests {
    use super::RateSearch;

    const STEPS: &[u32] = &[2_500, 5_000, 10_000, 20_000, 40_000];

    /// Runs the search against a contender that holds every rate up to `limit`.
    fn search(limit: u32) -> (Option<u32>, Vec<u32>) {
        let mut s = RateSearch::new(STEPS);
        let mut tried = Vec::new();
        while let Some(rate) = s.next() {
            assert!(tried.len() < 20, "no end: {tried:?}");
            tried.push(rate);
            s.record(rate, rate <= limit);
        }
        (s.best(), tried)
    }

    #[test]
    fn bisects_between_the_held_and_the_failed_step() {
        let (best, tried) = search(27_000);
        assert_eq!(&tried[..5], &[2_500, 5_000, 10_000, 20_000, 40_000]);
        let best = best.unwrap();
        assert!(best <= 27_000 && f64::from(27_000 - best) <= 0.05 * f64::from(best) + 100.0, "{best} {tried:?}");
    }

    #[test]
    fn two_limits_on_the_same_coarse_step_are_told_apart() {
        let (a, _) = search(24_000);
        let (b, _) = search(33_000);
        assert!(b.unwrap() > a.unwrap() + 5_000, "{a:?} {b:?}");
    }

    #[test]
    fn failing_the_first_step_holds_nothing_and_passing_all_holds_the_last() {
        assert_eq!(search(1_000), (None, vec![2_500]));
        assert_eq!(search(100_000).0, Some(40_000));
    }
}
