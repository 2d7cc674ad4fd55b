//! A Kubernetes API server for tests, inside a test namespace: the list and
//! watch protocol over HTTP/1.1 for Services and EndpointSlices, in the wire
//! format of a real cluster — `resourceVersion`s, paginated lists with
//! `continue` tokens, chunked watch streams of ADDED, MODIFIED, DELETED,
//! BOOKMARK and ERROR (410 Gone) events, label selectors — and faults on
//! demand: the server down, a watch stream cut in the middle of an event,
//! its history expired.
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

use crate::netns::Netns;

/// How often open watches get a BOOKMARK.
const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
}

impl Kind {
    fn of(obj: &Value) -> anyhow::Result<Self> {
        match obj["kind"].as_str() {
            Some("Service") => Ok(Self::Service),
            Some("EndpointSlice") => Ok(Self::EndpointSlice),
            other => bail!("the test API server holds Services and EndpointSlices, not {other:?}"),
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Self::Service => "v1",
            Self::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
        }
    }

    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/api/v1/services" => Some(Self::Service),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Self::EndpointSlice),
            _ => None,
        }
    }
}

type Key = (Kind, String, String);

struct Event {
    rv: u64,
    kind: Kind,
    type_: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Event>,
    /// Watches from a resourceVersion below this get 410 Gone.
    expired_below: u64,
    /// Bumped by `expire`: open watches end with 410 Gone.
    expiries: u64,
    /// The next event sent on a watch is cut in the middle, and its connection dropped.
    cut_next: bool,
    /// The most items a list page holds, whatever `limit` asks.
    page_cap: usize,
    /// Lists in progress: token -> (resourceVersion, remaining items).
    pages: HashMap<String, (u64, Vec<Value>)>,
    next_token: u64,
    /// Every request, as "GET path?query".
    requests: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    /// Current resourceVersion, for watches to wake on.
    changed: watch::Sender<u64>,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ns: Netns,
    accept: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Serves on 127.0.0.1 inside `ns`, on a free port.
    pub fn start(ns: &Netns) -> anyhow::Result<Self> {
        let (changed, _) = watch::channel(0);
        let state = State { page_cap: usize::MAX, rv: 1000, ..State::default() };
        let shared = Arc::new(Shared { state: Mutex::new(state), changed, connections: Mutex::new(Vec::new()) });
        let listener = bind(ns, "127.0.0.1:0".parse()?)?;
        let addr = listener.local_addr()?;
        let mut this = Self { shared, addr, ns: ns.handle(), accept: None };
        this.serve(listener)?;
        Ok(this)
    }

