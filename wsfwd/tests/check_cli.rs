//! `wsfwd check` as a user runs it: the real binary on real files.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(name)
}

fn wsfwd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wsfwd"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run wsfwd")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_prints_the_seed_plan() {
    let demo = fixture("seed-demo.yaml");
    let out = wsfwd(&["check", "--config", demo.to_str().unwrap()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("service default/testim-service:9080 (TCP port 9080)"), "{stdout}");
    assert!(stdout.contains("frontends:  192.168.0.150:9080/TCP"), "{stdout}");
    assert!(stdout.contains("affinity:   ClientIP, 10800s"), "{stdout}");
    assert!(stdout.contains("frontends:  <node>:30100/TCP"), "{stdout}");
    assert!(stdout.contains("maglev:     509 slots over 3 ready endpoint(s)"), "{stdout}");
    assert!(stderr.contains("skipping Deployment default/im"), "{stderr}");
}

#[test]
fn check_json_is_the_same_plan() {
    let demo = fixture("seed-demo.yaml");
    for seed in ["1", "2"] {
        let out = wsfwd(&["check", "--config", demo.to_str().unwrap(), "--json", "--hash-seed", seed]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
        assert_eq!(plan["hashSeed"], seed.parse::<u32>().unwrap());
        let services = plan["services"].as_array().unwrap();
        let ids: Vec<_> = services.iter().map(|s| s["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["default/im-service:9080", "default/testim-service:9080"]);
        for s in services {
            let size = s["tableSize"].as_u64().unwrap();
            let slots: Vec<u64> = s["endpoints"].as_array().unwrap().iter().map(|e| e["slots"].as_u64().unwrap()).collect();
            assert_eq!(slots.iter().sum::<u64>(), size);
            assert!(slots.iter().max().unwrap() - slots.iter().min().unwrap() <= 1, "{slots:?}");
        }
        assert_eq!(services[1]["hash"], "clientIp");
        assert_eq!(services[1]["affinityTimeoutSeconds"], 10800);
        assert_eq!(services[1]["endpoints"][0]["address"], "10.244.1.10");
        assert_eq!(services[1]["endpoints"][0]["ready"], true);
    }
}

#[test]
fn a_bad_file_exits_2_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("wsfwd-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    let good = std::fs::read_to_string(fixture("seed-demo.yaml")).unwrap();
    std::fs::write(&bad, good.replace("10.244.2.10", "300.1.1.1")).unwrap();
    let out = wsfwd(&["check", "--config", bad.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty(), "a rejected file prints no plan");
    assert!(
        stderr.contains(
            r#"error: document 4, EndpointSlice default/testim-service-7xk2p, endpoints[1].addresses[0]: "300.1.1.1" is not an IPv4 address"#
        ),
        "{stderr}"
    );
    assert!(stderr.contains("rejected (2 error(s)); nothing applied"), "{stderr}");
}

#[test]
fn a_missing_file_exits_2() {
    let out = wsfwd(&["check", "--config", "/nonexistent/wsfwd.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/wsfwd.yaml"));
}

#[test]
fn help_says_what_is_served() {
    let out = wsfwd(&["--help"]);
    let help = text(&out.stdout);
    assert!(out.status.success());
    assert!(help.contains("ClusterIPs are not served"), "{help}");
    let out = wsfwd(&["check", "--help"]);
    assert!(text(&out.stdout).contains("--hash-seed"));
}
