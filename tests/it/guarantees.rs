//! The edges of the delivery guarantees: a dead job always reaches the dead-letter stream, a
//! job that crashes its worker stops, a webhook that outruns the recorder is kept, and a
//! producer with another partition count is refused.

use crate::support::*;
use mailfleet::Lane;
use mailfleet::mock::MockConfig;
use mailfleet::store::emails::{self, NewRow};
use mailfleet::store::webhooks::{self, Event, Kind};
use sqlx::PgPool;

/// The row a crashed worker left: claimed in Postgres under its own token long ago.
async fn claimed_long_ago(pg: &PgPool, id: uuid::Uuid, status: &str, attempts: i32) {
    let row = NewRow {
        id,
        lane: "tx",
        partition: 0,
        idempotency_key: None,
        tenant: None,
        recipient_domain: "example.com".into(),
        template: None,
        payload: "{}".into(),
        enqueued_at: chrono::Utc::now(),
        due_at: None,
    };
    emails::claim(pg, &[row], uuid::Uuid::now_v7(), 60_000, 100)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE emails SET status = $2, attempts = $3, claimed_at = now() - interval '1 hour'
          WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(attempts)
    .execute(pg)
    .await
    .unwrap();
}

fn fast_reclaim() -> mailfleet::worker::Settings {
    let mut s = settings();
    s.visibility_timeout_ms = 200;
    s.reclaim_interval_ms = 50;
    s
}

#[sqlx::test]
async fn a_pending_entry_of_a_dead_job_goes_to_the_dead_stream_not_just_acked(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let id = redis.enqueue(job(Lane::Tx, "gone@example.com")).await;
    // The recorder committed `dead`, then the worker died before dead_letter.lua ran.
    read_and_die(&redis, Lane::Tx, 10).await;
    claimed_long_ago(&pg, id, "dead", 3).await;
    let mock = TestMock::start(MockConfig::default()).await;
    let worker = TestWorker::start(&pg, &redis, &mock.url, fast_reclaim()).await;
    eventually("the entry reaches the dead stream", WAIT, || async {
        (redis.pending(Lane::Tx).await == 0 && redis.xlen(&redis.keys.dead(0)).await == 1)
            .then_some(())
    })
    .await;
    let dead = &redis.dead_entries().await[0];
    assert_eq!(dead["reason"], "dead_unlettered");
    assert_eq!(
        dead["orig_id"],
        id.to_string(),
        "replayable: the job is there"
    );
    assert_eq!(mock.state.stats().received, 0, "a dead job is never sent");
    worker.stop().await;
}

#[sqlx::test]
async fn an_entry_dead_lettered_at_max_deliveries_makes_its_job_dead(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let id = redis.enqueue(job(Lane::Tx, "crash@example.com")).await;
    // The job crashed its worker after the claim: pending in Redis, `sending` in Postgres.
    read_and_die(&redis, Lane::Tx, 10).await;
    claimed_long_ago(&pg, id, "sending", 1).await;
    let mock = TestMock::start(MockConfig::default()).await;
    let mut s = fast_reclaim();
    s.max_deliveries = 1;
    let worker = TestWorker::start(&pg, &redis, &mock.url, s).await;
    eventually("dead-lettered and dead in Postgres", WAIT, || async {
        (redis.xlen(&redis.keys.dead(0)).await == 1
            && status_of(&pg, id).await.as_deref() == Some("dead"))
        .then_some(())
    })
    .await;
    assert_eq!(redis.dead_entries().await[0]["reason"], "max_deliveries");
    // The reconciler leaves a dead job alone: nothing puts it back on a lane.
    let overdue = emails::take_overdue(&pg, std::time::Duration::ZERO, 0, 100)
        .await
        .unwrap();
    assert!(overdue.is_empty(), "a dead-lettered job is not re-enqueued");
    assert_eq!(mock.state.stats().received, 0);
    worker.stop().await;
}

#[sqlx::test]
async fn a_takeover_with_the_attempts_used_up_ends_dead_instead_of_sending_again(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let id = redis.enqueue(job(Lane::Tx, "loop@example.com")).await;
    // Re-enqueued by the reconciler after earlier crashes: a fresh entry (delivery count 1),
    // but every attempt the ledger counts ended without an outcome.
    read_and_die(&redis, Lane::Tx, 10).await;
    let mut s = fast_reclaim();
    s.max_attempts = 3;
    claimed_long_ago(&pg, id, "sending", 3).await;
    let mock = TestMock::start(MockConfig::default()).await;
    let worker = TestWorker::start(&pg, &redis, &mock.url, s).await;
    eventually("dead, and in the dead stream", WAIT, || async {
        (status_of(&pg, id).await.as_deref() == Some("dead")
            && redis.xlen(&redis.keys.dead(0)).await == 1
            && redis.pending(Lane::Tx).await == 0)
            .then_some(())
    })
    .await;
    let dead = &redis.dead_entries().await[0];
    assert_eq!(
        (dead["reason"].as_str(), dead["class"].as_str()),
        ("max_attempts", "no_outcome")
    );
    assert_eq!(
        mock.state.stats().received,
        0,
        "the circle stops: no fourth attempt"
    );
    let unknown: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM email_attempts WHERE email_id = $1 AND outcome = 'unknown'",
    )
    .bind(id)
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!(unknown, 1, "the crashed attempt is counted as ambiguous");
    worker.stop().await;
}

