//! The malformed-packet corpus (`wsfwd_tests::corpus`, over 100,000 frames)
//! through every program the agent attached in T1 — XDP, TC ingress, TC
//! egress — with `BPF_PROG_TEST_RUN` inside the node's namespace. The
//! programs were accepted by the verifier (the agent loaded them). Pass:
//! - a frame the judge says is not a frontend's (ingress) or not from an
//!   endpoint (egress) comes out untouched with the pass verdict;
//! - XDP never changes a frame it passes on to TC;
//! - a frame that arrived with correct checksums and was changed leaves
//!   with correct checksums (recomputed from scratch);
//! - every flow in the tables afterwards carries the tuple of a frame of
//!   the corpus that `ip_rcv` would accept: no frame made state for a flow
//!   it does not belong to.
//! How many frames of each class ran, and what each program did with them,
//! is printed.
use std::{collections::{BTreeMap, HashSet}, net::Ipv4Addr};

use wsfwd_common::DEFAULT_HASH_SEED;
use wsfwd_tests::{
    agent::Agent,
    checks::predicted_for_client,
    corpus::{self, Oracle, Places, Tuple},
    forge::mac_of,
    pkt::checksums_ok,
    progrun::{Ran, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_REDIRECT, prog_fd, run_tc, run_xdp},
    topo::{SEED_CONFIG, Spec, Topo, UDP_SERVICE, VIP},
};

/// Frames in the corpus.
const FRAMES: usize = 100_000;

