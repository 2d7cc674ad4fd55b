//! Many long-lived WebSocket connections, each echoing a message every
//! second, as a chat service's clients do: what live operations (restarts,
//! reloads, drains) must not break.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    client::{echo, ws_connect},
    netns::Netns,
};

/// One connection of the fleet.
pub struct Member {
    /// The address it connects from.
    pub client: Ipv4Addr,
    /// The endpoint that greeted it.
    pub backend: String,
    echoes: AtomicU64,
    /// Why and when it ended, if it did.
    ended: Mutex<Option<(String, Instant)>>,
}

impl Member {
    pub fn echoes(&self) -> u64 {
        self.echoes.load(Ordering::Relaxed)
    }

    pub fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap().as_ref().map(|(why, _)| why.clone())
    }

    pub fn ended_at(&self) -> Option<Instant> {
        self.ended.lock().unwrap().as_ref().map(|(_, at)| *at)
    }
}

pub struct Fleet {
    pub members: Vec<Arc<Member>>,
    stop: Arc<AtomicBool>,
    tasks: JoinSet<()>,
}

/// Raises this process's open-file limit to its hard limit: a fleet holds a
/// socket per connection.
fn raise_nofile() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid pointers to a rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

impl Fleet {
    /// Opens `n` connections to `dst`, spread over `clients`, and starts
    /// each echoing once a second.
    pub async fn open(ns: &Netns, clients: &[Ipv4Addr], dst: SocketAddrV4, n: usize) -> anyhow::Result<Self> {
        raise_nofile();
        let opened: Vec<anyhow::Result<_>> = futures_util::stream::iter(0..n)
            .map(|i| {
                let src = clients[i % clients.len()];
                async move {
                    let (ws, hello) = ws_connect(ns, src, dst).await.with_context(|| format!("connection {i} from {src}"))?;
                    Ok((src, ws, hello))
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut members = Vec::new();
        let mut tasks = JoinSet::new();
        for r in opened {
            let (client, mut ws, hello) = r?;
            let m = Arc::new(Member { client, backend: hello.backend, echoes: 0.into(), ended: Mutex::new(None) });
            members.push(m.clone());
            let stop = stop.clone();
            tasks.spawn(async move {
                // Spread the sends over the second.
                tokio::time::sleep(Duration::from_millis(rand_ms(&m))).await;
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let text = format!("{} {k}", m.client);
                    match echo(&mut ws, Message::text(text.clone())).await {
                        Ok(Message::Text(t)) if t.as_str() == text => {
                            m.echoes.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(other) => {
                            *m.ended.lock().unwrap() = Some((format!("echo {k}: got {other:?}"), Instant::now()));
                            return;
                        }
                        Err(e) => {
                            *m.ended.lock().unwrap() = Some((format!("echo {k}: {e:#}"), Instant::now()));
                            return;
                        }
                    }
                    k += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        Ok(Self { members, stop, tasks })
    }

    /// Connections that ended, with why.
    pub fn lost(&self) -> Vec<String> {
        self.members
            .iter()
            .filter_map(|m| m.ended().map(|why| format!("{} on {}: {why}", m.client, m.backend)))
            .collect()
    }

    /// Echoes so far, over all connections.
    pub fn echoes(&self) -> u64 {
        self.members.iter().map(|m| m.echoes()).sum()
    }

    /// Connections by the endpoint that greeted them.
    pub fn by_backend(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for m in &self.members {
            *out.entry(m.backend.clone()).or_default() += 1;
        }
        out
    }

    /// Lets every live connection echo at least `rounds` more times (or
    /// fails naming the lost ones).
    pub async fn run_for(&self, rounds: u64) -> anyhow::Result<()> {
        self.run_for_except(rounds, &[]).await
    }

    /// `run_for`, leaving out the connections to the endpoints `except` names.
    pub async fn run_for_except(&self, rounds: u64, except: &[&str]) -> anyhow::Result<()> {
        let start: Vec<u64> = self.members.iter().map(|m| m.echoes()).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(rounds + 10);
        let counted = |m: &Member| !except.contains(&m.backend.as_str());
        loop {
            let lost: Vec<String> = self
                .members
                .iter()
                .filter(|m| counted(m))
                .filter_map(|m| m.ended().map(|why| format!("{} on {}: {why}", m.client, m.backend)))
                .collect();
            anyhow::ensure!(lost.is_empty(), "{} of {} connections lost: {:#?}", lost.len(), self.members.len(), &lost[..lost.len().min(10)]);
            let behind = self.members.iter().zip(&start).filter(|(m, s)| counted(m) && m.echoes() < *s + rounds).count();
            if behind == 0 {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{behind} of {} connections did not echo {rounds} times within {} s",
                self.members.len(),
                rounds + 10
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops echoing and closes every connection.
    pub async fn close(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A per-connection offset within the second, from its address (no RNG needed).
fn rand_ms(m: &Member) -> u64 {
    (m as *const Member as u64 / 64) % 1000
}
