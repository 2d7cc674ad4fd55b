//! Asking the kernel's routing table where a packet to an address would
//! leave (`ip route get`), over rtnetlink. Decides which endpoints are
//! behind the node and which need full NAT.
use std::{io, mem::size_of, net::Ipv4Addr};

const RTM_GETROUTE: u16 = 26;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;

#[repr(C)]
#[derive(Clone, Copy)]
struct NlMsgHdr {
    len: u32,
    ty: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RtMsg {
    family: u8,
    dst_len: u8,
    src_len: u8,
    tos: u8,
    table: u8,
    protocol: u8,
    scope: u8,
    ty: u8,
    flags: u32,
}

#[repr(C)]
struct Request {
    hdr: NlMsgHdr,
    rtm: RtMsg,
    rta_len: u16,
    rta_type: u16,
    dst: [u8; 4],
}

/// Where the routing table sends packets for an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub oif: u32,
    /// The source address the kernel would use.
    pub prefsrc: Option<Ipv4Addr>,
    pub gateway: Option<Ipv4Addr>,
}

/// Looks up the route to `dst`; `Ok(None)` when there is none.
pub fn get(dst: Ipv4Addr) -> io::Result<Option<Route>> {
    // SAFETY: a plain socket call; the fd is closed by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, owned descriptor.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let req = Request {
        hdr: NlMsgHdr {
            len: size_of::<Request>() as u32,
            ty: RTM_GETROUTE,
            flags: libc::NLM_F_REQUEST as u16,
            seq: 1,
            pid: 0,
        },
        rtm: RtMsg { family: libc::AF_INET as u8, dst_len: 32, src_len: 0, tos: 0, table: 0, protocol: 0, scope: 0, ty: 0, flags: 0 },
        rta_len: 8,
        rta_type: RTA_DST,
        dst: dst.octets(),
    };
    // SAFETY: sending the bytes of a repr(C) request to the kernel.
    let sent = unsafe { libc::send(raw, (&req as *const Request).cast(), size_of::<Request>(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 8192];
    // SAFETY: receiving into a buffer of the given size.
    let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse(&buf[..n as usize])
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn addr_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

fn parse(msg: &[u8]) -> io::Result<Option<Route>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed rtnetlink reply");
    let len = u32_at(msg, 0).ok_or_else(bad)? as usize;
    let ty = u16_at(msg, 4).ok_or_else(bad)?;
    let msg = msg.get(..len).ok_or_else(bad)?;
    let hdr = size_of::<NlMsgHdr>();
    if ty == NLMSG_ERROR {
        let errno = -(u32_at(msg, hdr).ok_or_else(bad)? as i32);
        return match errno {
            0 => Ok(None),
            libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ESRCH => Ok(None),
            e => Err(io::Error::from_raw_os_error(e)),
        };
    }
    if ty != RTM_NEWROUTE {
        return Err(bad());
    }
    let mut route = Route { oif: 0, prefsrc: None, gateway: None };
    let mut at = hdr + size_of::<RtMsg>();
    while at + 4 <= msg.len() {
        let rta_len = u16_at(msg, at).ok_or_else(bad)? as usize;
        let rta_ty = u16_at(msg, at + 2).ok_or_else(bad)?;
        if rta_len < 4 {
            break;
        }
        match rta_ty {
            RTA_OIF => route.oif = u32_at(msg, at + 4).ok_or_else(bad)?,
            RTA_PREFSRC => route.prefsrc = addr_at(msg, at + 4),
            RTA_GATEWAY => route.gateway = addr_at(msg, at + 4),
            _ => {}
        }
        at += (rta_len + 3) & !3;
    }
    Ok((route.oif != 0).then_some(route))
}

/// Tells when the node's IPv4 routes or addresses (or its links and
/// neighbours) change, from rtnetlink multicast groups: where endpoints sit
/// is looked up again, and the datapath's cached next hops are dropped.
pub struct Watch {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;

impl Watch {
    /// Changes of IPv4 routes and addresses: where endpoints sit.
    pub fn new() -> io::Result<Self> {
        Self::groups(RTMGRP_IPV4_ROUTE | RTMGRP_IPV4_IFADDR)
    }

    /// Changes of links and neighbours: what a cached next hop may miss.
    pub fn links_and_neighbours() -> io::Result<Self> {
        Self::groups(RTMGRP_LINK | RTMGRP_NEIGH)
    }

    fn groups(groups: u32) -> io::Result<Self> {
        // SAFETY: a plain socket call; the fd is owned right away.
        let fd = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, libc::NETLINK_ROUTE)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, owned descriptor.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zero is a valid start.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = groups;
        // SAFETY: addr is a valid sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor is owned by the AsyncFd from here on and
        // closed only when it is dropped (deregistered first).
        let fd = unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Waits for a change, then reads every notification queued so far.
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buf = [0u8; 8192];
            let mut any = false;
            loop {
                // SAFETY: buf is valid for its length.
                let n = unsafe {
                    libc::recv(std::os::fd::AsRawFd::as_raw_fd(guard.get_inner()), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if n > 0 {
                    any = true;
                    continue;
                }
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    // Notifications were dropped (ENOBUFS): something changed.
                    _ if err.raw_os_error() == Some(libc::ENOBUFS) => {
                        any = true;
                        continue;
                    }
                    _ => return Err(err),
                }
            }
            guard.clear_ready();
            if any {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_routes_through_lo() {
        // Every network namespace has lo; 127.0.0.1 is always routed through it.
        let r = get(Ipv4Addr::LOCALHOST).unwrap().expect("a route to 127.0.0.1");
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        assert_eq!(r.oif, lo);
        assert_eq!(r.prefsrc, Some(Ipv4Addr::LOCALHOST));
    }
}
