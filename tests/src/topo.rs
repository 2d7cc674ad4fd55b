//! The test topologies (T1: endpoints behind the node; T2: endpoints on the
//! client's segment, full NAT), built from network namespaces and veths.
//!
//! ```text
//! T1 (gateway):   client c0 10.0.1.2-17 ── n0 10.0.1.1 [node] nbK 10.244.K.1 ── e0 10.244.K.10 [bK]
//! T2 (one-arm):   client 10.0.2.100-115, node n0 10.0.2.1, endpoints eK 10.0.2.2K, all on bridge br0 [sw]
//! with a router:  client 10.0.3.2-17 ── rc 10.0.3.1 (MTU 1280) [router] ── node's segment
//! ```
//! The node never owns the VIP; the client has only a /32 route to it. Backends
//! behind the node route through it; endpoints on the external segment do not.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{
    netns::{self, Netns},
    peers,
    sys::{Proc, require_root},
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 150);
pub const VIP_PORT: u16 = 9080;
pub const NODE_PORT: u16 = 30100;
pub const UDP_PORT: u16 = 9090;
pub const CLIENTS: u8 = 16;
/// A hash seed other than the default (`--hash-seed`).
pub const OTHER_SEED: u32 = 0x1234_5678;

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

/// The seed's nginx upstream as a selector-less Service: the VIP's port 9080
/// to port 30100 of each endpoint address given.
pub fn upstream_config(endpoints: &[Ipv4Addr], policy: &str) -> String {
    let eps: String = endpoints.iter().map(|a| format!("- addresses: [\"{a}\"]\n")).collect();
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: testim-service
  annotations: {{kube-router.io/service.scheduler: sh}}
spec:
  externalIPs: [192.168.0.150]
  ports: [{{port: 9080, targetPort: 30100}}]
  sessionAffinity: ClientIP
  externalTrafficPolicy: {policy}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: testim-service-nginx
  labels: {{kubernetes.io/service-name: testim-service}}
addressType: IPv4
ports: [{{port: 30100}}]
endpoints:
{eps}"#
    )
}

/// The same upstream for UDP: the VIP's port 9080/UDP to port 9090/UDP of
/// each endpoint address given.
pub fn upstream_udp_config(endpoints: &[Ipv4Addr]) -> String {
    upstream_config(endpoints, "Cluster")
        .replace("{port: 9080, targetPort: 30100}", "{port: 9080, targetPort: 9090, protocol: UDP}")
        .replace("ports: [{port: 30100}]", "ports: [{port: 9090, protocol: UDP}]")
}

/// What to build.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// Backends behind the node (T1's bK).
    pub behind: u8,
    /// Endpoints on the node's external segment (T2's eK).
    pub external: u8,
    /// A router between client and node whose client-side link has MTU 1280.
    pub router: bool,
    /// The port the WebSocket peers listen on.
    pub ws_port: u16,
    /// The node's side of each link to a backend behind it has MTU 1280
    /// (the backend's side keeps 1500 and says MSS 1460).
    pub narrow_backend_links: bool,
    /// How many addresses the client has.
    pub clients: u8,
}

impl Spec {
    pub const T1: Spec =
        Spec { behind: 3, external: 0, router: false, ws_port: VIP_PORT, narrow_backend_links: false, clients: CLIENTS };
    pub const T2: Spec =
        Spec { behind: 0, external: 2, router: false, ws_port: NODE_PORT, narrow_backend_links: false, clients: CLIENTS };

    pub fn with_router(self) -> Self {
        Self { router: true, ..self }
    }
}

pub struct Backend {
    pub name: String,
    pub addr: Ipv4Addr,
    pub ns: Netns,
    /// Routed through the node (else: on the node's external segment).
    pub behind: bool,
}

pub struct Topo {
    /// Peers first: they are killed before their namespaces go.
    pub peers: HashMap<String, Proc>,
    pub client: Netns,
    pub node: Netns,
    pub router: Option<Netns>,
    pub switch: Option<Netns>,
    pub backends: Vec<Backend>,
    pub clients: Vec<Ipv4Addr>,
    /// The node's address on the external segment (NodePorts, SNAT).
    pub node_addr: Ipv4Addr,
    pub spec: Spec,
    pub dir: PathBuf,
    /// Every veth end, as (namespace, interface).
    veths: Vec<(String, String)>,
}

