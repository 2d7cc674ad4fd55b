//! The real `wsfwd` binary, run in the node namespace.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    netns::Netns,
    sys::{Proc, run},
};

/// The agent binary: `WSFWD_BIN`, else the workspace's debug build.
pub fn binary() -> PathBuf {
    match std::env::var_os("WSFWD_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/wsfwd"),
    }
}

pub struct Agent {
    proc: Proc,
    pub bpffs: PathBuf,
}

/// Runs `wsfwd run` in `ns` (entering only its network namespace, so its
/// pins stay visible to this process) and waits for its "ready" line.
pub fn command(ns: &Netns, config: &Path, bpffs: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", ns.path()))
        .arg(binary())
        .args(["run", "--iface", "n0"])
        .arg("--config")
        .arg(config)
        .arg("--bpffs")
        .arg(bpffs)
        .args(extra)
        .env_remove("RUST_LOG");
    c
}

impl Agent {
    pub fn start(ns: &Netns, dir: &Path, config_yaml: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let config = dir.join("config.yaml");
        std::fs::write(&config, config_yaml)?;
        let bpffs = dir.join("bpf");
        let mut proc = Proc::spawn(&mut command(ns, &config, &bpffs, extra), &dir.join("agent.log"))?;
        proc.wait_for_line("ready", Duration::from_secs(20)).context("wsfwd run did not get ready")?;
        Ok(Self { proc, bpffs })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn log(&self) -> String {
        self.proc.output()
    }

    fn query(&self, what: &str) -> anyhow::Result<serde_json::Value> {
        let out = run(Command::new(binary()).args([what, "--json", "--bpffs"]).arg(&self.bpffs))?;
        serde_json::from_str(&out).with_context(|| format!("wsfwd {what} --json printed {out:?}"))
    }

    /// The datapath's counters by name.
    pub fn stats(&self) -> anyhow::Result<HashMap<String, u64>> {
        let v = self.query("stats")?;
        let obj = v.as_object().context("stats is not an object")?;
        Ok(obj.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
    }

    /// The conntrack entries, as `wsfwd conntrack --json` lists them.
    pub fn flows(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(self.query("conntrack")?.as_array().context("conntrack is not an array")?.clone())
    }

    /// SIGTERM, and the exit status.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.proc.signal(libc::SIGTERM);
        match self.proc.wait_timeout(Duration::from_secs(10)) {
            Some(s) => Ok(s),
            None => bail!("wsfwd did not exit within 10 s of SIGTERM:\n{}", self.proc.output()),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A graceful stop unpins and unmounts; a kill (below) could leave the mount.
        self.proc.signal(libc::SIGTERM);
        if self.proc.wait_timeout(Duration::from_secs(10)).is_none() {
            self.proc.signal(libc::SIGKILL);
        }
        if self.bpffs.exists() {
            let _ = Command::new("umount").arg("-l").arg(&self.bpffs).status();
        }
    }
}
