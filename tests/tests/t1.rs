//! End-to-end tests in topology T1: the seed's WebSocket service behind its
//! VIP and NodePort, real WebSocket peers (Python `websockets`), the real
//! agent. Each test builds and removes its own namespaces.
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use tokio_tungstenite::tungstenite::Message;
use wsfwd_tests::{
    agent::{self, Agent, Flow},
    checks::{Capture, affinity_checks, assert_traffic, udp_traffic, frame_checks, handshake_checks, predicted, predicted_for_client},
    client::{echo, tcp_connect, udp_exchange, ws_connect},
    peers,
    topo::{NODE_PORT, OTHER_SEED, SEED_CONFIG, Spec, Topo, UDP_SERVICE, VIP, upstream_config},
};
use wsfwd::{choose::Tuple, model::Protocol};
use wsfwd_common::DEFAULT_HASH_SEED;

const TESTIM_SERVICE: &str = include_str!("../../fixtures/seed/testim-service.yaml");
const SEED_ENDPOINTS: &str = include_str!("../../fixtures/seed/endpoints.yaml");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_01_handshake_via_vip_and_node_port_with_real_client_address() {
    let mut t = Topo::new("hs", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    let agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, &[]).unwrap();
    let cap = Capture::start(&t.client, "c0", &t, "client");
    handshake_checks(&t, &[t.vip(), t.node_port()]).await;
    let lines = cap.stop();
    assert!(lines.iter().any(|l| l.contains(&format!("IP {VIP}.9080 > "))), "no reply from the VIP captured");
    assert!(lines.iter().any(|l| l.contains(&format!("IP {}.30100 > ", t.node_addr))), "no reply from node:30100 captured");
    let leaked: Vec<_> = lines.iter().filter(|l| l.contains(" IP 10.244.")).collect();
    assert!(leaked.is_empty(), "backend addresses reached the client: {leaked:?}");
    let stats = agent.stats().unwrap();
    // Replies are translated where they enter the node, never left to its forwarding.
    assert!(stats["redirected"] > 0 && stats["reply-redirected"] > 0 && stats["reply-translated"] == 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_02_text_and_binary_frames_up_to_1mib_and_ping_pong() {
    let mut t = Topo::new("fr", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    let _agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, &[]).unwrap();
    frame_checks(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_03_each_client_reaches_the_predicted_backend_whatever_the_seed() {
    let mut t = Topo::new("af", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    let published = "--hash-seed is the published default";
    let by_default = {
        let agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, &[]).unwrap();
        assert!(agent.log().contains(published), "no warning about the default seed:\n{}", agent.log());
        affinity_checks(&t, SEED_CONFIG, DEFAULT_HASH_SEED).await
    };
    let agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, &["--hash-seed", &OTHER_SEED.to_string()]).unwrap();
    assert!(!agent.log().contains(published), "{}", agent.log());
    let by_other = affinity_checks(&t, SEED_CONFIG, OTHER_SEED).await;
    let moved = by_default.iter().filter(|(client, backend)| by_other[*client] != **backend).count();
    assert!(moved > 0, "no client changed backend with the seed: an ignored --hash-seed would pass");
}

/// The NodePort service has no `sh` annotation: it hashes the 5-tuple, so one
/// client address spreads its connections over the endpoints, each exactly
/// where the prediction for its source port says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_11_node_port_spreads_one_client_by_five_tuple() {
    let mut t = Topo::new("ft", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    let _agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, &[]).unwrap();
    let src = t.clients[0];
    let mut used = BTreeSet::new();
    for i in 0..24 {
        let (mut ws, hello) = ws_connect(&t.client, src, t.node_port()).await.unwrap();
        let client_port = ws.get_ref().local_addr().unwrap().port();
        let tuple = Tuple {
            client: src,
            client_port,
            frontend: t.node_addr,
            frontend_port: NODE_PORT,
            protocol: Protocol::Tcp,
        };
        let want = predicted(SEED_CONFIG, "im-service", DEFAULT_HASH_SEED, &tuple);
        let want = &t.backend_by_addr(&want).unwrap().name;
        assert_eq!(&hello.backend, want, "connection {i} from {src}:{client_port}");
        used.insert(hello.backend);
        ws.close(None).await.unwrap();
    }
    // 24 connections on one endpoint would be a client-address hash (chance of
    // that by the 5-tuple: 3 in 3^24).
    assert!(used.len() >= 2, "every connection from {src} landed on {used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_04_idle_connection_survives_conntrack_eviction() {
    let mut t = Topo::new("ev", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    // testim-service alone: its endpoints serve this one frontend.
    let config_yaml = format!("{TESTIM_SERVICE}\n{SEED_ENDPOINTS}");
    let agent = Agent::start(&t.node, &t.dir, &config_yaml, &["--ct-size", "1024"]).unwrap();

    let src = t.clients[0];
    let (mut idle, hello) = ws_connect(&t.client, src, t.vip()).await.unwrap();
    assert_eq!(echo(&mut idle, Message::text("before")).await.unwrap(), Message::text("before"));
    let backend_addr = t.backends.iter().find(|b| b.name == hello.backend).unwrap().addr.to_string();
    let idle_port = match idle.get_ref().local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a.port(),
        other => panic!("{other}"),
    };
    let idle_src = format!("{src}:{idle_port}");
    let is_idle_flow = |f: &Flow| f.source == idle_src || f.destination == idle_src;
    assert_eq!(agent.flows().unwrap().iter().filter(|f| is_idle_flow(f)).count(), 2, "both directions tracked");

    // 5,000 other connections through the VIP churn the 1,024-entry table.
    let mut done = 0;
    for batch in 0..100 {
        let conns = (0..50).map(|i| {
            let src = t.clients[1 + (batch * 50 + i) % (t.clients.len() - 1)];
            tcp_connect(&t.client, src, t.vip())
        });
        for r in futures_util::future::join_all(conns).await {
            drop(r.unwrap());
            done += 1;
        }
    }
    assert_eq!(done, 5000);
    let remaining: Vec<_> = agent.flows().unwrap().into_iter().filter(|f| is_idle_flow(f)).collect();
    assert!(remaining.is_empty(), "the idle flow was not evicted, so this test proves nothing: {remaining:?}");

    // Still echoes, on the same backend: Maglev picks it again.
    assert_eq!(echo(&mut idle, Message::text("after")).await.unwrap(), Message::text("after"));
    let back: Vec<_> = agent.flows().unwrap().into_iter().filter(|f| f.source == idle_src).collect();
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(back[0].new_destination, format!("{backend_addr}:9080"));
    idle.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_05_checksums_hold_with_tx_offload_off_and_on() {
    let mut t = Topo::new("cs", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    let _agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, &[]).unwrap();
    let before = t.csum_errors().unwrap();
    for on in [false, true] {
        t.set_tx_offload(on).unwrap();
        handshake_checks(&t, &[t.vip(), t.node_port()]).await;
        frame_checks(&t).await;
        affinity_checks(&t, SEED_CONFIG, DEFAULT_HASH_SEED).await;
        assert_eq!(t.csum_errors().unwrap(), before, "checksum errors with tx offload {}", if on { "on" } else { "off" });
    }
}

fn backend_in_segs(t: &Topo) -> Vec<u64> {
    t.backends.iter().map(|b| b.ns.snmp().unwrap()["Tcp:InSegs"]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_06_without_the_agent_nothing_forwards_and_with_it_ebpf_does() {
    let mut t = Topo::new("ct", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    // No NAT of any kind in the node: only wsfwd can make the VIP work.
    let nat = t.node.exec(&["iptables-save", "-t", "nat"]).unwrap();
    assert!(!nat.lines().any(|l| l.starts_with("-A")), "{nat}");
    assert!(t.node.exec(&["nft", "list", "ruleset"]).unwrap().trim().is_empty());
    assert_eq!(t.node.exec(&["sysctl", "-n", "net.ipv4.ip_forward"]).unwrap().trim(), "1");

    let segs = backend_in_segs(&t);
    let start = Instant::now();
    // The node has no route to the VIP: it answers the SYN with "network unreachable".
    let err = tcp_connect(&t.client, t.clients[0], t.vip()).await.expect_err("connected to the VIP without wsfwd");
    let kind = err.downcast_ref::<std::io::Error>().map(std::io::Error::kind);
    assert_eq!(kind, Some(std::io::ErrorKind::NetworkUnreachable), "{err:#}");
    assert!(start.elapsed() <= Duration::from_secs(5));
    assert_eq!(backend_in_segs(&t), segs, "a SYN reached a backend without wsfwd");

    let agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, &["--metrics-addr", "none"]).unwrap();
    let redirected_before = agent.stats().unwrap()["redirected"];
    let cap = Capture::start(&t.client, "c0", &t, "client");
    for &src in &t.clients {
        let (mut ws, _) = ws_connect(&t.client, src, t.vip()).await.unwrap();
        let big = Message::binary(vec![7u8; 200_000]);
        assert_eq!(echo(&mut ws, big.clone()).await.unwrap(), big);
        ws.close(None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let to_vip = cap.stop().iter().filter(|l| l.contains(&format!(" > {VIP}.9080:"))).count() as u64;
    let redirected = agent.stats().unwrap()["redirected"] - redirected_before;
    assert!(to_vip > 16 * 4, "captured only {to_vip} client-to-VIP packets");
    assert!(redirected * 100 >= to_vip * 99, "redirected {redirected} of {to_vip} client-to-VIP packets");

    // Not a proxy: without its metrics listener the agent holds no socket at all.
    let sockets = t.node.exec(&["ss", "-tuanp"]).unwrap();
    let own: Vec<_> = sockets.lines().filter(|l| l.contains(&format!("pid={},", agent.pid()))).collect();
    assert!(own.is_empty(), "the agent holds sockets: {own:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_07_udp_clients_keep_their_predicted_backend() {
    let mut t = Topo::new("ud", Spec::T1).unwrap();
    t.start_udp_peers().unwrap();
    let config_yaml = format!("{SEED_CONFIG}\n---\n{UDP_SERVICE}");
    let agent = Agent::start(&t.node, &t.dir, &config_yaml, &[]).unwrap();
    let dst = std::net::SocketAddrV4::new(VIP, 9080);
    let mut used = BTreeSet::new();
    let mut exchanges = Vec::new();
    for &src in &t.clients {
        let want_addr = predicted_for_client(&config_yaml, "testim-udp", DEFAULT_HASH_SEED, src);
        let want = t.backend_by_addr(&want_addr).unwrap().name.clone();
        // Tiny datagrams too: shorter than any TCP header.
        for round in 0..3 {
            let payload = match round {
                0 => String::new(),
                1 => "x".into(),
                _ => format!("datagram {round} from {src}"),
            };
            let reply = udp_exchange(&t.client, src, dst, payload.as_bytes()).await.unwrap();
            assert_eq!(reply, format!("{want} {src} {payload}"), "round {round}");
            exchanges.push((format!("{want_addr}:9090"), payload.len(), reply.len()));
        }
        used.insert(want);
    }
    assert!(used.len() >= 2, "{used:?}");
    assert_eq!(agent.stats().unwrap()["pass-reply-unknown"], 0);
    // Counted exactly, per endpoint of this service (replies at egress).
    assert_traffic(&agent, "default/testim-udp:9080", &udp_traffic("default/testim-udp:9080", &exchanges));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_08_a_not_ready_endpoint_gets_no_connection() {
    let mut t = Topo::new("nr", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    let testim_b2 = "- addresses: [\"10.244.2.10\"]\n  conditions: {ready: true";
    assert!(SEED_CONFIG.contains(testim_b2));
    let config_yaml = SEED_CONFIG.replacen(testim_b2, "- addresses: [\"10.244.2.10\"]\n  conditions: {ready: false", 1);
    let agent = Agent::start(&t.node, &t.dir, &config_yaml, &[]).unwrap();
    assert!(agent.log().contains("testim-service:9080 TCP: frontends [192.168.0.150:9080], 2 of 3 endpoints ready"));
    let segs = t.backends[1].ns.snmp().unwrap()["Tcp:InSegs"];
    let mut used = BTreeSet::new();
    for &src in &t.clients {
        for _ in 0..2 {
            let (mut ws, hello) = ws_connect(&t.client, src, t.vip()).await.unwrap();
            assert_ne!(hello.backend, "b2", "{src} reached the not-ready endpoint");
            used.insert(hello.backend);
            ws.close(None).await.unwrap();
        }
    }
    assert_eq!(used.len(), 2, "{used:?}");
    assert!(peers::connections_seen(t.ws_peer("b2")).is_empty());
    assert_eq!(t.backends[1].ns.snmp().unwrap()["Tcp:InSegs"], segs, "TCP reached the not-ready endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_09_udp_flows_expire_from_conntrack() {
    let mut t = Topo::new("ex", Spec::T1).unwrap();
    t.start_udp_peers().unwrap();
    let config_yaml = format!("{SEED_CONFIG}\n---\n{UDP_SERVICE}");
    let agent = Agent::start(&t.node, &t.dir, &config_yaml, &["--udp-timeout", "3", "--gc-interval", "1"]).unwrap();
    let src = t.clients[3];
    let sent = Instant::now();
    udp_exchange(&t.client, src, std::net::SocketAddrV4::new(VIP, 9080), b"one")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nstats: {:?}\n{}", agent.stats(), agent.log()));
    let udp_flows = || -> Vec<Flow> {
        agent.flows().unwrap().into_iter().filter(|f| f.protocol == "UDP").collect()
    };
    assert_eq!(udp_flows().len(), 2, "both directions tracked");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(udp_flows().len(), 2, "removed before its timeout");
    while !udp_flows().is_empty() {
        assert!(sent.elapsed() < Duration::from_secs(8), "still tracked {:?} after a 3 s timeout", sent.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(sent.elapsed() >= Duration::from_secs(3));
}

/// The kernel has let go of every link and program of `before` (an
/// agent's programs and its pinned links): a removed attachment releases
/// its program after an RCU grace period, so this waits up to 3 s.
fn all_released(programs: &[u64], links: &[agent::PinnedLink]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let held: Vec<String> = programs
            .iter()
            .filter(|&&p| agent::program_exists(p))
            .map(|p| format!("program {p}"))
            .chain(links.iter().filter(|l| agent::link_exists(l.id)).map(|l| format!("link {} ({})", l.id, l.pin)))
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(held.join(", "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_10_cleanup_removes_everything_and_bad_config_attaches_nothing() {
    let mut t = Topo::new("cl", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    let node_has_nothing = |when: &str, programs: &[u64], links: &[agent::PinnedLink]| {
        for hook in ["ingress", "egress"] {
            let f = t.node.exec(&["tc", "filter", "show", "dev", "n0", hook]).unwrap();
            assert!(!f.contains("wsfwd"), "{when}: tc filter {hook}: {f}");
        }
        let net = t.node.exec(&["bpftool", "net", "show"]).unwrap();
        assert!(!net.contains("wsfwd"), "{when}: {net}");
        all_released(programs, links).unwrap_or_else(|held| panic!("{when}: the kernel still holds {held}"));
    };
    // `--cleanup-on-exit`: SIGTERM takes everything away.
    let agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, &["--cleanup-on-exit"]).unwrap();
    let bpffs = agent.bpffs.clone();
    let (ids, links) = (agent.program_ids(), agent::pinned_links(&bpffs));
    let programs = ids.all();
    assert!(ids.tc_ingress.and(ids.tc_egress).and(ids.from_endpoints).is_some(), "{ids:?}: {}", agent.log());
    let pins: Vec<&str> = links.iter().map(|l| l.pin.as_str()).collect();
    let mut want = vec!["n0-egress", "n0-ingress", "nb1-from-endpoints", "nb2-from-endpoints", "nb3-from-endpoints"];
    // Under WSFWD_TEST_ATTACH=xdp, XDP sits in front of TC on n0.
    if ids.xdp.is_some() {
        want.insert(2, "n0-xdp");
    }
    assert_eq!(pins, want);
    assert!(links.iter().all(|l| programs.contains(&l.prog)), "links to another agent's programs: {links:?} {programs:?}");
    assert!(bpffs.join("CONNTRACK").exists());
    let status = agent.stop().unwrap();
    assert!(status.success(), "{status}");
    node_has_nothing("after SIGTERM with --cleanup-on-exit", &programs, &links);
    assert!(!bpffs.join("CONNTRACK").exists(), "pins left behind");

    // By default SIGTERM leaves the datapath forwarding; `wsfwd cleanup` removes it.
    for tc_mode in ["tcx", "clsact"] {
        let agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, &["--tc-mode", tc_mode]).unwrap();
        let (mut ws, _) = ws_connect(&t.client, t.clients[0], t.vip()).await.unwrap();
        agent.signal(libc::SIGTERM);
        agent.wait_for_log("stopped; the datapath keeps forwarding", 1, Duration::from_secs(10)).unwrap();
        echo(&mut ws, Message::text("after the agent")).await.unwrap();
        let (programs, links) = (agent.program_ids().all(), agent::pinned_links(&bpffs));
        assert!(programs.iter().all(|&p| agent::program_exists(p)), "{tc_mode}: the programs went with the agent");
        assert!(bpffs.join("CONNTRACK").exists(), "{tc_mode}: the maps went with the agent");
        let removed = agent::cleanup(std::path::Path::new(&t.node.path()), &bpffs).unwrap();
        assert!(removed.contains(&format!("n0 ingress ({tc_mode})")), "{tc_mode}: {removed}");
        node_has_nothing(&format!("after wsfwd cleanup ({tc_mode})"), &programs, &links);
        assert!(!bpffs.join("CONNTRACK").exists(), "{tc_mode}: pins left behind");
        assert!(echo(&mut ws, Message::text("after cleanup")).await.is_err(), "{tc_mode}: still forwarding");
        drop(agent);
    }

    // A bad config exits 2, says why on stderr, and attaches nothing.
    let bad = t.dir.join("bad.yaml");
    std::fs::write(&bad, SEED_CONFIG.replace("192.168.0.150", "192.168.0.300")).unwrap();
    let out = agent::command(&t.node, &bad, &t.dir.join("bpf2"), &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(r#"spec.externalIPs[0]: "192.168.0.300" is not an IPv4 address"#), "{stderr}");
    assert!(!t.dir.join("bpf2").exists());
    assert!(!stderr.contains("program id"), "loaded before the config was read: {stderr}");
    node_has_nothing("after a bad config", &[], &[]);

    // So does a hook that does not exist.
    let good = t.dir.join("good.yaml");
    std::fs::write(&good, SEED_CONFIG).unwrap();
    let out = agent::command(&t.node, &good, &t.dir.join("bpf3"), &["--attach", "dpdk"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'dpdk' for '--attach <HOOK>'"), "{}", String::from_utf8_lossy(&out.stderr));

    // And a missing interface fails (exit 1) leaving nothing attached or pinned.
    let mut cmd = agent::command(&t.node, &good, &t.dir.join("bpf4"), &["--iface", "nosuch0"]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nosuch0: no such interface"), "{stderr}");
    node_has_nothing("after a failed attach", &agent::program_ids_in(&stderr).all(), &agent::pinned_links(&t.dir.join("bpf4")));
    assert!(!t.dir.join("bpf4").join("CONNTRACK").exists());
}

/// A datagram larger than the links' MTU leaves the client in fragments, and
/// the endpoint's answer comes back in fragments: the later fragments, which
/// carry no ports, must follow their flow both ways (translated, never
/// leaking the endpoint's address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_12_udp_fragments_follow_their_flow_both_ways() {
    let mut t = Topo::new("uf", Spec::T1).unwrap();
    t.start_udp_peers().unwrap();
    let config_yaml = format!("{SEED_CONFIG}\n---\n{UDP_SERVICE}");
    let agent = Agent::start(&t.node, &t.dir, &config_yaml, &[]).unwrap();
    let cap = Capture::filtered(&t.client, "c0", &t, "client", "ip[6:2] & 0x3fff != 0");
    let before = agent.stats().unwrap();
    for &src in &t.clients[..4] {
        let want = predicted_for_client(&config_yaml, "testim-udp", DEFAULT_HASH_SEED, src);
        let want = t.backend_by_addr(&want).unwrap().name.clone();
        let payload: String = (0..4000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let reply = udp_exchange(&t.client, src, std::net::SocketAddrV4::new(VIP, 9080), payload.as_bytes()).await.unwrap();
        assert_eq!(reply, format!("{want} {src} {payload}"), "{src}");
    }
    let fragments = cap.stop();
    assert!(fragments.len() >= 4 * 2 * 3, "too few fragments on the client's link: {fragments:#?}");
    let leaked: Vec<_> = fragments.iter().filter(|l| l.contains(" IP 10.244.")).collect();
    assert!(leaked.is_empty(), "fragments with an endpoint's address reached the client: {leaked:#?}");
    let c = agent.stats().unwrap().since(&before);
    assert_eq!(c["pass-fragment-unknown"], 0, "{c:?}");
}

/// An endpoint on the node itself (a host-network pod): packets for it are
/// translated and delivered by the node's own stack, its replies translated
/// back at egress; it sees the client's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_13_an_endpoint_on_the_node_itself() {
    let mut t = Topo::new("hn", Spec::T1).unwrap();
    let log = t.dir.join("node-ws.log");
    let peer = peers::ws_echo(&t.node, "node", NODE_PORT, &log).unwrap();
    t.peers.insert("node-ws".into(), peer);
    let config = upstream_config(&[t.node_addr], "Cluster");
    let agent = Agent::start(&t.node, &t.dir, &config, &[]).unwrap();
    assert!(agent.log().contains(&format!("endpoint {}:{NODE_PORT}: behind the node", t.node_addr)), "{}", agent.log());
    for &src in &t.clients[..4] {
        let (mut ws, hello) = ws_connect(&t.client, src, t.vip()).await.unwrap_or_else(|e| panic!("{src}: {e:#}\n{:?}", agent.stats()));
        assert_eq!((hello.backend.as_str(), hello.client), ("node", src.to_string()));
        let msg = Message::binary(vec![3u8; 100_000]);
        assert_eq!(echo(&mut ws, msg.clone()).await.unwrap(), msg);
        ws.close(None).await.unwrap();
    }
    let c = agent.stats().unwrap();
    assert!(c["delivered-locally"] > 0 && c["reply-translated"] > 0, "{c:?}");
    assert_eq!(c["drop-no-route"], 0, "{c:?}");
}

/// Fragments an endpoint behind the node sends without their first fragment
/// having passed (reordered, or forged) cannot be tied to a flow: they are
/// dropped rather than leak the endpoint's address. A pod's own fragmented
/// traffic (first fragment seen, not a service's) passes as it is, and so do
/// fragments from addresses that are not endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_14_unknown_fragments_from_an_endpoint_never_leave() {
    use wsfwd_tests::forge::{Ipv4, RawLink, checksum, udp};
    let t = Topo::new("fx", Spec::T1).unwrap();
    let agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, &[]).unwrap();
    let b1 = &t.backends[0];
    let link = RawLink::open(&b1.ns, "e0", &t.node, "nb1").unwrap();
    let fragment = |src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, id: u16, offset: u16, more: bool, payload: &[u8]| {
        let mut p = Ipv4 { id, ..Ipv4::new(src, dst, 17) }.packet(payload);
        p[6..8].copy_from_slice(&((if more { 0x2000 } else { 0 }) | offset).to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    };
    let cap = Capture::filtered(&t.client, "c0", &t, "fragments", "ip[6:2] & 0x3fff != 0");
    let before = agent.stats().unwrap();
    let (ep, stray) = (b1.addr, std::net::Ipv4Addr::new(10, 244, 1, 99));
    // A later fragment alone, from the endpoint.
    link.send_ip(&fragment(ep, t.clients[1], 0x1111, 3, false, &[7; 16])).unwrap();
    // The endpoint's own traffic, not a service's: first fragment, then the rest.
    let datagram = udp(std::net::SocketAddrV4::new(ep, 5555), std::net::SocketAddrV4::new(t.clients[0], 6666), &[9; 40]);
    link.send_ip(&fragment(ep, t.clients[0], 0x2222, 0, true, &datagram[..24])).unwrap();
    link.send_ip(&fragment(ep, t.clients[0], 0x2222, 3, false, &datagram[24..])).unwrap();
    // A later fragment alone, from an address that is no endpoint.
    link.send_ip(&fragment(stray, t.clients[2], 0x3333, 3, false, &[5; 16])).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = cap.stop();
    let to = |dst: std::net::Ipv4Addr| lines.iter().filter(|l| l.contains(&format!("> {dst}"))).count();
    assert_eq!(to(t.clients[1]), 0, "a lone fragment from the endpoint left the node: {lines:#?}");
    assert_eq!(to(t.clients[0]), 2, "the endpoint's own fragmented datagram did not pass whole: {lines:#?}");
    assert_eq!(to(t.clients[2]), 1, "a fragment from a non-endpoint was stopped: {lines:#?}");
    let c = agent.stats().unwrap().since(&before);
    assert_eq!(c["drop-fragment-unknown"], 1, "{c:?}");
}

/// A node that forwards nothing through netfilter (`FORWARD` policy DROP,
/// and the `ctstate INVALID` drop kube-proxy installs): the seed's scenario
/// still works, because frontend packets are redirected at external ingress
/// and the endpoints' replies at the ingress of the endpoint-facing
/// interfaces, found from the routes to the endpoints. With that program
/// turned off (`--endpoint-iface none`), the replies cross the node's
/// forwarding, whose conntrack never saw their flow: dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_15_replies_skip_a_forward_drop_node() {
    let mut t = Topo::new("fd", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    for rule in [&["-P", "FORWARD", "DROP"][..], &["-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"]] {
        t.node.exec(&[&["iptables"][..], rule].concat()).unwrap();
    }
    {
        let _agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, &["--endpoint-iface", "none"]).unwrap();
        let tried = tokio::time::timeout(Duration::from_secs(3), ws_connect(&t.client, t.clients[0], t.vip())).await;
        assert!(!matches!(tried, Ok(Ok(_))), "connected with replies through a FORWARD DROP node: the test proves nothing");
    }
    t.node.exec(&["iptables", "-Z", "FORWARD"]).unwrap();
    let agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, &[]).unwrap();
    let status = agent.status().unwrap();
    let sides: Vec<(String, String)> = status["attached"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["interface"].as_str().unwrap().to_owned(), a["side"].as_str().unwrap().to_owned()))
        .collect();
    for nb in ["nb1", "nb2", "nb3"] {
        assert!(sides.contains(&(nb.to_owned(), "endpoints".to_owned())), "{nb} not attached on the endpoint side: {sides:?}");
    }
    assert!(sides.contains(&("n0".to_owned(), "external".to_owned())), "{sides:?}");
    handshake_checks(&t, &[t.vip(), t.node_port()]).await;
    let stats = agent.stats().unwrap();
    assert!(stats["reply-redirected"] > 0, "{stats:?}");
    assert_eq!(stats["reply-translated"], 0, "replies went through the kernel's forwarding: {stats:?}");
    assert!(agent.log().contains("nb1: replies of endpoints behind it translated at its ingress"), "{}", agent.log());
    // Nothing of it reached the node's forwarding.
    let forward = t.node.exec(&["iptables", "-L", "FORWARD", "-v", "-n", "-x"]).unwrap();
    assert!(forward.contains("policy DROP 0 packets"), "{forward}");
}

/// Established packets skip the route lookup (the datapath caches next hops),
/// so a neighbour that changes must reach the cache at once: an endpoint
/// whose MAC changes under a live connection (a pod replaced on the same
/// address) gets the very next message, without waiting for a
/// retransmission or the cache's one-second expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_16_a_changed_neighbour_is_followed_at_once() {
    let mut t = Topo::new("nm", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    let _agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, &[]).unwrap();
    let (mut ws, hello) = ws_connect(&t.client, t.clients[0], t.vip()).await.unwrap();
    for _ in 0..3 {
        assert_eq!(echo(&mut ws, Message::text("before")).await.unwrap(), Message::text("before"));
    }
    let b = t.backends.iter().find(|b| b.name == hello.backend).unwrap();
    let mac = "02:aa:bb:cc:dd:ee";
    b.ns.ip(&["link", "set", "e0", "address", mac]).unwrap();
    let nb = format!("nb{}", b.addr.octets()[2]);
    t.pin_neighbour(b.addr, [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee], &nb).unwrap();
    // The agent hears the change over rtnetlink; it has had ample time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        let msg = Message::text(format!("after {i}"));
        // Within a TCP retransmission timeout: the first transmission got there.
        let back = tokio::time::timeout(Duration::from_millis(150), echo(&mut ws, msg.clone())).await;
        assert!(matches!(&back, Ok(Ok(m)) if *m == msg), "message {i} after the MAC change: {back:?}");
    }
}

/// While no agent runs, nothing invalidates the datapath's cached routes:
/// each is trusted for one second at most. An endpoint whose MAC changes
/// after the agent stopped (the datapath forwarding alone) gets the next
/// message once that second has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_17_a_cached_route_expires_without_an_agent() {
    let mut t = Topo::new("ne", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    let agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, &[]).unwrap();
    let (mut ws, hello) = ws_connect(&t.client, t.clients[0], t.vip()).await.unwrap();
    agent.signal(libc::SIGTERM);
    agent.wait_for_log("stopped; the datapath keeps forwarding", 1, Duration::from_secs(10)).unwrap();
    for _ in 0..3 {
        assert_eq!(echo(&mut ws, Message::text("no agent")).await.unwrap(), Message::text("no agent"));
    }
    let b = t.backends.iter().find(|b| b.name == hello.backend).unwrap();
    b.ns.ip(&["link", "set", "e0", "address", "02:aa:bb:cc:dd:ef"]).unwrap();
    t.pin_neighbour(b.addr, [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xef], &format!("nb{}", b.addr.octets()[2])).unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for i in 0..3 {
        let msg = Message::text(format!("after {i}"));
        let back = tokio::time::timeout(Duration::from_millis(150), echo(&mut ws, msg.clone())).await;
        assert!(matches!(&back, Ok(Ok(m)) if *m == msg), "message {i} a second after the MAC change: {back:?}");
    }
    agent::cleanup(std::path::Path::new(&t.node.path()), &agent.bpffs).unwrap();
}

/// Packets to endpoints behind veths (pods) are handed straight to the
/// endpoint's end of the pair, and replies straight to the client's: the
/// node's own ends never transmit them. Only veths whose other end is in
/// another namespace qualify (a redirect to a peer in the same namespace
/// is dropped by the kernel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_18_redirects_go_straight_to_the_veth_peer() {
    let mut t = Topo::new("pr", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    t.node.ip(&["link", "add", "vx0", "type", "veth", "peer", "name", "vx1"]).unwrap();
    let found: BTreeSet<String> = t
        .node
        .inside(|| Ok(wsfwd::netif::veths_to_other_namespaces()?.into_iter().filter_map(wsfwd::netif::name_of).collect()))
        .unwrap();
    let expected: BTreeSet<String> = ["n0", "nb1", "nb2", "nb3"].map(String::from).into();
    assert_eq!(found, expected, "veths to other namespaces");

    let agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, &[]).unwrap();
    // XDP in front (the suite's XDP run) redirects towards endpoints itself,
    // and XDP has no peer redirect: there, only replies (TC at the endpoint
    // side) are checked.
    let xdp = agent::attach_under_test().as_deref() == Some("xdp");
    let node_ends: &[&str] = if xdp { &["n0"] } else { &["n0", "nb1", "nb2", "nb3"] };
    let stat = |ns: &wsfwd_tests::netns::Netns, dev: &str, what: &str| -> u64 {
        ns.exec(&["cat", &format!("/sys/class/net/{dev}/statistics/{what}")]).unwrap().trim().parse().unwrap()
    };
    let node_tx = |t: &Topo| node_ends.iter().map(|d| stat(&t.node, d, "tx_packets")).sum::<u64>();
    let endpoints_rx = |t: &Topo| t.backends.iter().map(|b| stat(&b.ns, "e0", "rx_packets")).sum::<u64>();
    let mut conns = Vec::new();
    for &c in &t.clients[..4] {
        conns.push(ws_connect(&t.client, c, t.vip()).await.unwrap().0);
    }
    let (tx0, rx0, client_rx0) = (node_tx(&t), endpoints_rx(&t), stat(&t.client, "c0", "rx_packets"));
    for i in 0..50 {
        for ws in &mut conns {
            let msg = Message::text(format!("message {i}"));
            assert_eq!(echo(ws, msg.clone()).await.unwrap(), msg);
        }
    }
    let (tx, rx, client_rx) = (node_tx(&t) - tx0, endpoints_rx(&t) - rx0, stat(&t.client, "c0", "rx_packets") - client_rx0);
    assert!(rx >= 200 && client_rx >= 200, "the messages did not get through: {rx} packets to endpoints, {client_rx} to the client");
    let forwarded = if xdp { client_rx } else { rx + client_rx };
    // A few packets of the kernel's own (neighbour probes) may leave.
    assert!(tx * 20 < forwarded, "the node's veth ends {node_ends:?} transmitted {tx} packets of {forwarded} forwarded");
    let stats = agent.stats().unwrap();
    assert!(stats["redirected"] >= 200 && stats["reply-redirected"] >= 200, "{stats:?}");
    assert!(agent.log().contains("4 veths lead to other namespaces"), "{}", agent.log());
    // A pod's link that appears later is found when the link changes.
    t.node.ip(&["link", "add", "vy0", "type", "veth", "peer", "name", "vy1", "netns", &t.client.name]).unwrap();
    agent.wait_for_log("5 veths lead to other namespaces", 1, Duration::from_secs(5)).unwrap();
}
