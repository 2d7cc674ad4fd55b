//! The conntrack collector. The datapath only records when each direction of
//! a flow was last seen and how TCP ended; here flows whose time is up are
//! removed, both directions together.
use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use wsfwd_common::abi::{DIR_ORIGINAL, FlowEntry, FlowKey, FlowStatus, PROTO_TCP, PROTO_UDP};

/// How long a flow may stay idle, by state.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Established TCP.
    pub tcp: Duration,
    /// TCP whose handshake has not completed.
    pub tcp_syn: Duration,
    /// TCP after RST, or after FIN both ways.
    pub tcp_fin: Duration,
    pub udp: Duration,
}

impl Timeouts {
    fn for_flow(&self, proto: u8, status: FlowStatus) -> Duration {
        if proto == PROTO_UDP {
            self.udp
        } else if status.closing {
            self.tcp_fin
        } else if !status.established {
            self.tcp_syn
        } else {
            self.tcp
        }
    }
}

/// A flow the collector decided to delete: its entries (one, or both
/// directions) with the values it decided on. It is deleted only if every
/// entry still holds that value: a packet since, or a new flow on the same
/// tuple, changes one and keeps the flow.
pub type Expired = Vec<(FlowKey, FlowEntry)>;

/// The entries to delete: both directions of every flow idle for longer than
/// its timeout (plus `hold`, the SNAT quarantine, for a full-NAT flow that was
/// established: a port that never carried a connection returns at once). A
/// flow's idle time runs from the last packet in either direction, and its
/// state comes from both entries (each direction records what it saw).
pub fn expired(entries: &[(FlowKey, FlowEntry)], now_ns: u64, t: &Timeouts, hold: Duration) -> Vec<Expired> {
    let flows = Flows::index(entries);
    let mut done: HashSet<FlowKey> = HashSet::new();
    let mut out = Vec::new();
    for (key, entry) in entries {
        if done.contains(key) {
            continue;
        }
        let other = flows.other(key, entry);
        let status = FlowStatus::of(&entry.state, other.map(|(_, o)| &o.state));
        let last = other.map_or(entry.last_seen_ns, |(_, o)| entry.last_seen_ns.max(o.last_seen_ns));
        let idle = Duration::from_nanos(now_ns.saturating_sub(last));
        done.insert(*key);
        done.extend(other.map(|(k, _)| k));
        let hold = if status.established { hold } else { Duration::ZERO };
        if idle > t.for_flow(key.proto, status) + hold {
            let mut flow = vec![(*key, *entry)];
            flow.extend(other.map(|(k, o)| (k, *o)));
            out.push(flow);
        }
    }
    out
}

/// Half-open TCP flows (handshake not complete, not closing) by client
/// address: the original direction's source, for flows not in `removed`.
pub fn half_open(entries: &[(FlowKey, FlowEntry)], removed: &[Expired]) -> HashMap<[u8; 4], u64> {
    let flows = Flows::index(entries);
    let removed: HashSet<FlowKey> = removed.iter().flatten().map(|(k, _)| *k).collect();
    let mut out: HashMap<[u8; 4], u64> = HashMap::new();
    for (key, entry) in entries {
        if key.dir != DIR_ORIGINAL || key.proto != PROTO_TCP || removed.contains(key) {
            continue;
        }
        let status = FlowStatus::of(&entry.state, flows.other(key, entry).map(|(_, o)| &o.state));
        if !status.established && !status.closing {
            *out.entry(key.saddr).or_default() += 1;
        }
    }
    out
}

/// A snapshot of a flow table, to find each entry's other direction.
struct Flows(HashMap<FlowKey, FlowEntry>);

impl Flows {
    fn index(entries: &[(FlowKey, FlowEntry)]) -> Self {
        Flows(entries.iter().copied().collect())
    }

    /// The other direction of `key`'s flow. Paired only when each names the
    /// other: a reused client tuple can leave an old reply entry pointing at
    /// a newer flow.
    fn other(&self, key: &FlowKey, entry: &FlowEntry) -> Option<(FlowKey, &FlowEntry)> {
        let other_key = key.counterpart(&entry.to);
        self.0.get(&other_key).filter(|o| other_key.counterpart(&o.to) == *key).map(|o| (other_key, o))
    }
}

