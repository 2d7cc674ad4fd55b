//! Kubernetes objects to model services, as kube-proxy reads them.
use std::{
    collections::{BTreeMap, HashMap, btree_map::Entry},
    net::{Ipv4Addr, Ipv6Addr},
};

use k8s_openapi::{
    api::{core::v1 as core, discovery::v1 as discovery},
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use super::{
    ConfigError, Notes,
    documents::{Document, Object},
};
use crate::model::{Endpoint, Frontend, HashInput, Protocol, Service, TrafficPolicy};

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const SCHEDULER_ANNOTATION: &str = "kube-router.io/service.scheduler";
/// Kubernetes' defaults and limits for `sessionAffinityConfig.clientIP.timeoutSeconds`.
const DEFAULT_AFFINITY_TIMEOUT: i32 = 10_800;
const MAX_AFFINITY_TIMEOUT: i32 = 86_400;

/// Where a problem is reported: a document and the object in it.
#[derive(Clone, Copy)]
struct At<'a> {
    number: usize,
    label: &'a str,
}

/// `document 2, Service default/web`, or `Service default/web` for an
/// object that did not come from a file (number 0).
impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.number == 0 { f.write_str(self.label) } else { write!(f, "document {}, {}", self.number, self.label) }
    }
}

impl At<'_> {
    fn err(self, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.number, Some(self.label), path, message)
    }
}

type Key = (String, String);

fn key(meta: &ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Ports and addresses of one EndpointSlice, or of one subset of an Endpoints.
struct Group<'a> {
    label: String,
    /// Empty when the object lists no ports.
    ports: Vec<GroupPort>,
    endpoints: Vec<Endpoint>,
    at: At<'a>,
}

struct GroupPort {
    name: String,
    protocol: String,
    port: Option<u16>,
}

pub fn translate(docs: &[Document], notes: &mut Notes, errors: &mut Vec<ConfigError>) -> Vec<Service> {
    let mut services: BTreeMap<Key, (At<'_>, &core::Service)> = BTreeMap::new();
    let mut slices: BTreeMap<Key, Vec<Group<'_>>> = BTreeMap::new();
    let mut endpoints: BTreeMap<Key, Vec<Group<'_>>> = BTreeMap::new();

    for doc in docs {
        let at = At { number: doc.number, label: &doc.label };
        match &doc.object {
            Object::Service(svc) => {
                if svc.metadata.name.is_none() {
                    errors.push(at.err("metadata.name", "missing"));
                    continue;
                }
                match services.entry(key(&svc.metadata)) {
                    Entry::Vacant(v) => {
                        v.insert((at, svc));
                    }
                    Entry::Occupied(o) => errors.push(at.err(
                        "metadata.name",
                        format!("{} is defined twice (also in document {})", doc.label, o.get().0.number),
                    )),
                }
            }
            Object::EndpointSlice(slice) => {
                if let Some(group) = slice_group(at, slice, errors) {
                    match slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) {
                        Some(svc) => {
                            let ns = key(&slice.metadata).0;
                            slices.entry((ns, svc.clone())).or_default().push(group);
                        }
                        None => notes.warn(format!(
                            "{at}: no {SERVICE_NAME_LABEL} label, so it belongs to no Service; ignored"
                        )),
                    }
                }
            }
            Object::Endpoints(eps) => {
                endpoints.insert(key(&eps.metadata), endpoints_groups(at, eps, errors));
            }
        }
    }

    for (k, groups) in slices.iter().chain(endpoints.iter()) {
        if !services.contains_key(k) {
            for g in groups {
                notes.warn(format!(
                    "{}: no Service {}/{} in the file; ignored",
                    At { label: &g.label, ..g.at }, k.0, k.1
                ));
            }
        }
    }

    let mut out = Vec::new();
    for (k, (at, svc)) in &services {
        // kube-proxy reads EndpointSlices only; Endpoints serve files that have no slices.
        let groups = match (slices.get(k), endpoints.get(k)) {
            (Some(s), Some(e)) => {
                if let Some(g) = e.first() {
                    notes.info(format!(
                        "document {}, Endpoints {}/{}: ignored, EndpointSlices for the Service are in the file",
                        g.at.number, k.0, k.1
                    ));
                }
                s.as_slice()
            }
            (Some(s), None) => s.as_slice(),
            (None, Some(e)) => e.as_slice(),
            (None, None) => &[],
        };
        out.extend(service_ports(*at, &k.0, &k.1, svc, groups, notes, errors));
    }
    check_frontend_conflicts(&services, &out, errors);
    out.sort_by_key(Service::id);
    out
}

