//! Header parsing: the few fields the datapath needs, copied out of the
//! packet, so later helper calls (which invalidate packet pointers) are safe.
use core::mem::size_of;

use aya_ebpf::{macros::map, maps::PerCpuArray};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};
use wsfwd_common::{
    abi::{Counter, PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    tcp::{self, NO_SCALE, Segment},
};

use crate::ctx::Ctx;

pub const ETH_LEN: usize = size_of::<EthHdr>();
pub const IP_OFF: usize = ETH_LEN;
pub const IP_LEN: usize = size_of::<Ipv4Hdr>();
/// IPv4 without options: transport header offset.
pub const L4_OFF: usize = IP_OFF + IP_LEN;

pub use wsfwd_common::tcp::{ACK as TCP_ACK, RST as TCP_RST};

/// Bytes of the transport header we read: for TCP the whole fixed header
/// (ports, sequence numbers, flags, window).
const TCP_READ: usize = 20;
/// The most TCP option bytes a header can hold.
const TCP_OPTIONS_MAX: usize = 40;
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_WINDOW: u8 = 3;
const UDP_READ: usize = 8;

#[derive(Clone, Copy)]
pub struct Packet {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub ttl: u8,
    /// TCP: what the window tracker reads (flags included); zero for UDP.
    pub tcp: Segment,
    /// IP + L4 header length.
    pub headers: u32,
    /// The IP total length.
    pub ip_len: u32,
    /// Don't Fragment set: the sender wants "fragmentation needed", not fragments.
    pub df: bool,
    /// Which piece of a fragmented datagram this is, if any.
    pub frag: Frag,
    /// The IP identification (network order): what ties fragments together.
    pub ip_id: [u8; 2],
    /// Set when the kernel would drop this packet (`ip_rcv` and the
    /// transport's own checks): it must never be translated or forwarded.
    pub invalid: Option<Counter>,
}

/// The packet being handled, parsed: scratch space off the small eBPF stack.
#[map]
static PACKET: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);

/// A packet's place in a fragmented datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not fragmented.
    Whole,
    /// The first fragment: it carries the L4 header (ports, checksum).
    First,
    /// A later fragment: IP header and payload only; its ports come from
    /// the first fragment, remembered in `FRAGMENTS`.
    Later,
}

impl Packet {
    /// A connection-opening SYN (not a SYN-ACK).
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.tcp.is_syn()
    }

}

#[inline(always)]
fn bytes_at<C: Ctx, const N: usize>(ctx: &C, off: usize) -> Option<[u8; N]> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + off + N > end {
        return None;
    }
    // SAFETY: bounds checked against data_end just above.
    Some(unsafe { *((start + off) as *const [u8; N]) })
}

/// Reads `N` bytes at `off`, pulling paged data into the linear part once if needed.
#[inline(always)]
pub fn read<C: Ctx, const N: usize>(ctx: &C, off: usize) -> Option<[u8; N]> {
    if let Some(b) = bytes_at(ctx, off) {
        return Some(b);
    }
    ctx.pull((off + N) as u32).ok()?;
    bytes_at(ctx, off)
}

