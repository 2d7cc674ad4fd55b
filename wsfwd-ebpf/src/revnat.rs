//! Finding what an endpoint's reply becomes: the flow's reply entry
//! (`CONNTRACK`, or `HANDSHAKES` while it is being established), or, for an
//! endpoint of exactly one frontend whose flow was evicted, `REVNAT`. Shared
//! by external egress and the endpoint-facing program, which look the same
//! packets up at different places; the latter also takes full-NAT replies.
use wsfwd_common::abi::{Counter, DIR_REPLY, FlowEntry, FlowKey, REVNAT_F_UNIQUE, RevNatKey, Rewrite};

use crate::{
    conntrack::{self, Table},
    maps::{REVNAT, snat_ports},
    parse::Packet,
};

/// A reply and how to translate it.
pub struct Reply {
    pub to: Rewrite,
    /// The flow's `TRAFFIC` slot.
    pub slot: u32,
    key: FlowKey,
    /// The flow entry, when the reply belongs to a tracked flow.
    entry: Option<(Table, *mut FlowEntry)>,
}

/// The reply `p` is, or why it is not one (`PassNotOurs`: not from an
/// endpoint; `PassReplyUnknown`: no flow, and the endpoint serves several
/// frontends).
#[inline(always)]
pub fn find(p: &Packet) -> Result<Reply, Counter> {
    // Cheap filter first: is the source an endpoint at all?
    let endpoint = RevNatKey { addr: p.saddr, port: p.sport, proto: p.proto, _pad: 0 };
    // SAFETY: the value is copied out before any other map call.
    let Some(revnat) = (unsafe { REVNAT.get(&endpoint) }).copied() else {
        return Err(Counter::PassNotOurs);
    };
    let key = conntrack::key(p, DIR_REPLY);
    let found = match Table::Conntrack.get(&key) {
        Some(e) => Some((Table::Conntrack, e)),
        None => Table::Handshakes.get(&key).map(|e| (Table::Handshakes, e)),
    };
    match found {
        // Copied out: the entry may move to another map once seen.
        // SAFETY: a pointer into a map value, valid for this run.
        Some((table, e)) => Ok(Reply { to: unsafe { (*e).to }, slot: unsafe { (*e).traffic }, key, entry: Some((table, e)) }),
        None if revnat.flags & REVNAT_F_UNIQUE != 0 => Ok(Reply {
            to: Rewrite { saddr: revnat.addr, sport: revnat.port, daddr: p.daddr, dport: p.dport },
            slot: revnat.traffic,
            key,
            entry: None,
        }),
        None => Err(Counter::PassReplyUnknown),
    }
}

/// A full-NAT reply (to a SNAT address and port) that enters the node where
/// endpoints are rather than on an external interface: an endpoint on
/// another node, reached through the pod network's interface.
#[inline(always)]
pub fn find_nat(p: &Packet) -> Result<Reply, Counter> {
    let (port_min, port_count) = snat_ports();
    let dport = u16::from_be_bytes(p.dport) as u32;
    if dport < port_min || dport - port_min >= port_count {
        return Err(Counter::PassNotOurs);
    }
    let key = conntrack::key(p, DIR_REPLY);
    let e = Table::Nat.get(&key).ok_or(Counter::PassNotOurs)?;
    // SAFETY: a pointer into a map value, valid for this run.
    Ok(Reply { to: unsafe { (*e).to }, slot: unsafe { (*e).traffic }, key, entry: Some((Table::Nat, e)) })
}

impl Reply {
    /// Records the packet in its flow (state, window, last seen) — once per
    /// packet, by whichever program translates it.
    #[inline(always)]
    pub fn seen(&self, p: &Packet) {
        match self.entry {
            Some((table, e)) => conntrack::seen(table, e, &self.key, p, conntrack::now()),
            None => crate::counters::count(Counter::ReplyFromRevNat),
        }
    }
}
