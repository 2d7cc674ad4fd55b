//! The bpffs directory that holds the datapath while no agent runs: the maps
//! (pinned by name) and, under `links/`, the TCX links of the programs. An
//! agent that starts adopts what it finds there; `wsfwd cleanup` removes it.
use std::{
    ffi::CString,
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use wsfwd_common::abi::map_names;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const SYS_FS_BPF: &str = "/sys/fs/bpf";
const LINKS: &str = "links";

pub struct PinDir {
    dir: PathBuf,
    /// Held for the agent's life: one agent per directory.
    _lock: File,
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs writes into the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == BPF_FS_MAGIC
}

fn nearest_existing(path: &Path) -> &Path {
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    p
}

fn mount_bpffs(at: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(at).with_context(|| format!("creating {}", at.display()))?;
    let target = CString::new(at.as_os_str().as_encoded_bytes())?;
    let (src, fstype, opts) = (c"bpf", c"bpf", c"mode=0700");
    // SAFETY: all pointers are valid NUL-terminated strings.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, opts.as_ptr().cast()) };
    if rc != 0 {
        bail!("mounting bpffs at {}: {}", at.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

impl PinDir {
    /// Makes `dir` a usable pin directory — mounts bpffs where there is none
    /// (`ip netns exec` hides the host's), creates it — and locks it: a
    /// second agent on the same directory is refused.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        if !is_bpffs(nearest_existing(dir)) {
            let at = if dir.starts_with(SYS_FS_BPF) { PathBuf::from(SYS_FS_BPF) } else { dir.to_owned() };
            mount_bpffs(&at)?;
            log::info!("mounted bpffs at {}", at.display());
        }
        std::fs::create_dir_all(dir.join(LINKS)).with_context(|| format!("creating {}", dir.display()))?;
        let lock = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        // SAFETY: a valid open descriptor.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "another wsfwd agent is running on {} (stop it first: two agents would fight over the same maps)",
                dir.display()
            );
        }
        Ok(Self { dir: dir.to_owned(), _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Where the TCX link of `hook` ("ingress"/"egress") on `iface` is pinned.
    pub fn link(&self, iface: &str, hook: &str) -> PathBuf {
        link_path(&self.dir, iface, hook)
    }

    /// The maps of ours pinned here.
    pub fn pinned_maps(&self) -> Vec<&'static str> {
        pinned_maps(&self.dir)
    }
}

pub fn link_path(dir: &Path, iface: &str, hook: &str) -> PathBuf {
    dir.join(LINKS).join(format!("{iface}-{hook}"))
}

pub fn pinned_maps(dir: &Path) -> Vec<&'static str> {
    map_names::ALL.into_iter().filter(|n| dir.join(n).exists()).collect()
}

/// Link pins under `dir` as (path, "iface-hook").
pub fn pinned_links(dir: &Path) -> Vec<(PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(dir.join(LINKS)) else { return Vec::new() };
    entries.filter_map(Result::ok).map(|e| (e.path(), e.file_name().to_string_lossy().into_owned())).collect()
}

/// Removes every pin of ours under `dir` (a link goes with its last
/// reference, which detaches it), then the directory if it is empty.
pub fn remove_all(dir: &Path) -> anyhow::Result<()> {
    for (path, _) in pinned_links(dir) {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    let _ = std::fs::remove_dir(dir.join(LINKS));
    for name in pinned_maps(dir) {
        let path = dir.join(name);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    let _ = std::fs::remove_dir(dir);
    Ok(())
}
