//! The kernel side, from userspace: load the embedded programs, size and fill
//! their maps, attach to the external interfaces — or adopt the maps and
//! attachments an earlier agent left pinned, and swap the new programs in.
//!
//! The datapath outlives the agent: maps and links stay pinned under the pin
//! directory and keep forwarding while no agent runs. Only a fresh start that
//! fails, `run --cleanup-on-exit` or `wsfwd cleanup` removes them.
pub mod attach;
pub mod contents;
pub mod gc;
pub mod ifaces;
pub mod plan;

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapInfo},
    programs::{SchedClassifier, TcAttachType, Xdp},
};
use wsfwd_common::abi::{
    AffinityEntry, AffinityKey, ATTACH_F_ENDPOINT_SIDE, Attachment, FlowEntry, FlowKey, LAYOUT_VERSION, LOAD_APPLIED, MAX_SNAT_IPS, Meta, globals, names_text,
    map_names as names,
};

pub use contents::{Capacity, Contents};

use crate::{
    bpffs::{self, PinDir},
    netif::{self, Iface},
};

/// The compiled eBPF object, built by build.rs from wsfwd-ebpf.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wsfwd-ebpf"));

const INGRESS: &str = "wsfwd_tc_ingress";
const EGRESS: &str = "wsfwd_tc_egress";
const XDP: &str = "wsfwd_xdp_ingress";
const FROM_ENDPOINTS: &str = "wsfwd_tc_from_endpoints";
const IFACES: &str = "IFACES";
/// What loading and attaching the programs takes, for errors that come from lacking it.
const NEEDS: &str = "this needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON";
const ROUTE_GENERATION: &str = "ROUTE_GENERATION";

pub struct Options {
    pub ct_size: u32,
    pub nat_size: u32,
    pub hash_seed: u32,
    /// First SNAT port and how many.
    pub snat_ports: (u32, u32),
    /// Full-NAT TCP flows one client address may hold before their handshakes complete.
    pub half_open_max: u32,
    pub attach: attach::Mode,
    /// Whether XDP takes frontend traffic first (`--attach`).
    pub hook: attach::Hook,
}

pub type FlowMap = HashMap<MapData, FlowKey, FlowEntry>;
/// Half-open full-NAT flows by client address.
pub type HalfOpenMap = HashMap<MapData, [u8; 4], u64>;
/// ClientIP affinities.
pub type AffinityMap = HashMap<MapData, AffinityKey, AffinityEntry>;

/// How the agent found the pin directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Nothing pinned: maps created and programs attached.
    Fresh,
    /// A running datapath: its maps adopted, its programs replaced.
    Adopted,
}

pub struct Datapath {
    ebpf: Ebpf,
    conntrack: FlowMap,
    handshakes: FlowMap,
    nat: FlowMap,
    half_open: HalfOpenMap,
    meta: Array<MapData, Meta>,
    affinity: AffinityMap,
    /// The live plan, as last applied, and where it is in the maps.
    live: Contents,
    layout: plan::Layout,
    pub start: Start,
    /// Where the programs are attached: (interface, mode).
    attached: Vec<(String, u32)>,
    ifaces: ifaces::Ifaces,
    /// Remove everything when dropped: set by a fresh start until its owner
    /// has a plan live (so a failure leaves nothing behind), and by
    /// `--cleanup-on-exit`.
    pub cleanup_on_drop: bool,
    pins: PinDir,
}

/// Gateway flows not yet established: a quarter of conntrack's size (at
/// least 1,024 entries). A flood from spoofed addresses churns only these.
pub fn handshakes_size(ct_size: u32) -> u32 {
    (ct_size / 4).max(1024)
}

/// Capacity of a hash map of `n` entries that may grow with reloads and
/// re-placement, never small.
fn room(n: usize) -> u32 {
    (n.max(1) * 2).clamp(1024, u32::MAX as usize) as u32
}

