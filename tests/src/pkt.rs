//! Frames built from headers for the packet fixtures, and their checksums
//! checked from scratch: RFC 1071 sums over the bytes, written here apart
//! from the datapath's incremental updates, so an output is never judged by
//! the code that made it.
use std::net::Ipv4Addr;

pub use wsfwd_common::tcp::{ACK as TCP_ACK, FIN as TCP_FIN, RST as TCP_RST, SYN as TCP_SYN};
pub const TCP_PSH: u8 = 0x08;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp { sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, window: u16, options: Vec<u8>, payload: Vec<u8> },
    Udp { sport: u16, dport: u16, payload: Vec<u8> },
    /// Type, code, the four bytes after the checksum, then the payload
    /// (for an error: the quoted packet).
    Icmp { kind: u8, code: u8, rest: [u8; 4], payload: Vec<u8> },
    /// Bytes as they are (a later fragment, junk).
    Raw(Vec<u8>),
}

/// An Ethernet frame carrying IPv4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub id: u16,
    pub df: bool,
    pub more_fragments: bool,
    /// In 8-byte units.
    pub frag_offset: u16,
    /// IP options (a multiple of 4 bytes).
    pub options: Vec<u8>,
    pub l4: L4,
}

impl Frame {
    pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8, seq: u32, ack: u32) -> Self {
        Self::with(src.0, dst.0, L4::Tcp { sport: src.1, dport: dst.1, seq, ack, flags, window: 64240, options: Vec::new(), payload: Vec::new() })
    }

    pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Self {
        Self::with(src.0, dst.0, L4::Udp { sport: src.1, dport: dst.1, payload: payload.to_vec() })
    }

    pub fn with(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self { dst_mac: [0; 6], src_mac: [0; 6], src, dst, ttl: 64, id: 0x1234, df: true, more_fragments: false, frag_offset: 0, options: Vec::new(), l4 }
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp { .. } => 1,
            L4::Raw(_) => 17,
        }
    }

    /// The L4 bytes, with a correct checksum (TCP, UDP over the pseudo
    /// header; ICMP over itself).
    fn l4_bytes(&self) -> Vec<u8> {
        let mut b = match &self.l4 {
            L4::Tcp { sport, dport, seq, ack, flags, window, options, payload } => {
                let doff = (20 + options.len()) / 4;
                let mut b = Vec::new();
                b.extend(sport.to_be_bytes());
                b.extend(dport.to_be_bytes());
                b.extend(seq.to_be_bytes());
                b.extend(ack.to_be_bytes());
                b.push((doff as u8) << 4);
                b.push(*flags);
                b.extend(window.to_be_bytes());
                b.extend([0, 0, 0, 0]);
                b.extend(options);
                b.extend(payload);
                b
            }
            L4::Udp { sport, dport, payload } => {
                let mut b = Vec::new();
                b.extend(sport.to_be_bytes());
                b.extend(dport.to_be_bytes());
                b.extend(((8 + payload.len()) as u16).to_be_bytes());
                b.extend([0, 0]);
                b.extend(payload);
                b
            }
            L4::Icmp { kind, code, rest, payload } => {
                let mut b = vec![*kind, *code, 0, 0];
                b.extend(rest);
                b.extend(payload);
                b
            }
            L4::Raw(bytes) => return bytes.clone(),
        };
        if self.frag_offset != 0 || self.more_fragments {
            // A fragment's checksum covers the whole datagram: left as built
            // (0) where only the first piece exists here.
            return b;
        }
        match self.l4 {
            L4::Tcp { .. } => {
                let c = checksum(&[&pseudo(self.src, self.dst, 6, b.len()), &b]);
                b[16..18].copy_from_slice(&c.to_be_bytes());
            }
            L4::Udp { .. } => {
                let c = checksum(&[&pseudo(self.src, self.dst, 17, b.len()), &b]);
                b[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
            }
            L4::Icmp { .. } => {
                let c = checksum(&[&b]);
                b[2..4].copy_from_slice(&c.to_be_bytes());
            }
            L4::Raw(_) => {}
        }
        b
    }

    /// The IPv4 packet (header with a correct checksum, then L4).
    pub fn ip_bytes(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let ihl = 5 + self.options.len() / 4;
        let total = ihl * 4 + l4.len();
        let mut h = vec![0x40 | ihl as u8, 0];
        h.extend((total as u16).to_be_bytes());
        h.extend(self.id.to_be_bytes());
        let flags = (if self.df { 0x4000 } else { 0 }) | (if self.more_fragments { 0x2000 } else { 0 }) | self.frag_offset;
        h.extend(flags.to_be_bytes());
        h.push(self.ttl);
        h.push(self.proto());
        h.extend([0, 0]);
        h.extend(self.src.octets());
        h.extend(self.dst.octets());
        h.extend(&self.options);
        let c = checksum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend(l4);
        h
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend(self.dst_mac);
        f.extend(self.src_mac);
        f.extend([0x08, 0x00]);
        f.extend(self.ip_bytes());
        f
    }
}

/// The TCP/UDP pseudo header.
pub fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend([0, proto]);
    p.extend((len as u16).to_be_bytes());
    p
}

/// RFC 1071: the ones' complement of the ones' complement sum of 16-bit
/// words (an odd last byte padded with zero), over `parts` in order.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let mut sum: u64 = 0;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u64::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Checks an Ethernet/IPv4 frame's IPv4 header checksum and (for a whole
/// TCP, UDP or ICMP packet) its L4 checksum, recomputed from its bytes.
pub fn checksums_ok(frame: &[u8]) -> Result<(), String> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return Err("not an IPv4 frame".into());
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < 20 || total < ihl || total > ip.len() {
        return Err(format!("bad IPv4 lengths: IHL {ihl}, total {total}, {} bytes", ip.len()));
    }
    if checksum(&[&ip[..ihl]]) != 0 {
        return Err(format!("IPv4 header checksum wrong: {:02x?}", &ip[..ihl]));
    }
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if fragment {
        return Ok(());
    }
    let (src, dst) = (Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]), Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
    let l4 = &ip[ihl..total];
    let ok = match ip[9] {
        6 => checksum(&[&pseudo(src, dst, 6, l4.len()), l4]) == 0,
        17 => (l4.len() >= 8 && l4[6..8] == [0, 0]) || checksum(&[&pseudo(src, dst, 17, l4.len()), l4]) == 0,
        1 => checksum(&[l4]) == 0,
        _ => true,
    };
    if ok { Ok(()) } else { Err(format!("L4 checksum wrong (protocol {}) in {:02x?}", ip[9], l4)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is ddf2; its complement 220d.
        let words = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&[&words]), !0xddf2);
    }

    #[test]
    fn a_known_ipv4_header() {
        // A header from the wire whose checksum is b861.
        let h = [0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7];
        assert_eq!(checksum(&[&h]), 0xb861);
    }

    #[test]
    fn built_frames_verify_and_a_flipped_bit_does_not() {
        let a = (Ipv4Addr::new(10, 0, 1, 2), 40000);
        let b = (Ipv4Addr::new(192, 168, 0, 150), 9080);
        for f in [Frame::tcp(a, b, TCP_SYN, 1, 0), Frame::udp(a, b, b"odd"), Frame::udp(a, b, b"")] {
            let bytes = f.bytes();
            checksums_ok(&bytes).unwrap();
            for at in [14 + 10, 14 + 12, bytes.len() - 1] {
                let mut bad = bytes.clone();
                bad[at] ^= 0x10;
                assert!(checksums_ok(&bad).is_err(), "flipped byte {at} of {f:?}");
            }
        }
    }
}
