//! The kernel side, from userspace: load the embedded programs, size and fill
//! their maps, pin the maps, attach to the external interfaces. Dropping a
//! [`Datapath`] detaches and unpins everything it created, so a failure at
//! any step leaves nothing behind.
//!
//! `BACKENDS`, `MAGLEV` and `SNAT_IPS` hold two plans, each in its own half:
//! the live one, and room for the next. A new plan is written whole into the
//! idle half, then each frontend switches to it with one `SERVICES` write, so
//! no packet ever sees a half-written table or endpoint.
pub mod contents;
pub mod gc;

use std::path::Path;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData},
    programs::{SchedClassifier, TcAttachType, tc},
};
use wsfwd_common::abi::{
    Backend, FlowEntry, FlowKey, RevNatEntry, RevNatKey, ServiceEntry, ServiceKey, globals, map_names as names,
};

pub use contents::{Capacity, Contents};

use crate::{bpffs::PinDir, netif::Iface};

/// The compiled eBPF object, built by build.rs from wsfwd-ebpf.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wsfwd-ebpf"));

const INGRESS: &str = "wsfwd_tc_ingress";
const EGRESS: &str = "wsfwd_tc_egress";

pub struct Options<'a> {
    pub ct_size: u32,
    pub nat_size: u32,
    pub hash_seed: u32,
    /// First SNAT port and how many.
    pub snat_ports: (u32, u32),
    /// Full-NAT TCP flows one client address may hold before their handshakes complete.
    pub half_open_max: u32,
    pub bpffs: &'a Path,
}

pub type FlowMap = HashMap<MapData, FlowKey, FlowEntry>;
/// Half-open full-NAT flows by client address.
pub type HalfOpenMap = HashMap<MapData, [u8; 4], u64>;

pub struct Datapath {
    // Field order is drop order: detach the programs, then unpin the maps.
    ebpf: Ebpf,
    conntrack: FlowMap,
    handshakes: FlowMap,
    nat: FlowMap,
    half_open: HalfOpenMap,
    /// The live plan, and which half of the plan maps it is in.
    live: Contents,
    half: u32,
    capacity: Capacity,
    _pins: PinDir,
}

/// Gateway flows not yet established: a quarter of conntrack's size (at
/// least 1,024 entries). A flood from spoofed addresses churns only these.
pub fn handshakes_size(ct_size: u32) -> u32 {
    (ct_size / 4).max(1024)
}

/// Capacity of a hash map of `n` entries that may grow (frontends on new
/// node addresses, endpoints whose placement changes), never zero.
fn room(n: usize) -> u32 {
    (n.max(1) * 2).max(64).min(u32::MAX as usize) as u32
}

impl Datapath {
    pub fn start(contents: &Contents, capacity: Capacity, ifaces: &[Iface], opts: &Options<'_>) -> anyhow::Result<Self> {
        let mut pins = PinDir::prepare(opts.bpffs)?;
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::HASH_SEED, &opts.hash_seed, true)
            .override_global(globals::SNAT_PORT_MIN, &opts.snat_ports.0, true)
            .override_global(globals::SNAT_PORT_COUNT, &opts.snat_ports.1, true)
            .override_global(globals::HALF_OPEN_MAX, &opts.half_open_max, true)
            .map_max_entries(names::SERVICES, room(contents.services.len()))
            .map_max_entries(names::BACKENDS, 2 * capacity.backends)
            .map_max_entries(names::MAGLEV, 2 * capacity.maglev)
            .map_max_entries(names::REVNAT, room(capacity.backends as usize))
            .map_max_entries(names::ENDPOINT_ADDRS, room(capacity.backends as usize))
            .map_max_entries(names::CONNTRACK, opts.ct_size)
            .map_max_entries(names::HANDSHAKES, handshakes_size(opts.ct_size))
            .map_max_entries(names::NAT, opts.nat_size)
            // One per client address with half-open flows: at most one per flow.
            .map_max_entries(names::HALF_OPEN, (opts.nat_size / 2).max(64))
            .load(OBJECT)
            .map_err(|e| anyhow!("loading the eBPF programs: {e} (this needs root: CAP_BPF and CAP_NET_ADMIN)"))?;
        write_plan(&mut ebpf, contents, &Contents::default(), 0, capacity)?;
        for name in names::ALL {
            let map = ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing from the object"))?;
            pins.pin(map, name)?;
        }
        let conntrack = HashMap::try_from(ebpf.take_map(names::CONNTRACK).ok_or_else(|| anyhow!("no CONNTRACK map"))?)?;
        let handshakes =
            HashMap::try_from(ebpf.take_map(names::HANDSHAKES).ok_or_else(|| anyhow!("no HANDSHAKES map"))?)?;
        let nat = HashMap::try_from(ebpf.take_map(names::NAT).ok_or_else(|| anyhow!("no NAT map"))?)?;
        let half_open =
            HashMap::try_from(ebpf.take_map(names::HALF_OPEN).ok_or_else(|| anyhow!("no HALF_OPEN map"))?)?;
        // From here on, dropping `this` detaches whatever got attached.
        let mut this =
            Self { ebpf, conntrack, handshakes, nat, half_open, live: contents.clone(), half: 0, capacity, _pins: pins };
        for (prog, hook) in [(INGRESS, TcAttachType::Ingress), (EGRESS, TcAttachType::Egress)] {
            let p: &mut SchedClassifier = this
                .ebpf
                .program_mut(prog)
                .ok_or_else(|| anyhow!("program {prog} missing from the object"))?
                .try_into()?;
            p.load().with_context(|| format!("loading {prog}"))?;
            for iface in ifaces {
                attach(p, iface, hook)?;
            }
        }
        Ok(this)
    }

    /// Makes `next` the live plan: written whole into the idle half, then
    /// switched to frontend by frontend; what it no longer has is removed
    /// last. Unchanged entries are rewritten with the same values.
    pub fn replace(&mut self, next: &Contents) -> anyhow::Result<()> {
        let half = 1 - self.half;
        if let Err(e) = write_plan(&mut self.ebpf, next, &self.live, half, self.capacity) {
            // Some frontends may have switched: point them all back at the
            // live half (unchanged), so the next plan can use the idle one.
            let _ = write_plan(&mut self.ebpf, &self.live, next, self.half, self.capacity);
            return Err(e);
        }
        self.half = half;
        self.live = next.clone();
        Ok(())
    }

    /// Established gateway flows (LRU).
    pub fn conntrack(&mut self) -> &mut FlowMap {
        &mut self.conntrack
    }

    /// Gateway flows not yet established (LRU).
    pub fn handshakes(&mut self) -> &mut FlowMap {
        &mut self.handshakes
    }

    /// Full-NAT flows and the per-client count of those still half-open.
    pub fn nat_and_half_open(&mut self) -> (&mut FlowMap, &mut HalfOpenMap) {
        (&mut self.nat, &mut self.half_open)
    }
}

