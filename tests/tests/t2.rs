//! End-to-end tests of full NAT: the seed's nginx box in front of
//! `node:30100` replaced by wsfwd. Client, node and endpoints share one L2
//! segment (T2), so only SNAT brings the endpoints' replies back.
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use tokio_tungstenite::tungstenite::Message;
use wsfwd_tests::{
    agent::Agent,
    checks::{Capture, affinity_checks, assert_traffic, frame_checks, handshake_checks, predicted_for_client, udp_traffic},
    client::{echo, tcp_connect, udp_exchange, ws_connect, ws_connect_from},
    topo::{Spec, Topo, VIP, upstream_config, upstream_udp_config},
};
use wsfwd_common::DEFAULT_HASH_SEED;

fn endpoints(t: &Topo) -> Vec<std::net::Ipv4Addr> {
    t.backends.iter().map(|b| b.addr).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_01_full_nat_handshake_echo_affinity_with_offload_off_and_on() {
    let mut t = Topo::new("fn", Spec::T2).unwrap();
    t.start_ws_peers().unwrap();
    let config = upstream_config(&endpoints(&t), "Cluster");
    let agent = Agent::start(&t.node, &t.dir, &config, &[]).unwrap();
    let log = agent.log();
    for b in &t.backends {
        let line = format!("endpoint {}:30100: not behind the node, full NAT from {}", b.addr, t.node_addr);
        assert!(log.contains(&line), "{line:?} not in:\n{log}");
    }
    let before = t.csum_errors().unwrap();
    for on in [false, true] {
        t.set_tx_offload(on).unwrap();
        let cap = Capture::start(&t.client, "c0", &t, &format!("client-{on}"));
        handshake_checks(&t, &[t.vip()]).await;
        frame_checks(&t).await;
        affinity_checks(&t, &config, DEFAULT_HASH_SEED).await;
        let lines = cap.stop();
        let direct: Vec<_> = lines.iter().filter(|l| l.contains(" IP 10.0.2.21.") || l.contains(" IP 10.0.2.22.")).collect();
        assert!(direct.is_empty(), "endpoints answered the client directly: {direct:?}");
        assert!(lines.iter().any(|l| l.contains(" IP 192.168.0.150.9080 > ")));
        assert_eq!(t.csum_errors().unwrap(), before, "checksum errors with tx offload {on}");
    }
    let stats = agent.stats().unwrap();
    assert!(stats["snat-allocated"] > 0 && stats["snat-reply-redirected"] > 0, "{stats:?}");
}

/// Full NAT keeps its flows in a table that never evicts; the collector frees
/// them. Here the table holds 256 flows and the SNAT range 256 ports, and the
/// collector runs every second with second-long timeouts, while 960 other
/// connections come and go (each port reused about four times). Eight idle
/// WebSocket connections must come out of it with the same mapping, still
/// echoing: nothing may collect, evict or reassign a live flow — in
/// particular not after the SYN timeout, which idle established flows pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_02_idle_full_nat_connections_survive_churn_through_a_full_nat_table() {
    const NAT_FLOWS: usize = 256;
    const BATCH: usize = 120;
    const BATCHES: usize = 8;
    const IDLE: usize = 8;
    let mut t = Topo::new("fe", Spec::T2).unwrap();
    t.start_ws_peers().unwrap();
    let config = upstream_config(&endpoints(&t), "Cluster");
    let nat_size = (2 * NAT_FLOWS).to_string();
    let agent = Agent::start(
        &t.node,
        &t.dir,
        &config,
        &[
            "--nat-size", &nat_size, "--snat-ports", "40000-40255", "--tcp-syn-timeout", "2", "--tcp-fin-timeout", "1",
            "--snat-quarantine", "1", "--gc-interval", "1",
        ],
    )
    .unwrap();
    assert!(agent.log().contains("--snat-quarantine 1s is shorter than TIME_WAIT"), "{}", agent.log());
    let nat_entries = || agent.flows().unwrap().into_iter().filter(|f| f.table == "nat").collect::<Vec<_>>();

    let mut idle = Vec::new();
    for &src in &t.clients[..IDLE] {
        let (mut ws, hello) = ws_connect(&t.client, src, t.vip()).await.unwrap();
        assert_eq!(echo(&mut ws, Message::text("before")).await.unwrap(), Message::text("before"));
        let me = format!("{src}:{}", ws.get_ref().local_addr().unwrap().port());
        let mapping = nat_entries().into_iter().find(|f| f.source == me).expect("the idle flow's mapping");
        idle.push((ws, hello, me, mapping));
    }
    let at_start = agent.stats().unwrap();

    let churners = &t.clients[IDLE..];
    for batch in 0..BATCHES {
        // Room for a batch: the collector must have freed what earlier batches closed.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let live = nat_entries().len() / 2;
            if live + BATCH <= NAT_FLOWS {
                break;
            }
            assert!(Instant::now() < deadline, "batch {batch}: {live} of {NAT_FLOWS} full-NAT flows still held after 15 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let conns = (0..BATCH).map(|i| tcp_connect(&t.client, churners[i % churners.len()], t.vip()));
        for (i, r) in futures_util::future::join_all(conns).await.into_iter().enumerate() {
            let stream = r.unwrap_or_else(|e| panic!("batch {batch}, connection {i}: {e:#}\n{:?}", agent.stats()));
            // Half end with FIN, half with RST.
            if i % 2 == 0 {
                socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
            }
        }
    }
    for (ws, hello, me, before) in &mut idle {
        let after = nat_entries().into_iter().find(|f| f.source == *me);
        let after = after.unwrap_or_else(|| panic!("{me}: the idle flow's mapping was collected"));
        assert_eq!(after.new_source, before.new_source, "{me}: the mapping changed");
        assert!(after.idle_ms > 2_000, "{me} idled only {} ms: not past the 2 s SYN timeout", after.idle_ms);
        let b = t.backends.iter().find(|b| b.name == hello.backend).unwrap();
        assert_eq!(after.new_destination, format!("{}:30100", b.addr));
        assert_eq!(echo(ws, Message::text("after")).await.unwrap(), Message::text("after"), "{me}");
    }

    let churn = agent.stats().unwrap().since(&at_start);
    assert_eq!(churn["snat-allocated"], (BATCH * BATCHES) as u64, "{churn:?}");
    assert_eq!(churn["drop-snat-exhausted"], 0, "{churn:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_03_snat_ports_under_pressure() {
    let mut t = Topo::new("pp", Spec { external: 1, ..Spec::T2 }).unwrap();
    t.start_ws_peers().unwrap();
    let config = upstream_config(&endpoints(&t), "Cluster");
    {
        let agent = Agent::start(&t.node, &t.dir, &config, &["--snat-ports", "40000-40003"]).unwrap();
        let mut open = Vec::new();
        for (i, &src) in t.clients[..4].iter().enumerate() {
            let (mut ws, _) = ws_connect(&t.client, src, t.vip()).await.unwrap();
            let mine = Message::text(format!("connection {i}"));
            assert_eq!(echo(&mut ws, mine.clone()).await.unwrap(), mine);
            open.push((ws, mine));
        }
        let fifth = tcp_connect(&t.client, t.clients[4], t.vip()).await.expect_err("a fifth connection got a port");
        let kind = fifth.downcast_ref::<std::io::Error>().map(std::io::Error::kind);
        assert_eq!(kind, Some(std::io::ErrorKind::ConnectionRefused), "{fifth:#}");
        // The four still echo their own data, and only theirs.
        for (ws, mine) in &mut open {
            assert_eq!(echo(ws, mine.clone()).await.unwrap(), mine.clone());
        }
        let stats = agent.stats().unwrap();
        assert_eq!((stats["drop-snat-exhausted"], stats["rst-sent"]), (1, 1), "{stats:?}");
    }

    let agent = Agent::start(&t.node, &t.dir, &config, &[]).unwrap();
    let mut conns = Vec::new();
    for i in 0..300usize {
        let (ws, _) = ws_connect(&t.client, t.clients[i % t.clients.len()], t.vip()).await.unwrap();
        conns.push(ws);
    }
    let rounds = conns.iter_mut().enumerate().map(|(i, ws)| async move {
        for round in 0..3 {
            let mine = Message::binary(format!("{i}:{round}:").repeat(50 + i).into_bytes());
            assert_eq!(echo(ws, mine.clone()).await.unwrap(), mine, "connection {i} got another's data");
        }
    });
    futures_util::future::join_all(rounds).await;
    let flows = agent.flows().unwrap();
    let snat: Vec<_> = flows.iter().filter(|f| f.table == "nat" && f.direction == "original").map(|f| f.new_source.clone()).collect();
    assert_eq!(snat.len(), 300, "one mapping per connection");
    assert_eq!(snat.iter().collect::<BTreeSet<_>>().len(), 300, "mappings shared between flows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_04_behind_and_external_endpoints_cluster_and_local() {
    let mut t = Topo::new("mx", Spec { behind: 1, external: 1, ..Spec::T2 }).unwrap();
    t.start_ws_peers().unwrap();
    let (b1, e1) = (&t.backends[0], &t.backends[1]);
    assert!(b1.behind && !e1.behind);

    let config = upstream_config(&endpoints(&t), "Cluster");
    let agent = Agent::start(&t.node, &t.dir, &config, &[]).unwrap();
    let mut used = BTreeSet::new();
    for &src in &t.clients {
        let (mut ws, hello) = ws_connect(&t.client, src, t.vip()).await.unwrap();
        let b = t.backends.iter().find(|b| b.name == hello.backend).unwrap();
        assert_eq!(hello.client, t.seen_as(b, src).to_string(), "{} with Cluster", b.name);
        used.insert(b.name.clone());
        ws.close(None).await.unwrap();
    }
    assert_eq!(used.len(), 2, "Cluster uses both: {used:?}");
    agent.stop().unwrap();

    let config = upstream_config(&endpoints(&t), "Local");
    let agent = Agent::start(&t.node, &t.dir, &config, &[]).unwrap();
    for &src in &t.clients {
        let (mut ws, hello) = ws_connect(&t.client, src, t.vip()).await.unwrap();
        assert_eq!(hello.backend, b1.name, "Local uses only the endpoint behind the node");
        assert_eq!(hello.client, src.to_string());
        ws.close(None).await.unwrap();
    }
    assert_eq!(agent.stats().unwrap()["snat-allocated"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_05_udp_through_full_nat_keeps_its_predicted_endpoint() {
    let mut t = Topo::new("fu", Spec::T2).unwrap();
    t.start_udp_peers().unwrap();
    let config = upstream_udp_config(&endpoints(&t));
    let agent = Agent::start(&t.node, &t.dir, &config, &[]).unwrap();
    let mut used = BTreeSet::new();
    let mut exchanges = Vec::new();
    for &src in &t.clients {
        let want_addr = predicted_for_client(&config, "testim-service", DEFAULT_HASH_SEED, src);
        let want = t.backend_by_addr(&want_addr).unwrap().name.clone();
        for round in 0..3 {
            let payload = format!("datagram {round} from {src}");
            let reply = udp_exchange(&t.client, src, std::net::SocketAddrV4::new(VIP, 9080), payload.as_bytes()).await.unwrap();
            assert_eq!(reply, format!("{want} {} {payload}", t.node_addr), "round {round}");
            exchanges.push((format!("{want_addr}:9090"), payload.len(), reply.len()));
        }
        used.insert(want);
    }
    assert_eq!(used.len(), 2, "{used:?}");
    assert!(agent.stats().unwrap()["snat-allocated"] >= 48);
    // Counted exactly, per endpoint (full-NAT replies at ingress).
    let service = "default/testim-service:9080";
    assert_traffic(&agent, service, &udp_traffic(service, &exchanges));
}

/// Full NAT with fragments both ways: the client's fragments get the SNAT
/// address and the endpoint's fragments get the frontend's, later fragments
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_06_udp_fragments_through_full_nat() {
    let mut t = Topo::new("ff", Spec::T2).unwrap();
    t.start_udp_peers().unwrap();
    let config = upstream_udp_config(&endpoints(&t));
    let agent = Agent::start(&t.node, &t.dir, &config, &[]).unwrap();
    let before = agent.stats().unwrap();
    for &src in &t.clients[..4] {
        let want = predicted_for_client(&config, "testim-service", DEFAULT_HASH_SEED, src);
        let want = t.backend_by_addr(&want).unwrap().name.clone();
        let payload = "z".repeat(4000);
        let reply = udp_exchange(&t.client, src, std::net::SocketAddrV4::new(VIP, 9080), payload.as_bytes()).await.unwrap();
        assert_eq!(reply, format!("{want} {} {payload}", t.node_addr), "{src}");
    }
    let c = agent.stats().unwrap().since(&before);
    assert_eq!(c["pass-fragment-unknown"], 0, "{c:?}");
}

/// A few client ports reused over and over — connect, WebSocket handshake,
/// close with a RST, wait about as long as a closed flow lives, again — while
/// the collector runs every second with second-long timeouts: a reconnect
/// often lands just as the collector removes the old flow on the same tuple.
/// Every handshake must complete (the collector must never delete the new
/// flow's entries, nor leak the old one's port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_07_reused_tuples_racing_the_collector_never_fail_a_handshake() {
    const PORTS: u16 = 32;
    const CYCLES: u32 = 20;
    let mut t = Topo::new("tr", Spec::T2).unwrap();
    t.start_ws_peers().unwrap();
    let config = upstream_config(&endpoints(&t), "Cluster");
    let agent = Agent::start(
        &t.node,
        &t.dir,
        &config,
        &["--gc-interval", "1", "--tcp-fin-timeout", "1", "--tcp-syn-timeout", "1", "--snat-quarantine", "0"],
    )
    .unwrap();
    let t = &t;
    let cycles = (0..PORTS).map(|i| async move {
        let src = std::net::SocketAddrV4::new(t.clients[i as usize % t.clients.len()], 45000 + i);
        for n in 0..CYCLES {
            let (mut ws, _) = ws_connect_from(&t.client, src, t.vip())
                .await
                .unwrap_or_else(|e| panic!("{src}, cycle {n}: the handshake failed: {e:#}"));
            let msg = Message::text(format!("{src} {n}"));
            assert_eq!(echo(&mut ws, msg.clone()).await.unwrap(), msg);
            socket2::SockRef::from(ws.get_ref()).set_linger(Some(Duration::ZERO)).unwrap();
            drop(ws);
            // Around the flow's remaining life (FIN timeout plus up to one collection).
            let pause = 900 + (u64::from(i) * 37 + u64::from(n) * 101) % 1200;
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    });
    futures_util::future::join_all(cycles).await;
    let c = agent.stats().unwrap();
    assert_eq!(c["snat-allocated"], u64::from(PORTS) * u64::from(CYCLES), "{c:?}");
    assert_eq!((c["drop-no-nat-flow"], c["drop-snat-exhausted"]), (0, 0), "{c:?}");
}

/// Routes change under a running agent: an endpoint that was out on the
/// client's segment (full NAT) becomes reachable over a private link, behind
/// the node. Without a restart, new connections to it are forwarded as a
/// gateway (it sees the client's address), and a connection opened before
/// keeps its full-NAT mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_08_endpoints_are_placed_again_when_routes_change() {
    let mut t = Topo::new("rc", Spec::T2).unwrap();
    t.start_ws_peers().unwrap();
    let config = upstream_config(&endpoints(&t), "Cluster");
    let agent = Agent::start(&t.node, &t.dir, &config, &[]).unwrap();
    let (e1_name, e1_addr, e1_ns) = (t.backends[0].name.clone(), t.backends[0].addr, t.backends[0].ns.handle());
    let src = *t
        .clients
        .iter()
        .find(|&&c| predicted_for_client(&config, "testim-service", DEFAULT_HASH_SEED, c) == e1_addr.to_string())
        .expect("a client on e1");
    let (mut before, hello) = ws_connect(&t.client, src, t.vip()).await.unwrap();
    assert_eq!((hello.backend.as_str(), hello.client), (e1_name.as_str(), t.node_addr.to_string()), "full NAT to start with");

    let node = t.node.handle();
    t.veth(&node, "nx", &e1_ns, "x0").unwrap();
    node.ip(&["addr", "add", "10.9.1.1/30", "dev", "nx"]).unwrap();
    e1_ns.ip(&["addr", "add", "10.9.1.2/30", "dev", "x0"]).unwrap();
    // The clients (10.0.2.100-115) now answered through the node; the node reaches e1 over the link.
    e1_ns.ip(&["route", "add", "10.0.2.96/27", "via", "10.9.1.1"]).unwrap();
    node.ip(&["route", "add", &format!("{e1_addr}/32"), "via", "10.9.1.2"]).unwrap();

    let line = format!("endpoint {e1_addr}:30100: behind the node");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agent.log().lines().skip_while(|l| !l.starts_with("routes changed")).any(|l| l.starts_with(&line)) {
        assert!(Instant::now() < deadline, "no re-placement within 5 s:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut ws, hello) = ws_connect(&t.client, src, t.vip()).await.unwrap();
    assert_eq!((hello.backend.as_str(), hello.client), (e1_name.as_str(), src.to_string()), "now a gateway flow");
    assert_eq!(echo(&mut ws, Message::text("after")).await.unwrap(), Message::text("after"));
    assert_eq!(echo(&mut before, Message::text("still")).await.unwrap(), Message::text("still"), "the full-NAT connection");
}
