//! The desired state compiled into map entries: what `SERVICES`, `BACKENDS`,
//! `MAGLEV`, `REVNAT` and `SNAT_IPS` must hold. Pure, so it is tested
//! without a kernel: where endpoints sit comes in as a [`Node`].
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use wsfwd_common::abi::{
    BACKEND_F_SNAT, BACKEND_F_TERMINATING, Backend, NO_TRAFFIC, ReadyKey, MAX_SNAT_IPS, REVNAT_F_UNIQUE, RevNatEntry, RevNatKey,
    SVC_F_HASH_CLIENT, ServiceEntry, ServiceKey,
};

use crate::{
    choose::ServiceTable,
    maglev,
    model::{Frontend, HashInput, Service, TrafficPolicy},
    placement::Node,
};

/// SNAT addresses one plan may use: half of `SNAT_IPS`, so that a plan with
/// new lists can be written while the live one's are still in use.
pub const SNAT_IPS_PER_PLAN: u32 = MAX_SNAT_IPS / 2;

/// Room each plan needs in the maps, whatever the endpoints' readiness or
/// placement: every endpoint serving (a larger Maglev table never shrinks a bound).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub backends: u32,
    pub maglev: u32,
    /// `READY` entries: endpoints of services with affinity.
    pub ready: u32,
    /// Frontends (`SERVICES` entries): a NodePort counts once per node address.
    pub frontends: u32,
}

impl Capacity {
    pub fn of(services: &[Service]) -> Self {
        // Each service's endpoints are its own `BACKENDS` entries.
        let endpoints: usize = services.iter().map(|s| s.endpoints.len()).sum();
        let maglev: usize = services.iter().map(|s| maglev::table_size(s.endpoints.len()) as usize).sum();
        let ready: usize = services.iter().filter(|s| s.affinity_timeout_seconds.is_some()).map(|s| s.endpoints.len()).sum();
        let frontends: usize = services.iter().map(|s| s.frontends.len()).sum();
        Capacity {
            backends: endpoints.max(1) as u32,
            maglev: maglev.max(1) as u32,
            ready: ready.max(1) as u32,
            frontends: frontends.max(1) as u32,
        }
    }

    /// The least a cluster's datapath is made with: endpoints come and go
    /// with its pods, and the plan maps keep their size while pinned.
    pub const CLUSTER: Capacity = Capacity { backends: 4096, maglev: 1 << 20, ready: 4096, frontends: 1024 };

    pub fn at_least(self, floor: Capacity) -> Self {
        Capacity {
            backends: self.backends.max(floor.backends),
            maglev: self.maglev.max(floor.maglev),
            ready: self.ready.max(floor.ready),
            frontends: self.frontends.max(floor.frontends),
        }
    }

    /// Room for reloads and re-placement to grow into: twice what the plan
    /// needs, and at least 256 endpoints and 65,536 Maglev slots (784 KiB
    /// for both halves). Fixed for as long as the maps stay pinned.
    pub fn with_headroom(self) -> Self {
        Capacity {
            backends: self.backends.saturating_mul(2).max(256),
            maglev: self.maglev.saturating_mul(2).max(65536),
            ready: self.ready.saturating_mul(2).max(1024),
            frontends: self.frontends,
        }
    }
}

/// Whose traffic a `TRAFFIC` slot counts: an endpoint of a service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner {
    pub service: String,
    pub addr: Ipv4Addr,
    pub port: u16,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Contents {
    pub services: Vec<(ServiceKey, ServiceEntry)>,
    /// Indexed by backend id. Their `traffic` slots are given by the layout.
    pub backends: Vec<Backend>,
    /// Whose traffic each backend counts, indexed like `backends`.
    pub owners: Vec<Owner>,
    pub maglev: Vec<u32>,
    pub revnat: Vec<(RevNatKey, RevNatEntry)>,
    /// Of `revnat` entries with `REVNAT_F_UNIQUE`: the endpoint's one service.
    pub revnat_owners: BTreeMap<RevNatKey, Owner>,
    pub snat_ips: Vec<Ipv4Addr>,
    /// The service port of each frontend (`namespace/name:port`).
    pub frontend_names: BTreeMap<ServiceKey, String>,
    /// Services with affinity: their endpoints that take new flows, with
    /// their backend ids.
    pub ready: Vec<(ReadyKey, u32)>,
    /// Lines for the log: one per service port, one per endpoint.
    pub summary: Vec<String>,
}

