//! What a new configuration changes, in words for the log. Pure: the agent
//! applies the new plan whole, and this says what an operator would want to
//! know about it (and whether there is anything to apply at all).
use std::collections::BTreeMap;

use crate::model::{Endpoint, Service};

fn state(e: &Endpoint) -> &'static str {
    match (e.ready, e.serving, e.terminating) {
        (true, _, _) => "ready",
        (false, true, true) => "terminating (serving)",
        (false, _, true) => "terminating",
        _ => "not ready",
    }
}

/// One line per service added or removed, and per endpoint that came, left
/// or changed state; an empty list when nothing changed.
pub fn describe(old: &[Service], new: &[Service]) -> Vec<String> {
    let old: BTreeMap<String, &Service> = old.iter().map(|s| (s.id(), s)).collect();
    let new: BTreeMap<String, &Service> = new.iter().map(|s| (s.id(), s)).collect();
    let mut out = Vec::new();
    for (id, s) in &new {
        let Some(o) = old.get(id) else {
            out.push(format!("service {id} added ({} endpoints)", s.endpoints.len()));
            continue;
        };
        if o == s {
            continue;
        }
        let before: BTreeMap<_, _> = o.endpoints.iter().map(|e| ((e.address, e.port), e)).collect();
        let after: BTreeMap<_, _> = s.endpoints.iter().map(|e| ((e.address, e.port), e)).collect();
        let mut said = false;
        for (k, e) in &after {
            match before.get(k) {
                None => out.push(format!("service {id}: endpoint {}:{} added, {}", k.0, k.1, state(e))),
                Some(b) if state(b) != state(e) => out.push(format!("service {id}: endpoint {}:{} now {}", k.0, k.1, state(e))),
                Some(_) => continue,
            }
            said = true;
        }
        for k in before.keys().filter(|k| !after.contains_key(k)) {
            out.push(format!("service {id}: endpoint {}:{} removed (its flows drain)", k.0, k.1));
            said = true;
        }
        if !said {
            out.push(format!("service {id} changed (frontends, policy or scheduling)"));
        }
    }
    for id in old.keys().filter(|id| !new.contains_key(*id)) {
        out.push(format!("service {id} removed"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::describe;
    use crate::config;

    const SEED_DEMO: &str = include_str!("../../fixtures/seed-demo.yaml");

    #[test]
    fn nothing_changed_says_nothing() {
        let a = config::parse(SEED_DEMO).unwrap().services;
        assert!(describe(&a, &a).is_empty());
    }

    #[test]
    fn endpoints_added_removed_and_not_ready_are_named() {
        let a = config::parse(SEED_DEMO).unwrap().services;
        let text = SEED_DEMO
            .replacen("- addresses: [\"10.244.2.10\"]\n  conditions: {ready: true", "- addresses: [\"10.244.2.10\"]\n  conditions: {ready: false", 1)
            .replace("10.244.3.10", "10.244.4.10");
        let b = config::parse(&text).unwrap().services;
        let lines = describe(&a, &b);
        let has = |s: &str| lines.iter().any(|l| l.contains(s));
        assert!(has("endpoint 10.244.4.10:9080 added, ready"), "{lines:#?}");
        assert!(has("endpoint 10.244.3.10:9080 removed (its flows drain)"), "{lines:#?}");
        assert!(has("endpoint 10.244.2.10:9080 now not ready"), "{lines:#?}");
        let only_one: Vec<_> = a.iter().filter(|s| s.name == "im-service").cloned().collect();
        let lines = describe(&only_one, &a);
        assert_eq!(lines, vec!["service default/testim-service:9080 added (3 endpoints)"], "{lines:#?}");
        let lines = describe(&a, &only_one);
        assert_eq!(lines, vec!["service default/testim-service:9080 removed"]);
    }
}
