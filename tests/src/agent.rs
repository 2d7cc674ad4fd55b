//! The real `wsfwd` binary, run in the node namespace.
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};

use crate::{
    netns::Netns,
    sys::{Proc, run},
};

/// The agent binary: `WSFWD_BIN`, else the workspace's debug build. A binary
/// older than any source it is built from is refused: the tests would judge
/// code that is no longer there.
pub fn binary() -> PathBuf {
    static FRESH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let checked = FRESH.get_or_init(|| {
        let bin = match std::env::var_os("WSFWD_BIN") {
            Some(p) => PathBuf::from(p),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/wsfwd"),
        };
        check_fresh(&bin).map(|()| bin).map_err(|e| format!("{e:#}"))
    });
    match checked {
        Ok(bin) => bin.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// Another build of the agent, whose programs differ (`build-variant`):
/// `WSFWD_VARIANT_BIN`, else `wsfwd-variant` beside the workspace's debug
/// build (`cargo xtask test` builds it). Refused when stale, like `binary`.
pub fn variant_binary() -> PathBuf {
    let bin = match std::env::var_os("WSFWD_VARIANT_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/wsfwd-variant"),
    };
    if let Err(e) = check_fresh(&bin) {
        panic!("{e:#} (the variant build: WSFWD_EBPF_FEATURES=build-variant cargo build -p wsfwd, copied to {})", bin.display());
    }
    bin
}

/// The agent's sources: its own, the eBPF programs it embeds, the shared ABI.
const AGENT_SOURCES: [&str; 4] = ["wsfwd/src", "wsfwd/build.rs", "wsfwd-ebpf/src", "wsfwd-common/src"];

fn check_fresh(bin: &Path) -> anyhow::Result<()> {
    let built = std::fs::metadata(bin)
        .and_then(|m| m.modified())
        .with_context(|| format!("agent binary {}: build it with `cargo build -p wsfwd` or run `cargo xtask test`", bin.display()))?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut todo: Vec<PathBuf> = AGENT_SOURCES.iter().map(|s| root.join(s)).collect();
    while let Some(path) = todo.pop() {
        let meta = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                todo.push(entry?.path());
            }
        } else {
            let t = meta.modified()?;
            if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                newest = Some((t, path));
            }
        }
    }
    match newest {
        Some((t, source)) if t > built => bail!(
            "stale agent binary {}: {} changed after it was built; rebuild it (`cargo build -p wsfwd`) or run `cargo xtask test`",
            bin.display(),
            source.display()
        ),
        _ => Ok(()),
    }
}

pub struct Agent {
    proc: Proc,
    pub bpffs: PathBuf,
    config: PathBuf,
    /// Where it reads its services: `--config FILE`, or `--kubernetes --kubeconfig FILE`.
    source: Vec<OsString>,
    dir: PathBuf,
    /// The network namespace it runs in (its path).
    net: PathBuf,
    /// How many agents ran before this one on the same pin directory.
    generation: u32,
    /// Another agent took the datapath over: leave it be when dropped.
    handed_over: bool,
}

/// A datapath left running by an agent that was stopped (`Agent::halt`).
/// Dropped without `resume`, it is removed.
pub struct Halted {
    dir: PathBuf,
    config: PathBuf,
    source: Vec<OsString>,
    net: PathBuf,
    generation: u32,
}

impl Halted {
    /// Starts an agent over the running datapath (same config and pins).
    pub fn resume(self, ns: &Netns, extra: &[&str]) -> anyhow::Result<Agent> {
        self.resume_with(&binary(), ns, extra)
    }

    /// `resume` with another build of the agent.
    pub fn resume_with(self, bin: &Path, ns: &Netns, extra: &[&str]) -> anyhow::Result<Agent> {
        let this = std::mem::ManuallyDrop::new(self);
        Agent::spawn(bin, ns, &this.dir, this.config.clone(), this.source.clone(), this.generation + 1, extra)
    }
}

impl Drop for Halted {
    fn drop(&mut self) {
        let bpffs = self.dir.join("bpf");
        let _ = cleanup(&self.net, &bpffs);
        let _ = Command::new("umount").arg("-l").arg(&bpffs).status();
    }
}

/// How `Agent::halt` stops the running agent.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    Kill,
    Term,
}

/// Runs `wsfwd run` in `ns` (entering only its network namespace, so its
/// pins stay visible to this process) and waits for its "ready" line.
pub fn command(ns: &Netns, config: &Path, bpffs: &Path, extra: &[&str]) -> Command {
    command_of(&binary(), ns, &file_source(config), bpffs, extra)
}

fn file_source(config: &Path) -> Vec<OsString> {
    vec!["--config".into(), config.into()]
}

