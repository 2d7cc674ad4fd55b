//! Draining endpoints: one that takes no new flows any more (left the
//! configuration, not ready, terminating) keeps its flows until they end or
//! until `--drain-timeout`. At the deadline its TCP flows are ended cleanly —
//! a RST to each side at the sequence number that side expects, from the
//! address it knows the other by — and its UDP flows are dropped; nothing is
//! left to time out against a silent peer.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use wsfwd_common::abi::{DIR_REPLY, FlowEntry, FlowKey, PROTO_TCP, RevNatKey, Rewrite};

use crate::{
    datapath::{Datapath, FlowMap},
    model::Service,
};

/// An endpoint as the flows name it: address, port, IP protocol.
pub type EndpointKey = (Ipv4Addr, u16, u8);

pub fn key_of(k: &RevNatKey) -> EndpointKey {
    (Ipv4Addr::from(k.addr), u16::from_be_bytes(k.port), k.proto)
}

/// Which endpoints drain, since when.
pub struct Drains {
    /// `None`: never cut (`--drain-timeout 0`).
    timeout: Option<Duration>,
    since: BTreeMap<EndpointKey, Instant>,
}

/// The endpoints of `services` that take new flows, and all those listed.
pub fn endpoints(services: &[Service]) -> (BTreeSet<EndpointKey>, BTreeSet<EndpointKey>) {
    let (mut serving, mut listed) = (BTreeSet::new(), BTreeSet::new());
    for s in services {
        let proto = s.protocol.number();
        let any_ready = s.endpoints.iter().any(|e| e.takes_new_flows());
        for e in &s.endpoints {
            let key = (e.address, e.port, proto);
            listed.insert(key);
            if e.takes_new_flows() || (!any_ready && e.serving && e.terminating) {
                serving.insert(key);
            }
        }
    }
    (serving, listed)
}

impl Drains {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout: (!timeout.is_zero()).then_some(timeout), since: BTreeMap::new() }
    }

    /// Takes a new configuration into account: endpoints of `old` or `new`
    /// that no longer take new flows start draining (if not already), those
    /// that take them again stop.
    pub fn update(&mut self, old: &[Service], new: &[Service], now: Instant) {
        let (serving, listed) = endpoints(new);
        let (_, was_listed) = endpoints(old);
        for key in listed.union(&was_listed) {
            if serving.contains(key) {
                self.since.remove(key);
            } else {
                self.since.entry(*key).or_insert(now);
            }
        }
    }

    /// Starts `key` draining (if it is not already).
    pub fn add(&mut self, key: EndpointKey, now: Instant) {
        self.since.entry(key).or_insert(now);
    }

    /// Endpoints whose deadline has passed; they stop being tracked.
    pub fn due(&mut self, now: Instant) -> BTreeSet<EndpointKey> {
        let Some(timeout) = self.timeout else { return BTreeSet::new() };
        let due: BTreeSet<EndpointKey> =
            self.since.iter().filter(|(_, since)| now.duration_since(**since) >= timeout).map(|(k, _)| *k).collect();
        for k in &due {
            self.since.remove(k);
        }
        due
    }

    /// How many endpoints are draining.
    pub fn len(&self) -> usize {
        self.since.len()
    }

    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}

/// What ending a drained endpoint's flows did.
#[derive(Debug, Default)]
pub struct Ended {
    pub tcp_reset: usize,
    pub udp_dropped: usize,
}

/// Ends every flow to `endpoints`: TCP with a RST each way (then left to
/// the collector as a reset flow, so a full-NAT port keeps its quarantine),
/// UDP removed.
pub fn end_flows(dp: &mut Datapath, endpoints: &BTreeSet<EndpointKey>) -> std::io::Result<Ended> {
    let raw = RawSender::new()?;
    let mut ended = Ended::default();
    for map in dp.flow_tables() {
        end_in(map, endpoints, &raw, &mut ended);
    }
    Ok(ended)
}