/// Key and value sizes of every pinned map, as this build reads them.
fn layout(name: &str) -> (u32, u32) {
    use core::mem::size_of;
    use wsfwd_common::abi::*;
    let (k, v) = match name {
        names::SERVICES => (size_of::<ServiceKey>(), size_of::<ServiceEntry>()),
        names::BACKENDS => (4, size_of::<Backend>()),
        names::MAGLEV | names::SNAT_IPS => (4, 4),
        names::CONNTRACK | names::HANDSHAKES | names::NAT => (size_of::<FlowKey>(), size_of::<FlowEntry>()),
        names::REVNAT => (size_of::<RevNatKey>(), size_of::<RevNatEntry>()),
        names::COUNTERS | names::HALF_OPEN => (4, 8),
        names::ENDPOINT_ADDRS => (4, 1),
        names::META => (4, size_of::<Meta>()),
        names::ATTACHED => (4, size_of::<Attachment>()),
        names::FRONTEND_NAMES => (size_of::<ServiceKey>(), size_of::<FrontendName>()),
        names::AFFINITY => (size_of::<AffinityKey>(), size_of::<AffinityEntry>()),
        names::READY => (size_of::<ReadyKey>(), 4),
        names::TRAFFIC => (4, size_of::<Traffic>()),
        names::TRAFFIC_OWNERS => (4, size_of::<TrafficOwner>()),
        _ => (0, 0),
    };
    (k as u32, v as u32)
}

/// `BPF_F_MMAPABLE`: `MAGLEV` is written through memory.
const MMAPABLE: u32 = 1 << 10;

/// What the pinned maps under `pins` are, or why they must not be adopted.
fn pinned_meta(pins: &PinDir) -> anyhow::Result<Option<Meta>> {
    let found = pins.pinned_maps();
    if found.is_empty() {
        return Ok(None);
    }
    let dir = pins.dir().display();
    let refuse = |why: String| {
        anyhow!(
            "{dir} holds maps of another wsfwd layout ({why}); this wsfwd uses layout {LAYOUT_VERSION} and will not \
             read them. Run the wsfwd that pinned them, or remove them with `wsfwd cleanup --bpffs {dir}` \
             (every flow through them is lost) and start again"
        )
    };
    let meta: Array<_, Meta> = match MapData::from_pin(pins.path(names::META)) {
        Ok(m) => Array::try_from(aya::maps::Map::Array(m))?,
        Err(_) => return Err(refuse("no META map".into())),
    };
    let meta = meta.get(&0, 0).context("reading META")?;
    if meta.layout != LAYOUT_VERSION {
        return Err(refuse(format!("layout {}", meta.layout)));
    }
    for name in names::ALL {
        let info = MapInfo::from_pin(pins.path(name)).map_err(|_| refuse(format!("{name} missing")))?;
        let want = layout(name);
        if name == names::MAGLEV && info.map_flags() & MMAPABLE == 0 {
            return Err(refuse("MAGLEV is not memory-mappable".into()));
        }
        if (info.key_size(), info.value_size()) != want {
            return Err(refuse(format!(
                "{name} has {}-byte keys and {}-byte values, not {} and {}",
                info.key_size(),
                info.value_size(),
                want.0,
                want.1
            )));
        }
    }
    Ok(Some(meta))
}

fn max_entries(pins: &PinDir, name: &str) -> anyhow::Result<u32> {
    Ok(MapInfo::from_pin(pins.path(name)).with_context(|| format!("reading {name}"))?.max_entries())
}

