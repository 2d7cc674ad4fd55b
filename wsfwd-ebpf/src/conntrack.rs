//! Flow tracking. Each flow has two entries in an LRU map: the original
//! direction (client -> frontend, holding the endpoint) and the reply
//! direction (endpoint -> client, holding the frontend). Entries age out in
//! the agent's collector; the datapath only records what it sees.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use wsfwd_common::abi::{
    Backend, CT_F_FIN_ORIGINAL, CT_F_FIN_REPLY, CT_F_REPLIED, CT_F_RST, DIR_ORIGINAL, DIR_REPLY, FlowEntry,
    FlowKey,
};

use crate::{maps::CONNTRACK, parse::{Packet, TCP_FIN, TCP_RST}};

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

#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<*mut FlowEntry> {
    CONNTRACK.get_ptr_mut(key)
}

/// Records a new flow in both directions.
#[inline(always)]
pub fn create(p: &Packet, backend: &Backend, now: u64) {
    let original = key(p, DIR_ORIGINAL);
    let to_endpoint = FlowEntry { last_seen_ns: now, nat_addr: backend.addr, nat_port: backend.port, flags: 0, _pad: 0 };
    let reply = original.counterpart(&to_endpoint);
    let to_frontend = FlowEntry { last_seen_ns: now, nat_addr: p.daddr, nat_port: p.dport, flags: 0, _pad: 0 };
    // On failure (a full map cannot fail for LRU) the next packet retries.
    let _ = CONNTRACK.insert(&original, &to_endpoint, 0);
    let _ = CONNTRACK.insert(&reply, &to_frontend, 0);
}

/// Notes a packet of an existing flow (`key` is its own direction's): its
/// time, and FIN/RST in both entries so the collector can end the flow after
/// a short linger.
#[inline(always)]
pub fn seen(entry: *mut FlowEntry, key: &FlowKey, p: &Packet, now: u64) {
    let dir = key.dir;
    // SAFETY: a pointer into a map value, valid for this program run.
    let e = unsafe { &mut *entry };
    e.last_seen_ns = now;
    if dir == DIR_REPLY && e.flags & CT_F_REPLIED == 0 {
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
        flags |= if dir == DIR_ORIGINAL { CT_F_FIN_ORIGINAL } else { CT_F_FIN_REPLY };
    }
    e.flags |= flags;
    if let Some(o) = CONNTRACK.get_ptr_mut(&key.counterpart(e)) {
        // SAFETY: as above.
        unsafe { (*o).flags |= flags };
    }
}
