//! The deployment files hold together: docker-compose.yml (services, replicas, healthchecks,
//! no container_name or host port on the worker, a stop grace longer than the drain, the
//! mounted files exist), the Dockerfile is multi-stage, and every Kubernetes manifest is valid
//! YAML with probes on the paths the binary serves and a KEDA scaler on the real streams.
use serde::Deserialize;
use serde_yaml::Value;
use std::path::{Path, PathBuf};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// "45s", "1m30s" -> seconds.
fn seconds(d: &str) -> u64 {
    let mut total = 0;
    let mut n = String::new();
    for c in d.chars() {
        if c.is_ascii_digit() {
            n.push(c);
        } else {
            let v: u64 = n.parse().unwrap_or(0);
            total += match c {
                'h' => v * 3600,
                'm' => v * 60,
                _ => v,
            };
            n.clear();
        }
    }
    total
}

#[test]
fn the_compose_file_runs_a_scalable_cluster() {
    let c = yaml("docker-compose.yml");
    let services = c["services"].as_mapping().expect("services");
    for name in [
        "redis",
        "postgres",
        "prometheus",
        "grafana",
        "mock-provider",
        "api",
        "worker",
    ] {
        assert!(services.contains_key(name), "service {name}");
        assert!(
            !c["services"][name]["healthcheck"]["test"].is_null(),
            "{name} has a healthcheck"
        );
    }
    let w = &c["services"]["worker"];
    assert_eq!(w["deploy"]["replicas"].as_u64(), Some(3));
    assert!(
        w["container_name"].is_null(),
        "a named container cannot scale"
    );
    assert!(w["ports"].is_null(), "a host port cannot scale");
    let drain: u64 = w["environment"]["MAILFLEET_DRAIN_TIMEOUT_SECS"]
        .as_str()
        .expect("the drain is set")
        .parse()
        .unwrap();
    let grace = seconds(w["stop_grace_period"].as_str().expect("stop_grace_period"));
    assert!(
        grace > drain,
        "stop grace {grace}s must exceed the drain {drain}s"
    );
    assert!(
        w["healthcheck"]["test"][3]
            .as_str()
            .is_some_and(|t| t.contains("/readyz")),
        "the worker's health is its readiness"
    );
    let redis: Vec<&str> = c["services"]["redis"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        redis.windows(2).any(|w| w == ["--appendonly", "yes"]),
        "AOF on"
    );
    // Every file the compose file mounts exists in the repository.
    for svc in services.values() {
        for v in svc["volumes"].as_sequence().into_iter().flatten() {
            let v = v.as_str().unwrap();
            if let Some(local) = v.strip_prefix("./") {
                let local = local.split(':').next().unwrap();
                assert!(repo(local).exists(), "mounted {local} exists");
            }
        }
    }
    let df = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    assert!(
        df.lines().filter(|l| l.starts_with("FROM ")).count() >= 2,
        "multi-stage"
    );
    // Prometheus finds the worker replicas by the service's DNS name.
    let p = yaml("deploy/prometheus/prometheus.yml");
    assert_eq!(
        p["scrape_configs"][0]["dns_sd_configs"][0]["names"][0].as_str(),
        Some("worker")
    );
}

#[test]
fn the_kubernetes_manifests_probe_drain_and_scale_on_the_streams() {
    let mut kinds = Vec::new();
    let mut worker = None;
    let mut scaled = None;
    for f in ["worker.yaml", "api.yaml", "keda.yaml"] {
        let text = std::fs::read_to_string(repo(&format!("deploy/kubernetes/{f}"))).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{f}: {e}"));
            let kind = v["kind"].as_str().expect("kind").to_owned();
            assert!(v["apiVersion"].as_str().is_some(), "{f} {kind}: apiVersion");
            assert!(v["metadata"]["name"].as_str().is_some(), "{f} {kind}: name");
            if kind == "Deployment" && v["metadata"]["name"] == "mailfleet-worker" {
                worker = Some(v.clone());
            }
            if kind == "ScaledObject" {
                scaled = Some(v.clone());
            }
            kinds.push(kind);
        }
    }
    for k in ["Deployment", "Service", "ScaledObject", "ConfigMap"] {
        assert!(kinds.iter().any(|x| x == k), "a {k}");
    }
    let w = worker.expect("the worker Deployment");
    let spec = &w["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/livez")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    let env = c["env"].as_sequence().unwrap();
    let drain: u64 = env
        .iter()
        .find(|e| e["name"] == "MAILFLEET_DRAIN_TIMEOUT_SECS")
        .and_then(|e| e["value"].as_str())
        .expect("drain set")
        .parse()
        .unwrap();
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    assert!(
        grace > drain + pre_stop,
        "grace {grace} > drain {drain} + preStop {pre_stop}"
    );
    let s = scaled.expect("a ScaledObject");
    assert_eq!(s["spec"]["scaleTargetRef"]["name"], w["metadata"]["name"]);
    let keys = mailfleet::stream::Keys::new("mf", 1);
    let streams: Vec<&str> = s["spec"]["triggers"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["type"], "redis-streams");
            assert_eq!(
                t["metadata"]["consumerGroup"].as_str(),
                Some(mailfleet::stream::GROUP)
            );
            t["metadata"]["stream"].as_str().unwrap()
        })
        .collect();
    for lane in mailfleet::Lane::ALL {
        assert!(
            streams.contains(&keys.lane(0, lane).as_str()),
            "scales on {lane}"
        );
    }
}
