//! External ingress: frontend packets are translated to their endpoint and
//! redirected; everything else passes untouched.
use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};
use wsfwd_common::abi::{Counter, DIR_ORIGINAL, ServiceKey};

use crate::{conntrack, counters::count, forward, maps::SERVICES, nat, parse};

#[inline(always)]
pub fn handle(ctx: &aya_ebpf::programs::TcContext) -> i32 {
    match run(ctx) {
        Ok(verdict) => verdict,
        Err(Verdict::Pass(c)) => {
            count(c);
            TC_ACT_OK as i32
        }
        Err(Verdict::Drop(c)) => {
            count(c);
            TC_ACT_SHOT as i32
        }
    }
}

enum Verdict {
    /// Not touched: the kernel may have it.
    Pass(Counter),
    /// Owned by wsfwd but cannot be delivered.
    Drop(Counter),
}

#[inline(always)]
fn run(ctx: &aya_ebpf::programs::TcContext) -> Result<i32, Verdict> {
    let p = parse::parse(ctx).map_err(Verdict::Pass)?;
    let frontend = ServiceKey { addr: p.daddr, port: p.dport, proto: p.proto, _pad: 0 };
    // SAFETY: the value is copied out before any other map call.
    let svc = unsafe { SERVICES.get(&frontend) }.copied().ok_or(Verdict::Pass(Counter::PassNotOurs))?;
    if p.ttl <= 1 {
        return Err(Verdict::Pass(Counter::PassTtlExpired));
    }

    let now = conntrack::now();
    let key = conntrack::key(&p, DIR_ORIGINAL);
    let (addr, port) = match conntrack::lookup(&key) {
        // A new SYN on a closed flow's tuple is a new connection: choose again.
        // SAFETY: a pointer into a map value, valid for this run.
        Some(e) if !(p.is_syn() && unsafe { (*e).is_closing() }) => {
            conntrack::seen(e, &key, &p, now);
            unsafe { ((*e).nat_addr, (*e).nat_port) }
        }
        // New, or evicted from the LRU map: Maglev gives the same endpoint
        // again as long as the service's endpoints have not changed.
        _ => {
            let backend = crate::select::pick(&svc, &p).ok_or(Verdict::Drop(Counter::DropNoEndpoint))?;
            conntrack::create(&p, &backend, now);
            count(Counter::FlowCreated);
            (backend.addr, backend.port)
        }
    };

    let route = forward::route(ctx, &p, addr, port).map_err(Verdict::Drop)?;
    nat::rewrite_dst(ctx, &p, addr, port).map_err(|_| Verdict::Drop(Counter::DropError))?;
    nat::decrement_ttl(ctx, &p).map_err(|_| Verdict::Drop(Counter::DropError))?;
    let verdict = forward::redirect(ctx, &route).map_err(Verdict::Drop)?;
    count(Counter::Redirected);
    Ok(verdict)
}
