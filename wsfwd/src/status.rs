//! `wsfwd status` and `wsfwd services`: what the pinned datapath is doing,
//! read from the pinned maps alone, so they answer with or without a
//! running agent.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, Map, MapInfo, PerCpuArray};
use serde::Serialize;
use wsfwd_common::abi::{
    ATTACH_CLSACT, Attachment, BACKEND_F_SNAT, BACKEND_F_TERMINATING, Backend, DIR_ORIGINAL, FlowEntry, FlowKey,
    FlowStatus, FrontendName, LOAD_APPLIED, LOAD_REJECTED, Meta, SOURCE_API_CONNECTING, SOURCE_API_REACHABLE, SOURCE_API_UNREACHABLE, PROTO_TCP, RevNatEntry, RevNatKey, ServiceEntry, ServiceKey, Traffic, TrafficOwner, map_names as names, names_text,
};


use crate::stats::open;

fn hash<K: aya::Pod, V: aya::Pod>(dir: &Path, name: &str) -> anyhow::Result<Vec<(K, V)>> {
    let data = open(dir, name)?;
    let map: HashMap<_, K, V> = match HashMap::try_from(Map::HashMap(data)) {
        Ok(m) => m,
        Err(_) => HashMap::try_from(Map::LruHashMap(open(dir, name)?))?,
    };
    map.iter().collect::<Result<Vec<_>, _>>().with_context(|| format!("reading {name}"))
}

/// Every entry of flow table `name` (`CONNTRACK`, `HANDSHAKES` or `NAT`).
pub fn flow_entries(dir: &Path, name: &str) -> anyhow::Result<Vec<(FlowKey, FlowEntry)>> {
    hash(dir, name)
}


