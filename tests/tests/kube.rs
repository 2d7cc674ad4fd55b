//! DaemonSet mode end to end: the agent follows an API server (the test's,
//! speaking the real list/watch protocol) while WebSocket connections run
//! through it. Each test builds and removes its own namespaces.
use std::{collections::BTreeMap, net::Ipv4Addr, process::Command, time::Duration};

use wsfwd_common::DEFAULT_HASH_SEED;
use wsfwd_tests::{
    agent::{self, Agent, Stop},
    apiserver::{ApiServer, Kind},
    checks,
    client::{http_get, prometheus_samples, ws_connect},
    fleet::Fleet,
    sys::run,
    topo::{SEED_CONFIG, Spec, Topo},
};

/// The seed's objects as a cluster holds them for wsfwd: Services and
/// EndpointSlices labelled for it (Kubernetes copies a Service's labels
/// onto its slices). Both Services select the same pods, given as `slices`
/// (each a list of (address, conditions)): testim-service's split over
/// that many EndpointSlices, im-service's in one.
fn cluster(slices: &[&[(&str, &str)]]) -> String {
    let labelled = SEED_CONFIG.replace("\n  labels:\n", "\n  labels:\n    service.kubernetes.io/service-proxy-name: wsfwd\n");
    // The Deployment and the Services; the seed's slices are replaced.
    let first_slice = labelled.find("---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice").unwrap();
    let mut text = labelled[..first_slice].to_owned();
    let slice = |name: &str, service: &str, eps: &[(&str, &str)]| {
        let eps: String = eps.iter().map(|(a, c)| format!("- addresses: [\"{a}\"]\n  conditions: {{{c}}}\n")).collect();
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  labels:\n    \
             kubernetes.io/service-name: {service}\n    service.kubernetes.io/service-proxy-name: wsfwd\n\
             addressType: IPv4\nports:\n- name: \"\"\n  port: 9080\n  protocol: TCP\nendpoints:\n{eps}"
        )
    };
    for (i, eps) in slices.iter().enumerate() {
        text += &slice(&format!("testim-service-{i}"), "testim-service", eps);
    }
    let all: Vec<(&str, &str)> = slices.iter().flat_map(|s| s.iter().copied()).collect();
    text += &slice("im-service-0", "im-service", &all);
    text
}

const READY: &str = "ready: true, serving: true, terminating: false";
const TERMINATING: &str = "ready: false, serving: true, terminating: true";

/// Where each client address's new connections go (testim-service has
/// ClientIP affinity): its affinity's endpoint while that takes new flows,
/// else Maglev's choice.
struct Affinity(BTreeMap<Ipv4Addr, String>);

impl Affinity {
    async fn new_connections_follow(&mut self, t: &Topo, config: &str, step: &str) {
        let services = wsfwd::config::parse(config).unwrap().services;
        let svc = services.iter().find(|s| s.name == "testim-service").unwrap();
        for &src in &t.clients {
            let serving = |name: &str| {
                let addr = t.backends.iter().find(|b| b.name == name).unwrap().addr;
                svc.endpoints.iter().any(|e| e.address == addr && e.takes_new_flows())
            };
            let want = match self.0.get(&src) {
                Some(b) if serving(b) => b.clone(),
                _ => t.backend_by_addr(&checks::predicted_for_client(config, "testim-service", DEFAULT_HASH_SEED, src)).unwrap().name.clone(),
            };
            let (ws, hello) = ws_connect(&t.client, src, t.vip()).await.unwrap_or_else(|e| panic!("{step}: {src}: {e:#}"));
            assert_eq!(hello.backend, want, "{step}: a new connection from {src}");
            self.0.insert(src, want);
            drop(ws);
        }
    }
}

async fn api_up_metric(t: &Topo) -> Option<f64> {
    let (status, body) = http_get(&t.node, "127.0.0.1:9477".parse().unwrap(), "/metrics").await.unwrap();
    assert!(status.contains("200"), "{status}");
    prometheus_samples(&body).get("wsfwd_kubernetes_api_up").copied()
}

fn source(agent: &Agent) -> String {
    agent.status().unwrap()["source"].as_str().unwrap_or_default().to_owned()
}

fn generation(agent: &Agent) -> u64 {
    agent.status().unwrap()["configGeneration"].as_u64().unwrap()
}

