//! The contenders, each set up in the node namespace of one T1 topology and
//! torn down again: the same client and the same backends for all.
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    agent::Agent,
    sys::{Proc, run},
    topo::{Topo, VIP},
};

pub const WS_PORT: u16 = 9080;
pub const BULK_PORT: u16 = 5201;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The client talks to the backends' own addresses; the node only routes.
    Direct,
    Wsfwd,
    /// DNAT as kube-proxy's iptables mode writes it.
    Iptables,
    /// DNAT as kube-proxy's nftables mode writes it.
    Nftables,
    /// nginx `stream` with `hash $remote_addr consistent`.
    NginxStream,
    /// nginx `http` with the seed's Upgrade/Connection config.
    NginxHttp,
    /// HAProxy `mode tcp`, `balance source`.
    Haproxy,
}

pub const ALL: [Kind; 7] =
    [Kind::Direct, Kind::Wsfwd, Kind::Iptables, Kind::Nftables, Kind::NginxStream, Kind::NginxHttp, Kind::Haproxy];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Wsfwd => "wsfwd-tc",
            Kind::Iptables => "iptables",
            Kind::Nftables => "nftables",
            Kind::NginxStream => "nginx-stream",
            Kind::NginxHttp => "nginx-http",
            Kind::Haproxy => "haproxy",
        }
    }

    /// Proxies own the VIP; the others forward it.
    fn is_proxy(self) -> bool {
        matches!(self, Kind::NginxStream | Kind::NginxHttp | Kind::Haproxy)
    }

    /// Where connection `i` goes.
    pub fn target(self, t: &Topo, i: usize) -> SocketAddrV4 {
        match self {
            Kind::Direct => SocketAddrV4::new(t.backends[i % t.backends.len()].addr, WS_PORT),
            _ => SocketAddrV4::new(VIP, WS_PORT),
        }
    }

    pub fn bulk_target(self, t: &Topo) -> SocketAddrV4 {
        match self {
            Kind::Direct => SocketAddrV4::new(t.backends[0].addr, BULK_PORT),
            _ => SocketAddrV4::new(VIP, BULK_PORT),
        }
    }
}

/// A contender while it runs; `stop` undoes everything `start` did.
pub struct Running {
    pub kind: Kind,
    pub agent: Option<Agent>,
    pub procs: Vec<Proc>,
    undo: Vec<Vec<String>>,
}

impl Running {
    /// PIDs of the processes doing the forwarding (for RSS).
    pub fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.procs.iter().map(Proc::pid).collect();
        v.extend(self.agent.as_ref().map(Agent::pid));
        v
    }
}

/// A synthetic service address for scale runs: 10.99.x.y.
pub fn scale_vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, (i / 250) as u8, (i % 250 + 1) as u8)
}

pub fn backends(t: &Topo) -> Vec<Ipv4Addr> {
    t.backends.iter().map(|b| b.addr).collect()
}

pub fn wsfwd_config(t: &Topo, extra_services: usize) -> String {
    let all = backends(t);
    wsfwd_config_with(extra_services, &all, &all)
}

/// `wsfwd_config` with the "ws" service's endpoints `ws` and the extra
/// services' `rest`.
pub fn wsfwd_config_with(extra_services: usize, ws: &[Ipv4Addr], rest: &[Ipv4Addr]) -> String {
    let mut out = service_yaml("ws", VIP, WS_PORT, WS_PORT, ws);
    out += &service_yaml("bulk", VIP, BULK_PORT, BULK_PORT, &rest[..1]);
    for i in 0..extra_services {
        out += &service_yaml(&format!("s{i}"), scale_vip(i), WS_PORT, WS_PORT, rest);
    }
    out
}

/// One Service (ClientIP affinity, the seed's `sh` scheduler) on `vip:port`
/// and its EndpointSlice of `addrs` on `target`, as YAML documents.
pub fn service_yaml(name: &str, vip: Ipv4Addr, port: u16, target: u16, addrs: &[Ipv4Addr]) -> String {
    let mut eps = format!("ports: [{{port: {target}}}]\nendpoints:\n");
    for a in addrs {
        let _ = writeln!(eps, "- addresses: [\"{a}\"]");
    }
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  annotations: {{kube-router.io/service.scheduler: sh}}\nspec:\n  externalIPs: [{vip}]\n  ports: [{{port: {port}, targetPort: {target}}}]\n  sessionAffinity: ClientIP\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\n{eps}---\n"
    )
}

