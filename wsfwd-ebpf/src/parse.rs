//! Header parsing: the few fields the datapath needs, copied out of the
//! packet, so later helper calls (which invalidate packet pointers) are safe.
use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};
use wsfwd_common::abi::{Counter, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

pub const ETH_LEN: usize = size_of::<EthHdr>();
pub const IP_OFF: usize = ETH_LEN;
pub const IP_LEN: usize = size_of::<Ipv4Hdr>();
/// IPv4 without options: transport header offset.
pub const L4_OFF: usize = IP_OFF + IP_LEN;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Bytes of the transport header we read: ports, and for TCP the flags at byte 13.
const TCP_READ: usize = 14;
const UDP_READ: usize = 8;

#[derive(Clone, Copy)]
pub struct Packet {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub ttl: u8,
    /// TCP flags byte; 0 for UDP.
    pub tcp_flags: u8,
    /// IP + L4 header length.
    pub headers: u32,
    /// Set when the kernel would drop this packet (`ip_rcv` and the
    /// transport's own checks): it must never be translated or forwarded.
    pub invalid: Option<Counter>,
}

impl Packet {
    /// A connection-opening SYN (not a SYN-ACK).
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    #[inline(always)]
    pub fn ends_flow(&self) -> bool {
        self.tcp_flags & (TCP_FIN | TCP_RST) != 0
    }
}

#[inline(always)]
fn bytes_at<const N: usize>(ctx: &TcContext, off: usize) -> Option<[u8; N]> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + off + N > end {
        return None;
    }
    // SAFETY: bounds checked against data_end just above.
    Some(unsafe { *((start + off) as *const [u8; N]) })
}

/// Reads `N` bytes at `off`, pulling paged data into the linear part once if needed.
#[inline(always)]
pub fn read<const N: usize>(ctx: &TcContext, off: usize) -> Option<[u8; N]> {
    if let Some(b) = bytes_at(ctx, off) {
        return Some(b);
    }
    ctx.pull_data((off + N) as u32).ok()?;
    bytes_at(ctx, off)
}

/// Parses an Ethernet/IPv4/TCP-or-UDP packet. Anything else, and anything
/// wsfwd cannot translate safely (IP options, fragments), is reported with
/// the counter that says why, and must be passed untouched. A packet whose
/// addresses and ports can be read but that the kernel would drop comes back
/// with `invalid` set.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Packet, Counter> {
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
    // More-fragments flag or a fragment offset: ports are not in every piece.
    if (ip[6] & 0x3f) != 0 || ip[7] != 0 {
        return Err(Counter::PassUnparsed);
    }
    // ICMP has its own path (icmp.rs); this error says "look there".
    if proto == PROTO_ICMP {
        return Err(Counter::PassIcmpNotOurs);
    }
    let (ports, tcp_flags, l4_len) = if proto == PROTO_TCP {
        let l4: [u8; TCP_READ] = read(ctx, L4_OFF).ok_or(Counter::PassUnparsed)?;
        ([l4[0], l4[1], l4[2], l4[3]], l4[13], (l4[12] >> 4) as u32 * 4)
    } else {
        let l4: [u8; UDP_READ] = read(ctx, L4_OFF).ok_or(Counter::PassUnparsed)?;
        ([l4[0], l4[1], l4[2], l4[3]], 0, u16::from_be_bytes([l4[4], l4[5]]) as u32)
    };
    let mut ip_len = u16::from_be_bytes([ip[2], ip[3]]) as u32;
    // SAFETY: ctx.skb points at the live __sk_buff.
    if ip_len == 0 && unsafe { (*ctx.skb.skb).gso_size } != 0 {
        // A GSO packet beyond 64 KiB (BIG TCP) says 0; its length is the skb's.
        ip_len = ctx.len().saturating_sub(ETH_LEN as u32);
    }
    Ok(Packet {
        saddr: [ip[12], ip[13], ip[14], ip[15]],
        daddr: [ip[16], ip[17], ip[18], ip[19]],
        sport: [ports[0], ports[1]],
        dport: [ports[2], ports[3]],
        proto,
        ttl: ip[8],
        tcp_flags,
        headers: IP_LEN as u32 + if proto == PROTO_TCP { l4_len } else { UDP_READ as u32 },
        invalid: check(ctx, &ip, ip_len, proto, l4_len),
    })
}

/// What `ip_rcv` and TCP/UDP would reject. `l4_len` is TCP's header length
/// or UDP's length field.
#[inline(always)]
fn check(ctx: &TcContext, ip: &[u8; IP_LEN], ip_len: u32, proto: u8, l4_len: u32) -> Option<Counter> {
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
    let l4_ok = if proto == PROTO_TCP {
        l4_len >= TCP_MIN as u32 && l4_len <= room
    } else {
        l4_len >= UDP_READ as u32 && l4_len <= room
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