    fn serve(&mut self, listener: std::net::TcpListener) -> anyhow::Result<()> {
        let listener = TcpListener::from_std(listener)?;
        let shared = self.shared.clone();
        self.accept = Some(tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let s = shared.clone();
                let task = tokio::spawn(async move {
                    let _ = connection(s, conn).await;
                });
                let mut conns = shared.connections.lock().unwrap();
                conns.retain(|t| !t.is_finished());
                conns.push(task);
            }
        }));
        Ok(())
    }

    /// The server goes away: the listener closes and every connection drops.
    pub fn down(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for t in self.shared.connections.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Back on the same address, with the same objects and history.
    pub async fn up(&mut self) -> anyhow::Result<()> {
        // The aborted listener closes once its task is dropped.
        for _ in 0..50 {
            match bind(&self.ns, self.addr) {
                Ok(l) => return self.serve(l),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        bail!("cannot listen on {} again", self.addr)
    }

    /// A kubeconfig pointing at this server.
    pub fn kubeconfig(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{}\nusers:\n- name: test\n  user:\n    token: test-token\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\n",
            self.addr
        );
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Creates or replaces each Service and EndpointSlice of a
    /// multi-document YAML text; other kinds (a Deployment) are not served.
    pub fn apply_yaml(&self, yaml: &str) -> anyhow::Result<()> {
        use serde::Deserialize as _;
        for doc in serde_norway::Deserializer::from_str(yaml) {
            let v: Value = Value::deserialize(doc).context("test YAML")?;
            if Kind::of(&v).is_ok() {
                self.apply(v)?;
            }
        }
        Ok(())
    }

    /// Creates or replaces one object (ADDED or MODIFIED).
    pub fn apply(&self, mut obj: Value) -> anyhow::Result<()> {
        let kind = Kind::of(&obj)?;
        let meta = obj["metadata"].as_object_mut().context("object without metadata")?;
        meta.entry("namespace").or_insert_with(|| json!("default"));
        let (ns, name) = (meta["namespace"].as_str().unwrap_or_default().to_owned(), meta["name"].as_str().context("no name")?.to_owned());
        let mut st = self.shared.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let key = (kind, ns.clone(), name.clone());
        let type_ = if st.objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        let meta = obj["metadata"].as_object_mut().unwrap();
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("uid".into(), json!(format!("{ns}-{name}-uid")));
        meta.insert("creationTimestamp".into(), json!("2026-01-01T00:00:00Z"));
        st.objects.insert(key, obj.clone());
        st.history.push(Event { rv, kind, type_, object: obj });
        drop(st);
        self.shared.changed.send_replace(rv);
        Ok(())
    }

    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> anyhow::Result<()> {
        let mut st = self.shared.state.lock().unwrap();
        let Some(mut obj) = st.objects.remove(&(kind, namespace.to_owned(), name.to_owned())) else {
            bail!("no {} {namespace}/{name}", kind.name());
        };
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.history.push(Event { rv, kind, type_: "DELETED", object: obj });
        drop(st);
        self.shared.changed.send_replace(rv);
        Ok(())
    }

    /// History is compacted: open watches end with ERROR 410 Gone, and so
    /// does any watch resumed from before now; clients must list again.
    pub fn expire(&self) {
        let mut st = self.shared.state.lock().unwrap();
        st.expired_below = st.rv + 1;
        st.expiries += 1;
        let rv = st.rv;
        drop(st);
        self.shared.changed.send_replace(rv);
    }

    /// The next event written to a watch stops in the middle, and its
    /// connection is dropped.
    pub fn cut_next_event(&self) {
        self.shared.state.lock().unwrap().cut_next = true;
    }

    /// Lists return at most `n` items per page, whatever they ask.
    pub fn page_cap(&self, n: usize) {
        self.shared.state.lock().unwrap().page_cap = n;
    }

    /// Every request so far, as "GET path?query".
    pub fn requests(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().requests.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.down();
    }
}

fn bind(ns: &Netns, addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let sock = ns.socket(socket2::Type::STREAM, socket2::Protocol::TCP)?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into()).with_context(|| format!("binding {addr}"))?;
    sock.listen(64)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// One client connection: requests until it closes (HTTP/1.1 keep-alive).
async fn connection(shared: Arc<Shared>, mut conn: TcpStream) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    loop {
        let head = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end + 4);
                break head;
            }
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let target = head.lines().next().unwrap_or_default().split(' ').nth(1).unwrap_or_default().to_owned();
        shared.state.lock().unwrap().requests.push(format!("GET {target}"));
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let q: HashMap<String, String> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .map(|(k, v)| (decode(k), decode(v)))
            .collect();
        if path == "/version" {
            let v = json!({"major": "1", "minor": "34", "gitVersion": "v1.34.1", "gitCommit": "test", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"});
            respond(&mut conn, 200, &v).await?;
            continue;
        }
        let Some(kind) = Kind::from_path(path) else {
            let v = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "NotFound", "code": 404});
            respond(&mut conn, 404, &v).await?;
            continue;
        };
        let selector = q.get("labelSelector").cloned().unwrap_or_default();
        if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
            let from = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
            let timeout = Duration::from_secs(q.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(290));
            let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
            // A watch ends its connection.
            return watch_stream(&shared, &mut conn, kind, &selector, from, timeout, bookmarks).await;
        }
        let body = list(&shared, kind, &selector, &q);
        respond(&mut conn, 200, &body).await?;
    }
}

fn list(shared: &Shared, kind: Kind, selector: &str, q: &HashMap<String, String>) -> Value {
    let mut st = shared.state.lock().unwrap();
    let limit = q.get("limit").and_then(|l| l.parse().ok()).filter(|&l: &usize| l > 0).unwrap_or(usize::MAX).min(st.page_cap);
    // A continued list reads the snapshot its first page was taken from.
    let (rv, items) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match st.pages.remove(token) {
            Some(p) => p,
            None => return json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410}),
        },
        None => {
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|((k, _, _), o)| *k == kind && matches(selector, o))
                .map(|(_, o)| {
                    let mut o = o.clone();
                    // Items of a list carry neither kind nor apiVersion.
                    o.as_object_mut().map(|m| (m.remove("kind"), m.remove("apiVersion")));
                    o
                })
                .collect();
            (st.rv, items)
        }
    };
    let mut items = items;
    let rest = if items.len() > limit { items.split_off(limit) } else { Vec::new() };
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if !rest.is_empty() {
        st.next_token += 1;
        let token = format!("page-{}", st.next_token);
        st.pages.insert(token.clone(), (rv, rest));
        meta["continue"] = json!(token);
    }
    json!({"kind": format!("{}List", kind.name()), "apiVersion": kind.api_version(), "metadata": meta, "items": items})
}

