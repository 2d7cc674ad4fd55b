//! Table-driven tests of the translation: real manifests in, model or exact errors out.
use std::net::Ipv4Addr;

use super::{Config, parse};
use crate::model::{Frontend, HashInput, Protocol, Service, TrafficPolicy};

const IM_SERVICE: &str = include_str!("../../../fixtures/seed/im-service.yaml");
const TESTIM_SERVICE: &str = include_str!("../../../fixtures/seed/testim-service.yaml");
const SEED_ENDPOINTS: &str = include_str!("../../../fixtures/seed/endpoints.yaml");
const SEED_DEPLOYMENT: &str = include_str!("../../../fixtures/seed/deployment.yaml");

fn ok(text: &str) -> Config {
    match parse(text) {
        Ok(c) => c,
        Err(e) => panic!("config rejected:\n{e}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(c) => panic!("config accepted: {:?}", c.services),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn one(text: &str) -> Service {
    let mut c = ok(text);
    assert_eq!(c.services.len(), 1, "{:?}", c.services);
    c.services.remove(0)
}

/// A Service with one port; `extra` is appended under `spec:`, `port` under the port.
fn service(name: &str, port: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  externalIPs: [192.168.0.150]\n  ports:\n  - {port}\n{extra}"
    )
}

fn slice(service: &str, ports: &str, endpoints: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-abc\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\n{ports}\nendpoints:\n{endpoints}"
    )
}

const ONE_ENDPOINT: &str = "- addresses: [10.0.0.1]";

fn docs(parts: &[&str]) -> String {
    parts.join("\n---\n")
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn seed_manifests_load_verbatim() {
    let text = docs(&[SEED_DEPLOYMENT, IM_SERVICE, TESTIM_SERVICE, SEED_ENDPOINTS]);
    let c = ok(&text);
    assert_eq!(c.services.len(), 2);
    let (im, testim) = (&c.services[0], &c.services[1]);

    assert_eq!(im.id(), "default/im-service:9080");
    assert_eq!(im.frontends, vec![Frontend::NodePort { port: 30100, protocol: Protocol::Tcp }]);
    assert_eq!(im.hash, HashInput::FiveTuple);
    assert_eq!(im.affinity_timeout_seconds, None);

    assert_eq!(testim.id(), "default/testim-service:9080");
    assert_eq!(
        testim.frontends,
        vec![Frontend::ExternalIp { address: ip("192.168.0.150"), port: 9080, protocol: Protocol::Tcp }]
    );
    assert_eq!(testim.hash, HashInput::ClientIp);
    assert_eq!(testim.scheduler.as_deref(), Some("sh"));
    assert_eq!(testim.affinity_timeout_seconds, Some(10_800), "Kubernetes' default timeout");

    for s in [im, testim] {
        let addrs: Vec<_> = s.endpoints.iter().map(|e| (e.address, e.port, e.ready)).collect();
        assert_eq!(
            addrs,
            vec![(ip("10.244.1.10"), 9080, true), (ip("10.244.2.10"), 9080, true), (ip("10.244.3.10"), 9080, true)]
        );
    }
    assert!(c.notes.warnings.is_empty(), "{:?}", c.notes.warnings);
}

#[test]
fn seed_services_without_endpoints_say_so() {
    let c = ok(&docs(&[IM_SERVICE, TESTIM_SERVICE]));
    for s in &c.services {
        assert!(s.endpoints.is_empty());
        assert_eq!(s.endpoint_notes, vec!["no EndpointSlice or Endpoints for this Service in the file"]);
    }
}

#[test]
fn other_kinds_are_skipped_with_one_line_each() {
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\n  namespace: chat\ndata: {a: b}";
    let c = ok(&docs(&[SEED_DEPLOYMENT, TESTIM_SERVICE, cm]));
    assert_eq!(c.services.len(), 1);
    assert_eq!(
        c.notes.infos,
        vec![
            "document 1: skipping Deployment default/im: wsfwd reads only Service, EndpointSlice and Endpoints",
            "document 3: skipping ConfigMap chat/cfg: wsfwd reads only Service, EndpointSlice and Endpoints",
        ]
    );
}

#[test]
fn endpoint_ports_match_service_ports_by_name() {
    // (service port, endpoint object ports, expected endpoint port or None for "no endpoints")
    let cases: &[(&str, &str, Option<u16>)] = &[
        // Unnamed Service port, unnamed endpoint port.
        ("port: 9080", "ports: [{port: 9090}]", Some(9090)),
        ("port: 9080", "ports: [{name: \"\", port: 9090, protocol: TCP}]", Some(9090)),
        // A named targetPort was resolved by Kubernetes into the endpoint port of the same name.
        ("{name: ws, port: 80, targetPort: websocket}", "ports: [{name: ws, port: 8080}]", Some(8080)),
        // The numeric targetPort is not consulted when the endpoint object has ports.
        ("{name: ws, port: 80, targetPort: 1234}", "ports: [{name: ws, port: 8080}]", Some(8080)),
        // Names must match exactly; no fallback to the only port.
        ("{name: ws, port: 80}", "ports: [{name: other, port: 8080}]", None),
        ("port: 9080", "ports: [{name: ws, port: 9090}]", None),
        // Protocols must match too, as kube-proxy keys endpoints by name and protocol.
        ("{port: 53, protocol: UDP}", "ports: [{port: 5353, protocol: TCP}]", None),
        ("{port: 53, protocol: UDP}", "ports: [{port: 5353, protocol: UDP}]", Some(5353)),
        // No ports listed at all: the numeric targetPort, else the port.
        ("{port: 80, targetPort: 9090}", "ports: []", Some(9090)),
        ("{port: 80, targetPort: 9090}", "", Some(9090)),
        ("{port: 80}", "", Some(80)),
    ];
    for (i, (svc_port, ep_ports, want)) in cases.iter().enumerate() {
        let text = docs(&[&service("s", svc_port, ""), &slice("s", ep_ports, ONE_ENDPOINT)]);
        let s = one(&text);
        match want {
            Some(port) => {
                assert_eq!(s.endpoints.len(), 1, "case {i}: {svc_port} / {ep_ports}");
                assert_eq!(s.endpoints[0].port, *port, "case {i}: {svc_port} / {ep_ports}");
                assert!(s.endpoint_notes.is_empty(), "case {i}");
            }
            None => {
                assert!(s.endpoints.is_empty(), "case {i}: {svc_port} / {ep_ports}: {:?}", s.endpoints);
                assert_eq!(s.endpoint_notes.len(), 1, "case {i}: no note saying why");
                assert!(s.endpoint_notes[0].starts_with("EndpointSlice default/s-abc has no port named"), "case {i}");
            }
        }
    }
}

#[test]
fn conditions_follow_kubernetes_defaults() {
    let eps = "\
- addresses: [10.0.0.1]
- addresses: [10.0.0.2]
  conditions: {}
- addresses: [10.0.0.3]
  conditions: {ready: false}
- addresses: [10.0.0.4]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.0.0.5]
  conditions: {ready: true, serving: true, terminating: false}
- addresses: [10.0.0.6]
  conditions: {ready: false, serving: false, terminating: true}";
    let s = one(&docs(&[&service("s", "port: 80", ""), &slice("s", "ports: [{port: 80}]", eps)]));
    let got: Vec<_> = s.endpoints.iter().map(|e| (e.ready, e.serving, e.terminating, e.takes_new_flows())).collect();
    assert_eq!(
        got,
        vec![
            (true, true, false, true),   // nil conditions
            (true, true, false, true),   // empty conditions
            (false, true, false, false), // not ready
            (false, true, true, false),  // serving but terminating: modelled, takes no new flows
            (true, true, false, true),
            (false, false, true, false),
        ]
    );
}

