//! The scheduler's guarantees in one process: the lease and its fence, each tick fired once
//! while leadership moves, fan-out resumed exactly once, catch-up policies, and definitions
//! validated before anything is stored.

use crate::support::*;
use mailfleet::Lane;
use mailfleet::lease::{self, Acquired, FenceError, LeaseKeys};
use mailfleet::metrics::METRICS;
use mailfleet::scheduler::{self, admin, audience};
use mailfleet::scripts::{self, LEASE};
use mailfleet::store::{audiences, fence, schedules};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn lease_keys(redis: &TestRedis) -> LeaseKeys {
    LeaseKeys::new(redis.keys.prefix(), lease::SCHEDULER)
}

async fn acquire(pg: &PgPool, redis: &TestRedis, owner: &str, ttl_ms: u64) -> Acquired {
    lease::acquire(
        &mut *redis.conn().await,
        pg,
        &lease_keys(redis),
        lease::SCHEDULER,
        owner,
        Duration::from_millis(ttl_ms),
    )
    .await
    .expect("lease.lua answers")
}

/// A leader transaction that only moves the fence, committed.
async fn write_fence(pg: &PgPool, l: &lease::Lease) {
    lease::fenced(pg, l).await.unwrap().commit().await.unwrap();
}

/// What a Redis restart without persistence does to the lease: it and its counter are gone.
async fn lose_lease_keys(redis: &TestRedis) {
    let k = lease_keys(redis);
    let _: () = redis::cmd("DEL")
        .arg(&k.lease)
        .arg(&k.fence)
        .query_async(&mut *redis.conn().await)
        .await
        .unwrap();
}

fn won(a: Acquired) -> lease::Lease {
    match a {
        Acquired::Won(l) => l,
        Acquired::Held { holder_token, .. } => panic!("lease held by token {holder_token}"),
    }
}

#[sqlx::test]
async fn the_lease_is_exclusive_and_only_its_owner_renews_or_releases_it(pg: PgPool) {
    let redis = TestRedis::new();
    // A probe (floor -1) of a free lease takes nothing: the caller reads the floor first.
    let k = lease_keys(&redis);
    let mut probe = LEASE.call(&[&k.lease, &k.fence]);
    probe.arg("acquire").arg("a/1").arg(10_000).arg(-1);
    let v = scripts::run_one(&mut *redis.conn().await, probe)
        .await
        .unwrap();
    assert_eq!(
        v,
        redis::Value::Array(vec![
            redis::Value::Int(2),
            redis::Value::Int(0),
            redis::Value::Int(0)
        ])
    );
    let held: Option<String> = redis::cmd("GET")
        .arg(&k.lease)
        .query_async(&mut *redis.conn().await)
        .await
        .unwrap();
    assert_eq!(held, None, "a probe never takes the lease");
    let a = won(acquire(&pg, &redis, "a/1", 10_000).await);
    match acquire(&pg, &redis, "b/1", 10_000).await {
        Acquired::Held {
            holder_token,
            expires_in,
        } => {
            assert_eq!(holder_token, a.token().value());
            assert!(expires_in > Duration::ZERO && expires_in <= Duration::from_secs(10));
        }
        Acquired::Won(_) => panic!("two owners won one lease"),
    }
    assert!(a.renew(&mut *redis.conn().await).await.unwrap());
    // Another owner can neither renew nor release it.
    let k = lease_keys(&redis);
    for op in ["renew", "release"] {
        let mut c = LEASE.call(&[&k.lease, &k.fence]);
        c.arg(op).arg("b/1").arg(10_000);
        let v = scripts::run_one(&mut *redis.conn().await, c).await.unwrap();
        let first = match v {
            redis::Value::Array(items) => items.first().cloned(),
            _ => None,
        };
        assert_eq!(first, Some(redis::Value::Int(0)), "{op} by a non-owner");
    }
    // The owner's release frees it at once, and the next token is higher.
    assert!(a.release(&mut *redis.conn().await).await.unwrap());
    let b = won(acquire(&pg, &redis, "b/1", 10_000).await);
    assert!(b.token().value() > a.token().value());
    // The old owner's renewal now fails: it must step down.
    assert!(!a.renew(&mut *redis.conn().await).await.unwrap());
    // An owner acquiring again while it holds the lease gets a new, higher token.
    let b2 = won(acquire(&pg, &redis, "b/1", 10_000).await);
    assert!(b2.token().value() > b.token().value());
}

