//! Packet fixtures, in the style of Katran's: each case is a frame built from
//! headers, run once through a program the agent attached (with
//! `BPF_PROG_TEST_RUN`, from inside the node's namespace, so the program's
//! route and neighbour lookups see the node's tables), with the verdict, the
//! counter and the output frame it must give, byte for byte. Every output's
//! IPv4 and L4 checksums are recomputed from scratch (`pkt::checksums_ok`).
//! Cases run in order: a flow's later packets find the state its first made.
use std::net::Ipv4Addr;

use wsfwd_common::DEFAULT_HASH_SEED;
use wsfwd_tests::{
    agent::Agent,
    checks::predicted_for_client,
    forge::mac_of,
    pkt::{Frame, L4, TCP_ACK, TCP_RST, TCP_SYN, checksums_ok},
    progrun::{Ran, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_REDIRECT, prog_fd, run_tc, run_xdp},
    topo::{SEED_CONFIG, Spec, Topo, UDP_SERVICE, VIP, upstream_config},
};

/// A service whose one endpoint is not ready: new flows are refused.
const REFUSING_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: refusing}
spec:
  externalIPs: [192.168.0.150]
  ports: [{port: 9081}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: refusing-1
  labels: {kubernetes.io/service-name: refusing}
addressType: IPv4
ports: [{port: 9080}]
endpoints:
- addresses: ["10.244.1.10"]
  conditions: {ready: false}
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    Ingress,
    Egress,
}

/// What the output frame must be.
enum Out {
    /// Untouched.
    Same,
    /// Exactly this.
    Is(Frame),
    /// A frame the program built (an answer): these bytes must check out.
    Checked(Box<dyn Fn(&[u8]) -> Result<(), String>>),
}

struct Case {
    name: &'static str,
    hook: Hook,
    input: Frame,
    verdict: u32,
    /// Raised by exactly one.
    counter: &'static str,
    out: Out,
}

fn ifindex(t: &Topo, iface: &str) -> u32 {
    t.node.exec(&["cat", &format!("/sys/class/net/{iface}/ifindex")]).unwrap().trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_fixtures_gateway_t1() {
    fixtures(false).await;
}

/// The same cases with XDP in front (generic XDP on the veth): what XDP can
/// finish it does, with the same bytes out; the rest it passes on untouched
/// (`xdp-to-tc`) for TC, which the TC cases above cover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xdp_fixtures_gateway_t1() {
    fixtures(true).await;
}

