//! Where each endpoint sits: behind the node (its route leaves through an
//! interface that is not external) or out on the external side, where it
//! needs full NAT so that its replies come back through the node.
use std::{collections::BTreeSet, net::Ipv4Addr};

use crate::{datapath::contents::Node, model::Service, netif::Iface, route};

/// Builds the node's view: its external addresses, and which endpoints are
/// not behind it, by asking the routing table about each endpoint.
pub fn resolve(services: &[Service], ifaces: &[Iface], snat_ips: &[Ipv4Addr]) -> Result<Node, String> {
    let addrs: Vec<Ipv4Addr> = ifaces.iter().flat_map(|i| i.addrs.iter().copied()).collect();
    for ip in snat_ips {
        if !addrs.contains(ip) {
            return Err(format!("--snat-ip {ip} is not an address of the --iface interfaces"));
        }
    }
    let endpoints: BTreeSet<Ipv4Addr> = services.iter().flat_map(|s| s.endpoints.iter().map(|e| e.address)).collect();
    let mut node = Node { addrs, snat_ips: snat_ips.to_vec(), ..Node::default() };
    for addr in endpoints {
        let route = route::get(addr).map_err(|e| format!("looking up the route to endpoint {addr}: {e}"))?;
        let Some(route) = route else {
            log::warn!("endpoint {addr}: no route; its flows will be dropped (counter drop-no-route)");
            continue;
        };
        if let Some(iface) = ifaces.iter().find(|i| i.index == route.oif) {
            let src = route.prefsrc.or_else(|| iface.addrs.first().copied()).ok_or_else(|| {
                format!("endpoint {addr} is reached through {} which has no IPv4 address to SNAT from", iface.name)
            })?;
            node.external.insert(addr, src);
        }
    }
    Ok(node)
}
