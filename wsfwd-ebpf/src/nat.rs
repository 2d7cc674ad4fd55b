//! Address and port rewrites with incremental checksum updates (RFC 1624)
//! through the kernel helpers, which also handle CHECKSUM_PARTIAL and
//! CHECKSUM_COMPLETE packets. A checksum is never zeroed or recomputed.
use aya_ebpf::bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR};
use wsfwd_common::abi::{PROTO_UDP, Rewrite};

use crate::{
    ctx::Ctx,
    parse::{Frag, IP_OFF, L4_OFF, Packet},
};

const IP_TTL_OFF: usize = IP_OFF + 8;
const IP_CSUM_OFF: usize = IP_OFF + 10;
const IP_SRC_OFF: usize = IP_OFF + 12;
const IP_DST_OFF: usize = IP_OFF + 16;
const L4_SPORT_OFF: usize = L4_OFF;
const L4_DPORT_OFF: usize = L4_OFF + 2;

pub struct Error;

impl From<()> for Error {
    fn from(_: ()) -> Self {
        Error
    }
}

#[inline(always)]
fn l4_csum_off(p: &Packet) -> usize {
    if p.proto == PROTO_UDP { L4_OFF + 6 } else { L4_OFF + 16 }
}

/// A UDP checksum of 0 means "none" and must stay 0.
#[inline(always)]
fn l4_flags(p: &Packet) -> u64 {
    if p.proto == PROTO_UDP { BPF_F_MARK_MANGLED_0 as u64 } else { 0 }
}

/// Replaces an address (at `addr_off`) and a port (at `port_off`).
#[inline(always)]
fn rewrite<C: Ctx>(
    ctx: &C,
    p: &Packet,
    addr_off: usize,
    (old_addr, new_addr): ([u8; 4], [u8; 4]),
    port_off: usize,
    (old_port, new_port): ([u8; 2], [u8; 2]),
) -> Result<(), Error> {
    let csum = l4_csum_off(p);
    let flags = l4_flags(p);
    let (from, to) = (u32::from_ne_bytes(old_addr) as u64, u32::from_ne_bytes(new_addr) as u64);
    // A later fragment has no L4 header: only its IP header changes (the
    // first fragment's L4 checksum covers the whole datagram).
    let l4 = p.frag != Frag::Later;
    // The address is in the L4 pseudo-header and the IP header; the port only in L4.
    if l4 {
        ctx.l4_csum_replace(csum, from, to, flags | BPF_F_PSEUDO_HDR as u64 | 4)?;
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, from, to, 4)?;
    ctx.store(addr_off, &new_addr)?;
    if l4 && old_port != new_port {
        let (from, to) = (u16::from_ne_bytes(old_port) as u64, u16::from_ne_bytes(new_port) as u64);
        ctx.l4_csum_replace(csum, from, to, flags | 2)?;
        ctx.store(port_off, &new_port)?;
    }
    Ok(())
}

/// Rewrites the packet into what its flow entry says it becomes: the
/// destination (DNAT), the source (SNAT, or un-DNAT of a reply), or both.
#[inline(always)]
pub fn translate<C: Ctx>(ctx: &C, p: &Packet, e: &Rewrite) -> Result<(), Error> {
    translate_destination(ctx, p, e)?;
    if e.saddr != p.saddr || e.sport != p.sport {
        rewrite(ctx, p, IP_SRC_OFF, (p.saddr, e.saddr), L4_SPORT_OFF, (p.sport, e.sport))?;
    }
    Ok(())
}

/// The destination half of `translate` alone.
#[inline(always)]
pub fn translate_destination<C: Ctx>(ctx: &C, p: &Packet, e: &Rewrite) -> Result<(), Error> {
    if e.daddr != p.daddr || e.dport != p.dport {
        rewrite(ctx, p, IP_DST_OFF, (p.daddr, e.daddr), L4_DPORT_OFF, (p.dport, e.dport))?;
    }
    Ok(())
}

/// A redirect skips the kernel's forwarding, so the TTL is ours to
/// decrement. The caller has checked it is above 1.
#[inline(always)]
pub fn decrement_ttl<C: Ctx>(ctx: &C, ttl: u8, proto: u8) -> Result<(), Error> {
    let old = u16::from_ne_bytes([ttl, proto]) as u64;
    let new = u16::from_ne_bytes([ttl - 1, proto]) as u64;
    ctx.l3_csum_replace(IP_CSUM_OFF, old, new, 2)?;
    ctx.store(IP_TTL_OFF, &[ttl - 1])?;
    Ok(())
}