impl Datapath {
    /// Takes over the datapath pinned in `pins` (its flows kept, its
    /// programs replaced in place, its plan live until `replace`), or starts
    /// one with an empty plan, attached.
    pub fn start(pins: PinDir, need: Capacity, ifaces: &[Iface], opts: &Options) -> anyhow::Result<Self> {
        let adopted = pinned_meta(&pins)?;
        let capacity = match adopted {
            // The plan maps have the size they were made with.
            Some(_) => Capacity {
                backends: max_entries(&pins, names::BACKENDS)? / 2,
                maglev: max_entries(&pins, names::MAGLEV)? / 2,
                ready: max_entries(&pins, names::READY)?,
                frontends: max_entries(&pins, names::SERVICES)?,
            },
            None => need.with_headroom(),
        };
        if let Some(meta) = adopted {
            if meta.hash_seed != opts.hash_seed {
                log::warn!(
                    "--hash-seed differs from the running datapath's: flows keep their endpoints, but a \
                     gateway flow whose conntrack entry is evicted may now be sent elsewhere"
                );
            }
            for name in [names::CONNTRACK, names::NAT] {
                let (have, asked) = (max_entries(&pins, name)?, if name == names::NAT { opts.nat_size } else { opts.ct_size });
                if have != asked {
                    log::warn!("{name} keeps its {have} entries while it is pinned (asked for {asked}; resized only after `wsfwd cleanup`)");
                }
            }
        }
        let mut loader = EbpfLoader::new();
        loader
            .override_global(globals::HASH_SEED, &opts.hash_seed, true)
            .override_global(globals::SNAT_PORT_MIN, &opts.snat_ports.0, true)
            .override_global(globals::SNAT_PORT_COUNT, &opts.snat_ports.1, true)
            .override_global(globals::HALF_OPEN_MAX, &opts.half_open_max, true)
            .map_max_entries(names::SERVICES, room(need.frontends as usize))
            .map_max_entries(names::FRONTEND_NAMES, room(need.frontends as usize))
            .map_max_entries(names::READY, capacity.ready)
            // Clients with affinity, over every service that has it.
            .map_max_entries(names::AFFINITY, handshakes_size(opts.ct_size))
            .map_max_entries(names::BACKENDS, 2 * capacity.backends)
            // A slot per endpoint of each service, as many as `BACKENDS` ids.
            .map_max_entries(names::TRAFFIC, 2 * capacity.backends)
            .map_max_entries(names::TRAFFIC_OWNERS, 2 * capacity.backends)
            .map_max_entries(names::MAGLEV, 2 * capacity.maglev)
            .map_max_entries(names::REVNAT, room(capacity.backends as usize))
            .map_max_entries(names::ENDPOINT_ADDRS, room(capacity.backends as usize))
            .map_max_entries(names::CONNTRACK, opts.ct_size)
            .map_max_entries(names::HANDSHAKES, handshakes_size(opts.ct_size))
            .map_max_entries(names::NAT, opts.nat_size)
            // One per client address with half-open flows: at most one per flow.
            .map_max_entries(names::HALF_OPEN, (opts.nat_size / 2).max(64));
        // Pinned maps are opened, not created; missing ones are created and pinned.
        let paths: Vec<_> = names::ALL.iter().map(|n| (*n, pins.path(n))).collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let loaded = loader.load(OBJECT);
        let mut ebpf = match loaded {
            Ok(e) => e,
            Err(e) => {
                if adopted.is_none() {
                    let _ = bpffs::remove_all(pins.dir());
                }
                bail!("loading the eBPF programs: {e} ({NEEDS})");
            }
        };
        // A fresh start that fails from here on removes what it pinned.
        let fresh_dir = adopted.is_none().then(|| pins.dir().to_owned());
        let guard = FreshGuard(fresh_dir);
        let take = |ebpf: &mut Ebpf, name: &str| ebpf.take_map(name).ok_or_else(|| anyhow!("no {name} map"));
        let conntrack = HashMap::try_from(take(&mut ebpf, names::CONNTRACK)?)?;
        let handshakes = HashMap::try_from(take(&mut ebpf, names::HANDSHAKES)?)?;
        let nat = HashMap::try_from(take(&mut ebpf, names::NAT)?)?;
        let half_open = HashMap::try_from(take(&mut ebpf, names::HALF_OPEN)?)?;
        let meta = Array::try_from(take(&mut ebpf, names::META)?)?;
        let affinity = HashMap::try_from(take(&mut ebpf, names::AFFINITY)?)?;
        let iface_table = ifaces::Ifaces::new(Array::try_from(take(&mut ebpf, IFACES)?)?);
        let (maglev_size, backends_size) = (2 * capacity.maglev, 2 * capacity.backends);
        let maglev_pin = pins.path(names::MAGLEV);
        let layout = match adopted {
            Some(_) => plan::Layout::read(&mut ebpf, &maglev_pin, maglev_size, backends_size, MAX_SNAT_IPS)?,
            None => plan::Layout::new(&maglev_pin, maglev_size, backends_size, MAX_SNAT_IPS)?,
        };
        let previous = layout.live();
        let mut this = Self {
            ebpf,
            conntrack,
            handshakes,
            nat,
            half_open,
            meta,
            affinity,
            live: previous,
            layout,
            start: if adopted.is_some() { Start::Adopted } else { Start::Fresh },
            attached: Vec::new(),
            ifaces: iface_table,
            cleanup_on_drop: adopted.is_none(),
            pins,
        };
        let prior = adopted.unwrap_or_default();
        let loaded_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        // The counts carry over from the adopted datapath.
        let meta = Meta { layout: LAYOUT_VERSION, hash_seed: opts.hash_seed, last_load: LOAD_APPLIED, last_load_unix: loaded_at, ..prior };
        // `this` cleans up after itself (`cleanup_on_drop`) from here on.
        guard.disarm();
        this.write_meta(meta)?;
        this.refresh_ifaces();
        this.attach(ifaces, opts.attach, opts.hook)?;
        Ok(this)
    }

