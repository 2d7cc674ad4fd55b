//! How a service chooses the endpoint of a new flow: a Maglev table over the
//! endpoints that take new flows on this node, indexed by the flow hash the
//! datapath computes. The map compiler, `wsfwd check` and the end-to-end
//! tests' predictions all go through here, so they cannot disagree; the
//! golden vectors (`wsfwd/tests/golden.rs`) pin what it answers.
use std::net::Ipv4Addr;

use wsfwd_common::{hash_client, hash_flow};

use crate::{
    placement::{Node, serves},
    maglev,
    model::{HashInput, Protocol, Service},
};

/// A service's Maglev table on a node.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceTable {
    /// Indices into the service's endpoints of those taking new flows, in the
    /// order `table` refers to them.
    pub live: Vec<usize>,
    /// Their (address, port).
    pub keys: Vec<maglev::Key>,
    /// Slots, each an index into `keys`; `None` when no endpoint takes new flows.
    pub table: Option<Vec<u32>>,
}

impl ServiceTable {
    pub fn new(svc: &Service, node: &Node, seed: u32) -> Self {
        let live: Vec<usize> = (0..svc.endpoints.len()).filter(|&i| serves(svc, node, &svc.endpoints[i])).collect();
        let keys: Vec<maglev::Key> = live.iter().map(|&i| (svc.endpoints[i].address, svc.endpoints[i].port)).collect();
        let table = maglev::build(&keys, maglev::table_size(keys.len()), seed);
        Self { live, keys, table }
    }

    /// The table size, or 0 when the service takes no new flows.
    pub fn size(&self) -> u32 {
        self.table.as_ref().map_or(0, |t| t.len() as u32)
    }

    /// Slots held by each of the service's endpoints (0 for those not live).
    pub fn slots_per_endpoint(&self, endpoints: usize) -> Vec<u32> {
        let mut slots = vec![0; endpoints];
        if let Some(table) = &self.table {
            for (n, count) in maglev::slot_counts(table, self.keys.len()).into_iter().enumerate() {
                slots[self.live[n]] = count;
            }
        }
        slots
    }

    /// The endpoint a new flow whose hash is `hash` gets, as the datapath
    /// indexes the table (`hash % size`).
    pub fn pick(&self, hash: u32) -> Option<maglev::Key> {
        let table = self.table.as_ref()?;
        let slot = table[(hash % table.len() as u32) as usize];
        Some(self.keys[slot as usize])
    }
}

/// A new flow's first packet as it reaches the frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub client: Ipv4Addr,
    pub client_port: u16,
    pub frontend: Ipv4Addr,
    pub frontend_port: u16,
    pub protocol: Protocol,
}

/// The flow hash the datapath computes for `t` (wsfwd-common's hash, fed as
/// the eBPF programs feed it).
pub fn flow_hash(input: HashInput, t: &Tuple, seed: u32) -> u32 {
    match input {
        HashInput::ClientIp => hash_client(u32::from(t.client), seed),
        HashInput::FiveTuple => {
            hash_flow(u32::from(t.client), u32::from(t.frontend), t.client_port, t.frontend_port, t.protocol.number(), seed)
        }
    }
}

/// The endpoint the datapath gives a new flow `t` of `svc` on `node`.
pub fn choose(svc: &Service, node: &Node, seed: u32, t: &Tuple) -> Option<maglev::Key> {
    ServiceTable::new(svc, node, seed).pick(flow_hash(svc.hash, t, seed))
}
