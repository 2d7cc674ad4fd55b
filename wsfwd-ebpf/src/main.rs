//! wsfwd's kernel programs. Entry points only adapt the context; the packet
//! logic lives in one module per concern.
#![no_std]
#![no_main]
// The BPF target has no atomic types; the atomic add comes from the intrinsic.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod conntrack;
mod counters;
mod ctx;
mod egress;
mod endpoints;
mod forward;
mod frag;
mod halfopen;
mod icmp;
mod ingress;
mod maps;
mod nat;
mod parse;
mod reply;
mod revnat;
mod select;
mod snat;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// TC ingress on an external interface: frontend traffic is translated here.
#[classifier]
pub fn wsfwd_tc_ingress(ctx: TcContext) -> i32 {
    #[cfg(feature = "build-variant")]
    variant();
    ingress::handle(&ctx)
}

/// The `build-variant` difference: one load of a global, so the programs'
/// instructions (and kernel tags) differ while their behaviour does not.
#[cfg(feature = "build-variant")]
#[inline(always)]
fn variant() {
    #[unsafe(no_mangle)]
    static BUILD_VARIANT: u32 = 1;
    // SAFETY: a read-only global.
    unsafe { core::ptr::read_volatile(&BUILD_VARIANT) };
}

/// XDP on an external interface: frontend packets and full-NAT replies it
/// can finish are translated and redirected here; everything else goes on
/// untouched to TC on the same interface.
#[xdp]
pub fn wsfwd_xdp_ingress(ctx: XdpContext) -> u32 {
    ingress::handle(&ctx) as u32
}

/// TC egress on an external interface: replies are translated back here.
#[classifier]
pub fn wsfwd_tc_egress(ctx: TcContext) -> i32 {
    #[cfg(feature = "build-variant")]
    variant();
    egress::handle(&ctx)
}

/// TC ingress on an endpoint-facing interface: replies of endpoints behind
/// the node are translated here and sent straight out.
#[classifier]
pub fn wsfwd_tc_from_endpoints(ctx: TcContext) -> i32 {
    #[cfg(feature = "build-variant")]
    variant();
    endpoints::handle(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
