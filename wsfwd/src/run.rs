//! `wsfwd run`: forward until told to stop, then remove everything.
use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use wsfwd_common::abi::{FlowEntry, FlowKey};

use crate::{
    config,
    datapath::{self, Datapath, gc},
    model::Service,
    netif,
    placement::{self, Node},
    route,
};

pub struct RunArgs {
    pub config: PathBuf,
    pub ifaces: Vec<String>,
    pub bpffs: PathBuf,
    pub tc_mode: datapath::attach::Mode,
    pub cleanup_on_exit: bool,
    pub ct_size: u32,
    pub hash_seed: u32,
    pub timeouts: gc::Timeouts,
    pub gc_interval: Duration,
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
fn snat_ports(args: &RunArgs, services: &[crate::model::Service]) -> anyhow::Result<(u16, u16)> {
    let range = match args.snat_ports {
        Some(r) => r,
        None => default_snat_ports(local_port_range())
            .ok_or_else(|| anyhow::anyhow!("no free port range for SNAT: give --snat-ports"))?,
    };
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
    Ok(range)
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
    let cfg = config::load(&args.config).map_err(RunError::Config)?;
    cfg.notes.log();
    // Watching from before the first look: no change can fall in between.
    let mut routes = route::Watch::new().context("subscribing to route changes (rtnetlink)")?;
    let ifaces = netif::resolve(&args.ifaces).map_err(anyhow::Error::msg)?;
    let mut node = placement::resolve(&cfg.services, &ifaces, &args.snat_ips).map_err(anyhow::Error::msg)?;
    let contents = datapath::contents::compile(&cfg.services, &node, args.hash_seed).map_err(anyhow::Error::msg)?;
    let (port_min, port_max) = snat_ports(&args, &cfg.services)?;
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
        snat_ports: (u32::from(port_min), u32::from(port_max) - u32::from(port_min) + 1),
        half_open_max,
        bpffs: &args.bpffs,
        attach: args.tc_mode,
    };
    let mut dp = Datapath::start(&contents, datapath::Capacity::of(&cfg.services), &ifaces, &opts)?;
    dp.cleanup_on_drop = args.cleanup_on_exit;
    if dp.start == datapath::Start::Adopted {
        log::info!("adopted the running datapath in {}: its flows are kept, its programs replaced", args.bpffs.display());
    }
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
    let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
    log::info!(
        "ready: {} frontends of {} service ports on {} (tc), conntrack {} entries, maps pinned in {}",
        contents.services.len(),
        cfg.services.len(),
        names.join(", "),
        args.ct_size,
        args.bpffs.display()
    );

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut tick = tokio::time::interval(args.gc_interval);
    loop {
        tokio::select! {
            _ = term.recv() => { log::info!("SIGTERM"); break; }
            _ = int.recv() => { log::info!("SIGINT"); break; }
            _ = tick.tick() => collect(&mut dp, &args.timeouts, args.snat_quarantine),
            changed = routes.changed() => {
                if let Err(e) = changed {
                    log::warn!("reading route changes: {e}");
                }
                // Let a burst of changes (an interface going down) settle.
                tokio::time::sleep(ROUTE_SETTLE).await;
                replace_if_moved(&mut dp, &mut node, &cfg.services, &args);
            }
        }
    }
    let cleanup = dp.cleanup_on_drop;
    drop(dp);
    if cleanup {
        log::info!("stopped; nothing of wsfwd is left attached or pinned");
    } else {
        log::info!("stopped; the datapath keeps forwarding from {} (`wsfwd cleanup` removes it)", args.bpffs.display());
    }
    Ok(())
}

/// How long route changes are left to settle before endpoints are placed again.
const ROUTE_SETTLE: Duration = Duration::from_millis(300);

/// Places the endpoints again (routes or node addresses changed) and, if any
/// moved, switches the datapath to the plan for where they are now. A plan
/// that cannot be made keeps the running one, and says why.
fn replace_if_moved(dp: &mut Datapath, node: &mut Node, services: &[Service], args: &RunArgs) {
    let placed = netif::resolve(&args.ifaces).and_then(|i| placement::resolve(services, &i, &args.snat_ips));
    let next = match placed {
        Ok(next) if next == *node => return,
        Ok(next) => next,
        Err(e) => return log::warn!("routes changed, but endpoints could not be placed again ({e}); keeping the running plan"),
    };
    let applied = datapath::contents::compile(services, &next, args.hash_seed)
        .map_err(anyhow::Error::msg)
        .and_then(|contents| dp.replace(&contents).map(|()| contents));
    match applied {
        Ok(contents) => {
            log::info!("routes changed: endpoints placed again");
            for line in contents.summary.iter().filter(|l| l.starts_with("endpoint ")) {
                log::info!("{line}");
            }
            *node = next;
        }
        Err(e) => log::warn!("routes changed, but the new plan was not applied ({e:#}); keeping the running one"),
    }
}

fn collect(dp: &mut Datapath, timeouts: &gc::Timeouts, quarantine: Duration) {
    let now = gc::monotonic_ns();
    sweep("conntrack", dp.conntrack(), now, timeouts, Duration::ZERO);
    sweep("handshakes", dp.handshakes(), now, timeouts, Duration::ZERO);
    // SNAT ports stay reserved for the quarantine after their flow ended.
    let (nat, half_open) = dp.nat_and_half_open();
    let (entries, removed) = sweep("nat", nat, now, timeouts, quarantine);
    recount_half_open(half_open, &gc::half_open(&entries, &removed));
}

/// Removes expired flows; returns the snapshot it decided from and the flows it removed.
fn sweep(
    name: &str,
    map: &mut datapath::FlowMap,
    now: u64,
    timeouts: &gc::Timeouts,
    hold: Duration,
) -> (Vec<(FlowKey, FlowEntry)>, Vec<gc::Expired>) {
    let entries: Vec<_> = map.iter().filter_map(Result::ok).collect();
    let mut removed = Vec::new();
    let mut kept = 0;
    for flow in gc::expired(&entries, now, timeouts, hold) {
        // Decided from a snapshot: delete only what still holds the values
        // decided on. A packet since, or a new flow on the tuple, keeps it.
        // (The bpf syscall has no compare-and-delete: a packet landing
        // between this read and the delete is lost with the entry.)
        let unchanged = flow.iter().all(|(key, was)| map.get(key, 0).is_ok_and(|now| now == *was));
        if !unchanged {
            kept += 1;
            continue;
        }
        for (key, _) in &flow {
            // Already gone (evicted) is fine.
            let _ = map.remove(key);
        }
        removed.push(flow);
    }
    if !removed.is_empty() || kept > 0 {
        log::debug!(
            "{name}: removed {} expired flows of {} entries; {kept} flows changed since and kept",
            removed.len(),
            entries.len()
        );
    }
    (entries, removed)
}

/// Replaces the datapath's running counts of half-open flows per client with
/// the true ones (the datapath's can drift: a count it adds between the
/// snapshot and this write is lost, a flow that never completes is never
/// subtracted).
fn recount_half_open(map: &mut datapath::HalfOpenMap, counts: &std::collections::HashMap<[u8; 4], u64>) {
    let stale: Vec<[u8; 4]> = map.keys().filter_map(Result::ok).filter(|k| !counts.contains_key(k)).collect();
    for k in stale {
        let _ = map.remove(&k);
    }
    for (k, n) in counts {
        if let Err(e) = map.insert(k, n, 0) {
            log::debug!("half-open count of {}: {e}", std::net::Ipv4Addr::from(*k));
        }
    }
}

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
