//! ICMP through the forwarder: errors about translated flows reach the peer
//! that can act on them, in gateway (T1) and full-NAT (T2) topologies.
use std::net::SocketAddrV4;

use tokio_tungstenite::tungstenite::Message;
use wsfwd_tests::{
    agent::Agent,
    client::{echo, next, send, udp_exchange_with, udp_expect_refused, ws_connect},
    topo::{SEED_CONFIG, Spec, Topo, UDP_SERVICE, VIP, upstream_config, upstream_udp_config},
};

const MIB: usize = 1 << 20;

/// The server pushes 1 MiB frames to a client behind a 1280-byte link. The
/// client said MSS 1460, so this works only if the router's "fragmentation
/// needed" (sent to the frontend address) is translated and reaches the
/// endpoint.
async fn push_through_small_link(t: &Topo, agent: &Agent) {
    for &src in &t.clients[..2] {
        // Each client address is a destination the endpoint must learn the path MTU of.
        let at_start = agent.stats().unwrap();
        let (mut ws, _) = ws_connect(&t.client, src, t.vip()).await.unwrap();
        for _ in 0..2 {
            send(&mut ws, Message::text(format!("push {MIB}"))).await.unwrap();
            match next(&mut ws).await.unwrap_or_else(|e| panic!("{e:#}\n{:?}", agent.stats())) {
                Message::Binary(b) => {
                    assert_eq!(b.len(), MIB);
                    assert!(b.iter().enumerate().all(|(i, &x)| x as usize == i % 251), "corrupted frame");
                }
                other => panic!("expected 1 MiB, got {other:?}"),
            }
        }
        let this_client = agent.stats().unwrap().since(&at_start);
        assert!(this_client["icmp-translated"] > 0, "{src}: {this_client:?}");
    }
}


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pmtu_gateway_t1() {
    let mut t = Topo::new("p1", Spec::T1.with_router()).unwrap();
    t.start_ws_peers().unwrap();
    let agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, &[]).unwrap();
    push_through_small_link(&t, &agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pmtu_full_nat_t2() {
    let mut t = Topo::new("p2", Spec::T2.with_router()).unwrap();
    t.start_ws_peers().unwrap();
    let addrs: Vec<_> = t.backends.iter().map(|b| b.addr).collect();
    let agent = Agent::start(&t.node, &t.dir, &upstream_config(&addrs, "Cluster"), &[]).unwrap();
    push_through_small_link(&t, &agent).await;
}

/// No UDP server on the endpoints: their "port unreachable", about a packet
/// the client sent to the VIP, must come back quoting the VIP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_unreachable_reaches_the_client_gateway_t1() {
    let t = Topo::new("u1", Spec::T1).unwrap();
    let agent = Agent::start(&t.node, &t.dir, &format!("{SEED_CONFIG}\n---\n{UDP_SERVICE}"), &[]).unwrap();
    for &src in &t.clients[..4] {
        udp_expect_refused(&t.client, src, SocketAddrV4::new(VIP, 9080)).await.unwrap();
    }
    assert!(agent.stats().unwrap()["icmp-translated"] >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_unreachable_reaches_the_client_full_nat_t2() {
    let t = Topo::new("u2", Spec::T2).unwrap();
    let addrs: Vec<_> = t.backends.iter().map(|b| b.addr).collect();
    let agent = Agent::start(&t.node, &t.dir, &upstream_udp_config(&addrs), &[]).unwrap();
    for &src in &t.clients[..4] {
        udp_expect_refused(&t.client, src, SocketAddrV4::new(VIP, 9080)).await.unwrap();
    }
    assert!(agent.stats().unwrap()["icmp-translated"] >= 4);
}

/// The node's links to the backends are narrower (1280) than the client's and
/// the backends' own (1500): the client's big segments must be answered with
/// "fragmentation needed" from the VIP, with tx offload off and on (GSO).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frag_needed_from_the_vip_when_the_endpoint_link_is_narrower() {
    let mut t = Topo::new("mt", Spec { narrow_backend_links: true, ..Spec::T1 }).unwrap();
    t.start_ws_peers().unwrap();
    let agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, &[]).unwrap();
    let before = t.csum_errors().unwrap();
    let vip = VIP.to_string();
    for (round, on) in [false, true].into_iter().enumerate() {
        t.set_tx_offload(on).unwrap();
        // Forget the path MTU an earlier round learned: this round must learn it again.
        t.client.ip(&["route", "flush", "cache"]).unwrap();
        let route = t.client.ip(&["route", "get", &vip]).unwrap();
        assert!(!route.contains("mtu"), "the client still knows a path MTU: {route}");
        let at_start = agent.stats().unwrap();
        let src = t.clients[round];
        let (mut ws, _) = ws_connect(&t.client, src, t.vip()).await.unwrap();
        let big = format!("len {}", "x".repeat(MIB));
        let answer = echo(&mut ws, Message::text(big.clone()))
            .await
            .unwrap_or_else(|e| panic!("offload {on}: {e:#}\n{:?}", agent.stats()));
        assert_eq!(answer, Message::text(big.len().to_string()), "offload {on}");
        let route = t.client.ip(&["route", "get", &vip]).unwrap();
        assert!(route.contains("mtu 1280"), "offload {on}: the client did not learn the path MTU: {route}");
        let this_round = agent.stats().unwrap().since(&at_start);
        assert!(this_round["icmp-frag-needed-sent"] >= 1, "offload {on}: {this_round:?}");
        assert_eq!(this_round["drop-frag-needed"], 0, "offload {on}");
        // With offload on the client hands the node GSO packets, which the
        // kernel's route lookup lets through whatever their size: only the
        // segment check answers them. With it off they arrive segmented.
        let gso = this_round["icmp-frag-needed-gso"];
        if on {
            assert!(gso >= 1, "offload on: no GSO packet was answered: {this_round:?}");
        } else {
            assert_eq!(gso, 0, "offload off: {this_round:?}");
        }
    }
    assert_eq!(t.csum_errors().unwrap(), before);
}

