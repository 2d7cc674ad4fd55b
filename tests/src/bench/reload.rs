//! The reload section: how long a config change takes to be live, and what
//! reloads do to WebSocket latency.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{HashMap, Map, MapData};
use hdrhistogram::Histogram;
use wsfwd_common::abi::{PROTO_TCP, ServiceEntry, ServiceKey};

use super::{
    contenders::{WS_PORT, backends, scale_vip, wsfwd_config_with},
    load,
    results::Reload,
    run::Sizes,
};
use crate::{
    agent::Agent,
    topo::{Topo, VIP},
};

/// The `SERVICES` entry of a frontend, read straight from the pinned map.
fn entry(bpffs: &Path, frontend: SocketAddrV4) -> anyhow::Result<Option<ServiceEntry>> {
    let map: HashMap<_, ServiceKey, ServiceEntry> =
        HashMap::try_from(Map::HashMap(MapData::from_pin(bpffs.join("SERVICES")).context("opening SERVICES")?))?;
    let key = ServiceKey { addr: frontend.ip().octets(), port: frontend.port().to_be_bytes(), proto: PROTO_TCP, _pad: 0 };
    Ok(map.get(&key, 0).ok())
}

/// Writes `text` over the agent's config (a rename, as editors do) and
/// returns how long until `frontend`'s entry differs from what it was.
fn timed_change(agent: &Agent, text: &str, frontend: SocketAddrV4) -> anyhow::Result<Duration> {
    let before = entry(&agent.bpffs, frontend)?;
    let path = agent.config_path();
    let tmp = path.with_extension("next");
    std::fs::write(&tmp, text)?;
    let start = Instant::now();
    std::fs::rename(&tmp, path)?;
    loop {
        if entry(&agent.bpffs, frontend)? != before {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(30), "the change was not live within 30 s:\n{}", agent.log());
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Alternates one endpoint in and out of the "ws" service `n` times.
fn one_changes(agent: &Agent, all: &[Ipv4Addr], extra: usize, n: usize) -> anyhow::Result<Histogram<u64>> {
    let mut h = Histogram::<u64>::new(3)?;
    for i in 0..n {
        let ws = if i % 2 == 0 { &all[..all.len() - 1] } else { all };
        let d = timed_change(agent, &wsfwd_config_with(extra, ws, all), SocketAddrV4::new(VIP, WS_PORT))?;
        h.record(d.as_micros() as u64)?;
    }
    Ok(h)
}

pub async fn reload(t: &Topo, sizes: &Sizes, dir: &Path) -> anyhow::Result<Reload> {
    let all = backends(t);
    let mut r = Reload::default();
    // Small file: two services.
    let agent = Agent::start(&t.node, dir, &wsfwd_config_with(0, &all, &all), &["--metrics-addr", "none"])?;
    let h = tokio::task::block_in_place(|| one_changes(&agent, &all, 0, sizes.reload_changes))?;
    r.one_change_count = sizes.reload_changes;
    r.one_change_p50_ms = ms(&h, 0.5);
    r.one_change_p99_ms = ms(&h, 0.99);

    // Echo latency, quiet and while reloads happen.
    let target = |_| SocketAddrV4::new(VIP, WS_PORT);
    let conns = load::open(&t.client, &t.clients, &target, sizes.connections).await?;
    let quiet = load::echo_run(conns, sizes.rate, 64, sizes.warmup, sizes.echo_time).await?;
    r.echo_p99_us_quiet = quiet.hist.value_at_quantile(0.99) as f64;
    let conns = load::open(&t.client, &t.clients, &target, sizes.connections).await?;
    let reloads = sizes.reload_changes;
    let spacing = (sizes.warmup + sizes.echo_time) / reloads as u32;
    let changer = {
        let (all, path) = (all.clone(), agent.config_path().to_owned());
        std::thread::spawn(move || -> anyhow::Result<()> {
            for i in 0..reloads {
                std::thread::sleep(spacing);
                let ws = if i % 2 == 0 { &all[..all.len() - 1] } else { &all[..] };
                let tmp = path.with_extension("next");
                std::fs::write(&tmp, wsfwd_config_with(0, ws, &all))?;
                std::fs::rename(&tmp, &path)?;
            }
            Ok(())
        })
    };
    let busy = load::echo_run(conns, sizes.rate, 64, sizes.warmup, sizes.echo_time).await?;
    changer.join().map_err(|_| anyhow::anyhow!("the reloading thread panicked"))??;
    r.echo_p99_us_reloading = busy.hist.value_at_quantile(0.99) as f64;
    r.reloads_during_echo = reloads;
    r.echo_errors = busy.errors;
    drop(agent);

    // Big file: one change, then all services changed at once.
    let extra = sizes.reload_big_services.saturating_sub(2);
    r.big_services = extra + 2;
    let big_dir = dir.join("big");
    std::fs::create_dir_all(&big_dir)?;
    let agent = Agent::start(&t.node, &big_dir, &wsfwd_config_with(extra, &all, &all), &["--metrics-addr", "none"])?;
    let h = tokio::task::block_in_place(|| one_changes(&agent, &all, extra, sizes.reload_big_changes))?;
    r.big_one_change_p50_ms = ms(&h, 0.5);
    r.big_one_change_p99_ms = ms(&h, 0.99);
    // Every extra service loses an endpoint: watch the last one switch.
    let last = SocketAddrV4::new(scale_vip(extra.saturating_sub(1)), WS_PORT);
    let d = tokio::task::block_in_place(|| timed_change(&agent, &wsfwd_config_with(extra, &all, &all[..all.len() - 1]), last))?;
    r.big_all_changed_ms = d.as_secs_f64() * 1000.0;
    Ok(r)
}
