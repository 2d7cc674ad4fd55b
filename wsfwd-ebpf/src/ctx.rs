//! What the packet logic needs from its hook, behind one trait (as Cilium's
//! `__ctx_buff` does for TC and XDP): the packet's bytes, rewrites with their
//! checksum updates, the route lookup and the redirect. Parsing, NAT and
//! forwarding are written once against it; only the adapters differ.
use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, bpf_fib_lookup, bpf_redir_neigh,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_REDIRECT},
    },
    helpers::{bpf_redirect, generated::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh, bpf_redirect_peer}},
    programs::{TcContext, XdpContext},
};
use wsfwd_common::{
    abi::{Counter, IFACE_F_PEER, IFACE_F_XDP},
    csum,
};

use crate::maps::IFACES;

pub trait Ctx {
    /// The verdict that hands the packet on untouched.
    const PASS: i32;
    /// The verdict that drops it.
    const DROP: i32;

    /// The TC context, where the hook is TC: what only TC can do (answer
    /// with ICMP or a RST, give the kernel a translated packet) goes through it.
    fn tc(&self) -> Option<&TcContext>;

    /// Start and end of the directly readable bytes.
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Makes the first `len` bytes directly readable, if the hook can.
    fn pull(&self, len: u32) -> Result<(), ()>;
    /// The whole frame's length.
    fn len(&self) -> u32;
    /// The GSO segment size (0: not a GSO packet).
    fn gso_size(&self) -> u32;
    /// The interface the packet arrived on.
    fn ingress_ifindex(&self) -> u32;
    /// Addressed to this host's MAC (not another host's, as a bridge port
    /// or a promiscuous interface sees), and not VLAN-tagged in metadata.
    fn for_this_host(&self) -> Result<(), Counter>;

    fn store<const N: usize>(&self, off: usize, v: &[u8; N]) -> Result<(), ()>;

    /// Two bytes at `off` (a checksum field), read directly.
    #[inline(always)]
    fn load2(&self, off: usize) -> Result<[u8; 2], ()> {
        let start = self.data();
        if start + off + 2 > self.data_end() {
            return Err(());
        }
        // SAFETY: bounds checked against data_end just above.
        Ok(unsafe { *((start + off) as *const [u8; 2]) })
    }

    /// RFC 1624 update of the IPv4 header checksum at `off` for a `size`-byte
    /// field, in software for both hooks: unlike L4's, the IP header's
    /// checksum is always complete, whatever the skb's `ip_summed`.
    #[inline(always)]
    fn l3_csum_replace(&self, off: usize, from: u64, to: u64, size: u64) -> Result<(), ()> {
        let old = self.load2(off)?;
        self.store(off, &replaced(old, from, to, size)?)
    }

    /// The same for the L4 checksum at `off`; `flags` as `bpf_l4_csum_replace`'s
    /// (size, `BPF_F_PSEUDO_HDR`, `BPF_F_MARK_MANGLED_0`).
    fn l4_csum_replace(&self, off: usize, from: u64, to: u64, flags: u64) -> Result<(), ()>;

    /// `bpf_fib_lookup` for this packet.
    fn fib_lookup(&self, params: &mut bpf_fib_lookup) -> i64;
    /// Sends the packet out of `ifindex`; the verdict that does it. In TC,
    /// called at ingress only (where a veth's peer can take it directly).
    fn redirect(&self, ifindex: u32) -> Result<i32, ()>;
    /// Sends it out of `ifindex` to `nexthop`, whose MAC the kernel resolves
    /// (TC only).
    fn redirect_neigh(&self, ifindex: u32, nexthop: [u8; 4]) -> Result<i32, ()>;
}

impl Ctx for TcContext {
    const PASS: i32 = TC_ACT_OK as i32;
    const DROP: i32 = TC_ACT_SHOT as i32;

    #[inline(always)]
    fn tc(&self) -> Option<&TcContext> {
        Some(self)
    }

    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn pull(&self, len: u32) -> Result<(), ()> {
        self.pull_data(len).map(|_| ()).map_err(|_| ())
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }

