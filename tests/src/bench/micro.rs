//! `cargo xtask bench --micro`: what one packet costs each program, in
//! nanoseconds, next to a program of the same hook that only returns its
//! verdict, measured in the same run.
//!
//! Every packet is one `BPF_PROG_TEST_RUN` with a repeat of 1, timed by the
//! kernel around the program: a repeat count would run the program again
//! on the frame it already rewrote (an established packet would become "not
//! a service" after its first pass), so each sample starts from the original
//! frame instead. The programs are the ones the agent attached in a T1
//! topology (routes and neighbours real), with 1 or 10,000 services and
//! 1,000,000 established flows tracked (their handshakes run through the
//! programs first).
use std::{net::Ipv4Addr, os::fd::OwnedFd};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::contenders::service_yaml;
use crate::{
    agent::{self, Agent},
    forge::mac_of,
    pkt::{Frame, L4, TCP_ACK, TCP_PSH, TCP_SYN},
    progrun::{self, Ran, prog_fd, run_tc, run_xdp},
    topo::{Spec, Topo, VIP, VIP_PORT},
};

/// Tracked flows during the measurements.
pub const FLOWS: usize = 1_000_000;


#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub hook: &'static str,
    pub case: &'static str,
    pub services: usize,
    pub flows: usize,
    /// Median and 90th percentile of the program's time per packet.
    pub median_ns: u32,
    pub p90_ns: u32,
    /// The verdict-only program of the same hook, same frames.
    pub floor_ns: u32,
}

impl Row {
    pub fn times_floor(&self) -> f64 {
        f64::from(self.median_ns) / f64::from(self.floor_ns.max(1))
    }
}

/// A config with `n` services on the VIP's port: the first on the VIP, the
/// rest on addresses of their own, all with the same three endpoints.
fn config(n: usize, endpoints: &[Ipv4Addr]) -> String {
    let mut out = service_yaml("ws", VIP, VIP_PORT, VIP_PORT, endpoints);
    for i in 1..n {
        let vip = Ipv4Addr::new(172, 16 + (i / 65_536) as u8, (i / 256 % 256) as u8, (i % 256) as u8);
        out += &service_yaml(&format!("s{i}"), vip, VIP_PORT, VIP_PORT, endpoints);
    }
    out
}

/// Client `i` of many: addresses of the client's /24, then ports.
fn client(i: usize) -> (Ipv4Addr, u16) {
    (Ipv4Addr::new(10, 0, 1, 2 + (i % 250) as u8), 1024 + (i / 250) as u16)
}

struct Net {
    client_mac: [u8; 6],
    node_mac: [u8; 6],
    n0: u32,
    /// The endpoint-facing interfaces, by endpoint address.
    nb: Vec<(Ipv4Addr, u32, [u8; 6])>,
}

impl Net {
    fn syn(&self, c: (Ipv4Addr, u16)) -> Vec<u8> {
        Frame::tcp(c, (VIP, VIP_PORT), TCP_SYN, 1000, 0).macs(self.client_mac, self.node_mac).bytes()
    }
    fn ack(&self, c: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
        let mut f = Frame::tcp(c, (VIP, VIP_PORT), TCP_ACK | TCP_PSH, 1001, 5001).macs(self.client_mac, self.node_mac);
        if let L4::Tcp { payload: p, .. } = &mut f.l4 {
            *p = payload.to_vec();
        }
        f.bytes()
    }
    /// The endpoint's answer to client `c`, as it arrives on its interface.
    fn reply(&self, ep: Ipv4Addr, c: (Ipv4Addr, u16), flags: u8, payload: &[u8]) -> (Vec<u8>, u32) {
        let (_, index, mac) = self.nb.iter().find(|(a, _, _)| *a == ep).copied().unwrap_or((ep, self.n0, [0; 6]));
        let seq = if flags & TCP_SYN != 0 { 5000 } else { 5001 };
        let mut f = Frame::tcp((ep, VIP_PORT), c, flags, seq, 1001).macs([2, 0, 0, 0, 0, 9], mac);
        f.ttl = 64;
        if let L4::Tcp { payload: p, .. } = &mut f.l4 {
            *p = payload.to_vec();
        }
        (f.bytes(), index)
    }
}