fn iptables_rules(t: &Topo, extra_services: usize) -> String {
    let all = backends(t);
    let mut r = String::from("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-WS - [0:0]\n");
    for k in 0..all.len() {
        let _ = writeln!(r, ":KUBE-SEP-{k} - [0:0]");
    }
    for i in 0..extra_services {
        let _ = writeln!(r, ":KUBE-SVC-S{i} - [0:0]");
    }
    r += "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n";
    // The measured service comes last: every new connection walks past the others.
    for i in 0..extra_services {
        let _ = writeln!(r, "-A KUBE-SERVICES -d {}/32 -p tcp --dport {WS_PORT} -j KUBE-SVC-S{i}", scale_vip(i));
        let _ = writeln!(r, "-A KUBE-SVC-S{i} -j KUBE-SVC-WS");
    }
    let _ = writeln!(r, "-A KUBE-SERVICES -d {VIP}/32 -p tcp --dport {BULK_PORT} -j DNAT --to-destination {}:{BULK_PORT}", all[0]);
    let _ = writeln!(r, "-A KUBE-SERVICES -d {VIP}/32 -p tcp --dport {WS_PORT} -j KUBE-SVC-WS");
    let n = all.len();
    for (k, a) in all.iter().enumerate() {
        if k + 1 < n {
            let p = 1.0 / (n - k) as f64;
            let _ = writeln!(r, "-A KUBE-SVC-WS -m statistic --mode random --probability {p:.11} -j KUBE-SEP-{k}");
        } else {
            let _ = writeln!(r, "-A KUBE-SVC-WS -j KUBE-SEP-{k}");
        }
        let _ = writeln!(r, "-A KUBE-SEP-{k} -p tcp -j DNAT --to-destination {a}:{WS_PORT}");
    }
    r += "COMMIT\n";
    r
}

fn nft_rules(t: &Topo, extra_services: usize) -> String {
    let all = backends(t);
    let mut elems = vec![
        format!("{VIP} . tcp . {WS_PORT} : goto svc-ws"),
        format!("{VIP} . tcp . {BULK_PORT} : goto svc-bulk"),
    ];
    for i in 0..extra_services {
        elems.push(format!("{} . tcp . {WS_PORT} : goto svc-ws", scale_vip(i)));
    }
    let mut r = String::from("table ip wsfwd-bench-kube-proxy {\n");
    let _ = writeln!(r, "  map service-ips {{\n    type ipv4_addr . inet_proto . inet_service : verdict\n    elements = {{ {} }}\n  }}", elems.join(", "));
    r += "  chain nat-prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }\n";
    let arms: Vec<String> = (0..all.len()).map(|k| format!("{k} : goto sep-{k}")).collect();
    let _ = writeln!(r, "  chain svc-ws {{\n    numgen random mod {} vmap {{ {} }}\n  }}", all.len(), arms.join(", "));
    for (k, a) in all.iter().enumerate() {
        let _ = writeln!(r, "  chain sep-{k} {{\n    meta l4proto tcp dnat to {a}:{WS_PORT}\n  }}");
    }
    let _ = writeln!(r, "  chain svc-bulk {{\n    meta l4proto tcp dnat to {}:{BULK_PORT}\n  }}", all[0]);
    r += "}\n";
    r
}

