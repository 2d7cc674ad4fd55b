//! The half-open budget of full NAT: how many TCP flows each client address
//! holds before their handshakes complete. Counted up when a SYN gets a
//! mapping, down when its handshake completes, and recounted from `NAT` by
//! the agent's collector every interval (which also forgets flows that never
//! completed). Atomic adds: one address's packets arrive on several CPUs.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::bindings::BPF_NOEXIST;
use wsfwd_common::abi::Counter;

use crate::maps::{HALF_OPEN, half_open_max};

/// Checks that `client` may open one more; its count, when it has one.
#[inline(always)]
pub fn claim(client: [u8; 4]) -> Result<Option<*mut u64>, Counter> {
    match HALF_OPEN.get_ptr_mut(&client) {
        // Read as signed: a decrement racing the collector's recount may
        // briefly take it below zero, which is "under budget".
        // SAFETY: a pointer into a map value, valid for this run.
        Some(n) if unsafe { *n } as i64 >= half_open_max() as i64 => Err(Counter::DropHalfOpenBudget),
        n => Ok(n),
    }
}

/// One more for `client` (`counted`: its count, from `claim`).
#[inline(always)]
pub fn opened(client: [u8; 4], counted: Option<*mut u64>) {
    match counted {
        // SAFETY: a pointer into a map value, valid for this run, aligned.
        // (The target has no atomic types; this is the BPF atomic add.)
        Some(n) => {
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, 1) };
        }
        // The first one; if another CPU just inserted it, this one goes
        // uncounted until the collector's recount.
        None => {
            let _ = HALF_OPEN.insert(&client, &1u64, BPF_NOEXIST as u64);
        }
    }
}

/// One of `client`'s flows completed its handshake.
#[inline(always)]
pub fn completed(client: [u8; 4]) {
    if let Some(n) = HALF_OPEN.get_ptr_mut(&client) {
        // SAFETY: as above; adding all ones subtracts one.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, u64::MAX) };
    }
}
