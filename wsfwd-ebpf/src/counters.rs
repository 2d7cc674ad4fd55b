//! Counting: verdicts by reason (`COUNTERS`) and traffic per service and
//! endpoint (`TRAFFIC`). Both per-CPU, so plain adds.
use wsfwd_common::abi::Counter;

use crate::maps::{COUNTERS, TRAFFIC};

#[inline(always)]
pub fn count(c: Counter) {
    if let Some(n) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot; nothing else writes it concurrently.
        unsafe { *n += 1 };
    }
}

/// Which way a packet of a flow went.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Way {
    ToEndpoint,
    FromEndpoint,
}

/// One packet of `ip_len` bytes through the flow's `TRAFFIC` slot
/// (`NO_TRAFFIC`, out of range, counts nothing).
#[inline(always)]
pub fn traffic(slot: u32, way: Way, ip_len: u32) {
    if let Some(t) = TRAFFIC.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot; nothing else writes it concurrently.
        unsafe {
            if way == Way::ToEndpoint {
                (*t).packets_in += 1;
                (*t).bytes_in += u64::from(ip_len);
            } else {
                (*t).packets_out += 1;
                (*t).bytes_out += u64::from(ip_len);
            }
        }
    }
}
