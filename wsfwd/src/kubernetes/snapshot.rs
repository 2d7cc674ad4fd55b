//! The cluster's Services and EndpointSlices as the watches last showed
//! them, and the service ports wsfwd forwards from them — through the same
//! translation as a file. One Service that does not translate is skipped
//! alone, with its reason, as kube-proxy skips it: the rest are applied.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::{
    config::{self, Notes},
    model,
};

/// The label EndpointSlices carry to name their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Which Services wsfwd forwards (`--services`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// Those labelled `service.kubernetes.io/service-proxy-name: wsfwd`,
    /// which kube-proxy then leaves alone.
    Labelled,
    /// Every Service's externalIPs, NodePorts and LoadBalancer IPs, beside
    /// kube-proxy; not those labelled for another proxy.
    All,
}

/// Namespace and name.
pub type Key = (String, String);

pub fn key_of(meta: &ObjectMeta) -> Key {
    (meta.namespace.clone().unwrap_or_else(|| "default".into()), meta.name.clone().unwrap_or_default())
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: BTreeMap<Key, Service>,
    /// By the slice's own namespace and name.
    pub slices: BTreeMap<Key, EndpointSlice>,
}

/// What a snapshot translates to.
#[derive(Debug, Default)]
pub struct Selected {
    pub services: Vec<model::Service>,
    pub notes: Notes,
    /// Services left out because they do not translate, with every reason.
    pub skipped: BTreeMap<Key, Vec<String>>,
}

impl Snapshot {
    /// The service ports to forward. Headless and ExternalName Services have
    /// nothing to forward; IPv6 addresses and slices are left out (IPv4 only).
    pub fn select(&self, which: Which) -> Selected {
        let mut notes = Notes::default();
        let proxy = |s: &Service| s.metadata.labels.as_ref().and_then(|l| l.get(super::PROXY_NAME_LABEL)).cloned();
        let ours = |s: &Service| match (which, proxy(s)) {
            (_, Some(p)) => p == super::PROXY_NAME,
            (Which::All, None) => true,
            (Which::Labelled, None) => false,
        };
        let mut candidates: BTreeMap<Key, Service> =
            self.services.iter().filter(|(_, s)| ours(s)).filter_map(|(k, s)| Some((k.clone(), prepare(s)?))).collect();
        // Slices of the candidates, and which Service each belongs to.
        let mut slices: BTreeMap<Key, Vec<EndpointSlice>> = BTreeMap::new();
        let mut owner: BTreeMap<String, Key> = BTreeMap::new();
        for (k, slice) in &self.slices {
            if slice.address_type != "IPv4" {
                continue;
            }
            let Some(svc) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else { continue };
            let svc = (k.0.clone(), svc.clone());
            if candidates.contains_key(&svc) {
                owner.insert(format!("EndpointSlice {}/{}", k.0, k.1), svc.clone());
                slices.entry(svc).or_default().push(slice.clone());
            }
        }
        let mut skipped: BTreeMap<Key, Vec<String>> = BTreeMap::new();
        loop {
            let of_candidates = slices.iter().filter(|(k, _)| candidates.contains_key(*k)).flat_map(|(_, v)| v.iter().cloned());
            match config::from_objects(candidates.values().cloned(), of_candidates) {
                Ok(cfg) => {
                    notes.warnings.extend(cfg.notes.warnings);
                    notes.infos.extend(cfg.notes.infos);
                    return Selected { services: cfg.services, notes, skipped };
                }
                Err(errors) => {
                    let before = candidates.len();
                    for e in errors.0 {
                        let label = e.object.clone().unwrap_or_default();
                        let guilty = match label.strip_prefix("Service ") {
                            Some(ns_name) => ns_name.split_once('/').map(|(n, s)| (n.to_owned(), s.to_owned())),
                            None => owner.get(&label).cloned(),
                        };
                        // An error no object owns cannot be pinned on one Service: none is applied.
                        let keys: Vec<Key> = match guilty {
                            Some(k) => vec![k],
                            None => candidates.keys().cloned().collect(),
                        };
                        for k in keys {
                            candidates.remove(&k);
                            skipped.entry(k).or_default().push(e.to_string());
                        }
                    }
                    if candidates.len() == before {
                        // Nothing attributable was removed: stop rather than loop.
                        for k in std::mem::take(&mut candidates).into_keys() {
                            skipped.entry(k).or_default().push("skipped with the rest: an error no Service owns".into());
                        }
                    }
                }
            }
        }
    }
}

/// The Service as wsfwd reads it, or `None` when it has nothing to forward:
/// externalIPs and LoadBalancer ingress IPs (IPv4) become its external IPs.
fn prepare(svc: &Service) -> Option<Service> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") || spec.cluster_ip.as_deref() == Some("None") {
        return None;
    }
    let is_v6 = |s: &String| s.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6());
    let mut ips: Vec<String> = spec.external_ips.iter().flatten().filter(|s| !is_v6(s)).cloned().collect();
    if spec.type_.as_deref() == Some("LoadBalancer") {
        let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
        // `ipMode: Proxy`: the load balancer proxies, the node never sees that address.
        for i in ingress.into_iter().flatten().filter(|i| i.ip_mode.as_deref() != Some("Proxy")) {
            if let Some(ip) = i.ip.as_ref().filter(|ip| !is_v6(ip) && !ips.contains(ip)) {
                ips.push(ip.clone());
            }
        }
    }
    let mut svc = svc.clone();
    let spec = svc.spec.as_mut()?;
    spec.external_ips = (!ips.is_empty()).then_some(ips);
    // Kubernetes keeps the status; the translation reads only the spec.
    svc.status = None;
    Some(svc)
}