#[sqlx::test]
async fn tokens_never_go_backwards_when_redis_loses_the_counter(pg: PgPool) {
    let redis = TestRedis::new();
    let a = won(acquire(&pg, &redis, "a/1", 10_000).await);
    write_fence(&pg, &a).await;
    let before = a.token().value();
    lose_lease_keys(&redis).await;
    let b = won(acquire(&pg, &redis, "b/1", 10_000).await);
    assert_eq!(
        b.token().value(),
        before + 1,
        "the floor from leader_fence, not the counter's 1"
    );
    assert!(lease::fenced(&pg, &b).await.is_ok());
}

#[sqlx::test]
async fn one_token_in_two_hands_is_used_only_by_the_first_to_write(pg: PgPool) {
    let redis = TestRedis::new();
    // A wins but has not written yet when Redis loses its data; B's floor is still the old
    // fence, so B is handed the same number.
    let a = won(acquire(&pg, &redis, "a/1", 10_000).await);
    lose_lease_keys(&redis).await;
    let b = won(acquire(&pg, &redis, "b/1", 10_000).await);
    assert_eq!(a.token().value(), b.token().value());
    write_fence(&pg, &a).await;
    assert!(matches!(
        lease::fenced(&pg, &b).await,
        Err(FenceError::Rejected { .. })
    ));
    // A keeps writing with it.
    assert!(lease::fenced(&pg, &a).await.is_ok());
}

#[sqlx::test]
async fn a_frozen_leader_mid_transaction_does_not_block_its_successor(pg: PgPool) {
    let redis = TestRedis::new();
    let frozen = won(acquire(&pg, &redis, "frozen/1", 1000).await);
    // It opens a leader transaction (taking the fence row's lock), then freezes.
    let tx = lease::fenced(&pg, &frozen).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let next = won(acquire(&pg, &redis, "next/1", 10_000).await);
    let fenced = tokio::time::timeout(Duration::from_secs(5), lease::fenced(&pg, &next))
        .await
        .expect("the successor is not stuck behind the frozen transaction's lock");
    fenced.unwrap().commit().await.unwrap();
    assert!(
        tx.commit().await.is_err(),
        "the frozen transaction was ended"
    );
}

#[sqlx::test]
async fn a_stale_leaders_transaction_is_rejected_and_writes_nothing(pg: PgPool) {
    let redis = TestRedis::new();
    let stale = won(acquire(&pg, &redis, "stale/1", 300).await);
    write_fence(&pg, &stale).await;
    // The stale leader "pauses" past its TTL; a successor wins and writes.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let next = won(acquire(&pg, &redis, "next/1", 10_000).await);
    write_fence(&pg, &next).await;
    // Its own clock says it may not start new work...
    assert!(!stale.is_valid());
    // ...but a write already under way when the pause hit reaches the fence, which rejects it.
    let rejected_before = METRICS.fenced_rejected.get();
    assert!(matches!(
        lease::fenced(&pg, &stale).await,
        Err(FenceError::Rejected { .. })
    ));
    assert!(METRICS.fenced_rejected.get() > rejected_before);
    assert_eq!(
        fence::holder(&pg, lease::SCHEDULER).await.unwrap(),
        Some((next.token().value(), Some("next/1".into())))
    );
}

/// An audience of `n` members `m<i>@example.com`, each with a `name` var.
pub async fn audience_of(pg: &PgPool, name: &str, n: i64) -> i64 {
    let a = audiences::create(pg, name)
        .await
        .unwrap()
        .expect("new audience");
    sqlx::query(
        "INSERT INTO audience_members (audience_id, email, vars)
         SELECT $1, 'm' || g || '@example.com', jsonb_build_object('name', 'M' || g)
           FROM generate_series(1, $2) g",
    )
    .bind(a.id)
    .bind(n)
    .execute(pg)
    .await
    .unwrap();
    a.id
}

pub async fn digest_template(pg: &PgPool) {
    mailfleet::store::templates::put(pg, "digest", "Hi {{ name }}", None, Some("Your digest"))
        .await
        .unwrap();
}

