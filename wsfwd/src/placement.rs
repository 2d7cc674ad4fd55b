//! Where each endpoint sits: behind the node (its route leaves through an
//! interface that is not external) or out on the external side, where it
//! needs full NAT so that its replies come back through the node.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use crate::{
    model::{Endpoint, Service, TrafficPolicy},
    netif::{self, Iface},
    route,
};

/// The node as the datapath needs to know it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// Addresses NodePorts are served on (those of the external interfaces).
    pub addrs: Vec<Ipv4Addr>,
    /// Endpoints that are *not* behind the node (their route leaves through
    /// an external interface), with the source address of that route.
    /// Endpoints not listed are behind the node.
    pub external: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// `--snat-ip`: when given, the SNAT addresses of every full-NAT endpoint.
    pub snat_ips: Vec<Ipv4Addr>,
    /// The interfaces the routes to endpoints behind the node leave through
    /// (by index; not loopback): where their replies enter the node.
    pub endpoint_links: BTreeSet<u32>,
}

impl Node {
    pub fn is_behind(&self, e: &Endpoint) -> bool {
        !self.external.contains_key(&e.address)
    }
}

/// Whether `e` takes new flows of `svc` on `node`, as kube-proxy decides:
/// of the endpoints the traffic policy allows (with `Local`, those behind
/// the node), the ready ones; when none is ready, those still serving while
/// terminating, so a service whose last pods are being replaced finishes
/// their work instead of refusing connections.
pub fn serves(svc: &Service, node: &Node, e: &Endpoint) -> bool {
    let allowed = |e: &Endpoint| svc.external_traffic_policy == TrafficPolicy::Cluster || node.is_behind(e);
    if !allowed(e) {
        return false;
    }
    e.takes_new_flows() || (e.serving && e.terminating && !svc.endpoints.iter().any(|o| o.takes_new_flows() && allowed(o)))
}


/// Builds the node's view: its external addresses, and which endpoints are
/// not behind it, by asking the routing table about each endpoint.
///
/// With `node_name` (DaemonSet mode), an endpoint that Kubernetes places on
/// another node is not behind this one whatever the routes say (a pod
/// network's overlay interface is not external, yet the pod's replies would
/// leave its own node): it gets full NAT, from the route's source address.
pub fn resolve(services: &[Service], ifaces: &[Iface], snat_ips: &[Ipv4Addr], node_name: Option<&str>) -> Result<Node, String> {
    let addrs: Vec<Ipv4Addr> = ifaces.iter().flat_map(|i| i.addrs.iter().copied()).collect();
    for ip in snat_ips {
        if !addrs.contains(ip) {
            return Err(format!("--snat-ip {ip} is not an address of the --iface interfaces"));
        }
    }
    let endpoints: BTreeSet<Ipv4Addr> = services.iter().flat_map(|s| s.endpoints.iter().map(|e| e.address)).collect();
    let elsewhere: BTreeSet<Ipv4Addr> = services
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|e| node_name.is_some_and(|me| e.node_name.as_deref().is_some_and(|n| n != me)))
        .map(|e| e.address)
        .collect();
    let mut node = Node { addrs, snat_ips: snat_ips.to_vec(), ..Node::default() };
    for addr in endpoints {
        let route = route::get(addr).map_err(|e| format!("looking up the route to endpoint {addr}: {e}"))?;
        let Some(route) = route else {
            log::warn!("endpoint {addr}: no route; its flows will be dropped (counter drop-no-route)");
            continue;
        };
        if elsewhere.contains(&addr) {
            let src = route.prefsrc.or_else(|| node.addrs.first().copied()).ok_or_else(|| {
                format!("endpoint {addr} is on another node and the --iface interfaces have no IPv4 address to SNAT from")
            })?;
            node.external.insert(addr, src);
            // Its replies come back through that interface: the endpoint-side
            // program translates them there (external ingress does elsewhere).
            if !ifaces.iter().any(|i| i.index == route.oif) && !netif::is_loopback(route.oif) {
                node.endpoint_links.insert(route.oif);
            }
        } else if let Some(iface) = ifaces.iter().find(|i| i.index == route.oif) {
            let src = route.prefsrc.or_else(|| iface.addrs.first().copied()).ok_or_else(|| {
                format!("endpoint {addr} is reached through {} which has no IPv4 address to SNAT from", iface.name)
            })?;
            node.external.insert(addr, src);
        } else if !netif::is_loopback(route.oif) {
            node.endpoint_links.insert(route.oif);
        }
    }
    Ok(node)
}

/// The endpoint-facing interfaces to put the reply program on: as named by
/// `--endpoint-iface` (`["none"]`: none), or else those the routes to
/// endpoints behind the node leave through. Never an external interface,
/// whose own programs already see what arrives there.
pub fn endpoint_side(named: &[String], node: &Node, external: &[Iface]) -> Result<Vec<Iface>, String> {
    if named == ["none"] {
        return Ok(Vec::new());
    }
    if !named.is_empty() {
        let mut out = Vec::new();
        for name in named {
            let index = netif::index_of(name).ok_or_else(|| format!("--endpoint-iface {name}: no such interface in this network namespace"))?;
            if external.iter().any(|i| i.index == index) {
                return Err(format!("--endpoint-iface {name} is also an --iface: replies arriving there are already handled"));
            }
            if !out.iter().any(|i: &Iface| i.index == index) {
                out.push(Iface { name: name.clone(), index, addrs: Vec::new() });
            }
        }
        return Ok(out);
    }
    Ok(node
        .endpoint_links
        .iter()
        .filter(|index| !external.iter().any(|i| i.index == **index))
        .filter_map(|&index| netif::name_of(index).map(|name| Iface { name, index, addrs: Vec::new() }))
        .collect())
}