fn nginx_config(t: &Topo, dir: &Path, http: bool) -> String {
    let servers: String = backends(t).iter().map(|a| format!("    server {a}:{WS_PORT};\n")).collect();
    let d = dir.display();
    let nofile = fd_limit();
    let head = format!(
        "worker_processes auto;\nworker_rlimit_nofile {nofile};\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\nevents {{ worker_connections {}; }}\n", fd_limit().saturating_sub(100)
    );
    if http {
        // The seed's config, with the upgrade headers that make WebSocket work.
        format!(
            "{head}http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n  upstream websocket {{\n{servers}  }}\n  server {{\n    listen {VIP}:{WS_PORT};\n    location / {{\n      proxy_pass http://websocket;\n      proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection $connection_upgrade;\n      proxy_read_timeout 1h;\n    }}\n  }}\n}}\n"
        )
    } else {
        format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n{head}stream {{\n  upstream ws {{\n    hash $remote_addr consistent;\n{servers}  }}\n  server {{ listen {VIP}:{WS_PORT}; proxy_pass ws; proxy_timeout 1h; }}\n  server {{ listen {VIP}:{BULK_PORT}; proxy_pass {}:{BULK_PORT}; }}\n}}\n",
            t.backends[0].addr
        )
    }
}

/// This process's open-file limit (the contenders inherit it).
pub fn fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit into a valid struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur
}

/// Idle connections every contender can hold at once: a proxy spends two
/// descriptors per connection, and one nginx worker may get them all.
pub fn max_connections() -> usize {
    (fd_limit().saturating_sub(200) / 2) as usize
}

fn haproxy_config(t: &Topo, dir: &Path) -> String {
    let servers: String =
        t.backends.iter().map(|b| format!("  server {} {}:{WS_PORT}\n", b.name, b.addr)).collect();
    format!(
        "global\n  maxconn {}\n  nbthread 2\n  pidfile {}/haproxy.pid\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\nfrontend ws\n  bind {VIP}:{WS_PORT}\n  default_backend ws\nbackend ws\n  balance source\n{servers}frontend bulk\n  bind {VIP}:{BULK_PORT}\n  default_backend bulk\nbackend bulk\n  server b1 {}:{BULK_PORT}\n",
        max_connections(),
        dir.display(),
        t.backends[0].addr
    )
}

/// The node's connection tracking, routes and attached programs, for an
/// error report.
pub fn node_state(t: &Topo) -> String {
    let script = "conntrack -C; conntrack -L 2>/dev/null | grep -v TIME_WAIT | head -8; \
                  ip route get 192.168.0.150 2>&1; iptables -t nat -L KUBE-SERVICES -n -v 2>&1 | head -6; \
                  bpftool net show 2>&1 | head -12";
    run(t.node.command("sh").args(["-c", script])).unwrap_or_else(|e| format!("{e:#}"))
}

fn node_cmd(t: &Topo, args: &[&str]) -> anyhow::Result<String> {
    t.node.exec(args)
}

/// Sets `kind` up in the node namespace, with `extra_services` more services
/// configured (forwarders only) for scale runs.
pub fn start(kind: Kind, t: &Topo, extra_services: usize) -> anyhow::Result<Running> {
    let dir = t.dir.join(kind.name());
    std::fs::create_dir_all(&dir)?;
    let mut r = Running { kind, agent: None, procs: Vec::new(), undo: Vec::new() };
    // The kernel's connection tracking starts empty for each contender: the
    // previous one's last packets (closing connections that reached the
    // node's stack once wsfwd's datapath was gone) leave entries without NAT,
    // and a new connection reusing such a tuple would skip the DNAT rules.
    // Errors only mean there is no table to flush.
    let _ = run(t.node.command("conntrack").arg("-F"));
    if kind.is_proxy() {
        t.node.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        r.undo.push(vec!["ip".into(), "addr".into(), "del".into(), format!("{VIP}/32"), "dev".into(), "lo".into()]);
    }
    match kind {
        Kind::Direct => {}
        Kind::Wsfwd => {
            r.agent = Some(Agent::start(&t.node, &dir, &wsfwd_config(t, extra_services), &[])?);
        }
        Kind::Iptables => {
            let rules = dir.join("rules.v4");
            std::fs::write(&rules, iptables_rules(t, extra_services))?;
            run(t.node.command("sh").args(["-c", &format!("iptables-restore < {}", rules.display())]))?;
            r.undo.push(["iptables", "-t", "nat", "-F"].map(String::from).to_vec());
            r.undo.push(["iptables", "-t", "nat", "-X"].map(String::from).to_vec());
        }
        Kind::Nftables => {
            let rules = dir.join("rules.nft");
            std::fs::write(&rules, nft_rules(t, extra_services))?;
            node_cmd(t, &["nft", "-f", &rules.display().to_string()])?;
            r.undo.push(["nft", "delete", "table", "ip", "wsfwd-bench-kube-proxy"].map(String::from).to_vec());
        }
        Kind::NginxStream | Kind::NginxHttp => {
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, nginx_config(t, &dir, kind == Kind::NginxHttp))?;
            let mut p = Proc::spawn(
                t.node.command("nginx").args(["-e", &dir.join("nginx-error.log").display().to_string(), "-c"]).arg(&conf).args(["-p"]).arg(&dir).args(["-g", "daemon off;"]),
                &dir.join("nginx.out"),
            )?;
            wait_listening(t, &mut p)?;
            r.procs.push(p);
        }
        Kind::Haproxy => {
            let conf = dir.join("haproxy.cfg");
            std::fs::write(&conf, haproxy_config(t, &dir))?;
            let mut p = Proc::spawn(t.node.command("haproxy").args(["-db", "-f"]).arg(&conf), &dir.join("haproxy.out"))?;
            wait_listening(t, &mut p)?;
            r.procs.push(p);
        }
    }
    Ok(r)
}

