//! Where a plan lives in the maps, and how a new one becomes live without a
//! packet ever seeing half of it.
//!
//! Each service's Maglev table has its own region of `MAGLEV`; each endpoint
//! (as the datapath needs it: address, port, full-NAT flag, SNAT addresses)
//! its own id in `BACKENDS`; each list of SNAT addresses its own range of
//! `SNAT_IPS`. Applying a plan compares it with the live one service by
//! service: an unchanged service is not touched at all; a changed one gets
//! its new table written into a fresh region (new endpoints and SNAT lists
//! first), then each of its frontends switches with one `SERVICES` write.
//! Freed regions and ids are reused only after a grace period, so a packet
//! that read the old `SERVICES` entry an instant before the switch still
//! finds its old table intact.
//!
//! Each endpoint of each service also has a `TRAFFIC` slot, which its
//! `BACKENDS` entry, its unique `REVNAT` entry and every flow to it carry.
//! A slot is freed only after a collection that started a grace period
//! after no plan used it found no flow counting into it, so a draining
//! flow's packets are never counted as another endpoint's.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap as Std},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, PerCpuArray, PerCpuValues},
};
use wsfwd_common::abi::{
    BACKEND_F_SNAT, Backend, FrontendName, NO_TRAFFIC, ReadyKey, RevNatEntry, RevNatKey, ServiceEntry, ServiceKey, Traffic,
    TrafficOwner, map_names as names, names_text,
};

use super::contents::{Contents, Owner};

/// How long a freed region or id stays untouched: far longer than any packet
/// takes between reading `SERVICES` and reading its table.
const GRACE: Duration = Duration::from_millis(100);

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing"))
}

fn need(m: Option<&mut aya::maps::Map>) -> anyhow::Result<&mut aya::maps::Map> {
    m.ok_or_else(|| anyhow!("a plan map is missing from the object"))
}

/// Free space of an array map, as (offset → length) runs; first fit.
#[derive(Clone, Debug)]
struct Regions {
    free: BTreeMap<u32, u32>,
}

impl Regions {
    fn new(total: u32) -> Self {
        Self { free: if total > 0 { [(0, total)].into() } else { BTreeMap::new() } }
    }

    fn alloc(&mut self, len: u32) -> Option<u32> {
        if len == 0 {
            return Some(0);
        }
        let (&at, &run) = self.free.iter().find(|(_, run)| **run >= len)?;
        self.free.remove(&at);
        if run > len {
            self.free.insert(at + len, run - len);
        }
        Some(at)
    }

    /// Marks `[at, at + len)` used (adopting a running datapath).
    fn take(&mut self, at: u32, len: u32) {
        if len == 0 {
            return;
        }
        let Some((&start, &run)) = self.free.range(..=at).next_back() else { return };
        if start + run < at + len {
            return;
        }
        self.free.remove(&start);
        if at > start {
            self.free.insert(start, at - start);
        }
        if start + run > at + len {
            self.free.insert(at + len, start + run - at - len);
        }
    }

    fn release(&mut self, at: u32, len: u32) {
        if len == 0 {
            return;
        }
        let (mut at, mut len) = (at, len);
        if let Some((&prev, &run)) = self.free.range(..at).next_back() {
            if prev + run == at {
                self.free.remove(&prev);
                (at, len) = (prev, len + run);
            }
        }
        if let Some(&next_run) = self.free.get(&(at + len)) {
            self.free.remove(&(at + len));
            len += next_run;
        }
        self.free.insert(at, len);
    }
}

/// `MAGLEV`, mapped into the agent's memory: a table of any size is written
/// with plain stores (no system call per slot). A BPF array keeps each value
/// in an 8-byte cell.
struct MaglevMem {
    ptr: *mut u64,
    entries: usize,
    bytes: usize,
}

// SAFETY: the mapping is owned by this value and only used through `&mut self`.
unsafe impl Send for MaglevMem {}

/// Bytes per array cell: values are rounded up to 8.
const CELL: usize = 8;

