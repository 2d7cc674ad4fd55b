//! Flow state. Each flow has two entries, one per direction, saying what a
//! packet of that direction becomes. Gateway flows live in `CONNTRACK` (LRU),
//! full-NAT flows in `NAT` (never evicted). Entries age out in the agent's
//! collector; the datapath only records what it sees.
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use wsfwd_common::abi::{
    Backend, CT_F_FIN_ORIGINAL, Counter, CT_F_FIN_REPLY, CT_F_REPLIED, CT_F_RST, DIR_ORIGINAL, DIR_REPLY, FlowEntry,
    FlowKey,
};

use crate::{
    maps::{CONNTRACK, NAT},
    parse::{Packet, TCP_FIN, TCP_RST},
};

/// Which map a flow lives in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Conntrack,
    Nat,
}

impl Table {
    #[inline(always)]
    pub fn get(self, key: &FlowKey) -> Option<*mut FlowEntry> {
        match self {
            Table::Conntrack => CONNTRACK.get_ptr_mut(key),
            Table::Nat => NAT.get_ptr_mut(key),
        }
    }
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The key of the packet's own direction.
#[inline(always)]
pub fn key(p: &Packet, dir: u8) -> FlowKey {
    FlowKey { saddr: p.saddr, daddr: p.daddr, sport: p.sport, dport: p.dport, proto: p.proto, dir, _pad: [0; 2] }
}

/// Records a new gateway flow (the client address is kept) in both directions.
///
/// The reply key (endpoint -> client) does not name the frontend, so the same
/// client address and port reaching the same endpoint through two frontends
/// would share it. The reply entry is claimed only if it is free or already
/// this flow's (same frontend: the original entry was evicted, or the flow is
/// being reopened); a live flow through another frontend keeps it, and the
/// new flow is refused (`Err(DropTupleClash)`) rather than taking it over —
/// a SYN forged with a victim's address must not redirect the victim's replies.
#[inline(always)]
pub fn create_gateway(p: &Packet, backend: &Backend, now: u64) -> Result<FlowEntry, Counter> {
    let original = key(p, DIR_ORIGINAL);
    let to_endpoint = FlowEntry::new(p.saddr, p.sport, backend.addr, backend.port, now);
    let reply = original.counterpart(&to_endpoint);
    let to_client = FlowEntry::new(p.daddr, p.dport, p.saddr, p.sport, now);
    let flags = match CONNTRACK.get_ptr(&reply) {
        // SAFETY: a pointer into a map value, valid for this run.
        Some(theirs) if unsafe { (*theirs).saddr != p.daddr || (*theirs).sport != p.dport } => {
            return Err(Counter::DropTupleClash);
        }
        Some(_) => 0,
        None => BPF_NOEXIST as u64,
    };
    // Two SYNs racing for a free reply key: only one claims it.
    CONNTRACK.insert(&reply, &to_client, flags).map_err(|_| Counter::DropTupleClash)?;
    // LRU inserts do not fail for want of room; any other failure means the
    // next packet simply tries again.
    let _ = CONNTRACK.insert(&original, &to_endpoint, 0);
    Ok(to_endpoint)
}

/// Notes a packet of an existing flow (`key` is its own direction's): its
/// time, and FIN/RST in both entries so the collector can end the flow after
/// a short linger.
#[inline(always)]
pub fn seen(table: Table, e: *mut FlowEntry, key: &FlowKey, p: &Packet, now: u64) {
    // SAFETY: a pointer into a map value, valid for this program run.
    let e = unsafe { &mut *e };
    e.last_seen_ns = now;
    if key.dir == DIR_REPLY && e.flags & CT_F_REPLIED == 0 {
        e.flags |= CT_F_REPLIED;
    }
    if !p.ends_flow() {
        return;
    }
    let mut flags = 0;
    if p.tcp_flags & TCP_RST != 0 {
        flags |= CT_F_RST;
    }
    if p.tcp_flags & TCP_FIN != 0 {
        flags |= if key.dir == DIR_ORIGINAL { CT_F_FIN_ORIGINAL } else { CT_F_FIN_REPLY };
    }
    e.flags |= flags;
    if let Some(o) = table.get(&key.counterpart(e)) {
        // SAFETY: as above.
        unsafe { (*o).flags |= flags };
    }
}