pub fn definition(name: &str, cron: &str, audience: &str) -> admin::Definition {
    admin::Definition {
        name: name.into(),
        cron: cron.into(),
        timezone: "UTC".into(),
        template: "digest".into(),
        audience: audience.into(),
        from: "News <news@example.com>".into(),
        lane: Lane::Bulk,
        vars: serde_json::json!({"team": "mailfleet"}),
        catch_up: "once".into(),
        stale_after: "1h".into(),
        paused: false,
    }
}

pub fn candidate(
    pg: &PgPool,
    redis: &TestRedis,
    owner: &str,
    ttl_ms: u64,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let mut s = scheduler::Settings::new(owner);
    s.lease_ttl = Duration::from_millis(ttl_ms);
    s.fanout_batch = 200;
    let deps = scheduler::Deps {
        pg: pg.clone(),
        redis: redis.pool.clone(),
        producer: redis.producer(),
        lease_keys: lease_keys(redis),
    };
    let token = CancellationToken::new();
    (token.clone(), scheduler::start(s, deps, token))
}

async fn runs_of(pg: &PgPool, schedule: &str) -> Vec<schedules::Run> {
    let s = schedules::get(pg, schedule)
        .await
        .unwrap()
        .expect("schedule");
    let mut r = schedules::runs(pg, s.id, 100_000).await.unwrap();
    r.reverse();
    r
}

#[sqlx::test]
async fn every_tick_fires_once_while_leadership_moves(pg: PgPool) {
    let redis = TestRedis::new();
    digest_template(&pg).await;
    audience_of(&pg, "team", 2).await;
    admin::add(&pg, &definition("pulse", "* * * * * *", "team"))
        .await
        .unwrap();
    let mut candidates: Vec<_> = (0..3)
        .map(|i| candidate(&pg, &redis, &format!("c{i}/x"), 1000))
        .collect();
    // Twice: let a leader fire a few ticks, then shut it down (it releases the lease).
    let mut retired = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let holder = eventually("a live candidate leads", WAIT, || async {
            let (_, holder) = fence::holder(&pg, lease::SCHEDULER).await.unwrap()?;
            holder.filter(|h| !retired.contains(h))
        })
        .await;
        let i: usize = holder
            .strip_prefix('c')
            .and_then(|s| s.split('/').next())
            .and_then(|s| s.parse().ok())
            .expect("the holder is one of ours");
        candidates[i].0.cancel();
        retired.push(holder);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (t, h) in candidates.drain(..) {
        t.cancel();
        h.await.unwrap();
    }
    let runs = runs_of(&pg, "pulse").await;
    assert!(runs.len() >= 6, "only {} ticks fired", runs.len());
    for w in runs.windows(2) {
        assert_eq!(
            w[1].tick - w[0].tick,
            chrono::Duration::seconds(1),
            "a tick is missing between {} and {}",
            w[0].tick,
            w[1].tick
        );
        assert!(w[1].token >= w[0].token, "tokens went backwards");
    }
    let tokens: std::collections::BTreeSet<i64> = runs.iter().map(|r| r.token).collect();
    assert!(tokens.len() >= 3, "leadership moved twice: {tokens:?}");
    // Every fired tick's fan-out finished: two jobs each, no more, no fewer.
    for r in &runs {
        if r.status == "done" {
            assert_eq!((r.total, r.enqueued), (2, 2), "{r:?}");
        }
    }
    let done = runs.iter().filter(|r| r.status == "done").count() as i64;
    let jobs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM emails WHERE idempotency_key LIKE 'sched:%'")
            .fetch_one(&pg)
            .await
            .unwrap();
    assert!(jobs >= 2 * done && jobs <= 2 * runs.len() as i64);
}

