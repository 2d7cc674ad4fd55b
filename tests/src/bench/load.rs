//! The load generator: WebSocket echo at a fixed aggregate rate (open loop),
//! and connection churn. Latency is measured from the time a message was
//! *meant* to be sent, so a stall that delays sending shows up in the
//! percentiles instead of hiding (coordinated omission).
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

use crate::{client, netns::Netns};

/// Latencies in microseconds, up to a minute, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// One connection's share of an open-loop run.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// When the run starts (all connections share it).
    pub start: Instant,
    /// This connection's offset, so connections do not send in lockstep.
    pub phase: Duration,
    /// Time between two messages of this connection.
    pub interval: Duration,
    /// Messages meant before this are sent but not recorded.
    pub warmup: Duration,
    /// No message is meant after this.
    pub duration: Duration,
    pub message_bytes: usize,
}

impl Pace {
    /// When message `k` is meant to be sent, whatever happens to the sender.
    pub fn intended(&self, k: u64) -> Instant {
        self.start + self.phase + self.interval.mul_f64(k as f64)
    }

    /// How many messages are meant in the run.
    pub fn count(&self) -> u64 {
        let span = self.duration.saturating_sub(self.phase).as_secs_f64();
        (span / self.interval.as_secs_f64()).ceil() as u64
    }
}

#[derive(Debug)]
pub struct ConnStats {
    pub hist: Histogram<u64>,
    pub sent: u64,
    pub received: u64,
    pub errors: u64,
}

/// Message `k`: its number and its intended send time (ns from the start), padded.
fn message(k: u64, intended_ns: u64, bytes: usize) -> Message {
    let mut b = vec![0u8; bytes.max(16)];
    b[..8].copy_from_slice(&k.to_be_bytes());
    b[8..16].copy_from_slice(&intended_ns.to_be_bytes());
    Message::binary(b)
}

/// Sends at `pace` and records each echo's latency from its intended send time.
pub async fn paced_echo<T>(ws: WebSocketStream<T>, pace: Pace) -> ConnStats
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, mut rx) = ws.split();
    let writer = async move {
        let mut sent = 0u64;
        loop {
            let at = pace.intended(sent);
            if at >= pace.start + pace.duration {
                break;
            }
            // Late (the connection or this task stalled): send at once; the
            // latency still counts from `at`.
            tokio::time::sleep_until(at).await;
            let offset = (at - pace.start).as_nanos() as u64;
            if tx.send(message(sent, offset, pace.message_bytes)).await.is_err() {
                break;
            }
            sent += 1;
        }
        (sent, tx)
    };
    let reader = async move {
        let mut hist = histogram();
        let (mut received, mut errors) = (0u64, 0u64);
        let drain = pace.start + pace.duration + Duration::from_secs(3);
        let expected = pace.count();
        while received + errors < expected {
            let next = tokio::time::timeout_at(drain, rx.next()).await;
            let Ok(Some(msg)) = next else { break };
            let Ok(Message::Binary(b)) = msg else {
                errors += u64::from(!matches!(msg, Ok(Message::Pong(_) | Message::Ping(_))));
                continue;
            };
            if b.len() < 16 {
                errors += 1;
                continue;
            }
            let intended = pace.start + Duration::from_nanos(u64::from_be_bytes(b[8..16].try_into().unwrap_or([0; 8])));
            received += 1;
            if intended >= pace.start + pace.warmup {
                let us = Instant::now().saturating_duration_since(intended).as_micros() as u64;
                let _ = hist.record(us.max(1));
            }
        }
        (hist, received, errors)
    };
    let ((sent, mut tx), (hist, received, errors)) = tokio::join!(writer, reader);
    let _ = tx.close().await;
    ConnStats { hist, sent, received, errors: errors + sent.saturating_sub(received) }
}

/// An open-loop echo run over `conns` connections at `rate` messages/s in all.
pub struct EchoRun {
    pub hist: Histogram<u64>,
    pub sent: u64,
    pub received: u64,
    pub errors: u64,
}

/// Opens `conns` WebSocket connections from `clients` (round robin) to `dst(i)`.
pub async fn open(
    ns: &Netns,
    clients: &[Ipv4Addr],
    dst: &dyn Fn(usize) -> SocketAddrV4,
    conns: usize,
) -> anyhow::Result<Vec<client::Ws>> {
    let mut sockets = Vec::with_capacity(conns);
    for i in 0..conns {
        let (ws, _) = client::ws_connect(ns, clients[i % clients.len()], dst(i))
            .await
            .with_context(|| format!("opening connection {i} of {conns}"))?;
        sockets.push(ws);
    }
    Ok(sockets)
}

