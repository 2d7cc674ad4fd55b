//! `wsfwd check`: the plan the datapath would be given, for a person or as JSON.
use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    choose::ServiceTable,
    placement::Node,
    model::{Endpoint, Frontend, HashInput, Protocol, Service, TrafficPolicy},
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
    pub external_traffic_policy: TrafficPolicy,
    #[serde(skip)]
    modes_known: bool,
}

#[derive(Serialize)]
pub struct EndpointPlan<'a> {
    #[serde(flatten)]
    pub endpoint: &'a Endpoint,
    /// Maglev slots held: the endpoint's share of new flows (0 unless serving).
    pub slots: u32,
    /// How it is reached, when the routes were evaluated (`--iface`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<EndpointMode>,
}

#[derive(Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum EndpointMode {
    /// Routed through a non-external interface: DNAT only, sees the client.
    BehindNode,
    /// Reached out of an external interface: DNAT and SNAT.
    FullNat,
}

impl<'a> ServicePlan<'a> {
    pub fn new(s: &'a Service, node: Option<&Node>, seed: u32) -> Self {
        let unknown = Node::default();
        let n = node.unwrap_or(&unknown);
        let table = ServiceTable::new(s, n, seed);
        let slots = table.slots_per_endpoint(s.endpoints.len());
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
            table_size: table.table.is_some().then(|| table.size()),
            endpoints: s
                .endpoints
                .iter()
                .zip(slots)
                .map(|(endpoint, slots)| EndpointPlan {
                    endpoint,
                    slots,
                    mode: node.map(|n| match n.external.get(&endpoint.address) {
                        None => EndpointMode::BehindNode,
                        Some(_) => EndpointMode::FullNat,
                    }),
                })
                .collect(),
            external_traffic_policy: s.external_traffic_policy,
            modes_known: node.is_some(),
            endpoint_notes: &s.endpoint_notes,
        }
    }
}

/// The plan; `node` when routes were evaluated (`wsfwd check --iface`).
pub fn plan<'a>(services: &'a [Service], node: Option<&Node>, seed: u32) -> Plan<'a> {
    Plan { hash_seed: seed, services: services.iter().map(|s| ServicePlan::new(s, node, seed)).collect() }
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
        let policy = match (s.external_traffic_policy, s.modes_known) {
            (TrafficPolicy::Cluster, _) => "Cluster (endpoints not behind the node are full-NATed)",
            (TrafficPolicy::Local, true) => "Local (only endpoints behind this node)",
            (TrafficPolicy::Local, false) => "Local (only endpoints behind the node; --iface shows which)",
        };
        let _ = writeln!(out, "  traffic:    {policy}");
        let ready = s.endpoints.iter().filter(|e| e.endpoint.takes_new_flows()).count();
        let serving = s.endpoints.iter().filter(|e| e.slots > 0).count();
        match s.table_size {
            Some(size) => {
                let _ = writeln!(out, "  maglev:     {size} slots over {serving} ready endpoint(s)");
            }
            None if s.external_traffic_policy == TrafficPolicy::Local && s.modes_known && ready > 0 => {
                let _ = writeln!(out, "  NOT SERVED on this node: externalTrafficPolicy Local and no ready endpoint behind it");
            }
            None => {
                let _ = writeln!(out, "  NO ENDPOINTS: new connections to this service will be refused");
            }
        }
        for note in s.endpoint_notes {
            let _ = writeln!(out, "    ({note})");
        }
        for &EndpointPlan { endpoint: e, slots, mode } in &s.endpoints {
            let target = e.target.as_deref().map(|t| format!(" {t}")).unwrap_or_default();
            let target = match mode {
                Some(EndpointMode::BehindNode) => format!("{target} [behind the node]"),
                Some(EndpointMode::FullNat) => format!("{target} [full NAT]"),
                None => target,
            };
            let share = match s.table_size {
                Some(size) if slots > 0 => format!("{slots} slots ({:.1}%)", 100.0 * f64::from(slots) / f64::from(size)),
                _ => "no new flows".into(),
            };
            let _ = writeln!(out, "    {}:{:<6} {:<22} {share}{target}", e.address, e.port, state(e));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::config;

    const SEED_DEMO: &str = include_str!("../../fixtures/seed-demo.yaml");

    fn local_testim() -> Vec<Service> {
        let text = SEED_DEMO.replace("  sessionAffinity: ClientIP", "  sessionAffinity: ClientIP\n  externalTrafficPolicy: Local");
        config::parse(&text).unwrap().services.into_iter().filter(|s| s.name == "testim-service").collect()
    }

    fn node_with_external(addrs: &[[u8; 4]]) -> Node {
        let gw = Ipv4Addr::new(10, 0, 1, 1);
        Node { addrs: vec![gw], external: addrs.iter().map(|&a| (Ipv4Addr::from(a), gw)).collect(), ..Node::default() }
    }

    #[test]
    fn local_without_endpoints_behind_the_node_is_not_served() {
        let services = local_testim();
        let node = node_with_external(&[[10, 244, 1, 10], [10, 244, 2, 10], [10, 244, 3, 10]]);
        let text = render(&plan(&services, Some(&node), 7));
        assert!(text.contains("NOT SERVED on this node: externalTrafficPolicy Local and no ready endpoint behind it"), "{text}");
        assert!(text.contains("[full NAT]"), "{text}");
    }

    #[test]
    fn modes_and_local_filtering_show_with_routes() {
        let services = local_testim();
        let node = node_with_external(&[[10, 244, 2, 10]]);
        let p = plan(&services, Some(&node), 7);
        let text = render(&p);
        assert!(text.contains("maglev:     251 slots over 2 ready endpoint(s)"), "{text}");
        assert!(text.contains("[behind the node]"), "{text}");
        let b2 = p.services[0].endpoints.iter().find(|e| e.endpoint.address == Ipv4Addr::new(10, 244, 2, 10)).unwrap();
        assert_eq!(b2.slots, 0, "Local gives the full-NAT endpoint no slots");
        // Without routes, check cannot tell and says how to find out.
        let text = render(&plan(&services, None, 7));
        assert!(text.contains("--iface shows which"), "{text}");
    }
}
