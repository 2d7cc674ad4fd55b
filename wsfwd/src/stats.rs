//! Reading a running agent's pinned maps: `wsfwd stats` and `wsfwd conntrack`.
use std::{net::Ipv4Addr, path::Path};

use anyhow::{Context as _, anyhow};
use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use serde::Serialize;
use wsfwd_common::abi::{Counter, DIR_ORIGINAL, FlowEntry, FlowKey, PROTO_TCP, map_names as names};

use crate::datapath::gc::monotonic_ns;

fn open(dir: &Path, name: &str) -> anyhow::Result<MapData> {
    let path = dir.join(name);
    MapData::from_pin(&path)
        .with_context(|| format!("opening {} (is `wsfwd run --bpffs {}` running?)", path.display(), dir.display()))
}

/// Every counter, summed over CPUs, in `Counter` order.
pub fn counters(dir: &Path) -> anyhow::Result<Vec<(&'static str, u64)>> {
    let map: PerCpuArray<_, u64> = PerCpuArray::try_from(Map::PerCpuArray(open(dir, names::COUNTERS)?))?;
    Counter::ALL
        .iter()
        .map(|&c| {
            let per_cpu = map.get(&(c as u32), 0).map_err(|e| anyhow!("reading counter {}: {e}", c.name()))?;
            Ok((c.name(), per_cpu.iter().sum()))
        })
        .collect()
}

/// One direction of a tracked flow, as a person reads it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Flow {
    /// "conntrack" (gateway flows) or "nat" (full-NAT flows).
    pub table: &'static str,
    pub direction: &'static str,
    pub protocol: &'static str,
    /// As the packet arrives...
    pub source: String,
    pub destination: String,
    /// ...and as it leaves.
    pub new_source: String,
    pub new_destination: String,
    /// What this direction has shown: "handshake", "fin", "rst", "liberal".
    pub state: Vec<&'static str>,
    pub idle_ms: u64,
}

/// Both directions of every gateway flow (`CONNTRACK`) and full-NAT flow (`NAT`).
pub fn flows(dir: &Path) -> anyhow::Result<Vec<Flow>> {
    let now = monotonic_ns();
    let addr = |a: [u8; 4], p: [u8; 2]| format!("{}:{}", Ipv4Addr::from(a), u16::from_be_bytes(p));
    let mut out = Vec::new();
    for (table, name, lru) in [("conntrack", names::CONNTRACK, true), ("nat", names::NAT, false)] {
        let data = open(dir, name)?;
        let map: HashMap<_, FlowKey, FlowEntry> =
            HashMap::try_from(if lru { Map::LruHashMap(data) } else { Map::HashMap(data) })?;
        for item in map.iter() {
            let (k, v) = item.with_context(|| format!("reading {name}"))?;
            out.push(Flow {
                table,
                direction: if k.dir == DIR_ORIGINAL { "original" } else { "reply" },
                protocol: if k.proto == PROTO_TCP { "TCP" } else { "UDP" },
                source: addr(k.saddr, k.sport),
                destination: addr(k.daddr, k.dport),
                new_source: addr(v.to.saddr, v.to.sport),
                new_destination: addr(v.to.daddr, v.to.dport),
                state: [
                    (v.state.handshake, "handshake"),
                    (v.state.fin, "fin"),
                    (v.state.rst, "rst"),
                    (v.state.liberal, "liberal"),
                ]
                .into_iter()
                .filter(|(set, _)| *set != 0)
                .map(|(_, name)| name)
                .collect(),
                idle_ms: now.saturating_sub(v.last_seen_ns) / 1_000_000,
            });
        }
    }
    Ok(out)
}
