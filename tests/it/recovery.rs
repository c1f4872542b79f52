//! Recovery paths: long sends keep their entries (heartbeat), ambiguous sends are logged and
//! counted, and the reconciler re-enqueues jobs whose entries Redis lost.

use crate::support::proxy::{Mode, Proxy, upstream_of};
use crate::support::*;
use mailfleet::Lane;
use mailfleet::mock::MockConfig;
use mailfleet::store::emails::{self, NewRow};
use mailfleet::stream::pause;
use mailfleet::worker::AmbiguousPolicy;
use sqlx::PgPool;
use std::time::Duration;

#[sqlx::test]
async fn a_send_longer_than_the_visibility_timeout_is_not_taken_over(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    // Each send takes 3 s; the visibility timeout is 1.2 s (beats every 300 ms, slack for a
    // loaded machine) and two workers reclaim every 50 ms. Without the heartbeat the other
    // worker would take over every send and repeat it.
    let mock = TestMock::start(MockConfig {
        latency: Duration::from_millis(3000),
        ..Default::default()
    })
    .await;
    let ids: Vec<uuid::Uuid> = redis
        .producer()
        .send_many(
            (0..6)
                .map(|i| job(Lane::Tx, &format!("slow{i}@example.com")))
                .collect(),
        )
        .await
        .unwrap()
        .iter()
        .map(|e| e.id.as_uuid())
        .collect();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let mut s = settings();
        s.visibility_timeout_ms = 1200;
        s.reclaim_interval_ms = 50;
        workers.push(TestWorker::start(&pg, &redis, &mock.url, s).await);
    }
    eventually("every slow job sent and acked", WAIT, || async {
        (count_status(&pg, "sent").await == 6 && redis.pending(Lane::Tx).await == 0).then_some(())
    })
    .await;
    let counts = mock.state.counts();
    assert_eq!(counts.len(), 6);
    assert!(
        counts.values().all(|&n| n == 1),
        "a live slow send was repeated: {counts:?}"
    );
    let attempts: Vec<i32> = sqlx::query_scalar("SELECT attempts FROM emails WHERE id = ANY($1)")
        .bind(&ids)
        .fetch_all(&pg)
        .await
        .unwrap();
    assert!(
        attempts.iter().all(|&a| a == 1),
        "claims taken over: {attempts:?}"
    );
    for w in workers {
        w.stop().await;
    }
}

#[sqlx::test]
async fn a_stalled_redis_does_not_let_another_worker_take_a_live_send_over(pg: PgPool) {
    // The heartbeat's Postgres refresh is the fence against a takeover. If it waited on the
    // Redis touch, a Redis that stalls longer than the visibility timeout (a dead cluster
    // master, a partition) would let the other worker's claim take the send over and repeat
    // it: the cluster failover test caught 42 such repeats.
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let proxy = Proxy::start(upstream_of(&redis.url)).await;
    let via_proxy = redis.via(&proxy.url_for(&redis.url));
    let mock = TestMock::start(MockConfig {
        latency: Duration::from_millis(4000),
        ..Default::default()
    })
    .await;
    let mut s = settings();
    s.visibility_timeout_ms = 1200;
    s.reclaim_interval_ms = 50;
    let stalled = TestWorker::start_full(
        &pg,
        &via_proxy,
        &via_proxy.url,
        provider_config(&mock.url),
        s.clone(),
    )
    .await;
    let id = redis.enqueue(job(Lane::Tx, "stall@example.com")).await;
    eventually("the stalled worker claims the job", WAIT, || async {
        (count_status(&pg, "sending").await == 1).then_some(())
    })
    .await;
    // Its Redis hangs (a touch waits out the 5 s command timeout) while its send goes on.
    proxy.set(Mode::Blackhole);
    let other = TestWorker::start(&pg, &redis, &mock.url, s).await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    proxy.set(Mode::Pass);
    eventually("the job is sent and acked", WAIT, || async {
        (count_status(&pg, "sent").await == 1 && redis.pending(Lane::Tx).await == 0).then_some(())
    })
    .await;
    assert_eq!(
        mock.state.counts().values().copied().collect::<Vec<_>>(),
        vec![1],
        "a live send was taken over and repeated"
    );
    assert_eq!(unknown_attempts(&pg, id).await, 0, "no takeover was logged");
    stalled.stop().await;
    other.stop().await;
}

async fn unknown_attempts(pg: &PgPool, id: uuid::Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM email_attempts WHERE email_id = $1 AND outcome = 'unknown'",
    )
    .bind(id)
    .fetch_one(pg)
    .await
    .unwrap()
}