/// Pods rolled one by one under live connections, then the API server's
/// faults: its history expired (410), a watch stream cut mid-event, the
/// server gone for 30 s with the agent restarted meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_01_rollout_and_api_faults_lose_no_connection() {
    let mut t = Topo::new("kb1", Spec { behind: 4, ..Spec::T1 }).unwrap();
    t.start_ws_peers().unwrap();
    let mut api = ApiServer::start(&t.node).unwrap();
    // One object per page: the agent must follow `continue` tokens.
    api.page_cap(1);
    let three = cluster(&[&[("10.244.1.10", READY), ("10.244.2.10", READY), ("10.244.3.10", READY)]]);
    api.apply_yaml(&three).unwrap();
    // Not labelled for wsfwd: kube-proxy's, never forwarded.
    api.apply_yaml("apiVersion: v1\nkind: Service\nmetadata:\n  name: other\nspec:\n  externalIPs: [192.168.0.151]\n  ports:\n  - port: 80\n").unwrap();
    let kubeconfig = api.kubeconfig(&t.dir).unwrap();
    // --dry-run prints what `wsfwd check --iface` prints for the same objects in a file.
    let in_node = |args: &[&std::ffi::OsStr]| {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", t.node.path())).arg(agent::binary()).args(args);
        run(&mut c).unwrap()
    };
    let dry = in_node(&["run".as_ref(), "--kubernetes".as_ref(), "--kubeconfig".as_ref(), kubeconfig.as_os_str(), "--iface".as_ref(), "n0".as_ref(), "--dry-run".as_ref()]);
    let file = t.dir.join("three.yaml");
    std::fs::write(&file, &three).unwrap();
    let checked = in_node(&["check".as_ref(), "--config".as_ref(), file.as_os_str(), "--iface".as_ref(), "n0".as_ref()]);
    assert!(dry.contains("service default/testim-service:9080") && !dry.contains("other"), "{dry}");
    assert_eq!(dry, checked);
    let mut agent = Agent::start_kube(&t.node, &t.dir, &kubeconfig, &["--drain-timeout", "6", "--gc-interval", "1"]).unwrap();
    let requests = api.requests();
    assert!(requests.iter().any(|r| r.contains("continue=")), "no paginated list: {requests:#?}");
    assert!(requests.iter().all(|r| r.contains("/version") || r.contains("labelSelector=service.kubernetes.io%2Fservice-proxy-name%3Dwsfwd")), "{requests:#?}");
    assert_eq!(source(&agent), "kubernetes API reachable");
    assert_eq!(api_up_metric(&t).await, Some(1.0));
    // The DaemonSet's probes.
    for path in ["/healthz", "/readyz"] {
        let (status, body) = http_get(&t.node, "127.0.0.1:9477".parse().unwrap(), path).await.unwrap();
        assert!(status.contains(" 200 ") && body == "ok\n", "{path}: {status} {body:?}");
    }
    let frontends: Vec<String> = agent.services().unwrap().iter().map(|f| f.frontend.clone()).collect();
    assert!(!frontends.iter().any(|f| f.starts_with("192.168.0.151")), "{frontends:?}");

    let fleet = Fleet::open(&t.client, &t.clients, t.vip(), 60).await.unwrap();
    fleet.run_for(1).await.unwrap();
    let mut affinity = Affinity(BTreeMap::new());
    affinity.new_connections_follow(&t, &three, "at start").await;
    let on_b1 = fleet.by_backend().get("b1").copied().unwrap_or(0);
    assert!(on_b1 > 0, "{:?}", fleet.by_backend());

    // Rolling b1 to b4: the new pod's slice arrives first (a second slice of
    // the same Service), then b1 terminates, then it is gone.
    let applied = |n| agent.wait_for_log("kubernetes: applied (generation", n, Duration::from_secs(10));
    let b4_added = cluster(&[
        &[("10.244.1.10", READY), ("10.244.2.10", READY), ("10.244.3.10", READY)],
        &[("10.244.4.10", READY)],
    ]);
    let b1_terminating = cluster(&[
        &[("10.244.1.10", TERMINATING), ("10.244.2.10", READY), ("10.244.3.10", READY)],
        &[("10.244.4.10", READY)],
    ]);
    for (n, (step, yaml)) in [("b4 added", &b4_added), ("b1 terminating", &b1_terminating)].into_iter().enumerate() {
        api.apply_yaml(yaml).unwrap();
        applied(n + 1).unwrap_or_else(|e| panic!("{step}: {e:#}"));
        fleet.run_for(2).await.unwrap_or_else(|e| panic!("{step}: {e:#}"));
        affinity.new_connections_follow(&t, yaml, step).await;
    }
    let b1_gone = cluster(&[&[("10.244.2.10", READY), ("10.244.3.10", READY)], &[("10.244.4.10", READY)]]);
    api.apply_yaml(&b1_gone).unwrap();
    applied(3).unwrap();
    affinity.new_connections_follow(&t, &b1_gone, "b1 gone").await;
    // b1 drains: its connections end at the drain deadline (6 s after it
    // stopped taking new flows), every other one keeps echoing.
    agent.wait_for_log("drain timeout: ", 1, Duration::from_secs(20)).unwrap();
    fleet.run_for_except(2, &["b1"]).await.unwrap();
    let lost = fleet.lost();
    assert_eq!(lost.len(), on_b1, "only b1's connections end, all of them: {lost:#?}");
    assert!(lost.iter().all(|l| l.contains(" on b1: ")), "{lost:#?}");

    // A Service changed: a second external IP, served at once.
    let frontends = |agent: &Agent| agent.services().unwrap().iter().map(|f| f.frontend.clone()).collect::<Vec<_>>();
    let two_ips = b1_gone.replace("  externalIPs:\n  - 192.168.0.150\n", "  externalIPs:\n  - 192.168.0.150\n  - 192.168.0.152\n");
    assert_ne!(two_ips, b1_gone);
    api.apply_yaml(&two_ips).unwrap();
    applied(4).unwrap();
    assert!(frontends(&agent).contains(&"192.168.0.152:9080".to_owned()), "{:?}", frontends(&agent));
    // A Service deleted: its NodePort is gone, the other Service untouched.
    let node_port = |agent: &Agent| frontends(agent).iter().any(|f| f.ends_with(":30100"));
    assert!(node_port(&agent));
    api.delete(Kind::Service, "default", "im-service").unwrap();
    applied(5).unwrap();
    assert!(!node_port(&agent), "{:?}", agent.services().unwrap());
    fleet.run_for_except(1, &["b1"]).await.unwrap();

    // History expired: ERROR 410 on the open watches, a new list, nothing to apply.
    let before = generation(&agent);
    api.expire();
    agent.wait_for_log("(410 Gone)", 1, Duration::from_secs(10)).unwrap();
    agent.wait_for_log("kubernetes: unchanged; nothing to apply", 1, Duration::from_secs(10)).unwrap();
    assert_eq!(generation(&agent), before, "a relist that changed nothing rewrote the plan");
    fleet.run_for_except(1, &["b1"]).await.unwrap();

    // A watch stream cut in the middle of an event: resumed, the event
    // applied (b1's address comes back, a new pod that got it).
    api.cut_next_event();
    let b1_back = cluster(&[&[("10.244.1.10", READY), ("10.244.2.10", READY), ("10.244.3.10", READY)], &[("10.244.4.10", READY)]]);
    api.apply_yaml(&b1_back).unwrap();
    applied(6).unwrap();
    affinity.new_connections_follow(&t, &b1_back, "after a cut stream").await;
    assert!(!agent.log().contains("kubernetes API unreachable"), "a cut stream is not an outage:\n{}", agent.log());

    // The API server gone for 30 s. The agent says so once, keeps the
    // datapath as it was, and a restarted agent serves from the pinned
    // state; a change made meanwhile is applied when the server is back.
    api.down();
    agent.wait_for_log("kubernetes API unreachable", 1, Duration::from_secs(15)).unwrap();
    assert!(source(&agent).starts_with("kubernetes API unreachable"), "{}", source(&agent));
    assert_eq!(api_up_metric(&t).await, Some(0.0));
    fleet.run_for_except(5, &["b1"]).await.unwrap();
    let bpffs = agent.bpffs.clone();
    let halted = agent.halt(Stop::Term).unwrap();
    // The plan as the stopped agent left it (its last collections may have
    // retired drained endpoints): the restarted one must not change it.
    let pinned = run(Command::new(agent::binary()).args(["status", "--json", "--bpffs"]).arg(&bpffs)).unwrap();
    let down_generation = serde_json::from_str::<serde_json::Value>(&pinned).unwrap()["configGeneration"].as_u64().unwrap();
    agent = halted.resume(&t.node, &["--drain-timeout", "6", "--gc-interval", "1"]).unwrap();
    agent.wait_for_log("kubernetes API unreachable", 1, Duration::from_secs(15)).unwrap();
    assert_eq!(generation(&agent), down_generation, "an agent restarted while the API is away changed the plan");
    affinity.new_connections_follow(&t, &b1_back, "restarted while the API is away").await;
    api.apply_yaml(&b1_gone).unwrap();
    fleet.run_for_except(20, &["b1"]).await.unwrap();
    let warned = agent.log().lines().filter(|l| l.contains("kubernetes API unreachable")).count();
    assert_eq!(warned, 1, "one line per state change, not per retry:\n{}", agent.log());
    api.up().await.unwrap();
    agent.wait_for_log("kubernetes API reachable again", 1, Duration::from_secs(15)).unwrap();
    agent.wait_for_log("kubernetes: first complete list applied", 1, Duration::from_secs(15)).unwrap();
    assert_eq!(source(&agent), "kubernetes API reachable");
    assert_eq!(api_up_metric(&t).await, Some(1.0));
    affinity.new_connections_follow(&t, &b1_gone, "the API back").await;
    fleet.run_for_except(2, &["b1"]).await.unwrap();
    assert_eq!(fleet.lost().len(), on_b1, "{:#?}", fleet.lost());
    fleet.close().await;
    agent.stop().unwrap();
}

