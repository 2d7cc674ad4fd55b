//! External ingress: frontend packets are translated to their endpoint, and
//! full-NAT replies to their client, then redirected; everything else passes
//! untouched.

use wsfwd_common::abi::{BACKEND_F_SNAT, Counter, DIR_ORIGINAL, DIR_REPLY, NO_TRAFFIC, PROTO_TCP, Rewrite, ServiceEntry, ServiceKey};

use crate::{
    conntrack::{self, Table},
    ctx::Ctx,
    counters::{Way, count, traffic},
    forward::{self, NoRoute},
    icmp,
    maps::{SERVICES, snat_ports},
    nat,
    frag,
    parse::{self, Frag, Packet},
    reply, select, snat,
};

pub enum Verdict {
    /// Not touched: the kernel may have it.
    Pass(Counter),
    /// Owned by wsfwd but cannot be delivered.
    Drop(Counter),
    /// A new flow that cannot be served: TCP gets a RST, the rest is dropped.
    Refuse(Counter),
}

#[inline(always)]
pub fn handle<C: Ctx>(ctx: &C) -> i32 {
    match run(ctx) {
        Ok(verdict) => verdict,
        // Where the hook is not TC, TC on the same interface sees the packet
        // next and counts its own verdict.
        Err(Verdict::Pass(c)) => {
            count(if ctx.tc().is_some() { c } else { Counter::XdpToTc });
            C::PASS
        }
        Err(Verdict::Drop(c)) => {
            count(c);
            C::DROP
        }
        // Only TC answers; elsewhere the packet goes on to TC, which refuses it.
        Err(Verdict::Refuse(c)) => match ctx.tc() {
            Some(tc) => {
                count(c);
                reply::refuse(tc)
            }
            None => {
                count(Counter::XdpToTc);
                C::PASS
            }
        },
    }
}

#[inline(always)]
fn run<C: Ctx>(ctx: &C) -> Result<i32, Verdict> {
    ctx.for_this_host().map_err(Verdict::Pass)?;
    let p = match parse::parse(ctx) {
        Ok(p) => p,
        Err(Counter::PassIcmpNotOurs) => match ctx.tc() {
            Some(tc) => return icmp::at_ingress(tc).map_err(Verdict::Drop),
            None => return Err(Verdict::Pass(Counter::PassIcmpNotOurs)),
        },
        Err(c) => return Err(Verdict::Pass(c)),
    };
    if p.frag == Frag::Later && !frag::recall(p) {
        return Err(Verdict::Pass(Counter::PassFragmentUnknown));
    }
    let p: &Packet = p;
    let frontend = ServiceKey { addr: p.daddr, port: p.dport, proto: p.proto, _pad: 0 };
    // SAFETY: the value is copied out before any other map call.
    let svc = unsafe { SERVICES.get(&frontend) }.copied();
    if let Some(reason) = p.invalid {
        // What the kernel would drop is never translated: dropped (and
        // counted) when addressed to a frontend, else left to the kernel.
        return Err(if svc.is_some() { Verdict::Drop(reason) } else { Verdict::Pass(Counter::PassNotOurs) });
    }
    // TCP is never fragmented by a well-behaved sender (it sets DF and
    // segments itself); a fragmented TCP packet to a frontend is an attack
    // on the endpoint's reassembly, and could not be window-checked.
    if svc.is_some() && p.proto == PROTO_TCP && p.frag != Frag::Whole {
        return Err(Verdict::Drop(Counter::DropTcpFragment));
    }
    match svc {
        Some(svc) => to_endpoint(ctx, p, &svc),
        None => to_client(ctx, p),
    }
}

