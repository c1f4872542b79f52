//! Retention: the scheduler leader trims acked entries from the lane streams, and
//! `mailfleet prune --older-than` deletes old final rows and nothing else.

use crate::support::*;
use mailfleet::Lane;
use mailfleet::mock::MockConfig;
use sqlx::PgPool;
use uuid::Uuid;

#[sqlx::test]
async fn the_leader_trims_what_was_acked_and_keeps_the_rest(pg: PgPool) {
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig::default()).await;
    let mut worker = mailfleet(&pg, &redis)
        .args(["worker", "--listen", "", "--consumer", "trimmer"])
        .env("MAILFLEET_TRIM_INTERVAL_SECS", "1")
        .env("MAILFLEET_LEASE_TTL_MS", "1000")
        .env("MAILFLEET_SENDGRID_URL", &mock.url)
        .env("MAILFLEET_SENDGRID_API_KEY", "test-key")
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start a worker");
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            redis
                .enqueue(job(Lane::Tx, &format!("t{i}@example.com")))
                .await,
        );
    }
    for id in &ids {
        eventually("sent", WAIT, || async {
            (status_of(&pg, *id).await.as_deref() == Some("sent")).then_some(())
        })
        .await;
    }
    let tx = redis.keys.lane(0, Lane::Tx);
    // Everything was acked: the leader trims all but the last delivered entry.
    eventually("the stream trimmed", WAIT, || async {
        (redis.xlen(&tx).await <= 1).then_some(())
    })
    .await;
    assert_eq!(mock.state.stats().received, 20, "trimming resent nothing");
    if let Some(pid) = worker.id() {
        signal(pid, SIGTERM);
    }
    let _ = worker.wait().await;
}

/// A row as the workers leave it, enqueued `days` ago.
async fn row(pg: &PgPool, days: i64, status: &str) -> Uuid {
    let at = chrono::Utc::now() - chrono::Duration::days(days);
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        at.timestamp() as u64,
        at.timestamp_subsec_nanos(),
    );
    let id = Uuid::new_v7(ts);
    sqlx::query(
        "INSERT INTO emails (id, status, lane, payload, enqueued_at, updated_at, recipient_domain)
         VALUES ($1, $2, 'tx', '{}', $3, $3, 'example.com')",
    )
    .bind(id)
    .bind(status)
    .bind(at)
    .execute(pg)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO email_attempts (email_id, attempt, outcome, started_at, finished_at)
         VALUES ($1, 1, 'sent', $2, $2)",
    )
    .bind(id)
    .bind(at)
    .execute(pg)
    .await
    .unwrap();
    id
}

async fn exists(pg: &PgPool, id: Uuid) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM emails WHERE id = $1)")
        .bind(id)
        .fetch_one(pg)
        .await
        .unwrap()
}

async fn prune(pg: &PgPool, redis: &TestRedis, args: &[&str]) -> (bool, String) {
    let out = mailfleet(pg, redis)
        .arg("prune")
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[sqlx::test]
async fn prune_deletes_old_final_rows_only(pg: PgPool) {
    let redis = TestRedis::new();
    let old_sent = row(&pg, 40, "sent").await;
    let old_bounced = row(&pg, 40, "bounced").await;
    let old_open = row(&pg, 40, "retrying").await;
    let new_sent = row(&pg, 5, "sent").await;
    sqlx::query(
        "INSERT INTO webhook_events (provider, event_id, kind, received_at)
         VALUES ('sendgrid', 'old', 'delivered', now() - interval '40 days'),
                ('sendgrid', 'new', 'delivered', now())",
    )
    .execute(&pg)
    .await
    .unwrap();

    let (ok, out) = prune(&pg, &redis, &["--older-than", "1h"]).await;
    assert!(!ok && out.contains("at least 1d"), "{out}");
    let (ok, out) = prune(&pg, &redis, &["--older-than", "30d", "--dry-run"]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("would delete emails=2 attempts=2 webhook_events=1"),
        "{out}"
    );
    assert!(exists(&pg, old_sent).await, "a dry run deletes nothing");

    let (ok, out) = prune(&pg, &redis, &["--older-than", "30d", "--batch", "1"]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("deleted emails=2 attempts=2 webhook_events=1"),
        "{out}"
    );
    assert!(!exists(&pg, old_sent).await && !exists(&pg, old_bounced).await);
    assert!(
        exists(&pg, old_open).await,
        "a job not final is never pruned"
    );
    assert!(exists(&pg, new_sent).await, "a recent job stays");
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM email_attempts")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(attempts, 2, "the attempts of the kept rows stay");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(events, 1);
}