fn command_of(bin: &Path, ns: &Netns, source: &[OsString], bpffs: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", ns.path()))
        .arg(bin)
        .args(["run", "--iface", "n0"])
        .args(source)
        .arg("--bpffs")
        .arg(bpffs)
        .args(extra)
        .env_remove("RUST_LOG");
    // The whole suite runs once per hook: `WSFWD_TEST_ATTACH=xdp` puts XDP in
    // front of TC in every test that does not choose for itself.
    if let Some(hook) = attach_under_test() {
        if !extra.contains(&"--attach") {
            c.args(["--attach", &hook]);
        }
    }
    c
}

/// The hook the suite runs under (`WSFWD_TEST_ATTACH`), if not the default.
pub fn attach_under_test() -> Option<String> {
    std::env::var("WSFWD_TEST_ATTACH").ok().filter(|h| !h.is_empty())
}

impl Agent {
    pub fn start(ns: &Netns, dir: &Path, config_yaml: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let config = dir.join("config.yaml");
        std::fs::write(&config, config_yaml)?;
        let source = file_source(&config);
        Self::spawn(&binary(), ns, dir, config, source, 0, extra)
    }

    /// `start` in DaemonSet mode: services from the API server `kubeconfig` names.
    pub fn start_kube(ns: &Netns, dir: &Path, kubeconfig: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let source = vec!["--kubernetes".into(), "--kubeconfig".into(), kubeconfig.into()];
        Self::spawn(&binary(), ns, dir, kubeconfig.to_owned(), source, 0, extra)
    }

    fn spawn(bin: &Path, ns: &Netns, dir: &Path, config: PathBuf, source: Vec<OsString>, generation: u32, extra: &[&str]) -> anyhow::Result<Self> {
        let bpffs = dir.join("bpf");
        let log = dir.join(if generation == 0 { "agent.log".to_owned() } else { format!("agent-{generation}.log") });
        let mut proc = Proc::spawn(&mut command_of(bin, ns, &source, &bpffs, extra), &log)?;
        proc.wait_for_line("ready", Duration::from_secs(20)).context("wsfwd run did not get ready")?;
        Ok(Self { proc, bpffs, config, source, dir: dir.to_owned(), net: ns.path().into(), generation, handed_over: false })
    }

    /// Stops this agent as `how` says, leaving the datapath running; `resume`
    /// starts another over it.
    pub fn halt(mut self, how: Stop) -> anyhow::Result<Halted> {
        match how {
            Stop::Kill => self.proc.signal(libc::SIGKILL),
            Stop::Term => self.proc.signal(libc::SIGTERM),
        }
        let status = self.proc.wait_timeout(Duration::from_secs(10));
        let Some(status) = status else { bail!("wsfwd did not exit after {how:?}:\n{}", self.proc.output()) };
        if let Stop::Term = how {
            anyhow::ensure!(status.success(), "wsfwd exited {status} on SIGTERM:\n{}", self.proc.output());
        }
        self.handed_over = true;
        Ok(Halted { dir: self.dir.clone(), config: self.config.clone(), source: self.source.clone(), net: self.net.clone(), generation: self.generation })
    }

    /// The tags of the programs this agent loaded, as its log says.
    pub fn program_tags(&self) -> BTreeSet<String> {
        self.log().lines().filter_map(|l| l.split(", tag ").nth(1)).map(|t| t.trim().to_owned()).collect()
    }

    /// The ids of the programs this agent loaded.
    pub fn program_ids(&self) -> ProgramIds {
        program_ids_in(&self.log())
    }

