//! End-to-end tests of full NAT: the seed's nginx box in front of
//! `node:30100` replaced by wsfwd. Client, node and endpoints share one L2
//! segment (T2), so only SNAT brings the endpoints' replies back.
use std::collections::BTreeSet;

use tokio_tungstenite::tungstenite::Message;
use wsfwd_tests::{
    agent::Agent,
    checks::{Capture, affinity_checks, frame_checks, handshake_checks, predicted_for_client},
    client::{echo, tcp_connect, udp_exchange, ws_connect},
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_02_idle_full_nat_connection_survives_churn() {
    let mut t = Topo::new("fe", Spec::T2).unwrap();
    t.start_ws_peers().unwrap();
    let config = upstream_config(&endpoints(&t), "Cluster");
    let agent = Agent::start(&t.node, &t.dir, &config, &["--ct-size", "1024"]).unwrap();

    let src = t.clients[0];
    let (mut idle, hello) = ws_connect(&t.client, src, t.vip()).await.unwrap();
    assert_eq!(echo(&mut idle, Message::text("before")).await.unwrap(), Message::text("before"));
    let port = idle.get_ref().local_addr().unwrap().port();
    let idle_src = format!("{src}:{port}");
    let mapping = || {
        agent.flows().unwrap().into_iter().find(|f| f["table"] == "nat" && f["source"] == idle_src.as_str())
    };
    let before = mapping().expect("the idle flow's mapping");

    let mut done = 0;
    for batch in 0..100 {
        let conns = (0..50).map(|i| tcp_connect(&t.client, t.clients[1 + (batch * 50 + i) % (t.clients.len() - 1)], t.vip()));
        for r in futures_util::future::join_all(conns).await {
            drop(r.unwrap());
            done += 1;
        }
    }
    assert_eq!(done, 5000);
    let nat_flows = agent.flows().unwrap().into_iter().filter(|f| f["table"] == "nat").count();
    assert!(nat_flows > 2048, "the churn did not go through full NAT ({nat_flows} entries)");

    let after = mapping().expect("the idle flow's SNAT mapping was lost");
    assert_eq!(after["newSource"], before["newSource"], "the mapping changed");
    assert_eq!(echo(&mut idle, Message::text("after")).await.unwrap(), Message::text("after"));
    let b = t.backends.iter().find(|b| b.name == hello.backend).unwrap();
    assert_eq!(after["newDestination"], format!("{}:30100", b.addr).as_str());
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
    let snat: Vec<_> = flows.iter().filter(|f| f["table"] == "nat" && f["direction"] == "original").map(|f| f["newSource"].as_str().unwrap().to_owned()).collect();
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
    for &src in &t.clients {
        let want = predicted_for_client(&config, "testim-service", DEFAULT_HASH_SEED, src);
        let want = t.backend_by_addr(&want).unwrap().name.clone();
        for round in 0..3 {
            let payload = format!("datagram {round} from {src}");
            let reply = udp_exchange(&t.client, src, std::net::SocketAddrV4::new(VIP, 9080), payload.as_bytes()).await.unwrap();
            assert_eq!(reply, format!("{want} {} {payload}", t.node_addr), "round {round}");
        }
        used.insert(want);
    }
    assert_eq!(used.len(), 2, "{used:?}");
    assert!(agent.stats().unwrap()["snat-allocated"] >= 48);
}
