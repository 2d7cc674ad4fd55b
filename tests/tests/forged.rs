//! Forged packets from the client's link, against live WebSocket connections.
//! The attacker sends raw frames out of the client's interface (past the
//! client's own stack), as any host on that link could. Netfilter is the bar:
//! where it keeps the victim's connection alive, wsfwd must too.
use std::{
    net::SocketAddrV4,
    time::Duration,
};

use tokio_tungstenite::tungstenite::Message;
use wsfwd_tests::{
    agent::Agent,
    client::{Ws, echo, ws_connect},
    forge::{RawLink, TCP_SYN, Tcp},
    topo::{NODE_PORT, SEED_CONFIG, Spec, Topo},
};

/// The seed's Services with the NodePort one hashed by client address too, so
/// both frontends send a client to the same endpoint (identical tables).
fn both_sh() -> String {
    let from = "  name: im-service\n  labels:";
    assert!(SEED_CONFIG.contains(from));
    SEED_CONFIG.replacen(from, "  name: im-service\n  annotations: {kube-router.io/service.scheduler: sh}\n  labels:", 1)
}

fn local(ws: &Ws) -> SocketAddrV4 {
    match ws.get_ref().local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    }
}

async fn still_echoes(ws: &mut Ws, what: &str) {
    let msg = Message::text(format!("still there after {what}"));
    let back = echo(ws, msg.clone()).await.unwrap_or_else(|e| panic!("the victim's connection died after {what}: {e:#}"));
    assert_eq!(back, msg, "after {what}");
}

/// A SYN forged with the victim's address and port, sent to the other
/// frontend, reaches the victim's endpoint: it must not take over the
/// victim's reply entry (its replies would leave with the wrong source and
/// the client's RST would kill the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_syn_to_another_frontend_leaves_the_victim_alone() {
    let mut t = Topo::new("fs", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    let config = both_sh();
    let agent = Agent::start(&t.node, &t.dir, &config, &[]).unwrap();
    let (mut victim, hello) = ws_connect(&t.client, t.clients[0], t.vip()).await.unwrap();
    still_echoes(&mut victim, "connecting").await;
    let me = local(&victim);
    let via_node_port = ws_connect(&t.client, t.clients[0], t.node_port()).await.unwrap().1;
    assert_eq!(via_node_port.backend, hello.backend, "both frontends must send this client to one endpoint");

    let link = RawLink::open(&t.client, "c0", &t.node, "n0").unwrap();
    let before = agent.stats().unwrap();
    let mut syn = Tcp::new(me, SocketAddrV4::new(t.node_addr, NODE_PORT), TCP_SYN);
    for seq in [1u32, 0x7fff_0000, 0xdead_beef] {
        syn.seq = seq;
        link.send_ip(&syn.packet()).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    still_echoes(&mut victim, "a spoofed SYN to the NodePort").await;
    let forged = agent.stats().unwrap().since(&before);
    assert_eq!(forged["drop-tuple-clash"], 3, "{forged:?}");
    let flows = agent.flows().unwrap();
    let reply = flows.iter().find(|f| f.direction == "reply" && f.destination == me.to_string()).expect("victim's reply entry");
    assert_eq!(reply.new_source, t.vip().to_string(), "the victim's replies no longer come from the VIP");
}
