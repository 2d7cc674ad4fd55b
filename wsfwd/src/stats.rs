//! Reading a running agent's pinned maps: `wsfwd stats` and `wsfwd conntrack`.
use std::{collections::BTreeSet, net::Ipv4Addr, path::Path};

use anyhow::{Context as _, anyhow};
use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use serde::Serialize;
use wsfwd_common::{
    abi::{Counter, DIR_ORIGINAL, FlowEntry, FlowKey, PROTO_TCP, ServiceKey, map_names as names},
    tcp::NO_SCALE,
};

use crate::datapath::gc::monotonic_ns;

/// A map pinned under `dir`, for the commands that read a datapath's state.
pub(crate) fn open(dir: &Path, name: &str) -> anyhow::Result<MapData> {
    let path = dir.join(name);
    MapData::from_pin(&path)
        .with_context(|| format!("opening {} (has a wsfwd agent run with --bpffs {}?)", path.display(), dir.display()))
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
    /// "conntrack" (established gateway flows), "handshake" (gateway flows
    /// not yet established) or "nat" (full-NAT flows).
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
    /// TCP: this direction's sender as the window tracker sees it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpView>,
    pub idle_ms: u64,
}

/// A direction's TCP window, as tracked (sequence numbers as on the wire).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpView {
    /// The next sequence number expected from this sender.
    pub end: u32,
    /// The highest sequence number the peer allows it.
    pub max_end: u32,
    /// The largest window it advertised, scaled.
    pub max_window: u32,
    /// Its window scale; absent when it offered none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<u8>,
}

/// Both directions of every gateway flow (`CONNTRACK`, `HANDSHAKES`) and
/// full-NAT flow (`NAT`); with `only`, of the flows through those frontends.
pub fn flows(dir: &Path, only: Option<&BTreeSet<ServiceKey>>) -> anyhow::Result<Vec<Flow>> {
    let now = monotonic_ns();
    let addr = |a: [u8; 4], p: [u8; 2]| format!("{}:{}", Ipv4Addr::from(a), u16::from_be_bytes(p));
    let mut out = Vec::new();
    for (table, name, lru) in
        [("conntrack", names::CONNTRACK, true), ("handshake", names::HANDSHAKES, true), ("nat", names::NAT, false)]
    {
        let data = open(dir, name)?;
        let map: HashMap<_, FlowKey, FlowEntry> =
            HashMap::try_from(if lru { Map::LruHashMap(data) } else { Map::HashMap(data) })?;
        for item in map.iter() {
            let (k, v) = item.with_context(|| format!("reading {name}"))?;
            if let Some(only) = only {
                // Its frontend: where a request was sent, or what a reply is sent from.
                let (a, p) = if k.dir == DIR_ORIGINAL { (k.daddr, k.dport) } else { (v.to.saddr, v.to.sport) };
                if !only.contains(&ServiceKey { addr: a, port: p, proto: k.proto, _pad: 0 }) {
                    continue;
                }
            }
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
                tcp: (k.proto == PROTO_TCP && v.tcp.known()).then(|| TcpView {
                    end: v.tcp.end,
                    max_end: v.tcp.maxend,
                    max_window: v.tcp.maxwin,
                    scale: (v.tcp.scale != NO_SCALE).then_some(v.tcp.scale),
                }),
                idle_ms: now.saturating_sub(v.last_seen_ns) / 1_000_000,
            });
        }
    }
    Ok(out)
}
