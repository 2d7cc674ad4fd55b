//! The wsfwd command line.
use std::{io::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use wsfwd::{check, config, datapath::gc::Timeouts, netif, placement, run, stats};

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
        /// Also evaluate this node's routes (read-only), as `run --iface` would:
        /// which endpoints are behind the node and which get full NAT, and what
        /// externalTrafficPolicy: Local leaves. Repeat for several interfaces.
        #[arg(long = "iface", value_name = "IFACE")]
        ifaces: Vec<String>,
    },
    /// Forward: attach to the external interfaces and run in the foreground.
    ///
    /// Runs in the current network namespace, as root. Logs one line starting
    /// with "ready" once every interface is attached and the maps are filled.
    ///
    /// The datapath outlives the agent: maps and program links stay pinned in
    /// --bpffs and keep forwarding. An agent started over them adopts the maps
    /// (every flow kept), swaps its programs in atomically and applies its
    /// config. The config file is watched (rewritten, renamed over, or a
    /// ConfigMap's symlink swapped) and re-read on SIGHUP: a valid file is
    /// applied as a diff, a rejected one is logged and changes nothing.
    /// Endpoints that leave drain (see --drain-timeout). Metrics are served on
    /// --metrics-addr. On SIGINT or SIGTERM it exits 0 and leaves the datapath running
    /// (`--cleanup-on-exit`, or `wsfwd cleanup`, removes it). A rejected config
    /// exits 2, any other failure 1; a failed fresh start leaves nothing behind,
    /// a failed start over a running datapath leaves it as it was.
    Run(RunCli),
    /// Detach wsfwd's programs and remove every map and link pinned in --bpffs.
    ///
    /// Every flow through the datapath is lost. Use it to uninstall, or before
    /// starting a wsfwd whose map layout differs. Stop the agent first.
    Cleanup {
        /// The --bpffs directory of the agent.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// Print the datapath's counters (packets by verdict and reason), from the
    /// pinned maps: works without an agent.
    Stats {
        /// The running agent's --bpffs directory.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List the tracked flows, both directions of each.
    Conntrack {
        /// The agent's --bpffs directory.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        #[arg(long)]
        json: bool,
        /// Only the flows of this service (namespace/name, or namespace/name:port).
        #[arg(long, value_name = "NS/NAME")]
        service: Option<String>,
    },
    /// The datapath's state: agent, attachments, config generation and last
    /// reload, map occupancy. Reads the pinned maps: works without an agent.
    Status {
        /// The agent's --bpffs directory.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Each frontend with its endpoints (active, terminating or draining),
    /// their Maglev slots and live flows, as `ipvsadm -Ln` lists virtual
    /// services. Reads the pinned maps: works without an agent.
    Services {
        /// The agent's --bpffs directory.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        #[arg(long)]
        json: bool,
        /// Packets and bytes per service port and endpoint (to the endpoint:
        /// In; its replies: Out; IPv4 bytes), instead of the table view.
        #[arg(long)]
        stats: bool,
    },
}

const DEFAULT_BPFFS: &str = "/sys/fs/bpf/wsfwd";

#[derive(clap::Args)]
struct RunCli {
    /// Multi-document YAML file of Services and EndpointSlices/Endpoints.
    #[arg(long, value_name = "FILE", required_unless_present = "kubernetes", conflicts_with = "kubernetes")]
    config: Option<PathBuf>,
    /// Follow Services and EndpointSlices from the Kubernetes API server
    /// instead of a file (DaemonSet mode). Configuration: --kubeconfig, else
    /// KUBECONFIG, else the pod's service account, else ~/.kube/config.
    /// Nothing is applied until both are listed completely; while the API
    /// server is away the datapath keeps its plan and the agent retries.
    #[arg(long)]
    kubernetes: bool,
    /// The kubeconfig file to use with --kubernetes.
    #[arg(long, value_name = "FILE", requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// This node's name as Kubernetes knows it (the downward API's
    /// spec.nodeName): endpoints on other nodes then get full NAT whatever
    /// the routes say.
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    node_name: Option<String>,
    /// Which Services to forward with --kubernetes: "labelled" (those
    /// labelled service.kubernetes.io/service-proxy-name=wsfwd, which
    /// kube-proxy then leaves alone) or "all" (every Service's externalIPs,
    /// NodePorts and LoadBalancer IPs, beside kube-proxy; not Services
    /// labelled for another proxy).
    #[arg(long, value_name = "WHICH", value_enum, default_value = "labelled", requires = "kubernetes")]
    services: wsfwd::kubernetes::Which,
    /// A label selector (as kubectl's -l) narrowing the Services further.
    #[arg(long, value_name = "SELECTOR", requires = "kubernetes")]
    selector: Option<String>,
    /// With --kubernetes: print the plan the cluster's objects make (as
    /// `wsfwd check --iface` does) and exit, touching nothing.
    #[arg(long, requires = "kubernetes")]
    dry_run: bool,
    /// An external interface: where frontend traffic arrives and replies to
    /// clients leave. Repeat for several. NodePorts are served on its IPv4
    /// addresses.
    #[arg(long = "iface", value_name = "IFACE", required = true)]
    ifaces: Vec<String>,
    /// Where frontend traffic is taken: "xdp" (XDP first, native where the
    /// driver has it, else generic; TC behind it finishes what XDP cannot:
    /// ICMP, unresolved neighbours, local endpoints, fragmenting),
    /// "tc" (TC alone), or "auto" (native XDP on physical NICs, TC alone on
    /// virtual interfaces such as veth, where native XDP hurts). The choice
    /// is logged per interface.
    #[arg(long, value_name = "HOOK", value_enum, default_value = "auto")]
    attach: wsfwd::datapath::attach::Hook,
    /// How to attach to tc: "tcx" (Linux 6.6+), "clsact" (a filter on the
    /// clsact qdisc, as older kernels need) or "auto" (TCX, else clsact). A
    /// datapath already attached keeps its mode.
    #[arg(long, value_name = "MODE", value_enum, default_value = "auto")]
    tc_mode: wsfwd::datapath::attach::Mode,
    /// Directory on a bpffs where the maps and links are pinned (bpffs is
    /// mounted there, or at /sys/fs/bpf, if missing). One agent per directory.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// On SIGINT/SIGTERM, detach and remove everything (every flow is lost)
    /// instead of leaving the datapath forwarding for the next agent.
    #[arg(long)]
    cleanup_on_exit: bool,
    /// Conntrack capacity in entries (two per flow). When full, the least
    /// recently used entries are evicted; see the README for what that costs.
    #[arg(long, value_name = "N", default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(16..))]
    ct_size: u32,
    /// Seed of the flow hash; every node of a deployment must use the same
    /// one. The default is published (the agent warns): give a secret one, so
    /// no one can compute which endpoint a client lands on.
    #[arg(long, value_name = "N", env = "WSFWD_HASH_SEED", default_value_t = wsfwd_common::DEFAULT_HASH_SEED)]
    hash_seed: u32,
    /// Idle timeout of an established TCP flow, in seconds (Cilium: 21600;
    /// kube-proxy sets the kernel's to 86400).
    #[arg(long, value_name = "SECS", default_value_t = 21600, value_parser = clap::value_parser!(u64).range(1..))]
    tcp_timeout: u64,
    /// Timeout of a TCP flow that never saw a reply, in seconds (Cilium: 60).
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    tcp_syn_timeout: u64,
    /// How long a TCP flow lingers after RST, or FIN both ways, in seconds (Cilium: 10).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    tcp_fin_timeout: u64,
    /// Idle timeout of a UDP flow, in seconds (Cilium: 60; the kernel's: 30, 120 once replied).
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    udp_timeout: u64,
    /// A node address to SNAT from for endpoints that are not behind the node
    /// (full NAT). Repeat to raise the limit of concurrent flows per endpoint:
    /// each address adds one flow per SNAT port. Default: the source address
    /// of the route to each such endpoint.
    #[arg(long = "snat-ip", value_name = "ADDR")]
    snat_ips: Vec<std::net::Ipv4Addr>,
    /// An endpoint-facing interface: replies of endpoints behind the node
    /// are translated where they enter it and sent straight out of an
    /// external interface, skipping the node's forwarding and netfilter.
    /// Repeat for several; "none" turns this off (replies are then
    /// translated at external egress). Default: the interfaces the routes
    /// to endpoints behind the node leave through, followed as routes change.
    #[arg(long = "endpoint-iface", value_name = "IFACE|none")]
    endpoint_ifaces: Vec<String>,
    /// SNAT source ports, MIN-MAX. Default: the largest range outside the
    /// node's ip_local_port_range and the NodePort range (30000-32767).
    #[arg(long, value_name = "MIN-MAX", value_parser = parse_port_range)]
    snat_ports: Option<(u16, u16)>,
    /// How long a SNAT port stays reserved after its flow ended, in seconds.
    /// Keep it longer than the endpoints' TIME_WAIT (60 s on Linux), so a late
    /// packet never reaches a new flow; shorter values are accepted, with a
    /// warning, for tests and for endpoints that never close first.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    snat_quarantine: u64,
    /// Capacity of the full-NAT flow table in entries (two per flow). Never
    /// evicted: when full, new full-NAT flows are refused.
    #[arg(long, value_name = "N", default_value_t = 1 << 17, value_parser = clap::value_parser!(u32).range(16..))]
    nat_size: u32,
    /// Full-NAT TCP flows one client address may hold before their handshakes
    /// complete; further SYNs from it are refused with a RST. Default: an
    /// eighth of the SNAT ports or of the NAT table, whichever is smaller
    /// (at least 16), so one address cannot take what other clients need.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    half_open_per_client: Option<u32>,
    /// How often expired flows are removed, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    gc_interval: u64,
    /// How long an endpoint that takes no new flows any more (removed from
    /// the config, not ready, terminating) keeps its flows. At the deadline
    /// its TCP connections get a RST each way and its UDP flows are dropped.
    /// 0: its flows keep going until they end.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    drain_timeout: u64,
    /// Where to serve Prometheus metrics (`GET /metrics`): an address:port,
    /// or "none". The default keeps them on this host's loopback.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9477", value_parser = parse_metrics_addr)]
    metrics_addr: MetricsAddr,
}

/// `--metrics-addr`: an address, or none.
#[derive(Clone, Debug)]
struct MetricsAddr(Option<std::net::SocketAddr>);

fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    if s == "none" {
        return Ok(MetricsAddr(None));
    }
    s.parse().map(|a| MetricsAddr(Some(a))).map_err(|_| format!("{s:?}: expected ADDRESS:PORT (e.g. 127.0.0.1:9477) or \"none\""))
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s.split_once('-').ok_or_else(|| format!("{s:?}: expected MIN-MAX, e.g. 61000-65535"))?;
    let port = |p: &str| p.trim().parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| format!("{p:?} is not a port (1-65535)"));
    let (lo, hi) = (port(lo)?, port(hi)?);
    if lo > hi {
        return Err(format!("{s}: MIN is above MAX"));
    }
    Ok((lo, hi))
}