fn ipv4(s: &str) -> Result<Ipv4Addr, String> {
    s.parse::<Ipv4Addr>().map_err(|_| {
        if s.parse::<Ipv6Addr>().is_ok() {
            format!("{s:?}: IPv6 is not supported yet")
        } else {
            format!("{s:?} is not an IPv4 address")
        }
    })
}

fn port(n: i32) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("{n} is not a valid port (1-65535)"))
}

fn slice_group<'a>(at: At<'a>, slice: &discovery::EndpointSlice, errors: &mut Vec<ConfigError>) -> Option<Group<'a>> {
    let before = errors.len();
    match slice.address_type.as_str() {
        "IPv4" => {}
        "IPv6" => errors.push(at.err("addressType", "IPv6 is not supported yet")),
        other => errors.push(at.err("addressType", format!("{other:?} is not supported (only IPv4)"))),
    }
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let path = format!("ports[{i}]");
        let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        if !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP") {
            errors.push(at.err(format!("{path}.protocol"), format!("{protocol:?} is not a protocol (TCP, UDP, SCTP)")));
        }
        let number = match p.port.map(port).transpose() {
            Ok(n) => n,
            Err(e) => {
                errors.push(at.err(format!("{path}.port"), e));
                None
            }
        };
        ports.push(GroupPort { name: p.name.clone().unwrap_or_default(), protocol, port: number });
    }
    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        if ep.addresses.is_empty() {
            errors.push(at.err(format!("endpoints[{i}].addresses"), "at least one address is required"));
        }
        let mut first = None;
        for (j, a) in ep.addresses.iter().enumerate() {
            match ipv4(a) {
                Ok(ip) => first = first.or(Some(ip)),
                Err(e) => errors.push(at.err(format!("endpoints[{i}].addresses[{j}]"), e)),
            }
        }
        // Like kube-proxy, only the first address of an endpoint is used.
        let Some(address) = first else { continue };
        let c = ep.conditions.as_ref();
        endpoints.push(Endpoint {
            address,
            port: 0,
            ready: c.and_then(|c| c.ready).unwrap_or(true),
            serving: c.and_then(|c| c.serving).unwrap_or(true),
            terminating: c.and_then(|c| c.terminating).unwrap_or(false),
            node_name: ep.node_name.clone(),
            target: ep.target_ref.as_ref().and_then(|t| t.name.clone()),
        });
    }
    (errors.len() == before).then(|| Group { label: at.label.to_owned(), ports, endpoints, at })
}

fn endpoints_groups<'a>(at: At<'a>, eps: &core::Endpoints, errors: &mut Vec<ConfigError>) -> Vec<Group<'a>> {
    let mut groups = Vec::new();
    for (i, subset) in eps.subsets.iter().flatten().enumerate() {
        let mut ports = Vec::new();
        for (k, p) in subset.ports.iter().flatten().enumerate() {
            let path = format!("subsets[{i}].ports[{k}]");
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            if !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP") {
                errors.push(at.err(format!("{path}.protocol"), format!("{protocol:?} is not a protocol (TCP, UDP, SCTP)")));
            }
            match port(p.port) {
                Ok(n) => ports.push(GroupPort { name: p.name.clone().unwrap_or_default(), protocol, port: Some(n) }),
                Err(e) => errors.push(at.err(format!("{path}.port"), e)),
            }
        }
        let mut endpoints = Vec::new();
        let lists = [("addresses", &subset.addresses, true), ("notReadyAddresses", &subset.not_ready_addresses, false)];
        for (field, list, ready) in lists {
            for (j, a) in list.iter().flatten().enumerate() {
                match ipv4(&a.ip) {
                    Ok(address) => endpoints.push(Endpoint {
                        address,
                        port: 0,
                        ready,
                        serving: ready,
                        terminating: false,
                        node_name: a.node_name.clone(),
                        target: a.target_ref.as_ref().and_then(|t| t.name.clone()),
                    }),
                    Err(e) => errors.push(at.err(format!("subsets[{i}].{field}[{j}].ip"), e)),
                }
            }
        }
        groups.push(Group { label: format!("{} subsets[{i}]", at.label), ports, endpoints, at });
    }
    groups
}

