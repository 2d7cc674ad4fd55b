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
/// the counter that says why, and must be passed untouched.
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
    // Version 4, IHL 5: no options.
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
        ([l4[0], l4[1], l4[2], l4[3]], 0, UDP_READ as u32)
    };
    Ok(Packet {
        saddr: [ip[12], ip[13], ip[14], ip[15]],
        daddr: [ip[16], ip[17], ip[18], ip[19]],
        sport: [ports[0], ports[1]],
        dport: [ports[2], ports[3]],
        proto,
        ttl: ip[8],
        tcp_flags,
        headers: IP_LEN as u32 + l4_len,
    })
}
