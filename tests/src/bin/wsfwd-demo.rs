//! `cargo xtask demo`: the seed's scenario in network namespaces. A client
//! with 16 addresses chats over WebSocket with three backends through the
//! VIP 192.168.0.150:9080 and the NodePort 10.0.1.1:30100, and the demo
//! shows where each client landed and that it stayed there.
use std::{collections::BTreeMap, process::ExitCode};

use anyhow::Context as _;
use tokio_tungstenite::tungstenite::Message;
use wsfwd_tests::{
    agent::Agent,
    client::{echo, ws_connect},
    topo::{SEED_CONFIG, Spec, Topo},
};

const RECONNECTS: usize = 3;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    match demo().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn step(s: &str) {
    println!("\n==> {s}");
}

async fn demo() -> anyhow::Result<bool> {
    step("building the seed's network: a client namespace with 16 addresses, the node, three backends");
    let mut t = Topo::new("demo", Spec::T1)?;
    println!("    client {} .. {}  ->  node 10.0.1.1 (wsfwd on n0)  ->  backends b1 10.244.1.10, b2 10.244.2.10, b3 10.244.3.10", t.clients[0], t.clients[t.clients.len() - 1]);
    t.start_ws_peers()?;
    println!("    each backend runs a WebSocket echo server (Python websockets) on :9080");

    step("starting wsfwd on fixtures/seed-demo.yaml (the seed's im-service and testim-service)");
    let agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, &[])?;
    for line in agent.log().lines() {
        println!("    | {line}");
    }

    let mut held = true;
    for (title, dst) in [
        ("testim-service: externalIP 192.168.0.150:9080, sessionAffinity ClientIP, scheduler sh", t.vip()),
        ("im-service: NodePort 10.0.1.1:30100 (5-tuple hash: each connection may land elsewhere)", t.node_port()),
    ] {
        step(&format!("chatting through {title}"));
        let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
        for &src in &t.clients[..8] {
            let mut seen = Vec::new();
            for round in 0..RECONNECTS {
                let (mut ws, hello) = ws_connect(&t.client, src, dst).await.with_context(|| format!("{src} -> {dst}"))?;
                let msg = format!("hi from {src}, connection {}", round + 1);
                let back = echo(&mut ws, Message::text(msg.clone())).await?;
                anyhow::ensure!(back == Message::text(msg), "echo mismatch");
                ws.close(None).await?;
                seen.push(format!("{} (sees {})", hello.backend, hello.client));
                *per_backend.entry(hello.backend).or_default() += 1;
            }
            let stable = seen.windows(2).all(|w| w[0] == w[1]);
            if dst == t.vip() {
                held &= stable;
            }
            println!("    {src:<10} -> {}{}", seen.join(", "), if stable { "" } else { "  (moved)" });
        }
        println!("    connections per backend: {per_backend:?}");
    }

    step("what the datapath counted");
    for (name, value) in agent.stats()? {
        if value > 0 {
            println!("    {name:<24} {value}");
        }
    }
    step("cleaning up: wsfwd stopped and its datapath removed (`wsfwd cleanup`), then the namespaces go");
    let status = agent.stop()?;
    println!("    wsfwd exited with {status}");
    println!();
    if held {
        println!("affinity held: every client stayed on its backend across {RECONNECTS} connections through the VIP");
    } else {
        println!("AFFINITY BROKEN: a client moved between backends through the VIP");
    }
    Ok(held)
}