    fn attach(&mut self, ifaces: &[Iface], mode: attach::Mode, hook: attach::Hook) -> anyhow::Result<()> {
        let attached_map: HashMap<_, u32, Attachment> =
            HashMap::try_from(self.ebpf.map_mut(names::ATTACHED).ok_or_else(|| anyhow!("no ATTACHED map"))?)?;
        let previous: std::collections::HashMap<u32, Attachment> =
            attached_map.iter().filter_map(Result::ok).collect();
        let mut modes = Vec::new();
        for (prog, hook) in [(INGRESS, TcAttachType::Ingress), (EGRESS, TcAttachType::Egress)] {
            let p: &mut SchedClassifier = self
                .ebpf
                .program_mut(prog)
                .ok_or_else(|| anyhow!("program {prog} missing from the object"))?
                .try_into()?;
            p.load().with_context(|| format!("loading {prog} ({NEEDS}; with them, a refusal is the verifier's, whose output follows)"))?;
            // Says which build runs: the tag is a hash of the instructions.
            if let Ok(info) = p.info() {
                log::info!("{prog}: program id {}, tag {:016x}", info.id(), info.tag());
            }
            for iface in ifaces {
                let was = previous.get(&iface.index).filter(|a| a.name == name_bytes(&iface.name)).map(|a| a.mode);
                let mode = attach::attach_or_replace(p, &iface.name, hook, attach::hook_name(hook), &self.pins, was, mode)?;
                // Known at once, so that a failure further on detaches it.
                if !self.attached.iter().any(|(n, _)| n == &iface.name) {
                    self.attached.push((iface.name.clone(), mode));
                }
                modes.push((iface.clone(), mode));
            }
        }
        // XDP in front of TC where chosen: TC stays behind it for what XDP passes on.
        let mut xdp_modes = std::collections::HashMap::new();
        for iface in ifaces {
            let (mut choice, mut why) = attach::xdp_choice(hook, netif::driver(&iface.name).as_deref());
            // XDP compares frames' destinations with the interface's MAC.
            if choice.is_some() {
                let mac = netif::mac(&iface.name).filter(|_| iface.index < ifaces::MAX_INDEX);
                match mac {
                    Some(mac) => {
                        self.ifaces.set_xdp(iface.index, mac)?;
                    }
                    None => (choice, why) = (None, "TC (its MAC or index could not be used for XDP)".into()),
                }
            }
            log::info!("{}: {why}", iface.name);
            match choice {
                Some(xdp_mode) => {
                    let p: &mut Xdp = self.ebpf.program_mut(XDP).ok_or_else(|| anyhow!("program {XDP} missing from the object"))?.try_into()?;
                    if p.fd().is_err() {
                        p.load().with_context(|| format!("loading {XDP} ({NEEDS}; with them, a refusal is the verifier's, whose output follows)"))?;
                        if let Ok(info) = p.info() {
                            log::info!("{XDP}: program id {}, tag {:016x}", info.id(), info.tag());
                        }
                    }
                    let was = previous.get(&iface.index).filter(|a| a.name == name_bytes(&iface.name) && a.xdp != 0).map(|a| a.xdp);
                    let used = attach::attach_xdp(p, &iface.name, &self.pins, xdp_mode, hook == attach::Hook::Xdp, was)?;
                    xdp_modes.insert(iface.index, used);
                }
                None => {
                    if let Some(what) = attach::detach_xdp(self.pins.dir(), &iface.name) {
                        log::info!("detached from {what}: --attach chose TC alone");
                    }
                }
            }
        }
        let mut attached_map: HashMap<_, u32, Attachment> =
            HashMap::try_from(self.ebpf.map_mut(names::ATTACHED).ok_or_else(|| anyhow!("no ATTACHED map"))?)?;
        for (iface, mode) in modes {
            let xdp = xdp_modes.get(&iface.index).copied().unwrap_or(0);
            let a = Attachment { name: name_bytes(&iface.name), mode, xdp };
            attached_map.insert(iface.index, a, 0).context("writing ATTACHED")?;
        }
        // Interfaces an earlier agent served that this one does not (the
        // endpoint-facing ones are settled by `attach_endpoint_side`).
        for (index, a) in previous {
            if !a.endpoint_side() && !ifaces.iter().any(|i| i.index == index) {
                let name = attachment_name(&a);
                // Recreated under the same name: attached again above, not ours to detach.
                if ifaces.iter().any(|i| i.name == name) {
                    let _ = attached_map.remove(&index);
                    continue;
                }
                for what in attach::detach(self.pins.dir(), &name, a.mode) {
                    log::info!("detached from {what}: not in --iface any more");
                }
                let _ = attached_map.remove(&index);
            }
        }
        Ok(())
    }