    /// The config file the agent watches.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn signal(&self, sig: i32) {
        self.proc.signal(sig);
    }

    pub fn log(&self) -> String {
        self.proc.output()
    }

    /// Waits until the agent's log has `n` lines containing `text`.
    pub fn wait_for_log(&self, text: &str, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.log().lines().filter(|l| l.contains(text)).count() >= n {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("no {n}th log line with {text:?} within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn query(&self, what: &str) -> anyhow::Result<serde_json::Value> {
        let out = run(Command::new(binary()).args([what, "--json", "--bpffs"]).arg(&self.bpffs))?;
        serde_json::from_str(&out).with_context(|| format!("wsfwd {what} --json printed {out:?}"))
    }

    /// The datapath's counters by name. Every counter must be there as a
    /// number: a renamed counter or a changed shape is an error, never a 0.
    pub fn stats(&self) -> anyhow::Result<Counters> {
        let v = self.query("stats")?;
        let obj = v.as_object().with_context(|| format!("wsfwd stats --json is not an object: {v}"))?;
        let mut out = BTreeMap::new();
        for (k, v) in obj {
            let n = v.as_u64().with_context(|| format!("counter {k} is not a number: {v}"))?;
            out.insert(k.clone(), n);
        }
        Ok(Counters(out))
    }

    /// The tracked flows, as `wsfwd conntrack --json` lists them; a missing
    /// or renamed field is an error.
    pub fn flows(&self) -> anyhow::Result<Vec<Flow>> {
        let v = self.query("conntrack")?;
        serde_json::from_value(v.clone()).with_context(|| format!("wsfwd conntrack --json: unexpected shape: {v}"))
    }

    /// `wsfwd services --json`, typed.
    pub fn services(&self) -> anyhow::Result<Vec<FrontendView>> {
        let v = self.query("services")?;
        serde_json::from_value(v.clone()).with_context(|| format!("wsfwd services --json: unexpected shape: {v}"))
    }

    /// `wsfwd services --stats --json`, typed.
    pub fn traffic(&self) -> anyhow::Result<Vec<TrafficView>> {
        let out = run(Command::new(binary()).args(["services", "--stats", "--json", "--bpffs"]).arg(&self.bpffs))?;
        serde_json::from_str(&out).with_context(|| format!("wsfwd services --stats --json printed {out:?}"))
    }

    /// `wsfwd status --json`.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        self.query("status")
    }

    /// `wsfwd conntrack --json --service NAME`.
    pub fn flows_of(&self, service: &str) -> anyhow::Result<Vec<Flow>> {
        let out = run(Command::new(binary()).args(["conntrack", "--json", "--service", service, "--bpffs"]).arg(&self.bpffs))?;
        serde_json::from_str(&out).with_context(|| format!("wsfwd conntrack --service printed {out:?}"))
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

/// A BPF link the agent pinned under `<bpffs>/links/` (its TCX and XDP
/// attachments), as the kernel describes it. Read through the test's own pins,
/// so another wsfwd on the machine never counts. `tc filter show` and Debian's
/// `bpftool net show` do not list TCX attachments, so this is what proves
/// attachment, replacement and detachment on kernels that use TCX.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PinnedLink {
    /// The pin's name: `<iface>-<hook>`.
    pub pin: String,
    pub id: u64,
    pub prog: u64,
}

/// The links pinned under `bpffs`, by pin name; none if there is no such directory.
pub fn pinned_links(bpffs: &Path) -> Vec<PinnedLink> {
    let Ok(dir) = std::fs::read_dir(bpffs.join("links")) else { return Vec::new() };
    let mut out: Vec<PinnedLink> = dir
        .filter_map(Result::ok)
        .map(|e| {
            let path = e.path();
            let shown = run(Command::new("bpftool").args(["link", "show", "pinned"]).arg(&path).arg("-j")).unwrap();
            let v: serde_json::Value = serde_json::from_str(&shown).unwrap_or_else(|e| panic!("bpftool link show printed no JSON ({e}): {shown}"));
            let field = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{}: no {k} in {v}", path.display()));
            PinnedLink { pin: e.file_name().to_string_lossy().into_owned(), id: field("id"), prog: field("prog_id") }
        })
        .collect();
    out.sort();
    out
}

/// Whether the kernel still holds BPF link `id`.
pub fn link_exists(id: u64) -> bool {
    Command::new("bpftool").args(["link", "show", "id", &id.to_string()]).output().is_ok_and(|o| o.status.success())
}

/// Whether the kernel still holds program `id`.
pub fn program_exists(id: u64) -> bool {
    Command::new("bpftool").args(["prog", "show", "id", &id.to_string()]).output().is_ok_and(|o| o.status.success())
}

/// The ids of the programs an agent loaded (from its log, so only its own).
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgramIds {
    pub tc_ingress: Option<u64>,
    pub tc_egress: Option<u64>,
    pub from_endpoints: Option<u64>,
    pub xdp: Option<u64>,
}

impl ProgramIds {
    pub fn all(&self) -> Vec<u64> {
        [self.tc_ingress, self.tc_egress, self.from_endpoints, self.xdp].into_iter().flatten().collect()
    }
}

/// The ids of the programs an agent's log says it loaded (its "program id"
/// lines; the last of each).
pub fn program_ids_in(log: &str) -> ProgramIds {
    let mut ids = ProgramIds::default();
    for line in log.lines() {
        let Some((name, rest)) = line.split_once(": program id ") else { continue };
        let Some(id) = rest.split(',').next().and_then(|n| n.trim().parse().ok()) else { continue };
        let slot = match name.rsplit(' ').next().unwrap_or(name) {
            "wsfwd_tc_ingress" => &mut ids.tc_ingress,
            "wsfwd_tc_egress" => &mut ids.tc_egress,
            "wsfwd_tc_from_endpoints" => &mut ids.from_endpoints,
            "wsfwd_xdp_ingress" => &mut ids.xdp,
            _ => continue,
        };
        *slot = Some(id);
    }
    ids
}

/// The kernel's tag of program `id` (a hash of its instructions), as bpftool prints it.
pub fn program_tag(id: u64) -> String {
    let out = run(Command::new("bpftool").args(["prog", "show", "id", &id.to_string(), "-j"])).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("bpftool prog show printed no JSON ({e}): {out}"));
    v["tag"].as_str().unwrap_or_else(|| panic!("no tag: {v}")).to_owned()
}