/// One model service per Service port.
fn service_ports(
    at: At<'_>,
    namespace: &str,
    name: &str,
    svc: &core::Service,
    groups: &[Group<'_>],
    notes: &mut Notes,
    errors: &mut Vec<ConfigError>,
) -> Vec<Service> {
    let Some(spec) = svc.spec.as_ref() else {
        errors.push(at.err("spec", "missing"));
        return Vec::new();
    };
    let serves_node_ports = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => false,
        "NodePort" | "LoadBalancer" => true,
        "ExternalName" => {
            notes.info(format!("{at}: type ExternalName has no endpoints to forward to; skipped"));
            return Vec::new();
        }
        other => {
            errors.push(at.err("spec.type", format!("{other:?} is not a Service type (ClusterIP, NodePort, LoadBalancer, ExternalName)")));
            return Vec::new();
        }
    };

    let mut external_ips = Vec::new();
    for (i, s) in spec.external_ips.iter().flatten().enumerate() {
        match ipv4(s) {
            Ok(ip) => external_ips.push(ip),
            Err(e) => errors.push(at.err(format!("spec.externalIPs[{i}]"), e)),
        }
    }

    let affinity = match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" => None,
        "ClientIP" => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT);
            if (1..=MAX_AFFINITY_TIMEOUT).contains(&timeout) {
                Some(timeout as u32)
            } else {
                errors.push(at.err(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("{timeout} is out of range (1-{MAX_AFFINITY_TIMEOUT})"),
                ));
                None
            }
        }
        other => {
            errors.push(at.err("spec.sessionAffinity", format!("{other:?} is not valid (None, ClientIP)")));
            None
        }
    };

    let policy = match spec.external_traffic_policy.as_deref().unwrap_or("Cluster") {
        "Cluster" => TrafficPolicy::Cluster,
        "Local" => TrafficPolicy::Local,
        other => {
            errors.push(at.err("spec.externalTrafficPolicy", format!("{other:?} is not valid (Cluster, Local)")));
            TrafficPolicy::Cluster
        }
    };

    let scheduler = svc.metadata.annotations.as_ref().and_then(|a| a.get(SCHEDULER_ANNOTATION)).cloned();
    let hash = match scheduler.as_deref() {
        Some("sh") => HashInput::ClientIp,
        _ if affinity.is_some() => HashInput::ClientIp,
        _ => HashInput::FiveTuple,
    };
    if let Some(s) = scheduler.as_deref().filter(|s| *s != "sh") {
        let used = if hash == HashInput::ClientIp { "the client-IP hash (ClientIP affinity)" } else { "the 5-tuple hash" };
        notes.info(format!("{at}: scheduler {s:?} is not implemented; using {used}"));
    }

    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() {
        errors.push(at.err("spec.ports", "at least one port is required"));
    }
    let mut seen_names: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, sp) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let before = errors.len();
        let port_name = sp.name.as_deref().unwrap_or("");
        if ports.len() > 1 && port_name.is_empty() {
            errors.push(at.err(format!("{path}.name"), "required when the Service has more than one port"));
        } else if let Some(first) = seen_names.insert(port_name, i) {
            errors.push(at.err(format!("{path}.name"), format!("{port_name:?} is already used by spec.ports[{first}]")));
        }
        let protocol = match sp.protocol.as_deref().unwrap_or("TCP") {
            p @ ("TCP" | "UDP") => Protocol::parse(p),
            "SCTP" => {
                errors.push(at.err(format!("{path}.protocol"), "SCTP is not supported (TCP and UDP are)"));
                None
            }
            other => {
                errors.push(at.err(format!("{path}.protocol"), format!("{other:?} is not a protocol (TCP, UDP)")));
                None
            }
        };
        let number = port(sp.port).map_err(|e| errors.push(at.err(format!("{path}.port"), e))).ok();
        let node_port = match (sp.node_port, serves_node_ports) {
            (Some(n), true) => port(n).map_err(|e| errors.push(at.err(format!("{path}.nodePort"), e))).ok(),
            (None, true) if spec.type_.as_deref() == Some("NodePort") => {
                errors.push(at.err(
                    format!("{path}.nodePort"),
                    "missing; type NodePort needs it set (wsfwd reads the file as written and allocates none)",
                ));
                None
            }
            (Some(_), false) => {
                notes.warn(format!("{at}, {path}.nodePort: ignored, the Service type is ClusterIP"));
                None
            }
            (None, _) => None,
        };
        let target = match &sp.target_port {
            None => number.map(TargetPort::Number),
            Some(IntOrString::Int(n)) => {
                port(*n).map(TargetPort::Number).map_err(|e| errors.push(at.err(format!("{path}.targetPort"), e))).ok()
            }
            Some(IntOrString::String(s)) => Some(TargetPort::Name(s)),
        };
        let (Some(protocol), Some(number), Some(target)) = (protocol, number, target) else { continue };
        if errors.len() != before {
            continue;
        }

        let mut frontends: Vec<Frontend> = external_ips
            .iter()
            .map(|&address| Frontend::ExternalIp { address, port: number, protocol })
            .collect();
        frontends.extend(node_port.map(|port| Frontend::NodePort { port, protocol }));
        if frontends.is_empty() {
            notes.info(format!("{at}, {path}: no externalIPs or nodePort, nothing to forward (ClusterIP is left to kube-proxy)"));
            continue;
        }

        let (endpoints, endpoint_notes) = resolve_endpoints(at, &path, port_name, protocol, target, groups, errors);
        out.push(Service {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            port_name: port_name.to_owned(),
            protocol,
            port: number,
            frontends,
            endpoints,
            hash,
            scheduler: scheduler.clone(),
            affinity_timeout_seconds: affinity,
            external_traffic_policy: policy,
            endpoint_notes,
        });
    }
    out
}

