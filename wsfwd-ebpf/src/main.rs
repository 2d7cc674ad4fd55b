//! wsfwd's kernel programs. Entry points only adapt the context and turn the
//! packet logic's result into a verdict; the logic lives in the modules.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};

/// TC ingress on an external interface: frontend traffic is translated here.
#[classifier]
pub fn wsfwd_tc_ingress(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// TC egress on an external interface: replies are un-translated here.
#[classifier]
pub fn wsfwd_tc_egress(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