#[derive(Default)]
struct Tally {
    frames: usize,
    /// Refused by `BPF_PROG_TEST_RUN` itself (shorter than an Ethernet
    /// header, longer than a test run takes): no program saw them.
    refused: usize,
    passed: usize,
    dropped: usize,
    redirected: usize,
    changed: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Prog {
    Xdp,
    TcIngress,
    TcEgress,
}

fn tuple_of(flow: &wsfwd_tests::agent::Flow) -> Option<Tuple> {
    let split = |s: &str| -> Option<(Ipv4Addr, u16)> {
        let (a, p) = s.rsplit_once(':')?;
        Some((a.parse().ok()?, p.parse().ok()?))
    };
    let (src, dst) = (split(&flow.source)?, split(&flow.destination)?);
    let proto = match flow.protocol.to_ascii_lowercase().as_str() {
        "tcp" => 6,
        "udp" => 17,
        _ => return None,
    };
    Some((src.0, src.1, dst.0, dst.1, proto))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_corpus_through_every_program() {
    let t = Topo::new("cp", Spec::T1).unwrap();
    let config = format!("{SEED_CONFIG}\n---\n{UDP_SERVICE}");
    let agent = Agent::start(&t.node, &t.dir, &config, &["--attach", "xdp"]).unwrap();
    t.pin_backend_neighbours().unwrap();
    let n0: u32 = t.node.exec(&["cat", "/sys/class/net/n0/ifindex"]).unwrap().trim().parse().unwrap();
    let client = Ipv4Addr::new(10, 0, 1, 2);
    let endpoint = t.backend_by_addr(&predicted_for_client(&config, "testim-service", DEFAULT_HASH_SEED, client)).unwrap().addr;
    let places = Places {
        node_mac: mac_of(&t.node, "n0").unwrap(),
        client_mac: mac_of(&t.client, "c0").unwrap(),
        client,
        vip: VIP,
        node: t.node_addr,
        endpoint,
        tcp_port: 9080,
        udp_port: 9090,
        node_port: 30100,
    };
    let oracle = Oracle {
        node_mac: places.node_mac,
        frontends: vec![(VIP, 9080, 6), (VIP, 9080, 17), (t.node_addr, 30100, 6)],
        endpoints: t.backends.iter().map(|b| b.addr).collect(),
    };
    let samples = corpus::generate(&places, 0x5eed, FRAMES);
    assert!(samples.len() >= FRAMES);

    let ids = agent.program_ids();
    let (xdp, ingress, egress) = (ids.xdp.unwrap(), ids.tc_ingress.unwrap(), ids.tc_egress.unwrap());
    let frames: Vec<Vec<u8>> = samples.iter().map(|s| s.bytes.clone()).collect();
    let started = std::time::Instant::now();
    let results: Vec<[Option<Ran>; 3]> = t
        .node
        .inside(move || {
            let (x, i, e) = (prog_fd(xdp)?, prog_fd(ingress)?, prog_fd(egress)?);
            Ok(frames.iter().map(|f| [run_xdp(&x, f, n0).ok(), run_tc(&i, f, n0).ok(), run_tc(&e, f, n0).ok()]).collect())
        })
        .unwrap();
    let took = started.elapsed();

    let mut tally: BTreeMap<(&str, &str), Tally> = BTreeMap::new();
    let mut wrong: Vec<String> = Vec::new();
    let mut tuples: HashSet<Tuple> = HashSet::new();
    for (n, (s, ran)) in samples.iter().zip(&results).enumerate() {
        if ran.iter().any(Option::is_some) {
            tuples.extend(Oracle::tuple(&s.bytes));
        }
        for (prog, ran) in [Prog::Xdp, Prog::TcIngress, Prog::TcEgress].into_iter().zip(ran) {
            let name = match prog {
                Prog::Xdp => "xdp",
                Prog::TcIngress => "tc ingress",
                Prog::TcEgress => "tc egress",
            };
            let entry = tally.entry((s.class, name)).or_default();
            entry.frames += 1;
            let Some(ran) = ran else {
                entry.refused += 1;
                continue;
            };
            let may_touch = match prog {
                Prog::TcEgress => oracle.egress_may_touch(&s.bytes),
                _ => oracle.ingress_may_touch(&s.bytes),
            };
            let changed = ran.frame != s.bytes;
            let (pass, drop, redirect) = match prog {
                Prog::Xdp => (XDP_PASS, XDP_DROP, XDP_REDIRECT),
                _ => (TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT),
            };
            entry.changed += usize::from(changed);
            let mut fault = None;
            match ran.verdict {
                v if v == pass => entry.passed += 1,
                v if v == drop => entry.dropped += 1,
                v if v == redirect => entry.redirected += 1,
                v => fault = Some(format!("verdict {v}")),
            }
            if fault.is_none() && !may_touch && (ran.verdict != pass || changed) {
                fault = Some(format!("not a frontend's: verdict {}, changed {changed}", ran.verdict));
            }
            if fault.is_none() && prog == Prog::Xdp && ran.verdict == pass && changed {
                fault = Some("XDP changed a frame it passed on".into());
            }
            if fault.is_none() && changed && checksums_ok(&s.bytes).is_ok() {
                if let Err(e) = checksums_ok(&ran.frame) {
                    fault = Some(format!("checksums: {e}"));
                }
            }
            if let Some(f) = fault {
                wrong.push(format!("#{n} {} through {name}: {f}\n  in  {:02x?}\n  out {:02x?}", s.class, s.bytes, ran.frame));
            }
        }
    }

    let flows = agent.flows().unwrap();
    for f in flows.iter().filter(|f| f.direction == "original") {
        match tuple_of(f) {
            Some(t) if tuples.contains(&t) => {}
            _ => wrong.push(format!("a flow no frame of the corpus carries: {f:?}")),
        }
    }

    let mut report = format!(
        "{} frames through 3 programs in {took:.1?}; {} flows afterwards\n{:<14} {:<11} {:>7} {:>8} {:>7} {:>8} {:>9} {:>8}\n",
        samples.len(),
        flows.len(),
        "class",
        "program",
        "frames",
        "refused",
        "passed",
        "dropped",
        "redirect",
        "changed"
    );
    for ((class, prog), c) in &tally {
        report += &format!(
            "{class:<14} {prog:<11} {:>7} {:>8} {:>7} {:>8} {:>9} {:>8}\n",
            c.frames, c.refused, c.passed, c.dropped, c.redirected, c.changed
        );
    }
    eprintln!("{report}");
    let ran: usize = tally.values().map(|c| c.frames - c.refused).sum();
    assert!(ran >= 3 * 95_000, "only {ran} program runs took place:\n{report}");
    assert!(
        wrong.is_empty(),
        "{} faults (first 10):\n{}\n{report}",
        wrong.len(),
        wrong.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
}
