//! The scheduler under process faults: real `mailfleet worker` processes as candidates, killed
//! (SIGKILL), frozen past their lease (SIGSTOP/SIGCONT, some with a Postgres write held in flight
//! by the fault proxy), and a Redis that restarts empty. Judged in Postgres: every tick once,
//! none late by more than the lease TTL + 1 s (a tick due while Redis was down: counted from
//! when it was back, since no lease can be held without it), tokens only increasing, stale
//! writes rejected.

use crate::scheduler::{audience_of, definition, digest_template};
use crate::support::private::{PrivateRedis, free_port};
use crate::support::proxy::{Mode, Proxy, upstream_of};
use crate::support::*;
use mailfleet::lease;
use mailfleet::mock::MockConfig;
use mailfleet::scheduler::admin;
use mailfleet::store::{fence, schedules};
use sqlx::PgPool;
use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

const TTL_MS: u64 = 2000;

/// One candidate process and the proxy its Postgres traffic goes through.
struct Candidate {
    name: String,
    child: tokio::process::Child,
    port: u16,
    pg: Proxy,
}

struct Cluster {
    db_url: String,
    redis_url: String,
    prefix: String,
    mock_url: String,
    extra: Vec<(String, String)>,
    log_dir: std::path::PathBuf,
    launched: usize,
}

impl Cluster {
    async fn launch(&mut self, name: &str) -> Candidate {
        let pg = Proxy::start(upstream_of(&self.db_url)).await;
        let port = free_port();
        self.launched += 1;
        let log = std::fs::File::create(self.log_dir.join(format!("{name}-{}.log", self.launched)))
            .expect("log file");
        let mut c = tokio::process::Command::new(BIN);
        c.args(["worker", "--listen", &format!("127.0.0.1:{port}")])
            .env("MAILFLEET_DATABASE_URL", pg.url_for(&self.db_url))
            .env("MAILFLEET_REDIS_URL", &self.redis_url)
            .env("MAILFLEET_PREFIX", &self.prefix)
            .env("MAILFLEET_CONSUMER", name)
            .env("MAILFLEET_LEASE_TTL_MS", TTL_MS.to_string())
            .env("MAILFLEET_SENDGRID_URL", &self.mock_url)
            .env("MAILFLEET_SENDGRID_API_KEY", "k")
            .env("MAILFLEET_BLOCK_MS", "200")
            .env("MAILFLEET_PG_POOL", "4")
            .env("RUST_LOG", "info,mailfleet::scheduler=debug")
            .envs(self.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        Candidate {
            name: name.to_owned(),
            child: c.spawn().expect("spawn a worker"),
            port,
            pg,
        }
    }
}

impl Candidate {
    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }
    async fn metrics(&self) -> Option<String> {
        mailfleet::install_crypto_provider();
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        reqwest::get(url).await.ok()?.text().await.ok()
    }
}

/// The name of the candidate whose token is in the fence, once it is newer than `after`.
async fn leader_after(pg: &PgPool, after: i64) -> (i64, String) {
    eventually(
        "a new leader writes the fence",
        Duration::from_secs(30),
        || async {
            let (token, holder) = fence::holder(pg, lease::SCHEDULER).await.ok()??;
            let name = holder?.split('/').next()?.to_owned();
            (token > after).then_some((token, name))
        },
    )
    .await
}

/// The candidates' scheduler lines from a few seconds before each late tick to well after it,
/// so a failure says who led, who stepped down and what failed.
fn print_scheduler_logs(dir: &std::path::Path, late: &[(chrono::DateTime<chrono::Utc>, i64)]) {
    let seconds: std::collections::BTreeSet<String> = late
        .iter()
        .flat_map(|(tick, _)| (-3..=8).map(move |s| *tick + chrono::Duration::seconds(s)))
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string())
        .collect();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        for line in text.lines() {
            if (line.contains("scheduler") || line.contains("WARN") || line.contains("ERROR"))
                && !line.contains("lease held")
                && seconds.iter().any(|s| line.contains(s.as_str()))
            {
                eprintln!("{name}: {line}");
            }
        }
    }
}

/// Sleep until `offset` past the next whole second (ticks of `* * * * * *` are on the second).
async fn until_second_plus(offset: Duration) {
    let now = chrono::Utc::now();
    let into = Duration::from_nanos(u64::from(now.timestamp_subsec_nanos()));
    let wait = Duration::from_secs(1) - into + offset;
    tokio::time::sleep(wait).await;
}

