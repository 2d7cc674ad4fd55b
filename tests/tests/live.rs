//! Live operation under load: 1,000 WebSocket connections from 16 client
//! addresses, each echoing once a second, must all survive agent restarts
//! (SIGKILL, SIGTERM), with the datapath forwarding while no agent runs.
use wsfwd_tests::{
    agent::{self, Agent, Stop},
    fleet::Fleet,
    topo::{SEED_CONFIG, Spec, Topo, upstream_config},
};

const CONNECTIONS: usize = 1000;
/// Collections often enough that one runs right after each restart.
const EXTRA: &[&str] = &["--gc-interval", "1"];

/// Restarts the agent under a full fleet, each way, with a gap in which no
/// agent runs; asserts nothing was lost or re-created and the programs were
/// swapped inside the same links.
async fn restarts_lose_nothing(t: &Topo, mut agent: Agent) {
    let fleet = Fleet::open(&t.client, &t.clients, t.vip(), CONNECTIONS).await.unwrap();
    assert!(fleet.by_backend().len() >= 2, "{:?}", fleet.by_backend());
    fleet.run_for(2).await.unwrap();
    for (round, how) in [Stop::Kill, Stop::Term, Stop::Kill].into_iter().enumerate() {
        let links = agent::tc_links();
        assert_eq!(links.len(), 2, "ingress and egress on n0: {links:?}");
        let before = agent.stats().unwrap();
        let halted = tokio::task::block_in_place(|| agent.halt(how)).unwrap_or_else(|e| panic!("{how:?}: {e:#}"));
        // No agent: the datapath forwards on its own.
        fleet.run_for(2).await.unwrap_or_else(|e| panic!("round {round}, no agent after {how:?}: {e:#}"));
        agent = tokio::task::block_in_place(|| halted.resume(&t.node, EXTRA)).unwrap();
        assert!(agent.log().contains("adopted the running datapath"), "{}", agent.log());
        // A collection runs within a second: it must remove nothing live.
        fleet.run_for(3).await.unwrap_or_else(|e| panic!("round {round}, after restarting from {how:?}: {e:#}"));
        let after = agent::tc_links();
        let ids = |l: &[(u64, u64)]| l.iter().map(|(link, _)| *link).collect::<Vec<_>>();
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
    restarts_lose_nothing(&t, agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_lose_no_connection_full_nat_t2() {
    let mut t = Topo::new("rs2", Spec::T2).unwrap();
    t.start_ws_peers().unwrap();
    let addrs: Vec<_> = t.backends.iter().map(|b| b.addr).collect();
    let agent = Agent::start(&t.node, &t.dir, &upstream_config(&addrs, "Cluster"), EXTRA).unwrap();
    restarts_lose_nothing(&t, agent).await;
}
