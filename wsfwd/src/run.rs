//! `wsfwd run`: start (or take over) the datapath, apply the config, then
//! serve events — config changes, SIGHUP, route changes, collections — until
//! SIGINT/SIGTERM, leaving the datapath forwarding unless told otherwise.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    agent::Agent,
    bpffs::PinDir,
    config,
    datapath::{self, Datapath, gc},
    metrics,
    model::Service,
    netif, placement, route, stats,
    watch::ConfigWatch,
};

pub struct RunArgs {
    pub config: PathBuf,
    pub ifaces: Vec<String>,
    pub bpffs: PathBuf,
    pub tc_mode: datapath::attach::Mode,
    pub hook: datapath::attach::Hook,
    pub cleanup_on_exit: bool,
    pub ct_size: u32,
    pub hash_seed: u32,
    pub timeouts: gc::Timeouts,
    pub gc_interval: Duration,
    /// How long a drained endpoint keeps its flows; zero: until they end.
    pub drain_timeout: Duration,
    /// Where to serve Prometheus metrics; `None`: nowhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub snat_ips: Vec<std::net::Ipv4Addr>,
    pub snat_ports: Option<(u16, u16)>,
    pub snat_quarantine: Duration,
    pub nat_size: u32,
    /// `None`: an eighth of what full NAT can hold (see `default_half_open`).
    pub half_open_per_client: Option<u32>,
}

/// Half-open full-NAT flows one client address may hold by default: an
/// eighth of an endpoint's SNAT ports or of the NAT table, whichever is
/// smaller, and at least 16. A flood from one address then takes at most an
/// eighth of what other clients need.
pub fn default_half_open(port_count: u32, nat_size: u32) -> u32 {
    (port_count.min(nat_size / 2) / 8).max(16)
}

/// Linux's TIME_WAIT: the shortest safe SNAT quarantine.
const TIME_WAIT: Duration = Duration::from_secs(60);

/// The NodePort range Kubernetes allocates from by default.
const NODE_PORTS: (u16, u16) = (30000, 32767);

/// The default SNAT ports: the largest range that overlaps neither the
/// node's ephemeral ports (`ip_local_port_range`) nor the NodePort range,
/// preferring ports above both.
pub fn default_snat_ports(local: (u16, u16)) -> Option<(u16, u16)> {
    let busy = [local, NODE_PORTS];
    let mut free: Vec<(u16, u16)> = Vec::new();
    let mut start = 1024u32;
    let mut edges: Vec<(u16, u16)> = busy.to_vec();
    edges.sort();
    for (lo, hi) in edges {
        if u32::from(lo) > start {
            free.push((start as u16, lo - 1));
        }
        start = start.max(u32::from(hi) + 1);
    }
    if start <= 65535 {
        free.push((start as u16, 65535));
    }
    let size = |r: &(u16, u16)| u32::from(r.1) - u32::from(r.0) + 1;
    // Above everything when that leaves a useful range: clear of low, well-known ports.
    match free.last() {
        Some(top) if top.0 > local.1 && size(top) >= 1024 => Some(*top),
        _ => free.into_iter().max_by_key(size),
    }
}

fn local_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().filter_map(|p| p.parse().ok());
            Some((it.next()?, it.next()?))
        })
        .unwrap_or((32768, 60999))
}

/// The SNAT port range to use, checked against the configured NodePorts.
fn snat_ports(args: &RunArgs, services: &[Service]) -> anyhow::Result<(u16, u16)> {
    let range = match args.snat_ports {
        Some(r) => r,
        None => default_snat_ports(local_port_range())
            .ok_or_else(|| anyhow::anyhow!("no free port range for SNAT: give --snat-ports"))?,
    };
    check_node_ports(range, services)?;
    Ok(range)
}

/// A NodePort inside the SNAT range would take full-NAT replies for itself.
pub(crate) fn check_node_ports(range: (u16, u16), services: &[Service]) -> anyhow::Result<()> {
    for svc in services {
        for f in &svc.frontends {
            if let crate::model::Frontend::NodePort { port, .. } = f {
                if (range.0..=range.1).contains(port) {
                    anyhow::bail!(
                        "--snat-ports {}-{} contains nodePort {port} of {}: replies to SNAT ports would hit the NodePort",
                        range.0,
                        range.1,
                        svc.id()
                    );
                }
            }
        }
    }
    Ok(())
}

