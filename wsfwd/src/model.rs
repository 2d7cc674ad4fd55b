//! The desired state: what the datapath should forward, independent of where it
//! came from (a file today, the API server later).
use std::{fmt, net::Ipv4Addr};

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            _ => None,
        }
    }

    /// The IP protocol number, as packets and the map keys carry it.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => wsfwd_common::abi::PROTO_TCP,
            Self::Udp => wsfwd_common::abi::PROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        })
    }
}

/// Where clients reach a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Frontend {
    /// `spec.externalIPs[i]` : `spec.ports[j].port`.
    ExternalIp { address: Ipv4Addr, port: u16, protocol: Protocol },
    /// `nodePort` on every address of the node's external interfaces,
    /// resolved when the agent attaches.
    NodePort { port: u16, protocol: Protocol },
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ExternalIp { address, port, protocol } => write!(f, "{address}:{port}/{protocol}"),
            Self::NodePort { port, protocol } => write!(f, "<node>:{port}/{protocol}"),
        }
    }
}

/// What the flow hash covers when picking an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HashInput {
    /// The client address only: `sh` scheduling or `sessionAffinity: ClientIP`.
    ClientIp,
    /// Addresses, ports and protocol.
    FiveTuple,
}

/// `spec.externalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum TrafficPolicy {
    /// Every endpoint; those not behind the node are reached with full NAT.
    #[default]
    Cluster,
    /// Only endpoints behind the node, which see the client address.
    Local,
}

/// One endpoint of one service port, with Kubernetes' conditions resolved
/// (nil ready/serving mean true, nil terminating means false).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub address: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Endpoint {
    /// Only ready endpoints take new flows.
    pub fn takes_new_flows(&self) -> bool {
        self.ready
    }
}

/// One port of one Kubernetes Service: the unit the datapath forwards
/// (kube-proxy's "service port name").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// `spec.ports[i].name`, empty when unnamed.
    pub port_name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub frontends: Vec<Frontend>,
    /// Sorted by address and port.
    pub endpoints: Vec<Endpoint>,
    pub hash: HashInput,
    /// The `kube-router.io/service.scheduler` annotation, as written.
    pub scheduler: Option<String>,
    /// `sessionAffinity: ClientIP` timeout in seconds; `None` without affinity.
    pub affinity_timeout_seconds: Option<u32>,
    pub external_traffic_policy: TrafficPolicy,
    /// Why endpoints are missing, when they are.
    pub endpoint_notes: Vec<String>,
}

impl Service {
    /// `namespace/name:port-name` (or `namespace/name:port` when unnamed).
    pub fn id(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}:{}", self.namespace, self.name, self.port)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }
}