async fn fixtures(xdp: bool) {
    let mut t = Topo::new(if xdp { "fxx" } else { "fx" }, Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    let config = format!("{SEED_CONFIG}\n---\n{UDP_SERVICE}\n---\n{REFUSING_SERVICE}");
    let agent = Agent::start(&t.node, &t.dir, &config, &["--attach", if xdp { "xdp" } else { "tc" }]).unwrap();
    // Neighbours known, so redirects write both MACs.
    t.pin_backend_neighbours().unwrap();
    let (n0, n0_mac, client_mac) = (ifindex(&t, "n0"), mac_of(&t.node, "n0").unwrap(), mac_of(&t.client, "c0").unwrap());
    let client = Ipv4Addr::new(10, 0, 1, 2);
    let vip = (VIP, 9080);
    // Where the testim-service (ClientIP) and testim-udp flows of `client` go.
    let tcp_to = t.backend_by_addr(&predicted_for_client(&config, "testim-service", DEFAULT_HASH_SEED, client)).unwrap();
    let udp_to = t.backend_by_addr(&predicted_for_client(&config, "testim-udp", DEFAULT_HASH_SEED, client)).unwrap();
    let k = |b: &wsfwd_tests::topo::Backend| b.addr.octets()[2];
    let (tcp_nb, udp_nb) = (format!("nb{}", k(tcp_to)), format!("nb{}", k(udp_to)));
    // The UDP endpoint's link is smaller than the client's: DF datagrams
    // that do not fit are answered with "fragmentation needed".
    t.node.ip(&["link", "set", &udp_nb, "mtu", "1280"]).unwrap();
    let (tcp_peer_mac, udp_peer_mac) = (mac_of(&tcp_to.ns, "e0").unwrap(), mac_of(&udp_to.ns, "e0").unwrap());
    let (tcp_nb_mac, udp_nb_mac) = (mac_of(&t.node, &tcp_nb).unwrap(), mac_of(&t.node, &udp_nb).unwrap());
    let from_client = |f: Frame| f.macs(client_mac, n0_mac);
    // Replies as the kernel routes them out of n0, before egress translates them.
    let to_client = |f: Frame| f.macs(n0_mac, client_mac);
    let (tcp_ep, udp_ep) = ((tcp_to.addr, 9080), (udp_to.addr, 9090));
    let port = 40000;

    let syn = from_client(Frame::tcp((client, port), vip, TCP_SYN, 1000, 0));
    let translated = |f: &Frame, to: (Ipv4Addr, u16), src_mac, dst_mac| {
        let mut out = f.clone().macs(src_mac, dst_mac);
        out.dst = to.0;
        out.ttl -= 1;
        match &mut out.l4 {
            L4::Tcp { dport, .. } | L4::Udp { dport, .. } => *dport = to.1,
            _ => unreachable!(),
        }
        out
    };
    let syn_ack = to_client(Frame::tcp(tcp_ep, (client, port), TCP_SYN | TCP_ACK, 5000, 1001));
    let mut syn_ack_out = syn_ack.clone();
    (syn_ack_out.src, syn_ack_out.l4) = (VIP, match syn_ack.l4.clone() {
        L4::Tcp { dport, seq, ack, flags, window, options, payload, .. } => L4::Tcp { sport: 9080, dport, seq, ack, flags, window, options, payload },
        _ => unreachable!(),
    });
    let mut ack = from_client(Frame::tcp((client, port), vip, TCP_ACK, 1001, 5001));
    if let L4::Tcp { payload, .. } = &mut ack.l4 {
        *payload = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n".to_vec();
    }
    let udp = from_client(Frame::udp((client, port), vip, b"hello"));
    let mut ttl1 = syn.clone();
    ttl1.ttl = 1;
    let mut options = from_client(Frame::tcp((client, port + 1), vip, TCP_SYN, 1, 0));
    options.options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    let mut fragment = from_client(Frame::tcp((client, port + 2), vip, TCP_SYN, 1, 0));
    fragment.more_fragments = true;
    fragment.df = false;
    let refused = from_client(Frame::tcp((client, port + 3), (VIP, 9081), TCP_SYN, 7777, 0));
    // The client resets its connection (at the next sequence number), then
    // opens a new one on the same tuple.
    let sent = match &ack.l4 {
        L4::Tcp { payload, .. } => payload.len() as u32,
        _ => unreachable!(),
    };
    let rst = from_client(Frame::tcp((client, port), vip, TCP_RST, 1001 + sent, 0));
    let mut reopen = from_client(Frame::tcp((client, port), vip, TCP_SYN, 90000, 0));
    reopen.id = 0x4321;
    // A UDP datagram in two fragments: the first carries the ports, the
    // second follows it by IP identification.
    let mut first = from_client(Frame::udp((client, port + 5), vip, &[7u8; 24]));
    (first.more_fragments, first.df, first.id) = (true, false, 0x7777);
    if let L4::Udp { payload, .. } = &mut first.l4 {
        // The UDP header claims the whole datagram: 8 + 24 + 16 bytes.
        payload.truncate(24);
    }
    let mut later = from_client(Frame::with(client, VIP, L4::Raw(vec![9u8; 16])));
    (later.df, later.id, later.frag_offset) = (false, 0x7777, 4);
    let first_in = {
        // Build the first fragment's bytes with the UDP length of the whole datagram.
        let mut f = first.clone();
        if let L4::Udp { sport, dport, payload } = &f.l4 {
            let mut raw = Vec::new();
            raw.extend(sport.to_be_bytes());
            raw.extend(dport.to_be_bytes());
            raw.extend(((8 + payload.len() + 16) as u16).to_be_bytes());
            raw.extend([0, 0]);
            raw.extend(payload);
            f.l4 = L4::Raw(raw);
        }
        f
    };
    let first_out = {
        let mut out = first_in.clone().macs(udp_nb_mac, udp_peer_mac);
        (out.dst, out.ttl) = (udp_ep.0, first_in.ttl - 1);
        if let L4::Raw(raw) = &mut out.l4 {
            raw[2..4].copy_from_slice(&9090u16.to_be_bytes());
        }
        out
    };
    let mut later_out = later.clone().macs(udp_nb_mac, udp_peer_mac);
    (later_out.dst, later_out.ttl) = (udp_ep.0, later.ttl - 1);
    // ICMP errors about the UDP flow, both ways. The endpoint reports on
    // the datagram it received (to its own address, TTL 63 after the node):
    // the client must see the error come from the VIP, quoting what it sent.
    let mut udp_as_received = translated(&udp, udp_ep, udp_nb_mac, udp_peer_mac);
    udp_as_received.ttl = udp.ttl - 1;
    let mut udp_as_sent = udp.clone();
    udp_as_sent.ttl = udp.ttl - 1;
    let unreachable = |from, to, quote: &Frame| {
        let mut f = Frame::with(from, to, L4::Icmp { kind: 3, code: 3, rest: [0; 4], payload: quote.ip_bytes() });
        f.ttl = 63;
        f
    };
    let icmp_to_client = to_client(unreachable(udp_ep.0, client, &udp_as_received));
    let icmp_to_client_out = to_client(unreachable(VIP, client, &udp_as_sent));
    // The client reports on a reply that left the node from the VIP: the
    // endpoint must see it quote what the endpoint sent.
    let mut reply_as_sent = Frame::udp((VIP, 9080), (client, port), b"world");
    reply_as_sent.ttl = 63;
    let mut reply_from_endpoint = Frame::udp(udp_ep, (client, port), b"world");
    reply_from_endpoint.ttl = 63;
    let icmp_to_endpoint = from_client(unreachable(client, VIP, &reply_as_sent));
    let mut icmp_to_endpoint_out = unreachable(client, udp_ep.0, &reply_from_endpoint).macs(udp_nb_mac, udp_peer_mac);
    icmp_to_endpoint_out.ttl = 62;
    // A DF datagram larger than the endpoint's link (MTU 1280, set below).
    let too_big = from_client(Frame::udp((client, port), vip, &[0x5au8; 1300]));
    let too_big_answer = frag_needed_answer(&too_big, 1280);

    let cases = vec![
        Case {
            name: "not a service: to the node's own address",
            hook: Hook::Ingress,
            input: from_client(Frame::udp((client, port), (t.node_addr, 5555), b"x")),
            verdict: TC_ACT_OK,
            counter: "pass-not-ours",
            out: Out::Same,
        },
        Case {
            name: "unknown port on the VIP",
            hook: Hook::Ingress,
            input: from_client(Frame::tcp((client, port), (VIP, 1234), TCP_SYN, 1, 0)),
            verdict: TC_ACT_OK,
            counter: "pass-not-ours",
            out: Out::Same,
        },
        Case {
            name: "TTL 1 is the kernel's to answer",
            hook: Hook::Ingress,
            input: ttl1,
            verdict: TC_ACT_OK,
            counter: "pass-ttl-expired",
            out: Out::Same,
        },
        Case {
            name: "IP options pass untouched",
            hook: Hook::Ingress,
            input: options,
            verdict: TC_ACT_OK,
            counter: "pass-unparsed",
            out: Out::Same,
        },
        Case {
            name: "a fragmented TCP segment to a frontend is dropped",
            hook: Hook::Ingress,
            input: fragment,
            verdict: TC_ACT_SHOT,
            counter: "drop-tcp-fragment",
            out: Out::Same,
        },
        Case {
            name: "new flow: SYN to the VIP, translated to its endpoint",
            hook: Hook::Ingress,
            input: syn.clone(),
            verdict: TC_ACT_REDIRECT,
            counter: "flow-created",
            out: Out::Is(translated(&syn, tcp_ep, tcp_nb_mac, tcp_peer_mac)),
        },
        Case {
            name: "reply: SYN-ACK from the endpoint gets the VIP back",
            hook: Hook::Egress,
            input: syn_ack,
            verdict: TC_ACT_OK,
            counter: "reply-translated",
            out: Out::Is(syn_ack_out),
        },
        Case {
            name: "established: the handshake's ACK with the Upgrade request",
            hook: Hook::Ingress,
            input: ack.clone(),
            verdict: TC_ACT_REDIRECT,
            counter: "redirected",
            out: Out::Is(translated(&ack, tcp_ep, tcp_nb_mac, tcp_peer_mac)),
        },
        Case {
            name: "UDP: a new flow to the UDP service on the same VIP",
            hook: Hook::Ingress,
            input: udp.clone(),
            verdict: TC_ACT_REDIRECT,
            counter: "flow-created",
            out: Out::Is(translated(&udp, udp_ep, udp_nb_mac, udp_peer_mac)),
        },
        Case {
            name: "the client's RST at the next sequence number goes to the endpoint",
            hook: Hook::Ingress,
            input: rst.clone(),
            verdict: TC_ACT_REDIRECT,
            counter: "redirected",
            out: Out::Is(translated(&rst, tcp_ep, tcp_nb_mac, tcp_peer_mac)),
        },
        Case {
            name: "a SYN on the closed flow's tuple opens a new flow",
            hook: Hook::Ingress,
            input: reopen.clone(),
            verdict: TC_ACT_REDIRECT,
            counter: "flow-created",
            out: Out::Is(translated(&reopen, tcp_ep, tcp_nb_mac, tcp_peer_mac)),
        },
        Case {
            name: "ICMP error from the endpoint about a datagram: from the VIP, quoting what the client sent",
            hook: Hook::Egress,
            input: icmp_to_client,
            verdict: TC_ACT_OK,
            counter: "icmp-translated",
            out: Out::Is(icmp_to_client_out),
        },
        Case {
            name: "ICMP error from the client about a reply: to the endpoint, quoting what the endpoint sent",
            hook: Hook::Ingress,
            input: icmp_to_endpoint,
            verdict: TC_ACT_REDIRECT,
            counter: "icmp-translated",
            out: Out::Is(icmp_to_endpoint_out),
        },
        Case {
            name: "DF datagram too large for the endpoint's link: fragmentation needed, from the VIP",
            hook: Hook::Ingress,
            input: too_big,
            verdict: TC_ACT_REDIRECT,
            counter: "icmp-frag-needed-sent",
            out: Out::Checked(Box::new(move |f: &[u8]| too_big_answer(f, n0_mac, client_mac))),
        },
        Case {
            name: "UDP first fragment: translated with its ports, its ports remembered",
            hook: Hook::Ingress,
            input: first_in,
            verdict: TC_ACT_REDIRECT,
            counter: "flow-created",
            out: Out::Is(first_out),
        },
        Case {
            name: "UDP later fragment: follows the first by IP identification (addresses only)",
            hook: Hook::Ingress,
            input: later,
            verdict: TC_ACT_REDIRECT,
            counter: "redirected",
            out: Out::Is(later_out),
        },
        Case {
            name: "a wrong IPv4 header checksum to a frontend is dropped",
            hook: Hook::Ingress,
            input: from_client(Frame::tcp((client, port + 4), vip, TCP_SYN, 1, 0)),
            verdict: TC_ACT_SHOT,
            counter: "drop-bad-ip-checksum",
            // Corrupted below, after building.
            out: Out::Same,
        },
        Case {
            name: "no endpoint ready: the SYN is refused with a RST from the frontend",
            hook: Hook::Ingress,
            input: refused,
            verdict: TC_ACT_REDIRECT,
            counter: "rst-sent",
            out: rst_answer((VIP, 9081), (client, port + 3), 7778, n0_mac, client_mac),
        },
    ];

    let progs = Progs::find(&agent, xdp);
    let failures: Vec<String> = cases.into_iter().filter_map(|case| run_case(&t, &agent, &progs, n0, case).1).collect();
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
    if xdp {
        xdp_is_shown_and_removed(&t, agent);
    }
}

/// The RST that refuses a bare SYN from `to` (sequence `ack - 1`) to `from`:
/// fixed bytes except the answer's own IP id and TTL (and so its checksum).
fn rst_answer(from: (Ipv4Addr, u16), to: (Ipv4Addr, u16), ack: u32, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Out {
    Out::Checked(Box::new(move |f: &[u8]| {
        let mut want = Frame::tcp(from, to, TCP_RST | TCP_ACK, 0, ack).macs(src_mac, dst_mac);
        if let L4::Tcp { window, .. } = &mut want.l4 {
            *window = 0;
        }
        let (mut got, mut want) = (f.to_vec(), want.bytes());
        for b in [&mut got, &mut want] {
            if b.len() > 14 + 20 {
                b[14 + 4..14 + 6].fill(0);
                b[14 + 8] = 0;
                b[14 + 10..14 + 12].fill(0);
            }
        }
        if got == want { Ok(()) } else { Err(format!("RST\n got  {got:02x?}\n want {want:02x?}")) }
    }))
}

/// A checker for the "fragmentation needed" answer to `input` (RFC 792/1191):
/// from the address it was sent to, back to its sender's MAC, TTL 64, DF,
/// IP id 0, next-hop MTU `mtu`, quoting its IP header and first 8 bytes of
/// UDP. The quoted UDP checksum is the datapath's own choice (made to keep
/// the ICMP checksum right under offload) and is not compared; the ICMP
/// checksum over all of it is checked from scratch by the caller.
fn frag_needed_answer(input: &Frame, mtu: u16) -> impl Fn(&[u8], [u8; 6], [u8; 6]) -> Result<(), String> + use<> {
    let sent = input.ip_bytes();
    let (from, to) = (input.dst, input.src);
    move |f: &[u8], src_mac, dst_mac| {
        let mut quote = sent[..20 + 8].to_vec();
        quote[20 + 6..20 + 8].fill(0);
        let [m0, m1] = mtu.to_be_bytes();
        let mut want = Frame::with(from, to, L4::Icmp { kind: 3, code: 4, rest: [0, 0, m0, m1], payload: quote }).macs(src_mac, dst_mac);
        want.id = 0;
        // Blank the quoted UDP checksum and the ICMP checksum covering it.
        let (mut got, mut want) = (f.to_vec(), want.bytes());
        for b in [&mut got, &mut want] {
            const ICMP: usize = 14 + 20;
            if b.len() >= ICMP + 8 + 20 + 8 {
                b[ICMP + 2..ICMP + 4].fill(0);
                b[ICMP + 8 + 20 + 6..ICMP + 8 + 20 + 8].fill(0);
            }
        }
        if got == want { Ok(()) } else { Err(format!("frag-needed\n got  {got:02x?}\n want {want:02x?}")) }
    }
}

/// `wsfwd status` says XDP is in front (generic, on a veth), and `wsfwd
/// cleanup` takes it off the interface with the rest.
fn xdp_is_shown_and_removed(t: &Topo, agent: Agent) {
    let status = agent.status().unwrap();
    assert_eq!(status["attached"][0]["xdp"], "generic", "{status}");
    let link = || t.node.ip(&["link", "show", "n0"]).unwrap();
    assert!(link().contains("xdpgeneric"), "{}", link());
    agent.signal(libc::SIGTERM);
    agent.wait_for_log("stopped; the datapath keeps forwarding", 1, std::time::Duration::from_secs(10)).unwrap();
    assert!(link().contains("xdpgeneric"), "XDP went with the agent: {}", link());
    let removed = wsfwd_tests::agent::cleanup(std::path::Path::new(&t.node.path()), &agent.bpffs).unwrap();
    assert!(removed.contains("removed n0 xdp"), "{removed}");
    assert!(!link().contains("xdp"), "XDP left on n0 after cleanup: {}", link());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_fixtures_full_nat_t2() {
    full_nat_fixtures(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xdp_fixtures_full_nat_t2() {
    full_nat_fixtures(true).await;
}

/// Full NAT (T2: client, node and endpoints on one segment): a new flow gets
/// the node's address and a SNAT port (the one value chosen at random, read
/// from the output), its replies come back to that port and leave from the
/// VIP, an ICMP error from the endpoint reaches the client as the VIP's,
/// a mid-stream segment with no mapping is dropped, and with the one SNAT
/// port held a new SYN is refused.
async fn full_nat_fixtures(xdp: bool) {
    let mut t = Topo::new(if xdp { "fnx" } else { "fn" }, Spec::T2).unwrap();
    t.start_ws_peers().unwrap();
    let endpoints: Vec<Ipv4Addr> = t.backends.iter().filter(|b| !b.behind).map(|b| b.addr).collect();
    let config = upstream_config(&endpoints, "Cluster");
    // One SNAT port: the first flow holds it, the next is refused.
    let args = ["--attach", if xdp { "xdp" } else { "tc" }, "--snat-ports", "61000-61000"];
    let agent = Agent::start(&t.node, &t.dir, &config, &args).unwrap();
    let client = t.clients[0];
    let (n0, n0_mac, client_mac) = (ifindex(&t, "n0"), mac_of(&t.node, "n0").unwrap(), mac_of(&t.client, "c0").unwrap());
    let to = t.backend_by_addr(&predicted_for_client(&config, "testim-service", DEFAULT_HASH_SEED, client)).unwrap();
    let ep_mac = mac_of(&to.ns, "e0").unwrap();
    // Neighbours known, so redirects write both MACs.
    for (addr, mac) in [(to.addr, ep_mac), (client, client_mac)] {
        t.pin_neighbour(addr, mac, "n0").unwrap();
    }
    let (ep, node, vip, port) = ((to.addr, 30100), t.node_addr, (VIP, 9080), 40000);
    let progs = Progs::find(&agent, xdp);
    let mut failures = Vec::new();

    let syn = Frame::tcp((client, port), vip, TCP_SYN, 1000, 0).macs(client_mac, n0_mac);
    let expect_out = move |f: &Frame, snat_port: u16| {
        let mut out = f.clone().macs(n0_mac, ep_mac);
        (out.src, out.dst, out.ttl) = (node, ep.0, f.ttl - 1);
        if let L4::Tcp { sport, dport, .. } = &mut out.l4 {
            (*sport, *dport) = (snat_port, ep.1);
        }
        out
    };
    let want_syn = syn.clone();
    let (out, failure) = run_case(&t, &agent, &progs, n0, Case {
        name: "new flow: SYN to the VIP, from the node's address and a SNAT port to its endpoint",
        hook: Hook::Ingress,
        input: syn,
        verdict: TC_ACT_REDIRECT,
        counter: "snat-allocated",
        out: Out::Checked(Box::new(move |f: &[u8]| {
            let snat_port = u16::from_be_bytes([f[14 + 20], f[14 + 21]]);
            let want = expect_out(&want_syn, snat_port).bytes();
            if f == want.as_slice() { Ok(()) } else { Err(format!("output:\n got  {f:02x?}\n want {want:02x?}")) }
        })),
    });
    failures.extend(failure);
    let snat_port = u16::from_be_bytes([out[14 + 20], out[14 + 21]]);
    let nat = agent.flows().unwrap();
    assert!(
        nat.iter().any(|f| f.table == "nat" && f.new_source == format!("{node}:{snat_port}")),
        "the output's port {snat_port} is not the mapping in NAT: {nat:?}"
    );

    let syn_ack = Frame::tcp(ep, (node, snat_port), TCP_SYN | TCP_ACK, 5000, 1001).macs(ep_mac, n0_mac);
    let mut syn_ack_out = syn_ack.clone().macs(n0_mac, client_mac);
    (syn_ack_out.src, syn_ack_out.dst, syn_ack_out.ttl) = (VIP, client, syn_ack.ttl - 1);
    if let L4::Tcp { sport, dport, .. } = &mut syn_ack_out.l4 {
        (*sport, *dport) = (9080, port);
    }
    let mut ack = Frame::tcp((client, port), vip, TCP_ACK, 1001, 5001).macs(client_mac, n0_mac);
    if let L4::Tcp { payload, .. } = &mut ack.l4 {
        *payload = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n".to_vec();
    }
    let ack_out = expect_out(&ack, snat_port);
    // The endpoint reports on the SYN it received (from the SNAT address,
    // TTL 63): the client must see the error from the VIP, quoting its SYN.
    let unreachable = |from, to, quote: &Frame, ttl| {
        let mut f = Frame::with(from, to, L4::Icmp { kind: 3, code: 3, rest: [0; 4], payload: quote.ip_bytes() });
        f.ttl = ttl;
        f
    };
    let syn_sent = Frame::tcp((client, port), vip, TCP_SYN, 1000, 0);
    let icmp_in = unreachable(ep.0, node, &expect_out(&syn_sent, snat_port), 64).macs(ep_mac, n0_mac);
    let mut syn_as_sent = syn_sent.clone();
    syn_as_sent.ttl = 63;
    let icmp_out = unreachable(VIP, client, &syn_as_sent, 63).macs(n0_mac, client_mac);
    let cases = vec![
        Case {
            name: "reply: the endpoint's SYN-ACK to the SNAT port leaves from the VIP to the client",
            hook: Hook::Ingress,
            input: syn_ack,
            verdict: TC_ACT_REDIRECT,
            counter: "snat-reply-redirected",
            out: Out::Is(syn_ack_out),
        },
        Case {
            name: "established: the client's ACK with the Upgrade request keeps its mapping",
            hook: Hook::Ingress,
            input: ack,
            verdict: TC_ACT_REDIRECT,
            counter: "redirected",
            out: Out::Is(ack_out),
        },
        Case {
            name: "mid-stream segment with no mapping: dropped, the endpoint never saw its connection",
            hook: Hook::Ingress,
            input: Frame::tcp((client, port + 1), vip, TCP_ACK, 1, 1).macs(client_mac, n0_mac),
            verdict: TC_ACT_SHOT,
            counter: "drop-no-nat-flow",
            out: Out::Same,
        },
        Case {
            name: "ICMP error from the endpoint to the SNAT address: to the client from the VIP, quoting its SYN",
            hook: Hook::Ingress,
            input: icmp_in,
            verdict: TC_ACT_REDIRECT,
            counter: "icmp-translated",
            out: Out::Is(icmp_out),
        },
        Case {
            name: "SNAT ports exhausted: a new SYN is refused with a RST from the frontend",
            hook: Hook::Ingress,
            input: Frame::tcp((client, port + 2), vip, TCP_SYN, 500, 0).macs(client_mac, n0_mac),
            verdict: TC_ACT_REDIRECT,
            counter: "drop-snat-exhausted",
            out: rst_answer(vip, (client, port + 2), 501, n0_mac, client_mac),
        },
        Case {
            name: "a reply to a SNAT port nobody holds is not ours",
            hook: Hook::Ingress,
            input: Frame::tcp(ep, (node, snat_port.wrapping_add(1)), TCP_ACK, 1, 1).macs(ep_mac, n0_mac),
            verdict: TC_ACT_OK,
            counter: "pass-not-ours",
            out: Out::Same,
        },
    ];
    failures.extend(cases.into_iter().filter_map(|case| run_case(&t, &agent, &progs, n0, case).1));
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
}

/// The programs a case runs through.
struct Progs {
    ingress: u64,
    egress: u64,
    /// Under `--attach xdp`: ingress cases run through XDP.
    xdp: Option<u64>,
}

impl Progs {
    fn find(agent: &Agent, xdp: bool) -> Self {
        let ids = agent.program_ids();
        Self {
            ingress: ids.tc_ingress.expect("an attached ingress program"),
            egress: ids.tc_egress.expect("an attached egress program"),
            xdp: if xdp { Some(ids.xdp.expect("an XDP program under --attach xdp")) } else { None },
        }
    }
}

/// Cases whose output only TC makes (answers, ICMP translation): XDP
/// passes their frames on untouched.
const TC_ANSWERS: [&str; 4] = ["rst-sent", "drop-snat-exhausted", "icmp-translated", "icmp-frag-needed-sent"];

/// Runs one case as on interface `n0`; returns the output frame and what
/// was wrong, if anything.
fn run_case(t: &Topo, agent: &Agent, progs: &Progs, n0: u32, mut case: Case) -> (Vec<u8>, Option<String>) {
    let mut input = case.input.bytes();
    if case.counter == "drop-bad-ip-checksum" {
        input[14 + 10] ^= 0xff;
    }
    // XDP's verdicts; what it passes on, TC judges (and counts) next.
    let by_xdp = progs.xdp.filter(|_| case.hook == Hook::Ingress);
    if by_xdp.is_some() {
        case.verdict = match case.verdict {
            TC_ACT_REDIRECT if !TC_ANSWERS.contains(&case.counter) => XDP_REDIRECT,
            TC_ACT_SHOT => XDP_DROP,
            _ => XDP_PASS,
        };
        if case.verdict == XDP_PASS {
            case.counter = "xdp-to-tc";
            case.out = Out::Same;
        }
    }
    let before = agent.stats().unwrap();
    let frame = input.clone();
    let ran: Ran = match by_xdp {
        Some(id) => t.node.inside(move || run_xdp(&prog_fd(id)?, &frame, n0)).unwrap(),
        None => {
            let id = if case.hook == Hook::Ingress { progs.ingress } else { progs.egress };
            t.node.inside(move || run_tc(&prog_fd(id)?, &frame, n0)).unwrap()
        }
    };
    let delta = agent.stats().unwrap().since(&before);
    let mut wrong = Vec::new();
    if ran.verdict != case.verdict {
        wrong.push(format!("verdict {} (want {})", ran.verdict, case.verdict));
    }
    if delta[case.counter] != 1 {
        wrong.push(format!("counter {} moved by {} (all moves: {delta:?})", case.counter, delta[case.counter]));
    }
    let out_ok = match &case.out {
        Out::Same => (ran.frame == input).then_some(()).ok_or_else(|| format!("modified:\n got  {:02x?}\n sent {input:02x?}", ran.frame)),
        Out::Is(want) => {
            let want = want.bytes();
            (ran.frame == want).then_some(()).ok_or_else(|| format!("output:\n got  {:02x?}\n want {want:02x?}", ran.frame))
        }
        Out::Checked(check) => check(&ran.frame),
    };
    if let Err(e) = out_ok {
        wrong.push(e);
    }
    if !matches!(case.out, Out::Same) {
        if let Err(e) = checksums_ok(&ran.frame) {
            wrong.push(format!("checksums: {e}"));
        }
    }
    let hook = if by_xdp.is_some() { "XDP".to_owned() } else { format!("TC {:?}", case.hook) };
    let failure = (!wrong.is_empty()).then(|| format!("{} ({hook}): {}", case.name, wrong.join("; ")));
    (ran.frame, failure)
}
