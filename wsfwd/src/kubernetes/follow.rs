//! Following the API server. Services and EndpointSlices are watched with
//! kube-runtime's watcher (paginated lists, watches resumed from the last
//! resourceVersion, bookmarks, a relist after 410 Gone) behind client-go's
//! backoff, so a stream never ends on an error. A list in progress — the
//! first, or a relist — is collected aside and swapped in whole when it
//! completes, and nothing is reported until both kinds have been listed
//! once: a partial list never removes an endpoint. Changes are reported
//! after a quiet moment (debounced), not per event.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, Config, Resource,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::snapshot::{Key, Selected, Snapshot, Which, key_of};

/// How long the stream must be quiet before a change is reported, and the
/// longest a change waits while events keep coming.
const QUIET: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(1);
/// How often a silent API server is asked whether it is back.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// `wsfwd run --kubernetes`'s choices.
#[derive(Clone, Debug)]
pub struct Options {
    pub kubeconfig: Option<PathBuf>,
    pub which: Which,
    /// A label selector narrowing the Services (and their slices) further.
    pub selector: Option<String>,
}

impl Options {
    /// The label selector both watches use. Kubernetes copies a Service's
    /// labels onto its EndpointSlices, so one selector serves both (as
    /// kube-proxy's does).
    pub fn label_selector(&self) -> Option<String> {
        let own = match self.which {
            Which::Labelled => Some(format!("{}={}", super::PROXY_NAME_LABEL, super::PROXY_NAME)),
            Which::All => None,
        };
        let parts: Vec<String> = own.into_iter().chain(self.selector.clone().filter(|s| !s.is_empty())).collect();
        (!parts.is_empty()).then(|| parts.join(","))
    }
}

/// Whether the API server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiState {
    /// Not yet heard from.
    Connecting,
    Reachable,
    /// Failing; the agent keeps retrying and the datapath keeps its plan.
    Unreachable,
}

/// What the follower has to tell.
#[derive(Debug, PartialEq, Eq)]
pub enum Notice {
    /// The snapshot changed (and both kinds are listed).
    Changed,
    /// The API server became reachable or unreachable.
    State(ApiState),
}

enum Msg {
    Service(watcher::Event<Service>),
    Slice(watcher::Event<EndpointSlice>),
    Failed(&'static str, watcher::Error),
    Probe(Result<(), String>),
}

/// One kind of object: its objects, and a list in progress.
struct Kind<K> {
    objects: BTreeMap<Key, K>,
    listing: Option<BTreeMap<Key, K>>,
    listed: bool,
}

impl<K: Resource> Kind<K> {
    fn new() -> Self {
        Self { objects: BTreeMap::new(), listing: None, listed: false }
    }

    /// Applies one watcher event; true when the objects changed.
    fn apply(&mut self, event: watcher::Event<K>) -> bool {
        // Managed fields are most of an object's size and never read.
        let slim = |mut o: K| {
            o.meta_mut().managed_fields = None;
            o
        };
        match event {
            watcher::Event::Init => {
                self.listing = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(o) => {
                let o = slim(o);
                self.listing.get_or_insert_default().insert(key_of(o.meta()), o);
                false
            }
            watcher::Event::InitDone => {
                self.objects = self.listing.take().unwrap_or_default();
                self.listed = true;
                true
            }
            watcher::Event::Apply(o) => {
                let o = slim(o);
                self.objects.insert(key_of(o.meta()), o);
                true
            }
            watcher::Event::Delete(o) => self.objects.remove(&key_of(o.meta())).is_some(),
        }
    }
}

pub struct Follower {
    rx: mpsc::Receiver<Msg>,
    which: Which,
    services: Kind<Service>,
    slices: Kind<EndpointSlice>,
    state: ApiState,
    since: Instant,
    unreachable: watch::Sender<bool>,
    /// When the first unreported change came, and the last one.
    pending: Option<(Instant, Instant)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The client for `--kubeconfig`, else `KUBECONFIG`, else the pod's
/// in-cluster configuration, else `~/.kube/config`.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).with_context(|| format!("--kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None if std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty()) => {
            Config::from_kubeconfig(&KubeConfigOptions::default()).await.context("KUBECONFIG")?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            Config::incluster().context("the in-cluster configuration (service account)")?
        }
        None => Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .context("no --kubeconfig, no KUBECONFIG, not in a pod; ~/.kube/config")?,
    };
    Client::try_from(config).context("creating the Kubernetes client")
}

