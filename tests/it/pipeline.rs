//! The happy path and its ordering guarantees: producer → stream → worker → provider →
//! Postgres → ack.

use crate::support::*;
use mailfleet::Lane;
use mailfleet::mock::MockConfig;
use sqlx::PgPool;
use std::time::Duration;

#[sqlx::test]
async fn a_job_from_the_library_producer_is_recorded_sent(pg: PgPool) {
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig::default()).await;
    let worker = TestWorker::start(&pg, &redis, &mock.url, settings()).await;

    let e = redis
        .producer()
        .send(job(Lane::Tx, "ada@example.com"))
        .await
        .unwrap();
    assert!(e.added);
    let id = e.id.as_uuid();
    eventually("the job is sent", WAIT, || async {
        (status_of(&pg, id).await.as_deref() == Some("sent")).then_some(())
    })
    .await;
    assert_eq!(mock.state.counts().get(&e.id.to_string()), Some(&1));
    let (provider, msg_id, attempts): (String, Option<String>, i32) =
        sqlx::query_as("SELECT provider, provider_message_id, attempts FROM emails WHERE id = $1")
            .bind(id)
            .fetch_one(&pg)
            .await
            .unwrap();
    assert_eq!((provider.as_str(), attempts), ("sendgrid", 1));
    assert!(msg_id.is_some(), "the provider's message id is recorded");
    let logged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM email_attempts WHERE email_id = $1 AND outcome = 'sent'",
    )
    .bind(id)
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!(logged, 1);
    eventually("the entry is acked", WAIT, || async {
        (redis.pending(Lane::Tx).await == 0).then_some(())
    })
    .await;
    worker.stop().await;
}

#[sqlx::test]
async fn send_many_pipelines_a_batch_and_every_email_arrives_once(pg: PgPool) {
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig::default()).await;
    let worker = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    let jobs = (0..500)
        .map(|i| {
            job(
                if i % 3 == 0 { Lane::Tx } else { Lane::Bulk },
                &format!("u{i}@example.com"),
            )
        })
        .collect();
    let out = redis.producer().send_many(jobs).await.unwrap();
    assert_eq!(out.len(), 500);
    eventually("all 500 sent", WAIT, || async {
        (count_status(&pg, "sent").await == 500).then_some(())
    })
    .await;
    let stats = mock.state.stats();
    assert_eq!(
        (stats.received, stats.unique, stats.duplicates),
        (500, 500, 0)
    );
    worker.stop().await;
}

#[sqlx::test]
async fn a_duplicate_idempotency_key_is_enqueued_once(pg: PgPool) {
    let redis = TestRedis::new();
    let producer = redis.producer();
    let mut first = job(Lane::Tx, "ada@example.com");
    first.idempotency_key = Some("order-42".into());
    let a = producer.send(first.clone()).await.unwrap();
    let b = producer.send(first.clone()).await.unwrap();
    let c = producer
        .send_many(vec![first.clone(), first])
        .await
        .unwrap();
    assert!(a.added);
    assert!(!b.added && !c[0].added && !c[1].added);
    assert!(
        [b.id, c[0].id, c[1].id].iter().all(|id| *id == a.id),
        "duplicates return the first job's id"
    );
    assert_eq!(
        redis.xlen(&redis.keys.lane(0, Lane::Tx)).await,
        1,
        "exactly one entry was added"
    );

    let mock = TestMock::start(MockConfig::default()).await;
    let worker = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    eventually("sent", WAIT, || async {
        (count_status(&pg, "sent").await == 1).then_some(())
    })
    .await;
    assert_eq!(mock.state.stats().received, 1);
    worker.stop().await;
}

#[sqlx::test]
async fn one_idempotency_key_used_by_two_tenants_sends_one_email_for_each(pg: PgPool) {
    let redis = TestRedis::new();
    let producer = redis.producer();
    let keyed = |lane: Lane, tenant: &str, to: &str| {
        let mut j = job(lane, to);
        // One key per lane: a tenant's key is one job whatever its lane.
        j.idempotency_key = Some(format!("order-42-{lane}"));
        j.payload.tenant = Some(tenant.into());
        j
    };
    let mut ids = Vec::new();
    for lane in [Lane::Tx, Lane::Bulk] {
        let a = producer
            .send(keyed(lane, "acme", "ada@example.com"))
            .await
            .unwrap();
        let b = producer
            .send(keyed(lane, "globex", "bob@example.com"))
            .await
            .unwrap();
        let again = producer
            .send(keyed(lane, "globex", "bob@example.com"))
            .await
            .unwrap();
        assert!(
            a.added && b.added,
            "{lane}: another tenant's key is not a duplicate"
        );
        assert!(
            !again.added && again.id == b.id,
            "{lane}: the same tenant's key is"
        );
        assert_ne!(a.id, b.id);
        ids.extend([a.id.as_uuid(), b.id.as_uuid()]);
    }
    // Without a tenant the key is its own namespace too.
    let mut plain = job(Lane::Tx, "cy@example.com");
    plain.idempotency_key = Some("order-42-tx".into());
    let plain = producer.send(plain).await.unwrap();
    assert!(plain.added);
    ids.push(plain.id.as_uuid());

    let mock = TestMock::start(MockConfig::default()).await;
    let worker = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    eventually("every tenant's email sent", WAIT, || async {
        (count_status(&pg, "sent").await == 5).then_some(())
    })
    .await;
    for id in ids {
        assert_eq!(status_of(&pg, id).await.as_deref(), Some("sent"));
    }
    assert_eq!(mock.state.stats().received, 5);
    worker.stop().await;
}