fn endpoint_of(out: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(out[14 + 16], out[14 + 17], out[14 + 18], out[14 + 19])
}

/// Times `frames` through `fd` (one run each) on interface `ifindex`.
fn time(fd: &OwnedFd, xdp: bool, frames: &[(Vec<u8>, u32)]) -> anyhow::Result<Vec<u32>> {
    frames
        .iter()
        .map(|(f, ifindex)| -> anyhow::Result<u32> {
            let ran: Ran = if xdp { run_xdp(fd, f, *ifindex)? } else { run_tc(fd, f, *ifindex)? };
            Ok(ran.duration_ns)
        })
        .collect()
}

fn percentile(mut v: Vec<u32>, p: f64) -> u32 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize]
}

/// Measures every case with `services` services and `flows` established
/// flows; `samples` packets each.
pub fn measure(services: usize, flows: usize, samples: usize) -> anyhow::Result<Vec<Row>> {
    let t = Topo::new("mb", Spec::T1)?;
    let endpoints: Vec<Ipv4Addr> = t.backends.iter().map(|b| b.addr).collect();
    // Room for a million flows (two entries each) and the new ones measured.
    let ct = (4 * flows).max(1 << 16).next_power_of_two().to_string();
    let agent = Agent::start(&t.node, &t.dir, &config(services, &endpoints), &["--attach", "xdp", "--ct-size", &ct])?;
    t.pin_backend_neighbours()?;
    let mut nb = Vec::new();
    for b in &t.backends {
        let name = format!("nb{}", b.addr.octets()[2]);
        let index: u32 = t.node.exec(&["cat", &format!("/sys/class/net/{name}/ifindex")])?.trim().parse()?;
        nb.push((b.addr, index, mac_of(&t.node, &name)?));
    }
    // The clients' neighbours resolved, as traffic from them would leave them.
    let client_mac = mac_of(&t.client, "c0")?;
    for i in 0..250 {
        t.pin_neighbour(client(i).0, client_mac, "n0")?;
    }
    let net = Net {
        client_mac: mac_of(&t.client, "c0")?,
        node_mac: mac_of(&t.node, "n0")?,
        n0: t.node.exec(&["cat", "/sys/class/net/n0/ifindex"])?.trim().parse()?,
        nb,
    };
    let ids = agent.program_ids();
    let ids = match ids {
        agent::ProgramIds { tc_ingress: Some(i), tc_egress: Some(e), from_endpoints: Some(f), xdp: Some(x) } => [i, e, f, x],
        _ => bail!("not every program is loaded and attached: {ids:?}"),
    };
    let node_addr = t.node_addr;
    let rows = t.node.inside(move || {
        let [ingress, egress, from_endpoints, xdp] = [prog_fd(ids[0])?, prog_fd(ids[1])?, prog_fd(ids[2])?, prog_fd(ids[3])?];
        let tc_floor = progrun::load_verdict_only(progrun::SCHED_CLS, 0)?;
        let xdp_floor = progrun::load_verdict_only(progrun::XDP, 2)?;
        // What one lookup in a table of as many flows costs, for scale.
        let keys: Vec<[u8; 16]> = (0..flows).map(|i| progrun::one_lookup_key(client(i), (VIP, VIP_PORT))).collect();
        let one_lookup = progrun::OneLookup::load(progrun::SCHED_CLS, 0, ct.parse()?, &keys)?;
        drop(keys);
        // A million handshakes: SYN in, SYN-ACK from the endpoint, ACK in.
        let mut eps = Vec::with_capacity(flows);
        for i in 0..flows {
            let c = client(i);
            let out = run_tc(&ingress, &net.syn(c), net.n0)?;
            if out.verdict != progrun::TC_ACT_REDIRECT {
                bail!("flow {i}: SYN verdict {}", out.verdict);
            }
            let ep = endpoint_of(&out.frame);
            let (syn_ack, at) = net.reply(ep, c, TCP_SYN | TCP_ACK, b"");
            run_tc(&from_endpoints, &syn_ack, at)?;
            run_tc(&ingress, &net.ack(c, b""), net.n0)?;
            eps.push(ep);
        }
        let payload = [0x42u8; 64];
        let spread = |i: usize| (i * 7919) % flows;
        // One flow again and again: the program's own cost, its entries in cache.
        let hot: Vec<(Vec<u8>, u32)> = (0..samples).map(|_| (net.ack(client(0), &payload), net.n0)).collect();
        let hot_replies: Vec<(Vec<u8>, u32)> = (0..samples).map(|_| net.reply(eps[0], client(0), TCP_ACK | TCP_PSH, &payload)).collect();
        let established: Vec<(Vec<u8>, u32)> = (0..samples).map(|i| (net.ack(client(spread(i)), &payload), net.n0)).collect();
        let replies: Vec<(Vec<u8>, u32)> =
            (0..samples).map(|i| net.reply(eps[spread(i)], client(spread(i)), TCP_ACK | TCP_PSH, &payload)).collect();
        let replies_at_egress: Vec<(Vec<u8>, u32)> = replies.iter().map(|(f, _)| (f.clone(), net.n0)).collect();
        let not_ours: Vec<(Vec<u8>, u32)> = (0..samples)
            .map(|i| {
                let f = Frame::udp(client(i), (node_addr, 5555), &payload).macs(net.client_mac, net.node_mac);
                (f.bytes(), net.n0)
            })
            .collect();
        // New flows: tuples no flow has, one range per hook.
        let fresh = |from: usize| -> Vec<(Vec<u8>, u32)> { (0..samples).map(|i| (net.syn(client(flows + from + i)), net.n0)).collect() };
        let (new_tc, new_xdp) = (fresh(0), fresh(samples));
        let mut rows = Vec::new();
        let mut row = |hook, case, fd: &OwnedFd, floor: &OwnedFd, is_xdp: bool, frames: &[(Vec<u8>, u32)]| -> anyhow::Result<()> {
            let floor_ns = percentile(time(floor, is_xdp, frames)?, 0.5);
            let took = time(fd, is_xdp, frames)?;
            rows.push(Row { hook, case, services, flows, median_ns: percentile(took.clone(), 0.5), p90_ns: percentile(took, 0.9), floor_ns });
            Ok(())
        };
        row("tc", "not a service", &ingress, &tc_floor, false, &not_ours)?;
        row("xdp", "not a service", &xdp, &xdp_floor, true, &not_ours)?;
        row("tc", "new flow", &ingress, &tc_floor, false, &new_tc)?;
        row("xdp", "new flow", &xdp, &xdp_floor, true, &new_xdp)?;
        row("tc", "established", &ingress, &tc_floor, false, &established)?;
        row("xdp", "established", &xdp, &xdp_floor, true, &established)?;
        row("tc", "established, one flow", &ingress, &tc_floor, false, &hot)?;
        row("xdp", "established, one flow", &xdp, &xdp_floor, true, &hot)?;
        row("tc", "reply (endpoint side)", &from_endpoints, &tc_floor, false, &replies)?;
        row("tc", "reply, one flow", &from_endpoints, &tc_floor, false, &hot_replies)?;
        row("tc", "reply (egress)", &egress, &tc_floor, false, &replies_at_egress)?;
        row("tc", "reference: one lookup", &one_lookup.prog, &tc_floor, false, &established)?;
        row("tc", "reference: one lookup, one flow", &one_lookup.prog, &tc_floor, false, &hot)?;
        Ok(rows)
    });
    drop(agent);
    rows.context("timing the programs")
}

/// The table, as printed and written to `bench-micro.md`.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| hook | packet | services | flows | median ns | p90 ns | verdict-only ns | × floor |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} |\n",
            r.hook,
            r.case,
            r.services,
            r.flows,
            r.median_ns,
            r.p90_ns,
            r.floor_ns,
            r.times_floor()
        );
    }
    s
}
