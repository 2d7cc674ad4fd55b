//! Noticing that the config file changed (inotify). Editors and Kubernetes
//! replace a file rather than rewrite it — a rename over it, or a swap of the
//! `..data` symlink of a ConfigMap mount — so the file's directory is
//! watched, not the file; so is the directory of the file a symlink points
//! at. Any event there wakes the agent, which then reads the file and
//! compares it with what it read last.
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use tokio::io::{Interest, unix::AsyncFd};

pub struct ConfigWatch {
    fd: AsyncFd<OwnedFd>,
    /// The names whose changes matter: the config file, the file its
    /// symlink points at, and a ConfigMap mount's `..`-prefixed internals.
    names: Vec<Vec<u8>>,
}

/// The directories whose changes may change what `path` reads as.
fn dirs(path: &Path) -> Vec<PathBuf> {
    let parent = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut out = vec![parent(path)];
    if let Ok(real) = std::fs::canonicalize(path) {
        let d = parent(&real);
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

impl ConfigWatch {
    pub fn new(path: &Path) -> io::Result<Self> {
        // SAFETY: a plain syscall; the descriptor is owned below.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor, owned from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mask = libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_ATTRIB
            | libc::IN_MODIFY;
        for dir in dirs(path) {
            let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
            // SAFETY: a valid descriptor and NUL-terminated path.
            if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) } < 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(e.kind(), format!("watching {}: {e}", dir.display())));
            }
        }
        // SAFETY: an owned descriptor, owned by the AsyncFd from here on.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into_parts().1)?;
        let mut names: Vec<Vec<u8>> = path.file_name().map(|n| n.as_encoded_bytes().to_vec()).into_iter().collect();
        if let Some(n) = std::fs::canonicalize(path).ok().and_then(|r| r.file_name().map(|n| n.as_encoded_bytes().to_vec())) {
            names.push(n);
        }
        Ok(Self { fd, names })
    }

    /// Whether an event about `name` may change what the config reads as.
    fn matters(&self, name: &[u8]) -> bool {
        name.starts_with(b"..") || self.names.iter().any(|n| n == name)
    }

    /// Waits until a change in the watched directories is complete: a file
    /// closed after writing, or something renamed into place (or away,
    /// deleted, its attributes changed). A file still being written — opened,
    /// truncated, partly written — is not read: an in-place writer's
    /// truncation would otherwise read as an empty configuration.
    pub async fn changed(&mut self) -> io::Result<()> {
        const COMPLETE: u32 =
            libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM | libc::IN_DELETE | libc::IN_ATTRIB;
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buf = [0u8; 4096];
            let raw = guard.get_inner().as_raw_fd();
            let mut complete = false;
            loop {
                // SAFETY: reading into a buffer of the given size.
                let n = unsafe { libc::read(raw, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    let e = io::Error::last_os_error();
                    if n < 0 && e.kind() != io::ErrorKind::WouldBlock {
                        return Err(e);
                    }
                    break;
                }
                complete |= events(&buf[..n as usize]).any(|(m, name)| m & COMPLETE != 0 && self.matters(name));
            }
            guard.clear_ready();
            if complete {
                return Ok(());
            }
        }
    }
}

/// The `inotify_event`s in `buf`: mask and name (NUL padding removed).
fn events(buf: &[u8]) -> impl Iterator<Item = (u32, &[u8])> + '_ {
    const HEADER: usize = 16; // wd, mask, cookie, len
    let mut at = 0;
    std::iter::from_fn(move || {
        let header = buf.get(at..at + HEADER)?;
        let mask = u32::from_ne_bytes([header[4], header[5], header[6], header[7]]);
        let len = u32::from_ne_bytes([header[12], header[13], header[14], header[15]]) as usize;
        let name = buf.get(at + HEADER..at + HEADER + len).unwrap_or_default();
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        at += HEADER + len;
        Some((mask, &name[..end]))
    })
}

#[cfg(test)]
mod tests {
    use super::events;

    fn event(mask: u32, name: &str, len: usize) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&1i32.to_ne_bytes());
        e.extend_from_slice(&mask.to_ne_bytes());
        e.extend_from_slice(&0u32.to_ne_bytes());
        e.extend_from_slice(&(len as u32).to_ne_bytes());
        let mut n = name.as_bytes().to_vec();
        n.resize(len, 0);
        e.extend_from_slice(&n);
        e
    }

    #[test]
    fn events_give_masks_and_names_without_padding() {
        let mut buf = event(libc::IN_MODIFY, "config.yaml", 16);
        buf.extend(event(libc::IN_MOVED_TO, "..data", 16));
        buf.extend(event(libc::IN_CLOSE_WRITE, "", 0));
        let got: Vec<(u32, &[u8])> = events(&buf).collect();
        assert_eq!(got, vec![(libc::IN_MODIFY, &b"config.yaml"[..]), (libc::IN_MOVED_TO, &b"..data"[..]), (libc::IN_CLOSE_WRITE, &b""[..])]);
    }
}
