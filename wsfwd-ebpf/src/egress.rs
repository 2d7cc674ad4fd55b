//! External egress: replies from endpoints behind the node that the kernel
//! routed out (what the endpoint-facing program left to it, or everything
//! where that program is not attached) get their frontend address back.
//! Everything else passes untouched.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use wsfwd_common::abi::Counter;

use crate::{
    counters::{Way, count, traffic},
    frag, icmp,
    maps::ENDPOINT_ADDRS,
    nat,
    parse::{self, Frag, Packet},
    revnat,
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
    let reply = match revnat::find(p) {
        Ok(r) => r,
        Err(c) => {
            count(c);
            return TC_ACT_OK as i32;
        }
    };
    reply.seen(p);
    if nat::translate(ctx, p, &reply.to).is_err() {
        count(Counter::DropError);
        return TC_ACT_SHOT as i32;
    }
    count(Counter::ReplyTranslated);
    traffic(reply.slot, Way::FromEndpoint, p.ip_len);
    TC_ACT_OK as i32
}
