//! A malformed-packet corpus: frames derived from a few valid ones (every
//! truncation, every IHL, IP options, fragments, lying lengths, VLAN tags,
//! ICMP errors quoting truncated or foreign headers, mutations) and frames
//! that were never valid (IPv6, ARP, zero-length, jumbo, random bytes),
//! each labelled with its class. Deterministic: the same seed gives the
//! same frames.
//!
//! The judge (`Oracle`) reads frames itself, apart from the datapath's
//! parser: which frames a program may touch at all, and which flow tuple a
//! well-formed frame carries.
use std::{collections::BTreeMap, net::Ipv4Addr};

use crate::pkt::{Frame, L4, TCP_ACK, TCP_PSH, TCP_SYN, checksum};

/// xorshift64*: enough randomness for a corpus, and no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Where the corpus's frames go and come from.
#[derive(Clone, Debug)]
pub struct Places {
    /// The node's MAC on the interface the programs run for.
    pub node_mac: [u8; 6],
    pub client_mac: [u8; 6],
    pub client: Ipv4Addr,
    pub vip: Ipv4Addr,
    pub node: Ipv4Addr,
    /// An endpoint of the TCP and UDP services, and its ports.
    pub endpoint: Ipv4Addr,
    pub tcp_port: u16,
    pub udp_port: u16,
    pub node_port: u16,
}

/// One frame and the class it was made for.
pub struct Sample {
    pub class: &'static str,
    pub bytes: Vec<u8>,
}

/// The valid frames the corpus is derived from: to the frontends (TCP with
/// options and data, UDP, NodePort), not ours, an echo request, the
/// endpoint's replies (for egress), and large ones (for truncations).
pub fn bases(p: &Places, rng: &mut Rng) -> Vec<Frame> {
    let c = p.client;
    let mut out = Vec::new();
    let mut syn = Frame::tcp((c, 41000), (p.vip, 9080), TCP_SYN, 1, 0);
    if let L4::Tcp { options, .. } = &mut syn.l4 {
        // MSS 1460, SACK permitted, window scale 7, NOP padding.
        *options = vec![2, 4, 5, 180, 4, 2, 3, 3, 7, 1, 1, 1];
    }
    out.push(syn);
    let mut data = Frame::tcp((c, 41001), (p.vip, 9080), TCP_ACK | TCP_PSH, 100, 200);
    if let L4::Tcp { payload, .. } = &mut data.l4 {
        *payload = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec();
    }
    out.push(data);
    out.push(Frame::udp((c, 41002), (p.vip, 9080), b"datagram"));
    out.push(Frame::tcp((c, 41003), (p.node, p.node_port), TCP_SYN, 5, 0));
    out.push(Frame::tcp((c, 41004), (p.node, 22), TCP_SYN, 5, 0));
    out.push(Frame::udp((c, 41005), (Ipv4Addr::new(10, 0, 9, 9), 53), b"elsewhere"));
    out.push(Frame::with(c, p.vip, L4::Icmp { kind: 8, code: 0, rest: [0, 1, 0, 1], payload: b"ping".to_vec() }));
    let mut big = Frame::tcp((c, 41006), (p.vip, 9080), TCP_ACK, 1, 1);
    if let L4::Tcp { payload, .. } = &mut big.l4 {
        *payload = rng.bytes(1460);
    }
    out.push(big);
    out.push(Frame::udp((c, 41007), (p.vip, 9080), &rng.bytes(1472)));
    let mut reply = Frame::tcp((p.endpoint, p.tcp_port), (c, 41000), TCP_SYN | TCP_ACK, 9, 2);
    reply.ttl = 63;
    out.push(reply);
    out.push(Frame::udp((p.endpoint, p.udp_port), (c, 41002), b"answer"));
    let mut big_reply = Frame::tcp((p.endpoint, p.tcp_port), (c, 41006), TCP_ACK, 1, 1461);
    if let L4::Tcp { payload, .. } = &mut big_reply.l4 {
        *payload = rng.bytes(1400);
    }
    out.push(big_reply);
    // Frames to the node come from the client; replies leave for it.
    out.into_iter()
        .map(|f| if f.src == p.endpoint { f.macs(p.node_mac, p.client_mac) } else { f.macs(p.client_mac, p.node_mac) })
        .collect()
}

