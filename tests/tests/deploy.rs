//! The DaemonSet manifests in `deploy/`: every object parses as its
//! Kubernetes type with no field left over (a misspelt field would be
//! silently dropped by the API server), and grants exactly what the agent
//! needs — the RBAC rules and the capabilities below, nothing more.
use std::{collections::BTreeSet, path::Path};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::ServiceAccount,
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use serde::{Deserialize as _, de::DeserializeOwned};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
/// What the agent does with the API server: follow Services and EndpointSlices.
const RULES: [(&str, &str, [&str; 3]); 2] =
    [("", "services", ["get", "list", "watch"]), ("discovery.k8s.io", "endpointslices", ["get", "list", "watch"])];
/// Load programs and maps; attach them and read routes and links; the verifier's pointer rules.
const CAPABILITIES: [&str; 3] = ["BPF", "NET_ADMIN", "PERFMON"];

fn docs(file: &str) -> Vec<serde_norway::Value> {
    let text = std::fs::read_to_string(Path::new(DEPLOY).join(file)).unwrap();
    serde_norway::Deserializer::from_str(&text).map(|d| serde_norway::Value::deserialize(d).unwrap()).filter(|v| !v.is_null()).collect()
}

/// `v` as a `T`, failing on any field `T` does not have.
fn strict<T: DeserializeOwned>(file: &str, v: serde_norway::Value) -> T {
    let mut unknown = Vec::new();
    let t = serde_ignored::deserialize(v, |path| unknown.push(path.to_string())).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(unknown.is_empty(), "{file}: unknown fields {unknown:?}");
    t
}

fn one<T: DeserializeOwned>(file: &str, kind: &str) -> T {
    let mut found: Vec<T> = docs(file).into_iter().filter(|d| d["kind"].as_str() == Some(kind)).map(|d| strict(file, d)).collect();
    assert_eq!(found.len(), 1, "{file}: one {kind}");
    found.remove(0)
}

#[test]
fn every_manifest_is_listed_and_parses_strictly() {
    let kustomization = &docs("kustomization.yaml")[0];
    let listed: BTreeSet<String> =
        kustomization["resources"].as_sequence().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect();
    let files: BTreeSet<String> = std::fs::read_dir(DEPLOY)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files);
    for f in &files {
        for d in docs(f) {
            let kind = d["kind"].as_str().unwrap().to_owned();
            match kind.as_str() {
                "ServiceAccount" => drop(strict::<ServiceAccount>(f, d)),
                "ClusterRole" => drop(strict::<ClusterRole>(f, d)),
                "ClusterRoleBinding" => drop(strict::<ClusterRoleBinding>(f, d)),
                "DaemonSet" => drop(strict::<DaemonSet>(f, d)),
                other => panic!("{f}: unexpected kind {other}"),
            }
        }
    }
}

#[test]
fn rbac_allows_reading_services_and_endpointslices_only() {
    let role: ClusterRole = one("rbac.yaml", "ClusterRole");
    let mut got: Vec<(String, String, Vec<String>)> = Vec::new();
    for r in role.rules.unwrap() {
        assert!(r.resource_names.is_none() && r.non_resource_urls.is_none(), "{r:?}");
        for g in r.api_groups.clone().unwrap() {
            for res in r.resources.clone().unwrap() {
                got.push((g.clone(), res, r.verbs.clone()));
            }
        }
    }
    let want: Vec<(String, String, Vec<String>)> =
        RULES.iter().map(|(g, r, v)| (g.to_string(), r.to_string(), v.iter().map(|s| s.to_string()).collect())).collect();
    assert_eq!(got, want);
    let binding: ClusterRoleBinding = one("rbac.yaml", "ClusterRoleBinding");
    let account: ServiceAccount = one("serviceaccount.yaml", "ServiceAccount");
    assert_eq!((binding.role_ref.kind.as_str(), binding.role_ref.name.as_str()), ("ClusterRole", role.metadata.name.as_deref().unwrap()));
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!((subject.kind.as_str(), Some(subject.name.as_str()), subject.namespace.as_deref()), ("ServiceAccount", account.metadata.name.as_deref(), account.metadata.namespace.as_deref()));
}

#[test]
fn the_daemonset_runs_unprivileged_with_the_capabilities_it_needs() {
    let ds: DaemonSet = one("daemonset.yaml", "DaemonSet");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true), "the agent attaches to the node's interfaces");
    assert_eq!(pod.service_account_name.as_deref(), Some("wsfwd"));
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, CAPABILITIES.into_iter().collect());
    // The node's bpffs, so the datapath outlives the pod.
    let mount = c.volume_mounts.iter().flatten().find(|m| m.mount_path == "/sys/fs/bpf").expect("bpffs mount");
    let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name).unwrap();
    assert_eq!(volume.host_path.as_ref().map(|h| h.path.as_str()), Some("/sys/fs/bpf"));
    let args = c.args.clone().unwrap();
    assert!(args.starts_with(&["run".into(), "--kubernetes".into()]), "{args:?}");
    let env = c.env.iter().flatten().find(|e| e.name == "NODE_NAME").unwrap();
    assert_eq!(env.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str()), Some("spec.nodeName"));
    // Probes and metrics on the port the agent is told to serve.
    let port = args.iter().find_map(|a| a.strip_prefix("--metrics-addr=")).and_then(|a| a.rsplit(':').next()).unwrap();
    for (probe, path) in [(&c.liveness_probe, "/healthz"), (&c.readiness_probe, "/readyz")] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(serde_json::to_value(&get.port).unwrap().to_string(), port);
    }
}