/// A packet for a frontend.
#[inline(always)]
fn to_endpoint<C: Ctx>(ctx: &C, p: &Packet, svc: &ServiceEntry) -> Result<i32, Verdict> {
    if p.ttl <= 1 {
        return Err(Verdict::Pass(Counter::PassTtlExpired));
    }
    let now = conntrack::now();
    let key = conntrack::key(p, DIR_ORIGINAL);
    let mut found = None;
    for table in [Table::Conntrack, Table::Nat, Table::Handshakes] {
        if let Some(e) = table.get(&key) {
            found = Some((table, e));
            break;
        }
    }
    // A new SYN on a closed flow's tuple is a new connection: choose again.
    // Only a RST or FINs that fit the window close a flow, so a forged one
    // cannot get a live flow re-chosen.
    if let Some((table, e)) = found {
        // SAFETY: a pointer into a map value, valid for this run.
        if p.is_syn() && conntrack::status(table, unsafe { &*e }, &key).closing {
            if table == Table::Nat {
                conntrack::retire(unsafe { &*e }, &key);
            } else {
                // A gateway flow's entries would shadow the new ones in `HANDSHAKES`.
                conntrack::forget(table, unsafe { &*e }, &key);
            }
            found = None;
        }
    }
    let mut slot = NO_TRAFFIC;
    let to = match found {
        Some((table, e)) => {
            // Copied first: the entry may move to another map.
            // SAFETY: a pointer into a map value, valid for this run.
            let to = unsafe { (*e).to };
            slot = unsafe { (*e).traffic };
            conntrack::seen(table, e, &key, p, now);
            to
        }
        // New, or evicted from the LRU map: Maglev gives the same endpoint
        // again as long as the service's endpoints have not changed.
        None => {
            let mut to = Rewrite::default();
            match new_flow(p, svc, now, &mut to, &mut slot) {
                NewFlow::Created => to,
                NewFlow::Drop(c) => return Err(Verdict::Drop(c)),
                NewFlow::Refuse(c) => return Err(Verdict::Refuse(c)),
            }
        }
    };
    if p.frag == Frag::First {
        frag::remember(p);
    }
    forward(ctx, p, &to, Counter::Redirected, slot, Way::ToEndpoint)
}

/// How creating a flow went. Plain data written through `to` rather than a
/// `Result<Rewrite, Verdict>`: measured, that keeps 32 bytes off the
/// 512-byte eBPF stack of the ingress program.
#[repr(u32)]
enum NewFlow {
    Created,
    Drop(Counter),
    Refuse(Counter),
}

#[inline(always)]
fn new_flow(p: &Packet, svc: &ServiceEntry, now: u64, to: &mut Rewrite, slot: &mut u32) -> NewFlow {
    let Some(backend) = select::pick(svc, p, now) else { return NewFlow::Refuse(Counter::DropNoEndpoint) };
    let created = if backend.flags & BACKEND_F_SNAT != 0 {
        // Unlike a gateway flow, a full-NAT flow cannot be rebuilt mid-stream:
        // the endpoint never saw a connection from a new mapping.
        if p.proto == PROTO_TCP && !p.is_syn() {
            return NewFlow::Drop(Counter::DropNoNatFlow);
        }
        match snat::allocate(p, &backend, now) {
            Ok(r) => {
                count(Counter::SnatAllocated);
                r
            }
            Err(c) => return NewFlow::Refuse(c),
        }
    } else {
        match conntrack::create_gateway(p, &backend, now) {
            Ok(r) => r,
            Err(c) => return NewFlow::Drop(c),
        }
    };
    count(Counter::FlowCreated);
    *to = created;
    *slot = backend.traffic;
    NewFlow::Created
}

/// Not for a frontend: a full-NAT reply (to a SNAT address and port), or not ours.
#[inline(always)]
fn to_client<C: Ctx>(ctx: &C, p: &Packet) -> Result<i32, Verdict> {
    let (port_min, port_count) = snat_ports();
    let dport = u16::from_be_bytes(p.dport) as u32;
    if dport < port_min || dport - port_min >= port_count {
        return Err(Verdict::Pass(Counter::PassNotOurs));
    }
    let key = conntrack::key(p, DIR_REPLY);
    let e = Table::Nat.get(&key).ok_or(Verdict::Pass(Counter::PassNotOurs))?;
    if p.ttl <= 1 {
        return Err(Verdict::Pass(Counter::PassTtlExpired));
    }
    // SAFETY: a pointer into a map value, valid for this run.
    let (to, slot) = unsafe { ((*e).to, (*e).traffic) };
    conntrack::seen(Table::Nat, e, &key, p, conntrack::now());
    if p.frag == Frag::First {
        frag::remember(p);
    }
    forward(ctx, p, &to, Counter::SnatReplyRedirected, slot, Way::FromEndpoint)
}