/// Parses an Ethernet/IPv4/TCP-or-UDP packet. Anything else, and anything
/// wsfwd cannot translate safely (IP options, fragments), is reported with
/// the counter that says why, and must be passed untouched. A packet whose
/// addresses and ports can be read but that the kernel would drop comes back
/// with `invalid` set.
///
/// The result lives in a per-CPU scratch slot, not on the 512-byte eBPF
/// stack: every path borrows it instead of copying it.
#[inline(always)]
pub fn parse<C: Ctx>(ctx: &C) -> Result<&'static mut Packet, Counter> {
    let eth: [u8; ETH_LEN] = bytes_at(ctx, 0).ok_or(Counter::PassUnparsed)?;
    if u16::from_ne_bytes([eth[12], eth[13]]) != EtherType::Ipv4 as u16 {
        return Err(Counter::PassNotIpv4L4);
    }
    let ip: [u8; IP_LEN] = read(ctx, IP_OFF).ok_or(Counter::PassUnparsed)?;
    let proto = ip[9];
    if proto != PROTO_TCP && proto != PROTO_UDP && proto != PROTO_ICMP {
        return Err(Counter::PassNotIpv4L4);
    }
    // Version 4, IHL 5: no options (options pass untouched; so does junk,
    // which the kernel drops).
    if ip[0] != 0x45 {
        return Err(Counter::PassUnparsed);
    }
    // More-fragments flag or a fragment offset: ports are in the first piece only.
    let offset = (u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff) != 0;
    let frag = if offset { Frag::Later } else if ip[6] & 0x20 != 0 { Frag::First } else { Frag::Whole };
    // ICMP has its own path (icmp.rs); this error says "look there".
    if proto == PROTO_ICMP {
        return Err(Counter::PassIcmpNotOurs);
    }
    let mut ip_len = u16::from_be_bytes([ip[2], ip[3]]) as u32;
    if ip_len == 0 && ctx.gso_size() != 0 {
        // A GSO packet beyond 64 KiB (BIG TCP) says 0; its length is the skb's.
        ip_len = ctx.len().saturating_sub(ETH_LEN as u32);
    }
    let mut tcp = Segment::default();
    let (ports, l4_len) = if frag == Frag::Later {
        // No L4 header here: the caller fills the ports in from the first fragment.
        ([0; 4], 0)
    } else if proto == PROTO_TCP {
        let l4: [u8; TCP_READ] = read(ctx, L4_OFF).ok_or(Counter::PassUnparsed)?;
        let doff = (l4[12] >> 4) as u32 * 4;
        let word = |at: usize| u32::from_be_bytes([l4[at], l4[at + 1], l4[at + 2], l4[at + 3]]);
        tcp = Segment {
            seq: word(4),
            ack: word(8),
            flags: l4[13],
            window: u16::from_be_bytes([l4[14], l4[15]]),
            len: ip_len.saturating_sub(IP_LEN as u32 + doff),
            wscale: if l4[13] & tcp::SYN != 0 { window_scale(ctx, doff) } else { NO_SCALE },
        };
        ([l4[0], l4[1], l4[2], l4[3]], doff)
    } else {
        let l4: [u8; UDP_READ] = read(ctx, L4_OFF).ok_or(Counter::PassUnparsed)?;
        ([l4[0], l4[1], l4[2], l4[3]], u16::from_be_bytes([l4[4], l4[5]]) as u32)
    };
    let slot = PACKET.get_ptr_mut(0).ok_or(Counter::PassUnparsed)?;
    // SAFETY: this CPU's slot; a program run is not preempted by another on
    // the same CPU, and every field is written before it is read.
    let p = unsafe { &mut *slot };
    p.saddr = [ip[12], ip[13], ip[14], ip[15]];
    p.daddr = [ip[16], ip[17], ip[18], ip[19]];
    p.sport = [ports[0], ports[1]];
    p.dport = [ports[2], ports[3]];
    p.proto = proto;
    p.ttl = ip[8];
    p.ip_len = ip_len;
    p.df = ip[6] & 0x40 != 0;
    p.frag = frag;
    p.ip_id = [ip[4], ip[5]];
    p.tcp = tcp;
    p.headers = IP_LEN as u32 + if proto == PROTO_TCP { l4_len } else { UDP_READ as u32 };
    p.invalid = check(ctx, &ip, ip_len, proto, l4_len, frag);
    Ok(p)
}

/// What `ip_rcv` and TCP/UDP would reject. `l4_len` is TCP's header length
/// or UDP's length field.
#[inline(always)]
fn check<C: Ctx>(ctx: &C, ip: &[u8; IP_LEN], ip_len: u32, proto: u8, l4_len: u32, frag: Frag) -> Option<Counter> {
    // The IP length must cover the header and fit in the frame (a shorter
    // one leaves Ethernet padding, which the kernel trims). GSO packets carry
    // their whole length.
    if ip_len < IP_LEN as u32 || ip_len > ctx.len().saturating_sub(ETH_LEN as u32) {
        return Some(Counter::DropBadIpHeader);
    }
    if ip_checksum(ip) != 0xffff {
        return Some(Counter::DropBadIpChecksum);
    }
    let room = ip_len - IP_LEN as u32;
    let l4_ok = match (frag, proto) {
        (Frag::Later, _) => true,
        (_, PROTO_TCP) => l4_len >= TCP_MIN as u32 && l4_len <= room,
        // A first fragment holds the UDP header; its length field covers the whole datagram.
        (Frag::First, _) => room >= UDP_READ as u32 && l4_len >= UDP_READ as u32,
        _ => l4_len >= UDP_READ as u32 && l4_len <= room,
    };
    if !l4_ok {
        return Some(Counter::DropTruncatedL4);
    }
    None
}

const TCP_MIN: usize = 20;

/// Ones' complement sum of the header's ten words, folded; 0xffff when the
/// header checksum is right.
#[inline(always)]
fn ip_checksum(ip: &[u8; IP_LEN]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < IP_LEN {
        sum += u16::from_be_bytes([ip[i], ip[i + 1]]) as u32;
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum & 0xffff) + (sum >> 16)
}

/// The window scale option of a SYN or SYN-ACK whose TCP header is `doff`
/// bytes long, or `NO_SCALE`. Reads the options in place, a byte at a time
/// (no copy on the small eBPF stack).
#[inline(always)]
fn window_scale<C: Ctx>(ctx: &C, doff: u32) -> u8 {
    let len = (doff as usize).saturating_sub(TCP_READ);
    if len > TCP_OPTIONS_MAX {
        return NO_SCALE;
    }
    let at = L4_OFF + TCP_READ;
    let mut i = 0;
    while i < TCP_OPTIONS_MAX {
        if i + 2 >= len {
            break;
        }
        let Some([kind, size, value]) = bytes_at::<C, 3>(ctx, at + i) else { break };
        match kind {
            TCPOPT_EOL => break,
            TCPOPT_NOP => i += 1,
            TCPOPT_WINDOW if size == 3 => return value,
            _ if size < 2 => break,
            _ => i += size as usize,
        }
    }
    NO_SCALE
}