    #[inline(always)]
    fn gso_size(&self) -> u32 {
        // SAFETY: skb points at the live __sk_buff.
        unsafe { (*self.skb.skb).gso_size }
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: skb points at the live __sk_buff.
        unsafe { (*self.skb.skb).ingress_ifindex }
    }

    #[inline(always)]
    fn for_this_host(&self) -> Result<(), Counter> {
        // SAFETY: skb points at the live __sk_buff.
        let (pkt_type, vlan) = unsafe { ((*self.skb.skb).pkt_type, (*self.skb.skb).vlan_present) };
        // Frames for another host's MAC are not ours even when they carry a
        // frontend address; the kernel drops them.
        if pkt_type != PACKET_HOST {
            return Err(Counter::PassNotForHost);
        }
        // The tag sits in the skb's metadata: forwarding the packet would
        // carry it to the endpoint. Tagged traffic belongs to whatever owns the VLAN.
        if vlan != 0 {
            return Err(Counter::PassVlan);
        }
        Ok(())
    }

    /// Written directly where the bytes are in the linear head (TC may: the
    /// verifier makes a cloned skb's head private first), which saves a
    /// helper call per field; through `bpf_skb_store_bytes` otherwise.
    /// Neither updates a CHECKSUM_COMPLETE skb's `csum`: every write here
    /// either leaves the bytes' sum as it was (a field and its checksum) or
    /// is outside what `csum` covers (the Ethernet header).
    #[inline(always)]
    fn store<const N: usize>(&self, off: usize, v: &[u8; N]) -> Result<(), ()> {
        let start = TcContext::data(self);
        if start + off + N <= TcContext::data_end(self) {
            // SAFETY: bounds checked against data_end just above.
            unsafe { *((start + off) as *mut [u8; N]) = *v };
            return Ok(());
        }
        TcContext::store(self, off, v, 0).map_err(|_| ())
    }

    /// Through the helper: a CHECKSUM_PARTIAL skb's L4 field holds only the
    /// pseudo-header's sum, which only the kernel knows to treat so.
    #[inline(always)]
    fn l4_csum_replace(&self, off: usize, from: u64, to: u64, flags: u64) -> Result<(), ()> {
        TcContext::l4_csum_replace(self, off, from, to, flags).map_err(|_| ())
    }

    #[inline(always)]
    fn fib_lookup(&self, params: &mut bpf_fib_lookup) -> i64 {
        // SAFETY: params is a valid, fully initialised lookup request of the size given.
        unsafe { fib_lookup(self.skb.skb as *mut _, params, size_of::<bpf_fib_lookup>() as i32, 0) }
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> Result<i32, ()> {
        // A veth to another namespace: straight into its peer's ingress, as
        // if received there (the kernel drops it if the peer has since moved
        // here, until the agent's refresh on that link change clears the flag).
        let peer = IFACES.get(ifindex).is_some_and(|i| i.flags & IFACE_F_PEER != 0);
        // SAFETY: plain helper calls.
        let rc = unsafe { if peer { bpf_redirect_peer(ifindex, 0) } else { bpf_redirect(ifindex, 0) } };
        if rc == TC_ACT_REDIRECT as i64 { Ok(TC_ACT_REDIRECT as i32) } else { Err(()) }
    }

    #[inline(always)]
    fn redirect_neigh(&self, ifindex: u32, nexthop: [u8; 4]) -> Result<i32, ()> {
        // SAFETY: plain data; all-zero is a valid start.
        let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
        nh.nh_family = AF_INET;
        nh.__bindgen_anon_1.ipv4_nh = u32::from_ne_bytes(nexthop);
        // SAFETY: nh is a valid bpf_redir_neigh of the size given.
        let rc = unsafe { bpf_redirect_neigh(ifindex, &mut nh, size_of::<bpf_redir_neigh>() as i32, 0) };
        if rc == TC_ACT_REDIRECT as i64 { Ok(TC_ACT_REDIRECT as i32) } else { Err(()) }
    }
}

const AF_INET: u32 = 2;
/// `skb->pkt_type` of a frame addressed to this host's MAC.
const PACKET_HOST: u32 = 0;

/// XDP: the frame is linear and written directly; checksums are updated in
/// software (`wsfwd_common::csum`), which assumes complete checksums, as
/// frames from a NIC carry (see the README on XDP over veth).
impl Ctx for XdpContext {
    const PASS: i32 = XDP_PASS as i32;
    const DROP: i32 = XDP_DROP as i32;