    /// Puts the reply program on the ingress of exactly `ifaces`, the
    /// endpoint-facing interfaces: attached (or swapped in) where missing,
    /// removed where an earlier plan or agent had it and this one does not.
    /// Removing it loses nothing: replies then take the kernel's forwarding
    /// and are translated at external egress.
    pub fn attach_endpoint_side(&mut self, ifaces: &[Iface], mode: attach::Mode) -> anyhow::Result<()> {
        let mut attached_map: HashMap<_, u32, Attachment> =
            HashMap::try_from(self.ebpf.map_mut(names::ATTACHED).ok_or_else(|| anyhow!("no ATTACHED map"))?)?;
        let previous: Vec<(u32, Attachment)> = attached_map.iter().filter_map(Result::ok).filter(|(_, a)| a.endpoint_side()).collect();
        for (index, a) in &previous {
            let name = attachment_name(a);
            if !ifaces.iter().any(|i| i.index == *index && i.name == name) {
                if let Some(what) = attach::detach_endpoint_side(self.pins.dir(), &name, a.tc_mode()) {
                    log::info!("detached from {what}: no longer on the way to an endpoint");
                }
                let _ = attached_map.remove(index);
                self.attached.retain(|(n, m)| !(n == &name && m & ATTACH_F_ENDPOINT_SIDE != 0));
            }
        }
        if ifaces.is_empty() {
            return Ok(());
        }
        let p: &mut SchedClassifier =
            self.ebpf.program_mut(FROM_ENDPOINTS).ok_or_else(|| anyhow!("program {FROM_ENDPOINTS} missing from the object"))?.try_into()?;
        if p.fd().is_err() {
            p.load().with_context(|| format!("loading {FROM_ENDPOINTS} ({NEEDS}; with them, a refusal is the verifier's, whose output follows)"))?;
            if let Ok(info) = p.info() {
                log::info!("{FROM_ENDPOINTS}: program id {}, tag {:016x}", info.id(), info.tag());
            }
        }
        let mut done = Vec::new();
        for iface in ifaces {
            let was = previous.iter().find(|(i, a)| *i == iface.index && attachment_name(a) == iface.name).map(|(_, a)| a.tc_mode());
            if self.attached.iter().any(|(n, m)| n == &iface.name && m & ATTACH_F_ENDPOINT_SIDE != 0) && was.is_some() {
                continue;
            }
            let used = attach::attach_or_replace(p, &iface.name, TcAttachType::Ingress, attach::ENDPOINT_SIDE_PIN, &self.pins, was, mode)?;
            let flagged = used | ATTACH_F_ENDPOINT_SIDE;
            self.attached.push((iface.name.clone(), flagged));
            done.push((iface.index, Attachment { name: name_bytes(&iface.name), mode: flagged, xdp: 0 }));
            log::info!("{}: replies of endpoints behind it translated at its ingress and sent straight out", iface.name);
        }
        let mut attached_map: HashMap<_, u32, Attachment> =
            HashMap::try_from(self.ebpf.map_mut(names::ATTACHED).ok_or_else(|| anyhow!("no ATTACHED map"))?)?;
        for (index, a) in done {
            attached_map.insert(index, a, 0).context("writing ATTACHED")?;
        }
        Ok(())
    }

