//! Ingress of an endpoint-facing interface: a reply of an endpoint behind
//! the node (or a full-NAT reply of one on another node, coming back through
//! the pod network) is translated where it enters the node and redirected straight
//! out of the interface towards the client, so it never crosses the node's
//! forwarding and netfilter (a `FORWARD` policy of DROP, or a `ctstate
//! INVALID` rule, would drop a reply whose flow netfilter never saw).
//!
//! Only whole, valid TCP and UDP replies that arrive from where the node
//! routes their source, with a route that needs no help from the kernel,
//! are taken; everything else (not a reply, another interface's, ICMP,
//! fragments, TTL 1, too large for the outgoing link, to this node itself)
//! is left to the kernel untouched, and external egress translates what
//! is a reply, as it does where this program is not attached. The flow is
//! recorded only by the program that translates the packet.
use aya_ebpf::programs::TcContext;
use wsfwd_common::abi::{Counter, Rewrite};

use crate::{
    counters::{Way, count, traffic},
    ctx::Ctx,
    forward, nat,
    parse::{self, Frag},
    revnat,
};

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    match run(ctx) {
        Ok(verdict) => verdict,
        // A failed helper may have left the packet half rewritten.
        Err(Counter::DropError) => {
            count(Counter::DropError);
            <TcContext as Ctx>::DROP
        }
        Err(c) => {
            count(c);
            <TcContext as Ctx>::PASS
        }
    }
}

#[inline(always)]
fn run(ctx: &TcContext) -> Result<i32, Counter> {
    let passed = Counter::EndpointSidePassed;
    let p = parse::parse(ctx).map_err(|_| passed)?;
    if p.invalid.is_some() || p.frag != Frag::Whole || p.ttl <= 1 {
        return Err(passed);
    }
    let reply = revnat::find(p).or_else(|_| revnat::find_nat(p)).map_err(|_| passed)?;
    // Strict reverse path, as `rp_filter=1`: a reply must arrive from where
    // the node routes its source. This program runs before the kernel's own
    // check, so an endpoint forging another's address would otherwise have
    // that one's replies translated; left to the kernel, it meets whatever
    // the node's `rp_filter` says.
    let back = Rewrite { saddr: p.daddr, daddr: p.saddr, sport: p.dport, dport: p.sport };
    // The length of a bare IP header: only the route is asked for, not
    // whether this packet would fit the endpoint's link.
    match forward::route(ctx, p.proto, &back, 0, 20) {
        Ok(r) if r.ifindex() == ctx.ingress_ifindex() => {}
        _ => return Err(passed),
    }
    let route = forward::route(ctx, p.proto, &reply.to, p.headers, p.ip_len).map_err(|_| passed)?;
    reply.seen(p);
    nat::translate(ctx, p, &reply.to).map_err(|_| Counter::DropError)?;
    nat::decrement_ttl(ctx, p.ttl, p.proto).map_err(|_| Counter::DropError)?;
    let verdict = forward::redirect(ctx, &route)?;
    count(Counter::ReplyRedirected);
    traffic(reply.slot, Way::FromEndpoint, p.ip_len);
    Ok(verdict)
}