impl Follower {
    /// Starts watching. Returns at once: the API server may be away.
    pub fn start(client: Client, opts: &Options) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let mut config = watcher::Config::default();
        if let Some(sel) = opts.label_selector() {
            config = config.labels(&sel);
        }
        let (unreachable, mut probe_rx) = watch::channel(false);
        let mut tasks = vec![
            spawn_watch(Api::<Service>::all(client.clone()), config.clone(), tx.clone(), Msg::Service, "Services"),
            spawn_watch(Api::<EndpointSlice>::all(client.clone()), config, tx.clone(), Msg::Slice, "EndpointSlices"),
        ];
        // The watches go quiet while the server is away and may resume
        // without an event when it is back: ask it meanwhile.
        tasks.push(tokio::spawn(async move {
            loop {
                if probe_rx.wait_for(|u| *u).await.is_err() {
                    return;
                }
                tokio::time::sleep(PROBE_EVERY).await;
                let r = client.apiserver_version().await.map(|_| ()).map_err(|e| e.to_string());
                if tx.send(Msg::Probe(r)).await.is_err() {
                    return;
                }
            }
        }));
        Self {
            rx,
            which: opts.which,
            services: Kind::new(),
            slices: Kind::new(),
            state: ApiState::Connecting,
            since: Instant::now(),
            unreachable,
            pending: None,
            tasks,
        }
    }

    pub fn state(&self) -> ApiState {
        self.state
    }

    /// Both kinds have been listed completely at least once.
    pub fn listed(&self) -> bool {
        self.services.listed && self.slices.listed
    }

    /// Waits until both kinds have been listed completely.
    pub async fn until_listed(&mut self) {
        while !self.listed() {
            self.next().await;
        }
    }

    /// The service ports the objects as last reported make.
    pub fn selected(&self) -> Selected {
        Snapshot { services: self.services.objects.clone(), slices: self.slices.objects.clone() }.select(self.which)
    }

    /// Waits for the next notice. Cancel-safe: what was received is kept.
    pub async fn next(&mut self) -> Notice {
        loop {
            let msg = match self.pending {
                Some((first, last)) => {
                    let due = (last + QUIET).min(first + MAX_DELAY);
                    match tokio::time::timeout_at(due.into(), self.rx.recv()).await {
                        Ok(m) => m,
                        Err(_) => {
                            self.pending = None;
                            return Notice::Changed;
                        }
                    }
                }
                None => self.rx.recv().await,
            };
            // The senders live as long as the tasks, which `self` owns.
            let Some(msg) = msg else { return std::future::pending().await };
            if let Some(n) = self.handle(msg) {
                return n;
            }
        }
    }

    fn handle(&mut self, msg: Msg) -> Option<Notice> {
        // A watcher announces a list (Init) before asking for it: only
        // objects, or the end of a list, show that the server answers.
        let heard = !matches!(msg, Msg::Service(watcher::Event::Init) | Msg::Slice(watcher::Event::Init));
        let changed = match msg {
            Msg::Service(e) => self.services.apply(e),
            Msg::Slice(e) => self.slices.apply(e),
            Msg::Failed(what, e) => return self.failed(what, e),
            Msg::Probe(Ok(())) => false,
            Msg::Probe(Err(e)) => {
                log::debug!("kubernetes API still unreachable: {e}");
                return None;
            }
        };
        if changed && self.listed() {
            let now = Instant::now();
            self.pending = Some((self.pending.map_or(now, |p| p.0), now));
        }
        if heard { self.set_state(ApiState::Reachable) } else { None }
    }

    fn failed(&mut self, what: &str, e: watcher::Error) -> Option<Notice> {
        match &e {
            watcher::Error::WatchError(status) if status.code == 410 => {
                log::info!("watching {what}: resourceVersion expired (410 Gone); listing again, the running plan stays until the list is complete");
                return None;
            }
            // A stream that broke (cut mid-event, closed): the watch is
            // resumed at once from the last resourceVersion. Only failing to
            // start one again means the server is away.
            watcher::Error::WatchFailed(_) => {
                log::debug!("watching {what}: {e}; resuming");
                return None;
            }
            _ => log::debug!("watching {what}: {e}"),
        }
        if self.state == ApiState::Unreachable {
            return None;
        }
        log::warn!(
            "kubernetes API unreachable (watching {what}: {e}); the datapath keeps its plan and flows, retrying with backoff"
        );
        self.set_state(ApiState::Unreachable)
    }

    fn set_state(&mut self, state: ApiState) -> Option<Notice> {
        if state == self.state {
            return None;
        }
        let was = std::mem::replace(&mut self.state, state);
        let after = self.since.elapsed();
        self.since = Instant::now();
        let _ = self.unreachable.send(state == ApiState::Unreachable);
        if was == ApiState::Unreachable {
            log::info!("kubernetes API reachable again after {} s", after.as_secs());
        } else if state == ApiState::Reachable {
            log::info!("kubernetes API reachable; listing Services and EndpointSlices");
        }
        Some(Notice::State(state))
    }
}