/// The DaemonSet's capabilities (`deploy/daemonset.yaml`: BPF, NET_ADMIN,
/// PERFMON, everything else dropped) are enough to start, attach and
/// forward, and each of them is needed: without any one the agent does not
/// start, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_02_the_daemonsets_capabilities_are_enough_and_each_is_needed() {
    let mut t = Topo::new("kb2", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    let config = t.dir.join("config.yaml");
    std::fs::write(&config, SEED_CONFIG).unwrap();
    // The node's bpffs is there already (a hostPath in the pod): mounting one needs more.
    let bpffs = t.dir.join("bpf");
    std::fs::create_dir_all(&bpffs).unwrap();
    run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs)).unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(bpffs.clone());
    let all = ["bpf", "net_admin", "perfmon"];
    let start = |caps: &[&str], log: &str| {
        let set: String = std::iter::once("-all".to_owned()).chain(caps.iter().map(|c| format!("+{c}"))).collect::<Vec<_>>().join(",");
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", t.node.path()))
            .args(["setpriv", "--bounding-set", &set, "--inh-caps", &set])
            .arg(agent::binary())
            .args(["run", "--iface", "n0", "--metrics-addr", "none", "--config"])
            .arg(&config)
            .arg("--bpffs")
            .arg(bpffs.join("wsfwd"));
        wsfwd_tests::sys::Proc::spawn(&mut c, &t.dir.join(log)).unwrap()
    };
    let mut agent = start(&all, "all.log");
    agent.wait_for_line("ready", Duration::from_secs(20)).unwrap();
    checks::handshake_checks(&t, &[t.vip(), t.node_port()]).await;
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_timeout(Duration::from_secs(10)).is_some_and(|s| s.success()), "{}", agent.output());
    run(Command::new(agent::binary()).arg("cleanup").arg("--bpffs").arg(bpffs.join("wsfwd"))).unwrap();
    for missing in all {
        let caps: Vec<&str> = all.iter().copied().filter(|c| *c != missing).collect();
        let mut agent = start(&caps, &format!("without-{missing}.log"));
        let status = agent.wait_timeout(Duration::from_secs(20));
        let out = agent.output();
        assert!(status.is_some_and(|s| !s.success()), "without CAP_{}: {out}", missing.to_uppercase());
        let said = out.lines().any(|l| l.starts_with("error: ") && l.contains("this needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"));
        assert!(!out.lines().any(|l| l.starts_with("ready")) && said, "without CAP_{}: {out}", missing.to_uppercase());
        // A failed fresh start leaves nothing pinned.
        assert!(std::fs::read_dir(bpffs.join("wsfwd")).map_or(true, |d| d.count() == 0), "without CAP_{}: pins left", missing.to_uppercase());
    }
}

