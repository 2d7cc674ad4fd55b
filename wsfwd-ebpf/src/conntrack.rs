//! Flow state. Each flow has two entries, one per direction, saying what a
//! packet of that direction becomes. Gateway flows live in `CONNTRACK` (LRU)
//! once established, in `HANDSHAKES` (LRU) until then; full-NAT flows in
//! `NAT` (never evicted). Entries age out in the agent's
//! collector; the datapath only records what it sees.
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use wsfwd_common::{
    abi::{Backend, Counter, DIR_ORIGINAL, DIR_REPLY, FlowEntry, FlowKey, FlowState, FlowStatus, PROTO_TCP, Rewrite},
    tcp::{self, Seen, TcpWindow},
};

use crate::{
    counters::count,
    halfopen,
    maps::{CONNTRACK, HANDSHAKES, NAT, NEW_FLOW},
    parse::{Frag, Packet},
};

/// Which map a flow lives in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Conntrack,
    Handshakes,
    Nat,
}

impl Table {
    #[inline(always)]
    pub fn get(self, key: &FlowKey) -> Option<*mut FlowEntry> {
        match self {
            Table::Conntrack => CONNTRACK.get_ptr_mut(key),
            Table::Handshakes => HANDSHAKES.get_ptr_mut(key),
            Table::Nat => NAT.get_ptr_mut(key),
        }
    }

    #[inline(always)]
    fn remove(self, key: &FlowKey) {
        let _ = match self {
            Table::Conntrack => CONNTRACK.remove(key),
            Table::Handshakes => HANDSHAKES.remove(key),
            Table::Nat => NAT.remove(key),
        };
    }
}