/// Translates and redirects. The packet goes back to the kernel only where
/// the kernel must finish the job: local delivery, and fragmenting.
/// What it delivers is counted in the flow's `TRAFFIC` slot.
#[inline(always)]
fn forward<C: Ctx>(ctx: &C, p: &Packet, e: &Rewrite, done: Counter, slot: u32, way: Way) -> Result<i32, Verdict> {
    let route = match forward::route(ctx, p.proto, e, p.headers, p.ip_len) {
        Ok(r) if r.resolved() || ctx.tc().is_some() => r,
        Err(NoRoute::Drop(c)) => return Err(Verdict::Drop(c)),
        // What only TC can finish (the kernel resolving the neighbour, local
        // delivery, fragmenting, answering with ICMP) goes on to it untouched.
        _ if ctx.tc().is_none() => return Err(Verdict::Pass(Counter::XdpToTc)),
        Ok(r) => r,
        // An endpoint on this node: delivered by the kernel's stack (its
        // replies leave through egress, where they are translated back).
        Err(NoRoute::Local) => {
            let verdict = to_kernel(ctx, p, e, Counter::DeliveredLocally)?;
            traffic(slot, way, p.ip_len);
            return Ok(verdict);
        }
        // Without DF the sender wants it fragmented, as a router would: the
        // kernel does that when it forwards the translated packet.
        Err(NoRoute::FragNeeded { gso: false, .. }) if !p.df => {
            let verdict = fragment_by_kernel(ctx, p, e)?;
            traffic(slot, way, p.ip_len);
            return Ok(verdict);
        }
        // Never dropped silently: the sender learns the path MTU.
        Err(NoRoute::FragNeeded { mtu, gso }) => {
            // Only TC gets here (XDP passed it on above).
            let tc = ctx.tc().ok_or(Verdict::Pass(Counter::XdpToTc))?;
            let verdict = icmp::frag_needed(tc, p, mtu).map_err(|_| Verdict::Drop(Counter::DropFragNeeded))?;
            if gso {
                count(Counter::IcmpFragNeededGso);
            }
            return Ok(verdict);
        }
    };
    nat::translate(ctx, p, e).map_err(|_| Verdict::Drop(Counter::DropError))?;
    nat::decrement_ttl(ctx, p.ttl, p.proto).map_err(|_| Verdict::Drop(Counter::DropError))?;
    let verdict = forward::redirect(ctx, &route).map_err(Verdict::Drop)?;
    count(done);
    traffic(slot, way, p.ip_len);
    Ok(verdict)
}

/// Hands a datagram to the kernel to fragment as it forwards. A rewritten
/// source (full NAT: the node's own address, which the kernel refuses as
/// martian) is left for egress to write into each fragment (see `frag`).
#[inline(always)]
fn fragment_by_kernel<C: Ctx>(ctx: &C, p: &Packet, e: &Rewrite) -> Result<i32, Verdict> {
    if e.saddr == p.saddr && e.sport == p.sport {
        return to_kernel(ctx, p, e, Counter::FragmentedByKernel);
    }
    if !frag::leave_source(p, e) {
        return Err(Verdict::Drop(Counter::DropError));
    }
    nat::translate_destination(ctx, p, e).map_err(|_| Verdict::Drop(Counter::DropError))?;
    count(Counter::FragmentedByKernelSnat);
    Ok(C::PASS)
}

/// Translates and hands the packet on to the kernel's stack (which then
/// routes it, and decrements its TTL).
#[inline(always)]
fn to_kernel<C: Ctx>(ctx: &C, p: &Packet, e: &Rewrite, done: Counter) -> Result<i32, Verdict> {
    nat::translate(ctx, p, e).map_err(|_| Verdict::Drop(Counter::DropError))?;
    count(done);
    Ok(C::PASS)
}
