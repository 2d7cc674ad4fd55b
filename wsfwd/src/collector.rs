//! The conntrack collector: removes expired flows (and, in full NAT, frees
//! their ports after the quarantine), recounts half-open flows, and says
//! which endpoints still carry gateway flows (a departed endpoint's replies
//! are translated until its last flow ends).
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use wsfwd_common::abi::{AffinityKey, DIR_ORIGINAL, DIR_REPLY, FlowEntry, FlowKey, RevNatKey, ServiceKey};

use crate::datapath::{self, Datapath, gc};

/// What one collection found.
pub struct Collected {
    /// The endpoints (as reply sources) that gateway flows still use.
    pub in_use: BTreeSet<RevNatKey>,
    /// Gateway flows it removed.
    pub gateway_removed: u64,
}

/// Sweeps every flow table once, then lets the plan free the `TRAFFIC`
/// slots no flow counts into any more.
pub fn collect(dp: &mut Datapath, timeouts: &gc::Timeouts, quarantine: Duration) -> Collected {
    let started = Instant::now();
    let (collected, counting) = sweep_all(dp, timeouts, quarantine);
    dp.flows_counted(started, &counting);
    collected
}

/// Sweeps every flow table once; also says which `TRAFFIC` slots the flows count into.
fn sweep_all(dp: &mut Datapath, timeouts: &gc::Timeouts, quarantine: Duration) -> (Collected, BTreeSet<u32>) {
    let now = gc::monotonic_ns();
    let (ct, ct_removed) = sweep("conntrack", dp.conntrack(), now, timeouts, Duration::ZERO);
    let (hs, hs_removed) = sweep("handshakes", dp.handshakes(), now, timeouts, Duration::ZERO);
    // SNAT ports stay reserved for the quarantine after their flow ended.
    let (nat, half_open) = dp.nat_and_half_open();
    let (entries, removed) = sweep("nat", nat, now, timeouts, quarantine);
    recount_half_open(half_open, &gc::half_open(&entries, &removed));
    let in_use = ct
        .iter()
        .chain(&hs)
        .filter(|(k, _)| k.dir == DIR_REPLY)
        .map(|(k, _)| RevNatKey { addr: k.saddr, port: k.sport, proto: k.proto, _pad: 0 })
        .collect();
    refresh_affinity(dp, &[&ct, &hs, &entries]);
    let counting = ct.iter().chain(&hs).chain(&entries).map(|(_, v)| v.traffic).collect();
    (Collected { in_use, gateway_removed: (ct_removed.len() + hs_removed.len()) as u64 }, counting)
}

/// A ClientIP affinity lasts `timeoutSeconds` after the client's last
/// packet. The datapath stamps it only when it picks an endpoint (a new
/// flow); here every flow the affinity sent to its endpoint carries its own
/// last packet's time over to it.
fn refresh_affinity(dp: &mut Datapath, snapshots: &[&[(FlowKey, FlowEntry)]]) {
    let (affinity, live) = dp.affinity_and_live();
    let services: BTreeMap<ServiceKey, u32> =
        live.services.iter().filter(|(_, v)| v.affinity_timeout_s != 0).map(|(k, v)| (*k, v.service_id)).collect();
    if services.is_empty() {
        return;
    }
    // The newest packet of each client's flows, by the endpoint they go to.
    let mut newest: BTreeMap<(AffinityKey, [u8; 4], [u8; 2]), u64> = BTreeMap::new();
    for (k, v) in snapshots.iter().flat_map(|s| s.iter()) {
        let frontend = ServiceKey { addr: k.daddr, port: k.dport, proto: k.proto, _pad: 0 };
        let Some(&service_id) = services.get(&frontend).filter(|_| k.dir == DIR_ORIGINAL) else { continue };
        let last = newest.entry((AffinityKey { service_id, client: k.saddr }, v.to.daddr, v.to.dport)).or_default();
        *last = (*last).max(v.last_seen_ns);
    }
    for ((key, addr, port), last) in newest {
        let Ok(mut a) = affinity.get(&key, 0) else { continue };
        if (a.addr, a.port) == (addr, port) && last > a.last_seen_ns {
            a.last_seen_ns = last;
            let _ = affinity.insert(key, a, 0);
        }
    }
}

/// Removes expired flows; returns the snapshot it decided from and the flows it removed.
fn sweep(
    name: &str,
    map: &mut datapath::FlowMap,
    now: u64,
    timeouts: &gc::Timeouts,
    hold: Duration,
) -> (Vec<(FlowKey, FlowEntry)>, Vec<gc::Expired>) {
    let entries: Vec<_> = map.iter().filter_map(Result::ok).collect();
    let mut removed = Vec::new();
    let mut kept = 0;
    for flow in gc::expired(&entries, now, timeouts, hold) {
        // Decided from a snapshot: delete only what still holds the values
        // decided on. A packet since, or a new flow on the tuple, keeps it.
        // (The bpf syscall has no compare-and-delete: a packet landing
        // between this read and the delete is lost with the entry.)
        let unchanged = flow.iter().all(|(key, was)| map.get(key, 0).is_ok_and(|now| now == *was));
        if !unchanged {
            kept += 1;
            continue;
        }
        for (key, _) in &flow {
            // Already gone (evicted) is fine.
            let _ = map.remove(key);
        }
        removed.push(flow);
    }
    if !removed.is_empty() || kept > 0 {
        log::debug!(
            "{name}: removed {} expired flows of {} entries; {kept} flows changed since and kept",
            removed.len(),
            entries.len()
        );
    }
    (entries, removed)
}

/// Replaces the datapath's running counts of half-open flows per client with
/// the true ones (the datapath's can drift: a count it adds between the
/// snapshot and this write is lost, a flow that never completes is never
/// subtracted).
fn recount_half_open(map: &mut datapath::HalfOpenMap, counts: &std::collections::HashMap<[u8; 4], u64>) {
    let stale: Vec<[u8; 4]> = map.keys().filter_map(Result::ok).filter(|k| !counts.contains_key(k)).collect();
    for k in stale {
        let _ = map.remove(&k);
    }
    for (k, n) in counts {
        if let Err(e) = map.insert(k, n, 0) {
            log::debug!("half-open count of {}: {e}", std::net::Ipv4Addr::from(*k));
        }
    }
}

