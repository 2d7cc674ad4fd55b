//! Forged frames: what anyone on a client's link can send. Built byte by byte
//! (checksums computed from scratch) and sent raw out of an interface of a
//! test namespace, past that namespace's own stack.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

pub use crate::pkt::{TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, checksum as checksum_of};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;

/// The Internet checksum of `data` (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    checksum_of(&[data])
}

/// A TCP segment's fields.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub payload: Vec<u8>,
}

impl Tcp {
    pub fn new(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Self {
        Self { src, dst, seq: 0x1000_0000, ack: 0, flags, window: 64240, payload: Vec::new() }
    }

    /// The segment (header and payload) with its checksum.
    pub fn segment(&self) -> Vec<u8> {
        let mut t = Vec::with_capacity(20 + self.payload.len());
        t.extend(self.src.port().to_be_bytes());
        t.extend(self.dst.port().to_be_bytes());
        t.extend(self.seq.to_be_bytes());
        t.extend(self.ack.to_be_bytes());
        t.extend([5 << 4, self.flags]);
        t.extend(self.window.to_be_bytes());
        t.extend([0, 0, 0, 0]); // checksum, urgent pointer
        t.extend(&self.payload);
        let csum = l4_checksum(*self.src.ip(), *self.dst.ip(), 6, &t);
        t[16..18].copy_from_slice(&csum.to_be_bytes());
        t
    }

    /// The whole IPv4 packet (DF set, as Linux sends TCP).
    pub fn packet(&self) -> Vec<u8> {
        Ipv4 { df: true, ..Ipv4::new(*self.src.ip(), *self.dst.ip(), 6) }.packet(&self.segment())
    }
}

/// A UDP datagram with its checksum.
pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut u = Vec::with_capacity(len as usize);
    u.extend(src.port().to_be_bytes());
    u.extend(dst.port().to_be_bytes());
    u.extend(len.to_be_bytes());
    u.extend([0, 0]);
    u.extend(payload);
    let csum = match l4_checksum(*src.ip(), *dst.ip(), 17, &u) {
        0 => 0xffff,
        c => c,
    };
    u[6..8].copy_from_slice(&csum.to_be_bytes());
    u
}

fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    checksum_of(&[&crate::pkt::pseudo(src, dst, proto, l4.len()), l4])
}

/// An IPv4 header's fields.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub id: u16,
    pub df: bool,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Self { src, dst, proto, ttl: 64, id: 0x5757, df: false }
    }

    /// A 20-byte header (no options) for a payload of `len` bytes, with its checksum.
    pub fn header(&self, len: usize) -> [u8; 20] {
        let total = (20 + len) as u16;
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[4..6].copy_from_slice(&self.id.to_be_bytes());
        h[6] = if self.df { 0x40 } else { 0 };
        h[8] = self.ttl;
        h[9] = self.proto;
        h[12..16].copy_from_slice(&self.src.octets());
        h[16..20].copy_from_slice(&self.dst.octets());
        let csum = checksum(&h);
        h[10..12].copy_from_slice(&csum.to_be_bytes());
        h
    }

    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let mut p = self.header(payload.len()).to_vec();
        p.extend(payload);
        p
    }
}

/// An Ethernet frame carrying an IPv4 packet; with `vlan`, 802.1Q-tagged.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, packet: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(18 + packet.len());
    f.extend(dst);
    f.extend(src);
    if let Some(id) = vlan {
        f.extend(ETH_P_8021Q.to_be_bytes());
        f.extend((id & 0x0fff).to_be_bytes());
    }
    f.extend(ETH_P_IP.to_be_bytes());
    f.extend(packet);
    f
}

/// A MAC address from `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let bytes: Vec<u8> =
        s.trim().split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>().with_context(|| format!("MAC {s:?}"))?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("MAC {s:?} is not 6 bytes"))
}

/// An interface's MAC address, read inside its namespace.
pub fn mac_of(ns: &Netns, iface: &str) -> anyhow::Result<[u8; 6]> {
    parse_mac(&ns.exec(&["cat", &format!("/sys/class/net/{iface}/address")])?)
}

/// A raw (AF_PACKET) socket bound to one interface of a test namespace: what
/// it sends leaves that interface exactly as given.
pub struct RawLink {
    fd: OwnedFd,
    ifindex: i32,
    /// The interface's own MAC (the frames' usual source) and its peer's (the usual destination).
    pub mac: [u8; 6],
    pub peer_mac: [u8; 6],
}

impl RawLink {
    /// `iface` in `ns`, whose frames go to `peer_iface` in `peer_ns`.
    pub fn open(ns: &Netns, iface: &str, peer_ns: &Netns, peer_iface: &str) -> anyhow::Result<Self> {
        let (mac, peer_mac) = (mac_of(ns, iface)?, mac_of(peer_ns, peer_iface)?);
        let name = std::ffi::CString::new(iface)?;
        let (fd, ifindex) = ns.inside(move || {
            // SAFETY: plain syscalls; the descriptor is owned right away.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            if fd < 0 {
                bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
            }
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
            if ifindex == 0 {
                bail!("no interface {name:?}");
            }
            Ok((fd, ifindex))
        })?;
        Ok(Self { fd, ifindex, mac, peer_mac })
    }

    /// Sends one frame as is.
    pub fn send(&self, frame: &[u8]) -> anyhow::Result<()> {
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = self.ifindex;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and address are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            bail!("sending a {}-byte frame: {}", frame.len(), std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends an IPv4 packet in an ordinary frame to the peer.
    pub fn send_ip(&self, packet: &[u8]) -> anyhow::Result<()> {
        self.send(&ethernet(self.peer_mac, self.mac, None, packet))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 2), 40000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 150), 9080);
        let mut t = Tcp::new(src, dst, TCP_SYN);
        t.payload = b"odd".to_vec();
        let p = t.packet();
        assert_eq!(checksum(&p[..20]), 0, "IP header");
        let mut pseudo = Vec::new();
        pseudo.extend(src.ip().octets());
        pseudo.extend(dst.ip().octets());
        pseudo.extend([0, 6, 0, (p.len() - 20) as u8]);
        pseudo.extend(&p[20..]);
        assert_eq!(checksum(&pseudo), 0, "TCP with its pseudo-header");
    }
}
