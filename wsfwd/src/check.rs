//! `wsfwd check`: the plan the datapath would be given, for a person or as JSON.
use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    maglev,
    model::{Endpoint, Frontend, HashInput, Protocol, Service},
};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan<'a> {
    pub hash_seed: u32,
    pub services: Vec<ServicePlan<'a>>,
}

/// One service port as the datapath gets it: its model plus its Maglev table's shape.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePlan<'a> {
    pub id: String,
    pub namespace: &'a str,
    pub name: &'a str,
    pub port_name: &'a str,
    pub protocol: Protocol,
    pub port: u16,
    pub frontends: &'a [Frontend],
    pub hash: HashInput,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_timeout_seconds: Option<u32>,
    /// Maglev table size; absent when no endpoint takes new flows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u32>,
    pub endpoints: Vec<EndpointPlan<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub endpoint_notes: &'a [String],
}

#[derive(Serialize)]
pub struct EndpointPlan<'a> {
    #[serde(flatten)]
    pub endpoint: &'a Endpoint,
    /// Maglev slots held: the endpoint's share of new flows (0 unless ready).
    pub slots: u32,
}

impl<'a> ServicePlan<'a> {
    pub fn new(s: &'a Service, seed: u32) -> Self {
        let live: Vec<usize> = (0..s.endpoints.len()).filter(|&i| s.endpoints[i].takes_new_flows()).collect();
        let keys: Vec<maglev::Key> = live.iter().map(|&i| (s.endpoints[i].address, s.endpoints[i].port)).collect();
        let size = maglev::table_size(keys.len());
        let table = maglev::build(&keys, size, seed);
        let mut slots = vec![0; s.endpoints.len()];
        if let Some(table) = &table {
            for (n, count) in maglev::slot_counts(table, keys.len()).into_iter().enumerate() {
                slots[live[n]] = count;
            }
        }
        Self {
            id: s.id(),
            namespace: &s.namespace,
            name: &s.name,
            port_name: &s.port_name,
            protocol: s.protocol,
            port: s.port,
            frontends: &s.frontends,
            hash: s.hash,
            scheduler: s.scheduler.as_deref(),
            affinity_timeout_seconds: s.affinity_timeout_seconds,
            table_size: table.map(|_| size),
            endpoints: s.endpoints.iter().zip(slots).map(|(endpoint, slots)| EndpointPlan { endpoint, slots }).collect(),
            endpoint_notes: &s.endpoint_notes,
        }
    }
}

pub fn plan(services: &[Service], seed: u32) -> Plan<'_> {
    Plan { hash_seed: seed, services: services.iter().map(|s| ServicePlan::new(s, seed)).collect() }
}

fn state(e: &Endpoint) -> &'static str {
    match (e.ready, e.serving, e.terminating) {
        (true, _, _) => "ready",
        (false, true, true) => "serving, terminating",
        (false, _, true) => "terminating",
        (false, true, false) => "serving, not ready",
        (false, false, false) => "not ready",
    }
}

/// The human-readable plan.
pub fn render(plan: &Plan<'_>) -> String {
    let mut out = String::new();
    if plan.services.is_empty() {
        out.push_str("no services with externalIPs or nodePorts: nothing to forward\n");
    }
    for s in &plan.services {
        let _ = writeln!(out, "service {} ({} port {})", s.id, s.protocol, s.port);
        let frontends: Vec<String> = s.frontends.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "  frontends:  {}", frontends.join(", "));
        let scheduler = s.scheduler.map(|x| format!("{x:?}, ")).unwrap_or_default();
        let hash = match s.hash {
            HashInput::ClientIp => "client-IP hash",
            HashInput::FiveTuple => "5-tuple hash",
        };
        let _ = writeln!(out, "  scheduler:  {scheduler}{hash}");
        let affinity = match s.affinity_timeout_seconds {
            Some(t) => format!("ClientIP, {t}s"),
            None => "none".into(),
        };
        let _ = writeln!(out, "  affinity:   {affinity}");
        let ready = s.endpoints.iter().filter(|e| e.endpoint.takes_new_flows()).count();
        match s.table_size {
            Some(size) => {
                let _ = writeln!(out, "  maglev:     {size} slots over {ready} ready endpoint(s)");
            }
            None => {
                let _ = writeln!(out, "  NO ENDPOINTS: new connections to this service will be refused");
            }
        }
        for note in s.endpoint_notes {
            let _ = writeln!(out, "    ({note})");
        }
        for &EndpointPlan { endpoint: e, slots } in &s.endpoints {
            let target = e.target.as_deref().map(|t| format!(" {t}")).unwrap_or_default();
            let share = match s.table_size {
                Some(size) if slots > 0 => format!("{slots} slots ({:.1}%)", 100.0 * f64::from(slots) / f64::from(size)),
                _ => "no new flows".into(),
            };
            let _ = writeln!(out, "    {}:{:<6} {:<22} {share}{target}", e.address, e.port, state(e));
        }
    }
    out
}
