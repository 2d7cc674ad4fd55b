//! The conntrack collector. The datapath only records when each direction of
//! a flow was last seen and how TCP ended; here flows whose time is up are
//! removed, both directions together.
use std::{collections::HashSet, time::Duration};

use wsfwd_common::abi::{CT_F_REPLIED, DIR_ORIGINAL, DIR_REPLY, FlowEntry, FlowKey, PROTO_UDP, is_closing};

/// How long a flow may stay idle, by state.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Established TCP.
    pub tcp: Duration,
    /// TCP that never saw a reply.
    pub tcp_syn: Duration,
    /// TCP after RST, or after FIN both ways.
    pub tcp_fin: Duration,
    pub udp: Duration,
}

impl Timeouts {
    fn for_flow(&self, proto: u8, flags: u8) -> Duration {
        if proto == PROTO_UDP {
            self.udp
        } else if is_closing(flags) {
            self.tcp_fin
        } else if flags & CT_F_REPLIED == 0 {
            self.tcp_syn
        } else {
            self.tcp
        }
    }
}

/// The keys to delete: both directions of every flow idle for longer than its
/// timeout plus `hold` (the SNAT quarantine for full-NAT flows). A flow's idle
/// time runs from the last packet in either direction.
pub fn expired(entries: &[(FlowKey, FlowEntry)], now_ns: u64, t: &Timeouts, hold: Duration) -> Vec<FlowKey> {
    let index: std::collections::HashMap<FlowKey, FlowEntry> = entries.iter().copied().collect();
    let mut done: HashSet<FlowKey> = HashSet::new();
    let mut out = Vec::new();
    for (key, entry) in entries {
        if done.contains(key) {
            continue;
        }
        let other_key = key.counterpart(entry);
        // Paired only when each names the other: a reused client tuple can
        // leave an old reply entry pointing at a newer flow.
        let other = index.get(&other_key).filter(|o| other_key.counterpart(o) == *key);
        let (last, flags) = match other {
            Some(o) => (entry.last_seen_ns.max(o.last_seen_ns), entry.flags | o.flags),
            None => (entry.last_seen_ns, entry.flags),
        };
        let idle = Duration::from_nanos(now_ns.saturating_sub(last));
        done.insert(*key);
        if other.is_some() {
            done.insert(other_key);
        }
        if idle > t.for_flow(key.proto, flags) + hold {
            out.push(*key);
            if other.is_some() {
                out.push(other_key);
            }
        }
    }
    debug_assert!(out.iter().all(|k| k.dir == DIR_ORIGINAL || k.dir == DIR_REPLY));
    out
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
    use wsfwd_common::abi::{CT_F_FIN_ORIGINAL, CT_F_FIN_REPLY, CT_F_RST, PROTO_TCP};

    const S: u64 = 1_000_000_000;
    const T: Timeouts = Timeouts {
        tcp: Duration::from_secs(100),
        tcp_syn: Duration::from_secs(20),
        tcp_fin: Duration::from_secs(5),
        udp: Duration::from_secs(30),
    };

    /// A flow client:1000 -> vip:80 on endpoint:8080, last seen at `orig`/`reply`
    /// seconds, with `flags` as the datapath leaves them: FIN and RST on both
    /// entries, "replied" only on the reply entry (only a reply sets it).
    fn flow(proto: u8, orig: u64, reply: Option<u64>, flags: u8) -> Vec<(FlowKey, FlowEntry)> {
        let (client, vip, ep) = ([10, 0, 1, 2], [192, 168, 0, 150], [10, 244, 1, 10]);
        let o = FlowKey { saddr: client, daddr: vip, sport: 1000u16.to_be_bytes(), dport: 80u16.to_be_bytes(), proto, dir: DIR_ORIGINAL, _pad: [0; 2] };
        let oe = FlowEntry {
            flags: flags & !CT_F_REPLIED,
            ..FlowEntry::new(client, 1000u16.to_be_bytes(), ep, 8080u16.to_be_bytes(), orig * S)
        };
        let mut v = vec![(o, oe)];
        if let Some(r) = reply {
            let rk = o.counterpart(&oe);
            let re = FlowEntry { flags, ..FlowEntry::new(vip, 80u16.to_be_bytes(), client, 1000u16.to_be_bytes(), r * S) };
            v.push((rk, re));
        }
        v
    }

    #[test]
    fn a_flow_is_judged_by_both_entries_flags_in_any_order() {
        // Replied, idle past the SYN timeout but not the established one: kept,
        // whichever entry the map lists first.
        let mut entries = flow(PROTO_TCP, 1000 - 50, Some(1000 - 50), CT_F_REPLIED);
        assert_eq!(entries[0].1.flags, 0, "the original entry never carries \"replied\"");
        assert!(expired(&entries, 1000 * S, &T, Duration::ZERO).is_empty());
        entries.reverse();
        assert!(expired(&entries, 1000 * S, &T, Duration::ZERO).is_empty());
        // Never replied: gone after the SYN timeout.
        let entries = flow(PROTO_TCP, 1000 - 50, Some(1000 - 50), 0);
        assert_eq!(expired(&entries, 1000 * S, &T, Duration::ZERO).len(), 2);
    }

    #[test]
    fn counterparts_pair_up() {
        let f = flow(PROTO_TCP, 0, Some(0), 0);
        assert_eq!(f[0].0.counterpart(&f[0].1), f[1].0);
        assert_eq!(f[1].0.counterpart(&f[1].1), f[0].0);
    }

    #[test]
    fn quarantine_holds_a_flow_past_its_timeout() {
        let entries = flow(PROTO_TCP, 1000 - 6, Some(1000 - 6), CT_F_REPLIED | CT_F_RST);
        assert!(expired(&entries, 1000 * S, &T, Duration::from_secs(120)).is_empty());
        assert_eq!(expired(&entries, (1000 + 120) * S, &T, Duration::from_secs(120)).len(), 2);
    }

    #[test]
    fn timeouts_by_state() {
        let now = 1000;
        let cases = [
            // (proto, original seen, reply seen, flags, expired?)
            (PROTO_UDP, now - 31, Some(now - 31), 0, true),
            (PROTO_UDP, now - 31, Some(now - 29), 0, false), // a reply keeps it alive
            (PROTO_TCP, now - 99, Some(now - 99), CT_F_REPLIED, false),
            (PROTO_TCP, now - 101, Some(now - 101), CT_F_REPLIED, true),
            (PROTO_TCP, now - 21, None, 0, true), // SYN never answered
            (PROTO_TCP, now - 6, Some(now - 6), CT_F_REPLIED | CT_F_RST, true),
            (PROTO_TCP, now - 6, Some(now - 6), CT_F_REPLIED | CT_F_FIN_ORIGINAL | CT_F_FIN_REPLY, true),
            (PROTO_TCP, now - 6, Some(now - 6), CT_F_REPLIED | CT_F_FIN_ORIGINAL, false), // half-closed
            (PROTO_TCP, now - 4, Some(now - 4), CT_F_REPLIED | CT_F_RST, false),
        ];
        for (i, (proto, o, r, flags, want)) in cases.into_iter().enumerate() {
            let entries = flow(proto, o, r, flags);
            let gone = expired(&entries, now * S, &T, Duration::ZERO);
            let expect = if want { entries.len() } else { 0 };
            assert_eq!(gone.len(), expect, "case {i}");
        }
    }
}