impl MaglevMem {
    fn open(path: &std::path::Path, entries: u32) -> anyhow::Result<Self> {
        use std::os::fd::AsFd as _;
        let data = aya::maps::MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
        let fd = data.fd().as_fd();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let bytes = (entries as usize * CELL).div_ceil(page) * page;
        // SAFETY: a shared mapping of a mmapable BPF array of at least `bytes`;
        // it stays valid after `data`'s descriptor closes.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), bytes, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, std::os::fd::AsRawFd::as_raw_fd(&fd), 0)
        };
        if ptr == libc::MAP_FAILED {
            anyhow::bail!("mapping MAGLEV into memory: {}", std::io::Error::last_os_error());
        }
        Ok(Self { ptr: ptr.cast(), entries: entries as usize, bytes })
    }

    fn write(&mut self, at: u32, slots: &[u32]) {
        assert!(at as usize + slots.len() <= self.entries, "MAGLEV region out of bounds");
        for (i, &id) in slots.iter().enumerate() {
            // SAFETY: in bounds (checked); programs only read these cells, and
            // only once a `SERVICES` entry (written after a fence) points here.
            unsafe { self.ptr.add(at as usize + i).write_volatile(u64::from(id)) };
        }
    }

    fn read(&self, at: u32, len: u32) -> Vec<u32> {
        let (at, len) = (at as usize, len as usize);
        if at + len > self.entries {
            return Vec::new();
        }
        // SAFETY: in bounds (checked); the value is a cell's low four bytes.
        (0..len).map(|i| unsafe { self.ptr.add(at + i).read_volatile() } as u32).collect()
    }
}