#[sqlx::test]
async fn every_tick_fires_once_through_kills_pauses_and_a_redis_restart(pg: PgPool) {
    let mut redis = PrivateRedis::start().await;
    let mock = TestMock::start(MockConfig::default()).await;
    digest_template(&pg).await;
    audience_of(&pg, "team", 3).await;
    let mut d = definition("pulse", "* * * * * *", "team");
    d.stale_after = "60s".into();
    let schedule = admin::add(&pg, &d).await.unwrap();
    let first_tick = schedule.next_tick;
    let log_dir = std::env::temp_dir().join(format!(
        "mailfleet-leader-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut cluster = Cluster {
        db_url: db_url(&pg),
        redis_url: redis.url.clone(),
        prefix: unique_prefix(),
        mock_url: mock.url.clone(),
        extra: Vec::new(),
        log_dir: log_dir.clone(),
        launched: 0,
    };
    let mut cs = Vec::new();
    for name in ["w0", "w1", "w2"] {
        cs.push(cluster.launch(name).await);
    }

    let started = Instant::now();
    let run_for = Duration::from_secs(125);
    let mut last_token = 0;
    let (mut kills, mut pauses, mut held_pauses) = (0, 0, 0);
    let mut restart_tokens = None;
    // When Redis went down and when it answered again.
    let mut outage = None;
    // Rejections seen per process incarnation (a killed process takes its counter with it).
    let mut rejected: HashMap<u32, f64> = HashMap::new();
    let mut event = 0usize;
    while started.elapsed() < run_for || kills + pauses + held_pauses < 10 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (token, name) = leader_after(&pg, last_token).await;
        last_token = token;
        let i = cs
            .iter()
            .position(|c| c.name == name)
            .expect("a known candidate");
        if restart_tokens.is_none() && started.elapsed() > Duration::from_secs(60) {
            // Redis restarts with no data: the lease and its counter are gone.
            let down = chrono::Utc::now();
            redis.restart_empty().await;
            outage = Some((down, chrono::Utc::now()));
            let (after, _) = leader_after(&pg, token).await;
            restart_tokens = Some((token, after));
            // The leader after the restart is the next one to disrupt.
            last_token = token;
            continue;
        }
        match event % 3 {
            0 => {
                signal(cs[i].pid(), SIGKILL);
                let _ = cs[i].child.wait().await;
                let name = cs[i].name.clone();
                cs[i] = cluster.launch(&name).await;
                kills += 1;
            }
            1 => {
                signal(cs[i].pid(), SIGSTOP);
                tokio::time::sleep(Duration::from_millis(TTL_MS + 1200)).await;
                signal(cs[i].pid(), SIGCONT);
                pauses += 1;
            }
            _ => {
                // Freeze it holding stale data: from just after one tick the proxy holds
                // Postgres' replies, so the next tick's "what is due" answer reaches it only
                // after its successor has fired that tick. It then tries to fire it again.
                until_second_plus(Duration::from_millis(300)).await;
                cs[i].pg.set(Mode::HoldReplies);
                until_second_plus(Duration::from_millis(150)).await;
                signal(cs[i].pid(), SIGSTOP);
                tokio::time::sleep(Duration::from_millis(TTL_MS + 1000)).await;
                // A successor leads by now; let the held bytes go, then wake the stale leader.
                leader_after(&pg, last_token).await;
                cs[i].pg.set(Mode::Pass);
                signal(cs[i].pid(), SIGCONT);
                held_pauses += 1;
            }
        }
        if !event.is_multiple_of(3) {
            let pid = cs[i].pid();
            let seen = eventually(
                "the resumed process answers",
                Duration::from_secs(20),
                || async {
                    metric(
                        &cs[i].metrics().await?,
                        "mailfleet_fenced_writes_rejected_total",
                    )
                },
            )
            .await;
            rejected.insert(pid, seen);
        }
        event += 1;
    }
    // A quiet end: let the current leader fire a few ticks, then pause the schedule.
    tokio::time::sleep(Duration::from_secs(3)).await;
    admin::pause(&pg, "pulse").await.unwrap();
    let paused_at = chrono::Utc::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Late scrapes: a stale leader may have hit the fence after its first scrape.
    for c in &cs {
        if let Some(v) = c
            .metrics()
            .await
            .and_then(|m| metric(&m, "mailfleet_fenced_writes_rejected_total"))
        {
            rejected.insert(c.pid(), v);
        }
    }
    for c in &cs {
        signal(c.pid(), SIGTERM);
    }
    for c in &mut cs {
        let _ = tokio::time::timeout(Duration::from_secs(20), c.child.wait()).await;
    }

    let s = schedules::get(&pg, "pulse").await.unwrap().unwrap();
    let mut runs = schedules::runs(&pg, s.id, 100_000).await.unwrap();
    runs.reverse();
    let expected = (paused_at - first_tick).num_seconds();
    let (down, up) = outage.expect("Redis was restarted");
    // A tick due while Redis was down can be led only once it is back.
    let due = |tick| if tick >= down && tick <= up { up } else { tick };
    let late: Vec<_> = runs
        .iter()
        .filter(|r| (r.fired_at - due(r.tick)).num_milliseconds() > TTL_MS as i64 + 1000)
        .map(|r| (r.tick, (r.fired_at - due(r.tick)).num_milliseconds()))
        .collect();
    let stale_writes_rejected: f64 = rejected.values().sum();
    eprintln!(
        "leader test: ticks_expected~{expected} ticks_fired={} kills={kills} pauses={pauses} held_pauses={held_pauses} \
         stale_writes_rejected={stale_writes_rejected} tokens_around_restart={restart_tokens:?} \
         max_lag_ms={} redis_down_ms={} logs={}",
        runs.len(),
        runs.iter()
            .map(|r| (r.fired_at - r.tick).num_milliseconds())
            .max()
            .unwrap_or(0),
        (up - down).num_milliseconds(),
        log_dir.display()
    );
    if !late.is_empty() {
        print_scheduler_logs(&log_dir, &late);
    }
    assert!(kills + pauses + held_pauses >= 10);
    assert_eq!(
        runs.first().map(|r| r.tick),
        Some(first_tick),
        "the first tick fired"
    );
    for w in runs.windows(2) {
        assert_eq!(
            (w[1].tick - w[0].tick).num_seconds(),
            1,
            "a tick is missing after {}",
            w[0].tick
        );
        assert!(
            w[1].token >= w[0].token,
            "a token went backwards at {}",
            w[1].tick
        );
    }
    let last = runs.last().expect("ticks fired").tick;
    assert!(
        paused_at - last < chrono::Duration::seconds(2),
        "ticks stopped early: last {last}, paused {paused_at}"
    );
    assert!(
        late.is_empty(),
        "ticks fired more than TTL + 1 s late: {late:?}"
    );
    for r in &runs {
        assert_eq!(
            (r.status.as_str(), r.total, r.enqueued),
            ("done", 3, 3),
            "{r:?}"
        );
    }
    let jobs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM emails WHERE idempotency_key LIKE 'sched:%'")
            .fetch_one(&pg)
            .await
            .unwrap();
    assert_eq!(
        jobs,
        3 * runs.len() as i64,
        "one job per member per tick, nothing extra"
    );
    let (before, after) = restart_tokens.expect("the tokens around the restart were read");
    assert!(
        after > before,
        "tokens went back after the Redis restart: {before} -> {after}"
    );
    assert!(
        stale_writes_rejected > 0.0,
        "no stale leader's write reached the fence"
    );
    let _ = std::fs::remove_dir_all(&log_dir);
}