/// Waits until something listens on the VIP's WebSocket port in the node.
fn wait_listening(t: &Topo, p: &mut Proc) -> anyhow::Result<()> {
    for _ in 0..100 {
        if let Some(status) = p.child.try_wait()? {
            anyhow::bail!("exited ({status}):\n{}", p.output());
        }
        let ss = t.node.exec(&["ss", "-ltn"])?;
        if ss.contains(&format!("{VIP}:{WS_PORT}")) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("not listening on {VIP}:{WS_PORT} after 5 s:\n{}", p.output())
}

/// Undoes `start`.
pub fn stop(t: &Topo, mut r: Running) -> anyhow::Result<()> {
    // Connections finish closing through this contender, on both ends: a
    // segment retransmitted after it is gone would reach the node's stack and
    // leave a connection-tracking entry without NAT that a later contender's
    // connection could collide with (suspected, not shown, behind iptables'
    // intermittent "network unreachable" in this bench).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let open = |ns: &crate::netns::Netns| {
        let ss = ns.exec(&["ss", "-Htan", "state", "connected", "exclude", "time-wait"]).unwrap_or_default();
        !ss.trim().is_empty()
    };
    while std::time::Instant::now() < deadline && (open(&t.client) || t.backends.iter().any(|b| open(&b.ns))) {
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some(agent) = r.agent.take() {
        let status = agent.stop()?;
        anyhow::ensure!(status.success(), "wsfwd exited with {status}");
    }
    for p in &r.procs {
        p.signal(libc::SIGTERM);
    }
    for p in &mut r.procs {
        if p.wait_timeout(Duration::from_secs(5)).is_none() {
            p.signal(libc::SIGKILL);
        }
    }
    for cmd in &r.undo {
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        node_cmd(t, &args).with_context(|| format!("undoing {}", r.kind.name()))?;
    }
    Ok(())
}

/// Resident memory of `pid` and its children, bytes.
pub fn rss_tree(pid: u32) -> u64 {
    let mut total = rss(pid);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // Field 4 (after the parenthesised name) is the parent PID.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(pid) {
                total += rss_tree(child);
            }
        }
    }
    total
}

fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Memory of the eBPF maps `pid` holds (memlock in fdinfo), and of its
/// largest LRU map per entry (the conntrack).
pub fn map_memory(pid: u32) -> (u64, Option<f64>) {
    let mut total = 0;
    let mut per_ct = None;
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return (0, None) };
    for fd in fds.flatten() {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        let field = |k: &str| info.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse::<u64>().ok());
        let (Some(ty), Some(memlock)) = (field("map_type:"), field("memlock:")) else { continue };
        total += memlock;
        // BPF_MAP_TYPE_LRU_HASH
        if ty == 9 {
            if let Some(n) = field("max_entries:").filter(|&n| n > 0) {
                per_ct = Some(memlock as f64 / n as f64);
            }
        }
    }
    (total, per_ct)
}