fn addr(a: [u8; 4], p: [u8; 2]) -> String {
    format!("{}:{}", Ipv4Addr::from(a), u16::from_be_bytes(p))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub layout: u32,
    /// The agent that wrote the state last, and whether it is running.
    pub agent_pid: u32,
    pub agent_running: bool,
    pub config_generation: u32,
    /// "file", or the Kubernetes API server's state: "kubernetes API
    /// connecting", "... reachable", "... unreachable".
    pub source: &'static str,
    /// Unix seconds; 0 when no configuration was read since the maps were made.
    pub last_load_unix: u64,
    pub last_load: &'static str,
    pub reloads_applied: u32,
    pub reloads_rejected: u32,
    pub attached: Vec<AttachedIface>,
    /// Map name → entries in use and capacity.
    pub maps: BTreeMap<&'static str, Occupancy>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachedIface {
    pub interface: String,
    pub ifindex: u32,
    pub mode: &'static str,
    /// "native", "generic", or "none" (TC alone).
    pub xdp: &'static str,
    /// "external" (frontend traffic in, replies out) or "endpoints" (replies
    /// of endpoints behind the node in, translated there).
    pub side: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Occupancy {
    pub entries: u64,
    pub capacity: u64,
}

pub fn status(dir: &Path) -> anyhow::Result<Status> {
    let meta: Array<_, Meta> = Array::try_from(Map::Array(open(dir, names::META)?))?;
    let meta = meta.get(&0, 0).context("reading META")?;
    let mut attached: Vec<AttachedIface> = hash::<u32, Attachment>(dir, names::ATTACHED)?
        .into_iter()
        .map(|(ifindex, a)| AttachedIface {
            interface: names_text::decode(&a.name),
            ifindex,
            mode: if a.tc_mode() == ATTACH_CLSACT { "clsact" } else { "tcx" },
            side: if a.endpoint_side() { "endpoints" } else { "external" },
            xdp: match a.xdp {
                wsfwd_common::abi::XDP_NATIVE => "native",
                wsfwd_common::abi::XDP_GENERIC => "generic",
                _ => "none",
            },
        })
        .collect();
    attached.sort_by(|a, b| a.interface.cmp(&b.interface));
    let mut maps = BTreeMap::new();
    for name in [names::SERVICES, names::REVNAT, names::CONNTRACK, names::HANDSHAKES, names::NAT, names::HALF_OPEN] {
        let info = MapInfo::from_pin(dir.join(name)).with_context(|| format!("reading {name}"))?;
        let entries = match name {
            names::SERVICES => hash::<ServiceKey, ServiceEntry>(dir, name)?.len(),
            names::REVNAT => hash::<RevNatKey, RevNatEntry>(dir, name)?.len(),
            names::HALF_OPEN => hash::<[u8; 4], u64>(dir, name)?.len(),
            _ => hash::<FlowKey, FlowEntry>(dir, name)?.len(),
        };
        maps.insert(name, Occupancy { entries: entries as u64, capacity: u64::from(info.max_entries()) });
    }
    // The plan maps: slots of the live tables, and the endpoints they name.
    let tables: BTreeMap<u32, (u32, u32)> = hash::<ServiceKey, ServiceEntry>(dir, names::SERVICES)?
        .into_iter()
        .map(|(_, e)| (e.service_id, (e.table_offset, e.table_size)))
        .collect();
    let maglev: Array<_, u32> = Array::try_from(Map::Array(open(dir, names::MAGLEV)?))?;
    let mut ids = BTreeSet::new();
    for (offset, size) in tables.values() {
        for i in 0..*size {
            ids.insert(maglev.get(&(offset + i), 0).context("reading MAGLEV")?);
        }
    }
    let slots: u64 = tables.values().map(|(_, size)| u64::from(*size)).sum();
    for (name, used) in [(names::MAGLEV, slots), (names::BACKENDS, ids.len() as u64)] {
        let info = MapInfo::from_pin(dir.join(name)).with_context(|| format!("reading {name}"))?;
        maps.insert(name, Occupancy { entries: used, capacity: u64::from(info.max_entries()) });
    }
    let agent_running = meta.agent_pid != 0 && is_wsfwd(meta.agent_pid);
    Ok(Status {
        layout: meta.layout,
        agent_pid: meta.agent_pid,
        agent_running,
        config_generation: meta.generation,
        source: match meta.source {
            SOURCE_API_CONNECTING => "kubernetes API connecting",
            SOURCE_API_REACHABLE => "kubernetes API reachable",
            SOURCE_API_UNREACHABLE => "kubernetes API unreachable (the datapath keeps its last plan)",
            _ => "file",
        },
        last_load_unix: meta.last_load_unix,
        last_load: match meta.last_load {
            LOAD_APPLIED => "applied",
            LOAD_REJECTED => "rejected",
            _ => "none",
        },
        reloads_applied: meta.reloads_applied,
        reloads_rejected: meta.reloads_rejected,
        attached,
        maps,
    })
}

/// Whether process `pid` is a live (not zombie) wsfwd.
fn is_wsfwd(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // "PID (COMM) STATE ...": COMM may hold spaces and parentheses.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].trim_start().chars().next();
    comm == "wsfwd" && !matches!(state, Some('Z' | 'X'))
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(secs: u64) -> String {
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let agent = if s.agent_running { format!("running (pid {})", s.agent_pid) } else { "not running: the datapath forwards on its own".into() };
    out += &format!("agent:      {agent}\n");
    out += &format!("layout:     {}\n", s.layout);
    out += &format!("source:     {}\n", s.source);
    out += &format!("config:     generation {}, last read {} at {}\n", s.config_generation, s.last_load, utc(s.last_load_unix));
    out += &format!("reloads:    {} applied, {} rejected\n", s.reloads_applied, s.reloads_rejected);
    for a in &s.attached {
        let xdp = if a.xdp == "none" { String::new() } else { format!(", {} XDP in front", a.xdp) };
        let side = if a.side == "endpoints" { ", endpoint side: replies translated here" } else { "" };
        out += &format!("attached:   {} ({}{xdp}{side})\n", a.interface, a.mode);
    }
    for (name, o) in &s.maps {
        out += &format!("{:<12}{} of {}\n", format!("{}:", name.to_lowercase()), o.entries, o.capacity);
    }
    out
}

/// An endpoint as flows name it: address and port, as on the wire.
type Endpoint = ([u8; 4], [u8; 2]);

/// One frontend and where its flows go, as `ipvsadm -Ln` lists a virtual service.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendView {
    pub service: String,
    pub protocol: &'static str,
    pub frontend: String,
    /// "client address" or "5-tuple".
    pub hash: &'static str,
    pub table_size: u32,
    pub flows: u64,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    pub endpoint: String,
    /// "active": takes new flows; "terminating": takes them only because no
    /// endpoint is ready; "draining": only its own flows.
    pub state: &'static str,
    pub full_nat: bool,
    pub slots: u32,
    pub flows: u64,
}

/// Every frontend with its endpoints and live flow counts (a flow counts
/// once, by its original direction; closing flows — RST, or FIN both ways —
/// are not counted).
pub fn services(dir: &Path) -> anyhow::Result<Vec<FrontendView>> {
    let services = hash::<ServiceKey, ServiceEntry>(dir, names::SERVICES)?;
    let names_by_key: BTreeMap<ServiceKey, String> =
        hash::<ServiceKey, FrontendName>(dir, names::FRONTEND_NAMES)?.into_iter().map(|(k, v)| (k, names_text::decode(&v.0))).collect();
    let backends: Array<_, Backend> = Array::try_from(Map::Array(open(dir, names::BACKENDS)?))?;
    let maglev: Array<_, u32> = Array::try_from(Map::Array(open(dir, names::MAGLEV)?))?;
    // (frontend, endpoint) → live flows (not closing), and whether it is full NAT.
    let mut flows: BTreeMap<(ServiceKey, Endpoint), (u64, bool)> = BTreeMap::new();
    for (name, nat) in [(names::CONNTRACK, false), (names::HANDSHAKES, false), (names::NAT, true)] {
        let entries: std::collections::HashMap<FlowKey, FlowEntry> = hash::<FlowKey, FlowEntry>(dir, name)?.into_iter().collect();
        for (k, v) in &entries {
            if k.dir != DIR_ORIGINAL {
                continue;
            }
            let other = entries.get(&k.counterpart(&v.to)).map(|o| &o.state);
            if FlowStatus::of(&v.state, other).closing {
                continue;
            }
            let frontend = ServiceKey { addr: k.daddr, port: k.dport, proto: k.proto, _pad: 0 };
            let e = flows.entry((frontend, (v.to.daddr, v.to.dport))).or_default();
            e.0 += 1;
            e.1 |= nat;
        }
    }
    let mut out = Vec::new();
    for (key, entry) in services {
        let mut slots: BTreeMap<([u8; 4], [u8; 2]), (u32, Backend)> = BTreeMap::new();
        for i in 0..entry.table_size {
            let id = maglev.get(&(entry.table_offset + i), 0).context("reading MAGLEV")?;
            let b = backends.get(&id, 0).context("reading BACKENDS")?;
            slots.entry((b.addr, b.port)).or_insert((0, b)).0 += 1;
        }
        let mut endpoints: Vec<EndpointView> = slots
            .iter()
            .map(|(ep, (n, b))| EndpointView {
                endpoint: addr(ep.0, ep.1),
                state: if b.flags & BACKEND_F_TERMINATING != 0 { "terminating" } else { "active" },
                full_nat: b.flags & BACKEND_F_SNAT != 0,
                slots: *n,
                flows: flows.get(&(key, *ep)).map_or(0, |f| f.0),
            })
            .collect();
        let in_table: BTreeSet<_> = slots.keys().copied().collect();
        for ((f, ep), (n, nat)) in flows.range((key, ([0; 4], [0; 2]))..) {
            if *f != key {
                break;
            }
            if !in_table.contains(ep) {
                endpoints.push(EndpointView { endpoint: addr(ep.0, ep.1), state: "draining", full_nat: *nat, slots: 0, flows: *n });
            }
        }
        out.push(FrontendView {
            service: names_by_key.get(&key).cloned().unwrap_or_default(),
            protocol: if key.proto == PROTO_TCP { "TCP" } else { "UDP" },
            frontend: addr(key.addr, key.port),
            hash: if entry.flags & wsfwd_common::abi::SVC_F_HASH_CLIENT != 0 { "client address" } else { "5-tuple" },
            table_size: entry.table_size,
            flows: endpoints.iter().map(|e| e.flows).sum(),
            endpoints,
        });
    }
    out.sort_by(|a, b| (&a.service, &a.frontend).cmp(&(&b.service, &b.frontend)));
    Ok(out)
}

/// What went through one endpoint of one service port, summed over CPUs;
/// bytes are IPv4 bytes (headers included). In: to the endpoint; out: its replies.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficView {
    pub service: String,
    pub endpoint: String,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
}

