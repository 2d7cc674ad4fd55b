//! The running agent between events: reloading the config, applying plans
//! (keeping departed endpoints' replies translated, starting drains),
//! re-placing endpoints when routes change, and each collection.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use wsfwd_common::abi::{
    LOAD_APPLIED, LOAD_REJECTED, RevNatEntry, RevNatKey, SOURCE_API_CONNECTING, SOURCE_API_REACHABLE, SOURCE_API_UNREACHABLE,
};

use crate::{
    collector, config,
    datapath::{self, Datapath, contents::ServiceIds},
    drain::{self, Drains},
    kubernetes, metrics,
    model::Service,
    netif,
    placement::{self, Node},
    reload,
    settings::{RunArgs, Source, check_node_ports},
};

/// How long a config file that does not parse is given to be finished by
/// its writer (written in place, it is read as soon as writing starts).
const CONFIG_SETTLE: Duration = Duration::from_millis(50);

/// The running agent's state between events.
pub struct Agent<'a> {
    args: &'a RunArgs,
    dp: Datapath,
    /// The configuration applied last.
    services: Vec<Service>,
    node: Node,
    /// The config file's bytes as read last (applied or not).
    last_read: Vec<u8>,
    snat_range: (u16, u16),
    /// Endpoints behind the node that left the configuration, with the
    /// frontend their replies are translated to while their flows last.
    departed: BTreeMap<RevNatKey, RevNatEntry>,
    drains: Drains,
    /// What the metrics need from the agent.
    counts: Arc<Mutex<metrics::AgentCounts>>,
    /// Service ids, kept stable across reloads (and adopted at start).
    ids: ServiceIds,
    /// Whether a plan of this agent's is live. In DaemonSet mode an agent
    /// over a running datapath waits for complete lists before its first:
    /// until then the adopted plan stays exactly as it was.
    planned: bool,
    /// DaemonSet mode: Services skipped last time and why, and the notes
    /// already logged, so each is said once.
    skipped: BTreeMap<kubernetes::Key, Vec<String>>,
    notes: BTreeSet<String>,
}

impl<'a> Agent<'a> {
    /// The agent over a started datapath, before its first plan.
    pub fn new(
        args: &'a RunArgs,
        dp: Datapath,
        node: Node,
        last_read: Vec<u8>,
        snat_range: (u16, u16),
        counts: Arc<Mutex<metrics::AgentCounts>>,
    ) -> Self {
        Self {
            args,
            ids: ServiceIds::from_live(dp.live()),
            dp,
            services: Vec::new(),
            node,
            last_read,
            snat_range,
            departed: BTreeMap::new(),
            drains: Drains::new(args.drain_timeout),
            counts,
            planned: false,
            skipped: BTreeMap::new(),
            notes: BTreeSet::new(),
        }
    }

    /// Applies the configuration read at start. Over an adopted datapath,
    /// what it served that `services` lacks drains from now. Once this plan
    /// is live, the datapath is removed on exit only with `--cleanup-on-exit`.
    pub fn first_plan(&mut self, services: Vec<Service>, node: &Node) -> anyhow::Result<()> {
        self.drains.update(&[], &services, Instant::now());
        self.apply(&services, node)?;
        self.services = services;
        self.planned = true;
        self.dp.cleanup_on_drop = self.args.cleanup_on_exit;
        Ok(())
    }

    /// The live plan.
    pub fn live(&self) -> &datapath::Contents {
        self.dp.live()
    }

    /// Whether a plan of this agent's is live (see `planned`).
    pub fn planned(&self) -> bool {
        self.planned
    }

    /// Service ports in the configuration applied last.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    pub fn removes_datapath_on_exit(&self) -> bool {
        self.dp.cleanup_on_drop
    }
}

