//! ICMP errors (destination unreachable, fragmentation needed, time
//! exceeded) about translated flows, translated in whichever direction they
//! travel: towards an endpoint (a router on the client's side reports on a
//! reply we sent from the frontend address) or towards a client (the
//! endpoint's side reports on a packet we sent to the endpoint).
//!
//! The quoted packet is what we sent; the flow entry says how we made it, so
//! the error is rewritten to quote what its receiver sent. Checksums are
//! updated incrementally (RFC 1624) for every word that changes: the outer
//! IP header, the quoted IP header, the quoted L4 checksum where the quote
//! holds it, and the ICMP checksum over all of it.
use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use wsfwd_common::{
    abi::{Counter, DIR_ORIGINAL, DIR_REPLY, FlowKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Rewrite},
    csum::{fold, sum, update as csum_update},
};

use crate::{
    conntrack::Table,
    counters::count,
    forward::{self, NoRoute},
    nat,
    parse::{IP_OFF, L4_OFF, Packet, read},
};

const ICMP_OFF: usize = L4_OFF;
const ICMP_CSUM_OFF: usize = ICMP_OFF + 2;
const INNER_IP: usize = ICMP_OFF + 8;
const INNER_L4: usize = INNER_IP + 20;

const DEST_UNREACH: u8 = 3;
const TIME_EXCEEDED: u8 = 11;

/// An ICMP error and the packet it quotes.
struct Error {
    outer: [u8; 20],
    icmp_csum: u16,
    inner: [u8; 20],
    /// The quoted ports.
    ports: [u8; 4],
    /// Offset and value of the quoted L4 checksum, when the quote holds one.
    l4_csum: Option<(usize, u16)>,
}