/// Service ids, stable for as long as a service exists: reloads and
/// restarts keep them, so `AFFINITY` and `READY` entries keep meaning the
/// same service. A new service gets a hash of its name (probing past ids in
/// use), never an id another live service has.
#[derive(Clone, Debug, Default)]
pub struct ServiceIds(BTreeMap<String, u32>);

impl ServiceIds {
    /// The ids a running datapath uses (frontends and their service names).
    pub fn from_live(c: &Contents) -> Self {
        let by_key: BTreeMap<ServiceKey, u32> = c.services.iter().map(|(k, v)| (*k, v.service_id)).collect();
        Self(c.frontend_names.iter().filter_map(|(k, name)| Some((name.clone(), *by_key.get(k)?))).collect())
    }

    /// Ids for `services`, in order; names no longer given are forgotten.
    fn assign(&mut self, services: &[Service]) -> Vec<u32> {
        let names: BTreeSet<String> = services.iter().map(Service::id).collect();
        self.0.retain(|name, _| names.contains(name));
        let mut used: BTreeSet<u32> = self.0.values().copied().collect();
        for name in &names {
            if !self.0.contains_key(name) {
                let mut id = fnv1a(name.as_bytes());
                while !used.insert(id) {
                    id = id.wrapping_add(1);
                }
                self.0.insert(name.clone(), id);
            }
        }
        services.iter().map(|s| self.0[&s.id()]).collect()
    }
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// The frontends (address, port) that reach an endpoint, and the index of
/// the last service that has it.
type Reached = (BTreeSet<(Ipv4Addr, u16)>, usize);

/// Compiles services into map entries, with ids of their own (`wsfwd check`,
/// tests). Fails when two frontends resolve to the same address, port and
/// protocol (an externalIP equal to a node address, say).
pub fn compile(services: &[Service], node: &Node, seed: u32) -> Result<Contents, String> {
    compile_with(services, node, seed, &mut ServiceIds::default())
}

/// `compile`, keeping the ids in `ids` (a running agent's).
pub fn compile_with(services: &[Service], node: &Node, seed: u32, ids: &mut ServiceIds) -> Result<Contents, String> {
    let service_ids = ids.assign(services);
    let node_addrs = &node.addrs;
    let mut c = Contents::default();
    // An endpoint in a table only as a terminating fallback is its own
    // backend, flagged so (`wsfwd services` shows it).
    // Keyed by service too: each service's endpoints count their own traffic.
    let mut backend_ids: BTreeMap<(usize, Ipv4Addr, u16, bool), u32> = BTreeMap::new();
    // Endpoint (address, port, protocol) -> the frontends that reach it, and
    // the last service that does.
    let mut reached_from: BTreeMap<(Ipv4Addr, u16, u8), Reached> = BTreeMap::new();
    let mut owner: BTreeMap<ServiceKey, String> = BTreeMap::new();

    for (index, (svc, &id)) in services.iter().zip(&service_ids).enumerate() {
        let proto = svc.protocol.number();
        let plan = ServiceTable::new(svc, node, seed);
        let offset = c.maglev.len() as u32;
        for &slot in plan.table.iter().flatten() {
            let (addr, port) = plan.keys[slot as usize];
            let terminating = !svc.endpoints[plan.live[slot as usize]].takes_new_flows();
            let next = backend_ids.len() as u32;
            c.maglev.push(*backend_ids.entry((index, addr, port, terminating)).or_insert(next));
        }
        let table_size = plan.size();
        let flags = if svc.hash == HashInput::ClientIp { SVC_F_HASH_CLIENT } else { 0 };
        let affinity_timeout_s = svc.affinity_timeout_seconds.unwrap_or(0);
        let entry = ServiceEntry { service_id: id, flags, table_offset: offset, table_size, affinity_timeout_s };
        if affinity_timeout_s != 0 {
            // Where each endpoint that takes new flows is in `BACKENDS`.
            let mut seen = BTreeSet::new();
            for &slot in plan.table.iter().flatten() {
                let (addr, port) = plan.keys[slot as usize];
                let terminating = !svc.endpoints[plan.live[slot as usize]].takes_new_flows();
                if seen.insert((addr, port)) {
                    let key = ReadyKey { service_id: id, addr: addr.octets(), port: port.to_be_bytes(), _pad: [0; 2] };
                    c.ready.push((key, backend_ids[&(index, addr, port, terminating)]));
                }
            }
        }

        let mut addrs = Vec::new();
        for f in &svc.frontends {
            match *f {
                Frontend::ExternalIp { address, port, .. } => addrs.push((address, port)),
                Frontend::NodePort { port, .. } => addrs.extend(node_addrs.iter().map(|&a| (a, port))),
            }
        }
        for &(addr, port) in &addrs {
            let key = ServiceKey { addr: addr.octets(), port: port.to_be_bytes(), proto, _pad: 0 };
            if let Some(other) = owner.insert(key, svc.id()) {
                return Err(format!(
                    "{addr}:{port}/{} is a frontend of both {other} and {} (a node address used as an externalIP?)",
                    svc.protocol,
                    svc.id()
                ));
            }
            c.services.push((key, entry));
            c.frontend_names.insert(key, svc.id());
        }
        // Every endpoint behind the node, ready or not: replies of flows
        // already pinned to a no-longer-ready endpoint must still be
        // translated. Full-NAT replies come back to a SNAT address instead.
        for e in svc.endpoints.iter().filter(|e| node.is_behind(e)) {
            let reached = reached_from.entry((e.address, e.port, proto)).or_default();
            reached.0.extend(addrs.iter().copied());
            reached.1 = index;
        }
        let frontends: Vec<String> = addrs.iter().map(|(a, p)| format!("{a}:{p}")).collect();
        c.summary.push(format!(
            "{} {}: frontends [{}], {} of {} endpoints ready, maglev {}",
            svc.id(),
            svc.protocol,
            frontends.join(", "),
            plan.keys.len(),
            svc.endpoints.len(),
            if table_size > 0 {
                format!("{table_size} slots")
            } else if svc.external_traffic_policy == TrafficPolicy::Local && !svc.endpoints.is_empty() {
                "empty (externalTrafficPolicy Local, no ready endpoint behind this node): new flows are refused".into()
            } else {
                "empty: new flows are refused".into()
            },
        ));
    }

    c.backends = vec![Backend::default(); backend_ids.len()];
    c.owners = vec![Owner { service: String::new(), addr: Ipv4Addr::UNSPECIFIED, port: 0 }; backend_ids.len()];
    let mut summarised = BTreeSet::new();
    for ((index, addr, port, terminating), id) in backend_ids {
        c.owners[id as usize] = Owner { service: services[index].id(), addr, port };
        let flags = if terminating { BACKEND_F_TERMINATING } else { 0 };
        let mut b = Backend { addr: addr.octets(), port: port.to_be_bytes(), flags, traffic: NO_TRAFFIC, ..Backend::default() };
        // One line per endpoint, however many services it serves.
        let new_line = summarised.insert((addr, port));
        match node.external.get(&addr) {
            None if new_line => c.summary.push(format!("endpoint {addr}:{port}: behind the node, sees the client address")),
            None => {}
            Some(route_src) => {
                let ips: &[Ipv4Addr] = if node.snat_ips.is_empty() { std::slice::from_ref(route_src) } else { &node.snat_ips };
                let first = match c.snat_ips.iter().position(|a| a == &ips[0]) {
                    Some(i) if c.snat_ips[i..].starts_with(ips) => i,
                    _ => {
                        c.snat_ips.extend_from_slice(ips);
                        c.snat_ips.len() - ips.len()
                    }
                };
                if c.snat_ips.len() > SNAT_IPS_PER_PLAN as usize {
                    return Err(format!("more than {SNAT_IPS_PER_PLAN} SNAT addresses"));
                }
                b.flags |= BACKEND_F_SNAT;
                b.snat_first = first as u8;
                b.snat_count = ips.len() as u8;
                let from: Vec<String> = ips.iter().map(ToString::to_string).collect();
                if new_line {
                    c.summary.push(format!("endpoint {addr}:{port}: not behind the node, full NAT from {}", from.join(", ")));
                }
            }
        }
        c.backends[id as usize] = b;
    }
    for ((addr, port, proto), (frontends, index)) in reached_from {
        let Some(&(f_addr, f_port)) = frontends.iter().next() else { continue };
        let key = RevNatKey { addr: addr.octets(), port: port.to_be_bytes(), proto, _pad: 0 };
        let flags = if frontends.len() == 1 {
            c.revnat_owners.insert(key, Owner { service: services[index].id(), addr, port });
            REVNAT_F_UNIQUE
        } else {
            0
        };
        let entry = RevNatEntry { addr: f_addr.octets(), port: f_port.to_be_bytes(), _pad: [0; 2], flags, traffic: NO_TRAFFIC };
        c.revnat.push((key, entry));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config, model::Protocol};
    use wsfwd_common::abi::PROTO_TCP;

    const SEED_DEMO: &str = include_str!("../../../fixtures/seed-demo.yaml");
    const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);

