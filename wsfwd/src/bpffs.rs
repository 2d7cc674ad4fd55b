//! The bpffs directory the maps are pinned in while the agent runs, so that
//! `wsfwd stats` and `wsfwd conntrack` (and later a restarted agent) can open
//! them. Everything created here is removed when the guard is dropped.
use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const SYS_FS_BPF: &str = "/sys/fs/bpf";

pub struct PinDir {
    dir: PathBuf,
    /// `dir` did not exist before (and is not itself the mount point).
    created_dir: bool,
    /// Where we mounted bpffs, and whether we created that directory too.
    mounted: Option<(PathBuf, bool)>,
    pins: Vec<PathBuf>,
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
    /// Makes `dir` a usable pin directory: mounts bpffs where there is none
    /// (`ip netns exec` hides the host's), creates the directory, and clears
    /// pins a killed agent left behind.
    pub fn prepare(dir: &Path) -> anyhow::Result<Self> {
        let mut this = Self { dir: dir.to_owned(), created_dir: false, mounted: None, pins: Vec::new() };
        if !is_bpffs(nearest_existing(dir)) {
            let at = if dir.starts_with(SYS_FS_BPF) { PathBuf::from(SYS_FS_BPF) } else { dir.to_owned() };
            let existed = at.exists();
            mount_bpffs(&at)?;
            log::info!("mounted bpffs at {}", at.display());
            this.mounted = Some((at, !existed));
        }
        if dir.exists() {
            for name in wsfwd_common::abi::map_names::ALL {
                let stale = dir.join(name);
                if stale.exists() {
                    log::warn!("removing {} left by an earlier run", stale.display());
                    std::fs::remove_file(&stale).with_context(|| format!("removing {}", stale.display()))?;
                }
            }
        } else {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            this.created_dir = true;
        }
        Ok(this)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn pin(&mut self, map: &aya::maps::Map, name: &str) -> anyhow::Result<()> {
        let path = self.path(name);
        map.pin(&path).with_context(|| format!("pinning map {name} at {}", path.display()))?;
        self.pins.push(path);
        Ok(())
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        for pin in self.pins.drain(..) {
            if let Err(e) = std::fs::remove_file(&pin) {
                log::warn!("removing {}: {e}", pin.display());
            }
        }
        if self.created_dir {
            let _ = std::fs::remove_dir(&self.dir);
        }
        if let Some((at, created)) = self.mounted.take() {
            let Ok(c) = CString::new(at.as_os_str().as_encoded_bytes()) else { return };
            // SAFETY: a valid path string.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                log::warn!("unmounting {}: {}", at.display(), std::io::Error::last_os_error());
            }
            if created {
                let _ = std::fs::remove_dir(&at);
            }
        }
    }
}
