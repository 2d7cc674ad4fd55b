//! Live operation under load: 1,000 WebSocket connections from 16 client
//! addresses, each echoing once a second, must all survive agent restarts
//! (SIGKILL, SIGTERM), with the datapath forwarding while no agent runs, and
//! configuration reloads: endpoints added, removed (drained), brought back,
//! made not ready, invalid files.
use std::{path::Path, process::Command, time::Duration};

use wsfwd_common::DEFAULT_HASH_SEED;
use wsfwd_tests::{
    agent::{self, Agent, Stop},
    checks,
    client::{http_get, prometheus_samples, ws_connect},
    fleet::Fleet,
    sys::run,
    topo::{SEED_CONFIG, Spec, Topo, upstream_config},
};

const CONNECTIONS: usize = 1000;
/// Collections often enough that one runs right after each restart.
const EXTRA: &[&str] = &["--gc-interval", "1"];

/// How the programs are attached: the attachments' identities and their
/// programs (the links pinned under `bpffs`, TCX and XDP; clsact filters).
fn attachments(t: &Topo, bpffs: &Path, clsact: bool) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = agent::pinned_links(bpffs).into_iter().map(|l| (format!("{} link {}", l.pin, l.id), l.prog)).collect();
    if clsact {
        let ifaces = t.node.exec(&["ls", "/sys/class/net"]).unwrap();
        let on = |i: &str| -> Vec<(String, u64)> { agent::clsact_filters(&t.node, i).into_iter().map(|(at, prog)| (format!("{i} {at}"), prog)).collect() };
        all.extend(ifaces.split_whitespace().flat_map(on));
    }
    all
}

/// Restarts the agent under a full fleet, each way, with a gap in which no
/// agent runs, then upgrades it to a different build (other programs, same
/// layout) and back; asserts nothing was lost or re-created and the programs
/// were swapped inside the same attachments.
async fn restarts_lose_nothing(t: &Topo, mut agent: Agent, clsact: bool) {
    let fleet = Fleet::open(&t.client, &t.clients, t.vip(), CONNECTIONS).await.unwrap();
    assert!(fleet.by_backend().len() >= 2, "{:?}", fleet.by_backend());
    fleet.run_for(2).await.unwrap();
    let (build, other_build) = (agent::binary(), agent::variant_binary());
    let first_tags = agent.program_tags();
    // Endpoint-facing interfaces carry the reply program on their ingress.
    let status = agent.status().unwrap();
    let attached = status["attached"].as_array().unwrap();
    let endpoint_sides = attached.iter().filter(|a| a["side"] == "endpoints").count();
    // Under WSFWD_TEST_ATTACH=xdp, XDP sits in front of TC on n0.
    let xdps = attached.iter().filter(|a| a["xdp"] != "none").count();
    assert_eq!(first_tags.len(), 2 + usize::from(endpoint_sides > 0) + usize::from(xdps > 0), "{}", agent.log());
    let rounds = [(Stop::Kill, &build), (Stop::Term, &build), (Stop::Kill, &build), (Stop::Term, &other_build), (Stop::Term, &build)];
    for (round, (how, bin)) in rounds.into_iter().enumerate() {
        let links = attachments(t, &agent.bpffs, clsact);
        assert_eq!(links.len(), 2 + endpoint_sides + xdps, "ingress and egress on n0, replies on each endpoint-facing interface, XDP: {links:?}");
        let before = agent.stats().unwrap();
        let halted = tokio::task::block_in_place(|| agent.halt(how)).unwrap_or_else(|e| panic!("{how:?}: {e:#}"));
        // No agent: the datapath forwards on its own.
        fleet.run_for(2).await.unwrap_or_else(|e| panic!("round {round}, no agent after {how:?}: {e:#}"));
        // `wsfwd status` reads the pins without an agent, and says there is none.
        let out = run(Command::new(agent::binary()).args(["status", "--json", "--bpffs"]).arg(t.dir.join("bpf"))).unwrap();
        let status: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(status["agentRunning"], false, "round {round}: {status}");
        assert!(status["maps"]["SERVICES"]["entries"].as_u64() >= Some(1), "round {round}: {status}");
        agent = tokio::task::block_in_place(|| halted.resume_with(bin, &t.node, EXTRA)).unwrap();
        assert!(agent.log().contains("adopted the running datapath"), "{}", agent.log());
        // The programs running are the ones this build loaded: the other
        // build's differ, and going back brings the first ones back.
        let tags = agent.program_tags();
        let running: std::collections::BTreeSet<String> = attachments(t, &agent.bpffs, clsact).iter().map(|(_, prog)| agent::program_tag(*prog)).collect();
        assert_eq!(running, tags, "round {round}: attached programs are not this agent's");
        assert_eq!(tags == first_tags, bin == &build, "round {round}: {tags:?} vs the first build's {first_tags:?}");
        // A collection runs within a second: it must remove nothing live.
        fleet.run_for(3).await.unwrap_or_else(|e| panic!("round {round}, after restarting from {how:?}: {e:#}"));
        let after = attachments(t, &agent.bpffs, clsact);
        let ids = |l: &[(String, u64)]| l.iter().map(|(at, _)| at.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&after), ids(&links), "round {round}: the programs must be swapped inside the same links");
        for ((_, old), (_, new)) in links.iter().zip(&after) {
            assert_ne!(old, new, "round {round}: the new agent's programs did not replace the old ones: {links:?} {after:?}");
        }
        let c = agent.stats().unwrap().since(&before);
        assert_eq!(c["flow-created"], 0, "round {round}: flows were created again: {c:?}");
        assert_eq!(c["drop-no-nat-flow"], 0, "round {round}: {c:?}");
    }
    assert!(fleet.echoes() >= (CONNECTIONS * 10) as u64);
    views_agree(t, &agent, &fleet, "after the restarts");
    metrics_agree(t, &fleet, "after the restarts").await;
    let status = agent.status().unwrap();
    assert_eq!(status["agentRunning"], true, "{status}");
    assert_eq!(status["layout"], wsfwd_common::abi::LAYOUT_VERSION, "{status}");
    assert_eq!(status["attached"][0]["interface"], "n0", "{status}");
    assert_eq!(status["attached"][0]["mode"], if clsact { "clsact" } else { "tcx" }, "{status}");
    fleet.close().await;
}