/// Runs open connections at `rate` messages/s in all (open loop).
pub async fn echo_run(
    sockets: Vec<client::Ws>,
    rate: u32,
    message_bytes: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<EchoRun> {
    let conns = sockets.len();
    let start = Instant::now() + Duration::from_millis(200);
    let interval = Duration::from_secs_f64(conns as f64 / f64::from(rate));
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            let phase = interval.mul_f64(i as f64 / conns as f64);
            let pace = Pace { start, phase, interval, warmup, duration: warmup + duration, message_bytes };
            tokio::spawn(paced_echo(ws, pace))
        })
        .collect();
    let mut run = EchoRun { hist: histogram(), sent: 0, received: 0, errors: 0 };
    for t in tasks {
        let s = t.await?;
        run.hist.add(&s.hist).ok();
        run.sent += s.sent;
        run.received += s.received;
        run.errors += s.errors;
    }
    Ok(run)
}

/// Connect + upgrade + one echo + close, by `workers` in parallel for `duration`.
pub async fn conn_churn(
    ns: &Netns,
    clients: &[Ipv4Addr],
    dst: &dyn Fn(usize) -> SocketAddrV4,
    workers: usize,
    duration: Duration,
) -> (u64, Histogram<u64>, u64) {
    let end = Instant::now() + duration;
    let one = |w: usize| async move {
        let mut hist = histogram();
        let (mut ok, mut errors) = (0u64, 0u64);
        let mut i = w;
        while Instant::now() < end {
            let t0 = Instant::now();
            let r = async {
                let (mut ws, _) = client::ws_connect(ns, clients[i % clients.len()], dst(i)).await?;
                client::echo(&mut ws, Message::binary(vec![7u8; 64])).await?;
                ws.close(None).await?;
                anyhow::Ok(())
            }
            .await;
            match r {
                Ok(()) => {
                    ok += 1;
                    let _ = hist.record((t0.elapsed().as_micros() as u64).max(1));
                }
                Err(_) => errors += 1,
            }
            i += workers;
        }
        (ok, hist, errors)
    };
    let results = futures_util::future::join_all((0..workers).map(one)).await;
    let mut hist = histogram();
    let (mut ok, mut errors) = (0, 0);
    for (o, h, e) in results {
        ok += o;
        errors += e;
        hist.add(&h).ok();
    }
    (ok, hist, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory echo server that stalls once: from 50 ms to 150 ms into
    /// the run it neither reads nor answers.
    async fn stalling_echo<T: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<T>, start: Instant) {
        while let Some(Ok(msg)) = ws.next().await {
            let now = Instant::now();
            let (from, to) = (start + Duration::from_millis(50), start + Duration::from_millis(150));
            if now >= from && now < to {
                tokio::time::sleep_until(to).await;
            }
            if ws.send(msg).await.is_err() {
                return;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_shows_in_the_percentiles() {
        use tokio_tungstenite::tungstenite::protocol::Role;
        // A small pipe, so the stalled server pushes back on the sender.
        let (a, b) = tokio::io::duplex(256);
        let client = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let server = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        let start = Instant::now();
        tokio::spawn(stalling_echo(server, start));
        // 1,000 messages/s for 1 s: the stall holds up 100 of them.
        let pace = Pace {
            start,
            phase: Duration::ZERO,
            interval: Duration::from_millis(1),
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            message_bytes: 64,
        };
        let s = paced_echo(client, pace).await;
        assert_eq!(s.sent, 1000);
        assert_eq!(s.received, 1000);
        // Corrected: messages meant during the stall waited for its end, up
        // to 100 ms; that is 10% of the run, so p95 is well into it. Measured
        // from when they were actually sent, they would all look instant.
        let p95 = s.hist.value_at_quantile(0.95);
        let max = s.hist.max();
        assert!(p95 >= 40_000, "p95 {p95} µs hides the stall");
        assert!((95_000..=110_000).contains(&max), "max {max} µs");
        assert!(s.hist.value_at_quantile(0.5) < 1_000, "p50 {} µs", s.hist.value_at_quantile(0.5));
    }
}