/// Removes what an earlier run of test `test` left behind when it was
/// killed before its cleanup: its directory, and the bpffs mounted in it,
/// which would otherwise keep that run's datapath (pinned links and
/// programs) alive for good. Only directories whose process is gone.
fn sweep_dirs(test: &str) {
    let prefix = format!("wsfwd-e2e-{test}-");
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = e.path();
        for at in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| Path::new(m).starts_with(&dir)) {
            let _ = Command::new("umount").arg("-l").arg(at).status();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

impl Topo {
    /// Builds topology `spec` for test `test` (a short name; namespace names
    /// carry it and the PID).
    pub fn new(test: &str, spec: Spec) -> anyhow::Result<Self> {
        require_root();
        let prefix = format!("wst-{test}-");
        netns::sweep(&prefix);
        sweep_dirs(test);
        let pid = std::process::id();
        let name = |role: &str| format!("{prefix}{pid}-{role}");
        let dir = std::env::temp_dir().join(format!("wsfwd-e2e-{test}-{pid}"));
        std::fs::create_dir_all(&dir)?;

        let client = Netns::create(&name("client"))?;
        let node = Netns::create(&name("node"))?;
        let router = spec.router.then(|| Netns::create(&name("router"))).transpose()?;
        let switch = (spec.external > 0).then(|| Netns::create(&name("sw"))).transpose()?;
        let mut backends = Vec::new();
        for k in 1..=spec.behind {
            let ns = Netns::create(&name(&format!("b{k}")))?;
            backends.push(Backend { name: format!("b{k}"), addr: Ipv4Addr::new(10, 244, k, 10), ns, behind: true });
        }
        for k in 1..=spec.external {
            let ns = Netns::create(&name(&format!("e{k}")))?;
            backends.push(Backend { name: format!("e{k}"), addr: Ipv4Addr::new(10, 0, 2, 20 + k), ns, behind: false });
        }
        let (node_addr, first_client) = match (spec.router, switch.is_some()) {
            (true, _) => (if switch.is_some() { Ipv4Addr::new(10, 0, 2, 1) } else { Ipv4Addr::new(10, 0, 1, 1) }, Ipv4Addr::new(10, 0, 3, 2)),
            (false, true) => (Ipv4Addr::new(10, 0, 2, 1), Ipv4Addr::new(10, 0, 2, 100)),
            (false, false) => (Ipv4Addr::new(10, 0, 1, 1), Ipv4Addr::new(10, 0, 1, 2)),
        };
        let clients = (0..spec.clients).map(|i| Ipv4Addr::from(u32::from(first_client) + u32::from(i))).collect();
        let mut t = Self {
            peers: HashMap::new(),
            client,
            node,
            router,
            switch,
            backends,
            clients,
            node_addr,
            spec,
            dir,
            veths: Vec::new(),
        };
        t.wire()?;
        Ok(t)
    }

    /// A veth pair between two namespaces, both ends up.
    pub fn veth(&mut self, a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> anyhow::Result<()> {
        a.ip(&["link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name])?;
        a.ip(&["link", "set", a_if, "up"])?;
        b.ip(&["link", "set", b_if, "up"])?;
        self.veths.push((a.name.clone(), a_if.to_owned()));
        self.veths.push((b.name.clone(), b_if.to_owned()));
        Ok(())
    }

    /// Plugs `ns`'s `iface` into the switch's bridge.
    fn plug(&mut self, ns: &Netns, iface: &str, port: &str) -> anyhow::Result<()> {
        let sw = self.switch.as_ref().expect("a switch").handle();
        self.veth(ns, iface, &sw, port)?;
        sw.ip(&["link", "set", port, "master", "br0"]).map(drop)
    }

    fn addr(ns: &Netns, cidr: &str, iface: &str) -> anyhow::Result<()> {
        ns.ip(&["addr", "add", cidr, "dev", iface]).map(drop)
    }

    fn wire(&mut self) -> anyhow::Result<()> {
        let (client, node) = (self.client.handle(), self.node.handle());
        let node_addr = self.node_addr.to_string();
        if let Some(sw) = &self.switch {
            sw.ip(&["link", "add", "br0", "type", "bridge"])?;
            sw.ip(&["link", "set", "br0", "up"])?;
            // A switch forwards frames as they are: where br_netfilter is
            // loaded, stop it checking (and dropping) IP packets on this bridge.
            if std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
                sw.exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"])?;
            }
        }
        // The node's external interface n0, and the client's way to it.
        let router = self.router.as_ref().map(Netns::handle);
        let leg = match (&router, self.switch.is_some()) {
            (None, false) => {
                self.veth(&client, "c0", &node, "n0")?;
                None
            }
            (None, true) => {
                self.plug(&node, "n0", "pn")?;
                self.plug(&client, "c0", "pc")?;
                None
            }
            (Some(r), false) => {
                self.veth(&client, "c0", r, "rc")?;
                self.veth(r, "rn", &node, "n0")?;
                Self::addr(r, "10.0.1.254/24", "rn")?;
                Some("10.0.1.254")
            }
            (Some(r), true) => {
                self.veth(&client, "c0", r, "rc")?;
                self.plug(&node, "n0", "pn")?;
                self.plug(r, "rn", "pr")?;
                Self::addr(r, "10.0.2.254/24", "rn")?;
                Some("10.0.2.254")
            }
        };
        Self::addr(&node, &format!("{node_addr}/24"), "n0")?;
        for c in &self.clients {
            Self::addr(&client, &format!("{c}/24"), "c0")?;
        }
        match (&router, leg) {
            (Some(r), Some(leg)) => {
                // Only the router's side is small: the client still says MSS
                // 1460, so the server's big segments need PMTU discovery.
                r.ip(&["link", "set", "rc", "mtu", "1280"])?;
                Self::addr(r, "10.0.3.1/24", "rc")?;
                r.ip(&["route", "add", &format!("{VIP}/32"), "via", &node_addr])?;
                r.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
                node.ip(&["route", "add", "10.0.3.0/24", "via", leg])?;
                client.ip(&["route", "add", &format!("{VIP}/32"), "via", "10.0.3.1"])?;
            }
            _ => {
                client.ip(&["route", "add", &format!("{VIP}/32"), "via", &node_addr])?;
            }
        }

        let backends: Vec<(String, Ipv4Addr, Netns, bool)> =
            self.backends.iter().map(|b| (b.name.clone(), b.addr, b.ns.handle(), b.behind)).collect();
        for (name, addr, ns, behind) in backends {
            if behind {
                let k = addr.octets()[2];
                let nb = format!("nb{k}");
                self.veth(&node, &nb, &ns, "e0")?;
                Self::addr(&node, &format!("10.244.{k}.1/24"), &nb)?;
                Self::addr(&ns, &format!("{addr}/24"), "e0")?;
                ns.ip(&["route", "add", "default", "via", &format!("10.244.{k}.1")])?;
                if self.spec.narrow_backend_links {
                    node.ip(&["link", "set", &nb, "mtu", "1280"])?;
                }
            } else {
                self.plug(&ns, "e0", &format!("p{name}"))?;
                Self::addr(&ns, &format!("{addr}/24"), "e0")?;
            }
        }
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        Ok(())
    }

    /// Starts the WebSocket echo servers (on 9080) in every backend.
    pub fn start_ws_peers(&mut self) -> anyhow::Result<()> {
        for b in &self.backends {
            let p = peers::ws_echo(&b.ns, &b.name, self.spec.ws_port, &self.dir.join(format!("{}-ws.log", b.name)))?;
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
        SocketAddrV4::new(VIP, VIP_PORT)
    }

    pub fn node_port(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.node_addr, NODE_PORT)
    }

    /// The client address an endpoint sees for a connection from `src`:
    /// the client's own behind the node, the node's (SNAT) otherwise.
    pub fn seen_as(&self, backend: &Backend, src: Ipv4Addr) -> Ipv4Addr {
        if backend.behind { src } else { self.node_addr }
    }

    /// T1: each backend's address resolved to its MAC on the node's link to
    /// it (a permanent neighbour), so redirects write both MACs.
    pub fn pin_backend_neighbours(&self) -> anyhow::Result<()> {
        for b in &self.backends {
            let mac = crate::forge::mac_of(&b.ns, "e0")?;
            self.pin_neighbour(b.addr, mac, &format!("nb{}", b.addr.octets()[2]))?;
        }
        Ok(())
    }

    /// `addr` resolved to `mac` on the node's `dev` (a permanent neighbour).
    pub fn pin_neighbour(&self, addr: Ipv4Addr, mac: [u8; 6], dev: &str) -> anyhow::Result<()> {
        let mac: Vec<String> = mac.iter().map(|x| format!("{x:02x}")).collect();
        self.node.ip(&["neigh", "replace", &addr.to_string(), "lladdr", &mac.join(":"), "nud", "permanent", "dev", dev])?;
        Ok(())
    }

    pub fn backend_by_addr(&self, addr: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.addr.to_string() == addr)
    }

    /// Transmit checksum offload on or off on every veth.
    pub fn set_tx_offload(&self, on: bool) -> anyhow::Result<()> {
        for (ns, iface) in &self.veths {
            let ns = self.namespaces().into_iter().chain(self.switch.iter()).find(|n| &n.name == ns).expect("ns").handle();
            ns.exec(&["ethtool", "-K", iface, "tx", if on { "on" } else { "off" }])?;
        }
        Ok(())
    }

    /// Every namespace of the topology.
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut v = vec![&self.client, &self.node];
        v.extend(self.router.iter());
        v.extend(self.backends.iter().map(|b| &b.ns));
        v
    }

    /// TCP and UDP checksum errors counted by every namespace's stack.
    pub fn csum_errors(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for ns in self.namespaces() {
            let snmp = ns.snmp()?;
            for name in ["Tcp:InCsumErrors", "Udp:InCsumErrors"] {
                total += snmp.get(name).with_context(|| format!("no {name} in /proc/net/snmp of {}", ns.name))?;
            }
        }
        Ok(total)
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        self.peers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
