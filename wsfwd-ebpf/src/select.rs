//! Endpoint selection: the service's Maglev slot for the packet's flow hash.
use wsfwd_common::{
    abi::{Backend, SVC_F_HASH_CLIENT, ServiceEntry},
    hash_client, hash_flow,
};

use crate::{
    maps::{BACKENDS, MAGLEV, hash_seed},
    parse::Packet,
};

/// The endpoint for a new flow, or `None` when the service has none.
#[inline(always)]
pub fn pick(svc: &ServiceEntry, p: &Packet) -> Option<Backend> {
    if svc.table_size == 0 {
        return None;
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
    BACKENDS.get(*id).copied()
}
