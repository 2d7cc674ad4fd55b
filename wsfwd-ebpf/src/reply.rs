//! Packets wsfwd answers itself. A refused TCP SYN is turned, in place, into
//! the RST that answers it and sent back out of the interface it came in on.
//! Every field change goes through the checksum helpers, so the result is
//! right whether the SYN's checksum was complete or left to offload.
use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::bpf_redirect,
    programs::TcContext,
};
use wsfwd_common::abi::{Counter, PROTO_TCP};

use crate::{
    counters::count,
    parse::{self, IP_OFF, L4_OFF, TCP_ACK, TCP_RST},
};

const TCP_CSUM_OFF: usize = L4_OFF + 16;
const NOPS: u32 = 0x0101_0101;
const TTL: u8 = 64;

/// A new flow that cannot be served: a TCP SYN gets a RST, anything else is dropped.
#[inline(always)]
pub fn refuse(ctx: &TcContext) -> i32 {
    match tcp_reset(ctx) {
        Ok(verdict) => {
            count(Counter::RstSent);
            verdict
        }
        Err(()) => TC_ACT_SHOT as i32,
    }
}

#[inline(always)]
fn word(b: &[u8], at: usize) -> u64 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as u64
}

#[inline(always)]
fn replace32(ctx: &TcContext, off: usize, old: u64, new: [u8; 4]) -> Result<(), ()> {
    ctx.l4_csum_replace(TCP_CSUM_OFF, old, u32::from_ne_bytes(new) as u64, 4).map_err(|_| ())?;
    ctx.store(off, &new, 0).map_err(|_| ())
}

#[inline(always)]
fn tcp_reset(ctx: &TcContext) -> Result<i32, ()> {
    let p = parse::parse(ctx).map_err(|_| ())?;
    if p.proto != PROTO_TCP || !p.is_syn() {
        return Err(());
    }
    let ip: [u8; 20] = ctx.load(IP_OFF).map_err(|_| ())?;
    let tcp: [u8; 20] = ctx.load(L4_OFF).map_err(|_| ())?;
    let doff = (tcp[12] >> 4) as usize * 4;
    // Only a bare SYN (options, no data) is answered.
    if doff < 20 || u16::from_be_bytes([ip[2], ip[3]]) as usize != 20 + doff {
        return Err(());
    }

    // Ports swapped: the checksum sum is unchanged.
    ctx.store(L4_OFF, &[tcp[2], tcp[3], tcp[0], tcp[1]], 0).map_err(|_| ())?;
    // seq 0, ack = SYN's seq + 1 (RFC 9293 3.10.7.1).
    let ack = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]).wrapping_add(1);
    replace32(ctx, L4_OFF + 4, word(&tcp, 4), [0; 4])?;
    replace32(ctx, L4_OFF + 8, word(&tcp, 8), ack.to_be_bytes())?;
    // Flags RST|ACK, window 0; then checksum kept, urgent pointer 0.
    replace32(ctx, L4_OFF + 12, word(&tcp, 12), [tcp[12], TCP_RST | TCP_ACK, 0, 0])?;
    let urg = u16::from_ne_bytes([tcp[18], tcp[19]]) as u64;
    ctx.l4_csum_replace(TCP_CSUM_OFF, urg, 0, 2).map_err(|_| ())?;
    ctx.store(L4_OFF + 18, &[0u8; 2], 0).map_err(|_| ())?;
    // The SYN's options become NOPs: same length, nothing to act on.
    for i in 0..10usize {
        let off = 20 + 4 * i;
        if off >= doff {
            break;
        }
        let old: [u8; 4] = ctx.load(L4_OFF + off).map_err(|_| ())?;
        replace32(ctx, L4_OFF + off, u32::from_ne_bytes(old) as u64, NOPS.to_ne_bytes())?;
    }

    // IP: addresses swapped (sums unchanged), a fresh TTL.
    let addrs = [ip[16], ip[17], ip[18], ip[19], ip[12], ip[13], ip[14], ip[15]];
    ctx.store(IP_OFF + 12, &addrs, 0).map_err(|_| ())?;
    let old = u16::from_ne_bytes([ip[8], ip[9]]) as u64;
    let new = u16::from_ne_bytes([TTL, ip[9]]) as u64;
    ctx.l3_csum_replace(IP_OFF + 10, old, new, 2).map_err(|_| ())?;
    ctx.store(IP_OFF + 8, &TTL, 0).map_err(|_| ())?;

    // Ethernet: back to where it came from.
    let eth: [u8; 12] = ctx.load(0).map_err(|_| ())?;
    let swapped = [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11], eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]];
    ctx.store(0, &swapped, 0).map_err(|_| ())?;
    // SAFETY: ctx.skb points at the live __sk_buff; plain helper call.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let rc = unsafe { bpf_redirect(ifindex, 0) };
    if rc == TC_ACT_REDIRECT as i64 { Ok(TC_ACT_REDIRECT as i32) } else { Err(()) }
}