/// `f` with its addresses and ports swapped: what answers it.
fn reversed(f: &Frame) -> Frame {
    let mut r = f.clone();
    (r.src, r.dst) = (f.dst, f.src);
    if let L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } = &mut r.l4 {
        std::mem::swap(sport, dport);
    }
    r
}

const ETH: usize = 14;

fn set_u16(b: &mut [u8], at: usize, v: u16) {
    if at + 2 <= b.len() {
        b[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
}

/// Recomputes the IPv4 header checksum over `ihl` bytes, where they exist.
fn fix_ip_csum(b: &mut [u8]) {
    let ihl = usize::from(b[ETH] & 0x0f) * 4;
    if ihl >= 20 && b.len() >= ETH + ihl {
        b[ETH + 10..ETH + 12].fill(0);
        let c = checksum(&[&b[ETH..ETH + ihl]]);
        b[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
    }
}

/// The frame with `options` inserted after a 20-byte IPv4 header, IHL and
/// total length grown to match (when `options` is a multiple of 4).
fn with_options(f: &[u8], options: &[u8]) -> Vec<u8> {
    let mut b = f[..ETH + 20].to_vec();
    b.extend(options);
    b.extend(&f[ETH + 20..]);
    let ihl = (20 + options.len()) / 4;
    b[ETH] = 0x40 | (ihl.min(15) as u8);
    let total = u16::from_be_bytes([f[ETH + 2], f[ETH + 3]]) as usize + options.len();
    set_u16(&mut b, ETH + 2, total as u16);
    fix_ip_csum(&mut b);
    b
}

/// An ICMP error from `from` to `to` quoting `quote` (any bytes), on the
/// wire towards the node or, from an endpoint, leaving it.
fn icmp_error(p: &Places, from: Ipv4Addr, to: Ipv4Addr, kind: u8, code: u8, quote: Vec<u8>) -> Vec<u8> {
    let rest = if kind == 3 && code == 4 { [0, 0, 5, 0] } else { [0; 4] };
    let f = Frame::with(from, to, L4::Icmp { kind, code, rest, payload: quote });
    if from == p.endpoint { f.macs(p.node_mac, p.client_mac) } else { f.macs(p.client_mac, p.node_mac) }.bytes()
}

/// The corpus: at least `total` frames.
pub fn generate(p: &Places, seed: u64, total: usize) -> Vec<Sample> {
    let mut rng = Rng::new(seed);
    let bases = bases(p, &mut rng);
    let raw: Vec<Vec<u8>> = bases.iter().map(Frame::bytes).collect();
    let mut out: Vec<Sample> = Vec::new();
    let mut push = |class, bytes| out.push(Sample { class, bytes });

    for b in &raw {
        push("valid", b.clone());
    }
    for b in &raw {
        for len in 0..b.len() {
            push("truncated", b[..len].to_vec());
        }
    }
    for b in &raw {
        let total = u16::from_be_bytes([b[ETH + 2], b[ETH + 3]]);
        for ihl in 0..16u8 {
            for t in [total, total + 4 * u16::from(ihl.saturating_sub(5)), u16::from(ihl) * 4, 20, 0] {
                let mut f = b.clone();
                f[ETH] = 0x40 | ihl;
                set_u16(&mut f, ETH + 2, t);
                fix_ip_csum(&mut f);
                push("ihl", f);
            }
        }
    }
    for b in &raw {
        for i in 0..200 {
            let len = 1 + rng.below(40);
            let mut opts = rng.bytes(len);
            if i % 4 == 0 {
                // Well-formed ones too: NOP/EOL runs, a record-route shell.
                opts = [vec![1; len.saturating_sub(1)], vec![0]].concat();
            } else if i % 4 == 1 {
                opts = vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            }
            push("ip-options", with_options(b, &opts));
        }
    }
    for b in &raw {
        for (i, off) in [0u16, 1, 2, 3, 8, 100, 185, 8191].into_iter().enumerate() {
            for (mf, df) in [(true, false), (false, false), (true, true), (false, true)] {
                let mut f = b.clone();
                let flags = (if df { 0x4000 } else { 0 }) | (if mf { 0x2000 } else { 0 }) | off;
                set_u16(&mut f, ETH + 6, flags);
                set_u16(&mut f, ETH + 4, 0x5000 + i as u16);
                fix_ip_csum(&mut f);
                push("fragment", f);
            }
        }
        for _ in 0..64 {
            let mut f = b.clone();
            set_u16(&mut f, ETH + 6, rng.next_u64() as u16);
            set_u16(&mut f, ETH + 4, rng.next_u64() as u16);
            fix_ip_csum(&mut f);
            push("fragment", f);
        }
    }
    for b in &raw {
        let len = b.len() - ETH;
        let lens: Vec<usize> = if len < 200 { (0..len + 64).collect() } else { (0..200).map(|_| rng.below(len + 64)).collect() };
        for t in lens {
            let mut f = b.clone();
            set_u16(&mut f, ETH + 2, t as u16);
            fix_ip_csum(&mut f);
            push("total-length", f);
        }
    }
    for b in &raw {
        for tpid in [[0x81, 0x00], [0x88, 0xa8], [0x91, 0x00]] {
            for _ in 0..10 {
                let vid = rng.next_u64() as u16 & 0x0fff;
                let mut f = b[..12].to_vec();
                f.extend(tpid);
                f.extend(vid.to_be_bytes());
                if tpid == [0x88, 0xa8] {
                    // Q-in-Q: an inner 802.1Q tag too.
                    f.extend([0x81, 0x00]);
                    f.extend((rng.next_u64() as u16 & 0x0fff).to_be_bytes());
                }
                f.extend(&b[12..]);
                push("vlan", f);
            }
        }
    }
    for i in 0..2000 {
        let mut f = p.node_mac.to_vec();
        f.extend(p.client_mac);
        f.extend([0x86, 0xdd]);
        let next = [6u8, 17, 58, 0, 44, 60][i % 6];
        let n = rng.below(120);
        let payload = rng.bytes(n);
        f.extend([0x60, 0, 0, 0]);
        f.extend((payload.len() as u16).to_be_bytes());
        f.extend([next, 64]);
        f.extend(rng.bytes(16));
        if i % 2 == 0 {
            // To the VIP as a v4-mapped address.
            f.extend([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
            f.extend(p.vip.octets());
        } else {
            f.extend(rng.bytes(16));
        }
        f.extend(payload);
        if i % 7 == 0 {
            let cut = rng.below(f.len());
            f.truncate(cut);
        }
        push("ipv6", f);
    }
    for i in 0..1000 {
        let mut f = if i % 2 == 0 { vec![0xff; 6] } else { p.node_mac.to_vec() };
        f.extend(p.client_mac);
        f.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1 + (i % 2) as u8]);
        f.extend(p.client_mac);
        f.extend(p.client.octets());
        f.extend([0; 6]);
        f.extend(if i % 3 == 0 { p.vip.octets().to_vec() } else { rng.bytes(4) });
        if i % 5 == 0 {
            let cut = rng.below(f.len());
            f.truncate(cut);
        }
        push("arp", f);
    }
    for len in 0..ETH + 1 {
        for _ in 0..10 {
            push("tiny", rng.bytes(len));
        }
    }
    for i in 0..60 {
        // Jumbo: as large as a 9000-byte MTU allows, lengths true or lying.
        let len = [1600, 3000, 4000, 9014, 9018, 16000][i % 6];
        let mut f = Frame::tcp((p.client, 42000 + i as u16), (p.vip, 9080), TCP_ACK, 1, 1);
        if let L4::Tcp { payload, .. } = &mut f.l4 {
            *payload = rng.bytes(len - ETH - 40);
        }
        let mut b = f.macs(p.client_mac, p.node_mac).bytes();
        if i % 3 == 1 {
            set_u16(&mut b, ETH + 2, 1500);
            fix_ip_csum(&mut b);
        }
        push("jumbo", b);
    }
    // ICMP errors quoting every truncation of what the datapath sends: a
    // client's packet translated to the endpoint (the endpoint's side
    // reports it to the client) and an answer from the frontend (the
    // client's side reports it to the frontend); and foreign headers.
    let mut quotes: Vec<(Vec<u8>, Ipv4Addr, Ipv4Addr)> = Vec::new();
    for f in bases.iter().filter(|f| f.src == p.client) {
        let mut translated = f.clone();
        translated.dst = p.endpoint;
        quotes.push((translated.ip_bytes(), p.endpoint, p.client));
        quotes.push((reversed(f).ip_bytes(), p.client, f.dst));
    }
    for (q, from, to) in &quotes {
        for len in 0..q.len().min(64) {
            for (kind, code) in [(3, 3), (3, 4), (11, 0)] {
                push("icmp-quote", icmp_error(p, *from, *to, kind, code, q[..len].to_vec()));
            }
        }
    }
    for i in 0..2000 {
        let (mut q, from, to) = quotes[i % quotes.len()].clone();
        // Foreign: addresses, ports, protocol or version changed.
        match i % 5 {
            0 => q[12..16].copy_from_slice(&rng.bytes(4)),
            1 => q[20..24].copy_from_slice(&rng.bytes(4)),
            2 => q[9] = rng.next_u64() as u8,
            3 => q[0] = 0x60 | (q[0] & 0x0f),
            _ => q[0] = 0x40 | (rng.next_u64() as u8 & 0x0f),
        }
        push("icmp-quote", icmp_error(p, from, to, 3, 3, q));
    }
    for i in 0..30_000 {
        let mut f = raw[i % raw.len()].clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(f.len());
            if i % 2 == 0 {
                f[at] ^= 1 << rng.below(8);
            } else {
                f[at] = rng.next_u64() as u8;
            }
        }
        if i % 3 == 0 {
            fix_ip_csum(&mut f);
        }
        push("mutated", f);
    }
    let mut i = 0;
    while out.len() < total {
        let len = rng.below(1600);
        let mut f = rng.bytes(len);
        if i % 3 >= 1 && f.len() >= ETH + 20 {
            f[..6].copy_from_slice(&p.node_mac);
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            f[ETH] = 0x40 | (f[ETH] & 0x0f);
        }
        if i % 3 == 2 && f.len() >= ETH + 24 {
            // A plausible header to the VIP with random L4 behind it.
            f[ETH] = 0x45;
            set_u16(&mut f, ETH + 2, (len - ETH) as u16);
            f[ETH + 6] &= 0x40;
            f[ETH + 7] = 0;
            f[ETH + 9] = [6, 17, 1][i % 9 / 3];
            f[ETH + 16..ETH + 20].copy_from_slice(&p.vip.octets());
            set_u16(&mut f, ETH + 22, 9080);
            fix_ip_csum(&mut f);
        }
        out.push(Sample { class: "random", bytes: f });
        i += 1;
    }
    out
}

/// How many frames of each class.
pub fn classes(samples: &[Sample]) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for s in samples {
        *m.entry(s.class).or_default() += 1;
    }
    m
}

/// A flow's tuple: (source, source port, destination, destination port, protocol).
pub type Tuple = (Ipv4Addr, u16, Ipv4Addr, u16, u8);

/// The judge: reads a frame as the kernel's `ip_rcv` would, independently
/// of the datapath.
pub struct Oracle {
    pub node_mac: [u8; 6],
    /// (address, port, protocol) of every frontend.
    pub frontends: Vec<(Ipv4Addr, u16, u8)>,
    /// Addresses of endpoints: what egress may translate comes from them.
    pub endpoints: Vec<Ipv4Addr>,
}

fn addr(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

impl Oracle {
    /// Untagged IPv4 with at least a base header: (source, destination, protocol).
    fn ipv4(f: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u8)> {
        (f.len() >= ETH + 20 && f[12..14] == [0x08, 0x00]).then(|| (addr(f, ETH + 12), addr(f, ETH + 16), f[ETH + 9]))
    }

    /// May the ingress program (TC or XDP) drop or change this frame? Only
    /// if it is addressed to the node's MAC and to a frontend: its address,
    /// protocol and (where the bytes hold one) port; any later fragment or
    /// ICMP message to a frontend address (they follow flows).
    pub fn ingress_may_touch(&self, f: &[u8]) -> bool {
        let Some((_, dst, proto)) = Self::ipv4(f) else { return false };
        if f[..6] != self.node_mac || !self.frontends.iter().any(|(a, _, _)| *a == dst) {
            return false;
        }
        let ihl = usize::from(f[ETH] & 0x0f) * 4;
        let later = u16::from_be_bytes([f[ETH + 6], f[ETH + 7]]) & 0x1fff != 0;
        match proto {
            1 => true,
            6 | 17 if later => true,
            6 | 17 => match f.get(ETH + ihl + 2..ETH + ihl + 4) {
                Some(p) => self.frontends.contains(&(dst, u16::from_be_bytes([p[0], p[1]]), proto)),
                None => false,
            },
            _ => false,
        }
    }

    /// May the egress program drop or change this frame? Only if it comes
    /// from an endpoint (a reply, an error about a flow, or a fragment).
    pub fn egress_may_touch(&self, f: &[u8]) -> bool {
        Self::ipv4(f).is_some_and(|(src, _, _)| self.endpoints.contains(&src))
    }

    /// The tuple of a frame `ip_rcv` would accept and whose L4 header is
    /// whole (a first fragment or an unfragmented packet): the flow it may
    /// create state for.
    pub fn tuple(f: &[u8]) -> Option<Tuple> {
        let (src, dst, proto) = Self::ipv4(f)?;
        let ihl = usize::from(f[ETH] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([f[ETH + 2], f[ETH + 3]]));
        if f[ETH] >> 4 != 4 || ihl < 20 || total < ihl || ETH + total > f.len() || checksum(&[&f[ETH..ETH + ihl]]) != 0 {
            return None;
        }
        if u16::from_be_bytes([f[ETH + 6], f[ETH + 7]]) & 0x1fff != 0 {
            return None;
        }
        let l4 = &f[ETH + ihl..ETH + total];
        let need = match proto {
            6 => 20,
            17 => 8,
            _ => return None,
        };
        (l4.len() >= need).then(|| (src, u16::from_be_bytes([l4[0], l4[1]]), dst, u16::from_be_bytes([l4[2], l4[3]]), proto))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places() -> Places {
        Places {
            node_mac: [2, 0, 0, 0, 0, 1],
            client_mac: [2, 0, 0, 0, 0, 2],
            client: Ipv4Addr::new(10, 0, 1, 2),
            vip: Ipv4Addr::new(192, 168, 0, 150),
            node: Ipv4Addr::new(10, 0, 1, 1),
            endpoint: Ipv4Addr::new(10, 244, 1, 10),
            tcp_port: 9080,
            udp_port: 9090,
            node_port: 30100,
        }
    }

    #[test]
    fn the_corpus_is_large_deterministic_and_covers_every_class() {
        let a = generate(&places(), 7, 100_000);
        let b = generate(&places(), 7, 100_000);
        assert!(a.len() >= 100_000);
        assert!(a.iter().zip(&b).all(|(x, y)| x.bytes == y.bytes));
        let classes = classes(&a);
        for c in ["valid", "truncated", "ihl", "ip-options", "fragment", "total-length", "vlan", "ipv6", "arp", "tiny", "jumbo", "icmp-quote", "mutated", "random"] {
            assert!(classes.get(c).copied().unwrap_or(0) > 0, "no {c} frames: {classes:?}");
        }
        assert!(a.iter().any(|s| s.bytes.is_empty()), "no zero-length frame");
    }

    #[test]
    fn the_oracle_reads_the_bases() {
        let p = places();
        let o = Oracle {
            node_mac: p.node_mac,
            frontends: vec![(p.vip, 9080, 6), (p.vip, 9080, 17), (p.node, 30100, 6)],
            endpoints: vec![p.endpoint],
        };
        let bases: Vec<Vec<u8>> = bases(&p, &mut Rng::new(1)).iter().map(Frame::bytes).collect();
        // SYN, data, UDP and NodePort are ours; port 22, elsewhere and replies are not.
        let touch: Vec<bool> = bases.iter().map(|b| o.ingress_may_touch(b)).collect();
        assert_eq!(touch, [true, true, true, true, false, false, true, true, true, false, false, false]);
        assert!(bases[9..].iter().all(|b| o.egress_may_touch(b)));
        assert_eq!(Oracle::tuple(&bases[0]), Some((p.client, 41000, p.vip, 9080, 6)));
        let mut cut = bases[0].clone();
        cut.truncate(ETH + 20 + 19);
        assert_eq!(Oracle::tuple(&cut), None);
    }
}