/// How `run` failed: the exit code tells a bad config from a failure to attach.
pub enum RunError {
    Config(config::ConfigErrors),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for RunError {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let text = std::fs::read(&args.config).map_err(|e| RunError::Config(config::unreadable(&args.config, &e)))?;
    let cfg = config::parse(&String::from_utf8_lossy(&text)).map_err(RunError::Config)?;
    cfg.notes.log();
    // Watching from before the first look: no change can fall in between.
    let mut routes = route::Watch::new().context("subscribing to route changes (rtnetlink)")?;
    let mut config_watch = ConfigWatch::new(&args.config).context("watching the config file (inotify)")?;
    let ifaces = netif::resolve(&args.ifaces).map_err(anyhow::Error::msg)?;
    let node = placement::resolve(&cfg.services, &ifaces, &args.snat_ips).map_err(anyhow::Error::msg)?;
    // Compiled here only to find what would make the plan fail, before anything is touched.
    datapath::contents::compile(&cfg.services, &node, args.hash_seed).map_err(anyhow::Error::msg)?;
    let snat_range = snat_ports(&args, &cfg.services)?;
    let (port_min, port_max) = snat_range;
    if args.hash_seed == wsfwd_common::DEFAULT_HASH_SEED {
        log::warn!(
            "--hash-seed is the published default: anyone can compute which endpoint a client address \
             lands on and aim traffic at one endpoint; give every node the same secret seed"
        );
    }
    if netif::ip_forward_enabled() == Some(false) {
        log::warn!("net.ipv4.ip_forward is 0 here: new flows are dropped (no route) and replies are not forwarded");
    }

    let port_count = u32::from(port_max) - u32::from(port_min) + 1;
    let half_open_max = args.half_open_per_client.unwrap_or_else(|| default_half_open(port_count, args.nat_size));
    let opts = datapath::Options {
        ct_size: args.ct_size,
        nat_size: args.nat_size,
        hash_seed: args.hash_seed,
        snat_ports: (u32::from(port_min), port_count),
        half_open_max,
        attach: args.tc_mode,
        hook: args.hook,
    };
    // One agent per pin directory: checked first, before anything else is taken.
    let pins = PinDir::open(&args.bpffs)?;
    // Bound before anything is attached: a busy port fails the start cleanly.
    let metrics_listener = match args.metrics_addr {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
                .with_context(|| format!("--metrics-addr {addr}"))?,
        ),
        None => None,
    };
    let dp = Datapath::start(pins, datapath::Capacity::of(&cfg.services), &ifaces, &opts)?;
    let start = dp.start;
    let counts = Arc::new(Mutex::new(metrics::AgentCounts::default()));
    let mut agent = Agent::new(&args, dp, node.clone(), text, snat_range, counts.clone());
    // The first plan: over an adopted datapath, endpoints it served that
    // this config lacks drain from now.
    agent.first_plan(cfg.services, &node)?;
    if start == datapath::Start::Adopted {
        log::info!("adopted the running datapath in {}: its flows are kept, its programs replaced", args.bpffs.display());
    }
    let contents = agent.live().clone();
    for line in &contents.summary {
        log::info!("{line}");
    }
    if !contents.snat_ips.is_empty() {
        log::info!(
            "full NAT: SNAT ports {port_min}-{port_max}, quarantine {:?}, at most {half_open_max} half-open flows per client address",
            args.snat_quarantine
        );
        if args.snat_quarantine < TIME_WAIT {
            log::warn!(
                "--snat-quarantine {:?} is shorter than TIME_WAIT ({TIME_WAIT:?}): a port may be handed to a new \
                 flow while an endpoint still holds the old connection, whose late packets would then reach it",
                args.snat_quarantine
            );
        }
    }
    if let Some(listener) = metrics_listener {
        let created = stats::counters(&args.bpffs).map(|c| metrics::gateway_flows_created(&c.into_iter().collect()));
        let present = metrics::gateway_flows(&args.bpffs);
        if let (Ok(created), Ok(present), Ok(mut c)) = (created, present, counts.lock()) {
            c.at_start = Some((created, present));
        }
        log::info!("metrics on http://{}/metrics", listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()));
        tokio::spawn(metrics::serve(listener, args.bpffs.clone(), counts));
    }
    let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
    log::info!(
        "ready: {} frontends of {} service ports on {} (tc), conntrack {} entries, maps pinned in {}",
        contents.services.len(),
        agent.service_count(),
        names.join(", "),
        args.ct_size,
        args.bpffs.display()
    );
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut tick = tokio::time::interval(args.gc_interval);
    loop {
        tokio::select! {
            _ = term.recv() => { log::info!("SIGTERM"); break; }
            _ = int.recv() => { log::info!("SIGINT"); break; }
            _ = hup.recv() => agent.reload("SIGHUP", true),
            changed = config_watch.changed() => {
                if let Err(e) = changed {
                    log::warn!("watching {}: {e}", args.config.display());
                }
                agent.reload("file changed", false);
            }
            _ = tick.tick() => agent.collect(),
            changed = routes.changed() => {
                if let Err(e) = changed {
                    log::warn!("reading route changes: {e}");
                }
                // Let a burst of changes (an interface going down) settle.
                tokio::time::sleep(ROUTE_SETTLE).await;
                agent.replace_if_moved();
            }
        }
    }
    let cleanup = agent.removes_datapath_on_exit();
    drop(agent);
    if cleanup {
        log::info!("stopped; nothing of wsfwd is left attached or pinned");
    } else {
        log::info!("stopped; the datapath keeps forwarding from {} (`wsfwd cleanup` removes it)", args.bpffs.display());
    }
    Ok(())
}

/// How long route changes are left to settle before endpoints are placed again.
const ROUTE_SETTLE: Duration = Duration::from_millis(300);
#[cfg(test)]
mod tests {
    use super::default_snat_ports;

    #[test]
    fn default_snat_ports_avoid_ephemeral_and_node_ports() {
        // Linux's default ephemeral range leaves 61000-65535 above it.
        assert_eq!(default_snat_ports((32768, 60999)), Some((61000, 65535)));
        // Ephemeral ports up to 65535: the largest free range below.
        assert_eq!(default_snat_ports((32768, 65535)), Some((1024, 29999)));
        assert_eq!(default_snat_ports((1024, 65535)), None);
        // A small gap above is not worth it.
        assert_eq!(default_snat_ports((10000, 65000)), Some((1024, 9999)));
    }
}