fn attach(p: &mut SchedClassifier, iface: &Iface, hook: TcAttachType) -> anyhow::Result<()> {
    let what = || format!("attaching to {} {hook:?}", iface.name);
    if p.attach(&iface.name, hook).is_ok() {
        return Ok(());
    }
    // Kernels before 6.6 have no TCX: attach through a clsact qdisc.
    match tc::qdisc_add_clsact(&iface.name) {
        Ok(()) | Err(tc::TcError::AlreadyAttached) => {}
        Err(e) => return Err(anyhow!(e)).with_context(what),
    }
    p.attach(&iface.name, hook).map(|_| ()).with_context(what)
}

/// Writes plan `c` into half `half` of the plan maps, then points the
/// frontends at it and removes what `previous` had that `c` has not.
fn write_plan(ebpf: &mut Ebpf, c: &Contents, previous: &Contents, half: u32, cap: Capacity) -> anyhow::Result<()> {
    fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
        ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing"))
    }
    anyhow::ensure!(
        c.backends.len() <= cap.backends as usize && c.maglev.len() <= cap.maglev as usize,
        "the plan needs {} endpoints and {} Maglev slots, more than the {} and {} sized at start",
        c.backends.len(),
        c.maglev.len(),
        cap.backends,
        cap.maglev
    );
    let (backend_base, maglev_base, snat_base) = (half * cap.backends, half * cap.maglev, half * contents::SNAT_IPS_PER_PLAN);
    // The idle half first: nothing refers to it yet.
    let mut snat_ips: Array<_, [u8; 4]> = Array::try_from(map(ebpf, names::SNAT_IPS)?)?;
    for (i, ip) in c.snat_ips.iter().enumerate() {
        snat_ips.set(snat_base + i as u32, ip.octets(), 0).context("writing SNAT_IPS")?;
    }
    let mut backends: Array<_, Backend> = Array::try_from(map(ebpf, names::BACKENDS)?)?;
    for (i, b) in c.backends.iter().enumerate() {
        let b = Backend { snat_first: b.snat_first + snat_base as u8, ..*b };
        backends.set(backend_base + i as u32, b, 0).context("writing BACKENDS")?;
    }
    let mut maglev: Array<_, u32> = Array::try_from(map(ebpf, names::MAGLEV)?)?;
    for (i, id) in c.maglev.iter().enumerate() {
        maglev.set(maglev_base + i as u32, backend_base + id, 0).context("writing MAGLEV")?;
    }
    // Replies of endpoints that may now be behind the node.
    let mut revnat: HashMap<_, RevNatKey, RevNatEntry> = HashMap::try_from(map(ebpf, names::REVNAT)?)?;
    for (k, v) in &c.revnat {
        revnat.insert(k, v, 0).context("writing REVNAT")?;
    }
    let (addrs, old_addrs) = (endpoint_addrs(c), endpoint_addrs(previous));
    let mut endpoints: HashMap<_, [u8; 4], u8> = HashMap::try_from(map(ebpf, names::ENDPOINT_ADDRS)?)?;
    for a in &addrs {
        endpoints.insert(a, 1, 0).context("writing ENDPOINT_ADDRS")?;
    }
    for a in old_addrs.difference(&addrs) {
        let _ = endpoints.remove(a);
    }
    // The switch: one write per frontend.
    let mut services: HashMap<_, ServiceKey, ServiceEntry> = HashMap::try_from(map(ebpf, names::SERVICES)?)?;
    for (k, v) in &c.services {
        let v = ServiceEntry { table_offset: maglev_base + v.table_offset, ..*v };
        services.insert(k, v, 0).context("writing SERVICES")?;
    }
    // What the new plan no longer has.
    for (k, _) in previous.services.iter().filter(|(k, _)| !c.services.iter().any(|(n, _)| n == k)) {
        let _ = services.remove(k);
    }
    let mut revnat: HashMap<_, RevNatKey, RevNatEntry> = HashMap::try_from(map(ebpf, names::REVNAT)?)?;
    for (k, _) in previous.revnat.iter().filter(|(k, _)| !c.revnat.iter().any(|(n, _)| n == k)) {
        let _ = revnat.remove(k);
    }
    Ok(())
}

/// The addresses of a plan's endpoints behind the node.
fn endpoint_addrs(c: &Contents) -> std::collections::BTreeSet<[u8; 4]> {
    c.revnat.iter().map(|(k, _)| k.addr).collect()
}
