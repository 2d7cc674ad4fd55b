//! Live operation under load: 1,000 WebSocket connections from 16 client
//! addresses, each echoing once a second, must all survive agent restarts
//! (SIGKILL, SIGTERM), with the datapath forwarding while no agent runs.
use std::process::Command;

use wsfwd_tests::{
    agent::{self, Agent, Stop},
    fleet::Fleet,
    sys::run,
    topo::{SEED_CONFIG, Spec, Topo, upstream_config},
};

const CONNECTIONS: usize = 1000;
/// Collections often enough that one runs right after each restart.
const EXTRA: &[&str] = &["--gc-interval", "1"];

/// How the programs are attached: the attachments' identities and their
/// programs (TCX links, or clsact filters).
fn attachments(t: &Topo, clsact: bool) -> Vec<(String, u64)> {
    if clsact {
        agent::clsact_filters(&t.node, "n0")
    } else {
        agent::tc_links().into_iter().map(|(link, prog)| (format!("link {link}"), prog)).collect()
    }
}

/// Restarts the agent under a full fleet, each way, with a gap in which no
/// agent runs; asserts nothing was lost or re-created and the programs were
/// swapped inside the same attachments.
async fn restarts_lose_nothing(t: &Topo, mut agent: Agent, clsact: bool) {
    let fleet = Fleet::open(&t.client, &t.clients, t.vip(), CONNECTIONS).await.unwrap();
    assert!(fleet.by_backend().len() >= 2, "{:?}", fleet.by_backend());
    fleet.run_for(2).await.unwrap();
    for (round, how) in [Stop::Kill, Stop::Term, Stop::Kill].into_iter().enumerate() {
        let links = attachments(t, clsact);
        assert_eq!(links.len(), 2, "ingress and egress on n0: {links:?}");
        let before = agent.stats().unwrap();
        let halted = tokio::task::block_in_place(|| agent.halt(how)).unwrap_or_else(|e| panic!("{how:?}: {e:#}"));
        // No agent: the datapath forwards on its own.
        fleet.run_for(2).await.unwrap_or_else(|e| panic!("round {round}, no agent after {how:?}: {e:#}"));
        agent = tokio::task::block_in_place(|| halted.resume(&t.node, EXTRA)).unwrap();
        assert!(agent.log().contains("adopted the running datapath"), "{}", agent.log());
        // A collection runs within a second: it must remove nothing live.
        fleet.run_for(3).await.unwrap_or_else(|e| panic!("round {round}, after restarting from {how:?}: {e:#}"));
        let after = attachments(t, clsact);
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
    fleet.close().await;
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
    let links = agent::tc_links();
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
    assert_eq!(agent::tc_links(), links, "the refused agent touched the attachments");
    fleet.run_for(2).await.unwrap();

    // Its own layout again: adopted, nothing lost.
    set_layout(wsfwd_common::abi::LAYOUT_VERSION as u8);
    let agent = tokio::task::block_in_place(|| halted.resume(&t.node, &[])).unwrap();
    assert!(agent.log().contains("adopted the running datapath"), "{}", agent.log());
    fleet.run_for(2).await.unwrap();
    fleet.close().await;
}