    /// Links changed (or the datapath starts): which interfaces are veths to
    /// other namespaces is read again. Without it, redirects there take the
    /// plain path.
    pub fn refresh_ifaces(&mut self) {
        if let Err(e) = self.ifaces.refresh_peers() {
            log::warn!("which interfaces are veths to other namespaces is unknown ({e:#}); redirects to them take the plain path");
        }
    }

    /// Makes every route the programs cached stale (`ROUTE_GENERATION`).
    pub fn forget_routes(&mut self) -> anyhow::Result<()> {
        let mut g: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut(ROUTE_GENERATION).ok_or_else(|| anyhow!("no {ROUTE_GENERATION} map"))?)?;
        let next = g.get(&0, 0).unwrap_or(0).wrapping_add(1);
        g.set(0, next, 0).context("writing ROUTE_GENERATION")
    }

    fn write_meta(&mut self, meta: Meta) -> anyhow::Result<()> {
        let meta = Meta { agent_pid: std::process::id(), ..meta };
        self.meta.set(0, meta, 0).context("writing META")
    }

    pub fn meta(&self) -> anyhow::Result<Meta> {
        self.meta.get(&0, 0).context("reading META")
    }

    /// Records the result of reading a configuration (`wsfwd status`).
    pub fn record_load(&mut self, result: u32) -> anyhow::Result<()> {
        let mut m = self.meta()?;
        m.last_load = result;
        m.last_load_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match result {
            LOAD_APPLIED => m.reloads_applied += 1,
            _ => m.reloads_rejected += 1,
        }
        self.write_meta(m)
    }

    /// Records where the configuration comes from (`SOURCE_*`), for `wsfwd status`.
    pub fn record_source(&mut self, source: u32) -> anyhow::Result<()> {
        let m = self.meta()?;
        self.write_meta(Meta { source, ..m })
    }

    /// Makes `next` the live plan: each service whose table changed gets it
    /// in a fresh region and switches with one `SERVICES` write per
    /// frontend; unchanged services are not touched (see `plan`).
    pub fn replace(&mut self, next: &Contents) -> anyhow::Result<plan::Applied> {
        let applied = self.layout.apply(&mut self.ebpf, next)?;
        self.live = next.clone();
        let meta = self.meta()?;
        self.write_meta(Meta { generation: meta.generation + 1, ..meta })?;
        Ok(applied)
    }

    /// A collection that started at `started` found flows counting into
    /// these `TRAFFIC` slots (see `plan::Layout::flows_counted`).
    pub fn flows_counted(&mut self, started: std::time::Instant, counting: &std::collections::BTreeSet<u32>) {
        self.layout.flows_counted(&mut self.ebpf, started, counting);
    }

    /// The live plan.
    pub fn live(&self) -> &Contents {
        &self.live
    }

    /// Established gateway flows (LRU).
    pub fn conntrack(&mut self) -> &mut FlowMap {
        &mut self.conntrack
    }

    /// Gateway flows not yet established (LRU).
    pub fn handshakes(&mut self) -> &mut FlowMap {
        &mut self.handshakes
    }

    /// Every flow table: established and unestablished gateway flows, full NAT.
    pub fn flow_tables(&mut self) -> [&mut FlowMap; 3] {
        [&mut self.conntrack, &mut self.handshakes, &mut self.nat]
    }

    /// The ClientIP affinities, and the live plan that says which services have them.
    pub fn affinity_and_live(&mut self) -> (&mut AffinityMap, &Contents) {
        (&mut self.affinity, &self.live)
    }

    /// Full-NAT flows and the per-client count of those still half-open.
    pub fn nat_and_half_open(&mut self) -> (&mut FlowMap, &mut HalfOpenMap) {
        (&mut self.nat, &mut self.half_open)
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if !self.cleanup_on_drop {
            return;
        }
        for (iface, mode) in &self.attached {
            if mode & ATTACH_F_ENDPOINT_SIDE != 0 {
                attach::detach_endpoint_side(self.pins.dir(), iface, mode & !ATTACH_F_ENDPOINT_SIDE);
            } else {
                attach::detach(self.pins.dir(), iface, *mode);
            }
        }
        if let Err(e) = bpffs::remove_all(self.pins.dir()) {
            log::warn!("removing the pins: {e:#}");
        }
    }
}