#[sqlx::test]
async fn a_webhook_event_that_outruns_the_recorder_is_applied_once_the_job_is_sent(pg: PgPool) {
    let id = uuid::Uuid::now_v7();
    claimed_long_ago(&pg, id, "sending", 1).await;
    let event = |event_id: &str, kind| Event {
        provider: "sendgrid",
        event_id: event_id.into(),
        kind,
        job_id: Some(id),
        recipient: None,
    };
    assert_eq!(
        webhooks::apply(&pg, &[event("e1", Kind::Delivered)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        status_of(&pg, id).await.as_deref(),
        Some("sending"),
        "not yet"
    );
    assert_eq!(
        webhooks::apply_pending(&pg).await.unwrap(),
        0,
        "still sending"
    );
    sqlx::query("UPDATE emails SET status = 'sent' WHERE id = $1")
        .bind(id)
        .execute(&pg)
        .await
        .unwrap();
    assert_eq!(webhooks::apply_pending(&pg).await.unwrap(), 1);
    assert_eq!(status_of(&pg, id).await.as_deref(), Some("delivered"));
    // Applied once: a later pass and a repeated delivery of the event change nothing.
    assert_eq!(webhooks::apply_pending(&pg).await.unwrap(), 0);
    assert_eq!(
        webhooks::apply(&pg, &[event("e1", Kind::Delivered)])
            .await
            .unwrap(),
        0
    );
    // A later bounce applies at once.
    webhooks::apply(&pg, &[event("e2", Kind::HardBounce)])
        .await
        .unwrap();
    assert_eq!(status_of(&pg, id).await.as_deref(), Some("bounced"));
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE pending")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(pending, 0);
}

#[sqlx::test]
async fn a_pending_event_for_a_job_that_failed_is_let_go(pg: PgPool) {
    let id = uuid::Uuid::now_v7();
    claimed_long_ago(&pg, id, "sending", 1).await;
    let e = Event {
        provider: "postmark",
        event_id: "p1".into(),
        kind: Kind::Delivered,
        job_id: Some(id),
        recipient: None,
    };
    webhooks::apply(&pg, &[e]).await.unwrap();
    sqlx::query("UPDATE emails SET status = 'failed' WHERE id = $1")
        .bind(id)
        .execute(&pg)
        .await
        .unwrap();
    assert_eq!(webhooks::apply_pending(&pg).await.unwrap(), 0);
    assert_eq!(status_of(&pg, id).await.as_deref(), Some("failed"));
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE pending")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(pending, 0, "nothing waits forever");
}

#[sqlx::test]
async fn producers_and_workers_that_disagree_on_the_partition_count_are_refused(pg: PgPool) {
    let redis = TestRedis::new();
    // The first to start records its count (1).
    redis.enqueue(job(Lane::Tx, "first@example.com")).await;
    let wider = mailfleet::Producer::from_pool(
        redis.pool.clone(),
        mailfleet::stream::Keys::new(redis.keys.prefix(), 4),
    );
    let err = wider
        .send(job(Lane::Tx, "lost@example.com"))
        .await
        .expect_err("a producer writing to partitions no worker reads");
    let msg = err.to_string();
    assert!(
        msg.contains("4 partition(s)") && msg.contains("records 1"),
        "{msg}"
    );
    assert_eq!(
        redis.xlen(&redis.keys.lane(0, Lane::Tx)).await,
        1,
        "nothing of the refused producer was enqueued"
    );
    // A worker with another count does not start.
    let out = mailfleet(&pg, &redis)
        .arg("--partitions")
        .arg("2")
        .arg("worker")
        .output()
        .await
        .expect("run a worker");
    assert!(!out.status.success(), "a mismatched worker must not run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("records 1"), "{stderr}");
}

/// `mailfleet ARGS` with the process's clock two hours behind (libfaketime; monotonic time
/// left alone), as on a CLI host whose clock is off.
async fn mailfleet_two_hours_behind(pg: &PgPool, redis: &TestRedis, args: &[&str]) {
    let out = tokio::process::Command::new("faketime")
        .args(["-f", "-2h", BIN])
        .args(args)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("MAILFLEET_DATABASE_URL", db_url(pg))
        .env("MAILFLEET_REDIS_URL", &redis.url)
        .env("MAILFLEET_PREFIX", redis.keys.prefix())
        .output()
        .await
        .expect("faketime (scripts/services.sh --test-tools installs it)");
    assert!(
        out.status.success(),
        "mailfleet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[sqlx::test]
async fn schedule_times_come_from_postgres_not_the_cli_hosts_clock(pg: PgPool) {
    let redis = TestRedis::new();
    let behind = |args: &'static str| {
        let args: Vec<&str> = args.split(' ').collect();
        let (pg, redis) = (&pg, &redis);
        async move { mailfleet_two_hours_behind(pg, redis, &args).await }
    };
    behind("template put digest --subject Hi --text Hello").await;
    behind("audience create team").await;
    let seconds_ahead = || async {
        let (next, now): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
            sqlx::query_as("SELECT next_tick, now() FROM schedules WHERE name = 'minutely'")
                .fetch_one(&pg)
                .await
                .unwrap();
        (next - now).num_seconds()
    };
    mailfleet_two_hours_behind(
        &pg,
        &redis,
        &[
            "schedule",
            "add",
            "minutely",
            "--cron",
            "* * * * *",
            "--template",
            "digest",
            "--audience",
            "team",
            "--from",
            "news@example.com",
        ],
    )
    .await;
    let ahead = seconds_ahead().await;
    assert!(
        (0..=60).contains(&ahead),
        "the first tick is the next minute by Postgres' clock, not two hours ago: {ahead} s"
    );
    behind("schedule pause minutely").await;
    behind("schedule resume minutely").await;
    let ahead = seconds_ahead().await;
    assert!(
        (0..=60).contains(&ahead),
        "resumed from Postgres' now: {ahead} s"
    );
}
