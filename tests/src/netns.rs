//! Network namespaces made for one test, named `wst-<test>-<pid>-<role>`.
use std::{
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::sys::{parse_snmp, run};

pub struct Netns {
    pub name: String,
    /// Deleted on drop (false for a second handle on someone else's namespace).
    owned: bool,
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self { name: name.to_owned(), owned: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Another handle on this namespace, which does not delete it.
    pub fn handle(&self) -> Self {
        Self { name: self.name.clone(), owned: false }
    }

    /// `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        run(self.command(args[0]).args(&args[1..]))
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `/proc/net/snmp` as seen inside the namespace.
    pub fn snmp(&self) -> anyhow::Result<std::collections::HashMap<String, u64>> {
        Ok(parse_snmp(&self.exec(&["cat", "/proc/net/snmp"])?))
    }

    /// A socket created inside this namespace (see [`Netns::inside`]).
    pub fn socket(&self, ty: socket2::Type, proto: socket2::Protocol) -> anyhow::Result<socket2::Socket> {
        self.inside(move || socket2::Socket::new(socket2::Domain::IPV4, ty, Some(proto)).context("socket()"))
    }

    /// Runs `f` on a thread that has entered this namespace, after proving it
    /// is not the root namespace, so a test can never open a socket in the
    /// machine's own network. Sockets made there stay in this namespace.
    pub fn inside<T: Send>(&self, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(|| -> anyhow::Result<T> {
                let target = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                // The namespace the tests run in (the machine's), read before leaving it.
                let root = std::fs::metadata("/proc/thread-self/ns/net").context("reading our netns")?.ino();
                // SAFETY: setns on this (scoped, short-lived) thread only.
                if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns({path}): {}", std::io::Error::last_os_error());
                }
                let here = std::fs::metadata("/proc/thread-self/ns/net").context("reading this thread's netns")?.ino();
                if here == root || here != target.metadata()?.ino() {
                    bail!("refusing to open a socket: not inside test namespace {path}");
                }
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        }
    }
}

/// Removes namespaces an earlier, killed run of the same test left behind.
pub fn sweep(prefix: &str) {
    let Ok(list) = run(Command::new("ip").args(["netns", "list"])) else { return };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if name.starts_with(prefix) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}
