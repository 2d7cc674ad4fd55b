//! Checks shared by the end-to-end tests: what a WebSocket user of the
//! service would notice, asserted.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use tokio_tungstenite::tungstenite::{Bytes, Message};
use wsfwd::{
    choose::{Tuple, choose},
    config,
    placement::Node,
    model::Protocol,
};

use crate::{
    agent::{Agent, TrafficView},
    client::{echo, ws_connect},
    netns::Netns,
    sys::Proc,
    topo::{Topo, VIP, VIP_PORT},
};

/// The endpoint address the datapath must give a new flow `t` of `service`
/// with hash seed `seed`, from `wsfwd::choose` — the function the datapath's
/// tables are compiled with, itself pinned by golden vectors.
pub fn predicted(config_yaml: &str, service: &str, seed: u32, t: &Tuple) -> String {
    let cfg = config::parse(config_yaml).expect("config");
    let svc = cfg.services.iter().find(|s| s.name == service).expect("service in config");
    // Every endpoint counts as behind the node: right for T1, and for
    // externalTrafficPolicy: Cluster anywhere.
    let (addr, _) = choose(svc, &Node::default(), seed, t).expect("an endpoint");
    addr.to_string()
}

/// `predicted` for a client-address service reached at the VIP.
pub fn predicted_for_client(config_yaml: &str, service: &str, seed: u32, client: Ipv4Addr) -> String {
    let t = Tuple { client, client_port: 0, frontend: VIP, frontend_port: VIP_PORT, protocol: Protocol::Tcp };
    predicted(config_yaml, service, seed, &t)
}

/// tcpdump on one interface of a namespace, its lines read after it stops.
pub struct Capture(Proc);

impl Capture {
    pub fn start(ns: &Netns, iface: &str, t: &Topo, name: &str) -> Self {
        Self::filtered(ns, iface, t, name, "tcp or udp")
    }

    /// Captures only what matches the pcap `filter`.
    pub fn filtered(ns: &Netns, iface: &str, t: &Topo, name: &str, filter: &str) -> Self {
        let mut p = Proc::spawn(
            ns.command("tcpdump").args(["-i", iface, "-n", "-S", "-l", "-U", filter]),
            &t.dir.join(format!("{name}.pcap.txt")),
        )
        .unwrap();
        p.wait_for_line("listening on", Duration::from_secs(10)).unwrap();
        Self(p)
    }

    pub fn stop(mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        self.0.signal(libc::SIGINT);
        self.0.wait_timeout(Duration::from_secs(5));
        self.0.output().lines().filter(|l| l.contains(" IP ")).map(str::to_owned).collect()
    }
}

/// Handshake through the VIP and the NodePort from several clients: the
/// backend sees the real client address; echo works.
pub async fn handshake_checks(t: &Topo, dsts: &[SocketAddrV4]) {
    for &src in &t.clients[..4] {
        for &dst in dsts {
            let (mut ws, hello) = ws_connect(&t.client, src, dst).await.unwrap_or_else(|e| panic!("{src} -> {dst}: {e:#}"));
            let backend = t.backends.iter().find(|b| b.name == hello.backend).unwrap_or_else(|| panic!("{hello:?}"));
            assert_eq!(hello.client, t.seen_as(backend, src).to_string(), "the address {} sees", backend.name);
            let back = echo(&mut ws, Message::text("hello through wsfwd")).await.unwrap();
            assert_eq!(back, Message::text("hello through wsfwd"));
            ws.close(None).await.unwrap();
        }
    }
}

/// Text and binary frames up to 1 MiB, and ping/pong.
pub async fn frame_checks(t: &Topo) {
    let (mut ws, _) = ws_connect(&t.client, t.clients[0], t.vip()).await.unwrap();
    for size in [0usize, 1, 125, 126, 65_535, 65_536, 300_000, 1 << 20] {
        let text: String = (0..size).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        assert_eq!(echo(&mut ws, Message::text(text.clone())).await.unwrap(), Message::text(text), "text {size}");
        let bin: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let back = echo(&mut ws, Message::binary(bin.clone())).await.unwrap();
        assert_eq!(back, Message::binary(bin), "binary {size}");
    }
    let payload = Bytes::from_static(b"are you there");
    assert_eq!(echo(&mut ws, Message::Ping(payload.clone())).await.unwrap(), Message::Pong(payload));
    ws.close(None).await.unwrap();
}

/// Every client address reaches the predicted backend on every reconnection.
/// Returns each client's backend.
pub async fn affinity_checks(t: &Topo, config_yaml: &str, seed: u32) -> BTreeMap<Ipv4Addr, String> {
    let mut seen = BTreeMap::new();
    for &src in &t.clients {
        let want = predicted_for_client(config_yaml, "testim-service", seed, src);
        let want = &t.backend_by_addr(&want).unwrap().name;
        for round in 0..5 {
            let (mut ws, hello) = ws_connect(&t.client, src, t.vip()).await.unwrap();
            assert_eq!(&hello.backend, want, "{src}, connection {round}, hash seed {seed:#x}");
            ws.close(None).await.unwrap();
        }
        seen.insert(src, want.clone());
    }
    let used: BTreeSet<&String> = seen.values().collect();
    assert!(used.len() >= 2, "16 clients all landed on {used:?}");
    seen
}

/// Expected `wsfwd services --stats` rows of `service`, from UDP datagrams
/// exchanged with its endpoints: each (endpoint, request payload, reply
/// payload) is one packet each way of 28 header bytes plus its payload.
pub fn udp_traffic(service: &str, exchanges: &[(String, usize, usize)]) -> BTreeMap<String, TrafficView> {
    let mut out: BTreeMap<String, TrafficView> = BTreeMap::new();
    for (endpoint, request, reply) in exchanges {
        let t = out.entry(endpoint.clone()).or_insert_with(|| TrafficView {
            service: service.to_owned(),
            endpoint: endpoint.clone(),
            ..TrafficView::default()
        });
        t.packets_in += 1;
        t.bytes_in += 28 + *request as u64;
        t.packets_out += 1;
        t.bytes_out += 28 + *reply as u64;
    }
    out
}

/// The agent's traffic rows of `service` equal `want`, endpoint by endpoint
/// (every endpoint it counts for the service is in `want`).
pub fn assert_traffic(agent: &Agent, service: &str, want: &BTreeMap<String, TrafficView>) {
    let rows = agent.traffic().unwrap();
    let got: BTreeMap<String, TrafficView> = rows
        .into_iter()
        .filter(|r| r.service == service && (r.packets_in > 0 || r.packets_out > 0 || want.contains_key(&r.endpoint)))
        .map(|r| (r.endpoint.clone(), r))
        .collect();
    assert_eq!(&got, want, "packets and bytes per endpoint of {service}");
}