/// A UDP datagram too large for the node's link to its endpoint: without DF
/// it is fragmented on the way (as a router would) and arrives whole; with DF
/// the client is told the path MTU by the VIP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_without_df_is_fragmented_with_df_gets_frag_needed() {
    let mut t = Topo::new("uf", Spec { narrow_backend_links: true, ..Spec::T1 }).unwrap();
    t.start_udp_peers().unwrap();
    let agent = Agent::start(&t.node, &t.dir, &format!("{SEED_CONFIG}\n---\n{UDP_SERVICE}"), &[]).unwrap();
    let dst = SocketAddrV4::new(VIP, 9080);
    let big = format!("len {}", "x".repeat(1396));
    let before = agent.stats().unwrap();
    let reply = udp_exchange_with(&t.client, t.clients[0], dst, big.as_bytes(), Some(false)).await.unwrap();
    assert!(reply.ends_with(&format!(" {} len={}", t.clients[0], big.len())), "{reply}");
    let c = agent.stats().unwrap().since(&before);
    assert!(c["fragmented-by-kernel"] >= 1, "{c:?}");
    assert_eq!(c["icmp-frag-needed-sent"], 0, "{c:?}");

    // With DF: "fragmentation needed" from the VIP; the client learns 1280.
    let src = t.clients[1];
    let before = agent.stats().unwrap();
    let _ = udp_exchange_with(&t.client, src, dst, big.as_bytes(), Some(true)).await;
    let c = agent.stats().unwrap().since(&before);
    assert!(c["icmp-frag-needed-sent"] >= 1, "{c:?}");
    assert_eq!(c["fragmented-by-kernel"], 0, "{c:?}");
    let route = t.client.ip(&["route", "get", &VIP.to_string(), "from", &src.to_string()]).unwrap();
    assert!(route.contains("mtu 1280"), "the client did not learn the path MTU: {route}");
}

/// Full NAT, both ways: a datagram without DF too large for the node's route
/// is fragmented on the way, and every fragment carries the translated
/// source (the node's for the endpoint, the VIP for the client), never the
/// original one; with DF the client is told the path MTU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_without_df_is_fragmented_full_nat_t2() {
    let mut t = Topo::new("ug", Spec::T2).unwrap();
    t.start_udp_peers().unwrap();
    let addrs: Vec<_> = t.backends.iter().map(|b| b.addr).collect();
    let agent = Agent::start(&t.node, &t.dir, &upstream_udp_config(&addrs), &[]).unwrap();
    let dst = SocketAddrV4::new(VIP, 9080);
    // The node's routes to the endpoints, and to one client address, are narrower than the
    // segment ("lock": the kernel's route lookup for programs ignores an unlocked route MTU).
    let narrow = |addr: std::net::Ipv4Addr| {
        t.node.ip(&["route", "add", &format!("{addr}/32"), "dev", "n0", "mtu", "lock", "1280"]).unwrap();
    };
    for &a in &addrs {
        narrow(a);
    }
    narrow(t.clients[1]);

    // Towards the endpoint: it must see the node's address, and the whole datagram.
    let big = format!("len {}", "x".repeat(1396));
    let before = agent.stats().unwrap();
    let reply = udp_exchange_with(&t.client, t.clients[0], dst, big.as_bytes(), Some(false)).await.unwrap();
    assert!(reply.ends_with(&format!(" {} len={}", t.node_addr, big.len())), "{reply}");
    let c = agent.stats().unwrap().since(&before);
    assert!(c["fragmented-by-kernel-snat"] >= 1, "{c:?}");
    assert!(c["fragment-snat-translated"] >= 2, "{c:?}");
    assert_eq!(c["icmp-frag-needed-sent"], 0, "{c:?}");

    // Towards the client: the endpoint answers 1,400 bytes without DF; the
    // reply must come whole and from the VIP (`udp_exchange_with` checks).
    let before = agent.stats().unwrap();
    let reply = udp_exchange_with(&t.client, t.clients[1], dst, b"big 1400", None).await.unwrap();
    let head = format!(" {} ", t.node_addr);
    let at = reply.find(&head).unwrap_or_else(|| panic!("{reply}"));
    assert_eq!(reply.len() - at - head.len(), 1400, "{reply}");
    let c = agent.stats().unwrap().since(&before);
    assert!(c["fragmented-by-kernel-snat"] >= 1, "{c:?}");
    assert!(c["fragment-snat-translated"] >= 2, "{c:?}");
    assert_eq!(c["icmp-frag-needed-sent"], 0, "{c:?}");

    // With DF: "fragmentation needed" from the VIP; the client learns 1280.
    let src = t.clients[2];
    let before = agent.stats().unwrap();
    let _ = udp_exchange_with(&t.client, src, dst, big.as_bytes(), Some(true)).await;
    let c = agent.stats().unwrap().since(&before);
    assert!(c["icmp-frag-needed-sent"] >= 1, "{c:?}");
    assert_eq!(c["fragmented-by-kernel-snat"], 0, "{c:?}");
    let route = t.client.ip(&["route", "get", &VIP.to_string(), "from", &src.to_string()]).unwrap();
    assert!(route.contains("mtu 1280"), "the client did not learn the path MTU: {route}");
}
