//! The kernel side, from userspace: load the embedded programs, size and fill
//! their maps, pin the maps, attach to the external interfaces. Dropping a
//! [`Datapath`] detaches and unpins everything it created, so a failure at
//! any step leaves nothing behind.
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

pub use contents::Contents;

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
    _pins: PinDir,
}

/// Gateway flows in their handshake: a quarter of conntrack's size (at least
/// 1,024 entries). A SYN flood churns only these.
pub fn handshakes_size(ct_size: u32) -> u32 {
    (ct_size / 4).max(1024)
}

/// Map capacity: room to grow (live updates come later), never zero.
fn capacity(n: usize) -> u32 {
    (n.max(1) * 2).max(64).min(u32::MAX as usize) as u32
}

impl Datapath {
    pub fn start(contents: &Contents, ifaces: &[Iface], opts: &Options<'_>) -> anyhow::Result<Self> {
        let mut pins = PinDir::prepare(opts.bpffs)?;
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::HASH_SEED, &opts.hash_seed, true)
            .override_global(globals::SNAT_PORT_MIN, &opts.snat_ports.0, true)
            .override_global(globals::SNAT_PORT_COUNT, &opts.snat_ports.1, true)
            .override_global(globals::HALF_OPEN_MAX, &opts.half_open_max, true)
            .map_max_entries(names::SERVICES, capacity(contents.services.len()))
            .map_max_entries(names::BACKENDS, capacity(contents.backends.len()))
            .map_max_entries(names::MAGLEV, capacity(contents.maglev.len()))
            .map_max_entries(names::REVNAT, capacity(contents.revnat.len()))
            .map_max_entries(names::CONNTRACK, opts.ct_size)
            .map_max_entries(names::HANDSHAKES, handshakes_size(opts.ct_size))
            .map_max_entries(names::NAT, opts.nat_size)
            // One per client address with half-open flows: at most one per flow.
            .map_max_entries(names::HALF_OPEN, (opts.nat_size / 2).max(64))
            .load(OBJECT)
            .map_err(|e| anyhow!("loading the eBPF programs: {e} (this needs root: CAP_BPF and CAP_NET_ADMIN)"))?;
        fill(&mut ebpf, contents)?;
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
        let mut this = Self { ebpf, conntrack, handshakes, nat, half_open, _pins: pins };
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

    /// Established gateway flows (LRU).
    pub fn conntrack(&mut self) -> &mut FlowMap {
        &mut self.conntrack
    }

    /// Gateway TCP flows in their handshake (LRU).
    pub fn handshakes(&mut self) -> &mut FlowMap {
        &mut self.handshakes
    }

    /// Full-NAT flows (never evicted; collected by the agent).
    pub fn nat(&mut self) -> &mut FlowMap {
        &mut self.nat
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

fn fill(ebpf: &mut Ebpf, c: &Contents) -> anyhow::Result<()> {
    fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
        ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing"))
    }
    let mut services: HashMap<_, ServiceKey, ServiceEntry> = HashMap::try_from(map(ebpf, names::SERVICES)?)?;
    for (k, v) in &c.services {
        services.insert(k, v, 0).context("writing SERVICES")?;
    }
    let mut backends: Array<_, Backend> = Array::try_from(map(ebpf, names::BACKENDS)?)?;
    for (i, b) in c.backends.iter().enumerate() {
        backends.set(i as u32, b, 0).context("writing BACKENDS")?;
    }
    let mut maglev: Array<_, u32> = Array::try_from(map(ebpf, names::MAGLEV)?)?;
    for (i, id) in c.maglev.iter().enumerate() {
        maglev.set(i as u32, id, 0).context("writing MAGLEV")?;
    }
    let mut revnat: HashMap<_, RevNatKey, RevNatEntry> = HashMap::try_from(map(ebpf, names::REVNAT)?)?;
    for (k, v) in &c.revnat {
        revnat.insert(k, v, 0).context("writing REVNAT")?;
    }
    let mut snat_ips: Array<_, [u8; 4]> = Array::try_from(map(ebpf, names::SNAT_IPS)?)?;
    for (i, ip) in c.snat_ips.iter().enumerate() {
        snat_ips.set(i as u32, ip.octets(), 0).context("writing SNAT_IPS")?;
    }
    Ok(())
}
