//! What `wsfwd run` was asked to do, and the defaults it derives from the
//! node: the SNAT port range (clear of ephemeral ports and NodePorts) and
//! the half-open budget per client.
use std::{path::PathBuf, time::Duration};

use crate::{
    datapath::{self, gc},
    model::Service,
};

/// Where the Services and endpoints come from.
pub enum Source {
    /// A YAML file, watched.
    File(PathBuf),
    /// The API server (DaemonSet mode).
    Kubernetes(crate::kubernetes::Options),
}

pub struct RunArgs {
    pub source: Source,
    /// `--kubernetes --dry-run`: print the plan and exit.
    pub dry_run: bool,
    /// This node's name (`--node-name`, `NODE_NAME`), for the log.
    pub node_name: Option<String>,
    pub ifaces: Vec<String>,
    pub bpffs: PathBuf,
    pub tc_mode: datapath::attach::Mode,
    pub hook: datapath::attach::Hook,
    pub cleanup_on_exit: bool,
    pub ct_size: u32,
    pub hash_seed: u32,
    pub timeouts: gc::Timeouts,
    pub gc_interval: Duration,
    /// How long a drained endpoint keeps its flows; zero: until they end.
    pub drain_timeout: Duration,
    /// Where to serve Prometheus metrics; `None`: nowhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub snat_ips: Vec<std::net::Ipv4Addr>,
    /// `--endpoint-iface`: empty for the routes' choice, `["none"]` for none.
    pub endpoint_ifaces: Vec<String>,
    pub snat_ports: Option<(u16, u16)>,
    pub snat_quarantine: Duration,
    pub nat_size: u32,
    /// `None`: an eighth of what full NAT can hold (see `default_half_open`).
    pub half_open_per_client: Option<u32>,
}

/// Half-open full-NAT flows one client address may hold by default: an
/// eighth of an endpoint's SNAT ports or of the NAT table, whichever is
/// smaller, and at least 16. A flood from one address then takes at most an
/// eighth of what other clients need.
pub fn default_half_open(port_count: u32, nat_size: u32) -> u32 {
    (port_count.min(nat_size / 2) / 8).max(16)
}

/// Linux's TIME_WAIT: the shortest safe SNAT quarantine.
pub(crate) const TIME_WAIT: Duration = Duration::from_secs(60);

/// The NodePort range Kubernetes allocates from by default.
const NODE_PORTS: (u16, u16) = (30000, 32767);

/// The default SNAT ports: the largest range that overlaps neither the
/// node's ephemeral ports (`ip_local_port_range`) nor the NodePort range,
/// preferring ports above both.
pub fn default_snat_ports(local: (u16, u16)) -> Option<(u16, u16)> {
    let busy = [local, NODE_PORTS];
    let mut free: Vec<(u16, u16)> = Vec::new();
    let mut start = 1024u32;
    let mut edges: Vec<(u16, u16)> = busy.to_vec();
    edges.sort();
    for (lo, hi) in edges {
        if u32::from(lo) > start {
            free.push((start as u16, lo - 1));
        }
        start = start.max(u32::from(hi) + 1);
    }
    if start <= 65535 {
        free.push((start as u16, 65535));
    }
    let size = |r: &(u16, u16)| u32::from(r.1) - u32::from(r.0) + 1;
    // Above everything when that leaves a useful range: clear of low, well-known ports.
    match free.last() {
        Some(top) if top.0 > local.1 && size(top) >= 1024 => Some(*top),
        _ => free.into_iter().max_by_key(size),
    }
}

fn local_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().filter_map(|p| p.parse().ok());
            Some((it.next()?, it.next()?))
        })
        .unwrap_or((32768, 60999))
}

/// The SNAT port range to use, checked against the configured NodePorts.
pub(crate) fn snat_ports(args: &RunArgs, services: &[Service]) -> anyhow::Result<(u16, u16)> {
    let range = match args.snat_ports {
        Some(r) => r,
        None => default_snat_ports(local_port_range())
            .ok_or_else(|| anyhow::anyhow!("no free port range for SNAT: give --snat-ports"))?,
    };
    check_node_ports(range, services)?;
    Ok(range)
}

/// A NodePort inside the SNAT range would take full-NAT replies for itself.
pub(crate) fn check_node_ports(range: (u16, u16), services: &[Service]) -> anyhow::Result<()> {
    for svc in services {
        for f in &svc.frontends {
            if let crate::model::Frontend::NodePort { port, .. } = f {
                if (range.0..=range.1).contains(port) {
                    anyhow::bail!(
                        "--snat-ports {}-{} contains nodePort {port} of {}: replies to SNAT ports would hit the NodePort",
                        range.0,
                        range.1,
                        svc.id()
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::default_snat_ports;

    #[test]
    fn default_snat_ports_avoid_ephemeral_and_node_ports() {
        // Linux's default ephemeral range leaves 61000-65535 above it.
        assert_eq!(default_snat_ports((32768, 60999)), Some((61000, 65535)));
        // Ephemeral ports up to 65535: the largest free range below.
        assert_eq!(default_snat_ports((32768, 65535)), Some((1024, 29999)));
        assert_eq!(default_snat_ports((1024, 65535)), None);
        // A small gap above is not worth it.
        assert_eq!(default_snat_ports((10000, 65000)), Some((1024, 9999)));
    }
}