    fn node(addrs: &[Ipv4Addr]) -> Node {
        Node { addrs: addrs.to_vec(), ..Node::default() }
    }

    fn seed_services() -> Vec<Service> {
        config::parse(SEED_DEMO).expect("seed demo config").services
    }

    #[test]
    fn seed_frontends_become_service_keys() {
        let c = compile(&seed_services(), &node(&[NODE]), 7).unwrap();
        let keys: Vec<_> = c.services.iter().map(|(k, _)| (Ipv4Addr::from(k.addr), u16::from_be_bytes(k.port), k.proto)).collect();
        assert_eq!(keys, vec![(NODE, 30100, PROTO_TCP), (Ipv4Addr::new(192, 168, 0, 150), 9080, PROTO_TCP)]);
        let (im, testim) = (c.services[0].1, c.services[1].1);
        assert_eq!(im.flags, 0, "im-service hashes the 5-tuple");
        assert_eq!(testim.flags, SVC_F_HASH_CLIENT);
        assert_eq!((im.table_offset, im.table_size), (0, 509));
        assert_eq!((testim.table_offset, testim.table_size), (509, 509));
        assert_eq!(c.maglev.len(), 1018);
        // Both services share the three pods, each service with backends of
        // its own (their traffic is counted apart): a third of its table each.
        assert_eq!(c.backends.len(), 6);
        for (table, ids) in [(&c.maglev[..509], 0..3), (&c.maglev[509..], 3..6)] {
            for id in ids {
                let n = table.iter().filter(|&&b| b == id).count();
                assert!((169..=170).contains(&n), "backend {id} has {n} slots");
            }
        }
        let owners: Vec<_> = c.owners.iter().map(|o| (o.service.as_str(), o.addr, o.port)).collect();
        assert_eq!(owners[0].0, "default/im-service:9080");
        assert_eq!(owners[3].0, "default/testim-service:9080");
        assert_eq!(owners[0].1, owners[3].1, "the same pod, as an endpoint of each service");
    }