fn spawn_watch<K>(api: Api<K>, config: watcher::Config, tx: mpsc::Sender<Msg>, wrap: fn(watcher::Event<K>) -> Msg, what: &'static str) -> JoinHandle<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
        while let Some(item) = stream.next().await {
            let msg = match item {
                Ok(e) => wrap(e),
                Err(e) => Msg::Failed(what, e),
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, rv: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": name, "resourceVersion": rv, "managedFields": [{"manager": "kubectl"}]},
        }))
        .unwrap()
    }

    fn names(k: &Kind<Service>) -> Vec<String> {
        k.objects.keys().map(|(_, n)| n.clone()).collect()
    }

    #[test]
    fn a_list_is_swapped_in_only_when_complete() {
        let mut k = Kind::new();
        for e in [watcher::Event::Init, watcher::Event::InitApply(svc("a", "1")), watcher::Event::InitApply(svc("b", "1"))] {
            assert!(!k.apply(e));
        }
        assert!(!k.listed && k.objects.is_empty(), "a partial first list was used");
        assert!(k.apply(watcher::Event::InitDone));
        assert_eq!(names(&k), ["a", "b"]);
        assert!(k.objects.values().all(|o| o.metadata.managed_fields.is_none()));
        // A relist (410 Gone) cut short, then a complete one: the objects stay
        // as they were until the complete one ends, and then lose what is gone.
        assert!(!k.apply(watcher::Event::Init));
        assert!(!k.apply(watcher::Event::InitApply(svc("a", "2"))));
        assert_eq!(names(&k), ["a", "b"], "a partial relist removed objects");
        assert!(!k.apply(watcher::Event::Init));
        assert!(!k.apply(watcher::Event::InitApply(svc("c", "3"))));
        assert!(!k.apply(watcher::Event::InitApply(svc("a", "3"))));
        assert_eq!(names(&k), ["a", "b"]);
        assert!(k.apply(watcher::Event::InitDone));
        assert_eq!(names(&k), ["a", "c"]);
        assert!(k.apply(watcher::Event::Delete(svc("c", "4"))));
        assert!(!k.apply(watcher::Event::Delete(svc("zz", "5"))), "deleting what is not there changes nothing");
        assert!(k.apply(watcher::Event::Apply(svc("d", "6"))));
        assert_eq!(names(&k), ["a", "d"]);
    }

    #[test]
    fn selectors() {
        let o = |which, selector: Option<&str>| Options { kubeconfig: None, which, selector: selector.map(str::to_owned) }.label_selector();
        assert_eq!(o(Which::Labelled, None).as_deref(), Some("service.kubernetes.io/service-proxy-name=wsfwd"));
        assert_eq!(o(Which::Labelled, Some("tier=chat")).as_deref(), Some("service.kubernetes.io/service-proxy-name=wsfwd,tier=chat"));
        assert_eq!(o(Which::All, None), None);
        assert_eq!(o(Which::All, Some("tier=chat")).as_deref(), Some("tier=chat"));
    }
}