#[sqlx::test]
async fn a_leader_killed_mid_fan_out_is_finished_by_the_next_exactly_once(pg: PgPool) {
    const MEMBERS: i64 = 100_000;
    let redis = TestRedis::new();
    digest_template(&pg).await;
    audience_of(&pg, "everyone", MEMBERS).await;
    // One tick, a few seconds from now: a 6-field expression naming that second.
    let at = chrono::Utc::now() + chrono::Duration::seconds(4);
    let cron = mailfleet::scheduler::cron::at_second(at);
    let s = admin::add(&pg, &definition("launch", &cron, "everyone"))
        .await
        .unwrap();
    let log_dir = std::env::temp_dir().join(format!(
        "mailfleet-fanout-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut cluster = Cluster {
        db_url: db_url(&pg),
        redis_url: redis.url.clone(),
        prefix: redis.keys.prefix().to_owned(),
        mock_url: "http://127.0.0.1:9".into(),
        extra: vec![
            ("MAILFLEET_SCHEDULER".into(), "only".into()),
            ("MAILFLEET_FANOUT_BATCH".into(), "1000".into()),
        ],
        log_dir: log_dir.clone(),
        launched: 0,
    };
    let mut cs = vec![cluster.launch("f0").await, cluster.launch("f1").await];
    let run_of = || async { schedules::runs(&pg, s.id, 1).await.ok()?.into_iter().next() };
    // Kill the leader once a part of the audience is committed.
    let at_kill = eventually(
        "the fan-out is under way",
        Duration::from_secs(60),
        || async { run_of().await.filter(|r| r.enqueued >= 5000) },
    )
    .await;
    let (_, name) = leader_after(&pg, 0).await;
    let i = cs
        .iter()
        .position(|c| c.name == name)
        .expect("a known candidate");
    signal(cs[i].pid(), SIGKILL);
    let _ = cs[i].child.wait().await;
    let done = eventually(
        "the next leader finishes the fan-out",
        Duration::from_secs(180),
        || async { run_of().await.filter(|r| r.status == "done") },
    )
    .await;
    for c in &cs {
        if let Some(pid) = c.child.id() {
            signal(pid, SIGTERM);
        }
    }
    for c in &mut cs {
        let _ = tokio::time::timeout(Duration::from_secs(20), c.child.wait()).await;
    }
    eprintln!(
        "fan-out test: members={MEMBERS} killed_at_enqueued={} fired_to_done_s={:.2}",
        at_kill.enqueued,
        done.finished_at
            .map(|f| (f - done.fired_at).num_milliseconds() as f64 / 1000.0)
            .unwrap_or(-1.0)
    );
    assert!(
        at_kill.enqueued < MEMBERS as i32,
        "the kill came after the fan-out finished"
    );
    assert_eq!(
        (done.total, done.enqueued),
        (MEMBERS as i32, MEMBERS as i32)
    );
    let (rows, distinct, members): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT e.idempotency_key), count(DISTINCT m.id)
           FROM emails e
           JOIN audience_members m ON e.idempotency_key = 'sched:' || $1 || ':' || $2 || ':' || m.id",
    )
    .bind(s.id)
    .bind(done.tick.timestamp_millis())
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!(
        (rows, distinct, members),
        (MEMBERS, MEMBERS, MEMBERS),
        "every member's job exactly once in Postgres"
    );
    assert_eq!(
        redis.xlen(&redis.keys.lane(0, mailfleet::Lane::Bulk)).await,
        MEMBERS,
        "every member's job exactly once on the stream"
    );
    let _ = std::fs::remove_dir_all(&log_dir);
}

