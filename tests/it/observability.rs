//! What operators see: a real Prometheus (Debian's, installed by scripts/test.sh) scraping two
//! live worker processes under load evaluates every panel query of the Grafana dashboard and
//! every alert rule; `promtool check metrics` accepts the exposition; JSON logs carry no
//! address; `mailfleet status` reads the cluster.

use crate::support::*;
use mailfleet::Lane;
use mailfleet::mock::MockConfig;
use serde_json::Value;
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Every PromQL expression of the dashboard, with its panel's title.
fn dashboard_queries() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(repo("grafana/dashboards/mailfleet.json")).expect("dashboard");
    let v: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut out = Vec::new();
    for p in v["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            out.push((
                p["title"].as_str().unwrap_or("?").to_owned(),
                t["expr"].as_str().expect("expr").to_owned(),
            ));
        }
    }
    out
}

/// Every alert rule's name and expression.
fn alert_rules() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).expect("alerts");
    let v: serde_yaml::Value = serde_yaml::from_str(&text).expect("alerts YAML");
    let mut out = Vec::new();
    for g in v["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            out.push((
                r["alert"].as_str().expect("alert").to_owned(),
                r["expr"].as_str().expect("expr").to_owned(),
            ));
        }
    }
    out
}

async fn query(client: &reqwest::Client, prom: &str, expr: &str) -> Value {
    client
        .post(format!("{prom}/api/v1/query"))
        .form(&[("query", expr)])
        .send()
        .await
        .expect("prometheus answers")
        .json()
        .await
        .expect("JSON")
}