/// Service keys whose translation changed between two selections, for
/// logging skipped Services once rather than on every update.
pub fn newly_skipped<'a>(before: &BTreeMap<Key, Vec<String>>, now: &'a BTreeMap<Key, Vec<String>>) -> BTreeSet<&'a Key> {
    now.iter().filter(|(k, why)| before.get(*k) != Some(*why)).map(|(k, _)| k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ns: &str, name: &str, spec: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": ns, "name": name},
            "spec": spec,
        }))
        .unwrap()
    }

    fn slice(ns: &str, name: &str, svc: &str, addrs: &[&str], ready: bool) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "ports": [{"name": "ws", "port": 9080, "protocol": "TCP"}],
            "endpoints": addrs.iter().map(|a| serde_json::json!({"addresses": [a], "conditions": {"ready": ready}})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn snapshot(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Snapshot {
        Snapshot {
            services: services.into_iter().map(|s| (key_of(&s.metadata), s)).collect(),
            slices: slices.into_iter().map(|s| (key_of(&s.metadata), s)).collect(),
        }
    }

    fn web(ns: &str, name: &str, ip: &str) -> Service {
        service(ns, name, serde_json::json!({"externalIPs": [ip], "ports": [{"name": "ws", "port": 9080, "targetPort": 9080}]}))
    }

    #[test]
    fn slices_of_one_service_are_merged_and_bad_services_skipped_alone() {
        let snap = snapshot(
            vec![
                web("chat", "im", "192.168.0.150"),
                // Port 0 does not translate: this Service alone is skipped.
                service("chat", "broken", serde_json::json!({"externalIPs": ["192.168.0.151"], "ports": [{"port": 0}]})),
            ],
            vec![slice("chat", "im-a", "im", &["10.244.1.10"], true), slice("chat", "im-b", "im", &["10.244.2.10", "10.244.3.10"], true)],
        );
        let sel = snap.select(Which::All);
        assert_eq!(sel.services.len(), 1, "{sel:#?}");
        let addrs: Vec<String> = sel.services[0].endpoints.iter().map(|e| e.address.to_string()).collect();
        assert_eq!(addrs, ["10.244.1.10", "10.244.2.10", "10.244.3.10"]);
        let why = &sel.skipped[&("chat".to_owned(), "broken".to_owned())];
        assert!(why[0].contains("Service chat/broken") && why[0].contains("spec.ports[0].port") && !why[0].contains("document"), "{why:?}");
    }

    #[test]
    fn a_bad_slice_skips_its_service_only() {
        let mut bad = slice("chat", "other-a", "other", &["10.244.9.10"], true);
        bad.endpoints[0].addresses = vec!["300.1.1.1".into()];
        let snap = snapshot(vec![web("chat", "im", "192.168.0.150"), web("chat", "other", "192.168.0.151")], vec![slice("chat", "im-a", "im", &["10.244.1.10"], true), bad]);
        let sel = snap.select(Which::All);
        assert_eq!(sel.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["im"]);
        assert!(sel.skipped[&("chat".to_owned(), "other".to_owned())][0].contains("EndpointSlice chat/other-a"));
    }

    #[test]
    fn headless_external_name_and_ipv6_are_left_out_and_lb_ingress_is_served() {
        let snap = snapshot(
            vec![
                service("a", "headless", serde_json::json!({"clusterIP": "None", "externalIPs": ["192.168.0.1"], "ports": [{"port": 80}]})),
                service("a", "ext", serde_json::json!({"type": "ExternalName", "externalName": "example.com"})),
                service("a", "dual", serde_json::json!({"externalIPs": ["2001:db8::1", "192.168.0.2"], "ports": [{"name": "ws", "port": 9080}]})),
                serde_json::from_value(serde_json::json!({
                    "apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "a", "name": "lb"},
                    "spec": {"type": "LoadBalancer", "ports": [{"name": "ws", "port": 9080, "nodePort": 30080}]},
                    "status": {"loadBalancer": {"ingress": [{"ip": "192.168.0.3"}, {"ip": "192.168.0.4", "ipMode": "Proxy"}, {"ip": "2001:db8::3"}]}},
                }))
                .unwrap(),
            ],
            vec![],
        );
        let sel = snap.select(Which::All);
        assert!(sel.skipped.is_empty(), "{:?}", sel.skipped);
        let fronts: Vec<String> = sel.services.iter().flat_map(|s| s.frontends.iter().map(|f| format!("{}:{f}", s.name))).collect();
        assert_eq!(fronts, ["dual:192.168.0.2:9080/TCP", "lb:192.168.0.3:9080/TCP", "lb:<node>:30080/TCP"]);
    }

    #[test]
    fn labelled_takes_only_ours_and_all_leaves_other_proxies_alone() {
        let mut mine = web("a", "mine", "192.168.0.1");
        mine.metadata.labels = Some([(super::super::PROXY_NAME_LABEL.to_owned(), "wsfwd".to_owned())].into());
        let mut theirs = web("a", "theirs", "192.168.0.2");
        theirs.metadata.labels = Some([(super::super::PROXY_NAME_LABEL.to_owned(), "other".to_owned())].into());
        let snap = snapshot(vec![mine, theirs, web("a", "plain", "192.168.0.3")], vec![]);
        let names = |w| snap.select(w).services.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(Which::Labelled), ["mine"]);
        assert_eq!(names(Which::All), ["mine", "plain"]);
    }

    #[test]
    fn a_frontend_claimed_twice_keeps_its_first_service() {
        let snap = snapshot(vec![web("a", "first", "192.168.0.150"), web("b", "second", "192.168.0.150")], vec![]);
        let sel = snap.select(Which::All);
        assert_eq!(sel.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["first"]);
        assert!(sel.skipped[&("b".to_owned(), "second".to_owned())][0].contains("claimed by both"));
    }
}