impl Agent<'_> {
    /// Reads the config file again and applies it if it changed (`force`:
    /// whether or not). A file that is rejected changes nothing.
    pub fn reload(&mut self, why: &str, force: bool) {
        let Source::File(file) = &self.args.source else { return };
        let path = file.display().to_string();
        let text = match std::fs::read(file) {
            Ok(t) => t,
            // Mid-swap (a rename or symlink swap in progress): the next event reads it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !force => return,
            Err(e) => return self.rejected(&path, &config::unreadable(file, &e)),
        };
        if text == self.last_read && !force {
            return;
        }
        self.last_read = text;
        log::info!("{why}: reading {path}");
        let started = Instant::now();
        let mut parsed = config::parse(&String::from_utf8_lossy(&self.last_read));
        if parsed.is_err() && !force {
            // Perhaps caught mid-write: judge what the writer leaves.
            std::thread::sleep(CONFIG_SETTLE);
            if let Ok(text) = std::fs::read(file) {
                if text != self.last_read {
                    self.last_read = text;
                    parsed = config::parse(&String::from_utf8_lossy(&self.last_read));
                }
            }
        }
        let cfg = match parsed {
            Ok(c) => c,
            Err(errors) => return self.rejected(&path, &errors),
        };
        cfg.notes.log();
        self.update(cfg.services, &path, started);
    }

    /// The cluster's Services or EndpointSlices changed: applies what they
    /// translate to. Services that do not translate are skipped alone (and
    /// said once); the first complete snapshot is the first plan.
    pub fn cluster_changed(&mut self, selected: kubernetes::Selected) {
        let started = Instant::now();
        for k in kubernetes::newly_skipped(&self.skipped, &selected.skipped) {
            for why in &selected.skipped[k] {
                log::warn!("{why}");
            }
            log::warn!("Service {}/{} skipped: it does not translate (above); the others are applied", k.0, k.1);
        }
        self.skipped = selected.skipped;
        // Said once each, at their level, as a file's are when it is read.
        for n in selected.notes.warnings.iter().filter(|n| !self.notes.contains(*n)) {
            log::warn!("{n}");
        }
        for n in selected.notes.infos.iter().filter(|n| !self.notes.contains(*n)) {
            log::info!("{n}");
        }
        self.notes = selected.notes.warnings.into_iter().chain(selected.notes.infos).collect();
        if self.planned {
            return self.update(selected.services, "kubernetes", started);
        }
        let first = self.place(&selected.services).and_then(|node| self.first_plan(selected.services, &node).map(|()| node));
        match first {
            Ok(node) => {
                let _ = self.dp.record_load(LOAD_APPLIED);
                log::info!("kubernetes: first complete list applied: {} service ports", self.services.len());
                self.node = node;
                if let Err(e) = self.attach_endpoint_side() {
                    log::warn!("endpoint-facing interfaces not attached ({e:#}); replies are translated at external egress");
                }
            }
            Err(e) => {
                let _ = self.dp.record_load(LOAD_REJECTED);
                log::error!("kubernetes: the first plan was not applied ({e:#}); the datapath keeps what it had");
            }
        }
    }

    /// Records the API server's state for `wsfwd status` and the metrics.
    pub fn api_state(&mut self, state: kubernetes::ApiState) {
        let code = match state {
            kubernetes::ApiState::Connecting => SOURCE_API_CONNECTING,
            kubernetes::ApiState::Reachable => SOURCE_API_REACHABLE,
            kubernetes::ApiState::Unreachable => SOURCE_API_UNREACHABLE,
        };
        if let Err(e) = self.dp.record_source(code) {
            log::warn!("recording the API server's state: {e:#}");
        }
        if let Ok(mut c) = self.counts.lock() {
            c.api = Some(state);
        }
    }

    /// Applies `services`, read from `source` since `started`, if they differ
    /// from the running configuration. Nothing is applied if the plan cannot be made.
    fn update(&mut self, services: Vec<Service>, source: &str, started: Instant) {
        let parsed_in = started.elapsed();
        let changes = reload::describe(&self.services, &services);
        if changes.is_empty() {
            log::info!("{source}: unchanged; nothing to apply");
            let _ = self.dp.record_load(LOAD_APPLIED);
            return;
        }
        let applied = self.place(&services).and_then(|node| self.apply(&services, &node).map(|a| (node, a)));
        match applied {
            Ok((node, a)) => {
                self.drains.update(&self.services, &services, Instant::now());
                self.services = services;
                self.node = node;
                let _ = self.dp.record_load(LOAD_APPLIED);
                let generation = self.dp.meta().map(|m| m.generation).unwrap_or(0);
                log::info!(
                    "{source}: applied (generation {generation}): {} tables written, {} frontends switched, {} untouched; \
                     parsed in {} ms, planned and written in {} ms",
                    a.tables_written,
                    a.frontends_switched,
                    a.frontends_untouched,
                    parsed_in.as_millis(),
                    (started.elapsed() - parsed_in).as_millis()
                );
                for line in changes {
                    log::info!("  {line}");
                }
            }
            Err(e) => {
                let _ = self.dp.record_load(LOAD_REJECTED);
                log::error!("{source}: not applied ({e:#}); the running configuration is kept");
            }
        }
    }

    fn rejected(&mut self, path: &str, errors: &config::ConfigErrors) {
        for e in &errors.0 {
            log::error!("{e}");
        }
        log::error!("{path}: rejected ({} error(s)); the running configuration is kept", errors.0.len());
        let _ = self.dp.record_load(LOAD_REJECTED);
    }

    /// Where `services`' endpoints sit from this node, checked against the
    /// SNAT port range: what a new plan is made for.
    fn place(&self, services: &[Service]) -> anyhow::Result<Node> {
        let ifaces = netif::resolve(&self.args.ifaces).map_err(anyhow::Error::msg)?;
        let node = placement::resolve(services, &ifaces, &self.args.snat_ips, self.args.node_name.as_deref()).map_err(anyhow::Error::msg)?;
        check_node_ports(self.snat_range, services)?;
        Ok(node)
    }

    /// Compiles `services` as placed on `node` and makes it the live plan.
    /// Endpoints behind the node that leave it keep their replies
    /// translated (`REVNAT`) until their last flow ends.
    fn apply(&mut self, services: &[Service], node: &Node) -> anyhow::Result<datapath::plan::Applied> {
        let mut next = datapath::contents::compile_with(services, node, self.args.hash_seed, &mut self.ids)
            .map_err(anyhow::Error::msg)?;
        let keys: BTreeSet<RevNatKey> = next.revnat.iter().map(|(k, _)| *k).collect();
        let mut departed = self.departed.clone();
        departed.extend(self.dp.live().revnat.iter().filter(|(k, _)| !keys.contains(k)).copied());
        departed.retain(|k, _| !keys.contains(k));
        next.revnat.extend(departed.iter().map(|(k, v)| (*k, *v)));
        let applied = self.dp.replace(&next)?;
        // A departed entry of an endpoint that still takes new flows (it
        // moved: placement changed) keeps its old flows' replies translated,
        // but the endpoint does not drain.
        let (serving, _) = drain::endpoints(services);
        for k in departed.keys().map(drain::key_of).filter(|k| !serving.contains(k)) {
            self.drains.add(k, Instant::now());
        }
        self.departed = departed;
        Ok(applied)
    }

    /// Puts the reply program on the endpoint-facing interfaces of the
    /// current placement (or those `--endpoint-iface` names).
    pub fn attach_endpoint_side(&mut self) -> anyhow::Result<()> {
        let external = netif::resolve(&self.args.ifaces).map_err(anyhow::Error::msg)?;
        let ifaces = placement::endpoint_side(&self.args.endpoint_ifaces, &self.node, &external).map_err(anyhow::Error::msg)?;
        self.dp.attach_endpoint_side(&ifaces, self.args.tc_mode)
    }

    /// Links changed: cached next hops are stale, and veths may have come
    /// or gone.
    pub fn links_changed(&mut self) {
        self.dp.refresh_ifaces();
        self.forget_routes();
    }

    /// Routes, addresses, links or neighbours changed: the datapath's cached
    /// next hops are stale.
    pub fn forget_routes(&mut self) {
        if let Err(e) = self.dp.forget_routes() {
            log::warn!("the datapath's cached routes could not be invalidated ({e:#}); they expire within a second");
        }
    }

    /// Places the endpoints again (routes or node addresses changed) and, if
    /// any moved, switches to the plan for where they are now. A plan that
    /// cannot be made keeps the running one, and says why.
    pub fn replace_if_moved(&mut self) {
        if !self.planned {
            return;
        }
        let placed = netif::resolve(&self.args.ifaces)
            .and_then(|i| placement::resolve(&self.services, &i, &self.args.snat_ips, self.args.node_name.as_deref()));
        let next = match placed {
            Ok(next) if next == self.node => return,
            Ok(next) => next,
            Err(e) => return log::warn!("routes changed, but endpoints could not be placed again ({e}); keeping the running plan"),
        };
        let services = self.services.clone();
        match self.apply(&services, &next) {
            Ok(_) => {
                log::info!("routes changed: endpoints placed again");
                for line in self.dp.live().summary.iter().filter(|l| l.starts_with("endpoint ")) {
                    log::info!("{line}");
                }
                self.node = next;
                if let Err(e) = self.attach_endpoint_side() {
                    log::warn!("endpoint-facing interfaces not updated ({e:#}); their replies are translated at external egress");
                }
            }
            Err(e) => log::warn!("routes changed, but the new plan was not applied ({e:#}); keeping the running one"),
        }
    }

    /// One collection: drained endpoints past their deadline have their
    /// flows ended; departed endpoints whose last flow ended lose their
    /// `REVNAT` entry.
    pub fn collect(&mut self) {
        let due = self.drains.due(Instant::now());
        if !due.is_empty() {
            match drain::end_flows(&mut self.dp, &due) {
                Ok(ended) => {
                    for (addr, port, _) in &due {
                        log::info!("endpoint {addr}:{port}: drain timeout reached");
                    }
                    log::info!(
                        "drain timeout: {} TCP flows reset (a RST to each side), {} UDP flows dropped",
                        ended.tcp_reset,
                        ended.udp_dropped
                    );
                }
                Err(e) => log::warn!("ending drained flows: {e}"),
            }
        }
        let collected = collector::collect(&mut self.dp, &self.args.timeouts, self.args.snat_quarantine);
        if let Ok(mut c) = self.counts.lock() {
            c.gateway_flows_collected += collected.gateway_removed;
            c.heartbeat = Some(Instant::now());
        }
        let in_use = collected.in_use;
        let done: Vec<RevNatKey> = self.departed.keys().filter(|k| !in_use.contains(k)).copied().collect();
        if done.is_empty() {
            return;
        }
        for k in &done {
            self.departed.remove(k);
        }
        let mut next = self.dp.live().clone();
        next.revnat.retain(|(k, _)| !done.contains(k));
        match self.dp.replace(&next) {
            Ok(_) => {
                for k in done {
                    log::info!("endpoint {}:{} drained: its last flow ended", std::net::Ipv4Addr::from(k.addr), u16::from_be_bytes(k.port));
                }
            }
            Err(e) => log::warn!("removing drained endpoints: {e:#}"),
        }
    }
}

