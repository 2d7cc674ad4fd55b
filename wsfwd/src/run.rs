//! `wsfwd run`: forward until told to stop, then remove everything.
use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config,
    datapath::{self, Datapath, gc},
    netif,
};

pub struct RunArgs {
    pub config: PathBuf,
    pub ifaces: Vec<String>,
    pub bpffs: PathBuf,
    pub ct_size: u32,
    pub hash_seed: u32,
    pub timeouts: gc::Timeouts,
    pub gc_interval: Duration,
}

/// How `run` failed: the exit code tells a bad config from a failure to attach.
pub enum RunError {
    Config(config::ConfigErrors),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for RunError {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let cfg = config::load(&args.config).map_err(RunError::Config)?;
    cfg.notes.log();
    let ifaces = netif::resolve(&args.ifaces).map_err(anyhow::Error::msg)?;
    let node_addrs: Vec<_> = ifaces.iter().flat_map(|i| i.addrs.iter().copied()).collect();
    let contents = datapath::contents::compile(&cfg.services, &node_addrs, args.hash_seed).map_err(anyhow::Error::msg)?;
    if netif::ip_forward_enabled() == Some(false) {
        log::warn!("net.ipv4.ip_forward is 0 here: new flows are dropped (no route) and replies are not forwarded");
    }

    let opts = datapath::Options { ct_size: args.ct_size, hash_seed: args.hash_seed, bpffs: &args.bpffs };
    let mut dp = Datapath::start(&contents, &ifaces, &opts)?;
    for line in &contents.summary {
        log::info!("service {line}");
    }
    let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
    log::info!(
        "ready: {} frontends of {} service ports on {} (tc), conntrack {} entries, maps pinned in {}",
        contents.services.len(),
        cfg.services.len(),
        names.join(", "),
        args.ct_size,
        args.bpffs.display()
    );

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut tick = tokio::time::interval(args.gc_interval);
    loop {
        tokio::select! {
            _ = term.recv() => { log::info!("SIGTERM: detaching and unpinning"); break; }
            _ = int.recv() => { log::info!("SIGINT: detaching and unpinning"); break; }
            _ = tick.tick() => collect(&mut dp, &args.timeouts),
        }
    }
    drop(dp);
    log::info!("stopped; nothing of wsfwd is left attached or pinned");
    Ok(())
}

fn collect(dp: &mut Datapath, timeouts: &gc::Timeouts) {
    let ct = dp.conntrack();
    let entries: Vec<_> = ct.iter().filter_map(Result::ok).collect();
    let gone = gc::expired(&entries, gc::monotonic_ns(), timeouts);
    for key in &gone {
        // Already gone (evicted, or removed with its pair) is fine.
        let _ = ct.remove(key);
    }
    if !gone.is_empty() {
        log::debug!("conntrack: removed {} expired entries of {}", gone.len(), entries.len());
    }
}
