//! `wsfwd run`: start (or take over) the datapath, apply the config, then
//! serve events — config changes, SIGHUP, route changes, collections — until
//! SIGINT/SIGTERM, leaving the datapath forwarding unless told otherwise.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    agent::Agent,
    bpffs::PinDir,
    check, config,
    datapath::{self, Datapath},
    kubernetes::{self, Follower, Notice},
    metrics,
    netif, placement, route,
    settings::{RunArgs, Source, TIME_WAIT, default_half_open, snat_ports},
    stats,
    watch::ConfigWatch,
};

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
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut follower = None;
    let (text, initial) = match &args.source {
        Source::File(path) => {
            let text = std::fs::read(path).map_err(|e| RunError::Config(config::unreadable(path, &e)))?;
            let cfg = config::parse(&String::from_utf8_lossy(&text)).map_err(RunError::Config)?;
            cfg.notes.log();
            (text, Some(cfg.services))
        }
        Source::Kubernetes(opts) => {
            let client = kubernetes::client(opts.kubeconfig.as_deref()).await?;
            log::info!(
                "kubernetes: following Services and EndpointSlices ({}), node {}",
                opts.label_selector().map_or_else(|| "all".into(), |s| format!("labels {s}")),
                args.node_name.as_deref().unwrap_or("unnamed (no --node-name or NODE_NAME: routes alone place endpoints)")
            );
            let mut f = Follower::start(client, opts);
            if args.dry_run {
                return dry_run(&args, &mut f).await;
            }
            follower = Some(f);
            (Vec::new(), None)
        }
    };
    // Watching from before the first look: no change can fall in between.
    let mut routes = route::Watch::new().context("subscribing to route changes (rtnetlink)")?;
    let mut links = route::Watch::links().context("subscribing to link changes (rtnetlink)")?;
    let mut neighbours = route::Watch::neighbours().context("subscribing to neighbour changes (rtnetlink)")?;
    let mut config_watch = match &args.source {
        Source::File(path) => Some(ConfigWatch::new(path).context("watching the config file (inotify)")?),
        Source::Kubernetes(_) => None,
    };
    let ifaces = netif::resolve(&args.ifaces).map_err(anyhow::Error::msg)?;
    // One agent per pin directory: checked first, before anything else is taken.
    let pins = PinDir::open(&args.bpffs)?;
    // DaemonSet mode: a running datapath is adopted at once and keeps its
    // plan until the API server's lists are complete (it may be away: the
    // flows must not wait for it); a fresh one waits for them.
    let initial = match (initial, follower.as_mut()) {
        (Some(services), _) => Some(services),
        (None, Some(f)) if pins.pinned_maps().is_empty() => {
            log::info!("kubernetes: waiting for complete lists of Services and EndpointSlices before attaching");
            tokio::select! {
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
                () = f.until_listed() => {}
            }
            Some(f.selected().services)
        }
        _ => None,
    };
    let services = initial.clone().unwrap_or_default();
    let node = placement::resolve(&services, &ifaces, &args.snat_ips, args.node_name.as_deref()).map_err(anyhow::Error::msg)?;
    // Compiled here only to find what would make the plan fail, before anything is touched.
    datapath::contents::compile(&services, &node, args.hash_seed).map_err(anyhow::Error::msg)?;
    let snat_range = snat_ports(&args, &services)?;
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
    let need = match follower {
        // A cluster's endpoints come and go: room beyond the first list's.
        Some(_) => datapath::Capacity::of(&services).at_least(datapath::Capacity::CLUSTER),
        None => datapath::Capacity::of(&services),
    };
    let dp = Datapath::start(pins, need, &ifaces, &opts)?;
    let start = dp.start;
    let counts = Arc::new(Mutex::new(metrics::AgentCounts::default()));
    let mut agent = Agent::new(&args, dp, node.clone(), text, snat_range, counts.clone());
    // The first plan: over an adopted datapath, endpoints it served that
    // this config lacks drain from now.
    match initial {
        Some(services) => agent.first_plan(services, &node)?,
        None => log::info!("kubernetes: the running datapath keeps its plan until the lists are complete"),
    }
    if let Some(f) = &follower {
        agent.api_state(f.state());
    }
    // Named interfaces that cannot take the program fail the start; chosen
    // ones only lose the shortcut (egress translates their replies). A
    // deferred first plan attaches them then (routes to its endpoints).
    if agent.planned()
        && let Err(e) = agent.attach_endpoint_side()
    {
        if !args.endpoint_ifaces.is_empty() {
            return Err(e.context("--endpoint-iface").into());
        }
        log::warn!("endpoint-facing interfaces not attached ({e:#}); replies are translated at external egress");
    }
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
        // Three collections missed, and some slack for a slow one.
        let limit = args.gc_interval * 3 + Duration::from_secs(5);
        tokio::spawn(metrics::serve(listener, args.bpffs.clone(), counts, limit));
    }
    let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
    let of = if agent.planned() { format!("of {} service ports", agent.service_count()) } else { "of the adopted plan".into() };
    log::info!(
        "ready: {} frontends {of} on {} (tc), conntrack {} entries, maps pinned in {}",
        contents.services.len(),
        names.join(", "),
        args.ct_size,
        args.bpffs.display()
    );
    let mut tick = tokio::time::interval(args.gc_interval);
    loop {
        tokio::select! {
            _ = term.recv() => { log::info!("SIGTERM"); break; }
            _ = int.recv() => { log::info!("SIGINT"); break; }
            _ = hup.recv() => agent.reload("SIGHUP", true),
            changed = file_changed(&mut config_watch) => {
                if let Err(e) = changed {
                    log::warn!("watching the config file: {e}");
                }
                agent.reload("file changed", false);
            }
            notice = next_notice(&mut follower) => match notice {
                Notice::Changed => {
                    if let Some(f) = &follower {
                        agent.cluster_changed(f.selected());
                    }
                }
                Notice::State(state) => agent.api_state(state),
            },
            _ = tick.tick() => agent.collect(),
            changed = links.changed() => {
                if let Err(e) = changed {
                    log::warn!("reading link changes: {e}");
                }
                agent.links_changed();
            }
            changed = neighbours.changed() => {
                if let Err(e) = changed {
                    log::warn!("reading neighbour changes: {e}");
                }
                agent.forget_routes();
            }
            changed = routes.changed() => {
                if let Err(e) = changed {
                    log::warn!("reading route changes: {e}");
                }
                agent.forget_routes();
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

async fn file_changed(watch: &mut Option<ConfigWatch>) -> std::io::Result<()> {
    match watch {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

async fn next_notice(follower: &mut Option<Follower>) -> Notice {
    match follower {
        Some(f) => f.next().await,
        None => std::future::pending().await,
    }
}

/// How long `--dry-run` waits for the API server's lists.
const DRY_RUN_WAIT: Duration = Duration::from_secs(60);

/// `run --kubernetes --dry-run`: the plan the cluster's objects make, as
/// `wsfwd check --iface` prints it (routes read, nothing touched).
async fn dry_run(args: &RunArgs, f: &mut Follower) -> Result<(), RunError> {
    if tokio::time::timeout(DRY_RUN_WAIT, f.until_listed()).await.is_err() {
        return Err(anyhow::anyhow!("the API server's lists were not complete within {} s", DRY_RUN_WAIT.as_secs()).into());
    }
    let selected = f.selected();
    selected.notes.log();
    for (k, why) in &selected.skipped {
        for w in why {
            log::warn!("{w}");
        }
        log::warn!("Service {}/{} would be skipped", k.0, k.1);
    }
    let ifaces = netif::resolve(&args.ifaces).map_err(anyhow::Error::msg)?;
    let node = placement::resolve(&selected.services, &ifaces, &args.snat_ips, args.node_name.as_deref()).map_err(anyhow::Error::msg)?;
    print!("{}", check::render(&check::plan(&selected.services, Some(&node), args.hash_seed)));
    Ok(())
}

/// How long route changes are left to settle before endpoints are placed again.
const ROUTE_SETTLE: Duration = Duration::from_millis(300);