    #[test]
    fn tables_match_the_userspace_maglev_table() {
        let services = seed_services();
        let c = compile(&services, &node(&[NODE]), 7).unwrap();
        let svc = &services[1];
        let keys: Vec<_> = svc.endpoints.iter().map(|e| (e.address, e.port)).collect();
        let table = maglev::build(&keys, 509, 7).unwrap();
        for (slot, &i) in table.iter().enumerate() {
            let b = c.backends[c.maglev[509 + slot] as usize];
            assert_eq!((Ipv4Addr::from(b.addr), u16::from_be_bytes(b.port)), keys[i as usize]);
        }
    }

    #[test]
    fn revnat_is_unique_only_for_single_frontend_endpoints() {
        // In the seed both services reach the same pods: not unique.
        let c = compile(&seed_services(), &node(&[NODE]), 7).unwrap();
        assert_eq!(c.revnat.len(), 3);
        assert!(c.revnat.iter().all(|(_, v)| v.flags == 0));
        // testim-service alone: each pod serves one frontend.
        let only: Vec<_> = seed_services().into_iter().filter(|s| s.name == "testim-service").collect();
        let c = compile(&only, &node(&[NODE]), 7).unwrap();
        for (_, v) in &c.revnat {
            assert_eq!(v.flags, REVNAT_F_UNIQUE);
            assert_eq!((Ipv4Addr::from(v.addr), u16::from_be_bytes(v.port)), (Ipv4Addr::new(192, 168, 0, 150), 9080));
        }
    }

