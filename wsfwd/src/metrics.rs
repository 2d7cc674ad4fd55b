//! Prometheus metrics (`run --metrics-addr`), read from the pinned maps on
//! each scrape and encoded by `prometheus-client` in Prometheus' naming:
//! `_total` counters, base units, one family per quantity.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};
use wsfwd_common::abi::{Counter as C, DIR_ORIGINAL, map_names as names};

use crate::{stats, status};

/// What only the agent knows: how many gateway flows its collector removed,
/// and the counts when it started, to estimate LRU evictions.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentCounts {
    pub gateway_flows_collected: u64,
    /// (gateway flows created, gateway flows present) when the agent started.
    pub at_start: Option<(u64, u64)>,
    /// DaemonSet mode: whether the API server answers.
    pub api: Option<crate::kubernetes::ApiState>,
    /// When the agent's event loop last ran a collection (its heartbeat).
    pub heartbeat: Option<std::time::Instant>,
}

/// `/healthz`: the agent's event loop ran a collection lately (within
/// `limit`). The datapath forwards without the agent; this says whether
/// the agent still looks after it (collections, drains, reloads).
fn healthz(agent: &AgentCounts, limit: std::time::Duration) -> (u16, String) {
    match agent.heartbeat {
        Some(t) if t.elapsed() <= limit => (200, "ok\n".into()),
        Some(t) => (503, format!("the agent's last collection was {} s ago\n", t.elapsed().as_secs())),
        None => (503, "the agent has not run a collection yet\n".into()),
    }
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn counter_family(reg: &mut Registry, name: &str, help: &str, values: &[(Labels, u64)]) {
    let f = Family::<Labels, Counter>::default();
    for (l, v) in values {
        f.get_or_create(l).inc_by(*v);
    }
    reg.register(name, help, f);
}

fn gauge_family(reg: &mut Registry, name: &str, help: &str, values: &[(Labels, i64)]) {
    let f = Family::<Labels, Gauge>::default();
    for (l, v) in values {
        f.get_or_create(l).set(*v);
    }
    reg.register(name, help, f);
}

/// Gateway flows present now (original directions in `CONNTRACK` and `HANDSHAKES`).
pub fn gateway_flows(dir: &Path) -> anyhow::Result<u64> {
    let mut n = 0;
    for name in [names::CONNTRACK, names::HANDSHAKES] {
        n += status::flow_entries(dir, name)?.iter().filter(|(k, _)| k.dir == DIR_ORIGINAL).count() as u64;
    }
    Ok(n)
}

/// Gateway flows created so far (all flows created, less full-NAT ones).
pub fn gateway_flows_created(counters: &BTreeMap<&str, u64>) -> u64 {
    counters[C::FlowCreated.name()].saturating_sub(counters[C::SnatAllocated.name()])
}

/// The metrics, as Prometheus text.
pub fn render(dir: &Path, agent: &AgentCounts) -> anyhow::Result<String> {
    let mut reg = Registry::with_prefix("wsfwd");
    let counters: BTreeMap<&str, u64> = stats::counters(dir)?.into_iter().collect();
    let packets: Vec<_> = counters.iter().map(|(name, v)| (labels(&[("reason", name)]), *v)).collect();
    counter_family(&mut reg, "packets", "Packets by the datapath's verdict and reason (as `wsfwd stats` names them)", &packets);
    let gateway_created = gateway_flows_created(&counters);
    let nat_created = counters[C::SnatAllocated.name()];
    counter_family(
        &mut reg,
        "flows_created",
        "Flows created, by kind",
        &[(labels(&[("kind", "gateway")]), gateway_created), (labels(&[("kind", "full_nat")]), nat_created)],
    );
    counter_family(
        &mut reg,
        "new_flows_refused",
        "New flows refused, by reason",
        &[
            (labels(&[("reason", "snat_ports_exhausted")]), counters[C::DropSnatExhausted.name()]),
            (labels(&[("reason", "half_open_budget")]), counters[C::DropHalfOpenBudget.name()]),
            (labels(&[("reason", "no_endpoint")]), counters[C::DropNoEndpoint.name()]),
            (labels(&[("reason", "tuple_clash")]), counters[C::DropTupleClash.name()]),
        ],
    );

    let st = status::status(dir)?;
    let mut entries = Vec::new();
    let mut capacity = Vec::new();
    for (name, o) in &st.maps {
        if matches!(*name, names::CONNTRACK | names::HANDSHAKES | names::NAT) {
            entries.push((labels(&[("table", &name.to_lowercase())]), o.entries as i64));
            capacity.push((labels(&[("table", &name.to_lowercase())]), o.capacity as i64));
        }
    }
    gauge_family(&mut reg, "conntrack_entries", "Flow table entries in use (two per flow)", &entries);
    gauge_family(&mut reg, "conntrack_capacity", "Flow table capacity in entries", &capacity);
    let present = gateway_flows(dir)?;
    let evicted = agent.at_start.map_or(0, |(created0, present0)| {
        // Created since start, less what the collector removed and what is still there.
        (gateway_created.saturating_sub(created0) + present0).saturating_sub(agent.gateway_flows_collected + present)
    });
    counter_family(
        &mut reg,
        "conntrack_evictions_estimated",
        "Gateway flows evicted from the LRU tables (estimated: created, less collected, less present), since the agent started",
        &[(Vec::new(), evicted)],
    );
    let mut snat: BTreeMap<String, i64> = BTreeMap::new();
    for (k, v) in status::flow_entries(dir, names::NAT)? {
        if k.dir == DIR_ORIGINAL {
            *snat.entry(std::net::Ipv4Addr::from(v.to.saddr).to_string()).or_default() += 1;
        }
    }
    let snat: Vec<_> = snat.iter().map(|(a, n)| (labels(&[("address", a)]), *n)).collect();
    gauge_family(&mut reg, "snat_ports_in_use", "SNAT ports held by full-NAT flows (quarantined ones included), by SNAT address", &snat);
    counter_family(
        &mut reg,
        "reloads",
        "Configuration reloads, by result",
        &[
            (labels(&[("result", "applied")]), u64::from(st.reloads_applied)),
            (labels(&[("result", "rejected")]), u64::from(st.reloads_rejected)),
        ],
    );
    gauge_family(&mut reg, "config_generation", "Configurations applied since the maps were made", &[(Vec::new(), i64::from(st.config_generation))]);

    let frontends = status::services(dir)?;
    let mut by_state: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
    let mut flows = Vec::new();
    let mut draining = 0i64;
    for f in &frontends {
        for e in &f.endpoints {
            *by_state.entry((f.service.clone(), e.state)).or_default() += 1;
            flows.push((
                labels(&[("service", &f.service), ("frontend", &f.frontend), ("endpoint", &e.endpoint), ("state", e.state)]),
                e.flows as i64,
            ));
            if e.state == "draining" {
                draining += e.flows as i64;
            }
        }
    }
    let by_state: Vec<_> = by_state.iter().map(|((s, st), n)| (labels(&[("service", s), ("state", st)]), *n)).collect();
    gauge_family(&mut reg, "endpoints", "Endpoints by service and state (active, terminating, draining), per frontend", &by_state);
    gauge_family(&mut reg, "endpoint_flows", "Live flows by frontend and endpoint", &flows);
    gauge_family(&mut reg, "draining_flows", "Live flows on draining endpoints", &[(Vec::new(), draining)]);

    let traffic = status::traffic(dir)?;
    let (mut packets, mut bytes) = (Vec::new(), Vec::new());
    let mut by_service: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
    for t in &traffic {
        for (direction, p, b) in [("in", t.packets_in, t.bytes_in), ("out", t.packets_out, t.bytes_out)] {
            let l = labels(&[("service", &t.service), ("endpoint", &t.endpoint), ("direction", direction)]);
            packets.push((l.clone(), p));
            bytes.push((l, b));
            let s = by_service.entry((&t.service, direction)).or_default();
            s.0 += p;
            s.1 += b;
        }
    }
    let service_packets: Vec<_> = by_service.iter().map(|((s, d), v)| (labels(&[("service", s), ("direction", d)]), v.0)).collect();
    let service_bytes: Vec<_> = by_service.iter().map(|((s, d), v)| (labels(&[("service", s), ("direction", d)]), v.1)).collect();
    let help = "(direction in: to the endpoint; out: its replies)";
    counter_family(&mut reg, "service_packets", &format!("Packets forwarded per service port {help}"), &service_packets);
    counter_family(&mut reg, "service_bytes", &format!("IPv4 bytes forwarded per service port {help}"), &service_bytes);
    counter_family(&mut reg, "endpoint_packets", &format!("Packets forwarded per service port and endpoint {help}"), &packets);
    counter_family(&mut reg, "endpoint_bytes", &format!("IPv4 bytes forwarded per service port and endpoint {help}"), &bytes);

    if let Some(api) = agent.api {
        let up = i64::from(api == crate::kubernetes::ApiState::Reachable);
        gauge_family(&mut reg, "kubernetes_api_up", "1 while the Kubernetes API server answers the agent's watches", &[(Vec::new(), up)]);
    }

    let mut out = String::new();
    encode(&mut out, &reg)?;
    Ok(out)
}

/// Serves `GET /metrics`, and `/healthz` and `/readyz` for a kubelet's
/// probes, on `listener` until the agent exits. The agent serves them once
/// its datapath is attached, so ready means forwarding (with its own plan,
/// or an adopted one while the API server's lists are awaited).
pub async fn serve(listener: TcpListener, dir: PathBuf, agent: Arc<Mutex<AgentCounts>>, heartbeat_limit: std::time::Duration) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else { continue };
        let (dir, agent) = (dir.clone(), agent.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // The request line and headers; the body (if any) is ignored.
            while n < buf.len() {
                match tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf[n..])).await {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(k)) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let response = if request.starts_with("GET ") && (path == "/metrics" || path.starts_with("/metrics?")) {
                let rendered = tokio::task::spawn_blocking(move || {
                    let counts = agent.lock().map(|a| *a).unwrap_or_default();
                    render(&dir, &counts)
                })
                .await;
                match rendered {
                    Ok(Ok(body)) => http(200, "application/openmetrics-text; version=1.0.0; charset=utf-8", &body),
                    Ok(Err(e)) => http(500, "text/plain", &format!("reading the pinned maps: {e:#}\n")),
                    Err(e) => http(500, "text/plain", &format!("{e}\n")),
                }
            } else if request.starts_with("GET ") && (path == "/healthz" || path == "/readyz") {
                let counts = agent.lock().map(|a| *a).unwrap_or_default();
                let (code, body) = healthz(&counts, heartbeat_limit);
                http(code, "text/plain", &body)
            } else {
                http(404, "text/plain", "wsfwd serves /metrics, /healthz and /readyz\n")
            };
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

fn http(code: u16, content_type: &str, body: &str) -> String {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{AgentCounts, healthz};

    #[test]
    fn healthz_follows_the_agents_collections() {
        let limit = Duration::from_secs(20);
        let at = |ago: u64| AgentCounts { heartbeat: Instant::now().checked_sub(Duration::from_secs(ago)), ..AgentCounts::default() };
        assert_eq!(healthz(&at(1), limit).0, 200);
        let (code, why) = healthz(&at(30), limit);
        assert_eq!(code, 503);
        assert!(why.contains("30 s ago"), "{why}");
        assert_eq!(healthz(&AgentCounts::default(), limit).0, 503);
    }
}