fn end_in(map: &mut FlowMap, endpoints: &BTreeSet<EndpointKey>, raw: &RawSender, ended: &mut Ended) {
    let entries: Vec<(FlowKey, FlowEntry)> = map.iter().filter_map(Result::ok).collect();
    for (reply_key, reply) in &entries {
        let endpoint = (Ipv4Addr::from(reply_key.saddr), u16::from_be_bytes(reply_key.sport), reply_key.proto);
        if reply_key.dir != DIR_REPLY || !endpoints.contains(&endpoint) {
            continue;
        }
        let orig_key = reply_key.counterpart(&reply.to);
        let orig = map.get(&orig_key, 0).ok().filter(|o| orig_key.counterpart(&o.to) == *reply_key);
        if reply_key.proto != PROTO_TCP {
            let _ = map.remove(reply_key);
            if orig.is_some() {
                let _ = map.remove(&orig_key);
            }
            ended.udp_dropped += 1;
            continue;
        }
        // To the client: from the frontend, at the endpoint's next sequence number.
        raw.rst(&reply.to, reply.tcp.end);
        if let Some(o) = &orig {
            // To the endpoint: from the client (or SNAT) address, at the client's.
            raw.rst(&o.to, o.tcp.end);
        }
        for (key, entry) in [(*reply_key, Some(*reply)), (orig_key, orig)] {
            if let Some(mut e) = entry {
                e.state.rst = 1;
                let _ = map.insert(key, e, 0);
            }
        }
        ended.tcp_reset += 1;
    }
}

/// A raw IPv4 socket that sends hand-built TCP RSTs from any address.
struct RawSender(OwnedFd);

impl RawSender {
    fn new() -> std::io::Result<Self> {
        // SAFETY: a plain socket call; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends a RST from `r.saddr:r.sport` to `r.daddr:r.dport` with `seq`.
    fn rst(&self, r: &Rewrite, seq: u32) {
        let packet = rst_packet(r, seq);
        let dst = SocketAddrV4::new(Ipv4Addr::from(r.daddr), 0);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.ip().octets()) },
            sin_zero: [0; 8],
        };
        // SAFETY: sending a buffer of the given length to a valid sockaddr_in.
        let rc = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            log::debug!("sending a RST to {dst}: {}", std::io::Error::last_os_error());
        }
    }
}

/// IPv4 + TCP RST, checksums filled in (the kernel fills the IP one again).
fn rst_packet(r: &Rewrite, seq: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = PROTO_TCP;
    p[12..16].copy_from_slice(&r.saddr);
    p[16..20].copy_from_slice(&r.daddr);
    let ip_sum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&r.sport);
    t[2..4].copy_from_slice(&r.dport);
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x04; // RST
    let mut pseudo = 0u32;
    for w in [&r.saddr[..2], &r.saddr[2..], &r.daddr[..2], &r.daddr[2..]] {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    pseudo += u32::from(PROTO_TCP) + 20;
    let sum = checksum(&p[20..], pseudo);
    p[36..38].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The Internet checksum of `data`, starting from a partial sum.
fn checksum(data: &[u8], start: u32) -> u16 {
    let mut sum = start;
    for w in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    const SEED_DEMO: &str = include_str!("../../fixtures/seed-demo.yaml");

    #[test]
    fn a_rst_checksums_to_zero() {
        let r = Rewrite { saddr: [192, 168, 0, 150], sport: 9080u16.to_be_bytes(), daddr: [10, 0, 1, 2], dport: 40000u16.to_be_bytes() };
        let p = rst_packet(&r, 0xdead_beef);
        assert_eq!(checksum(&p[..20], 0), 0);
        let mut pseudo = 0u32;
        for w in [&p[12..14], &p[14..16], &p[16..18], &p[18..20]] {
            pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        assert_eq!(checksum(&p[20..], pseudo + 6 + 20), 0);
        assert_eq!(&p[24..28], &0xdead_beefu32.to_be_bytes());
    }

    #[test]
    fn endpoints_drain_when_they_stop_taking_flows_and_stop_when_back() {
        let a = config::parse(SEED_DEMO).unwrap().services;
        let gone = SEED_DEMO.replace("10.244.3.10", "10.244.4.10");
        let b = config::parse(&gone).unwrap().services;
        let mut d = Drains::new(Duration::from_secs(5));
        let t0 = Instant::now();
        d.update(&[], &a, t0);
        assert!(d.is_empty());
        d.update(&a, &b, t0);
        assert_eq!(d.len(), 1, "10.244.3.10 left");
        assert!(d.due(t0 + Duration::from_secs(4)).is_empty());
        // 10.244.3.10 is back before its deadline; 10.244.4.10 leaves.
        let t4 = t0 + Duration::from_secs(4);
        d.update(&b, &a, t4);
        assert_eq!(d.due(t4 + Duration::from_secs(5)), [(Ipv4Addr::new(10, 244, 4, 10), 9080, PROTO_TCP)].into());
        assert!(d.is_empty());
        d.update(&a, &b, t0);
        let due = d.due(t0 + Duration::from_secs(5));
        assert_eq!(due, [(Ipv4Addr::new(10, 244, 3, 10), 9080, PROTO_TCP)].into());
        assert!(d.is_empty());
        let mut never = Drains::new(Duration::ZERO);
        never.update(&a, &b, t0);
        assert!(never.due(t0 + Duration::from_secs(86400)).is_empty());
    }
}