#[sqlx::test]
async fn the_tx_lane_is_served_before_a_bulk_backlog(pg: PgPool) {
    let redis = TestRedis::new();
    let producer = redis.producer();
    redis.ensure_groups().await;
    let backlog = (0..1000)
        .map(|i| job(Lane::Bulk, &format!("b{i}@example.com")))
        .collect();
    producer.send_many(backlog).await.unwrap();
    // Enqueued last, after the whole backlog.
    let tx = producer
        .send(job(Lane::Tx, "urgent@example.com"))
        .await
        .unwrap()
        .id
        .as_uuid();

    let mock = TestMock::start(MockConfig {
        latency: Duration::from_millis(2),
        ..MockConfig::default()
    })
    .await;
    let mut s = settings();
    s.batch_size = 20;
    s.max_in_flight = 20; // one batch at a time: the order of reads is the order of sends
    let worker = TestWorker::start(&pg, &redis, &mock.url, s).await;
    eventually("the tx email is sent", WAIT, || async {
        (status_of(&pg, tx).await.as_deref() == Some("sent")).then_some(())
    })
    .await;
    let bulk_before: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM emails WHERE id <> $1 AND status = 'sent'
            AND recorded_at < (SELECT recorded_at FROM emails WHERE id = $1)",
    )
    .bind(tx)
    .fetch_one(&pg)
    .await
    .unwrap();
    // FIFO would have sent all 1000 first. Tx has its own reader, so what may finish before
    // it is at most the one bulk batch read alongside it, never the backlog queued ahead.
    assert!(
        bulk_before <= 20,
        "{bulk_before} bulk emails were recorded before the tx email"
    );
    worker.stop().await;
}

#[sqlx::test]
async fn a_job_already_sent_in_postgres_is_acked_without_a_second_send(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let e = redis
        .producer()
        .send(job(Lane::Tx, "ada@example.com"))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO emails (id, status, lane, payload, enqueued_at, attempts, sent_at)
         VALUES ($1, 'sent', 'tx', '{}', now(), 1, now())",
    )
    .bind(e.id.as_uuid())
    .execute(&pg)
    .await
    .unwrap();
    let mock = TestMock::start(MockConfig::default()).await;
    let worker = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    // Read, found final, acked.
    eventually("the entry is read and acked", WAIT, || async {
        (redis.group_progress(Lane::Tx).await == (1, 0)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        mock.state.stats().received,
        0,
        "the provider saw no second send"
    );
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM emails WHERE id = $1")
        .bind(e.id.as_uuid())
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(attempts, 1, "the final row was not claimed again");
    worker.stop().await;
}

#[sqlx::test]
async fn a_future_send_at_waits_in_the_delayed_set(pg: PgPool) {
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig::default()).await;
    let worker = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    let mut j = job(Lane::Tx, "later@example.com");
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    j.payload.send_at = Some(at);
    let id = redis.producer().send(j).await.unwrap().id.as_uuid();
    let delayed: i64 = redis::cmd("ZCARD")
        .arg(redis.keys.delayed_tx(0))
        .query_async(&mut *redis.conn().await)
        .await
        .unwrap();
    assert_eq!(delayed, 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        status_of(&pg, id).await,
        None,
        "not picked up before its time"
    );
    eventually("sent after its time", WAIT, || async {
        (status_of(&pg, id).await.as_deref() == Some("sent")).then_some(())
    })
    .await;
    let sent_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT sent_at FROM emails WHERE id = $1")
            .bind(id)
            .fetch_one(&pg)
            .await
            .unwrap();
    assert!(sent_at >= at, "sent at {sent_at}, due {at}");
    assert!(
        sent_at - at < chrono::Duration::seconds(1),
        "sent {} late",
        sent_at - at
    );
    worker.stop().await;
}

#[sqlx::test]
async fn a_named_template_renders_with_per_recipient_vars_and_html_escaping(pg: PgPool) {
    let redis = TestRedis::new();
    mailfleet::store::templates::put(
        &pg,
        "welcome",
        "Hi {{ name }}",
        Some("<p>{{ name }}</p>"),
        Some("Hi {{ name }}"),
    )
    .await
    .unwrap();
    let mock = TestMock::start(MockConfig::default()).await;
    let worker = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    let payload: mailfleet::Payload = serde_json::from_value(serde_json::json!({
        "to": ["ada@example.com"], "from": "shop@example.com", "template": "welcome", "vars": {"name": "<Ada>"}
    }))
    .unwrap();
    let ok = redis
        .producer()
        .send(mailfleet::NewJob {
            lane: Lane::Bulk,
            idempotency_key: None,
            payload,
        })
        .await
        .unwrap();
    let payload: mailfleet::Payload = serde_json::from_value(serde_json::json!({
        "to": ["ada@example.com"], "from": "shop@example.com", "template": "no-such-template"
    }))
    .unwrap();
    let missing = redis
        .producer()
        .send(mailfleet::NewJob {
            lane: Lane::Bulk,
            idempotency_key: None,
            payload,
        })
        .await
        .unwrap();
    eventually("both recorded", WAIT, || async {
        let a = status_of(&pg, ok.id.as_uuid()).await;
        let b = status_of(&pg, missing.id.as_uuid()).await;
        (a.as_deref() == Some("sent") && b.as_deref() == Some("failed")).then_some(())
    })
    .await;
    let err: String = sqlx::query_scalar("SELECT last_error FROM emails WHERE id = $1")
        .bind(missing.id.as_uuid())
        .fetch_one(&pg)
        .await
        .unwrap();
    assert!(err.contains("no-such-template"), "{err}");
    assert_eq!(
        mock.state.stats().received,
        1,
        "the unrenderable email never reached the provider"
    );
    worker.stop().await;
}