fn init_logging(level: &str) {
    // Info lines are plain ("ready: ..."); others say their level.
    // The Kubernetes client's own records repeat every retry the agent
    // already reports once per state change; RUST_LOG can still show them.
    env_logger::Builder::new()
        .parse_filters(level)
        .parse_filters("kube_client=off,kube_runtime=off,tower=off,hyper_util=off")
        .parse_env("RUST_LOG")
        .format(|buf, record| match record.level() {
            log::Level::Info => writeln!(buf, "{}", record.args()),
            l => writeln!(buf, "{}: {}", l.as_str().to_lowercase(), record.args()),
        })
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    let result = match cli.command {
        Command::Check { config, json, hash_seed, ifaces } => return check_cmd(&config, json, hash_seed, &ifaces),
        Command::Run(args) => return run_cmd(args),
        Command::Stats { bpffs, json } => stats_cmd(&bpffs, json),
        Command::Cleanup { bpffs } => cleanup_cmd(&bpffs),
        Command::Conntrack { bpffs, json, service } => conntrack_cmd(&bpffs, json, service.as_deref()),
        Command::Status { bpffs, json } => status_cmd(&bpffs, json),
        Command::Services { bpffs, json, stats } => services_cmd(&bpffs, json, stats),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `wsfwd conntrack | head`: the reader is gone, which is fine.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_config_errors(path: &std::path::Path, errors: &config::ConfigErrors) {
    for e in &errors.0 {
        eprintln!("error: {e}");
    }
    eprintln!("{}: rejected ({} error(s)); nothing applied", path.display(), errors.0.len());
}

fn check_cmd(path: &std::path::Path, json: bool, seed: u32, ifaces: &[String]) -> ExitCode {
    let config = match config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            print_config_errors(path, &errors);
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    config.notes.log();
    let node = if ifaces.is_empty() {
        None
    } else {
        let resolved = netif::resolve(ifaces).and_then(|i| placement::resolve(&config.services, &i, &[], None));
        match resolved {
            Ok(node) => Some(node),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let plan = check::plan(&config.services, node.as_ref(), seed);
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

fn run_cmd(a: RunCli) -> ExitCode {
    let source = match a.config.clone() {
        Some(path) => wsfwd::settings::Source::File(path),
        None => wsfwd::settings::Source::Kubernetes(wsfwd::kubernetes::Options {
            kubeconfig: a.kubeconfig.clone(),
            which: a.services,
            selector: a.selector.clone(),
        }),
    };
    let args = wsfwd::settings::RunArgs {
        source,
        dry_run: a.dry_run,
        node_name: a.node_name.clone(),
        ifaces: a.ifaces,
        bpffs: a.bpffs,
        tc_mode: a.tc_mode,
        hook: a.attach,
        cleanup_on_exit: a.cleanup_on_exit,
        ct_size: a.ct_size,
        hash_seed: a.hash_seed,
        timeouts: Timeouts {
            tcp: Duration::from_secs(a.tcp_timeout),
            tcp_syn: Duration::from_secs(a.tcp_syn_timeout),
            tcp_fin: Duration::from_secs(a.tcp_fin_timeout),
            udp: Duration::from_secs(a.udp_timeout),
        },
        gc_interval: Duration::from_secs(a.gc_interval),
        drain_timeout: Duration::from_secs(a.drain_timeout),
        metrics_addr: a.metrics_addr.0,
        snat_ips: a.snat_ips,
        endpoint_ifaces: a.endpoint_ifaces,
        snat_ports: a.snat_ports,
        snat_quarantine: Duration::from_secs(a.snat_quarantine),
        nat_size: a.nat_size,
        half_open_per_client: a.half_open_per_client,
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(run::RunError::Config(errors)) => {
            print_config_errors(a.config.as_deref().unwrap_or(std::path::Path::new("the cluster")), &errors);
            ExitCode::from(EXIT_BAD_CONFIG)
        }
        Err(run::RunError::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cleanup_cmd(bpffs: &std::path::Path) -> anyhow::Result<()> {
    let done = wsfwd::datapath::cleanup(bpffs)?;
    if done.is_empty() {
        println!("nothing of wsfwd was pinned in {}", bpffs.display());
    }
    for what in done {
        println!("removed {what}");
    }
    Ok(())
}

fn stats_cmd(bpffs: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let counters = stats::counters(bpffs)?;
    let mut out = std::io::stdout().lock();
    if json {
        let obj: serde_json::Map<String, serde_json::Value> =
            counters.into_iter().map(|(k, v)| (k.to_owned(), v.into())).collect();
        writeln!(out, "{}", serde_json::Value::Object(obj))?;
    } else {
        for (name, value) in counters {
            writeln!(out, "{name:<24} {value}")?;
        }
    }
    Ok(())
}

/// Prints `value` as JSON, or as `render` writes it for a person.
fn print_view<T: serde::Serialize>(value: &T, json: bool, render: impl Fn(&T) -> String) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(value)?)?;
    } else {
        write!(out, "{}", render(value))?;
    }
    Ok(())
}

fn status_cmd(bpffs: &std::path::Path, json: bool) -> anyhow::Result<()> {
    print_view(&wsfwd::status::status(bpffs)?, json, wsfwd::status::render_status)
}

fn services_cmd(bpffs: &std::path::Path, json: bool, stats: bool) -> anyhow::Result<()> {
    if stats {
        return print_view(&wsfwd::status::traffic(bpffs)?, json, |t| wsfwd::status::render_traffic(t));
    }
    print_view(&wsfwd::status::services(bpffs)?, json, |s| wsfwd::status::render_services(s))
}

fn conntrack_cmd(bpffs: &std::path::Path, json: bool, service: Option<&str>) -> anyhow::Result<()> {
    let only = service.map(|s| wsfwd::status::frontends_of(bpffs, s)).transpose()?;
    let flows = stats::flows(bpffs, only.as_ref())?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&flows)?)?;
    } else {
        for f in flows {
            writeln!(
                out,
                "{:<9} {:<8} {} {} -> {} => {} -> {} state=[{}] idle={}ms",
                f.table,
                f.direction,
                f.protocol,
                f.source,
                f.destination,
                f.new_source,
                f.new_destination,
                f.state.join(","),
                f.idle_ms
            )?;
        }
    }
    Ok(())
}
