//! Endpoint selection: the client's affinity when its service has one and
//! the endpoint still takes new flows, else the service's Maglev slot for the
//! packet's flow hash.
use wsfwd_common::{
    abi::{AffinityEntry, AffinityKey, Backend, ReadyKey, SVC_F_HASH_CLIENT, ServiceEntry},
    hash_client, hash_flow,
};

use crate::{
    maps::{AFFINITY, BACKENDS, MAGLEV, READY, hash_seed},
    parse::Packet,
};

/// The endpoint for a new flow, or `None` when the service has none.
#[inline(always)]
pub fn pick(svc: &ServiceEntry, p: &Packet, now: u64) -> Option<Backend> {
    if svc.table_size == 0 {
        return None;
    }
    let key = AffinityKey { service_id: svc.service_id, client: p.saddr };
    if svc.affinity_timeout_s != 0 {
        if let Some(b) = recall(svc, &key, now) {
            return Some(b);
        }
    }
    let seed = hash_seed();
    let client = u32::from_be_bytes(p.saddr);
    let hash = if svc.flags & SVC_F_HASH_CLIENT != 0 {
        hash_client(client, seed)
    } else {
        hash_flow(
            client,
            u32::from_be_bytes(p.daddr),
            u16::from_be_bytes(p.sport),
            u16::from_be_bytes(p.dport),
            p.proto,
            seed,
        )
    };
    let id = MAGLEV.get(svc.table_offset + hash % svc.table_size)?;
    let b = BACKENDS.get(*id).copied()?;
    if svc.affinity_timeout_s != 0 {
        let entry = AffinityEntry { addr: b.addr, port: b.port, _pad: [0; 2], last_seen_ns: now };
        // LRU: on failure the client simply follows Maglev next time.
        let _ = AFFINITY.insert(&key, &entry, 0);
    }
    Some(b)
}

/// The client's endpoint if its affinity is within the timeout and the
/// endpoint still takes new flows of the service.
#[inline(always)]
fn recall(svc: &ServiceEntry, key: &AffinityKey, now: u64) -> Option<Backend> {
    let e = AFFINITY.get_ptr_mut(key)?;
    // SAFETY: a pointer into a map value, valid for this run.
    let (addr, port, last) = unsafe { ((*e).addr, (*e).port, (*e).last_seen_ns) };
    if now.saturating_sub(last) > u64::from(svc.affinity_timeout_s) * 1_000_000_000 {
        return None;
    }
    let ready = ReadyKey { service_id: svc.service_id, addr, port, _pad: [0; 2] };
    // SAFETY: the value is copied out before any other map call.
    let id = unsafe { READY.get(&ready) }.copied()?;
    let b = BACKENDS.get(id).copied()?;
    // A plain store: a lost race only loses a refresh.
    // SAFETY: as above.
    unsafe { (*e).last_seen_ns = now };
    Some(b)
}