/// With `--node-name`, an endpoint that Kubernetes places on another node
/// gets full NAT (its replies must come back through this node), whatever
/// the routes say; this node's own endpoints see the client's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_03_endpoints_on_other_nodes_get_full_nat() {
    let mut t = Topo::new("kb3", Spec::T1).unwrap();
    t.start_ws_peers().unwrap();
    let api = ApiServer::start(&t.node).unwrap();
    let yaml = cluster(&[&[("10.244.1.10", READY), ("10.244.2.10", READY)]])
        .replace("- addresses: [\"10.244.1.10\"]\n", "- addresses: [\"10.244.1.10\"]\n  nodeName: node-a\n")
        .replace("- addresses: [\"10.244.2.10\"]\n", "- addresses: [\"10.244.2.10\"]\n  nodeName: node-b\n");
    api.apply_yaml(&yaml).unwrap();
    let kubeconfig = api.kubeconfig(&t.dir).unwrap();
    let agent = Agent::start_kube(&t.node, &t.dir, &kubeconfig, &["--node-name", "node-a"]).unwrap();
    let log = agent.log();
    assert!(log.contains("endpoint 10.244.1.10:9080: behind the node, sees the client address"), "{log}");
    assert!(log.contains("endpoint 10.244.2.10:9080: not behind the node, full NAT from "), "{log}");
    let mut seen = BTreeMap::new();
    for &src in &t.clients {
        let (ws, hello) = ws_connect(&t.client, src, t.vip()).await.unwrap();
        let sees_client = hello.client == src.to_string();
        assert_eq!(sees_client, hello.backend == "b1", "{src} reached {} seen as {}", hello.backend, hello.client);
        seen.insert(hello.backend, hello.client);
        drop(ws);
    }
    assert_eq!(seen.len(), 2, "both endpoints reached: {seen:?}");
}