#[sqlx::test]
async fn a_timeout_after_the_request_left_is_logged_unknown_and_resent_then_held(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let mock = TestMock::start(MockConfig {
        latency: Duration::from_millis(2000),
        ..Default::default()
    })
    .await;
    let mut provider = provider_config(&mock.url);
    provider.timeout_ms = 150;
    let id = redis.enqueue(job(Lane::Tx, "timeout@example.com")).await;
    let mut s = settings();
    s.max_attempts = 2;
    s.retry_base_ms = 10;
    s.retry_max_ms = 20;
    let worker = TestWorker::start_with(&pg, &redis, provider.clone(), s).await;
    // Resend (the default): the first timeout is retried, the second is the last attempt and
    // leaves the job `unknown`. Both attempts are logged `unknown`.
    eventually("the job ends unknown", WAIT, || async {
        (status_of(&pg, id).await.as_deref() == Some("unknown")).then_some(())
    })
    .await;
    assert_eq!(unknown_attempts(&pg, id).await, 2);
    worker.stop().await;

    // Hold: one ambiguous attempt and the job is left `unknown` for an operator.
    let id = redis.enqueue(job(Lane::Tx, "held@example.com")).await;
    let mut s = settings();
    s.ambiguous = AmbiguousPolicy::Hold;
    let worker = TestWorker::start_with(&pg, &redis, provider, s).await;
    eventually("the held job ends unknown", WAIT, || async {
        (status_of(&pg, id).await.as_deref() == Some("unknown")).then_some(())
    })
    .await;
    assert_eq!(unknown_attempts(&pg, id).await, 1);
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM emails WHERE id = $1")
        .bind(id)
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(attempts, 1, "a held job is not sent again");
    worker.stop().await;
}

/// A mock and a worker whose reconciler passes often and soon, running until `n` emails are
/// `sent`.
async fn reconcile_until_sent(pg: &PgPool, redis: &TestRedis, n: i64) -> (TestMock, TestWorker) {
    let mock = TestMock::start(MockConfig::default()).await;
    let mut s = settings();
    s.reconcile_after = Duration::from_millis(300);
    s.reconcile_interval_ms = 50;
    let worker = TestWorker::start(pg, redis, &mock.url, s).await;
    eventually("every lost job sent", WAIT, || async {
        (count_status(pg, "sent").await == n).then_some(())
    })
    .await;
    (mock, worker)
}

fn queued_row(i: usize, due_at: Option<chrono::DateTime<chrono::Utc>>) -> NewRow {
    let payload = serde_json::to_string(&payload(&format!("lost{i}@example.com"))).unwrap();
    NewRow {
        id: uuid::Uuid::now_v7(),
        lane: "bulk",
        partition: 0,
        idempotency_key: None,
        tenant: None,
        recipient_domain: "example.com".into(),
        template: None,
        payload,
        enqueued_at: chrono::Utc::now(),
        due_at,
    }
}

#[sqlx::test]
async fn the_reconciler_reenqueues_jobs_redis_lost_and_leaves_future_ones(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    // Ten jobs the API accepted (rows `queued`) whose entries Redis then lost, and one due in an hour.
    let lost: Vec<NewRow> = (0..10).map(|i| queued_row(i, None)).collect();
    let future = queued_row(99, Some(chrono::Utc::now() + chrono::Duration::hours(1)));
    emails::insert_queued(&pg, &lost).await.unwrap();
    emails::insert_queued(&pg, std::slice::from_ref(&future))
        .await
        .unwrap();
    // One job mid-retry whose delayed member vanished.
    let retrying = queued_row(50, None);
    emails::insert_queued(&pg, std::slice::from_ref(&retrying))
        .await
        .unwrap();
    sqlx::query(
        "UPDATE emails SET status = 'retrying', attempts = 1, due_at = now() WHERE id = $1",
    )
    .bind(retrying.id)
    .execute(&pg)
    .await
    .unwrap();

    let (mock, worker) = reconcile_until_sent(&pg, &redis, 11).await;
    let counts = mock.state.counts();
    assert_eq!(counts.len(), 11);
    assert!(counts.values().all(|&n| n == 1));
    assert_eq!(status_of(&pg, future.id).await.as_deref(), Some("queued"));
    assert!(!counts.contains_key(&future.id.to_string()));
    let reenqueued: i32 = sqlx::query_scalar("SELECT reenqueued FROM emails WHERE id = $1")
        .bind(retrying.id)
        .fetch_one(&pg)
        .await
        .unwrap();
    // Once, or more if a loaded machine left it unclaimed past the (300 ms) threshold again.
    assert!(reenqueued >= 1, "re-enqueued, then sent");
    worker.stop().await;
}