/// The agent's metrics (from inside the node: they are on its loopback)
/// count the fleet's connections on each endpoint, and nothing was evicted.
async fn metrics_agree(t: &Topo, fleet: &Fleet, when: &str) -> std::collections::BTreeMap<String, f64> {
    let addr = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9477);
    let (status, body) = http_get(&t.node, addr, "/metrics").await.unwrap();
    assert!(status.contains("200"), "{when}: {status}\n{body}");
    let samples = prometheus_samples(&body);
    let vip = t.vip().to_string();
    for (backend, n) in fleet.by_backend() {
        let b = t.backends.iter().find(|b| b.name == backend).unwrap();
        let port = if b.behind { 9080 } else { t.spec.ws_port };
        let key = format!(
            r#"wsfwd_endpoint_flows{{service="default/testim-service:9080",frontend="{vip}",endpoint="{}:{port}",state="active"}}"#,
            b.addr
        );
        assert_eq!(samples.get(&key), Some(&(n as f64)), "{when}: {key} in\n{body}");
    }
    // Traffic: every endpoint the fleet uses moves packets both ways, and
    // the service's totals are the sum of its endpoints' (one scrape).
    let service = r#"service="default/testim-service:9080""#;
    for direction in ["in", "out"] {
        let mut sums = (0.0, 0.0);
        for (name, v) in &samples {
            let of_endpoint = name.contains(service) && name.contains(&format!(r#"direction="{direction}""#));
            if of_endpoint && name.starts_with("wsfwd_endpoint_packets_total{") {
                sums.0 += v;
            } else if of_endpoint && name.starts_with("wsfwd_endpoint_bytes_total{") {
                sums.1 += v;
            }
        }
        let total = |family: &str| samples.get(&format!(r#"{family}{{{service},direction="{direction}"}}"#)).copied();
        assert_eq!(total("wsfwd_service_packets_total"), Some(sums.0), "{when}: {direction}\n{body}");
        assert_eq!(total("wsfwd_service_bytes_total"), Some(sums.1), "{when}: {direction}\n{body}");
        assert!(sums.1 >= 40.0 * sums.0, "{when}: fewer bytes than IPv4 and TCP headers\n{body}");
        for backend in fleet.by_backend().keys() {
            let b = t.backends.iter().find(|b| &b.name == backend).unwrap();
            let port = if b.behind { 9080 } else { t.spec.ws_port };
            let key = format!(r#"wsfwd_endpoint_packets_total{{{service},endpoint="{}:{port}",direction="{direction}"}}"#, b.addr);
            assert!(samples.get(&key).is_some_and(|&v| v > 0.0), "{when}: {key} in\n{body}");
        }
    }
    assert_eq!(samples.get("wsfwd_conntrack_evictions_estimated_total"), Some(&0.0), "{when}:\n{body}");
    assert!(samples.get(r#"wsfwd_packets_total{reason="redirected"}"#).is_some_and(|&v| v > 0.0), "{when}:\n{body}");
    assert!(body.contains("# TYPE wsfwd_packets counter"), "{when}: Prometheus counters end in _total:\n{body}");
    samples
}

/// `wsfwd services` counts on each endpoint of the VIP the fleet's
/// connections the test saw land there, and `conntrack --service` lists them.
fn views_agree(t: &Topo, agent: &Agent, fleet: &Fleet, when: &str) {
    let vip = t.vip().to_string();
    let services = agent.services().unwrap();
    let view = services.iter().find(|f| f.frontend == vip).unwrap_or_else(|| panic!("{when}: no {vip} in {services:?}"));
    assert_eq!(view.service, "default/testim-service:9080", "{when}");
    let counted: std::collections::BTreeMap<String, u64> =
        view.by_address().into_iter().filter(|(_, (_, n))| *n > 0).map(|(a, (_, n))| (t.backend_by_addr(&a).unwrap().name.clone(), n)).collect();
    let seen: std::collections::BTreeMap<String, u64> = fleet.by_backend().into_iter().map(|(b, n)| (b, n as u64)).collect();
    assert_eq!(counted, seen, "{when}: wsfwd services disagrees with the connections: {view:?}");
    let flows = agent.flows_of("default/testim-service").unwrap();
    let originals = flows.iter().filter(|f| f.direction == "original" && !f.state.iter().any(|s| s == "rst" || s == "fin")).count();
    assert_eq!(originals, fleet.members.len(), "{when}: conntrack --service");
    assert!(flows.iter().all(|f| f.destination == vip || f.new_source == vip), "{when}: a flow of another service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_lose_no_connection_gateway_t1() {
    let mut t = Topo::new("rs1", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    let agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, EXTRA).unwrap();
    restarts_lose_nothing(&t, agent, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_lose_no_connection_full_nat_clsact_t2() {
    let mut t = Topo::new("rs2", Spec::T2).unwrap();
    t.start_ws_peers().unwrap();
    let addrs: Vec<_> = t.backends.iter().map(|b| b.addr).collect();
    // Attached the way kernels before 6.6 need; the agents after it keep that mode.
    let first: Vec<&str> = EXTRA.iter().copied().chain(["--tc-mode", "clsact"]).collect();
    let agent = Agent::start(&t.node, &t.dir, &upstream_config(&addrs, "Cluster"), &first).unwrap();
    restarts_lose_nothing(&t, agent, true).await;
}

/// The pinned maps are read only by an agent of their own layout, and by one
/// agent at a time; a refused agent leaves the running datapath untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_layout_or_a_second_agent_is_refused_and_changes_nothing() {
    let mut t = Topo::new("lay", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    let agent = Agent::start(&t.node, &t.dir, SEED_CONFIG, &[]).unwrap();
    let bpffs = agent.bpffs.clone();
    let fleet = Fleet::open(&t.client, &t.clients, t.vip(), 32).await.unwrap();
    fleet.run_for(1).await.unwrap();

    let out = agent::command(&t.node, agent.config_path(), &bpffs, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another wsfwd agent is running on"), "{stderr}");

    let halted = tokio::task::block_in_place(|| agent.halt(Stop::Term)).unwrap();
    let links = agent::pinned_links(&bpffs);
    // META says layout 99 (its first field): what a future wsfwd would have pinned.
    let meta = bpffs.join("META");
    let set_layout = |v: u8| {
        let mut args: Vec<String> = ["map", "update", "pinned"].map(String::from).to_vec();
        args.push(meta.display().to_string());
        args.extend(["key", "hex", "00", "00", "00", "00", "value", "hex"].map(String::from));
        let mut value = vec![0u8; 40];
        value[0] = v;
        args.extend(value.iter().map(|b| format!("{b:02x}")));
        run(Command::new("bpftool").args(&args)).unwrap();
    };
    set_layout(99);
    let out = agent::command(&t.node, &t.dir.join("config.yaml"), &bpffs, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("holds maps of another wsfwd layout (layout 99)"), "{stderr}");
    assert!(stderr.contains("wsfwd cleanup --bpffs"), "{stderr}");
    assert_eq!(agent::pinned_links(&bpffs), links, "the refused agent touched the attachments");
    fleet.run_for(2).await.unwrap();

    // Its own layout again: adopted, nothing lost.
    set_layout(wsfwd_common::abi::LAYOUT_VERSION as u8);
    let agent = tokio::task::block_in_place(|| halted.resume(&t.node, &[])).unwrap();
    assert!(agent.log().contains("adopted the running datapath"), "{}", agent.log());
    fleet.run_for(2).await.unwrap();
    fleet.close().await;
}

/// How a test writes the config, as the tools operators use do.
#[derive(Clone, Copy, Debug)]
enum Write {
    /// Truncate and write the file itself.
    InPlace,
    /// Write a new file and rename it over (editors, `install`).
    Rename,
    /// A Kubernetes ConfigMap mount: `config.yaml` is a symlink to
    /// `..data/config.yaml`, and `..data` is swapped to a new directory.
    ConfigMap,
}

fn write_config(path: &std::path::Path, text: &str, how: Write) {
    let dir = path.parent().unwrap();
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match how {
        Write::InPlace => std::fs::write(path, text).unwrap(),
        Write::Rename => {
            let tmp = dir.join(format!(".config.yaml.{n}"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        Write::ConfigMap => {
            let version = dir.join(format!("..v{n}"));
            std::fs::create_dir(&version).unwrap();
            std::fs::write(version.join("config.yaml"), text).unwrap();
            let tmp = dir.join("..data_tmp");
            std::os::unix::fs::symlink(format!("..v{n}"), &tmp).unwrap();
            std::fs::rename(&tmp, dir.join("..data")).unwrap();
            if !path.is_symlink() {
                let link = dir.join(".config-link");
                std::os::unix::fs::symlink("..data/config.yaml", &link).unwrap();
                std::fs::rename(&link, path).unwrap();
            }
        }
    }
}

/// The seed's configuration with both services' endpoints (the same pods)
/// replaced by `endpoints` (address, ready).
fn seed_with(endpoints: &[(&str, bool)]) -> String {
    let eps: String = endpoints
        .iter()
        .map(|(a, ready)| format!("- addresses: [\"{a}\"]\n  conditions: {{ready: {ready}}}\n"))
        .collect();
    let mut text = SEED_CONFIG.to_owned();
    for slice in ["name: testim-service-7xk2p", "name: im-service-q8v4d"] {
        let start = text.find(slice).unwrap();
        let list = start + text[start..].find("endpoints:\n").unwrap() + "endpoints:\n".len();
        let end = text[list..].find("---").map_or(text.len(), |e| list + e);
        text = format!("{}{eps}{}", &text[..list], &text[end..]);
    }
    text
}

/// `upstream_config` (T2) with the endpoints (address, ready) given.
fn upstream_with(endpoints: &[(&str, bool)]) -> String {
    let base = upstream_config(&[], "Cluster");
    let eps: String = endpoints
        .iter()
        .map(|(a, ready)| format!("- addresses: [\"{a}\"]\n  conditions: {{ready: {ready}}}\n"))
        .collect();
    format!("{base}{eps}")
}

/// Where each client address's connections go (the VIP's service has
/// `sessionAffinity: ClientIP`, timeout 10800 s): its affinity's endpoint
/// while that still takes new flows, else Maglev's choice, which becomes its
/// affinity.
struct Affinity(std::collections::BTreeMap<std::net::Ipv4Addr, String>);

impl Affinity {
    fn expected(&self, t: &Topo, config: &str, src: std::net::Ipv4Addr) -> String {
        let services = wsfwd::config::parse(config).unwrap().services;
        let svc = services.iter().find(|s| s.name == "testim-service").unwrap();
        let serving = |name: &str| {
            let addr = t.backends.iter().find(|b| b.name == name).unwrap().addr;
            svc.endpoints.iter().any(|e| e.address == addr && e.takes_new_flows())
        };
        match self.0.get(&src) {
            Some(b) if serving(b) => b.clone(),
            _ => t.backend_by_addr(&checks::predicted_for_client(config, "testim-service", DEFAULT_HASH_SEED, src)).unwrap().name.clone(),
        }
    }

    /// A new connection from each client address lands where `config` and
    /// the clients' affinities say.
    async fn new_connections_follow(&mut self, t: &Topo, config: &str, step: &str) {
        for &src in &t.clients {
            let want = self.expected(t, config, src);
            let (ws, hello) = ws_connect(&t.client, src, t.vip()).await.unwrap_or_else(|e| panic!("{step}: {src}: {e:#}"));
            assert_eq!(hello.backend, want, "{step}: a new connection from {src}");
            self.0.insert(src, want);
            drop(ws);
        }
    }
}

/// Reloads under 1,000 live connections: each step is applied as the file
/// changes (or on SIGHUP), no connection is lost, and new connections follow
/// the new configuration and their clients' affinities.
async fn reloads_lose_nothing(t: &Topo, agent: &Agent, configs: [String; 4]) {
    let [with_two, with_three, without_first, second_not_ready] = configs;
    let path = agent.config_path().to_owned();
    let fleet = Fleet::open(&t.client, &t.clients, t.vip(), CONNECTIONS).await.unwrap();
    fleet.run_for(1).await.unwrap();
    let mut affinity = Affinity(Default::default());
    affinity.new_connections_follow(t, &with_two, "at start").await;
    let mut applied = 0;
    let steps = [
        ("add an endpoint", &with_three, Write::Rename),
        ("remove an endpoint (drain)", &without_first, Write::InPlace),
        ("bring it back", &with_three, Write::ConfigMap),
        ("mark one not ready", &second_not_ready, Write::ConfigMap),
    ];
    for (step, config, how) in steps {
        write_config(&path, config, how);
        applied += 1;
        agent.wait_for_log("applied (generation", applied, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{step}: {e:#}"));
        // Collections run every second: a drained endpoint's replies must stay translated.
        fleet.run_for(3).await.unwrap_or_else(|e| panic!("{step}: {e:#}"));
        affinity.new_connections_follow(t, config, step).await;
    }
    assert!(agent.log().contains("removed (its flows drain)"), "{}", agent.log());
    // A file written in place is read once written, never half-way (its truncation is not an empty config).
    assert!(!agent.log().contains("-service:9080 removed"), "a partly written file was applied:\n{}", agent.log());

    // An invalid file is rejected, naming the error; nothing changes.
    let invalid = second_not_ready.replace("192.168.0.150", "192.168.0.300");
    assert_ne!(invalid, second_not_ready);
    write_config(&path, &invalid, Write::Rename);
    agent.wait_for_log("rejected (1 error(s)); the running configuration is kept", 1, Duration::from_secs(5)).unwrap();
    agent.wait_for_log(r#""192.168.0.300" is not an IPv4 address"#, 1, Duration::from_secs(5)).unwrap();
    fleet.run_for(2).await.unwrap();
    affinity.new_connections_follow(t, &second_not_ready, "after a rejected file").await;
    // A valid file again, then SIGHUP: read again, nothing to apply.
    write_config(&path, &with_three, Write::Rename);
    applied += 1;
    agent.wait_for_log("applied (generation", applied, Duration::from_secs(5)).unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_for_log("SIGHUP: reading", 1, Duration::from_secs(5)).unwrap();
    agent.wait_for_log("unchanged; nothing to apply", 1, Duration::from_secs(5)).unwrap();
    fleet.run_for(2).await.unwrap();
    affinity.new_connections_follow(t, &with_three, "after SIGHUP").await;
    assert!(fleet.lost().is_empty());
    let samples = metrics_agree(t, &fleet, "after the reloads").await;
    assert_eq!(samples.get(r#"wsfwd_reloads_total{result="rejected"}"#), Some(&1.0));
    // Five files applied, and the SIGHUP that found nothing to apply.
    assert_eq!(samples.get(r#"wsfwd_reloads_total{result="applied"}"#), Some(&6.0));
    fleet.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_lose_no_connection_gateway_t1() {
    let mut t = Topo::new("rl1", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    let (b1, b2, b3) = ("10.244.1.10", "10.244.2.10", "10.244.3.10");
    let configs = [
        seed_with(&[(b1, true), (b2, true)]),
        seed_with(&[(b1, true), (b2, true), (b3, true)]),
        seed_with(&[(b2, true), (b3, true)]),
        seed_with(&[(b1, true), (b2, false), (b3, true)]),
    ];
    let agent = Agent::start(&t.node, &t.dir, &configs[0], EXTRA).unwrap();
    reloads_lose_nothing(&t, &agent, configs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_lose_no_connection_full_nat_t2() {
    let mut t = Topo::new("rl2", Spec { external: 3, ..Spec::T2 }).unwrap();
    t.start_ws_peers().unwrap();
    let (e1, e2, e3) = ("10.0.2.21", "10.0.2.22", "10.0.2.23");
    let configs = [
        upstream_with(&[(e1, true), (e2, true)]),
        upstream_with(&[(e1, true), (e2, true), (e3, true)]),
        upstream_with(&[(e2, true), (e3, true)]),
        upstream_with(&[(e1, true), (e2, false), (e3, true)]),
    ];
    let agent = Agent::start(&t.node, &t.dir, &configs[0], EXTRA).unwrap();
    reloads_lose_nothing(&t, &agent, configs).await;
}

/// `--drain-timeout 5`: an endpoint removed from the config keeps its
/// connections for 5 s; then each ends with a RST both ways — the client sees
/// it within a second or two of the deadline, the endpoint sees its side end
/// — while every other connection goes on.
async fn drain_timeout_case(t: &Topo, all: &str, without_first: &str, first: &str) {
    // Reset flows linger --tcp-fin-timeout before they are collected (and
    // their endpoint's traffic slot freed): short here, so that last check
    // does not race the default 10 s.
    let agent = Agent::start(&t.node, &t.dir, all, &["--gc-interval", "1", "--drain-timeout", "5", "--tcp-fin-timeout", "2"]).unwrap();
    let fleet = Fleet::open(&t.client, &t.clients, t.vip(), 64).await.unwrap();
    fleet.run_for(1).await.unwrap();
    let on_first = fleet.members.iter().filter(|m| m.backend == first).count();
    assert!(on_first > 0 && on_first < 64, "{:?}", fleet.by_backend());

    let first_addr = t.backends.iter().find(|b| b.name == first).unwrap().addr.to_string();
    let traffic_of_first = || {
        let rows = agent.traffic().unwrap();
        rows.into_iter().find(|r| r.service == "default/testim-service:9080" && r.endpoint.starts_with(&format!("{first_addr}:")))
    };
    write_config(agent.config_path(), without_first, Write::Rename);
    agent.wait_for_log("applied (generation", 1, Duration::from_secs(5)).unwrap();
    let removed = std::time::Instant::now();
    let at_removal = traffic_of_first().expect("the endpoint's traffic row");
    // Until the deadline every connection goes on, the drained endpoint's included.
    fleet.run_for(3).await.unwrap();
    let view = agent.services().unwrap().into_iter().find(|f| f.frontend == t.vip().to_string()).unwrap();
    assert_eq!(view.by_address().get(&first_addr), Some(&("draining".to_owned(), on_first as u64)), "{view:?}");
    // Its flows still count where they did, through several collections.
    let draining = traffic_of_first().expect("a draining endpoint keeps its traffic row");
    assert!(draining.packets_in > at_removal.packets_in && draining.packets_out > at_removal.packets_out, "{at_removal:?} then {draining:?}");
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(removed.elapsed()) + Duration::from_secs(3)).await;
    for m in &fleet.members {
        match (m.backend == first, m.ended_at()) {
            (true, Some(at)) => {
                let after = at.duration_since(removed);
                assert!(after >= Duration::from_secs(5), "{} ended {after:?} after removal, before the deadline: {:?}", m.client, m.ended());
                assert!(after <= Duration::from_millis(7500), "{} ended {after:?} after removal: {:?}", m.client, m.ended());
                let why = m.ended().unwrap();
                assert!(why.contains("reset") || why.contains("closed"), "{}: {why}", m.client);
            }
            (true, None) => panic!("{} on {first} still open after the drain timeout", m.client),
            (false, None) => {}
            (false, Some(_)) => panic!("{} on {} was lost: {:?}", m.client, m.backend, m.ended()),
        }
    }
    let ended_there = wsfwd_tests::peers::connections_ended(t.ws_peer(first)).len();
    assert_eq!(ended_there, on_first, "{first} must see each of its connections end");
    assert!(agent.log().contains(&format!("drain timeout: {on_first} TCP flows reset")), "{}", agent.log());
    // With its last flow gone, its traffic slot is freed (full-NAT flows
    // stay in the table through the SNAT port's quarantine, and so does it).
    if t.backends.iter().any(|b| b.name == first && b.behind) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while traffic_of_first().is_some() {
            assert!(std::time::Instant::now() < deadline, "the drained endpoint's traffic row outlived its flows: {:?}", traffic_of_first());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    } else {
        assert!(traffic_of_first().is_some(), "freed while its quarantined flows still name it");
    }
    fleet.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_resets_both_ways_gateway_t1() {
    let mut t = Topo::new("dt1", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    let (b1, b2, b3) = ("10.244.1.10", "10.244.2.10", "10.244.3.10");
    let all = seed_with(&[(b1, true), (b2, true), (b3, true)]);
    drain_timeout_case(&t, &all, &seed_with(&[(b2, true), (b3, true)]), "b1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_resets_both_ways_full_nat_t2() {
    let mut t = Topo::new("dt2", Spec { external: 3, ..Spec::T2 }).unwrap();
    t.start_ws_peers().unwrap();
    let (e1, e2, e3) = ("10.0.2.21", "10.0.2.22", "10.0.2.23");
    let all = upstream_with(&[(e1, true), (e2, true), (e3, true)]);
    drain_timeout_case(&t, &all, &upstream_with(&[(e2, true), (e3, true)]), "e1").await;
}

/// `sessionAffinity: ClientIP` with `timeoutSeconds: 6`: after an endpoint is
/// added, reconnecting clients keep their endpoint (through a restart too)
/// until their timeout, then follow Maglev; an affinity to an endpoint that
/// stops being ready is not honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_affinity_outlasts_endpoint_changes_until_its_timeout() {
    let mut t = Topo::new("af", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    let (b1, b2, b3) = ("10.244.1.10", "10.244.2.10", "10.244.3.10");
    let with = |eps: &[(&str, bool)]| {
        seed_with(eps).replace(
            "  sessionAffinity: ClientIP\n",
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 6}}\n",
        )
    };
    let two = with(&[(b1, true), (b2, true)]);
    let three = with(&[(b1, true), (b2, true), (b3, true)]);
    assert_ne!(two, seed_with(&[(b1, true), (b2, true)]));
    let agent = Agent::start(&t.node, &t.dir, &two, EXTRA).unwrap();
    let connect = |src| {
        let t = &t;
        async move {
            let (ws, hello) = ws_connect(&t.client, src, t.vip()).await.unwrap();
            drop(ws);
            hello.backend
        }
    };
    let mut first = std::collections::BTreeMap::new();
    for &src in &t.clients {
        first.insert(src, connect(src).await);
    }
    let maglev = |config: &str, src| {
        let addr = checks::predicted_for_client(config, "testim-service", DEFAULT_HASH_SEED, src);
        t.backend_by_addr(&addr).unwrap().name.clone()
    };
    let moved: Vec<_> = t.clients.iter().filter(|&&c| maglev(&three, c) != first[&c]).collect();
    assert!(!moved.is_empty(), "no client's Maglev choice moves: the test would prove nothing");

    write_config(agent.config_path(), &three, Write::Rename);
    agent.wait_for_log("applied (generation", 1, Duration::from_secs(5)).unwrap();
    for &src in &t.clients {
        assert_eq!(connect(src).await, first[&src], "{src} lost its affinity when an endpoint was added");
    }
    // Affinities are pinned with the maps: a restarted agent honours them.
    let halted = tokio::task::block_in_place(|| agent.halt(Stop::Term)).unwrap();
    let agent = tokio::task::block_in_place(|| halted.resume(&t.node, EXTRA)).unwrap();
    for &src in &t.clients {
        assert_eq!(connect(src).await, first[&src], "{src} lost its affinity across a restart");
    }
    // Idle past the timeout: Maglev decides again.
    tokio::time::sleep(Duration::from_secs(8)).await;
    for &src in &t.clients {
        assert_eq!(connect(src).await, maglev(&three, src), "{src} after its affinity timed out");
    }
    // An affinity to an endpoint that is no longer ready is not honoured.
    let b1_clients: Vec<_> = t.clients.iter().filter(|&&c| maglev(&three, c) == "b1").copied().collect();
    assert!(!b1_clients.is_empty());
    let b1_down = with(&[(b1, false), (b2, true), (b3, true)]);
    write_config(agent.config_path(), &b1_down, Write::Rename);
    agent.wait_for_log("applied (generation", 1, Duration::from_secs(5)).unwrap();
    for src in b1_clients {
        assert_eq!(connect(src).await, maglev(&b1_down, src), "{src} was sent to a not-ready endpoint by its affinity");
    }
}

/// A reload that changes one service leaves the other exactly as it was:
/// its `SERVICES` entry (and so its table's region) is not rewritten, and its
/// connections never notice; the changed service switches to a new table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_touches_only_the_service_that_changed() {
    let mut t = Topo::new("df", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    let (b1, b2, b3) = ("10.244.1.10", "10.244.2.10", "10.244.3.10");
    let all = seed_with(&[(b1, true), (b2, true), (b3, true)]);
    let agent = Agent::start(&t.node, &t.dir, &all, EXTRA).unwrap();
    let dump = || -> std::collections::BTreeMap<String, String> {
        let out = run(Command::new("bpftool").args(["map", "dump", "pinned"]).arg(agent.bpffs.join("SERVICES")).arg("-j")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_array().unwrap().iter().map(|e| (e["key"].to_string(), e["value"].to_string())).collect()
    };
    let before = dump();
    assert_eq!(before.len(), 2, "{before:?}");
    // Only testim-service (the VIP) loses an endpoint; im-service (the NodePort) keeps all three.
    let start = all.find("name: testim-service-7xk2p").unwrap();
    let end = start + all[start..].find("---").unwrap();
    let testim_only = format!("{}{}", &all[..start], &all[start..end].replace("- addresses: [\"10.244.3.10\"]\n  conditions: {ready: true}\n", "")) + &all[end..];
    assert_ne!(testim_only, all);
    write_config(agent.config_path(), &testim_only, Write::Rename);
    agent.wait_for_log("applied (generation", 1, Duration::from_secs(5)).unwrap();
    assert!(agent.log().contains("1 tables written, 1 frontends switched, 1 untouched"), "{}", agent.log());
    let after = dump();
    let node_port = |d: &std::collections::BTreeMap<String, String>| {
        // 10.0.1.1:30100/TCP, as bpftool prints the key's bytes.
        d.iter().find(|(k, _)| k.contains("\"0x0a\",\"0x00\",\"0x01\",\"0x01\",\"0x75\",\"0x94\"")).map(|(_, v)| v.clone())
    };
    assert!(node_port(&before).is_some(), "{before:?}");
    assert_eq!(node_port(&after), node_port(&before), "the unchanged service's entry was rewritten");
    assert_ne!(after, before, "the changed service did not switch");
}
