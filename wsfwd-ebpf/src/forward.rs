//! Sending a translated packet on: FIB lookup towards the endpoint, then a
//! redirect out of the egress interface. The packet never returns to the
//! kernel's stack, which never saw the flow.
use aya_ebpf::bindings::{
    BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS,
    bpf_fib_lookup,
};
use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use wsfwd_common::abi::{Counter, Rewrite};

use crate::{
    ctx::Ctx,
    maps::{CachedRoute, ROUTE_CACHE, ROUTE_GENERATION, RouteKey},
};

const AF_INET: u8 = 2;

/// Where a packet to `dst` leaves, as the routing table says.
pub struct Route {
    ifindex: u32,
    nexthop: [u8; 4],
    /// Resolved neighbour: the Ethernet header to write.
    macs: Option<([u8; 6], [u8; 6])>,
}

/// Why a packet cannot be sent on.
pub enum NoRoute {
    /// Larger than the MTU of the link it would leave through; `gso` when it
    /// is a GSO packet whose segments would be.
    FragNeeded { mtu: u16, gso: bool },
    /// The destination is this node itself (an endpoint on the host network):
    /// delivered by the kernel's own stack, not forwarded.
    Local,
    Drop(Counter),
}

/// How long a cached route is trusted without the agent saying otherwise
/// (it bumps `ROUTE_GENERATION` on every route, address, link or neighbour
/// change it hears): bounds a stale next hop to this while no agent runs.
const ROUTE_TTL_NS: u64 = 1_000_000_000;

/// Looks up the route for a packet of protocol `proto` once translated to
/// `e`'s addresses. `headers` is its IP + L4 header length, to check the
/// segments of a GSO packet against the MTU; `ip_len` its IP length, which
/// the kernel checks against the MTU whether or not the next hop's neighbour
/// is resolved (0: let the kernel check the skb, only on success).
///
/// A resolved route is kept in `ROUTE_CACHE` by source, destination and
/// arrival interface (what the lookup itself depends on, the ports aside:
/// only an L4 multipath hash uses them, and then a cached path is one of the
/// valid ones), so the packets that follow skip `bpf_fib_lookup`.
#[inline(always)]
pub fn route<C: Ctx>(ctx: &C, proto: u8, e: &Rewrite, headers: u32, ip_len: u32) -> Result<Route, NoRoute> {
    let key = RouteKey { saddr: e.saddr, daddr: e.daddr, ifindex: ctx.ingress_ifindex() };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let generation = ROUTE_GENERATION.get(0).copied().unwrap_or(0);
    // SAFETY: the value is copied out before any other map call.
    if let Some(c) = unsafe { ROUTE_CACHE.get(&key) }.copied() {
        if c.generation == generation && now.wrapping_sub(c.cached_ns) < ROUTE_TTL_NS {
            let gso = ctx.gso_size();
            if gso != 0 && gso + headers > c.mtu {
                return Err(NoRoute::FragNeeded { mtu: c.mtu as u16, gso: true });
            }
            if gso == 0 && ip_len > c.mtu {
                return Err(NoRoute::FragNeeded { mtu: c.mtu as u16, gso: false });
            }
            return Ok(Route { ifindex: c.ifindex, nexthop: c.nexthop, macs: Some((c.dmac, c.smac)) });
        }
    }
    // A GSO packet's length is that of all its segments: the kernel then
    // checks the skb itself (and `lookup` its segments).
    let tot_len = if ctx.gso_size() == 0 { ip_len as u16 } else { 0 };
    let route = lookup(ctx, proto, e, headers, tot_len)?;
    if let Some((dmac, smac)) = route.macs {
        // The link's MTU, for the packets that will skip the lookup: asked
        // for by a length no link takes (a lookup that fails on it says the
        // MTU), once per route and cache period.
        let mtu = match lookup(ctx, proto, e, 0, 0xffff) {
            Err(NoRoute::FragNeeded { mtu, .. }) => u32::from(mtu),
            Ok(_) => 0xffff,
            Err(_) => return Ok(route),
        };
        let c = CachedRoute { cached_ns: now, generation, ifindex: route.ifindex, mtu, nexthop: route.nexthop, dmac, smac };
        let _ = ROUTE_CACHE.insert(&key, &c, 0);
    }
    Ok(route)
}

/// One `bpf_fib_lookup`, checking the MTU against `tot_len` (0: the kernel
/// checks the skb, and `headers` a GSO packet's segments).
#[inline(always)]
fn lookup<C: Ctx>(ctx: &C, proto: u8, e: &Rewrite, headers: u32, tot_len: u16) -> Result<Route, NoRoute> {
    // SAFETY: bpf_fib_lookup is plain data; all-zero is a valid start.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = proto;
    params.sport = u16::from_ne_bytes(e.sport);
    params.dport = u16::from_ne_bytes(e.dport);
    let gso = if tot_len == 0 { ctx.gso_size() } else { 0 };
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = ctx.ingress_ifindex();
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(e.saddr);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(e.daddr);
    let rc = ctx.fib_lookup(&mut params);
    // SAFETY: reading the union members the kernel filled in for AF_INET.
    let nexthop = unsafe { params.__bindgen_anon_4.ipv4_dst }.to_ne_bytes();
    // SAFETY: the kernel fills mtu_result in for these results.
    let mtu = unsafe { params.__bindgen_anon_1.mtu_result };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            // The kernel passes GSO packets whatever their segment size;
            // the segments must fit as they would when forwarded.
            if gso != 0 && gso + headers > mtu as u32 {
                return Err(NoRoute::FragNeeded { mtu, gso: true });
            }
            Ok(Route { ifindex: params.ifindex, nexthop, macs: Some((params.dmac, params.smac)) })
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Ok(Route { ifindex: params.ifindex, nexthop, macs: None }),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(NoRoute::FragNeeded { mtu, gso: false }),
        BPF_FIB_LKUP_RET_NOT_FWDED => Err(NoRoute::Local),
        _ => Err(NoRoute::Drop(Counter::DropNoRoute)),
    }
}

impl Route {
    /// The interface it leaves through.
    #[inline(always)]
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The next hop's MAC is known: the packet can be sent as it is.
    #[inline(always)]
    pub fn resolved(&self) -> bool {
        self.macs.is_some()
    }
}

/// Redirects the (already rewritten) packet along `route`. An unresolved
/// neighbour is left to the kernel to resolve (TC only: the caller passes
/// such a packet on before rewriting it where the hook cannot).
#[inline(always)]
pub fn redirect<C: Ctx>(ctx: &C, route: &Route) -> Result<i32, Counter> {
    match route.macs {
        Some((dst, src)) => {
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(&dst);
            macs[6..].copy_from_slice(&src);
            ctx.store(0, &macs).map_err(|_| Counter::DropError)?;
            ctx.redirect(route.ifindex).map_err(|_| Counter::DropError)
        }
        None => ctx.redirect_neigh(route.ifindex, route.nexthop).map_err(|_| Counter::DropError),
    }
}
