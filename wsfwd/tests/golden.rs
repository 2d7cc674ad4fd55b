//! Golden vectors: the endpoint every node picks for a client must not change
//! between versions, or a cluster whose nodes run different versions (every
//! cluster, during an upgrade) sends one client to different endpoints.
//! The end-to-end tests check the datapath against `wsfwd::choose`; these pin
//! `wsfwd::choose` itself: whole Maglev tables, and the seed's clients.
//!
//! A deliberate change updates the files with `WSFWD_BLESS=1 cargo test -p
//! wsfwd --test golden` and says so in the README ("Upgrades and affinity").
use std::{fmt::Write as _, net::Ipv4Addr, path::Path};

use wsfwd::{
    choose::{Tuple, choose, flow_hash},
    config,
    placement::Node,
    maglev,
    model::{HashInput, Protocol},
};
use wsfwd_common::DEFAULT_HASH_SEED;

/// A seed other than the default, to show the seed is honoured.
const OTHER_SEED: u32 = 0x1234_5678;

fn golden_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/golden"))
}

/// Compares `actual` with the golden file `name`, or rewrites it under `WSFWD_BLESS=1`.
fn check_golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("WSFWD_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    if expected == actual {
        return;
    }
    let (n, (want, got)) = expected
        .lines()
        .chain(std::iter::repeat(""))
        .zip(actual.lines().chain(std::iter::repeat("")))
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .expect("texts differ, so some line does");
    panic!(
        "{} no longer holds, first at line {}:\n  expected: {want}\n  actual:   {got}\n\
         Every node must pick the same endpoint for a client, across versions: a change here breaks \
         affinity in a cluster running mixed versions. If it is deliberate, rerun with WSFWD_BLESS=1 and \
         say so in the README (\"Upgrades and affinity\").",
        path.display(),
        n + 1
    );
}

fn endpoints(addrs: &[[u8; 4]], port: u16) -> Vec<maglev::Key> {
    addrs.iter().map(|&a| (Ipv4Addr::from(a), port)).collect()
}

#[test]
fn maglev_tables() {
    let seed_pods = endpoints(&[[10, 244, 1, 10], [10, 244, 2, 10], [10, 244, 3, 10]], 9080);
    let one_arm = endpoints(&[[10, 0, 2, 21], [10, 0, 2, 22]], 30100);
    let ten: Vec<maglev::Key> = (1..=10).map(|i| (Ipv4Addr::new(10, 244, 0, i), 8080)).collect();
    let mut out = String::from("# Whole Maglev tables: each slot names an endpoint by its place in the list.\n");
    for (eps, seed) in [
        (&seed_pods, DEFAULT_HASH_SEED),
        (&seed_pods, OTHER_SEED),
        (&one_arm, DEFAULT_HASH_SEED),
        (&ten, DEFAULT_HASH_SEED),
    ] {
        let size = maglev::table_size(eps.len());
        let table = maglev::build(eps, size, seed).expect("a table");
        let list: Vec<String> = eps.iter().map(|(a, p)| format!("{a}:{p}")).collect();
        writeln!(out, "table size={size} seed={seed:#010x} endpoints={}", list.join(",")).unwrap();
        for row in table.chunks(50) {
            let row: Vec<String> = row.iter().map(u32::to_string).collect();
            writeln!(out, "{}", row.join(" ")).unwrap();
        }
    }
    check_golden("maglev-tables.txt", &out);
}

/// The seed's two Services (fixtures/seed-demo.yaml) on the test topologies'
/// node (10.0.1.1): which endpoint each client gets, by seed.
#[test]
fn seed_manifest_choices() {
    let cfg = config::parse(include_str!("../../fixtures/seed-demo.yaml")).expect("the seed's manifests");
    let node_addr = Ipv4Addr::new(10, 0, 1, 1);
    let node = Node { addrs: vec![node_addr], ..Node::default() };
    let testim = cfg.services.iter().find(|s| s.name == "testim-service").expect("testim-service");
    let im = cfg.services.iter().find(|s| s.name == "im-service").expect("im-service");
    assert_eq!((testim.hash, im.hash), (HashInput::ClientIp, HashInput::FiveTuple));

    let mut out = String::from("# The seed's Services: the endpoint a new flow gets, by hash seed.\n");
    for seed in [DEFAULT_HASH_SEED, OTHER_SEED] {
        // The client addresses of topologies T1 (10.0.1.2-17) and T2 (10.0.2.100-115).
        let clients = (2..18).map(|i| Ipv4Addr::new(10, 0, 1, i)).chain((100..116).map(|i| Ipv4Addr::new(10, 0, 2, i)));
        for client in clients {
            let t = Tuple {
                client,
                client_port: 40000,
                frontend: Ipv4Addr::new(192, 168, 0, 150),
                frontend_port: 9080,
                protocol: Protocol::Tcp,
            };
            line(&mut out, seed, "testim-service", &t, choose(testim, &node, seed, &t));
        }
        // One client, many source ports: the NodePort hashes the 5-tuple.
        for client_port in (40000..40016).chain([1024, 33000, 60999, 65535]) {
            let t = Tuple {
                client: Ipv4Addr::new(10, 0, 1, 2),
                client_port,
                frontend: node_addr,
                frontend_port: 30100,
                protocol: Protocol::Tcp,
            };
            line(&mut out, seed, "im-service", &t, choose(im, &node, seed, &t));
        }
    }
    check_golden("seed-choices.txt", &out);
}

fn line(out: &mut String, seed: u32, service: &str, t: &Tuple, endpoint: Option<maglev::Key>) {
    let (addr, port) = endpoint.expect("the seed's services have ready endpoints");
    writeln!(
        out,
        "seed={seed:#010x} {service} {}:{} -> {}:{} {}: {addr}:{port}",
        t.client, t.client_port, t.frontend, t.frontend_port, t.protocol
    )
    .unwrap();
}

/// The flow hash as the datapath feeds it: pinned in wsfwd-common for the raw
/// function, here for how a tuple becomes its input.
#[test]
fn flow_hash_of_tuples() {
    let t = Tuple {
        client: Ipv4Addr::new(10, 0, 1, 2),
        client_port: 40000,
        frontend: Ipv4Addr::new(10, 0, 1, 1),
        frontend_port: 30100,
        protocol: Protocol::Tcp,
    };
    let got = [
        flow_hash(HashInput::ClientIp, &t, DEFAULT_HASH_SEED),
        flow_hash(HashInput::FiveTuple, &t, DEFAULT_HASH_SEED),
        flow_hash(HashInput::FiveTuple, &Tuple { protocol: Protocol::Udp, ..t }, DEFAULT_HASH_SEED),
        flow_hash(HashInput::ClientIp, &t, OTHER_SEED),
        flow_hash(HashInput::FiveTuple, &t, OTHER_SEED),
    ];
    assert_eq!(got, GOLDEN_TUPLE_HASHES, "the flow hash of a tuple changed: see this file's header");
}

const GOLDEN_TUPLE_HASHES: [u32; 5] = [2551298647, 3789215882, 1963663758, 584815448, 517743527];
