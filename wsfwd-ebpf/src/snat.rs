//! Full NAT: giving a new flow a SNAT address and port towards its endpoint.
//! A mapping is the reply-direction key in `NAT`, claimed with BPF_NOEXIST,
//! so two flows can never share one; it is freed only by the agent, after
//! the flow ended and a quarantine longer than TIME_WAIT.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32};
use wsfwd_common::abi::{Backend, Counter, DIR_ORIGINAL, FlowKey, PROTO_TCP, Rewrite};

use crate::{
    conntrack::{key, opening},
    maps::{HALF_OPEN, NAT, SNAT_IPS, half_open_max, snat_ports},
    parse::Packet,
};

/// Candidate (address, port) pairs tried before giving up. Every pair is
/// tried when there are fewer; with more, a random start makes a miss on a
/// busy range unlikely.
const MAX_TRIES: u32 = 64;

#[inline(always)]
pub fn allocate(p: &Packet, backend: &Backend, now: u64) -> Result<Rewrite, Counter> {
    let half_open = if p.proto == PROTO_TCP { Some(claim_half_open(p.saddr)?) } else { None };
    let (port_min, port_count) = snat_ports();
    let ips = backend.snat_count as u32;
    if ips == 0 || port_count == 0 {
        return Err(Counter::DropSnatExhausted);
    }
    let total = port_count.saturating_mul(ips);
    // SAFETY: no preconditions.
    let start = unsafe { bpf_get_prandom_u32() } % port_count;
    let original = key(p, DIR_ORIGINAL);
    // What the endpoint's replies become: from the frontend, to the client.
    let back = Rewrite { saddr: p.daddr, sport: p.dport, daddr: p.saddr, dport: p.sport };
    for i in 0..MAX_TRIES {
        if i >= total {
            break;
        }
        let Some(ip) = SNAT_IPS.get(backend.snat_first as u32 + i % ips) else { break };
        let port = (port_min + (start + i / ips) % port_count) as u16;
        let reply = FlowKey {
            saddr: backend.addr,
            daddr: *ip,
            sport: backend.port,
            dport: port.to_be_bytes(),
            proto: p.proto,
            dir: wsfwd_common::abi::DIR_REPLY,
            _pad: [0; 2],
        };
        let out = Rewrite { saddr: *ip, sport: reply.dport, daddr: backend.addr, dport: backend.port };
        let (to_endpoint, to_client) = opening(p, out, back, now).ok_or(Counter::DropError)?;
        if NAT.insert(&reply, to_client, BPF_NOEXIST as u64).is_ok() {
            if NAT.insert(&original, to_endpoint, 0).is_err() {
                // The map is full: give the claimed port back.
                let _ = NAT.remove(&reply);
                return Err(Counter::DropSnatExhausted);
            }
            if let Some(counted) = half_open {
                count_half_open(p.saddr, counted);
            }
            return Ok(out);
        }
    }
    Err(Counter::DropSnatExhausted)
}

/// Checks that `client` may open one more TCP flow before its handshakes
/// complete; the count, when it has one.
#[inline(always)]
fn claim_half_open(client: [u8; 4]) -> Result<Option<*mut u64>, Counter> {
    match HALF_OPEN.get_ptr_mut(&client) {
        // SAFETY: a pointer into a map value, valid for this run.
        Some(n) if unsafe { *n } >= half_open_max() as u64 => Err(Counter::DropHalfOpenBudget),
        n => Ok(n),
    }
}

/// One more half-open flow for `client`. Added atomically: SYNs of one
/// address may arrive on several CPUs at once.
#[inline(always)]
fn count_half_open(client: [u8; 4], counted: Option<*mut u64>) {
    match counted {
        // SAFETY: a pointer into a map value, valid for this run, aligned.
        // (The target has no atomic types; this is the BPF atomic add.)
        Some(n) => unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, 1) },
        None => {
            // The first one; if another CPU just inserted it, this one goes uncounted
            // until the collector's recount.
            let _ = HALF_OPEN.insert(&client, &1u64, BPF_NOEXIST as u64);
            0
        }
    };
}
