//! Fragments of translated flows. Only the first fragment of a datagram
//! carries the ports; its ports are remembered under the datagram's
//! addresses, IP identification and protocol, so the later fragments find
//! their flow and are translated (addresses only) and sent the same way.
use wsfwd_common::abi::FragKey;

use crate::{maps::FRAGMENTS, parse::Packet};

#[inline(always)]
fn key(p: &Packet) -> FragKey {
    FragKey { saddr: p.saddr, daddr: p.daddr, id: p.ip_id, proto: p.proto, _pad: 0 }
}

/// Notes a first fragment's ports for the fragments that follow.
#[inline(always)]
pub fn remember(p: &Packet) {
    let ports = [p.sport[0], p.sport[1], p.dport[0], p.dport[1]];
    // LRU: an old datagram's entry gives way; a failure only strands the
    // later fragments, which then pass as unknown.
    let _ = FRAGMENTS.insert(&key(p), &ports, 0);
}

/// Fills in a later fragment's ports from its first fragment; `false` when
/// that was never seen.
#[inline(always)]
pub fn recall(p: &mut Packet) -> bool {
    // SAFETY: the value is copied out before any other map call.
    match unsafe { FRAGMENTS.get(&key(p)) }.copied() {
        Some(ports) => {
            p.sport = [ports[0], ports[1]];
            p.dport = [ports[2], ports[3]];
            true
        }
        None => false,
    }
}