#[test]
fn v1_endpoints_are_read_when_there_is_no_slice() {
    let eps = "apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: s\nsubsets:\n- addresses: [{ip: 10.0.0.1}, {ip: 10.0.0.2}]\n  notReadyAddresses: [{ip: 10.0.0.3}]\n  ports: [{name: ws, port: 8080}]";
    let s = one(&docs(&[&service("s", "{name: ws, port: 80}", ""), eps]));
    let got: Vec<_> = s.endpoints.iter().map(|e| (e.address, e.port, e.ready)).collect();
    assert_eq!(
        got,
        vec![(ip("10.0.0.1"), 8080, true), (ip("10.0.0.2"), 8080, true), (ip("10.0.0.3"), 8080, false)]
    );

    // With a slice present, the slice wins, as in kube-proxy.
    let c = ok(&docs(&[&service("s", "{name: ws, port: 80}", ""), eps, &slice("s", "ports: [{name: ws, port: 9}]", ONE_ENDPOINT)]));
    assert_eq!(c.services[0].endpoints.len(), 1);
    assert_eq!(c.services[0].endpoints[0].port, 9);
    assert!(c.notes.infos.iter().any(|n| n.contains("Endpoints default/s: ignored")), "{:?}", c.notes.infos);
}

#[test]
fn slices_are_merged_and_duplicates_collapse() {
    let a = slice("s", "ports: [{port: 80}]", "- addresses: [10.0.0.2]\n  conditions: {ready: false}\n- addresses: [10.0.0.1]");
    let b = slice("s", "ports: [{port: 80}]", "- addresses: [10.0.0.2]\n- addresses: [10.0.0.3]");
    let s = one(&docs(&[&service("s", "port: 80", ""), &a, &b]));
    let got: Vec<_> = s.endpoints.iter().map(|e| (e.address, e.ready)).collect();
    assert_eq!(got, vec![(ip("10.0.0.1"), true), (ip("10.0.0.2"), true), (ip("10.0.0.3"), true)]);
}

