//! Checks shared by the end-to-end tests: what a WebSocket user of the
//! service would notice, asserted.
use std::{collections::BTreeSet, net::{Ipv4Addr, SocketAddrV4}, time::Duration};

use tokio_tungstenite::tungstenite::{Bytes, Message};
use wsfwd::{config, maglev};
use wsfwd_common::{DEFAULT_HASH_SEED, hash_client};

use crate::{
    client::{echo, ws_connect},
    netns::Netns,
    sys::Proc,
    topo::Topo,
};

/// The endpoint address the datapath must pick for `client`, computed from
/// the config with wsfwd's own Maglev table and the shared hash.
pub fn predicted(config_yaml: &str, service: &str, client: Ipv4Addr) -> String {
    let cfg = config::parse(config_yaml).expect("config");
    let svc = cfg.services.iter().find(|s| s.name == service).expect("service in config");
    let keys: Vec<maglev::Key> =
        svc.endpoints.iter().filter(|e| e.takes_new_flows()).map(|e| (e.address, e.port)).collect();
    let size = maglev::table_size(keys.len());
    let table = maglev::build(&keys, size, DEFAULT_HASH_SEED).expect("table");
    let slot = hash_client(u32::from(client), DEFAULT_HASH_SEED) % size;
    keys[table[slot as usize] as usize].0.to_string()
}

/// tcpdump on one interface of a namespace, its lines read after it stops.
pub struct Capture(Proc);

impl Capture {
    pub fn start(ns: &Netns, iface: &str, t: &Topo, name: &str) -> Self {
        let mut p = Proc::spawn(
            ns.command("tcpdump").args(["-i", iface, "-n", "-l", "-U", "tcp or udp"]),
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
pub async fn affinity_checks(t: &Topo, config_yaml: &str) {
    let mut used = BTreeSet::new();
    for &src in &t.clients {
        let want = predicted(config_yaml, "testim-service", src);
        let want = &t.backend_by_addr(&want).unwrap().name;
        for round in 0..5 {
            let (mut ws, hello) = ws_connect(&t.client, src, t.vip()).await.unwrap();
            assert_eq!(&hello.backend, want, "{src}, connection {round}");
            ws.close(None).await.unwrap();
        }
        used.insert(want.clone());
    }
    assert!(used.len() >= 2, "16 clients all landed on {used:?}");
}

