//! The `mailfleet` binary: `send`, `migrate` checks, and a worker process's SIGTERM drain.

use crate::support::*;
use mailfleet::Lane;
use mailfleet::mock::MockConfig;
use sqlx::PgPool;
use std::process::Stdio;
use std::time::Duration;

#[sqlx::test]
async fn a_job_sent_with_the_cli_is_recorded_sent(pg: PgPool) {
    let redis = TestRedis::new();
    let out = mailfleet(&pg, &redis)
        .args([
            "send",
            "--to",
            "Ada <ada@example.com>",
            "--from",
            "shop@example.com",
            "--subject",
            "Hi {{ n }}",
            "--text",
            "Hello {{ n }}",
            "--vars",
            r#"{"n": "Ada"}"#,
            "--lane",
            "bulk",
            "--idem",
            "cli-1",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: uuid::Uuid = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    // --file: JSONL with lanes; a bad line fails the whole file before anything is enqueued.
    let dir = std::env::temp_dir().join(format!("mf-cli-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("jobs.jsonl");
    std::fs::write(&good, "{\"lane\":\"tx\",\"to\":[\"a@example.com\"],\"from\":\"s@example.com\",\"subject\":\"s\",\"text\":\"t\"}\n\
                           {\"to\":[\"b@example.com\"],\"from\":\"s@example.com\",\"subject\":\"s\",\"html\":\"<p>t</p>\"}\n").unwrap();
    let out = mailfleet(&pg, &redis)
        .args(["send", "--file"])
        .arg(&good)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<uuid::Uuid> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"to\":[\"bad\"],\"from\":\"s@example.com\",\"subject\":\"s\",\"text\":\"t\"}\n",
    )
    .unwrap();
    let out = mailfleet(&pg, &redis)
        .args(["send", "--file"])
        .arg(&bad)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[0].to[0]"));

    let mock = TestMock::start(MockConfig::default()).await;
    let worker = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    for id in ids.iter().chain([&id]) {
        eventually("sent", WAIT, || async {
            (status_of(&pg, *id).await.as_deref() == Some("sent")).then_some(())
        })
        .await;
    }
    assert_eq!(mock.state.stats().received, 3);
    worker.stop().await;
    let _ = std::fs::remove_dir_all(dir);

    // `email show`: the row and its attempt, as text and as JSON; an unknown id is an error.
    let out = mailfleet(&pg, &redis)
        .args(["email", "show", &id.to_string(), "--json"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["email"]["status"], "sent", "{v}");
    assert_eq!(v["email"]["lane"], "bulk", "{v}");
    assert_eq!(v["attempts"][0]["outcome"], "sent", "{v}");
    assert_eq!(v["attempts"][0]["provider"], "sendgrid", "{v}");
    let out = mailfleet(&pg, &redis)
        .args(["email", "show", &id.to_string()])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("status      sent") && text.contains("ATTEMPT"),
        "{text}"
    );
    assert!(!text.contains("ada@example.com"), "no address: {text}");
    let out = mailfleet(&pg, &redis)
        .args(["email", "show", &uuid::Uuid::now_v7().to_string()])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no email"));
}

#[sqlx::test(migrations = false)]
async fn a_worker_refuses_to_start_on_an_unmigrated_database(pg: PgPool) {
    let redis = TestRedis::new();
    let out = mailfleet(&pg, &redis)
        .args(["worker", "--listen", ""])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not migrated") && err.contains("mailfleet migrate"),
        "{err}"
    );

    let out = mailfleet(&pg, &redis)
        .arg("migrate")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    mailfleet::store::ensure_migrated(&pg)
        .await
        .expect("migrated now");
}

#[sqlx::test]
async fn sigterm_drains_a_worker_process_nothing_left_pending_or_sending(pg: PgPool) {
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig {
        latency: std::time::Duration::from_millis(300),
        ..MockConfig::default()
    })
    .await;
    let jobs = (0..300)
        .map(|i| job(Lane::Bulk, &format!("u{i}@example.com")))
        .collect();
    redis.producer().send_many(jobs).await.unwrap();
    let mut child = mailfleet(&pg, &redis)
        .args([
            "worker",
            "--listen",
            "",
            "--block-ms",
            "100",
            "--batch-size",
            "50",
            "--max-in-flight",
            "100",
        ])
        .env("MAILFLEET_SENDGRID_URL", &mock.url)
        .env("MAILFLEET_SENDGRID_API_KEY", "k")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until sends are in flight, then ask it to stop.
    eventually("sends in flight", WAIT, || async {
        (mock.state.stats().received > 0).then_some(())
    })
    .await;
    signal(child.id().expect("pid"), SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success(), "clean exit, got {status:?}");
    assert_eq!(
        redis.pending(Lane::Bulk).await,
        0,
        "every entry it read was recorded and acked"
    );
    assert_eq!(
        count_status(&pg, "sending").await,
        0,
        "no send was abandoned mid-flight"
    );
    let sent = count_status(&pg, "sent").await;
    assert!(sent > 0 && sent < 300, "stopped part-way ({sent} sent)");
    assert_eq!(
        mock.state.stats().received as i64,
        sent,
        "every provider acceptance is recorded"
    );
}

#[sqlx::test]
async fn schedules_and_audiences_are_managed_from_the_cli(pg: PgPool) {
    let redis = TestRedis::new();
    let run = |args: Vec<String>| {
        let mut c = mailfleet(&pg, &redis);
        c.args(args);
        async move { c.output().await.unwrap() }
    };
    let ok = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let argv = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
    let dir = std::env::temp_dir().join(format!("mf-cli-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("team.csv");
    std::fs::write(
        &csv,
        "email,name\nada@example.com,Ada\nbob@example.com,Bob\n",
    )
    .unwrap();
    ok(&run(argv("template put digest --subject Hi --text Hello")).await);
    ok(&run(argv("audience create team")).await);
    let imported = ok(&run(vec![
        "audience".into(),
        "import".into(),
        "team".into(),
        csv.display().to_string(),
    ])
    .await);
    assert!(imported.contains("2 members written"), "{imported}");
    let mut add = argv(
        "schedule add nightly --tz Europe/Paris --template digest --audience team --from news@example.com",
    );
    add.extend(["--cron".to_owned(), "0 2 * * *".to_owned()]);
    let added = ok(&run(add).await);
    assert!(added.contains("nightly added"), "{added}");
    let listed = ok(&run(argv("schedule list")).await);
    assert!(
        listed.contains("nightly") && listed.contains("Europe/Paris") && listed.contains("active"),
        "{listed}"
    );
    ok(&run(argv("schedule pause nightly")).await);
    assert!(ok(&run(argv("schedule list")).await).contains("paused"));
    // The audience is in use: rm is refused and says by what.
    let refused = run(argv("audience rm team")).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("nightly"));
    // A bad expression is refused with the reason.
    let bad = run(vec![
        "schedule".into(),
        "add".into(),
        "x".into(),
        "--cron".into(),
        "* * *".into(),
        "--template".into(),
        "digest".into(),
        "--audience".into(),
        "team".into(),
        "--from".into(),
        "a@example.com".into(),
    ])
    .await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("fields"));
    ok(&run(argv("schedule rm nightly")).await);
    ok(&run(argv("audience rm team")).await);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `mailfleet bench` runs the whole pipeline (its own mock, worker processes, scratch database
/// and prefix) and reports every figure, sending each email exactly once. No figure about speed
/// is asserted; the counts are.
#[sqlx::test]
async fn the_bench_sends_every_email_once_and_reports_its_figures(pg: PgPool) {
    let redis = TestRedis::new();
    // The bench needs only the server: a configured database that does not exist (a fresh
    // machine's `mailfleet`) is not an error.
    let url = db_url(&pg);
    let (server, _) = url.rsplit_once('/').expect("a database URL");
    let bench = mailfleet(&pg, &redis)
        .args([
            "bench",
            "--emails",
            "1500",
            "--workers",
            "2",
            "--rate",
            "1000",
            "--json",
        ])
        .env(
            "MAILFLEET_DATABASE_URL",
            format!("{server}/no_such_database_here"),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mailfleet bench");
    // Its scratch database is named for its pid: only that one is this test's to check (a
    // bench someone runs beside the tests on the same server has its own).
    let scratch = format!("mailfleet_bench_{}", bench.id().expect("a pid"));
    let out = bench.wait_with_output().await.expect("mailfleet bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(v["emails"], 1500);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["duplicates"], 0);
    assert_eq!(v["offered_per_sec"], 1000);
    for k in [
        "seconds",
        "emails_per_sec",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "pg_xacts_per_email",
        "worker_cpu_s_per_1k",
        "worker_peak_rss_mib",
    ] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {v}");
    }
    assert!(v["p50_ms"].as_f64() <= v["p99_ms"].as_f64(), "{v}");
    // Every email costs at least the XADD inside its enqueue script (one script call enqueues
    // a batch of a stream's jobs).
    assert!(
        v["redis_cmds_per_email"].as_f64().is_some_and(|x| x >= 1.0),
        "{v}"
    );
    // The scratch database is gone afterwards.
    assert!(!database_exists(&pg, &scratch).await, "{scratch} was left");

    // --cluster: a local 6-node Redis Cluster of its own, one measurement per worker count
    // (in this test, after the one above: both check that no scratch database is left).
    let bench = mailfleet(&pg, &redis)
        .args([
            "bench",
            "--cluster",
            "--cluster-workers",
            "1,2",
            "--emails",
            "600",
            "--json",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mailfleet bench --cluster");
    let scratch = format!("mailfleet_bench_{}", bench.id().expect("a pid"));
    let out = bench
        .wait_with_output()
        .await
        .expect("mailfleet bench --cluster");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: Vec<serde_json::Value> = serde_json::from_str(stdout.trim()).expect("one JSON array");
    assert_eq!(runs.len(), 2, "{stdout}");
    for (v, workers) in runs.iter().zip([1, 2]) {
        assert_eq!(v["workers"], workers);
        assert_eq!(v["redis"], "cluster");
        assert_eq!(v["partitions"], 12);
        assert_eq!(
            (v["emails"].as_u64(), v["lost"].as_u64()),
            (Some(600), Some(0))
        );
        assert_eq!(v["duplicates"], 0);
        // Summed over the masters: every email's enqueue script and its XADD.
        assert!(
            v["redis_cmds_per_email"].as_f64().is_some_and(|x| x >= 2.0),
            "{v}"
        );
        assert!(
            v["cpu_s_per_1k"]["redis"].as_f64().is_some_and(|x| x > 0.0),
            "the nodes' CPU is counted: {v}"
        );
    }
    assert!(!database_exists(&pg, &scratch).await, "{scratch} was left");
}

async fn database_exists(pg: &PgPool, name: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(pg)
        .await
        .expect("pg_database")
}

/// A failing command says so once, on one line, each cause once, naming the Redis server
/// (never its password) or the next step for an unmigrated database; no colour codes in a
/// pipe.
#[sqlx::test(migrations = false)]
async fn a_failing_command_prints_one_plain_line_that_names_the_server_or_the_fix(pg: PgPool) {
    let redis = TestRedis::new();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = mailfleet(&pg, &redis)
        .env(
            "MAILFLEET_REDIS_URL",
            format!("redis://:hunter2@127.0.0.1:{closed}"),
        )
        .args(["status"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(
        lines[0].contains(&format!("Redis at redis://***@127.0.0.1:{closed}")),
        "{err}"
    );
    assert!(!err.contains("hunter2") && !err.contains('\u{1b}'), "{err}");
    assert_eq!(err.matches("Connection refused").count(), 1, "{err}");

    let out = mailfleet(&pg, &redis)
        .args(["status"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("run `mailfleet migrate`"), "{err}");
    assert_eq!(
        err.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{err}"
    );
}

/// The peak resident memory of process `pid` (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb * 1024
}

/// Templates that would build gigabytes (the `*`-and-`replace` one of issue 17, and loops
/// emitting a million copies of a 100 KB variable) are refused or stopped at the cap: the
/// worker process's peak memory stays within 2 x MAILFLEET_RENDER_MAX_BYTES of its baseline.
#[sqlx::test]
async fn a_hostile_template_costs_a_worker_process_no_more_than_twice_its_output_cap(pg: PgPool) {
    const CAP: u64 = 1 << 20;
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig::default()).await;
    let big = "y".repeat(100_000);
    let xs: Vec<u32> = (0..1000).collect();
    let with = |html: &str| {
        let mut j = job(Lane::Tx, "ada@example.com");
        j.payload.text = None;
        j.payload.html = Some(html.into());
        j.payload.vars = Some(
            serde_json::json!({"big": big, "xs": xs})
                .as_object()
                .unwrap()
                .clone(),
        );
        j
    };
    let mut child = mailfleet(&pg, &redis)
        .args(["worker", "--listen", "", "--block-ms", "100"])
        .env("MAILFLEET_SENDGRID_URL", &mock.url)
        .env("MAILFLEET_RENDER_MAX_BYTES", CAP.to_string())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().expect("pid");
    // The baseline: the worker after normal work of the same size, emails with the same
    // payload whose render comes close to the cap (nine copies of `big`, 900 KB), inline and
    // by a stored template's name, one at a time and then eight at once, so every runtime
    // thread has rendered one and the template path has run.
    let normal = "{% for a in xs[:9] %}{{ big }}{% endfor %}";
    mailfleet::store::templates::put(&pg, "normal", "s", Some(normal), None)
        .await
        .unwrap();
    let mut turn = 0;
    let mut warm_up = || {
        turn += 1;
        let mut j = with(normal);
        if turn % 2 == 0 {
            j.payload.html = None;
            j.payload.subject = None;
            j.payload.template = Some("normal".into());
        }
        j
    };
    let mut warm = vec![redis.enqueue(warm_up()).await];
    eventually("the first warm-up email sent", WAIT, || async {
        (status_of(&pg, warm[0]).await.as_deref() == Some("sent")).then_some(())
    })
    .await;
    warm.push(redis.enqueue(warm_up()).await);
    eventually("the second warm-up email sent", WAIT, || async {
        (status_of(&pg, warm[1]).await.as_deref() == Some("sent")).then_some(())
    })
    .await;
    for _ in 0..8 {
        warm.push(redis.enqueue(warm_up()).await);
    }
    for id in &warm {
        eventually("the warm-up emails sent", WAIT, || async {
            (status_of(&pg, *id).await.as_deref() == Some("sent")).then_some(())
        })
        .await;
    }
    let baseline = peak_rss(pid);
    mailfleet::store::templates::put(
        &pg,
        "hostile",
        "s",
        Some("{{ ('x'*100000)|replace('x','x'*100000) }}"),
        None,
    )
    .await
    .unwrap();
    let mut by_name = job(Lane::Tx, "ada@example.com");
    by_name.payload.text = None;
    by_name.payload.subject = None;
    by_name.payload.template = Some("hostile".into());
    // One at a time: the bound is per render (a worker renders a batch's jobs concurrently,
    // each within its own cap).
    let hostile = [
        by_name,
        with("{{ ('x'*100000)|replace('x','x'*100000) }}"),
        with("{% for a in xs %}{% for b in xs %}{{ big }}{% endfor %}{% endfor %}"),
        with("{{ xs|join(big) }}"),
    ];
    for j in hostile {
        // Written as a foreign producer would (a plain XADD): the producer now refuses an
        // inline template outside the subset, and the worker must too.
        let id = uuid::Uuid::now_v7();
        let _: String = redis::cmd("XADD")
            .arg(redis.keys.lane(0, Lane::Tx))
            .arg("*")
            .arg("v")
            .arg("1")
            .arg("id")
            .arg(id.to_string())
            .arg("enqueued_at")
            .arg(chrono::Utc::now().timestamp_millis())
            .arg("payload")
            .arg(serde_json::to_string(&j.payload).unwrap())
            .query_async(&mut *redis.conn().await)
            .await
            .unwrap();
        eventually("the hostile email failed, unsent", WAIT, || async {
            (status_of(&pg, id).await.as_deref() == Some("failed")).then_some(())
        })
        .await;
    }
    let peak = peak_rss(pid);
    eprintln!("worker peak RSS: baseline {baseline} B, after the hostile templates {peak} B");
    assert!(
        peak <= baseline + 2 * CAP,
        "peak {peak} B over baseline {baseline} B + 2 x {CAP} B"
    );
    assert_eq!(
        mock.state.stats().received,
        10,
        "only the warm-up emails were sent"
    );
    signal(pid, SIGTERM);
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
}

#[sqlx::test]
async fn template_put_refuses_a_template_outside_the_bounded_subset(pg: PgPool) {
    let redis = TestRedis::new();
    let out = mailfleet(&pg, &redis)
        .args(["template", "put", "bad", "--subject", "s", "--html"])
        .arg("{{ ('x'*100000)|replace('x','x'*100000) }}")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not stored") && err.contains("the * operator"),
        "{err}"
    );
    let out = mailfleet(&pg, &redis)
        .args([
            "template",
            "put",
            "good",
            "--subject",
            "Hi {{ name }}",
            "--html",
        ])
        .arg("{% for i in items %}{{ i.name|e }}{% endfor %}")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM templates")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(n, 1, "only the good one was stored");
}

#[sqlx::test]
async fn the_api_serves_metrics_on_its_own_listener_not_on_the_public_port(pg: PgPool) {
    use tokio::io::AsyncBufReadExt;
    mailfleet::install_crypto_provider();
    let redis = TestRedis::new();
    let mut child = mailfleet(&pg, &redis)
        .arg("api")
        .env("MAILFLEET_API_LISTEN", "127.0.0.1:0")
        .env("MAILFLEET_API_METRICS_LISTEN", "127.0.0.1:0")
        .env("MAILFLEET_API_KEYS", "k-1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut public, mut metrics) = (None, None);
    while public.is_none() || metrics.is_none() {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("the API starts")
            .unwrap()
            .expect("a line");
        if let Some(u) = line.strip_prefix("api listening on ") {
            public = Some(u.to_owned());
        }
        if let Some(u) = line.strip_prefix("api metrics on ") {
            metrics = Some(u.to_owned());
        }
    }
    let (public, metrics) = (public.unwrap(), metrics.unwrap());
    let r = reqwest::get(format!("{public}/metrics")).await.unwrap();
    assert_eq!(r.status(), 404, "no figures on the public port");
    let r = reqwest::get(format!("{public}/readyz")).await.unwrap();
    assert!(
        r.status().is_success() || r.status() == 503,
        "health stays public"
    );
    let body = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
    assert!(body.contains("mailfleet_"), "{body:.200}");
    signal(child.id().expect("pid"), SIGTERM);
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
}

#[sqlx::test]
async fn send_refuses_a_template_that_does_not_exist_and_enqueues_nothing(pg: PgPool) {
    let redis = TestRedis::new();
    let send = |template: &'static str| {
        let mut c = mailfleet(&pg, &redis);
        c.args([
            "send",
            "--to",
            "ada@example.com",
            "--from",
            "shop@example.com",
            "--template",
            template,
        ]);
        c
    };
    let out = send("nosuch").output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"no template named "nosuch""#), "{err}");
    assert!(err.contains("mailfleet template list"), "{err}");
    let entries = redis.xlen(&redis.keys.lane(0, Lane::Tx)).await;
    assert_eq!(entries, 0, "nothing enqueued");

    mailfleet::store::templates::put(&pg, "welcome", "Hi", None, Some("Hello"))
        .await
        .unwrap();
    let out = send("welcome").output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(redis.xlen(&redis.keys.lane(0, Lane::Tx)).await, 1);

    // A variable the template needs and the email lacks is refused at the command too.
    mailfleet::store::templates::put(
        &pg,
        "named",
        "Hi {{ name }}",
        None,
        Some("Hello {{ name }}"),
    )
    .await
    .unwrap();
    let out = send("named").output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"does not render with template "named""#) && err.contains("undefined"),
        "{err}"
    );
    assert!(
        !err.contains("ada@example.com"),
        "no address in the error: {err}"
    );
    assert_eq!(redis.xlen(&redis.keys.lane(0, Lane::Tx)).await, 1);
    let out = send("named")
        .args(["--vars", r#"{"name": "Ada"}"#])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(redis.xlen(&redis.keys.lane(0, Lane::Tx)).await, 2);
}

#[sqlx::test]
async fn pausing_a_provider_no_worker_has_is_refused_unless_forced(pg: PgPool) {
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig::default()).await;
    let worker = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    let pause = |args: &[&str]| {
        let mut c = mailfleet(&pg, &redis);
        c.arg("pause").args(args);
        c
    };
    // The worker reports its providers at start; wait for that.
    let out = eventually("the worker's providers known", WAIT, || async {
        let out = pause(&["provider", "sendgrd"]).output().await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        err.contains("theirs: sendgrid").then_some(out)
    })
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"no running worker has a provider named "sendgrd""#),
        "{err}"
    );
    let ok = pause(&["provider", "sendgrid"]).output().await.unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let forced = pause(&["provider", "sendgrd", "--force"])
        .output()
        .await
        .unwrap();
    assert!(forced.status.success());
    assert_eq!(
        String::from_utf8_lossy(&forced.stdout).trim(),
        "provider sendgrd: paused"
    );
    worker.stop().await;
}

#[sqlx::test]
async fn dlq_refuses_a_reason_no_dead_letter_can_have(pg: PgPool) {
    let redis = TestRedis::new();
    let dlq = |reason: &str| {
        let mut c = mailfleet(&pg, &redis);
        c.args(["dlq", "list", "--reason", reason]);
        c
    };
    let out = dlq("nosuchreason").output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"no dead-letter reason "nosuchreason""#),
        "{err}"
    );
    assert!(
        err.contains("max_deliveries") && err.contains("bad_json"),
        "{err}"
    );
    let ok = dlq("max_attempts").output().await.unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[sqlx::test]
async fn report_counts_a_job_scheduled_for_later_as_scheduled_not_lost(pg: PgPool) {
    let redis = TestRedis::new();
    let dir = std::env::temp_dir().join(format!("mf-report-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("mock.jsonl");
    let mock = TestMock::start(MockConfig {
        log: Some(log.clone()),
        ..MockConfig::default()
    })
    .await;
    let worker = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    let producer = redis.producer().with_ledger(pg.clone());
    let now_job = job(Lane::Tx, "now@example.com");
    let mut later_job = job(Lane::Bulk, "later@example.com");
    later_job.payload.send_at = Some(chrono::Utc::now() + chrono::Duration::hours(2));
    let ids: Vec<String> = producer
        .send_many(vec![now_job, later_job])
        .await
        .unwrap()
        .iter()
        .map(|e| e.id.to_string())
        .collect();
    eventually("the first sent", WAIT, || async {
        (count_status(&pg, "sent").await == 1).then_some(())
    })
    .await;
    worker.stop().await;
    drop(mock);
    let ids_file = dir.join("ids.txt");
    std::fs::write(&ids_file, ids.join("\n")).unwrap();
    let out = eventually("the mock's log written", WAIT, || async {
        let out = mailfleet(&pg, &redis)
            .args(["report", "--json", "--label", "r", "--seconds", "1"])
            .arg("--ids")
            .arg(&ids_file)
            .arg("--mock-log")
            .arg(&log)
            .output()
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["sent"] == 1).then_some(v)
    })
    .await;
    assert_eq!(out["lost"], 0, "{out}");
    assert_eq!(out["scheduled"], 1, "{out}");
    assert_eq!(out["not_final"], 0, "{out}");
    assert_eq!(out["ok"], true, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
