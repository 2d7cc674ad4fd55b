//! TCP state that a forged segment cannot move: a simplified form of
//! netfilter's `tcp_in_window`, shared by the datapath and host tests.
//!
//! Each direction of a flow keeps what its sender has shown ([`TcpWindow`]):
//! the highest sequence number sent (`end`), how far the peer allows it to
//! send (`maxend`), the largest window it advertised (`maxwin`) and its window
//! scale. A segment is *in window* when its sequence numbers lie between
//! `end - peer.maxwin` and `maxend`, and its acknowledgement within the peer's
//! `end` minus one window. Only in-window segments update the state, and:
//! - the handshake completes (the flow is established) when the responder's
//!   SYN-ACK acknowledges the SYN and the opener then acknowledges the SYN-ACK;
//! - a RST ends the flow only at exactly the next sequence number the peer
//!   expects (RFC 5961's rule), so a blind RST must guess 32 bits;
//! - a FIN counts only inside the window, and a flow closes only on FINs
//!   from both sides.
//!
//! What is not checked: SACK blocks, timestamps (PAWS), and urgent data; a
//! flow picked up mid-stream (its entries lost) is tracked liberally.

/// Window scale of a side that did not offer one.
pub const NO_SCALE: u8 = 0xff;
/// The largest window scale TCP allows (RFC 7323).
pub const MAX_SCALE: u8 = 14;
/// netfilter's MAXACKWINCONST: acknowledgements may trail by this much before
/// the peer's window is known.
const MIN_ACK_WINDOW: u32 = 66_000;
/// The most data a SYN may carry (TCP Fast Open) that a SYN-ACK may decline.
const SYN_DATA_MAX: u32 = 65_535;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// One direction's sender, as the tracker has seen it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpWindow {
    pub end: u32,
    pub maxend: u32,
    /// 0 until this side's first segment (SYN or SYN-ACK) was seen.
    pub maxwin: u32,
    pub scale: u8,
    pub _pad: [u8; 3],
}

impl TcpWindow {
    pub const fn known(&self) -> bool {
        self.maxwin != 0
    }
}

/// The fields of a segment the tracker reads.
#[derive(Clone, Copy, Debug, Default)]
pub struct Segment {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The window field, unscaled.
    pub window: u16,
    /// Payload bytes.
    pub len: u32,
    /// The window scale option of a SYN or SYN-ACK, or `NO_SCALE`.
    pub wscale: u8,
}

impl Segment {
    /// Sequence space used: payload, plus one each for SYN and FIN.
    pub const fn end(&self) -> u32 {
        self.seq.wrapping_add(self.len).wrapping_add((self.flags & SYN != 0) as u32).wrapping_add((self.flags & FIN != 0) as u32)
    }

    pub const fn is_syn(&self) -> bool {
        self.flags & (SYN | ACK) == SYN
    }
}

/// `a` is later than `b` in sequence space.
#[inline(always)]
pub const fn after(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) < 0
}

/// What one segment did to its flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// In window: state updated. `handshake` when this segment completed this
    /// side's part of the handshake; `fin`/`rst` when it (validly) closed.
    InWindow { handshake: bool, fin: bool, rst: bool },
    /// Outside the window (or a RST/FIN that does not fit): no state changed.
    OutOfWindow,
}

/// The state of a flow opened by a SYN: the opener's side.
#[inline(always)]
pub fn open(syn: &Segment) -> TcpWindow {
    let end = syn.end();
    TcpWindow { end, maxend: end, maxwin: max1(syn.window as u32), scale: scale_of(syn.wscale), _pad: [0; 3] }
}

#[inline(always)]
fn scale_of(wscale: u8) -> u8 {
    if wscale == NO_SCALE { NO_SCALE } else if wscale > MAX_SCALE { MAX_SCALE } else { wscale }
}

const fn max1(w: u32) -> u32 {
    if w == 0 { 1 } else { w }
}

