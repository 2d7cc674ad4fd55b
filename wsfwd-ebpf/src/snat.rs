//! Full NAT: giving a new flow a SNAT address and port towards its endpoint.
//! A mapping is the reply-direction key in `NAT`, claimed with BPF_NOEXIST,
//! so two flows can never share one; it is freed only by the agent, after
//! the flow ended and a quarantine longer than TIME_WAIT.
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32};
use wsfwd_common::abi::{Backend, Counter, DIR_ORIGINAL, FlowKey, PROTO_TCP, Rewrite};

use crate::{
    conntrack::{key, opening},
    halfopen,
    maps::{NAT, SNAT_IPS, snat_ports},
    parse::Packet,
};

/// Candidate (address, port) pairs tried before giving up. Every pair is
/// tried when there are fewer; with more, a random start makes a miss on a
/// busy range unlikely.
const MAX_TRIES: u32 = 64;

#[inline(always)]
pub fn allocate(p: &Packet, backend: &Backend, now: u64) -> Result<Rewrite, Counter> {
    let half_open = if p.proto == PROTO_TCP { Some(halfopen::claim(p.saddr)?) } else { None };
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
        let (to_endpoint, to_client) = opening(p, out, back, backend.traffic, now).ok_or(Counter::DropError)?;
        if NAT.insert(&reply, to_client, BPF_NOEXIST as u64).is_ok() {
            if NAT.insert(&original, to_endpoint, 0).is_err() {
                // The map is full: give the claimed port back.
                let _ = NAT.remove(&reply);
                return Err(Counter::DropSnatExhausted);
            }
            if let Some(counted) = half_open {
                halfopen::opened(p.saddr, counted);
            }
            return Ok(out);
        }
    }
    Err(Counter::DropSnatExhausted)
}