/// CLOCK_MONOTONIC, the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsfwd_common::abi::FlowState;

    const S: u64 = 1_000_000_000;
    const T: Timeouts = Timeouts {
        tcp: Duration::from_secs(100),
        tcp_syn: Duration::from_secs(20),
        tcp_fin: Duration::from_secs(5),
        udp: Duration::from_secs(30),
    };

    /// What each direction records, as the datapath writes it: each side its own facts.
    #[derive(Clone, Copy, Default)]
    struct Sides {
        client: FlowState,
        endpoint: FlowState,
    }

    const HANDSHAKE: FlowState = FlowState { handshake: 1, fin: 0, rst: 0, liberal: 0 };
    const ESTABLISHED: Sides = Sides { client: HANDSHAKE, endpoint: HANDSHAKE };

    /// A flow client:1000 -> vip:80 on endpoint:8080, last seen at `orig`/`reply` seconds.
    fn flow(proto: u8, orig: u64, reply: Option<u64>, sides: Sides) -> Vec<(FlowKey, FlowEntry)> {
        flow_from(1000, proto, orig, reply, sides)
    }

    /// The same from client port `port`.
    fn flow_from(port: u16, proto: u8, orig: u64, reply: Option<u64>, sides: Sides) -> Vec<(FlowKey, FlowEntry)> {
        let (client, vip, ep, port) = ([10, 0, 1, 2], [192, 168, 0, 150], [10, 244, 1, 10], port.to_be_bytes());
        let o = FlowKey { saddr: client, daddr: vip, sport: port, dport: 80u16.to_be_bytes(), proto, dir: DIR_ORIGINAL, _pad: [0; 2] };
        let oe = FlowEntry { state: sides.client, ..FlowEntry::new(client, port, ep, 8080u16.to_be_bytes(), orig * S) };
        let mut v = vec![(o, oe)];
        if let Some(r) = reply {
            let rk = o.counterpart(&oe.to);
            let re = FlowEntry { state: sides.endpoint, ..FlowEntry::new(vip, 80u16.to_be_bytes(), client, port, r * S) };
            v.push((rk, re));
        }
        v
    }

    fn with(mut sides: Sides, f: impl Fn(&mut FlowState)) -> Sides {
        f(&mut sides.client);
        sides
    }

    #[test]
    fn counterparts_pair_up() {
        let f = flow(PROTO_TCP, 0, Some(0), ESTABLISHED);
        assert_eq!(f[0].0.counterpart(&f[0].1.to), f[1].0);
        assert_eq!(f[1].0.counterpart(&f[1].1.to), f[0].0);
    }

    #[test]
    fn a_flow_is_judged_by_both_entries_in_any_order() {
        // Established only through both sides' facts; idle past the SYN
        // timeout but not the established one: kept, whichever entry comes first.
        let mut entries = flow(PROTO_TCP, 1000 - 50, Some(1000 - 50), ESTABLISHED);
        assert!(expired(&entries, 1000 * S, &T, Duration::ZERO).is_empty());
        entries.reverse();
        assert!(expired(&entries, 1000 * S, &T, Duration::ZERO).is_empty());
        // The endpoint answered (SYN-ACK) but the client never completed the handshake.
        let half = Sides { client: FlowState::default(), endpoint: HANDSHAKE };
        assert_eq!(expired(&flow(PROTO_TCP, 1000 - 50, Some(1000 - 50), half), 1000 * S, &T, Duration::ZERO).concat().len(), 2);
        // A FIN from one side only is no close; from both it is.
        let fin_client = with(ESTABLISHED, |s| s.fin = 1);
        assert!(expired(&flow(PROTO_TCP, 1000 - 6, Some(1000 - 6), fin_client), 1000 * S, &T, Duration::ZERO).is_empty());
        let both = Sides { client: fin_client.client, endpoint: FlowState { fin: 1, ..HANDSHAKE } };
        assert_eq!(expired(&flow(PROTO_TCP, 1000 - 6, Some(1000 - 6), both), 1000 * S, &T, Duration::ZERO).concat().len(), 2);
    }

    #[test]
    fn quarantine_holds_only_flows_that_were_established() {
        let reset = with(ESTABLISHED, |s| s.rst = 1);
        let entries = flow(PROTO_TCP, 1000 - 6, Some(1000 - 6), reset);
        assert!(expired(&entries, 1000 * S, &T, Duration::from_secs(120)).is_empty());
        assert_eq!(expired(&entries, (1000 + 120) * S, &T, Duration::from_secs(120)).concat().len(), 2);
        // Never established (unanswered SYN): its port returns without the quarantine.
        let syn_only = flow(PROTO_TCP, 1000 - 21, Some(1000 - 21), Sides::default());
        assert_eq!(expired(&syn_only, 1000 * S, &T, Duration::from_secs(120)).concat().len(), 2);
    }

    #[test]
    fn half_open_counts_only_unfinished_handshakes_by_client() {
        let mut entries = flow(PROTO_TCP, 999, Some(999), Sides::default());
        // Another flow of the same client, established.
        entries.extend(flow_from(1001, PROTO_TCP, 999, Some(999), ESTABLISHED));
        let counts = half_open(&entries, &[]);
        assert_eq!(counts.get(&[10, 0, 1, 2]), Some(&1), "{counts:?}");
        // Flows the collector removes no longer count.
        let gone = expired(&entries, (1000 + 30) * S, &T, Duration::ZERO);
        assert!(half_open(&entries, &gone).is_empty());
    }

    #[test]
    fn timeouts_by_state() {
        let now = 1000;
        let rst = with(ESTABLISHED, |s| s.rst = 1);
        let liberal = Sides { client: FlowState { liberal: 1, ..FlowState::default() }, endpoint: FlowState::default() };
        let cases = [
            // (proto, original seen, reply seen, sides, expired?)
            (PROTO_UDP, now - 31, Some(now - 31), Sides::default(), true),
            (PROTO_UDP, now - 31, Some(now - 29), Sides::default(), false), // a reply keeps it alive
            (PROTO_TCP, now - 99, Some(now - 99), ESTABLISHED, false),
            (PROTO_TCP, now - 101, Some(now - 101), ESTABLISHED, true),
            (PROTO_TCP, now - 21, None, Sides::default(), true), // SYN never answered
            (PROTO_TCP, now - 21, Some(now - 21), liberal, false), // picked up mid-stream: assumed established
            (PROTO_TCP, now - 6, Some(now - 6), rst, true),
            (PROTO_TCP, now - 4, Some(now - 4), rst, false),
        ];
        for (i, (proto, o, r, sides, want)) in cases.into_iter().enumerate() {
            let entries = flow(proto, o, r, sides);
            let gone = expired(&entries, now * S, &T, Duration::ZERO).concat();
            let expect = if want { entries.len() } else { 0 };
            assert_eq!(gone.len(), expect, "case {i}");
        }
    }
}