#[allow(clippy::too_many_arguments)]
async fn watch_stream(
    shared: &Shared,
    conn: &mut TcpStream,
    kind: Kind,
    selector: &str,
    from: u64,
    timeout: Duration,
    bookmarks: bool,
) -> anyhow::Result<()> {
    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").await?;
    let gone = |rv: u64| {
        json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {from} ({rv})"), "reason": "Expired", "code": 410}})
    };
    let (expiries, expired_below, now) = {
        let st = shared.state.lock().unwrap();
        (st.expiries, st.expired_below, st.rv)
    };
    if from < expired_below {
        chunk(conn, &gone(now)).await?;
        return end(conn).await;
    }
    let mut changed = shared.changed.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut sent = from;
    loop {
        let (events, cut, expired, rv) = {
            let mut st = shared.state.lock().unwrap();
            let events: Vec<Value> = st
                .history
                .iter()
                .filter(|e| e.rv > sent && e.kind == kind && matches(selector, &e.object))
                .map(|e| json!({"type": e.type_, "object": e.object}))
                .collect();
            let cut = !events.is_empty() && std::mem::take(&mut st.cut_next);
            (events, cut, st.expiries != expiries, st.rv)
        };
        if expired {
            chunk(conn, &gone(rv)).await?;
            return end(conn).await;
        }
        for e in &events {
            if cut {
                // Half an event, then the connection is gone.
                let line = format!("{e}\n");
                let half = &line[..line.len() / 2];
                conn.write_all(format!("{:x}\r\n{half}", line.len()).as_bytes()).await?;
                conn.flush().await?;
                return Ok(());
            }
            chunk(conn, e).await?;
        }
        sent = sent.max(rv);
        tokio::select! {
            r = changed.changed() => if r.is_err() { return end(conn).await },
            () = tokio::time::sleep(BOOKMARK_EVERY), if bookmarks => {
                let b = json!({"type": "BOOKMARK", "object": {"kind": kind.name(), "apiVersion": kind.api_version(),
                    "metadata": {"resourceVersion": sent.to_string()}}});
                chunk(conn, &b).await?;
            }
            () = tokio::time::sleep_until(deadline) => return end(conn).await,
        }
    }
}

async fn chunk(conn: &mut TcpStream, v: &Value) -> anyhow::Result<()> {
    let line = format!("{v}\n");
    conn.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes()).await?;
    Ok(conn.flush().await?)
}

async fn end(conn: &mut TcpStream) -> anyhow::Result<()> {
    conn.write_all(b"0\r\n\r\n").await?;
    Ok(conn.flush().await?)
}

async fn respond(conn: &mut TcpStream, code: u16, v: &Value) -> anyhow::Result<()> {
    let body = v.to_string();
    let reason = if code == 200 { "OK" } else { "Not Found" };
    let head = format!("HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    Ok(conn.flush().await?)
}

/// Whether `obj`'s labels match a selector of `k=v`, `k==v`, `k!=v`, `k`
/// and `!k` terms, comma-separated (all must hold).
fn matches(selector: &str, obj: &Value) -> bool {
    let labels = &obj["metadata"]["labels"];
    let get = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
    selector.split(',').map(str::trim).filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            get(k) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            get(k) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            get(k).is_none()
        } else {
            get(term).is_some()
        }
    })
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_and_decoding() {
        let o = json!({"metadata": {"labels": {"a": "1", "service.kubernetes.io/service-proxy-name": "wsfwd"}}});
        assert!(matches("service.kubernetes.io/service-proxy-name=wsfwd,a", &o));
        assert!(matches("a==1,!b,a!=2", &o));
        assert!(!matches("a=2", &o) && !matches("!a", &o) && !matches("b", &o));
        assert_eq!(decode("service.kubernetes.io%2Fservice-proxy-name%3Dwsfwd"), "service.kubernetes.io/service-proxy-name=wsfwd");
        assert_eq!(decode("a%2"), "a%2");
    }
}