    #[test]
    fn not_ready_endpoints_get_no_slots_but_keep_revnat() {
        let text = SEED_DEMO.replacen(
            "- addresses: [\"10.244.2.10\"]\n  conditions: {ready: true",
            "- addresses: [\"10.244.2.10\"]\n  conditions: {ready: false",
            1,
        );
        let services = config::parse(&text).unwrap().services;
        let c = compile(&services, &node(&[NODE]), 7).unwrap();
        let testim = c.services[1].1;
        let used: BTreeSet<_> = c.maglev[testim.table_offset as usize..][..testim.table_size as usize]
            .iter()
            .map(|&id| Ipv4Addr::from(c.backends[id as usize].addr))
            .collect();
        assert!(!used.contains(&Ipv4Addr::new(10, 244, 2, 10)), "{used:?}");
        assert_eq!(used.len(), 2);
        assert!(c.revnat.iter().any(|(k, _)| Ipv4Addr::from(k.addr) == Ipv4Addr::new(10, 244, 2, 10)));
    }

    #[test]
    fn an_external_ip_on_the_node_clashes_with_a_node_port() {
        let services = seed_services();
        let err = compile(&services, &node(&[NODE, Ipv4Addr::new(192, 168, 0, 150)]), 7);
        assert!(err.is_ok(), "different ports do not clash");
        let mut clash = services.clone();
        clash[0].frontends = vec![Frontend::NodePort { port: 9080, protocol: Protocol::Tcp }];
        let err = compile(&clash, &node(&[Ipv4Addr::new(192, 168, 0, 150)]), 7).unwrap_err();
        assert!(err.contains("192.168.0.150:9080/TCP is a frontend of both"), "{err}");
    }

