//! Fragments of translated flows. Only the first fragment of a datagram
//! carries the ports; its ports are remembered under the datagram's
//! addresses, IP identification and protocol, so the later fragments find
//! their flow and are translated (addresses only) and sent the same way.
//!
//! A datagram without DF that is too large for its next hop is fragmented
//! by the kernel as it forwards. The kernel refuses a packet whose source is
//! its own address (martian), so a full-NAT datagram goes to it with only its
//! destination translated, and egress gives each fragment its new source.
use wsfwd_common::abi::{FragKey, Rewrite};

use crate::{
    maps::{FRAGMENT_SOURCES, FRAGMENTS},
    parse::Packet,
};

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

/// Notes the source `e` gives `p`, for the fragments the kernel will make of
/// `p` once its destination is `e`'s. `false`: not noted (the datagram must
/// then not go out at all, or it would carry the old source).
#[inline(always)]
pub fn leave_source(p: &Packet, e: &Rewrite) -> bool {
    let key = FragKey { saddr: p.saddr, daddr: e.daddr, id: p.ip_id, proto: p.proto, _pad: 0 };
    FRAGMENT_SOURCES.insert(&key, e, 0).is_ok()
}

/// The source noted for a fragment the kernel made (addresses and, for the
/// first fragment, port: the rest of the returned rewrite is `p`'s own).
#[inline(always)]
pub fn source_for(p: &Packet) -> Option<Rewrite> {
    // SAFETY: the value is copied out before any other map call.
    let e = unsafe { FRAGMENT_SOURCES.get(&key(p)) }.copied()?;
    Some(Rewrite { saddr: e.saddr, sport: e.sport, daddr: p.daddr, dport: p.dport })
}