/// Removes both entries of a flow (`key` and `e` are one of them), which
/// must not be used after.
#[inline(always)]
pub fn forget(table: Table, e: &FlowEntry, key: &FlowKey) {
    let other = key.counterpart(&e.to);
    table.remove(&other);
    table.remove(key);
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

/// The two entries of a new flow, built in a per-CPU scratch slot (off the
/// 512-byte eBPF stack): what packets to the endpoint become (`out`) and
/// what its replies become (`back`). A SYN starts the opener's window; any
/// other TCP packet (a flow whose entries were lost, picked up mid-stream)
/// makes both sides liberal.
#[inline(always)]
pub fn opening(p: &Packet, out: Rewrite, back: Rewrite, traffic: u32, now: u64) -> Option<(&'static mut FlowEntry, &'static mut FlowEntry)> {
    let (o, b) = (NEW_FLOW.get_ptr_mut(0)?, NEW_FLOW.get_ptr_mut(1)?);
    // SAFETY: this CPU's two slots, distinct; nothing else runs on this CPU meanwhile.
    let (o, b) = unsafe { (&mut *o, &mut *b) };
    for (e, to) in [(&mut *o, out), (&mut *b, back)] {
        e.last_seen_ns = now;
        e.to = to;
        e.state = FlowState::default();
        e.tcp = TcpWindow::default();
        e.traffic = traffic;
    }
    if p.proto == PROTO_TCP {
        if p.is_syn() {
            o.tcp = tcp::open(&p.tcp);
        } else {
            o.state.liberal = 1;
            b.state.liberal = 1;
        }
    }
    Some((o, b))
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
pub fn create_gateway(p: &Packet, backend: &Backend, now: u64) -> Result<Rewrite, Counter> {
    let original = key(p, DIR_ORIGINAL);
    let out = Rewrite { saddr: p.saddr, sport: p.sport, daddr: backend.addr, dport: backend.port };
    let back = Rewrite { saddr: p.daddr, sport: p.dport, daddr: p.saddr, dport: p.sport };
    let reply = original.counterpart(&out);
    // A live flow through another frontend keeps its reply entry.
    // SAFETY: pointers into map values, valid for this run.
    let theirs = |e: *mut FlowEntry| unsafe { (*e).to.saddr != p.daddr || (*e).to.sport != p.dport };
    // Every new flow waits in `HANDSHAKES` until it is established (see
    // `seen`), so a flood of SYNs, ACKs or datagrams from spoofed addresses
    // churns only that table. This tuple's own stale reply entry is replaced.
    if let Some(e) = CONNTRACK.get_ptr_mut(&reply) {
        if theirs(e) {
            return Err(Counter::DropTupleClash);
        }
        let _ = CONNTRACK.remove(&reply);
    }
    let flags = match HANDSHAKES.get_ptr_mut(&reply) {
        Some(e) if theirs(e) => return Err(Counter::DropTupleClash),
        Some(_) => 0,
        None => BPF_NOEXIST as u64,
    };
    let (to_endpoint, to_client) = opening(p, out, back, backend.traffic, now).ok_or(Counter::DropError)?;
    // Two SYNs racing for a free reply key: only one claims it.
    HANDSHAKES.insert(&reply, to_client, flags).map_err(|_| Counter::DropTupleClash)?;
    // LRU inserts do not fail for want of room; any other failure means the
    // next packet simply tries again.
    let _ = HANDSHAKES.insert(&original, to_endpoint, 0);
    Ok(out)
}

/// The flow's status from both of its entries (`key` and `e` are one of them).
#[inline(always)]
pub fn status(table: Table, e: &FlowEntry, key: &FlowKey) -> FlowStatus {
    let other = table.get(&key.counterpart(&e.to));
    // SAFETY: a pointer into a map value, valid for this program run.
    FlowStatus::of(&e.state, other.map(|o| unsafe { &(*o).state }))
}

/// Notes a packet of an existing flow (`key` is its own direction's): its
/// time, and for TCP what the segment shows, if it fits the flow's window
/// (see `wsfwd_common::tcp`). Each fact is written to this direction's own
/// entry only, one byte each: no update races another CPU's. A flow in
/// `HANDSHAKES` moves to `CONNTRACK` once established: a TCP handshake
/// completed, or (UDP, a TCP flow picked up mid-stream) the endpoint answered.
#[inline(always)]
pub fn seen(table: Table, e: *mut FlowEntry, key: &FlowKey, p: &Packet, now: u64) {
    // SAFETY: a pointer into a map value, valid for this program run.
    let e = unsafe { &mut *e };
    e.last_seen_ns = now;
    // Fragments are not tracked (a later one has no TCP header at all), nor
    // is UDP: past its time, only a flow still in `HANDSHAKES` has more to learn.
    let tcp = p.proto == PROTO_TCP && p.frag == Frag::Whole;
    if !tcp && table != Table::Handshakes {
        return;
    }
    let other_key = key.counterpart(&e.to);
    let Some(other) = table.get(&other_key) else {
        // The other direction's entry is gone (evicted): nothing to check against.
        return;
    };
    // SAFETY: as above; the two keys differ, so the entries do.
    let other = unsafe { &mut *other };
    // Entries that no longer name each other (the tuple was reused since).
    if other_key.counterpart(&other.to) != *key {
        return;
    }
    let liberal = e.state.liberal != 0 || other.state.liberal != 0;
    let (handshake, fin, rst) = if !tcp {
        (false, false, false)
    } else if liberal {
        (false, p.tcp.flags & tcp::FIN != 0, p.tcp.flags & tcp::RST != 0)
    } else {
        match tcp::track(&mut e.tcp, &mut other.tcp, &p.tcp) {
            Seen::InWindow { handshake, fin, rst } => (handshake, fin, rst),
            Seen::OutOfWindow => {
                count(Counter::TcpOutOfWindow);
                return;
            }
        }
    };
    if fin && e.state.fin == 0 {
        e.state.fin = 1;
    }
    if rst && e.state.rst == 0 {
        e.state.rst = 1;
    }
    let completes = handshake && e.state.handshake == 0 && other.state.handshake != 0;
    if handshake && e.state.handshake == 0 {
        e.state.handshake = 1;
    }
    if completes && table == Table::Nat {
        halfopen::completed(if key.dir == DIR_ORIGINAL { key.saddr } else { other_key.saddr });
    }
    let answered = key.dir == DIR_REPLY && !rst && (p.proto != PROTO_TCP || liberal);
    if table == Table::Handshakes && (completes || answered) {
        // Both entries move to `CONNTRACK`; the pointers are not used after this.
        let _ = CONNTRACK.insert(key, &*e, 0);
        let _ = CONNTRACK.insert(&other_key, &*other, 0);
        forget(Table::Handshakes, e, key);
    }
}

/// A full-NAT flow about to be replaced by a new one on the same client
/// tuple: its reply entry, which keeps holding the old SNAT port through the
/// quarantine, is marked closed, since the original entry that said so is
/// about to be overwritten.
#[inline(always)]
pub fn retire(e: &FlowEntry, key: &FlowKey) {
    if let Some(other) = Table::Nat.get(&key.counterpart(&e.to)) {
        // SAFETY: a pointer into a map value, valid for this program run.
        unsafe { (*other).state.rst = 1 };
    }
}