impl Error {
    fn src(&self) -> [u8; 4] {
        [self.outer[12], self.outer[13], self.outer[14], self.outer[15]]
    }
    fn inner_src(&self) -> [u8; 4] {
        [self.inner[12], self.inner[13], self.inner[14], self.inner[15]]
    }
    fn inner_dst(&self) -> [u8; 4] {
        [self.inner[16], self.inner[17], self.inner[18], self.inner[19]]
    }
    /// The flow key of the quoted packet's answer: its reverse, in direction `dir`.
    fn key(&self, dir: u8) -> FlowKey {
        FlowKey {
            saddr: self.inner_dst(),
            daddr: self.inner_src(),
            sport: [self.ports[2], self.ports[3]],
            dport: [self.ports[0], self.ports[1]],
            proto: self.inner[9],
            dir,
            _pad: [0; 2],
        }
    }
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Error> {
    let outer: [u8; 20] = read(ctx, IP_OFF)?;
    let icmp: [u8; 4] = read(ctx, ICMP_OFF)?;
    if icmp[0] != DEST_UNREACH && icmp[0] != TIME_EXCEEDED {
        return None;
    }
    let inner: [u8; 20] = read(ctx, INNER_IP)?;
    let proto = inner[9];
    // The quote must start with an option-less IPv4 header of the first fragment.
    if inner[0] != 0x45 || (proto != PROTO_TCP && proto != PROTO_UDP) || (inner[6] & 0x1f) != 0 || inner[7] != 0 {
        return None;
    }
    let ports: [u8; 4] = read(ctx, INNER_L4)?;
    let quoted_l4 = (u16::from_be_bytes([outer[2], outer[3]]) as usize).saturating_sub(20 + 8 + 20);
    let csum_at = if proto == PROTO_TCP { 16 } else { 6 };
    let l4_csum = if quoted_l4 >= csum_at + 2 {
        let c: [u8; 2] = read(ctx, INNER_L4 + csum_at)?;
        let c = u16::from_be_bytes(c);
        // A zero UDP checksum means "none" and stays so.
        (proto == PROTO_TCP || c != 0).then_some((INNER_L4 + csum_at, c))
    } else {
        None
    };
    Some(Error { outer, icmp_csum: u16::from_be_bytes([icmp[2], icmp[3]]), inner, ports, l4_csum })
}

#[inline(always)]
fn words(a: [u8; 4], b: [u8; 4]) -> [u16; 4] {
    [u16::from_be_bytes([a[0], a[1]]), u16::from_be_bytes([a[2], a[3]]), u16::from_be_bytes([b[0], b[1]]), u16::from_be_bytes([b[2], b[3]])]
}

/// Rewrites the error so that it quotes `(src, sport) -> (dst, dport)` and
/// goes to `to` (from `from`).
#[inline(always)]
fn rewrite(ctx: &TcContext, err: &Error, from: [u8; 4], to: [u8; 4], src: ([u8; 4], [u8; 2]), dst: ([u8; 4], [u8; 2])) -> Result<(), ()> {
    let (old_src, old_dst) = (err.inner_src(), err.inner_dst());
    let old_ports = [u16::from_be_bytes([err.ports[0], err.ports[1]]), u16::from_be_bytes([err.ports[2], err.ports[3]])];
    let new_ports = [u16::from_be_bytes(src.1), u16::from_be_bytes(dst.1)];
    let (old_addrs, new_addrs) = (words(old_src, old_dst), words(src.0, dst.0));

    // The quoted IP header.
    let old_ip_csum = u16::from_be_bytes([err.inner[10], err.inner[11]]);
    let new_ip_csum = csum_update(old_ip_csum, old_addrs, new_addrs);
    // The quoted L4 checksum covers the addresses (pseudo-header) and ports.
    let l4 = err.l4_csum.map(|(off, old)| {
        let a = [old_addrs[0], old_addrs[1], old_addrs[2], old_addrs[3], old_ports[0], old_ports[1]];
        let b = [new_addrs[0], new_addrs[1], new_addrs[2], new_addrs[3], new_ports[0], new_ports[1]];
        let mut new = csum_update(old, a, b);
        if new == 0 && err.inner[9] == PROTO_UDP {
            new = 0xffff;
        }
        (off, old, new)
    });
    // The ICMP checksum covers every quoted word that changed.
    let (l4_old, l4_new) = l4.map_or((0, 0), |(_, o, n)| (o, n));
    let mut icmp_csum = csum_update(
        err.icmp_csum,
        [old_addrs[0], old_addrs[1], old_addrs[2], old_addrs[3], old_ip_csum, old_ports[0], old_ports[1], l4_old],
        [new_addrs[0], new_addrs[1], new_addrs[2], new_addrs[3], new_ip_csum, new_ports[0], new_ports[1], l4_new],
    );
    if icmp_csum == 0xffff {
        icmp_csum = 0;
    }
    // The outer header.
    let old_outer = words(err.src(), [err.outer[16], err.outer[17], err.outer[18], err.outer[19]]);
    let outer_csum = csum_update(u16::from_be_bytes([err.outer[10], err.outer[11]]), old_outer, words(from, to));

    ctx.store(IP_OFF + 10, &outer_csum.to_be_bytes(), 0).map_err(|_| ())?;
    ctx.store(IP_OFF + 12, &from, 0).map_err(|_| ())?;
    ctx.store(IP_OFF + 16, &to, 0).map_err(|_| ())?;
    ctx.store(ICMP_CSUM_OFF, &icmp_csum.to_be_bytes(), 0).map_err(|_| ())?;
    ctx.store(INNER_IP + 10, &new_ip_csum.to_be_bytes(), 0).map_err(|_| ())?;
    ctx.store(INNER_IP + 12, &src.0, 0).map_err(|_| ())?;
    ctx.store(INNER_IP + 16, &dst.0, 0).map_err(|_| ())?;
    ctx.store(INNER_L4, &[src.1[0], src.1[1], dst.1[0], dst.1[1]], 0).map_err(|_| ())?;
    if let Some((off, _, new)) = l4 {
        ctx.store(off, &new.to_be_bytes(), 0).map_err(|_| ())?;
    }
    Ok(())
}

/// The flow the error is about, found from the quoted packet: an answer to
/// the quote travels in direction `dir` of some flow in one of `tables`.
#[inline(always)]
fn flow(err: &Error, dir: u8, tables: &[Table]) -> Option<Rewrite> {
    let key = err.key(dir);
    for t in tables {
        if let Some(e) = t.get(&key) {
            // SAFETY: a pointer into a map value, valid for this run.
            return Some(unsafe { (*e).to });
        }
    }
    None
}

/// Translates `err` about the flow whose entry `e` produced the quoted
/// packet's answer: the quote becomes what its sender really sent.
#[inline(always)]
fn translate(ctx: &TcContext, err: &Error, e: &Rewrite) -> Result<([u8; 4], [u8; 4]), ()> {
    // The quoted packet, as its sender sent it: the reverse of `e`'s output.
    let src = (e.daddr, e.dport);
    let dst = (e.saddr, e.sport);
    // The error goes back to that sender; if the quoted packet's destination
    // itself reported it, it now speaks as the address the sender knows.
    let to = e.daddr;
    let from = if err.src() == err.inner_dst() { e.saddr } else { err.src() };
    rewrite(ctx, err, from, to, src, dst)?;
    Ok((from, to))
}

/// At external ingress: errors from the client's side about our replies
/// (towards the endpoint), and errors to a SNAT address about packets we sent
/// to a full-NAT endpoint (towards the client). Both are redirected.
#[inline(always)]
pub fn at_ingress(ctx: &TcContext) -> Result<i32, Counter> {
    let Some(err) = parse(ctx) else {
        count(Counter::PassIcmpNotOurs);
        return Ok(TC_ACT_OK as i32);
    };
    let e = match flow(&err, DIR_ORIGINAL, &[Table::Conntrack, Table::Nat, Table::Handshakes]) {
        Some(e) => e,
        None => match flow(&err, DIR_REPLY, &[Table::Nat]) {
            Some(e) => e,
            None => {
                count(Counter::PassIcmpNotOurs);
                return Ok(TC_ACT_OK as i32);
            }
        },
    };
    let ttl = err.outer[8];
    if ttl <= 1 {
        count(Counter::PassTtlExpired);
        return Ok(TC_ACT_OK as i32);
    }
    let (from, to) = translate(ctx, &err, &e).map_err(|_| Counter::DropError)?;
    let route = match forward::route(ctx, PROTO_ICMP, &Rewrite { saddr: from, daddr: to, sport: [0; 2], dport: [0; 2] }, 0, 0) {
        Ok(r) => r,
        Err(NoRoute::Drop(c)) => return Err(c),
        Err(NoRoute::FragNeeded { .. }) => return Err(Counter::DropFragNeeded),
        // About a flow of an endpoint on this node: its own stack takes it.
        Err(NoRoute::Local) => {
            count(Counter::IcmpTranslated);
            return Ok(TC_ACT_OK as i32);
        }
    };
    nat::decrement_ttl(ctx, ttl, PROTO_ICMP).map_err(|_| Counter::DropError)?;
    let verdict = forward::redirect(ctx, &route)?;
    count(Counter::IcmpTranslated);
    Ok(verdict)
}

/// At external egress: errors from the endpoint's side about packets we
/// sent to an endpoint behind the node, routed out by the kernel.
#[inline(always)]
pub fn at_egress(ctx: &TcContext) -> i32 {
    let Some(err) = parse(ctx) else {
        count(Counter::PassIcmpNotOurs);
        return TC_ACT_OK as i32;
    };
    let Some(e) = flow(&err, DIR_REPLY, &[Table::Conntrack, Table::Handshakes]) else {
        count(Counter::PassIcmpNotOurs);
        return TC_ACT_OK as i32;
    };
    if translate(ctx, &err, &e).is_err() {
        count(Counter::DropError);
        return aya_ebpf::bindings::TC_ACT_SHOT as i32;
    }
    count(Counter::IcmpTranslated);
    TC_ACT_OK as i32
}

/// The TTL of packets wsfwd originates.
const TTL: u8 = 64;
const FRAG_NEEDED: u8 = 4;

/// Answers `p`, too large for the link its route leaves through, with ICMP
/// "fragmentation needed" (`mtu`) from the address it was sent to, back out
/// of the interface it came in on. The packet is turned into the answer in
/// place: cut after its L4 header, then an IP and an ICMP header inserted
/// in front.
#[inline(always)]
pub fn frag_needed(ctx: &TcContext, p: &Packet, mtu: u16) -> Result<i32, ()> {
    let eth: [u8; 12] = read(ctx, 0).ok_or(())?;
    let ip: [u8; 20] = read(ctx, IP_OFF).ok_or(())?;
    // Keep whole L4 headers: a checksum left to offload must stay inside.
    let l4_len: u32 = if p.proto == PROTO_TCP { 20 } else { 8 };
    let quote_end = (L4_OFF as u32) + l4_len;
    // SAFETY: helper calls on the live skb; they validate their arguments.
    if unsafe { aya_ebpf::helpers::generated::bpf_skb_change_tail(ctx.skb.skb as *mut _, quote_end, 0) } != 0 {
        return Err(());
    }
    ctx.adjust_room(28, aya_ebpf::bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, 0).map_err(|_| ())?;
    let l4_at = INNER_L4;
    let csum_at = if p.proto == PROTO_TCP { 16 } else { 6 };

    // The quoted L4 checksum: if the packet's checksum was left to offload,
    // the device fills that field in over the quoted header. A value it maps
    // to itself (2V + S = 0 in ones' complement, S the rest of the header)
    // keeps our ICMP checksum right either way. The quote's own checksum is
    // not used by anyone receiving the error.
    let l4_sum = if p.proto == PROTO_TCP {
        let mut l4: [u8; 20] = read(ctx, l4_at).ok_or(())?;
        l4[csum_at] = 0;
        l4[csum_at + 1] = 0;
        fold(sum(0, &l4))
    } else {
        let mut l4: [u8; 8] = read(ctx, l4_at).ok_or(())?;
        l4[csum_at] = 0;
        l4[csum_at + 1] = 0;
        fold(sum(0, &l4))
    };
    let neg = (!l4_sum) as u32 % 0xffff;
    let fixed = ((neg * 0x8000) % 0xffff) as u16;

    let total = (20 + 8 + 20 + l4_len) as u16;
    let [tl0, tl1] = total.to_be_bytes();
    let mut outer = [0x45, 0, tl0, tl1, 0, 0, 0x40, 0, TTL, PROTO_ICMP, 0, 0, ip[16], ip[17], ip[18], ip[19], ip[12], ip[13], ip[14], ip[15]];
    let ocsum = !fold(sum(0, &outer));
    outer[10] = (ocsum >> 8) as u8;
    outer[11] = ocsum as u8;
    let [m0, m1] = mtu.to_be_bytes();
    let mut icmp = [DEST_UNREACH, FRAG_NEEDED, 0, 0, 0, 0, m0, m1];
    // ICMP checksum: its header, the quoted IP header, the quoted L4 header.
    let icsum = !fold(sum(sum(sum(l4_sum as u32, &icmp), &ip), &fixed.to_be_bytes()));
    icmp[2] = (icsum >> 8) as u8;
    icmp[3] = icsum as u8;

    ctx.store(IP_OFF, &outer, 0).map_err(|_| ())?;
    ctx.store(ICMP_OFF, &icmp, 0).map_err(|_| ())?;
    ctx.store(l4_at + csum_at, &fixed.to_be_bytes(), 0).map_err(|_| ())?;
    let swapped = [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11], eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]];
    ctx.store(0, &swapped, 0).map_err(|_| ())?;
    // SAFETY: ctx.skb points at the live __sk_buff; plain helper call.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let rc = unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) };
    if rc != aya_ebpf::bindings::TC_ACT_REDIRECT as i64 {
        return Err(());
    }
    count(Counter::IcmpFragNeededSent);
    Ok(aya_ebpf::bindings::TC_ACT_REDIRECT as i32)
}
