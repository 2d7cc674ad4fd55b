//! The node's interfaces, in the agent's network namespace.
use std::{ffi::CString, mem::size_of, net::Ipv4Addr};

use crate::netlink::{self, NlMsgHdr};

/// An external interface, as named by `--iface`.
#[derive(Clone, Debug)]
pub struct Iface {
    pub name: String,
    pub index: u32,
    /// Its IPv4 addresses: where NodePorts are served.
    pub addrs: Vec<Ipv4Addr>,
}

/// Resolves interface names, failing on the first that does not exist.
pub fn resolve(names: &[String]) -> Result<Vec<Iface>, String> {
    let all = ipv4_addrs()?;
    let mut out: Vec<Iface> = Vec::new();
    for name in names {
        if out.iter().any(|i| &i.name == name) {
            return Err(format!("--iface {name} is given twice"));
        }
        let index = index_of(name).ok_or_else(|| format!("--iface {name}: no such interface in this network namespace"))?;
        let addrs = all.iter().filter(|(n, _)| n == name).map(|(_, a)| *a).collect();
        out.push(Iface { name: name.clone(), index, addrs });
    }
    Ok(out)
}

/// The index of interface `name`, if it exists.
pub fn index_of(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// The name of interface `index`, if it exists.
pub fn name_of(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has the IF_NAMESIZE bytes if_indextoname writes at most.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    // SAFETY: on success, buf holds a NUL-terminated name.
    (!p.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

/// Whether interface `index` is a loopback (local endpoints' routes leave through it).
pub fn is_loopback(index: u32) -> bool {
    const IFF_LOOPBACK: u32 = 0x8;
    name_of(index)
        .and_then(|n| std::fs::read_to_string(format!("/sys/class/net/{n}/flags")).ok())
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|flags| flags & IFF_LOOPBACK != 0)
}

/// Every (interface, IPv4 address) pair, from getifaddrs(3).
fn ipv4_addrs() -> Result<Vec<(String, Ipv4Addr)>, String> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(format!("listing interface addresses: {}", std::io::Error::last_os_error()));
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in; the name is NUL-terminated.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
        out.push((name, Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
    }
    // SAFETY: frees the list getifaddrs allocated.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Whether this network namespace forwards IPv4 (replies from endpoints need it).
pub fn ip_forward_enabled() -> Option<bool> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").ok().map(|s| s.trim() == "1")
}

/// Runs socket ioctl `request` on interface `name` with a `struct ifreq`
/// whose bytes after the name are `arg` (up to 24); returns the ifreq as the
/// kernel left it, or `None` if the call failed.
fn ifreq_ioctl(name: &str, request: libc::c_ulong, arg: &[u8]) -> Option<[u8; 40]> {
    // struct ifreq: the name (16 bytes, NUL-terminated), then a 24-byte union.
    let mut ifr = [0u8; 40];
    if name.len() >= 16 || arg.len() > 24 {
        return None;
    }
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    ifr[16..16 + arg.len()].copy_from_slice(arg);
    // SAFETY: a datagram socket for the ioctl, closed below; ifr is an
    // ifreq, and whatever `arg` points at outlives the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, request, ifr.as_mut_ptr());
        libc::close(fd);
        (rc == 0).then_some(ifr)
    }
}

/// The driver behind interface `name` (`veth`, `virtio_net`, `mlx5_core`…),
/// asked of the interface in this network namespace (ethtool's
/// ETHTOOL_GDRVINFO); `None` if it does not say.
pub fn driver(name: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 3;
    // struct ethtool_drvinfo: cmd, then driver[32], version[32], ... (196 bytes).
    let mut info = [0u8; 196];
    info[..4].copy_from_slice(&ETHTOOL_GDRVINFO.to_ne_bytes());
    // The ifreq's union holds a pointer to the request.
    ifreq_ioctl(name, SIOCETHTOOL, &(info.as_mut_ptr() as usize).to_ne_bytes())?;
    let driver = &info[4..36];
    let end = driver.iter().position(|&b| b == 0).unwrap_or(driver.len());
    Some(String::from_utf8_lossy(&driver[..end]).into_owned())
}

/// Interface `name`'s MAC address (SIOCGIFHWADDR), in this network namespace.
pub fn mac(name: &str) -> Option<[u8; 6]> {
    const SIOCGIFHWADDR: libc::c_ulong = 0x8927;
    // The union becomes a sockaddr: the family, then the address.
    let ifr = ifreq_ioctl(name, SIOCGIFHWADDR, &[])?;
    ifr[18..24].try_into().ok()
}

/// The interfaces here that are one end of a veth pair whose other end is
/// in another network namespace (a pod's): those the kernel says are veths
/// (`IFLA_INFO_KIND`) with a peer namespace id (`IFLA_LINK_NETNSID`).
pub fn veths_to_other_namespaces() -> std::io::Result<Vec<u32>> {
    const RTM_GETLINK: u16 = 18;
    const RTM_NEWLINK: u16 = 16;
    const IFLA_LINKINFO: u16 = 18;
    const IFLA_INFO_KIND: u16 = 1;
    const IFLA_LINK_NETNSID: u16 = 37;
    // struct ifinfomsg: family, pad, type, index, flags, change.
    const IFINFOMSG_LEN: usize = 16;
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Request {
        hdr: NlMsgHdr,
        ifinfomsg: [u8; IFINFOMSG_LEN],
    }
    let req = Request {
        hdr: NlMsgHdr {
            len: size_of::<Request>() as u32,
            ty: RTM_GETLINK,
            flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            seq: 1,
            pid: 0,
        },
        // AF_UNSPEC (0): every link.
        ifinfomsg: [0; IFINFOMSG_LEN],
    };
    let socket = netlink::Socket::open()?;
    socket.send(&req)?;
    let mut out = Vec::new();
    for (ty, msg) in socket.dump()? {
        let Some(index) = netlink::u32_at(&msg, 4).filter(|_| ty == RTM_NEWLINK) else { continue };
        let (mut veth, mut elsewhere) = (false, false);
        for (attr, payload) in netlink::attrs(&msg, IFINFOMSG_LEN) {
            match attr {
                IFLA_LINK_NETNSID => elsewhere = true,
                IFLA_LINKINFO => {
                    veth |= netlink::attrs(payload, 0).any(|(a, kind)| a == IFLA_INFO_KIND && kind.starts_with(b"veth\0"));
                }
                _ => {}
            }
        }
        if veth && elsewhere {
            out.push(index);
        }
    }
    Ok(out)
}