    #[inline(always)]
    fn tc(&self) -> Option<&TcContext> {
        None
    }

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn pull(&self, _len: u32) -> Result<(), ()> {
        // Linear already; what is not there does not exist.
        Err(())
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u32
    }

    #[inline(always)]
    fn gso_size(&self) -> u32 {
        0
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        XdpContext::ingress_ifindex(self) as u32
    }

    #[inline(always)]
    fn for_this_host(&self) -> Result<(), Counter> {
        // XDP has no packet type: the frame's destination is compared with
        // the interface's own MAC (a bridge port or a promiscuous interface
        // sees other hosts' frames). A VLAN tag is in the frame here, where
        // parsing stops at it.
        let start = XdpContext::data(self);
        // The whole Ethernet header, not a few bytes: a short bound is
        // compiled into a form the verifier cannot follow.
        if start + 14 > XdpContext::data_end(self) {
            return Err(Counter::PassUnparsed);
        }
        // SAFETY: bounds checked just above.
        let eth = unsafe { *(start as *const [u8; 14]) };
        let own = IFACES.get(XdpContext::ingress_ifindex(self) as u32).ok_or(Counter::PassNotForHost)?;
        if own.flags & IFACE_F_XDP != 0 && eth[..6] == own.mac { Ok(()) } else { Err(Counter::PassNotForHost) }
    }

    #[inline(always)]
    fn store<const N: usize>(&self, off: usize, v: &[u8; N]) -> Result<(), ()> {
        let start = XdpContext::data(self);
        if start + off + N > XdpContext::data_end(self) {
            return Err(());
        }
        // SAFETY: bounds checked against data_end just above.
        unsafe { *((start + off) as *mut [u8; N]) = *v };
        Ok(())
    }

    #[inline(always)]
    fn l4_csum_replace(&self, off: usize, from: u64, to: u64, flags: u64) -> Result<(), ()> {
        let old = self.load2(off)?;
        // The pseudo-header flag changes nothing for a complete checksum.
        let new = replaced(old, from, to, flags & 0xf)?;
        let new = if flags & BPF_F_MARK_MANGLED_0 as u64 != 0 { csum::udp(old, new) } else { new };
        self.store(off, &new)
    }

    #[inline(always)]
    fn fib_lookup(&self, params: &mut bpf_fib_lookup) -> i64 {
        // SAFETY: params is a valid, fully initialised lookup request of the size given.
        unsafe { fib_lookup(self.ctx as *mut _, params, size_of::<bpf_fib_lookup>() as i32, 0) }
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> Result<i32, ()> {
        // SAFETY: plain helper call.
        let rc = unsafe { bpf_redirect(ifindex, 0) };
        if rc == XDP_REDIRECT as i64 { Ok(XDP_REDIRECT as i32) } else { Err(()) }
    }

    #[inline(always)]
    fn redirect_neigh(&self, _ifindex: u32, _nexthop: [u8; 4]) -> Result<i32, ()> {
        Err(())
    }
}

/// Checksum bytes `old` after a `size`-byte field changed from `from` to `to`
/// (given as the helpers take them: the field's bytes read natively).
#[inline(always)]
fn replaced(old: [u8; 2], from: u64, to: u64, size: u64) -> Result<[u8; 2], ()> {
    match size {
        4 => Ok(csum::replace4(old, (from as u32).to_ne_bytes(), (to as u32).to_ne_bytes())),
        2 => Ok(csum::replace2(old, (from as u16).to_ne_bytes(), (to as u16).to_ne_bytes())),
        _ => Err(()),
    }
}