/// Removes a fresh start's pins when dropped, unless disarmed.
struct FreshGuard(Option<std::path::PathBuf>);

impl FreshGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for FreshGuard {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = bpffs::remove_all(dir);
        }
    }
}

fn name_bytes(name: &str) -> [u8; 16] {
    names_text::encode(name)
}

fn attachment_name(a: &Attachment) -> String {
    names_text::decode(&a.name)
}

/// `wsfwd cleanup`: detaches the programs and removes every pin under `dir`.
/// Works on the layout of any wsfwd: it reads only `ATTACHED` (when it can)
/// and file names.
pub fn cleanup(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    let attached: Vec<Attachment> = MapData::from_pin(dir.join(names::ATTACHED))
        .ok()
        .and_then(|m| HashMap::<_, u32, Attachment>::try_from(aya::maps::Map::HashMap(m)).ok())
        .map(|m| m.iter().filter_map(Result::ok).map(|(_, a)| a).collect())
        .unwrap_or_default();
    for a in &attached {
        if a.endpoint_side() {
            done.extend(attach::detach_endpoint_side(dir, &attachment_name(a), a.tc_mode()));
        } else {
            done.extend(attach::detach(dir, &attachment_name(a), a.tc_mode()));
        }
    }
    for (path, name) in bpffs::pinned_links(dir) {
        if std::fs::remove_file(&path).is_ok() {
            done.push(format!("link {name}"));
        }
    }
    let maps = bpffs::pinned_maps(dir);
    bpffs::remove_all(dir)?;
    if !maps.is_empty() {
        done.push(format!("{} pinned maps", maps.len()));
    }
    Ok(done)
}