/// Traffic of every endpoint of every service port, by service and endpoint
/// (`TRAFFIC`, named by `TRAFFIC_OWNERS`). An endpoint keeps counting while
/// its flows drain; it starts from zero when it leaves and comes back after
/// its last flow ended.
pub fn traffic(dir: &Path) -> anyhow::Result<Vec<TrafficView>> {
    let owners = hash::<u32, TrafficOwner>(dir, names::TRAFFIC_OWNERS)?;
    let counts: PerCpuArray<_, Traffic> = PerCpuArray::try_from(Map::PerCpuArray(open(dir, names::TRAFFIC)?))?;
    let mut out = Vec::with_capacity(owners.len());
    for (slot, o) in owners {
        let per_cpu = counts.get(&slot, 0).context("reading TRAFFIC")?;
        let mut v = TrafficView { service: names_text::decode(&o.service.0), endpoint: addr(o.addr, o.port), ..TrafficView::default() };
        for t in per_cpu.iter() {
            v.packets_in += t.packets_in;
            v.bytes_in += t.bytes_in;
            v.packets_out += t.packets_out;
            v.bytes_out += t.bytes_out;
        }
        out.push(v);
    }
    out.sort_by(|a, b| (&a.service, &a.endpoint).cmp(&(&b.service, &b.endpoint)));
    Ok(out)
}