#[sqlx::test]
async fn a_leader_killed_mid_pass_of_thousands_of_due_schedules_leaves_each_tick_once(pg: PgPool) {
    const N: i64 = 20_000;
    let redis = TestRedis::new();
    digest_template(&pg).await;
    let log_dir =
        std::env::temp_dir().join(format!("mailfleet-skew-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut cluster = Cluster {
        db_url: db_url(&pg),
        redis_url: redis.url.clone(),
        prefix: redis.keys.prefix().to_owned(),
        mock_url: "http://127.0.0.1:9".into(),
        extra: vec![("MAILFLEET_SCHEDULER".into(), "only".into())],
        log_dir: log_dir.clone(),
        launched: 0,
    };
    let mut cs = vec![cluster.launch("k0").await, cluster.launch("k1").await];
    let (_, leader) = leader_after(&pg, 0).await;
    // Every tenant's digest at the same second, a few seconds from now.
    let at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let cron = mailfleet::scheduler::cron::at_second(at);
    let at = chrono::DateTime::<chrono::Utc>::from_timestamp(at.timestamp(), 0).unwrap();
    mailfleet::store::bench::skewed_schedules(&pg, N, &cron, at, "digest")
        .await
        .unwrap();
    let handled = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM schedule_runs WHERE tick = $1")
            .bind(at)
            .fetch_one(&pg)
            .await
            .ok()
    };
    // Kill the leader once part of the pass is recorded.
    let at_kill = eventually("the pass is under way", Duration::from_secs(60), || async {
        handled().await.filter(|n| *n >= 500)
    })
    .await;
    let i = cs
        .iter()
        .position(|c| c.name == leader)
        .expect("a known candidate");
    signal(cs[i].pid(), SIGKILL);
    let _ = cs[i].child.wait().await;
    eventually(
        "the next leader fires and fans out the rest",
        Duration::from_secs(240),
        || async {
            (mailfleet::store::bench::schedule_work_left(&pg, at)
                .await
                .ok()?
                == 0)
                .then_some(())
        },
    )
    .await;
    for c in &cs {
        if let Some(pid) = c.child.id() {
            signal(pid, SIGTERM);
        }
    }
    for c in &mut cs {
        let _ = tokio::time::timeout(Duration::from_secs(20), c.child.wait()).await;
    }
    let (runs, done, lag_ms): (i64, i64, f64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'done'),
                COALESCE(EXTRACT(EPOCH FROM max(fired_at - tick)) * 1000, 0)::float8
           FROM schedule_runs WHERE tick = $1",
    )
    .bind(at)
    .fetch_one(&pg)
    .await
    .unwrap();
    eprintln!(
        "skewed pass test: schedules={N} handled_at_kill={at_kill} runs={runs} done={done} last_tick_lag_ms={lag_ms:.0}"
    );
    assert!(at_kill < N, "the kill came after the pass finished");
    assert_eq!(
        (runs, done),
        (N, N),
        "each tick once, done, none skipped or stale"
    );
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT idempotency_key) FROM emails WHERE idempotency_key LIKE 'sched:%'",
    )
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!((rows, distinct), (N, N), "one job per member in Postgres");
    assert_eq!(
        redis.xlen(&redis.keys.lane(0, mailfleet::Lane::Bulk)).await,
        N,
        "one job per member on the stream"
    );
    let _ = std::fs::remove_dir_all(&log_dir);
}