#[sqlx::test(migrations = "./migrations")]
async fn prometheus_evaluates_every_panel_and_alert_against_two_live_workers(pg: PgPool) {
    let redis = TestRedis::new();
    // 5% of sends fail (provider errors, retries, the delayed set).
    let mock = TestMock::start(MockConfig {
        failure_rate: 0.05,
        latency: Duration::from_millis(2),
        ..MockConfig::default()
    })
    .await;
    let dir = std::env::temp_dir().join(format!("mf-obs-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // A limit below the offered load, so the limiter makes sends wait; a second provider for
    // the sends the first answers 503 (failovers).
    let config = dir.join("mailfleet.toml");
    std::fs::write(
        &config,
        format!(
            "[[providers]]\nname = \"sendgrid\"\nkind = \"sendgrid\"\nbase_url = \"{0}\"\napi_key = \"k\"\nlimit = 150\nwindow_ms = 1000\n\n\
             [[providers]]\nname = \"postmark\"\nkind = \"postmark\"\nbase_url = \"{0}\"\napi_key = \"t\"\n",
            mock.url
        ),
    )
    .unwrap();
    let ports = [free_port(), free_port()];
    let mut workers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let log = std::fs::File::create(dir.join(format!("worker-{i}.log"))).unwrap();
        let child = mailfleet(&pg, &redis)
            .arg("worker")
            .env("MAILFLEET_CONFIG", &config)
            .env("MAILFLEET_CONSUMER", format!("obs-{i}"))
            .env("MAILFLEET_WORKER_LISTEN", format!("127.0.0.1:{port}"))
            .env("MAILFLEET_BLOCK_MS", "200")
            .env("MAILFLEET_RETRY_BASE_MS", "200")
            .env("MAILFLEET_LEASE_TTL_MS", "2000")
            .env("MAILFLEET_LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                "debug,sqlx=warn,hyper=info,h2=info,reqwest=info,tower=info",
            )
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("worker starts");
        workers.push(child);
    }

    let prom_port = free_port();
    let rules = repo("deploy/prometheus/alerts.yml");
    let prom_config = dir.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: mailfleet-worker\n    static_configs:\n      - targets: ['127.0.0.1:{}', '127.0.0.1:{}']\n",
            rules.display(),
            ports[0],
            ports[1]
        ),
    )
    .unwrap();
    let check = std::process::Command::new("promtool")
        .args(["check", "config"])
        .arg(&prom_config)
        .output()
        .expect("promtool (scripts/test.sh installs Debian's prometheus)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", prom_config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus starts");
    let prom = format!("http://127.0.0.1:{prom_port}");
    let client = mailfleet::provider::http_client(4).expect("client");

    // Load: ~300 emails/s for 12 s (twice the limit), one poison entry for the dead letters.
    let producer = redis.producer();
    for round in 0..24 {
        let jobs: Vec<_> = (0..150)
            .map(|i| {
                job(
                    if i % 3 == 0 { Lane::Tx } else { Lane::Bulk },
                    &format!("u{round}-{i}@example.com"),
                )
            })
            .collect();
        producer.send_many(jobs).await.expect("enqueue");
        if round == 4 {
            let mut c = redis.conn().await;
            let _: String = redis::cmd("XADD")
                .arg(redis.keys.lane(0, Lane::Bulk))
                .arg("*")
                .arg("v")
                .arg("1")
                .arg("garbage")
                .arg("x")
                .query_async(&mut *c)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // promtool accepts what a worker serves.
    let exposition = client
        .get(format!("http://127.0.0.1:{}/metrics", ports[0]))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap();
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    {
        use std::io::Write;
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(exposition.as_bytes())
            .unwrap();
    }
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Both targets up, and enough samples for rate() over a minute's range.
    eventually(
        "prometheus scrapes both workers",
        Duration::from_secs(30),
        || async {
            let v = query(&client, &prom, "count(up{job=\"mailfleet-worker\"} == 1)").await;
            (v["data"]["result"][0]["value"][1] == "2").then_some(())
        },
    )
    .await;

    let mut empty = Vec::new();
    for (title, expr) in dashboard_queries() {
        let v = query(&client, &prom, &expr).await;
        assert_eq!(v["status"], "success", "panel {title:?}: {expr}: {v}");
        // What each panel showed (cargo test -- --nocapture observability).
        let shown: Vec<String> = v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| format!("{}={}", r["metric"], r["value"][1]))
            .collect();
        println!("panel {title:?} | {expr} | {}", shown.join(" "));
        if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels without series while their data exists: {empty:#?}"
    );
    for (name, expr) in alert_rules() {
        let v = query(&client, &prom, &expr).await;
        assert_eq!(v["status"], "success", "alert {name}: {expr}: {v}");
    }
    // The rules loaded and evaluate (none should be firing a `for` already).
    let rules: Value = client
        .get(format!("{prom}/api/v1/rules"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let loaded = rules["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(loaded, alert_rules().len(), "every rule loaded: {rules}");
    for r in rules["data"]["groups"][0]["rules"].as_array().unwrap() {
        assert_ne!(r["health"], "err", "rule {} evaluates: {r}", r["name"]);
    }

    // `mailfleet status` sees the same cluster.
    let out = mailfleet(&pg, &redis)
        .args(["status", "--json"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(s["workers_alive"], 2, "{s}");
    // Each worker says what it runs and holds.
    let info = s["worker_info"].as_object().expect("worker_info");
    assert_eq!(info.len(), 2, "{s}");
    for (name, i) in info {
        assert!(name.starts_with("obs-"), "{s}");
        assert_eq!(i["version"], env!("CARGO_PKG_VERSION"), "{s}");
        assert!(i["started_ms"].as_i64().is_some_and(|t| t > 0), "{s}");
        assert!(i["in_flight"].as_i64().is_some_and(|n| n >= 0), "{s}");
    }
    assert!(
        s["lanes"]["tx"]["length"].as_u64().is_some_and(|n| n > 0),
        "{s}"
    );
    assert_eq!(s["dead_letters"], 1, "the poison entry: {s}");
    assert!(
        s["leader"].as_str().is_some_and(|l| l.starts_with("obs-")),
        "{s}"
    );
    assert_eq!(
        s["breakers"]["sendgrid"].as_object().map(|m| m.len()),
        Some(2),
        "{s}"
    );

    let _ = prometheus.kill().await;
    for mut w in workers {
        if let Some(pid) = w.id() {
            signal(pid, SIGTERM);
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), w.wait()).await;
    }

    // JSON logs, at debug level, under that load: every line is JSON, none holds an address.
    let mut lines = 0;
    for i in 0..2 {
        let text = std::fs::read_to_string(dir.join(format!("worker-{i}.log"))).unwrap();
        for line in text.lines() {
            lines += 1;
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
            assert!(!line.contains('@'), "an address in a log line: {v}");
        }
    }
    assert!(lines > 10, "the workers logged ({lines} lines)");
    let _ = std::fs::remove_dir_all(&dir);
}