    const B1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
    const B2: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);

    fn testim(policy: &str) -> Vec<Service> {
        let text = SEED_DEMO.replace("  sessionAffinity: ClientIP", &format!("  sessionAffinity: ClientIP\n  externalTrafficPolicy: {policy}"));
        config::parse(&text).unwrap().services.into_iter().filter(|s| s.name == "testim-service").collect()
    }

    /// b2 is reached out of an external interface, from 10.0.1.1.
    fn node_with_external_b2(snat_ips: &[Ipv4Addr]) -> Node {
        Node { addrs: vec![NODE], external: [(B2, NODE)].into(), snat_ips: snat_ips.to_vec(), ..Node::default() }
    }

    fn backend(c: &Contents, addr: Ipv4Addr) -> Backend {
        *c.backends.iter().find(|b| Ipv4Addr::from(b.addr) == addr).expect("backend")
    }

    #[test]
    fn endpoints_not_behind_the_node_are_full_natted() {
        let c = compile(&testim("Cluster"), &node_with_external_b2(&[]), 7).unwrap();
        assert_eq!(c.backends.len(), 3, "Cluster uses every endpoint");
        assert_eq!(backend(&c, B1).flags & BACKEND_F_SNAT, 0);
        let b2 = backend(&c, B2);
        assert_eq!(b2.flags & BACKEND_F_SNAT, BACKEND_F_SNAT);
        assert_eq!(c.snat_ips, vec![NODE]);
        assert_eq!((b2.snat_first, b2.snat_count), (0, 1));
        // Its replies come back to a SNAT address, never through REVNAT.
        assert!(!c.revnat.iter().any(|(k, _)| Ipv4Addr::from(k.addr) == B2));
        assert!(c.summary.iter().any(|l| l == "endpoint 10.244.2.10:9080: not behind the node, full NAT from 10.0.1.1"), "{:?}", c.summary);
        assert!(c.summary.iter().any(|l| l == "endpoint 10.244.1.10:9080: behind the node, sees the client address"));
    }

    #[test]
    fn snat_ips_override_the_route_source() {
        let ips = [Ipv4Addr::new(10, 0, 1, 100), Ipv4Addr::new(10, 0, 1, 101)];
        let c = compile(&testim("Cluster"), &node_with_external_b2(&ips), 7).unwrap();
        assert_eq!(c.snat_ips, ips.to_vec());
        let b2 = backend(&c, B2);
        assert_eq!((b2.snat_first, b2.snat_count), (0, 2));
    }

    #[test]
    fn local_policy_uses_only_endpoints_behind_the_node() {
        let c = compile(&testim("Local"), &node_with_external_b2(&[]), 7).unwrap();
        let entry = c.services[0].1;
        let used: BTreeSet<_> = c.maglev[..entry.table_size as usize].iter().map(|&id| Ipv4Addr::from(c.backends[id as usize].addr)).collect();
        assert!(!used.contains(&B2), "{used:?}");
        assert_eq!(used.len(), 2);
        // Nothing behind the node: the frontend is kept, with an empty table (refused).
        let all_external = Node { addrs: vec![NODE], external: [(B1, NODE), (B2, NODE), (Ipv4Addr::new(10, 244, 3, 10), NODE)].into(), ..Node::default() };
        let c = compile(&testim("Local"), &all_external, 7).unwrap();
        assert_eq!(c.services[0].1.table_size, 0);
        assert!(c.summary[0].contains("externalTrafficPolicy Local, no ready endpoint behind this node"), "{:?}", c.summary);
    }

    #[test]
    fn serving_terminating_endpoints_take_new_flows_only_when_none_is_ready() {
        let set = |conds: [&str; 3]| {
            let mut text = SEED_DEMO.to_owned();
            for (addr, c) in ["10.244.1.10", "10.244.2.10", "10.244.3.10"].iter().zip(conds) {
                let from = format!("- addresses: [\"{addr}\"]\n  conditions: {{ready: true, serving: true, terminating: false}}");
                text = text.replacen(&from, &format!("- addresses: [\"{addr}\"]\n  conditions: {c}"), 1);
            }
            let services = config::parse(&text).unwrap().services;
            let c = compile(&services, &node(&[NODE]), 7).unwrap();
            let testim = c.services[1].1;
            let used: Vec<Backend> =
                c.maglev[testim.table_offset as usize..][..testim.table_size as usize].iter().map(|&id| c.backends[id as usize]).collect();
            // `wsfwd services` tells a fallback from a ready endpoint by this flag.
            let any_ready = conds.iter().any(|c| c.starts_with("{ready: true"));
            assert!(used.iter().all(|b| (b.flags & BACKEND_F_TERMINATING != 0) != any_ready), "{conds:?}");
            used.iter().map(|b| Ipv4Addr::from(b.addr)).collect::<BTreeSet<_>>()
        };
        let draining = "{ready: false, serving: true, terminating: true}";
        let gone = "{ready: false, serving: false, terminating: true}";
        // One ready endpoint: only it.
        assert_eq!(set(["{ready: true}", draining, gone]), [B1].into());
        // None ready: the serving, terminating ones.
        assert_eq!(set([draining, draining, gone]), [B1, B2].into());
        // None serving either: none.
        assert!(set([gone, gone, gone]).is_empty());
    }
}
