//! The maps, declared once. Sizes here are placeholders: the agent sets the
//! real ones at load time from the configuration and its flags.
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use wsfwd_common::abi::{
    AffinityEntry, AffinityKey, Attachment, IfaceInfo, Backend, COUNTER_COUNT, FlowEntry, FlowKey, FragKey, FrontendName, MAX_SNAT_IPS, Meta, ReadyKey, RevNatEntry, RevNatKey, Rewrite, ServiceEntry, ServiceKey, Traffic, TrafficOwner,
};

/// Not preallocated, like `REVNAT` and `READY`: the agent updates entries
/// while packets read them, and a preallocated map reuses an updated
/// element at once, so a slow reader could copy half of another entry.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceEntry> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(1, 0);

/// Each service's Maglev table in its own region; entries are `BACKENDS`
/// ids. Memory-mappable: the agent writes whole tables with plain stores.
#[map]
pub static MAGLEV: Array<u32> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Gateway flows. LRU: an evicted flow is rebuilt from Maglev and `REVNAT`.
#[map]
pub static CONNTRACK: LruHashMap<FlowKey, FlowEntry> = LruHashMap::with_max_entries(1, 0);

/// Gateway flows not yet established (see `conntrack::seen`). Kept apart so
/// that a flood from spoofed addresses churns only this LRU map, never the
/// established flows in `CONNTRACK`, where a flow moves once established.
#[map]
pub static HANDSHAKES: LruHashMap<FlowKey, FlowEntry> = LruHashMap::with_max_entries(1, 0);

#[map]
pub static REVNAT: HashMap<RevNatKey, RevNatEntry> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// Addresses of the endpoints behind the node (the addresses in `REVNAT`),
/// for packets that carry no ports: later fragments.
#[map]
pub static ENDPOINT_ADDRS: HashMap<[u8; 4], u8> = HashMap::with_max_entries(1, 0);

/// Full-NAT flows. Never evicted: a SNAT port mapping lost mid-flow would
/// break the connection. The agent removes them after their quarantine.
#[map]
pub static NAT: HashMap<FlowKey, FlowEntry> = HashMap::with_max_entries(1, 0);

#[map]
pub static SNAT_IPS: Array<[u8; 4]> = Array::with_max_entries(MAX_SNAT_IPS, 0);

/// Full-NAT TCP flows per client address whose handshake has not completed.
/// Counted up here, recounted from `NAT` by the agent's collector; LRU so a
/// flood of addresses cannot fill it.
#[map]
pub static HALF_OPEN: LruHashMap<[u8; 4], u64> = LruHashMap::with_max_entries(1, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// First fragments' ports, for the fragments that follow (see `frag`).
#[map]
pub static FRAGMENTS: LruHashMap<FragKey, [u8; 4]> = LruHashMap::with_max_entries(16384, 0);

/// Written and read by the agent only (the programs never look): the pinned
/// maps' layout and the live plan's half, for an agent that adopts them.
#[map]
pub static META: Array<Meta> = Array::with_max_entries(1, 0);

/// Written and read by the agent only: where the programs are attached.
#[map]
pub static ATTACHED: HashMap<u32, Attachment> = HashMap::with_max_entries(256, 0);

/// ClientIP affinity: the endpoint each client of a service was given. LRU:
/// a flood of client addresses evicts the oldest, which then follow Maglev.
#[map]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityEntry> = LruHashMap::with_max_entries(1, 0);

/// The endpoints that take new flows of each service with affinity: an
/// affinity is honoured only while its endpoint is here.
#[map]
pub static READY: HashMap<ReadyKey, u32> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// Packets and bytes per service and endpoint, indexed by the slot
/// `BACKENDS`, `REVNAT` and each flow's entries carry.
#[map]
pub static TRAFFIC: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(1, 0);

/// Written and read by the agent only: whose traffic each slot counts.
#[map]
pub static TRAFFIC_OWNERS: HashMap<u32, TrafficOwner> = HashMap::with_max_entries(1, 0);

/// Written and read by the agent only: the service port of each frontend.
#[map]
pub static FRONTEND_NAMES: HashMap<ServiceKey, FrontendName> = HashMap::with_max_entries(1, 0);

/// Datagrams handed to the kernel to fragment with only their destination
/// translated (see `frag::leave_source`): the source their fragments get at
/// egress. Keyed as the kernel's fragments leave: source, new destination.
#[map]
pub static FRAGMENT_SOURCES: LruHashMap<FragKey, Rewrite> = LruHashMap::with_max_entries(4096, 0);

/// The node's interfaces, by ifindex (below 65,536): each XDP interface's
/// MAC (XDP has no packet type, so it compares the frame's destination
/// itself), and which are veths to another namespace. Refreshed by the
/// agent (XDP's entries before it attaches XDP); not pinned.
#[map]
pub static IFACES: Array<IfaceInfo> = Array::with_max_entries(65536, 0);

/// Routes recently looked up (`forward::route`), by (source, destination,
/// arrival interface): the next hop's interface and MACs and the link's MTU,
/// so an established flow's packets skip `bpf_fib_lookup`. An entry holds
/// for `ROUTE_TTL_NS` at most, and not past a change of `ROUTE_GENERATION`.
/// Not pinned: each load starts empty.
#[map]
pub static ROUTE_CACHE: LruHashMap<RouteKey, CachedRoute> = LruHashMap::with_max_entries(65536, 0);

/// Bumped by the agent whenever it hears of a route, address, link or
/// neighbour change (rtnetlink): every cached route is stale from then on.
#[map]
pub static ROUTE_GENERATION: Array<u32> = Array::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct RouteKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub ifindex: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct CachedRoute {
    pub cached_ns: u64,
    pub generation: u32,
    pub ifindex: u32,
    pub mtu: u32,
    pub nexthop: [u8; 4],
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
}

/// The two entries of a flow being created: scratch space off the small eBPF stack.
#[map]
pub static NEW_FLOW: PerCpuArray<FlowEntry> = PerCpuArray::with_max_entries(2, 0);


// Set by the agent at load time; volatile reads keep the compiler from
// folding in these placeholders.
#[unsafe(no_mangle)]
static HASH_SEED: u32 = 0;
#[unsafe(no_mangle)]
static SNAT_PORT_MIN: u32 = 0;
#[unsafe(no_mangle)]
static SNAT_PORT_COUNT: u32 = 0;
#[unsafe(no_mangle)]
static HALF_OPEN_MAX: u32 = 0;

#[inline(always)]
fn global(g: &u32) -> u32 {
    // SAFETY: a read-only global the loader fills in.
    unsafe { core::ptr::read_volatile(g) }
}

#[inline(always)]
pub fn hash_seed() -> u32 {
    global(&HASH_SEED)
}

/// The SNAT port range: (first port, count).
#[inline(always)]
pub fn snat_ports() -> (u32, u32) {
    (global(&SNAT_PORT_MIN), global(&SNAT_PORT_COUNT))
}

/// Unestablished full-NAT flows one client address may hold.
#[inline(always)]
pub fn half_open_max() -> u32 {
    global(&HALF_OPEN_MAX)
}
