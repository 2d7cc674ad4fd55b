//! The desired state compiled into map entries: what `SERVICES`, `BACKENDS`,
//! `MAGLEV` and `REVNAT` must hold. Pure, so it is tested without a kernel.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use wsfwd_common::abi::{
    Backend, PROTO_TCP, PROTO_UDP, REVNAT_F_UNIQUE, RevNatEntry, RevNatKey, SVC_F_HASH_CLIENT, ServiceEntry,
    ServiceKey,
};

use crate::{
    maglev,
    model::{Frontend, HashInput, Protocol, Service},
};

#[derive(Debug, Default, PartialEq)]
pub struct Contents {
    pub services: Vec<(ServiceKey, ServiceEntry)>,
    /// Indexed by backend id.
    pub backends: Vec<Backend>,
    pub maglev: Vec<u32>,
    pub revnat: Vec<(RevNatKey, RevNatEntry)>,
    /// One line per service port, for the log.
    pub summary: Vec<String>,
}

fn proto(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    }
}

/// Compiles services into map entries. NodePort frontends are served on
/// `node_addrs`. Fails when two frontends resolve to the same address, port
/// and protocol (an externalIP equal to a node address, say).
pub fn compile(services: &[Service], node_addrs: &[Ipv4Addr], seed: u32) -> Result<Contents, String> {
    let mut c = Contents::default();
    let mut backend_ids: BTreeMap<(Ipv4Addr, u16), u32> = BTreeMap::new();
    // Endpoint (address, port, protocol) -> the frontends that reach it.
    let mut reached_from: BTreeMap<(Ipv4Addr, u16, u8), BTreeSet<(Ipv4Addr, u16)>> = BTreeMap::new();
    let mut owner: BTreeMap<ServiceKey, String> = BTreeMap::new();

    for (id, svc) in services.iter().enumerate() {
        let proto = proto(svc.protocol);
        let ready: Vec<maglev::Key> =
            svc.endpoints.iter().filter(|e| e.takes_new_flows()).map(|e| (e.address, e.port)).collect();
        let size = maglev::table_size(ready.len());
        let table = maglev::build(&ready, size, seed);
        let offset = c.maglev.len() as u32;
        let table_size = match &table {
            Some(t) => {
                for &slot in t {
                    let key = ready[slot as usize];
                    let next = backend_ids.len() as u32;
                    c.maglev.push(*backend_ids.entry(key).or_insert(next));
                }
                size
            }
            None => 0,
        };
        let flags = if svc.hash == HashInput::ClientIp { SVC_F_HASH_CLIENT } else { 0 };
        let entry = ServiceEntry { service_id: id as u32, flags, table_offset: offset, table_size };

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
        }
        // Every endpoint, ready or not: replies of flows already pinned to a
        // no-longer-ready endpoint must still be translated.
        for e in &svc.endpoints {
            reached_from.entry((e.address, e.port, proto)).or_default().extend(addrs.iter().copied());
        }
        let frontends: Vec<String> = addrs.iter().map(|(a, p)| format!("{a}:{p}")).collect();
        c.summary.push(format!(
            "{} {}: frontends [{}], {} of {} endpoints ready, maglev {}",
            svc.id(),
            svc.protocol,
            frontends.join(", "),
            ready.len(),
            svc.endpoints.len(),
            if table_size > 0 { format!("{table_size} slots") } else { "empty: new flows are dropped".into() },
        ));
    }

    c.backends = vec![Backend::default(); backend_ids.len()];
    for ((addr, port), id) in backend_ids {
        c.backends[id as usize] = Backend { addr: addr.octets(), port: port.to_be_bytes(), _pad: [0; 2] };
    }
    for ((addr, port, proto), frontends) in reached_from {
        let Some(&(f_addr, f_port)) = frontends.iter().next() else { continue };
        let flags = if frontends.len() == 1 { REVNAT_F_UNIQUE } else { 0 };
        c.revnat.push((
            RevNatKey { addr: addr.octets(), port: port.to_be_bytes(), proto, _pad: 0 },
            RevNatEntry { addr: f_addr.octets(), port: f_port.to_be_bytes(), _pad: [0; 2], flags },
        ));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    const SEED_DEMO: &str = include_str!("../../../fixtures/seed-demo.yaml");
    const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);

    fn seed_services() -> Vec<Service> {
        config::parse(SEED_DEMO).expect("seed demo config").services
    }

    #[test]
    fn seed_frontends_become_service_keys() {
        let c = compile(&seed_services(), &[NODE], 7).unwrap();
        let keys: Vec<_> = c.services.iter().map(|(k, _)| (Ipv4Addr::from(k.addr), u16::from_be_bytes(k.port), k.proto)).collect();
        assert_eq!(keys, vec![(NODE, 30100, PROTO_TCP), (Ipv4Addr::new(192, 168, 0, 150), 9080, PROTO_TCP)]);
        let (im, testim) = (c.services[0].1, c.services[1].1);
        assert_eq!(im.flags, 0, "im-service hashes the 5-tuple");
        assert_eq!(testim.flags, SVC_F_HASH_CLIENT);
        assert_eq!((im.table_offset, im.table_size), (0, 509));
        assert_eq!((testim.table_offset, testim.table_size), (509, 509));
        assert_eq!(c.maglev.len(), 1018);
        // Both services share the three pods: three backends, each with a third of each table.
        assert_eq!(c.backends.len(), 3);
        for id in 0..3 {
            let n = c.maglev[..509].iter().filter(|&&b| b == id).count();
            assert!((169..=170).contains(&n), "backend {id} has {n} slots");
        }
    }

    #[test]
    fn tables_match_the_userspace_maglev_table() {
        let services = seed_services();
        let c = compile(&services, &[NODE], 7).unwrap();
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
        let c = compile(&seed_services(), &[NODE], 7).unwrap();
        assert_eq!(c.revnat.len(), 3);
        assert!(c.revnat.iter().all(|(_, v)| v.flags == 0));
        // testim-service alone: each pod serves one frontend.
        let only: Vec<_> = seed_services().into_iter().filter(|s| s.name == "testim-service").collect();
        let c = compile(&only, &[NODE], 7).unwrap();
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
        let c = compile(&services, &[NODE], 7).unwrap();
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
        let err = compile(&services, &[NODE, Ipv4Addr::new(192, 168, 0, 150)], 7);
        assert!(err.is_ok(), "different ports do not clash");
        let mut clash = services.clone();
        clash[0].frontends = vec![Frontend::NodePort { port: 9080, protocol: Protocol::Tcp }];
        let err = compile(&clash, &[Ipv4Addr::new(192, 168, 0, 150)], 7).unwrap_err();
        assert!(err.contains("192.168.0.150:9080/TCP is a frontend of both"), "{err}");
    }
}
