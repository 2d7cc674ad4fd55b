//! External egress: replies from endpoints behind the node, routed out by the
//! kernel, get their frontend address back. Everything else passes untouched.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use wsfwd_common::abi::{Counter, DIR_REPLY, REVNAT_F_UNIQUE, RevNatKey, Rewrite};

use crate::{
    conntrack::{self, Table},
    counters::{Way, count, traffic},
    icmp,
    maps::{ENDPOINT_ADDRS, REVNAT},
    frag, nat,
    parse::{self, Frag, Packet},
};

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    let p = match parse::parse(ctx) {
        Ok(p) => p,
        Err(Counter::PassIcmpNotOurs) => return icmp::at_egress(ctx),
        Err(c) => {
            count(c);
            return TC_ACT_OK as i32;
        }
    };
    // The kernel routed it here, so it has checked it; but never rewrite what it would not send.
    if let Some(c) = p.invalid {
        count(c);
        return TC_ACT_OK as i32;
    }
    // Fragments the kernel made of a datagram whose source is ours to write.
    if p.frag != Frag::Whole {
        if let Some(e) = frag::source_for(p) {
            if nat::translate(ctx, p, &e).is_err() {
                count(Counter::DropError);
                return TC_ACT_SHOT as i32;
            }
            count(Counter::FragmentSnatTranslated);
            return TC_ACT_OK as i32;
        }
    }
    // Fragments from an endpoint behind the node: every first fragment is
    // remembered, ours or not, so its later fragments are judged like it (a
    // pod's own fragmented traffic passes as it is). A later fragment with no
    // first fragment seen cannot be told apart, and might leak the endpoint's
    // address: dropped.
    let from_endpoint = p.frag != Frag::Whole && ENDPOINT_ADDRS.get_ptr(&p.saddr).is_some();
    if from_endpoint && p.frag == Frag::First {
        frag::remember(p);
    }
    if p.frag == Frag::Later && !frag::recall(p) {
        if from_endpoint {
            count(Counter::DropFragmentUnknown);
            return TC_ACT_SHOT as i32;
        }
        // Most often a packet translated at ingress and redirected out of this interface.
        count(Counter::PassNotOurs);
        return TC_ACT_OK as i32;
    }
    let p: &Packet = p;
    // Cheap filter first: is the source an endpoint at all?
    let endpoint = RevNatKey { addr: p.saddr, port: p.sport, proto: p.proto, _pad: 0 };
    // SAFETY: the value is copied out before any other map call.
    let Some(revnat) = (unsafe { REVNAT.get(&endpoint) }).copied() else {
        count(Counter::PassNotOurs);
        return TC_ACT_OK as i32;
    };
    let key = conntrack::key(p, DIR_REPLY);
    let now = conntrack::now();
    let found = match Table::Conntrack.get(&key) {
        Some(e) => Some((Table::Conntrack, e)),
        None => Table::Handshakes.get(&key).map(|e| (Table::Handshakes, e)),
    };
    let (e, slot) = match found {
        Some((table, e)) => {
            // Copied first: the entry may move to another map.
            // SAFETY: a pointer into a map value, valid for this run.
            let (to, slot) = unsafe { ((*e).to, (*e).traffic) };
            conntrack::seen(table, e, &key, p, now);
            (to, slot)
        }
        // Evicted: an endpoint of exactly one frontend still says where it belongs.
        None if revnat.flags & REVNAT_F_UNIQUE != 0 => {
            count(Counter::ReplyFromRevNat);
            (Rewrite { saddr: revnat.addr, sport: revnat.port, daddr: p.daddr, dport: p.dport }, revnat.traffic)
        }
        None => {
            count(Counter::PassReplyUnknown);
            return TC_ACT_OK as i32;
        }
    };
    if nat::translate(ctx, p, &e).is_err() {
        count(Counter::DropError);
        return TC_ACT_SHOT as i32;
    }
    count(Counter::ReplyTranslated);
    traffic(slot, Way::FromEndpoint, p.ip_len);
    TC_ACT_OK as i32
}