#[sqlx::test]
async fn a_new_leader_resumes_an_interrupted_fan_out_exactly_once(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    digest_template(&pg).await;
    let aid = audience_of(&pg, "everyone", 2500).await;
    // A yearly schedule: the only run in this test is the interrupted one.
    let s = admin::add(&pg, &definition("yearly", "0 0 1 1 *", "everyone"))
        .await
        .unwrap();
    // What a leader killed mid-run leaves: jobs committed for members up to `cursor`, of
    // which only those up to `pushed` reached the stream.
    let tick = chrono::Utc::now() - chrono::Duration::seconds(5);
    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM audience_members WHERE audience_id = $1 ORDER BY id")
            .bind(aid)
            .fetch_all(&pg)
            .await
            .unwrap();
    let (pushed, cursor) = (ids[499], ids[999]);
    let producer = redis.producer();
    let jobs: Vec<_> = ids[..1000]
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let job = mailfleet::NewJob {
                lane: Lane::Bulk,
                idempotency_key: Some(scheduler::member_idempotency_key(s.id, tick, *m)),
                payload: serde_json::from_value(serde_json::json!({
                    "to": [format!("m{}@example.com", i + 1)], "from": "News <news@example.com>",
                    "template": "digest", "vars": {"name": "x"}
                }))
                .unwrap(),
            };
            producer
                .prepare_as(job, scheduler::member_job_id(s.id, tick, *m))
                .unwrap()
        })
        .collect();
    let rows: Vec<_> = jobs.iter().map(|p| p.ledger_row()).collect();
    mailfleet::store::emails::insert_queued(&pg, &rows)
        .await
        .unwrap();
    producer.send_prepared(&jobs[..500]).await.unwrap();
    sqlx::query(
        "INSERT INTO schedule_runs (schedule_id, tick, status, token, total, enqueued, cursor, pushed)
         VALUES ($1, $2, 'fanning_out', 0, 2500, 1000, $3, $4)",
    )
    .bind(s.id)
    .bind(tick)
    .bind(cursor)
    .bind(pushed)
    .execute(&pg)
    .await
    .unwrap();

    let (token, handle) = candidate(&pg, &redis, "resumer/1", 2000);
    let run = eventually("the fan-out finishes", WAIT, || async {
        runs_of(&pg, "yearly")
            .await
            .into_iter()
            .find(|r| r.status == "done")
    })
    .await;
    token.cancel();
    handle.await.unwrap();
    assert_eq!(
        (run.enqueued, run.total, run.pushed),
        (2500, 2500, run.cursor)
    );
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT idempotency_key) FROM emails WHERE idempotency_key LIKE $1",
    )
    .bind(format!("sched:{}:%", s.id))
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!((rows, distinct), (2500, 2500));
    // On the stream: every member once — the 500 never pushed were re-pushed, the 500 already
    // there were not pushed again.
    assert_eq!(redis.xlen(&redis.keys.lane(0, Lane::Bulk)).await, 2500);
}

#[sqlx::test]
async fn ticks_missed_while_no_leader_ran_follow_the_catch_up_policy(pg: PgPool) {
    let redis = TestRedis::new();
    digest_template(&pg).await;
    audience_of(&pg, "team", 1).await;
    for (name, policy) in [("once-daily", "once"), ("skip-daily", "skip")] {
        let mut d = definition(name, "* * * * *", "team");
        d.catch_up = policy.into();
        admin::add(&pg, &d).await.unwrap();
    }
    // No leader for ten minutes.
    let ten_ago = chrono::Utc::now() - chrono::Duration::minutes(10);
    sqlx::query("UPDATE schedules SET next_tick = date_trunc('minute', $1::timestamptz)")
        .bind(ten_ago)
        .execute(&pg)
        .await
        .unwrap();
    let (token, handle) = candidate(&pg, &redis, "late/1", 2000);
    for name in ["once-daily", "skip-daily"] {
        eventually("the missed ticks are handled", WAIT, || async {
            let runs = runs_of(&pg, name).await;
            runs.first()
                .filter(|r| r.status != "fanning_out")
                .map(|_| ())
        })
        .await;
    }
    token.cancel();
    handle.await.unwrap();
    let once = runs_of(&pg, "once-daily").await;
    let first = &once[0];
    assert_eq!(first.status, "done", "once fires the latest missed tick");
    assert!(first.skipped_ticks >= 7, "{first:?}");
    assert!(
        once.len() <= 3,
        "missed ticks were fired one by one: {}",
        once.len()
    );
    let skip = runs_of(&pg, "skip-daily").await;
    assert_eq!(skip[0].status, "skipped");
    assert!(skip[0].skipped_ticks >= 7);
    assert!(
        skip.iter()
            .skip(1)
            .all(|r| chrono::Utc::now() - r.tick < chrono::Duration::seconds(130)),
        "only ticks within the grace fire after a skip"
    );
}

