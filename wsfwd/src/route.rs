//! Asking the kernel's routing table where a packet to an address would
//! leave (`ip route get`), over rtnetlink. Decides which endpoints are
//! behind the node and which need full NAT.
use std::{io, mem::size_of, net::Ipv4Addr};

use crate::netlink::{self, HDR_LEN, NLMSG_ERROR, NlMsgHdr, u16_at, u32_at};

const RTM_GETROUTE: u16 = 26;
const RTM_NEWROUTE: u16 = 24;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;

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
#[derive(Clone, Copy)]
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
    let socket = netlink::Socket::open()?;
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
    socket.send(&req)?;
    let mut buf = [0u8; 8192];
    let n = socket.recv(&mut buf)?;
    parse(&buf[..n])
}

fn addr_at(b: &[u8]) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

fn parse(msg: &[u8]) -> io::Result<Option<Route>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed rtnetlink reply");
    let len = u32_at(msg, 0).ok_or_else(bad)? as usize;
    let ty = u16_at(msg, 4).ok_or_else(bad)?;
    let msg = msg.get(..len).ok_or_else(bad)?;
    if ty == NLMSG_ERROR {
        let errno = -(u32_at(msg, HDR_LEN).ok_or_else(bad)? as i32);
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
    for (ty, payload) in netlink::attrs(msg, HDR_LEN + size_of::<RtMsg>()) {
        match ty {
            RTA_OIF => route.oif = u32_at(payload, 0).ok_or_else(bad)?,
            RTA_PREFSRC => route.prefsrc = addr_at(payload),
            RTA_GATEWAY => route.gateway = addr_at(payload),
            _ => {}
        }
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

    /// Changes of links: what a cached next hop may miss, and which
    /// interfaces are veths to other namespaces.
    pub fn links() -> io::Result<Self> {
        Self::groups(RTMGRP_LINK)
    }

    /// Changes of neighbours: what a cached next hop may miss.
    pub fn neighbours() -> io::Result<Self> {
        Self::groups(RTMGRP_NEIGH)
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