impl Drop for MaglevMem {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`.
        unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
    }
}

fn frontend_name(name: &str) -> FrontendName {
    FrontendName(names_text::encode(name))
}

/// Something freed, waiting out the grace period.
#[derive(Clone, Copy, Debug)]
enum Freed {
    Maglev(u32, u32),
    Backend(u32),
    Snat(u32, u32),
}

/// A service's live table: its region and the backend ids in its slots.
#[derive(Clone, Debug, PartialEq)]
struct Table {
    offset: u32,
    slots: Vec<u32>,
}

/// What is live in the maps, and where.
pub struct Layout {
    mem: MaglevMem,
    maglev: Regions,
    backend_ids: Regions,
    snat_slots: Regions,
    backends: Std<Backend, u32>,
    snat_lists: Std<Vec<[u8; 4]>, u32>,
    tables: BTreeMap<u32, Table>,
    services: BTreeMap<ServiceKey, ServiceEntry>,
    names: BTreeMap<ServiceKey, String>,
    revnat: BTreeMap<RevNatKey, RevNatEntry>,
    ready: BTreeMap<ReadyKey, u32>,
    endpoint_addrs: BTreeSet<[u8; 4]>,
    pending: Vec<(Instant, Freed)>,
    traffic_slots: Regions,
    /// `TRAFFIC` slots of the endpoints of the live plan (and of any plan
    /// tried since, until the next one applied).
    traffic: BTreeMap<Owner, u32>,
    /// Slots no plan uses any more, with when that became so.
    traffic_left: BTreeMap<u32, (Owner, Instant)>,
}

/// What an `apply` changed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Applied {
    /// Maglev tables written (services whose table changed, or new).
    pub tables_written: usize,
    /// `SERVICES` entries written.
    pub frontends_switched: usize,
    /// Frontends left exactly as they were.
    pub frontends_untouched: usize,
}

/// What one `apply` wrote: enough to undo it.
#[derive(Default)]
struct Written {
    allocated: Vec<Freed>,
    /// Frontends switched, with their previous entry.
    switched: Vec<(ServiceKey, Option<ServiceEntry>)>,
    /// `READY` entries written, with their previous value.
    ready: Vec<(ReadyKey, Option<u32>)>,
    /// `REVNAT` entries written, with their previous value.
    revnat: Vec<(RevNatKey, Option<RevNatEntry>)>,
    /// `ENDPOINT_ADDRS` keys added.
    addrs: Vec<[u8; 4]>,
    /// `FRONTEND_NAMES` keys written (their old names are in the layout).
    names: Vec<ServiceKey>,
}

impl Layout {
    /// An empty layout over maps of these sizes (`MAGLEV` pinned at `maglev_pin`).
    pub fn new(maglev_pin: &std::path::Path, maglev: u32, backends: u32, snat: u32) -> anyhow::Result<Self> {
        Ok(Self {
            mem: MaglevMem::open(maglev_pin, maglev)?,
            maglev: Regions::new(maglev),
            backend_ids: Regions::new(backends),
            snat_slots: Regions::new(snat),
            backends: Std::new(),
            snat_lists: Std::new(),
            tables: BTreeMap::new(),
            services: BTreeMap::new(),
            names: BTreeMap::new(),
            revnat: BTreeMap::new(),
            ready: BTreeMap::new(),
            endpoint_addrs: BTreeSet::new(),
            pending: Vec::new(),
            traffic_slots: Regions::new(backends),
            traffic: BTreeMap::new(),
            traffic_left: BTreeMap::new(),
        })
    }

    /// The layout a running datapath's maps hold.
    pub fn read(ebpf: &mut Ebpf, maglev_pin: &std::path::Path, maglev_size: u32, backends_size: u32, snat_size: u32) -> anyhow::Result<Self> {
        let mut this = Self::new(maglev_pin, maglev_size, backends_size, snat_size)?;
        let services: HashMap<_, ServiceKey, ServiceEntry> = HashMap::try_from(map(ebpf, names::SERVICES)?)?;
        this.services = services.iter().collect::<Result<_, _>>().context("reading SERVICES")?;
        // Every region any frontend points at is in use: an agent killed in the
        // middle of a switch leaves a service's frontends on two regions.
        let mut in_use: BTreeSet<u32> = BTreeSet::new();
        let mut regions: BTreeMap<(u32, u32), Vec<u32>> = BTreeMap::new();
        for e in this.services.values() {
            let slots = regions
                .entry((e.table_offset, e.table_size))
                .or_insert_with(|| this.mem.read(e.table_offset, e.table_size))
                .clone();
            in_use.extend(slots.iter().copied());
            this.tables.entry(e.service_id).or_insert(Table { offset: e.table_offset, slots });
        }
        let now = Instant::now();
        for &(offset, size) in regions.keys() {
            this.maglev.take(offset, size);
            // Not the service's table any more: freed once the next plan is live and the grace is over.
            if !this.tables.values().any(|t| t.offset == offset && t.slots.len() as u32 == size) {
                this.pending.push((now, Freed::Maglev(offset, size)));
            }
        }
        let ready: HashMap<_, ReadyKey, u32> = HashMap::try_from(map(ebpf, names::READY)?)?;
        this.ready = ready.iter().collect::<Result<_, _>>().context("reading READY")?;
        in_use.extend(this.ready.values().copied());
        let backends: Array<_, Backend> = Array::try_from(map(ebpf, names::BACKENDS)?)?;
        let ids = in_use;
        for id in ids {
            let b = backends.get(&id, 0).context("reading BACKENDS")?;
            this.backend_ids.take(id, 1);
            this.backends.insert(b, id);
        }
        let snat: Array<_, [u8; 4]> = Array::try_from(map(ebpf, names::SNAT_IPS)?)?;
        for b in this.backends.keys().filter(|b| b.flags & BACKEND_F_SNAT != 0) {
            let list = (0..u32::from(b.snat_count))
                .map(|i| snat.get(&(u32::from(b.snat_first) + i), 0))
                .collect::<Result<Vec<_>, _>>()
                .context("reading SNAT_IPS")?;
            if this.snat_lists.insert(list, u32::from(b.snat_first)).is_none() {
                this.snat_slots.take(u32::from(b.snat_first), u32::from(b.snat_count));
            }
        }
        let revnat: HashMap<_, RevNatKey, RevNatEntry> = HashMap::try_from(map(ebpf, names::REVNAT)?)?;
        this.revnat = revnat.iter().collect::<Result<_, _>>().context("reading REVNAT")?;
        let addrs: HashMap<_, [u8; 4], u8> = HashMap::try_from(map(ebpf, names::ENDPOINT_ADDRS)?)?;
        this.endpoint_addrs = addrs.keys().collect::<Result<_, _>>().context("reading ENDPOINT_ADDRS")?;
        let names_map: HashMap<_, ServiceKey, FrontendName> = HashMap::try_from(map(ebpf, names::FRONTEND_NAMES)?)?;
        this.names = names_map
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k, names_text::decode(&v.0)))
            .collect();
        // Every slot stays taken; the first plan applied keeps the ones it
        // uses, and the others wait for the collector as usual.
        let owners: HashMap<_, u32, TrafficOwner> = HashMap::try_from(map(ebpf, names::TRAFFIC_OWNERS)?)?;
        for (slot, o) in owners.iter().filter_map(Result::ok) {
            this.traffic_slots.take(slot, 1);
            let owner = Owner { service: names_text::decode(&o.service.0), addr: o.addr.into(), port: u16::from_be_bytes(o.port) };
            this.traffic.insert(owner, slot);
        }
        Ok(this)
    }

    /// The `TRAFFIC` slot of `owner`: its own if it has one (or had one
    /// not yet freed), else a fresh one, zeroed and named in `TRAFFIC_OWNERS`.
    fn traffic_slot(&mut self, ebpf: &mut Ebpf, owner: &Owner) -> anyhow::Result<u32> {
        if let Some(&slot) = self.traffic.get(owner) {
            return Ok(slot);
        }
        if let Some(slot) = self.traffic_left.iter().find(|(_, (o, _))| o == owner).map(|(s, _)| *s) {
            self.traffic_left.remove(&slot);
            self.traffic.insert(owner.clone(), slot);
            return Ok(slot);
        }
        let slot = self.traffic_slots.alloc(1).ok_or_else(|| anyhow!("the pinned TRAFFIC map is full; it is sized when first created, so a larger configuration needs `wsfwd cleanup` and a fresh start"))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| anyhow!("counting CPUs: {e}"))?;
        let zeros = PerCpuValues::try_from(vec![Traffic::default(); cpus]).context("zeroing a TRAFFIC slot")?;
        let mut counts: PerCpuArray<_, Traffic> = PerCpuArray::try_from(map(ebpf, names::TRAFFIC)?)?;
        counts.set(slot, zeros, 0).context("zeroing a TRAFFIC slot")?;
        let named = TrafficOwner {
            service: frontend_name(&owner.service),
            addr: owner.addr.octets(),
            port: owner.port.to_be_bytes(),
            _pad: [0; 2],
        };
        let mut owners: HashMap<_, u32, TrafficOwner> = HashMap::try_from(map(ebpf, names::TRAFFIC_OWNERS)?)?;
        owners.insert(slot, named, 0).context("writing TRAFFIC_OWNERS")?;
        self.traffic.insert(owner.clone(), slot);
        Ok(slot)
    }

    /// A collection that started at `started` found flows counting into
    /// `counting`: slots left unused since a grace before it, and not among
    /// them, are freed.
    pub fn flows_counted(&mut self, ebpf: &mut Ebpf, started: Instant, counting: &BTreeSet<u32>) {
        let free: Vec<u32> = self
            .traffic_left
            .iter()
            .filter(|(slot, (_, left))| started.saturating_duration_since(*left) >= GRACE && !counting.contains(*slot))
            .map(|(slot, _)| *slot)
            .collect();
        if free.is_empty() {
            return;
        }
        let Ok(mut owners) = map(ebpf, names::TRAFFIC_OWNERS).and_then(|m| Ok(HashMap::<_, u32, TrafficOwner>::try_from(m)?)) else {
            return;
        };
        for slot in free {
            if owners.remove(&slot).is_ok() {
                self.traffic_left.remove(&slot);
                self.traffic_slots.release(slot, 1);
            }
        }
    }

    /// What is live, in the agent's terms: frontends (with their services'
    /// names and ids), endpoints whose replies are translated, and the
    /// endpoints affinities may send to.
    pub fn live(&self) -> Contents {
        Contents {
            services: self.services.iter().map(|(k, v)| (*k, *v)).collect(),
            revnat: self.revnat.iter().map(|(k, v)| (*k, *v)).collect(),
            frontend_names: self.names.clone(),
            ready: self.ready.iter().map(|(k, v)| (*k, *v)).collect(),
            ..Contents::default()
        }
    }

    fn release_due(&mut self, now: Instant) {
        let (due, keep): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|(at, _)| now.duration_since(*at) >= GRACE);
        self.pending = keep;
        for (_, f) in due {
            self.release(f);
        }
    }

    fn release(&mut self, f: Freed) {
        match f {
            Freed::Maglev(at, len) => self.maglev.release(at, len),
            Freed::Backend(id) => self.backend_ids.release(id, 1),
            Freed::Snat(at, len) => self.snat_slots.release(at, len),
        }
    }

    /// Makes `next` live, touching only what changed. On failure nothing
    /// new stays referenced: frontends already switched are switched back.
    pub fn apply(&mut self, ebpf: &mut Ebpf, next: &Contents) -> anyhow::Result<Applied> {
        self.release_due(Instant::now());
        let mut w = Written::default();
        let result = self.write(ebpf, next, &mut w);
        if result.is_err() {
            if let Ok(m) = map(ebpf, names::READY) {
                if let Ok(mut ready) = HashMap::<_, ReadyKey, u32>::try_from(m) {
                    for (k, old) in w.ready.iter().rev() {
                        let _ = match old {
                            Some(v) => ready.insert(k, v, 0),
                            None => ready.remove(k),
                        };
                    }
                }
            }
            if let Ok(m) = map(ebpf, names::SERVICES) {
                if let Ok(mut services) = HashMap::<_, ServiceKey, ServiceEntry>::try_from(m) {
                    for (k, old) in w.switched.iter().rev() {
                        let _ = match old {
                            Some(v) => services.insert(k, v, 0),
                            None => services.remove(k),
                        };
                    }
                }
            }
            self.undo_side_maps(ebpf, &w);
            // Switched frontends may have pointed at these for an instant: wait out the grace.
            let now = Instant::now();
            self.pending.extend(w.allocated.iter().map(|f| (now, *f)));
            self.backends.retain(|_, id| self.tables.values().any(|t| t.slots.contains(id)));
        }
        result
    }

    /// Puts back what a failed apply wrote to `REVNAT`, `ENDPOINT_ADDRS` and `FRONTEND_NAMES`.
    fn undo_side_maps(&self, ebpf: &mut Ebpf, w: &Written) {
        if let Some(mut m) = map(ebpf, names::REVNAT).ok().and_then(|m| HashMap::<_, RevNatKey, RevNatEntry>::try_from(m).ok()) {
            for (k, old) in w.revnat.iter().rev() {
                let _ = match old {
                    Some(v) => m.insert(k, v, 0),
                    None => m.remove(k),
                };
            }
        }
        if let Some(mut m) = map(ebpf, names::ENDPOINT_ADDRS).ok().and_then(|m| HashMap::<_, [u8; 4], u8>::try_from(m).ok()) {
            for a in &w.addrs {
                let _ = m.remove(a);
            }
        }
        if let Some(mut m) = map(ebpf, names::FRONTEND_NAMES).ok().and_then(|m| HashMap::<_, ServiceKey, FrontendName>::try_from(m).ok()) {
            for k in &w.names {
                let _ = match self.names.get(k) {
                    Some(name) => m.insert(k, frontend_name(name), 0),
                    None => m.remove(k),
                };
            }
        }
    }

    fn write(&mut self, ebpf: &mut Ebpf, next: &Contents, w: &mut Written) -> anyhow::Result<Applied> {
        let mut applied = Applied::default();
        // Traffic slots first: endpoints and unique `REVNAT` entries carry them.
        let mut slots = Vec::with_capacity(next.owners.len());
        for owner in &next.owners {
            slots.push(self.traffic_slot(ebpf, owner)?);
        }
        let mut next_revnat: BTreeMap<RevNatKey, RevNatEntry> = BTreeMap::new();
        for (k, v) in &next.revnat {
            let traffic = match next.revnat_owners.get(k) {
                Some(owner) => self.traffic_slot(ebpf, owner)?,
                // A departed endpoint's entry keeps the slot it had.
                None => self.revnat.get(k).map_or(NO_TRAFFIC, |e| e.traffic),
            };
            next_revnat.insert(*k, RevNatEntry { traffic, ..*v });
        }
        let [snat_m, backends_m, revnat_m, endpoints_m, names_m, ready_m, services_m] = ebpf.maps_disjoint_mut([
            names::SNAT_IPS,
            names::BACKENDS,
            names::REVNAT,
            names::ENDPOINT_ADDRS,
            names::FRONTEND_NAMES,
            names::READY,
            names::SERVICES,
        ]);
        let full = |what: &str| anyhow!("the pinned {what} map is full; they are sized when first created, so a larger configuration needs `wsfwd cleanup` and a fresh start");
        // SNAT address lists, then endpoints: written before any table names them.
        let mut snat_ips: Array<_, [u8; 4]> = Array::try_from(need(snat_m)?)?;
        let mut global = Vec::with_capacity(next.backends.len());
        let mut new_lists: Std<Vec<[u8; 4]>, u32> = Std::new();
        for (b, &traffic) in next.backends.iter().zip(&slots) {
            let mut g = Backend { traffic, ..*b };
            if b.flags & BACKEND_F_SNAT != 0 {
                let (first, count) = (usize::from(b.snat_first), usize::from(b.snat_count));
                let list: Vec<[u8; 4]> = next.snat_ips[first..first + count].iter().map(|a| a.octets()).collect();
                let at = match self.snat_lists.get(&list).or_else(|| new_lists.get(&list)) {
                    Some(&at) => at,
                    None => {
                        let at = self.snat_slots.alloc(count as u32).ok_or_else(|| full("SNAT_IPS"))?;
                        w.allocated.push(Freed::Snat(at, count as u32));
                        for (i, ip) in list.iter().enumerate() {
                            snat_ips.set(at + i as u32, *ip, 0).context("writing SNAT_IPS")?;
                        }
                        new_lists.insert(list, at);
                        at
                    }
                };
                g.snat_first = at as u8;
            }
            global.push(g);
        }
        let mut backends: Array<_, Backend> = Array::try_from(need(backends_m)?)?;
        let mut ids = Vec::with_capacity(global.len());
        for g in &global {
            let id = match self.backends.get(g) {
                Some(&id) => id,
                None => {
                    let id = self.backend_ids.alloc(1).ok_or_else(|| full("BACKENDS"))?;
                    w.allocated.push(Freed::Backend(id));
                    backends.set(id, *g, 0).context("writing BACKENDS")?;
                    self.backends.insert(*g, id);
                    id
                }
            };
            ids.push(id);
        }
        // Tables: unchanged ones stay where they are; changed ones go to a fresh region.
        let mut tables: BTreeMap<u32, Table> = BTreeMap::new();
        for (_, e) in &next.services {
            if tables.contains_key(&e.service_id) {
                continue;
            }
            let slots: Vec<u32> = next.maglev[e.table_offset as usize..][..e.table_size as usize]
                .iter()
                .map(|&local| ids[local as usize])
                .collect();
            let table = match self.tables.get(&e.service_id) {
                Some(t) if t.slots == slots => t.clone(),
                _ => {
                    let offset = self.maglev.alloc(slots.len() as u32).ok_or_else(|| full("MAGLEV"))?;
                    w.allocated.push(Freed::Maglev(offset, slots.len() as u32));
                    self.mem.write(offset, &slots);
                    applied.tables_written += 1;
                    Table { offset, slots }
                }
            };
            tables.insert(e.service_id, table);
        }
        // Everything a new entry may lead to, before the switch.
        let mut revnat: HashMap<_, RevNatKey, RevNatEntry> = HashMap::try_from(need(revnat_m)?)?;
        for (k, v) in &next_revnat {
            if self.revnat.get(k) != Some(v) {
                revnat.insert(k, v, 0).context("writing REVNAT")?;
                w.revnat.push((*k, self.revnat.get(k).copied()));
            }
        }
        let addrs: BTreeSet<[u8; 4]> = next_revnat.keys().map(|k| k.addr).collect();
        let mut endpoints: HashMap<_, [u8; 4], u8> = HashMap::try_from(need(endpoints_m)?)?;
        for a in addrs.difference(&self.endpoint_addrs) {
            endpoints.insert(a, 1, 0).context("writing ENDPOINT_ADDRS")?;
            w.addrs.push(*a);
        }
        let mut names_map: HashMap<_, ServiceKey, FrontendName> = HashMap::try_from(need(names_m)?)?;
        for (k, name) in &next.frontend_names {
            if self.names.get(k) != Some(name) {
                names_map.insert(k, frontend_name(name), 0).context("writing FRONTEND_NAMES")?;
                w.names.push(*k);
            }
        }
        let mut ready: HashMap<_, ReadyKey, u32> = HashMap::try_from(need(ready_m)?)?;
        let next_ready: BTreeMap<ReadyKey, u32> = next.ready.iter().map(|(k, local)| (*k, ids[*local as usize])).collect();
        for (k, id) in &next_ready {
            if self.ready.get(k) != Some(id) {
                ready.insert(k, id, 0).context("writing READY")?;
                w.ready.push((*k, self.ready.get(k).copied()));
            }
        }
        // Tables written through memory must be visible before an entry points at them.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // The switch: one write per frontend whose entry changed.
        let mut services: HashMap<_, ServiceKey, ServiceEntry> = HashMap::try_from(need(services_m)?)?;
        let mut next_services = BTreeMap::new();
        for (k, e) in &next.services {
            let v = ServiceEntry { table_offset: tables[&e.service_id].offset, ..*e };
            let old = self.services.get(k).copied();
            if old != Some(v) {
                services.insert(k, v, 0).with_context(|| format!("writing SERVICES (frontend {k:?})"))?;
                w.switched.push((*k, old));
                applied.frontends_switched += 1;
            } else {
                applied.frontends_untouched += 1;
            }
            next_services.insert(*k, v);
        }

        // Live. What the new plan no longer has goes last.
        for k in self.services.keys().filter(|k| !next_services.contains_key(*k)) {
            let _ = services.remove(k);
        }
        for k in self.names.keys().filter(|k| !next.frontend_names.contains_key(*k)) {
            let _ = names_map.remove(k);
        }
        for k in self.ready.keys().filter(|k| !next_ready.contains_key(*k)) {
            let _ = ready.remove(k);
        }
        for k in self.revnat.keys().filter(|k| !next_revnat.contains_key(*k)) {
            let _ = revnat.remove(k);
        }
        for a in self.endpoint_addrs.difference(&addrs) {
            let _ = endpoints.remove(a);
        }
        // Regions, ids and SNAT ranges nothing refers to any more wait out the grace period.
        let now = Instant::now();
        for (sid, t) in &self.tables {
            if tables.get(sid).is_none_or(|n| n.offset != t.offset) {
                self.pending.push((now, Freed::Maglev(t.offset, t.slots.len() as u32)));
            }
        }
        let used: BTreeSet<u32> = tables.values().flat_map(|t| t.slots.iter().copied()).collect();
        let unused: Vec<(Backend, u32)> = self.backends.iter().filter(|(_, id)| !used.contains(id)).map(|(b, id)| (*b, *id)).collect();
        for (b, id) in unused {
            self.backends.remove(&b);
            self.pending.push((now, Freed::Backend(id)));
        }
        self.snat_lists.extend(new_lists);
        let used_snat: BTreeSet<u8> =
            self.backends.keys().filter(|b| b.flags & BACKEND_F_SNAT != 0).map(|b| b.snat_first).collect();
        let gone: Vec<(Vec<[u8; 4]>, u32)> =
            self.snat_lists.iter().filter(|(_, at)| !used_snat.contains(&(**at as u8))).map(|(l, at)| (l.clone(), *at)).collect();
        for (list, at) in gone {
            self.snat_lists.remove(&list);
            self.pending.push((now, Freed::Snat(at, list.len() as u32)));
        }
        let counting: BTreeSet<u32> = slots.iter().chain(next_revnat.values().map(|e| &e.traffic)).copied().collect();
        let unused: Vec<Owner> = self.traffic.iter().filter(|(_, s)| !counting.contains(s)).map(|(o, _)| o.clone()).collect();
        for owner in unused {
            if let Some(slot) = self.traffic.remove(&owner) {
                self.traffic_left.insert(slot, (owner, now));
            }
        }
        self.tables = tables;
        self.services = next_services;
        self.names = next.frontend_names.clone();
        self.ready = next_ready;
        self.revnat = next_revnat;
        self.endpoint_addrs = addrs;
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::Regions;

    #[test]
    fn regions_allocate_first_fit_and_coalesce() {
        let mut r = Regions::new(100);
        assert_eq!(r.alloc(30), Some(0));
        assert_eq!(r.alloc(30), Some(30));
        assert_eq!(r.alloc(50), None);
        r.release(0, 30);
        assert_eq!(r.alloc(40), Some(60));
        r.release(30, 30);
        // 0..60 is one run again.
        assert_eq!(r.alloc(60), Some(0));
        assert_eq!(r.alloc(1), None);
        let mut r = Regions::new(100);
        r.take(10, 20);
        assert_eq!(r.alloc(10), Some(0));
        assert_eq!(r.alloc(10), Some(30));
        assert_eq!(r.alloc(0), Some(0), "an empty table needs no room");
    }
}