/// `wsfwd services --stats`, in the spirit of `ipvsadm -Ln --stats`.
pub fn render_traffic(rows: &[TrafficView]) -> String {
    let mut out = format!("{:<40} {:>12} {:>12} {:>14} {:>14}\n", "Service", "InPkts", "OutPkts", "InBytes", "OutBytes");
    out += "  -> Endpoint\n";
    let mut last: Option<&str> = None;
    for r in rows {
        if last != Some(r.service.as_str()) {
            let of = rows.iter().filter(|x| x.service == r.service);
            let sum = |f: fn(&TrafficView) -> u64| of.clone().map(f).sum::<u64>();
            out += &format!(
                "{:<40} {:>12} {:>12} {:>14} {:>14}\n",
                r.service,
                sum(|x| x.packets_in),
                sum(|x| x.packets_out),
                sum(|x| x.bytes_in),
                sum(|x| x.bytes_out)
            );
            last = Some(&r.service);
        }
        out += &format!(
            "  -> {:<35} {:>12} {:>12} {:>14} {:>14}\n",
            r.endpoint, r.packets_in, r.packets_out, r.bytes_in, r.bytes_out
        );
    }
    out
}

pub fn render_services(frontends: &[FrontendView]) -> String {
    let mut out = String::from("Prot Frontend              Service / scheduling                     Flows\n");
    out += "  -> Endpoint              State        Slots      Flows\n";
    for f in frontends {
        let sched = format!("{} (maglev {}, by {})", f.service, f.table_size, f.hash);
        out += &format!("{:<4} {:<21} {:<40} {:>5}\n", f.protocol, f.frontend, sched, f.flows);
        for e in &f.endpoints {
            let state = if e.full_nat { format!("{} nat", e.state) } else { e.state.to_owned() };
            out += &format!("  -> {:<21} {:<12} {:>5} {:>10}\n", e.endpoint, state, e.slots, e.flows);
        }
    }
    out
}

/// The frontends of service port `service` (`namespace/name:port`), or of
/// every port of `namespace/name`.
pub fn frontends_of(dir: &Path, service: &str) -> anyhow::Result<BTreeSet<ServiceKey>> {
    let found: BTreeSet<ServiceKey> = hash::<ServiceKey, FrontendName>(dir, names::FRONTEND_NAMES)?
        .into_iter()
        .filter(|(_, v)| {
            let name = names_text::decode(&v.0);
            name == service || name.split_once(':').is_some_and(|(n, _)| n == service)
        })
        .map(|(k, _)| k)
        .collect();
    anyhow::ensure!(!found.is_empty(), "no service {service} (give namespace/name or namespace/name:port)");
    Ok(found)
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(super::utc(1_795_784_461), "2026-11-27 13:01:01 UTC");
    }
}