#[sqlx::test]
async fn definitions_and_imports_are_checked_before_anything_is_stored(pg: PgPool) {
    digest_template(&pg).await;
    audiences::create(&pg, "team").await.unwrap();
    let bad = [
        (definition("a", "* * * *", "team"), "fields"),
        (definition("a", "0 0 30 2 *", "team"), "never"),
        (
            admin::Definition {
                timezone: "Mars/Olympus".into(),
                ..definition("a", "* * * * *", "team")
            },
            "timezone",
        ),
        (definition("a", "* * * * *", "nobody"), "no audience"),
        (
            admin::Definition {
                template: "missing".into(),
                ..definition("a", "* * * * *", "team")
            },
            "no template",
        ),
        (
            admin::Definition {
                from: "a@example.com\r\nBcc: x@evil.test".into(),
                ..definition("a", "* * * * *", "team")
            },
            "from",
        ),
        (
            admin::Definition {
                stale_after: "soon".into(),
                ..definition("a", "* * * * *", "team")
            },
            "stale_after",
        ),
    ];
    for (d, want) in bad {
        let err = admin::add(&pg, &d).await.expect_err("rejected").to_string();
        assert!(err.contains(want), "{err:?} should mention {want:?}");
    }
    assert!(schedules::list(&pg).await.unwrap().is_empty());

    // One bad row: nothing imported, and the report names lines, not addresses.
    let csv = "email,name,subscribed\nada@example.com,Ada,yes\nnot-an-address,Bob,yes\ncy@example.com,Cy,perhaps\n";
    let err = audience::import(&pg, "team", csv.as_bytes())
        .await
        .expect_err("bad rows")
        .to_string();
    assert!(err.contains("line 3") && err.contains("line 4"), "{err}");
    assert!(
        !err.contains("not-an-address"),
        "the report echoes input: {err}"
    );
    let listed = audiences::list(&pg).await.unwrap();
    assert_eq!(listed[0].members, 0);
    // A good file imports; importing again updates in place.
    let csv = "email,name,subscribed\nada@example.com,Ada,yes\nbob@example.com,Bob,no\n";
    let r = audience::import(&pg, "team", csv.as_bytes()).await.unwrap();
    assert_eq!((r.rows, r.written), (2, 2));
    audience::import(
        &pg,
        "team",
        "email,name\nada@example.com,Ada L.\n".as_bytes(),
    )
    .await
    .unwrap();
    let listed = audiences::list(&pg).await.unwrap();
    assert_eq!((listed[0].members, listed[0].subscribed), (2, 1));
    let name: String = sqlx::query_scalar(
        "SELECT vars->>'name' FROM audience_members WHERE email = 'ada@example.com'",
    )
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!(name, "Ada L.");
}

#[sqlx::test]
async fn pausing_a_schedule_halts_its_fan_out_and_resuming_finishes_it(pg: PgPool) {
    const MEMBERS: i64 = 20_000;
    let redis = TestRedis::new();
    digest_template(&pg).await;
    audience_of(&pg, "everyone", MEMBERS).await;
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let cron = scheduler::cron::at_second(at);
    let s = admin::add(&pg, &definition("campaign", &cron, "everyone"))
        .await
        .unwrap();
    let (token, handle) = candidate(&pg, &redis, "pauser/1", 2000);
    let run_of = || async {
        schedules::runs(&pg, s.id, 1)
            .await
            .unwrap()
            .into_iter()
            .next()
    };
    eventually("the fan-out starts", WAIT, || async {
        run_of().await.filter(|r| r.enqueued > 0)
    })
    .await;
    admin::pause(&pg, "campaign").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let halted = run_of().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = run_of().await.unwrap();
    assert_eq!(halted.status, "fanning_out");
    assert!(
        halted.enqueued < MEMBERS as i32,
        "finished before the pause landed"
    );
    assert_eq!(
        still.enqueued, halted.enqueued,
        "the fan-out went on while paused"
    );
    admin::resume(&pg, "campaign").await.unwrap();
    let done = eventually(
        "the resumed fan-out finishes",
        Duration::from_secs(60),
        || async { run_of().await.filter(|r| r.status == "done") },
    )
    .await;
    token.cancel();
    handle.await.unwrap();
    assert_eq!(done.enqueued, MEMBERS as i32);
    assert_eq!(redis.xlen(&redis.keys.lane(0, Lane::Bulk)).await, MEMBERS);
}