/// wsfwd's clsact filters on `iface` in `ns`, as (hook and priority, program
/// id): what `tc filter show` lists.
pub fn clsact_filters(ns: &Netns, iface: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for hook in ["ingress", "egress"] {
        let text = ns.exec(&["tc", "filter", "show", "dev", iface, hook]).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("wsfwd_tc")) {
            let after = |word: &str| {
                let mut it = line.split_whitespace().skip_while(|w| *w != word);
                it.nth(1).map(str::to_owned)
            };
            let (Some(pref), Some(id)) = (after("pref"), after("id")) else { continue };
            out.push((format!("{hook} pref {pref}"), id.parse().unwrap_or(0)));
        }
    }
    out
}

/// `wsfwd cleanup --bpffs DIR` in network namespace `net` (a path): its
/// output, failing on a non-zero exit.
pub fn cleanup(net: &Path, bpffs: &Path) -> anyhow::Result<String> {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", net.display())).arg(binary()).arg("cleanup").arg("--bpffs").arg(bpffs);
    run(&mut c)
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.handed_over {
            return;
        }
        self.proc.signal(libc::SIGTERM);
        if self.proc.wait_timeout(Duration::from_secs(10)).is_none() {
            self.proc.signal(libc::SIGKILL);
        }
        // The datapath outlives the agent: remove it, then the bpffs the agent mounted.
        let _ = cleanup(&self.net, &self.bpffs);
        if self.bpffs.exists() {
            let _ = Command::new("umount").arg("-l").arg(&self.bpffs).status();
        }
    }
}

/// A frontend as `wsfwd services --json` prints it (written out here, not
/// shared with the agent: scripts read this JSON).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FrontendView {
    pub service: String,
    pub protocol: String,
    pub frontend: String,
    pub hash: String,
    pub table_size: u32,
    pub flows: u64,
    pub endpoints: Vec<EndpointView>,
}

/// One row of `wsfwd services --stats --json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficView {
    pub service: String,
    pub endpoint: String,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointView {
    pub endpoint: String,
    /// "active", "terminating" or "draining".
    pub state: String,
    pub full_nat: bool,
    pub slots: u32,
    pub flows: u64,
}

impl FrontendView {
    /// Flows and state by endpoint address (port dropped).
    pub fn by_address(&self) -> BTreeMap<String, (String, u64)> {
        self.endpoints
            .iter()
            .map(|e| (e.endpoint.split(':').next().unwrap_or_default().to_owned(), (e.state.clone(), e.flows)))
            .collect()
    }
}

/// One direction of a tracked flow, as `wsfwd conntrack --json` prints it.
/// Written out here rather than shared with the agent: this is the JSON
/// users' scripts read, and a change to it should fail a test.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Flow {
    /// "conntrack" or "nat".
    pub table: String,
    /// "original" or "reply".
    pub direction: String,
    pub protocol: String,
    pub source: String,
    pub destination: String,
    pub new_source: String,
    pub new_destination: String,
    /// "handshake", "fin", "rst", "liberal".
    pub state: Vec<String>,
    pub tcp: Option<TcpView>,
    pub idle_ms: u64,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpView {
    pub end: u32,
    pub max_end: u32,
    pub max_window: u32,
    pub scale: Option<u8>,
}

/// Counters by name, as `wsfwd stats --json` printed them. Indexing a name
/// the agent did not print panics with the names it did print.
#[derive(Debug, Clone)]
pub struct Counters(BTreeMap<String, u64>);

impl Counters {
    pub fn get(&self, name: &str) -> u64 {
        match self.0.get(name) {
            Some(&n) => n,
            None => {
                let known: Vec<&str> = self.0.keys().map(String::as_str).collect();
                panic!("no counter {name:?} in wsfwd stats; it has {known:?}")
            }
        }
    }

    /// How much each counter grew since `before`.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters(self.0.iter().map(|(k, &v)| (k.clone(), v - before.get(k))).collect())
    }
}

impl IntoIterator for Counters {
    type Item = (String, u64);
    type IntoIter = std::collections::btree_map::IntoIter<String, u64>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl std::ops::Index<&str> for Counters {
    type Output = u64;

    fn index(&self, name: &str) -> &u64 {
        self.get(name);
        &self.0[name]
    }
}
