//! Topology T1 (gateway): a client namespace, the node running wsfwd, and
//! three backend namespaces routed through the node.
//!
//! ```text
//!  client c0 10.0.1.2-17/24 ── n0 10.0.1.1 [node: wsfwd] nbK 10.244.K.1 ── e0 10.244.K.10 [bK]
//!         route 192.168.0.150/32 via 10.0.1.1              (K = 1, 2, 3; default route via the node)
//! ```
//! The node does not own the VIP; the client only has a /32 route to it.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
};

use crate::{
    netns::{self, Netns},
    peers,
    sys::{Proc, require_root},
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 150);
pub const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
pub const WS_PORT: u16 = 9080;
pub const NODE_PORT: u16 = 30100;
pub const UDP_PORT: u16 = 9090;
pub const CLIENTS: usize = 16;

/// The seed's Services and endpoint objects (fixtures/seed-demo.yaml).
pub const SEED_CONFIG: &str = include_str!("../../fixtures/seed-demo.yaml");

/// A UDP Service on the same VIP, client-IP affinity like testim-service.
pub const UDP_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: testim-udp
  annotations: {kube-router.io/service.scheduler: sh}
spec:
  externalIPs: [192.168.0.150]
  ports: [{port: 9080, protocol: UDP}]
  sessionAffinity: ClientIP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: testim-udp-1
  labels: {kubernetes.io/service-name: testim-udp}
addressType: IPv4
ports: [{port: 9090, protocol: UDP}]
endpoints:
- addresses: ["10.244.1.10"]
- addresses: ["10.244.2.10"]
- addresses: ["10.244.3.10"]
"#;

pub struct Backend {
    pub name: String,
    pub addr: Ipv4Addr,
    pub ns: Netns,
}

pub struct T1 {
    /// Peers first: they are killed before their namespaces go.
    pub peers: HashMap<String, Proc>,
    pub client: Netns,
    pub node: Netns,
    pub backends: Vec<Backend>,
    pub clients: Vec<Ipv4Addr>,
    pub dir: PathBuf,
}

impl T1 {
    /// Builds the topology for test `test` (a short name; namespace names
    /// carry it and the PID).
    pub fn new(test: &str) -> anyhow::Result<Self> {
        require_root();
        let prefix = format!("wst-{test}-");
        netns::sweep(&prefix);
        let pid = std::process::id();
        let name = |role: &str| format!("{prefix}{pid}-{role}");
        let dir = std::env::temp_dir().join(format!("wsfwd-e2e-{test}-{pid}"));
        std::fs::create_dir_all(&dir)?;

        let client = Netns::create(&name("client"))?;
        let node = Netns::create(&name("node"))?;
        let mut backends = Vec::new();
        for k in 1..=3u8 {
            backends.push(Backend {
                name: format!("b{k}"),
                addr: Ipv4Addr::new(10, 244, k, 10),
                ns: Netns::create(&name(&format!("b{k}")))?,
            });
        }
        let clients = (2..2 + CLIENTS as u8).map(|i| Ipv4Addr::new(10, 0, 1, i)).collect();
        let t = Self { peers: HashMap::new(), client, node, backends, clients, dir };
        t.wire()?;
        Ok(t)
    }

    fn wire(&self) -> anyhow::Result<()> {
        let (c, n) = (&self.client, &self.node);
        c.ip(&["link", "add", "c0", "type", "veth", "peer", "name", "n0", "netns", &n.name])?;
        for i in 2..2 + CLIENTS {
            c.ip(&["addr", "add", &format!("10.0.1.{i}/24"), "dev", "c0"])?;
        }
        c.ip(&["link", "set", "c0", "up"])?;
        c.ip(&["route", "add", &format!("{VIP}/32"), "via", &NODE.to_string()])?;
        n.ip(&["addr", "add", &format!("{NODE}/24"), "dev", "n0"])?;
        n.ip(&["link", "set", "n0", "up"])?;
        for (k, b) in self.backends.iter().enumerate() {
            let k = k + 1;
            let nb = format!("nb{k}");
            n.ip(&["link", "add", &nb, "type", "veth", "peer", "name", "e0", "netns", &b.ns.name])?;
            n.ip(&["addr", "add", &format!("10.244.{k}.1/24"), "dev", &nb])?;
            n.ip(&["link", "set", &nb, "up"])?;
            b.ns.ip(&["addr", "add", &format!("{}/24", b.addr), "dev", "e0"])?;
            b.ns.ip(&["link", "set", "e0", "up"])?;
            b.ns.ip(&["route", "add", "default", "via", &format!("10.244.{k}.1")])?;
        }
        n.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        Ok(())
    }

    /// Starts the WebSocket echo servers (on 9080) in every backend.
    pub fn start_ws_peers(&mut self) -> anyhow::Result<()> {
        for b in &self.backends {
            let p = peers::ws_echo(&b.ns, &b.name, WS_PORT, &self.dir.join(format!("{}-ws.log", b.name)))?;
            self.peers.insert(format!("{}-ws", b.name), p);
        }
        Ok(())
    }

    /// Starts the UDP echo servers (on 9090) in every backend.
    pub fn start_udp_peers(&mut self) -> anyhow::Result<()> {
        for b in &self.backends {
            let p = peers::udp_echo(&b.ns, &b.name, UDP_PORT, &self.dir.join(format!("{}-udp.log", b.name)))?;
            self.peers.insert(format!("{}-udp", b.name), p);
        }
        Ok(())
    }

    pub fn ws_peer(&self, backend: &str) -> &Proc {
        &self.peers[&format!("{backend}-ws")]
    }

    pub fn vip(&self) -> SocketAddrV4 {
        SocketAddrV4::new(VIP, WS_PORT)
    }

    pub fn node_port(&self) -> SocketAddrV4 {
        SocketAddrV4::new(NODE, NODE_PORT)
    }

    pub fn backend_by_addr(&self, addr: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.addr.to_string() == addr)
    }

    /// Every veth end of the topology, as (namespace, interface).
    pub fn veths(&self) -> Vec<(&Netns, String)> {
        let mut v = vec![(&self.client, "c0".to_owned()), (&self.node, "n0".to_owned())];
        for (k, b) in self.backends.iter().enumerate() {
            v.push((&self.node, format!("nb{}", k + 1)));
            v.push((&b.ns, "e0".to_owned()));
        }
        v
    }

    /// Transmit checksum offload on or off on every veth.
    pub fn set_tx_offload(&self, on: bool) -> anyhow::Result<()> {
        for (ns, iface) in self.veths() {
            ns.exec(&["ethtool", "-K", &iface, "tx", if on { "on" } else { "off" }])?;
        }
        Ok(())
    }

    /// TCP and UDP checksum errors counted by every namespace's stack.
    pub fn csum_errors(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for ns in [&self.client, &self.node].into_iter().chain(self.backends.iter().map(|b| &b.ns)) {
            let snmp = ns.snmp()?;
            total += snmp.get("Tcp:InCsumErrors").copied().unwrap_or(0);
            total += snmp.get("Udp:InCsumErrors").copied().unwrap_or(0);
        }
        Ok(total)
    }
}

impl Drop for T1 {
    fn drop(&mut self) {
        self.peers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