#[test]
fn scheduler_and_affinity() {
    let sh = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  annotations: {kube-router.io/service.scheduler: SCHED}\nspec:\n  externalIPs: [1.2.3.4]\n  ports: [{port: 80}]\nAFF";
    let cases = [
        ("sh", "", HashInput::ClientIp, None, false),
        ("rr", "", HashInput::FiveTuple, None, true),
        ("rr", "  sessionAffinity: ClientIP", HashInput::ClientIp, Some(10_800), true),
        ("sh", "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}", HashInput::ClientIp, Some(60), false),
        ("sh", "  sessionAffinity: None", HashInput::ClientIp, None, false),
    ];
    for (sched, aff, hash, timeout, logged) in cases {
        let text = sh.replace("SCHED", sched).replace("\nAFF", &format!("\n{aff}"));
        let c = ok(&text);
        let s = &c.services[0];
        assert_eq!((s.hash, s.affinity_timeout_seconds), (hash, timeout), "{sched} {aff}");
        let notes: Vec<_> = c.notes.infos.iter().filter(|n| n.contains("is not implemented")).collect();
        assert_eq!(notes.len(), usize::from(logged), "{sched} {aff}: {notes:?}");
    }
}

#[test]
fn external_traffic_policy() {
    let cluster = one(&service("s", "port: 80", ""));
    assert_eq!(cluster.external_traffic_policy, TrafficPolicy::Cluster);
    let local = one(&service("s", "port: 80", "  externalTrafficPolicy: Local"));
    assert_eq!(local.external_traffic_policy, TrafficPolicy::Local);
}

#[test]
fn unknown_fields_are_warned_with_their_path() {
    let text = docs(&[
        &service("s", "{port: 80, tagetPort: 9080}", "  sesionAffinity: ClientIP"),
        &slice("s", "ports: [{port: 80}]", "- addresses: [10.0.0.1]\n  condition: {ready: true}"),
    ]);
    let c = ok(&text);
    assert_eq!(
        c.notes.warnings,
        vec![
            "document 1, Service default/s, spec.ports[0].tagetPort: unknown field, ignored",
            "document 1, Service default/s, spec.sesionAffinity: unknown field, ignored",
            "document 2, EndpointSlice default/s-abc, endpoints[0].condition: unknown field, ignored",
        ]
    );
}

