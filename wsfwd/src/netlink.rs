//! The little of rtnetlink the agent speaks: a request, the messages that
//! answer it, and their attributes. Always about the agent's own network
//! namespace (unlike `/sys/class/net`, which shows the namespace sysfs was
//! mounted in).
use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct NlMsgHdr {
    pub len: u32,
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
}

pub const HDR_LEN: usize = size_of::<NlMsgHdr>();

pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A NETLINK_ROUTE socket for one request at a time.
pub struct Socket(OwnedFd);

impl Socket {
    pub fn open() -> io::Result<Self> {
        // SAFETY: a plain socket call; the fd is owned right away.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, owned descriptor.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends one request: a `repr(C)` struct without padding that starts
    /// with its `NlMsgHdr`.
    pub fn send<T: Copy>(&self, req: &T) -> io::Result<()> {
        // SAFETY: sending the bytes of `req`, valid for its size.
        let sent = unsafe { libc::send(self.0.as_raw_fd(), (req as *const T).cast(), size_of::<T>(), 0) };
        if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Receives one datagram: one or more messages.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: receiving into a buffer of the given size.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// Every message answering a dump request, up to its `NLMSG_DONE`, as
    /// (type, bytes after the header).
    pub fn dump(&self) -> io::Result<Vec<(u16, Vec<u8>)>> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed rtnetlink message");
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            let mut at = 0;
            while at + HDR_LEN <= n {
                let len = u32_at(&buf, at).ok_or_else(bad)? as usize;
                let ty = u16_at(&buf, at + 4).ok_or_else(bad)?;
                if len < HDR_LEN || at + len > n {
                    return Err(bad());
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = -(u32_at(&buf, at + HDR_LEN).ok_or_else(bad)? as i32);
                        return Err(io::Error::from_raw_os_error(errno));
                    }
                    _ => out.push((ty, buf[at + HDR_LEN..at + len].to_vec())),
                }
                at += (len + 3) & !3;
            }
        }
    }
}

/// The attributes in `b` from `at` on, as (type without its flag bits, payload).
pub fn attrs(b: &[u8], mut at: usize) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16_at(b, at)? as usize;
        let ty = u16_at(b, at + 2)? & 0x3fff;
        let payload = b.get(at + 4..at + len.max(4))?;
        if len < 4 {
            return None;
        }
        at += (len + 3) & !3;
        Some((ty, payload))
    })
}