#[derive(Clone, Copy)]
enum TargetPort<'a> {
    Number(u16),
    Name(&'a str),
}

/// Endpoints of one Service port: the endpoint port whose name (and protocol)
/// equals the Service port's, as kube-proxy matches them; Kubernetes has
/// already resolved `targetPort` into it. Only endpoint objects that list no
/// ports at all fall back to a numeric `targetPort`.
fn resolve_endpoints(
    at: At<'_>,
    path: &str,
    port_name: &str,
    protocol: Protocol,
    target: TargetPort<'_>,
    groups: &[Group<'_>],
    errors: &mut Vec<ConfigError>,
) -> (Vec<Endpoint>, Vec<String>) {
    let mut notes = Vec::new();
    let mut by_addr: BTreeMap<(Ipv4Addr, u16), Endpoint> = BTreeMap::new();
    if groups.is_empty() {
        notes.push("no EndpointSlice or Endpoints for this Service in the file".to_owned());
    }
    for g in groups {
        let number = if g.ports.is_empty() {
            match target {
                TargetPort::Number(n) => n,
                TargetPort::Name(s) => {
                    errors.push(at.err(
                        format!("{path}.targetPort"),
                        format!("named port {s:?} cannot be resolved: {} lists no ports", g.label),
                    ));
                    continue;
                }
            }
        } else {
            let found = g.ports.iter().find(|p| p.name == port_name && p.protocol == protocol.to_string());
            match found.and_then(|p| p.port) {
                Some(n) => n,
                None => {
                    notes.push(format!("{} has no port named {port_name:?} ({protocol})", g.label));
                    continue;
                }
            }
        };
        for ep in &g.endpoints {
            let ep = Endpoint { port: number, ..ep.clone() };
            // The same endpoint in two slices (e.g. mid-update): a ready copy wins.
            match by_addr.entry((ep.address, number)) {
                Entry::Vacant(v) => {
                    v.insert(ep);
                }
                Entry::Occupied(mut o) if ep.ready && !o.get().ready => {
                    o.insert(ep);
                }
                Entry::Occupied(_) => {}
            }
        }
    }
    (by_addr.into_values().collect(), notes)
}

/// Two Service ports claiming one frontend would race for the same packets.
/// Reported at the later document, naming the first claimant.
fn check_frontend_conflicts(
    services: &BTreeMap<Key, (At<'_>, &core::Service)>,
    out: &[Service],
    errors: &mut Vec<ConfigError>,
) {
    let at_of = |s: &Service| services.get(&(s.namespace.clone(), s.name.clone())).map(|(at, _)| *at);
    let mut in_file_order: Vec<(At<'_>, &Service)> = out.iter().filter_map(|s| Some((at_of(s)?, s))).collect();
    in_file_order.sort_by_key(|(at, _)| at.number);
    let mut owners: HashMap<Frontend, (At<'_>, &Service)> = HashMap::new();
    for (at, svc) in in_file_order {
        for f in &svc.frontends {
            if let Some((first_at, first)) = owners.get(f) {
                let field = match f {
                    Frontend::ExternalIp { .. } => "spec.externalIPs",
                    Frontend::NodePort { .. } => "spec.ports.nodePort",
                };
                errors.push(at.err(
                    field,
                    format!(
                        "frontend {f} is claimed by both Service {}/{}{} and Service {}/{}",
                        first.namespace,
                        first.name,
                        if first_at.number == 0 { String::new() } else { format!(" (document {})", first_at.number) },
                        svc.namespace,
                        svc.name
                    ),
                ));
            } else {
                owners.insert(*f, (at, svc));
            }
        }
    }
}