/// Tracks `seg`, sent by `sender` to `receiver`, updating both when it is in window.
#[inline(always)]
pub fn track(sender: &mut TcpWindow, receiver: &mut TcpWindow, seg: &Segment) -> Seen {
    let end = seg.end();
    // The side that has not spoken yet: the responder. Its first segment must
    // acknowledge the opener's SYN: all of it, or (TCP Fast Open data it
    // declined) just the SYN itself, which the opener then resends from.
    if !sender.known() {
        let acks_syn = seg.flags & ACK != 0
            && receiver.known()
            && !after(seg.ack, receiver.end)
            && after(seg.ack, receiver.end.wrapping_sub(SYN_DATA_MAX + 1));
        // The endpoint refusing the connection.
        if acks_syn && seg.flags & RST != 0 {
            return Seen::InWindow { handshake: false, fin: false, rst: true };
        }
        if seg.flags & (SYN | ACK) != SYN | ACK || !acks_syn {
            return Seen::OutOfWindow;
        }
        let scale = scale_of(seg.wscale);
        // Scaling applies only when both sides offered it.
        let (s, r) = if scale == NO_SCALE || receiver.scale == NO_SCALE { (0, 0) } else { (scale, receiver.scale) };
        *sender = TcpWindow { end, maxend: end, maxwin: max1(seg.window as u32), scale: s, _pad: [0; 3] };
        receiver.scale = r;
        // SYN-ACK windows are never scaled.
        receiver.maxend = seg.ack.wrapping_add(max1(seg.window as u32));
        return Seen::InWindow { handshake: true, fin: false, rst: false };
    }
    if seg.flags & SYN != 0 {
        // A SYN (or SYN-ACK) again on a known side: a retransmission at best.
        // Never a state change.
        return Seen::OutOfWindow;
    }
    let win = if sender.scale == NO_SCALE { seg.window as u32 } else { (seg.window as u32) << sender.scale };
    let ack = if seg.flags & ACK != 0 { seg.ack } else { receiver.end };
    let ack_window = if sender.maxwin > MIN_ACK_WINDOW { sender.maxwin } else { MIN_ACK_WINDOW };
    let in_window = !after(seg.seq, sender.maxend)
        && after(end, sender.end.wrapping_sub(receiver.maxwin).wrapping_sub(1))
        && (!receiver.known() || (!after(ack, receiver.end) && after(ack, receiver.end.wrapping_sub(ack_window).wrapping_sub(1))));
    if !in_window {
        return Seen::OutOfWindow;
    }
    // A RST closes only at exactly the next sequence number: a blind one
    // must guess 32 bits. (A stack that gets an in-window RST that is not
    // exact answers with a challenge ACK, RFC 5961; a peer that really reset
    // then sends the exact one.)
    let rst = seg.flags & RST != 0;
    if rst && seg.seq != sender.end {
        return Seen::OutOfWindow;
    }
    // A FIN counts anywhere in the window, as netfilter has it: one may arrive
    // ahead of a lost segment, and the receiver then never asks for it again.
    // It alone ends nothing: a flow closes on FINs from both sides.
    let fin = seg.flags & FIN != 0;
    // The opener acknowledging the SYN-ACK completes the handshake.
    let handshake = seg.flags & ACK != 0 && receiver.known() && !after(receiver.end, ack);
    if win > sender.maxwin {
        sender.maxwin = win;
    }
    if after(end, sender.end) {
        sender.end = end;
    }
    if seg.flags & ACK != 0 {
        let limit = ack.wrapping_add(if win == 0 { 1 } else { win });
        if after(limit, receiver.maxend) {
            receiver.maxend = limit;
        }
    }
    Seen::InWindow { handshake, fin, rst }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISN_C: u32 = 0xffff_f000; // wraps during the test
    const ISN_S: u32 = 0x1000;

    fn seg(seq: u32, ack: u32, flags: u8, window: u16, len: u32) -> Segment {
        Segment { seq, ack, flags, window, len, wscale: NO_SCALE }
    }

    /// A handshake with window scaling 7 on both sides; returns (client, server).
    fn established() -> (TcpWindow, TcpWindow) {
        let mut c = open(&Segment { wscale: 7, ..seg(ISN_C, 0, SYN, 64240, 0) });
        let mut s = TcpWindow::default();
        let synack = Segment { wscale: 7, ..seg(ISN_S, ISN_C.wrapping_add(1), SYN | ACK, 65160, 0) };
        assert_eq!(track(&mut s, &mut c, &synack), Seen::InWindow { handshake: true, fin: false, rst: false });
        let ack = seg(ISN_C.wrapping_add(1), ISN_S + 1, ACK, 502, 0);
        assert_eq!(track(&mut c, &mut s, &ack), Seen::InWindow { handshake: true, fin: false, rst: false });
        (c, s)
    }

    #[test]
    fn handshake_and_data_in_window() {
        let (mut c, mut s) = established();
        assert_eq!((c.scale, s.scale), (7, 7));
        assert_eq!(c.maxwin, 502 << 7, "windows after the SYN are scaled");
        // 10 segments of 1000 bytes each way, acknowledged.
        let (mut cs, mut ss) = (ISN_C.wrapping_add(1), ISN_S + 1);
        for _ in 0..10 {
            assert!(matches!(track(&mut c, &mut s, &seg(cs, ss, ACK | 0x08, 502, 1000)), Seen::InWindow { .. }));
            cs = cs.wrapping_add(1000);
            assert!(matches!(track(&mut s, &mut c, &seg(ss, cs, ACK, 509, 1000)), Seen::InWindow { .. }));
            ss += 1000;
        }
        assert_eq!((c.end, s.end), (cs, ss));
        // The SYN-ACK's unscaled 65160 is still the largest the server offered (509 << 7 = 65152).
        assert_eq!(s.maxwin, 65160);
    }

    #[test]
    fn a_blind_rst_does_not_close_and_an_exact_one_does() {
        let (mut c, mut s) = established();
        let next = ISN_C.wrapping_add(1);
        for seq in [next.wrapping_add(0x8000_0000), next.wrapping_add(1), next.wrapping_sub(1), 0] {
            let before = (c, s);
            assert_eq!(track(&mut c, &mut s, &seg(seq, 0, RST, 0, 0)), Seen::OutOfWindow, "RST at {seq:#x}");
            assert_eq!((c, s), before, "a rejected RST changed state");
        }
        assert_eq!(track(&mut c, &mut s, &seg(next, 0, RST, 0, 0)), Seen::InWindow { handshake: false, fin: false, rst: true });
    }

    #[test]
    fn out_of_window_data_does_not_move_the_window() {
        let (mut c, mut s) = established();
        let before = (c, s);
        // Far ahead of anything the server allowed, then far behind.
        for seq in [ISN_C.wrapping_add(0x4000_0000), ISN_C.wrapping_sub(0x4000_0000)] {
            assert_eq!(track(&mut c, &mut s, &seg(seq, ISN_S + 1, ACK, 502, 100)), Seen::OutOfWindow);
        }
        // An acknowledgement of data the server never sent.
        assert_eq!(track(&mut c, &mut s, &seg(ISN_C.wrapping_add(1), ISN_S + 1_000_000, ACK, 502, 0)), Seen::OutOfWindow);
        assert_eq!((c, s), before);
        // So a RST at the end the attacker tried to create is still blind.
        assert_eq!(track(&mut c, &mut s, &seg(ISN_C.wrapping_add(0x4000_0064), 0, RST, 0, 0)), Seen::OutOfWindow);
    }

    #[test]
    fn a_fin_counts_only_inside_the_window() {
        let (mut c, mut s) = established();
        let next = ISN_C.wrapping_add(1);
        assert_eq!(track(&mut c, &mut s, &seg(next.wrapping_add(0x4000_0000), ISN_S + 1, FIN | ACK, 502, 0)), Seen::OutOfWindow);
        // Ahead of a lost segment, but in the window: counted, and the
        // endpoint's acknowledgement of it is then in window too.
        assert_eq!(
            track(&mut c, &mut s, &seg(next.wrapping_add(500), ISN_S + 1, FIN | ACK, 502, 0)),
            Seen::InWindow { handshake: true, fin: true, rst: false }
        );
        let ack_of_fin = next.wrapping_add(501);
        assert!(matches!(track(&mut s, &mut c, &seg(ISN_S + 1, ack_of_fin, FIN | ACK, 509, 0)), Seen::InWindow { fin: true, .. }));
    }

    #[test]
    fn the_endpoint_may_refuse_or_decline_syn_data() {
        // A SYN with 100 bytes of (Fast Open) data.
        let syn = Segment { len: 100, ..seg(ISN_C, 0, SYN, 64240, 0) };
        let mut c = open(&syn);
        let mut s = TcpWindow::default();
        // Refused: RST|ACK acknowledging the SYN.
        assert_eq!(track(&mut s, &mut c, &seg(0, ISN_C.wrapping_add(101), RST | ACK, 0, 0)), Seen::InWindow { handshake: false, fin: false, rst: true });
        // Or accepted with the data declined: the SYN-ACK acknowledges the SYN only.
        let synack = seg(ISN_S, ISN_C.wrapping_add(1), SYN | ACK, 65160, 0);
        assert_eq!(track(&mut s, &mut c, &synack), Seen::InWindow { handshake: true, fin: false, rst: false });
        // The opener resends its data after the handshake: in window.
        assert!(matches!(track(&mut c, &mut s, &seg(ISN_C.wrapping_add(1), ISN_S + 1, ACK, 502, 100)), Seen::InWindow { handshake: true, .. }));
        // A SYN-ACK acknowledging something the opener never sent is not its answer.
        let mut c = open(&seg(ISN_C, 0, SYN, 64240, 0));
        let mut s = TcpWindow::default();
        assert_eq!(track(&mut s, &mut c, &seg(ISN_S, ISN_C.wrapping_add(2), SYN | ACK, 65160, 0)), Seen::OutOfWindow);
    }

    #[test]
    fn syns_never_change_a_known_side() {
        let (mut c, mut s) = established();
        let before = (c, s);
        assert_eq!(track(&mut c, &mut s, &seg(12345, 0, SYN, 64240, 0)), Seen::OutOfWindow);
        assert_eq!(track(&mut s, &mut c, &seg(12345, ISN_C.wrapping_add(1), SYN | ACK, 64240, 0)), Seen::OutOfWindow);
        assert_eq!((c, s), before);
    }

    #[test]
    fn a_syn_ack_must_acknowledge_the_syn() {
        let mut c = open(&seg(ISN_C, 0, SYN, 64240, 0));
        let mut s = TcpWindow::default();
        assert_eq!(track(&mut s, &mut c, &seg(ISN_S, ISN_C.wrapping_add(7), SYN | ACK, 65160, 0)), Seen::OutOfWindow);
        assert!(!s.known());
        // No scaling unless both offered it.
        let synack = Segment { wscale: 7, ..seg(ISN_S, ISN_C.wrapping_add(1), SYN | ACK, 65160, 0) };
        assert!(matches!(track(&mut s, &mut c, &synack), Seen::InWindow { handshake: true, .. }));
        assert_eq!((c.scale, s.scale), (0, 0));
    }

    #[test]
    fn an_unanswered_syn_never_completes_a_handshake() {
        let mut c = open(&seg(ISN_C, 0, SYN, 64240, 0));
        let mut s = TcpWindow::default();
        // The opener's ACK (a forged one: nothing was acknowledged) before any SYN-ACK.
        let r = track(&mut c, &mut s, &seg(ISN_C.wrapping_add(1), 777, ACK, 502, 0));
        assert!(matches!(r, Seen::InWindow { handshake: false, .. }), "{r:?}");
    }
}
