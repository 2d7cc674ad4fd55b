//! The maps, declared once. Sizes here are placeholders: the agent sets the
//! real ones at load time from the configuration and its flags.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use wsfwd_common::abi::{
    Backend, COUNTER_COUNT, FlowEntry, FlowKey, RevNatEntry, RevNatKey, ServiceEntry, ServiceKey,
};

#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceEntry> = HashMap::with_max_entries(1, 0);

#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(1, 0);

/// Every service's Maglev table, back to back; entries are `BACKENDS` ids.
#[map]
pub static MAGLEV: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static CONNTRACK: LruHashMap<FlowKey, FlowEntry> = LruHashMap::with_max_entries(1, 0);

#[map]
pub static REVNAT: HashMap<RevNatKey, RevNatEntry> = HashMap::with_max_entries(1, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Seed of the flow hash, set by the agent at load time (`--hash-seed`).
#[unsafe(no_mangle)]
static HASH_SEED: u32 = 0;

#[inline(always)]
pub fn hash_seed() -> u32 {
    // SAFETY: a read-only global the loader fills in; volatile so the
    // compiler does not fold in the placeholder.
    unsafe { core::ptr::read_volatile(&HASH_SEED) }
}
