use wsfwd_common::abi::Counter;

use crate::maps::COUNTERS;

#[inline(always)]
pub fn count(c: Counter) {
    if let Some(n) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot; nothing else writes it concurrently.
        unsafe { *n += 1 };
    }
}