#[test]
fn errors_name_document_object_and_field() {
    let svc = |port: &str, extra: &str| service("s", port, extra);
    let cases: Vec<(String, &str)> = vec![
        (
            docs(&[&svc("port: 80", ""), &slice("s", "ports: [{port: 80}]", "- addresses: [\"300.1.1.1\"]")]),
            r#"document 2, EndpointSlice default/s-abc, endpoints[0].addresses[0]: "300.1.1.1" is not an IPv4 address"#,
        ),
        (
            docs(&[&svc("port: 80", ""), &slice("s", "ports: [{port: 80}]", "- addresses: [\"fd00::1\"]")]),
            r#"document 2, EndpointSlice default/s-abc, endpoints[0].addresses[0]: "fd00::1": IPv6 is not supported yet"#,
        ),
        (
            docs(&[&svc("port: 80", ""), &slice("s", "ports: [{port: 80}]", "- addresses: []")]),
            "document 2, EndpointSlice default/s-abc, endpoints[0].addresses: at least one address is required",
        ),
        (
            docs(&[&svc("port: 80", ""), &slice("s", "ports: [{port: 80}]", ONE_ENDPOINT).replace("IPv4", "IPv6")]),
            "document 2, EndpointSlice default/s-abc, addressType: IPv6 is not supported yet",
        ),
        (
            docs(&[&svc("port: 80", ""), &slice("s", "ports: [{port: 0}]", ONE_ENDPOINT)]),
            "document 2, EndpointSlice default/s-abc, ports[0].port: 0 is not a valid port (1-65535)",
        ),
        (
            svc("port: 80", "").replace("192.168.0.150", "\"fd00::150\""),
            r#"document 1, Service default/s, spec.externalIPs[0]: "fd00::150": IPv6 is not supported yet"#,
        ),
        (
            svc("port: 80", "").replace("192.168.0.150", "192.168.0"),
            r#"document 1, Service default/s, spec.externalIPs[0]: "192.168.0" is not an IPv4 address"#,
        ),
        (svc("port: 70000", ""), "document 1, Service default/s, spec.ports[0].port: 70000 is not a valid port (1-65535)"),
        (
            svc("{port: 80, protocol: SCTP}", ""),
            "document 1, Service default/s, spec.ports[0].protocol: SCTP is not supported (TCP and UDP are)",
        ),
        (
            svc("{port: 80, protocol: tcp}", ""),
            r#"document 1, Service default/s, spec.ports[0].protocol: "tcp" is not a protocol (TCP, UDP)"#,
        ),
        (
            svc("port: 80", "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}"),
            "document 1, Service default/s, spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is out of range (1-86400)",
        ),
        (
            svc("port: 80", "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}"),
            "document 1, Service default/s, spec.sessionAffinityConfig.clientIP.timeoutSeconds: 86401 is out of range (1-86400)",
        ),
        (
            svc("port: 80", "  sessionAffinity: Sticky"),
            r#"document 1, Service default/s, spec.sessionAffinity: "Sticky" is not valid (None, ClientIP)"#,
        ),
        (
            svc("port: 80", "  externalTrafficPolicy: Nearby"),
            r#"document 1, Service default/s, spec.externalTrafficPolicy: "Nearby" is not valid (Cluster, Local)"#,
        ),
        (
            svc("port: 80", "  type: Public"),
            r#"document 1, Service default/s, spec.type: "Public" is not a Service type (ClusterIP, NodePort, LoadBalancer, ExternalName)"#,
        ),
        (
            svc("port: 80", "  type: NodePort"),
            "document 1, Service default/s, spec.ports[0].nodePort: missing; type NodePort needs it set (wsfwd reads the file as written and allocates none)",
        ),
        (
            svc("port: 80\n  - port: 81", ""),
            "document 1, Service default/s, spec.ports[0].name: required when the Service has more than one port\n\
             document 1, Service default/s, spec.ports[1].name: required when the Service has more than one port",
        ),
        (
            svc("port: abc", ""),
            "document 1, Service default/s, spec.ports[0].port: invalid type: string \"abc\", expected i32",
        ),
        (
            docs(&[&svc("{port: 80, targetPort: ws}", ""), &slice("s", "", ONE_ENDPOINT)]),
            r#"document 1, Service default/s, spec.ports[0].targetPort: named port "ws" cannot be resolved: EndpointSlice default/s-abc lists no ports"#,
        ),
        (
            docs(&[&svc("port: 80", ""), &service("t", "port: 80", "")]),
            "document 2, Service default/t, spec.externalIPs: frontend 192.168.0.150:80/TCP is claimed by both Service default/s (document 1) and Service default/t",
        ),
        (
            docs(&[IM_SERVICE, &IM_SERVICE.replace("im-service", "im-copy")]),
            "document 2, Service default/im-copy, spec.ports.nodePort: frontend <node>:30100/TCP is claimed by both Service default/im-service (document 1) and Service default/im-copy",
        ),
        (docs(&[&svc("port: 80", ""), &svc("port: 81", "")]), "document 2, Service default/s, metadata.name: Service default/s is defined twice (also in document 1)"),
        (
            slice("s", "", ONE_ENDPOINT).replace("discovery.k8s.io/v1", "discovery.k8s.io/v1beta1"),
            r#"document 1, EndpointSlice default/s-abc, apiVersion: "discovery.k8s.io/v1beta1" is not supported for EndpointSlice; use "discovery.k8s.io/v1""#,
        ),
        ("apiVersion: v1\nmetadata: {name: x}".into(), "document 1, kind: missing; every object needs apiVersion and kind"),
        ("- just\n- a list".into(), "document 1: not a Kubernetes object (expected a mapping with apiVersion and kind)"),
    ];
    for (text, want) in &cases {
        assert_eq!(errors(text).join("\n"), *want, "for:\n{text}");
    }
}

#[test]
fn yaml_syntax_errors_name_the_document_and_line() {
    let text = docs(&[TESTIM_SERVICE, "kind: Service\n  bad: [unclosed"]);
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("document 2: invalid YAML: "), "{errs:?}");
    assert!(errs[0].contains("line"), "{errs:?}");
}

#[test]
fn every_error_is_reported_and_nothing_is_accepted() {
    let text = docs(&[
        TESTIM_SERVICE,
        &slice("testim-service", "ports: [{port: 9080}]", "- addresses: [1.2.3.400]\n- addresses: [10.0.0.1]"),
        &service("other", "port: 0", ""),
    ]);
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].starts_with("document 2, EndpointSlice"), "{errs:?}");
    assert!(errs[1].starts_with("document 3, Service default/other, spec.ports[0].port"), "{errs:?}");
}