#[sqlx::test]
async fn a_tenants_lost_bulk_goes_back_to_the_tenants_own_stream_not_the_shared_one(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    // A tenant's accepted bulk whose entries Redis lost: re-enqueued, it must wait on the
    // tenant's stream in the ring (its fair share), not crowd the shared bulk stream.
    let lost: Vec<NewRow> = (0..5)
        .map(|i| {
            let mut row = queued_row(i, None);
            let mut p = payload(&format!("lost{i}@example.com"));
            p.tenant = Some("acme".into());
            row.payload = serde_json::to_string(&p).unwrap();
            row.tenant = Some("acme".into());
            row
        })
        .collect();
    emails::insert_queued(&pg, &lost).await.unwrap();
    let (mock, worker) = reconcile_until_sent(&pg, &redis, 5).await;
    assert!(mock.state.counts().values().all(|&n| n == 1));
    assert_eq!(
        redis.xlen(&redis.keys.lane(0, Lane::Bulk)).await,
        0,
        "nothing was re-enqueued on the shared bulk stream"
    );
    worker.stop().await;
}

#[sqlx::test]
async fn a_reenqueued_job_whose_old_entry_survived_is_sent_once(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    // The entry was only slow, not lost: both it and the reconciler's copy reach a worker.
    let id = redis
        .enqueue(job(Lane::Bulk, "slow-not-lost@example.com"))
        .await;
    let payload = serde_json::to_string(&payload("slow-not-lost@example.com")).unwrap();
    let mut row = queued_row(0, None);
    row.id = id;
    row.payload = payload;
    emails::insert_queued(&pg, &[row]).await.unwrap();
    sqlx::query("UPDATE emails SET updated_at = now() - interval '1 hour' WHERE id = $1")
        .bind(id)
        .execute(&pg)
        .await
        .unwrap();
    let mock = TestMock::start(MockConfig::default()).await;
    let mut s = settings();
    s.reconcile_after = Duration::from_millis(100);
    s.reconcile_interval_ms = 10;
    let worker = TestWorker::start(&pg, &redis, &mock.url, s).await;
    eventually("sent and both entries acked", WAIT, || async {
        let entries = redis.xlen(&redis.keys.lane(0, Lane::Bulk)).await;
        (status_of(&pg, id).await.as_deref() == Some("sent")
            && entries >= 1
            && redis.pending(Lane::Bulk).await == 0)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mock.state.counts().get(&id.to_string()), Some(&1));
    worker.stop().await;
}

#[sqlx::test]
async fn the_reconciler_leaves_a_job_waiting_behind_a_backlog_and_resends_one_redis_lost(
    pg: PgPool,
) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    // A backlog no worker reads (paused lane), its jobs ledgered and long overdue.
    let producer = redis.producer().with_ledger(pg.clone());
    let waiting: Vec<uuid::Uuid> = producer
        .send_many(
            (0..20)
                .map(|i| job(Lane::Bulk, &format!("w{i}@example.com")))
                .collect(),
        )
        .await
        .unwrap()
        .iter()
        .map(|e| e.id.as_uuid())
        .collect();
    // One ledgered job whose entry Redis lost.
    let lost = queued_row(7, None);
    emails::insert_queued(&pg, std::slice::from_ref(&lost))
        .await
        .unwrap();
    sqlx::query("UPDATE emails SET updated_at = now() - interval '1 hour', enqueued_at = now() - interval '30 minutes'")
        .execute(&pg)
        .await
        .unwrap();
    // The backlog's entries stand at their real time (now): the group has delivered none.
    sqlx::query("UPDATE emails SET enqueued_at = now() WHERE id = ANY($1)")
        .bind(&waiting)
        .execute(&pg)
        .await
        .unwrap();
    let bulk = redis.keys.lane(0, Lane::Bulk);
    let before = redis.xlen(&bulk).await;

    let mock = TestMock::start(MockConfig::default()).await;
    let mut s = settings();
    s.reconcile_after = Duration::from_millis(200);
    s.reconcile_interval_ms = 20;
    // Bulk is paused: the backlog waits, as behind a provider limit.
    pause::set(
        &mut *redis.conn().await,
        &redis.keys,
        pause::Scope::Lane,
        "bulk",
    )
    .await
    .unwrap();
    let worker = TestWorker::start(&pg, &redis, &mock.url, s).await;
    eventually("the lost job re-enqueued", WAIT, || async {
        let n: i32 = sqlx::query_scalar("SELECT reenqueued FROM emails WHERE id = $1")
            .bind(lost.id)
            .fetch_one(&pg)
            .await
            .unwrap();
        (n >= 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again: i64 =
        sqlx::query_scalar("SELECT count(*) FROM emails WHERE id = ANY($1) AND reenqueued > 0")
            .bind(&waiting)
            .fetch_one(&pg)
            .await
            .unwrap();
    assert_eq!(again, 0, "no waiting job was re-enqueued");
    assert_eq!(
        redis.xlen(&bulk).await,
        before + 1,
        "only the lost job's entry was added"
    );
    worker.stop().await;
}
