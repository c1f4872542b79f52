//! The guarantees: ack after commit, poison to the dead-letter stream, retries through the
//! delayed set, claim tokens that fence out stale outcomes.

use crate::support::*;
use mailfleet::Lane;
use mailfleet::mock::MockConfig;
use mailfleet::store::emails::{self, NewRow, Outcome};
use sqlx::PgPool;
use std::time::Duration;

#[sqlx::test]
async fn an_ack_never_precedes_the_commit_of_its_outcome(pg: PgPool) {
    // Make every outcome write fail until we allow it.
    sqlx::raw_sql(
        "CREATE FUNCTION block_outcomes() RETURNS trigger AS $$
         BEGIN IF NEW.status = 'sent' THEN RAISE EXCEPTION 'outcome writes blocked by the test'; END IF; RETURN NEW; END $$
         LANGUAGE plpgsql;
         CREATE TRIGGER block_outcomes BEFORE UPDATE ON emails FOR EACH ROW EXECUTE FUNCTION block_outcomes();",
    )
    .execute(&pg)
    .await
    .unwrap();
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig::default()).await;
    let worker = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    redis
        .producer()
        .send_many(
            (0..20)
                .map(|i| job(Lane::Tx, &format!("u{i}@example.com")))
                .collect(),
        )
        .await
        .unwrap();

    eventually("the provider accepted them all", WAIT, || async {
        (mock.state.stats().received == 20).then_some(())
    })
    .await;
    // The outcome cannot commit, so nothing may be acked.
    for _ in 0..10 {
        assert_eq!(
            redis.pending(Lane::Tx).await,
            20,
            "an entry was acked before its outcome committed"
        );
        assert_eq!(count_status(&pg, "sent").await, 0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::query("DROP TRIGGER block_outcomes ON emails")
        .execute(&pg)
        .await
        .unwrap();
    eventually("recorded, then acked", WAIT, || async {
        (count_status(&pg, "sent").await == 20 && redis.pending(Lane::Tx).await == 0).then_some(())
    })
    .await;
    assert_eq!(
        mock.state.stats().duplicates,
        0,
        "held acks did not cause resends"
    );
    worker.stop().await;
}

#[sqlx::test]
async fn malformed_entries_go_to_the_dead_stream_and_the_worker_keeps_going(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let lane = redis.keys.lane(0, Lane::Tx);
    let id = uuid::Uuid::now_v7().to_string();
    let big = format!(
        "{{\"to\":[\"a@example.com\"],\"from\":\"b@example.com\",\"subject\":\"s\",\"text\":\"{}\"}}",
        "x".repeat(300 * 1024)
    );
    let entries: Vec<Vec<(&str, Vec<u8>)>> = vec![
        vec![("hello", b"world".to_vec())],
        vec![("v", b"2".to_vec()), ("id", id.clone().into_bytes()), ("enqueued_at", b"1".to_vec()), ("payload", b"{}".to_vec())],
        vec![("v", b"1".to_vec()), ("id", id.clone().into_bytes()), ("enqueued_at", b"1".to_vec()), ("payload", b"{nope".to_vec())],
        vec![("v", b"1".to_vec()), ("id", id.clone().into_bytes()), ("enqueued_at", b"1".to_vec()), ("payload", vec![0xff, 0xfe, 0x00])],
        vec![("v", b"1".to_vec()), ("id", id.clone().into_bytes()), ("enqueued_at", b"1".to_vec()), ("payload", big.into_bytes())],
        vec![("v", b"1".to_vec()), ("id", id.clone().into_bytes()), ("enqueued_at", b"1".to_vec()),
             ("payload", br#"{"to":["a@example.com"],"from":"b@example.com","subject":"x\r\nBcc: e@evil.com","text":"t"}"#.to_vec())],
    ];
    let mut conn = redis.conn().await;
    for fields in &entries {
        let mut c = redis::cmd("XADD");
        c.arg(&lane).arg("*");
        for (k, v) in fields {
            c.arg(*k).arg(v.as_slice());
        }
        let _: String = c.query_async(&mut *conn).await.unwrap();
    }
    drop(conn);
    let good = redis
        .producer()
        .send(job(Lane::Tx, "ok@example.com"))
        .await
        .unwrap();

    let mock = TestMock::start(MockConfig::default()).await;
    let worker = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    eventually("the valid job behind the poison is sent", WAIT, || async {
        (status_of(&pg, good.id.as_uuid()).await.as_deref() == Some("sent")).then_some(())
    })
    .await;
    eventually(
        "every poison entry dead-lettered and acked",
        WAIT,
        || async {
            (redis.xlen(&redis.keys.dead(0)).await == 6 && redis.pending(Lane::Tx).await == 0)
                .then_some(())
        },
    )
    .await;
    let dead = redis.dead_entries().await;
    let reasons: Vec<&str> = dead.iter().map(|m| m["reason"].as_str()).collect();
    assert_eq!(
        reasons,
        [
            "missing_field",
            "unknown_version",
            "bad_json",
            "not_utf8",
            "too_large",
            "invalid_email"
        ]
    );
    assert_eq!(
        dead[0].get("orig_hello").map(String::as_str),
        Some("world"),
        "the original fields are kept"
    );
    assert!(dead[5]["error"].contains("subject"), "{}", dead[5]["error"]);
    assert_eq!(
        mock.state.stats().received,
        1,
        "no poison reached the provider"
    );
    worker.stop().await;
}

#[sqlx::test]
async fn transient_failures_retry_through_the_delayed_set_then_die_at_max_attempts(pg: PgPool) {
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig {
        failure_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    let mut s = settings();
    s.max_attempts = 3;
    s.retry_base_ms = 20;
    s.retry_max_ms = 50;
    let worker = TestWorker::start(&pg, &redis, &mock.url, s).await;
    let id = redis.enqueue(job(Lane::Tx, "ada@example.com")).await;
    eventually("dead after 3 attempts", WAIT, || async {
        (status_of(&pg, id).await.as_deref() == Some("dead")).then_some(())
    })
    .await;
    let (attempts, err): (i32, String) =
        sqlx::query_as("SELECT attempts, last_error FROM emails WHERE id = $1")
            .bind(id)
            .fetch_one(&pg)
            .await
            .unwrap();
    assert_eq!(attempts, 3);
    assert!(err.contains("503"), "{err}");
    let outcomes: Vec<String> = sqlx::query_scalar(
        "SELECT outcome FROM email_attempts WHERE email_id = $1 ORDER BY attempt",
    )
    .bind(id)
    .fetch_all(&pg)
    .await
    .unwrap();
    assert_eq!(outcomes, ["retrying", "retrying", "dead"]);
    assert_eq!(mock.state.stats().failed_injected, 3);
    eventually("dead-lettered with its reason", WAIT, || async {
        (redis.xlen(&redis.keys.dead(0)).await == 1 && redis.pending(Lane::Tx).await == 0)
            .then_some(())
    })
    .await;
    let zcard: i64 = redis::cmd("ZCARD")
        .arg(redis.keys.delayed_tx(0))
        .query_async(&mut *redis.conn().await)
        .await
        .unwrap();
    assert_eq!(zcard, 0, "nothing left scheduled");
    worker.stop().await;
}

fn row(id: uuid::Uuid) -> NewRow {
    NewRow {
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
    }
}

fn outcome(id: uuid::Uuid, token: uuid::Uuid, attempt: i32) -> Outcome {
    Outcome {
        id,
        token,
        status: mailfleet::domain::Status::Sent,
        attempt,
        provider: Some("sendgrid".into()),
        message_id: Some(format!("m-{attempt}")),
        error: None,
        http_status: Some(202),
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
        retry_in_ms: None,
        attempt_outcome: None,
        tried: Vec::new(),
    }
}

#[sqlx::test]
async fn a_stale_claim_tokens_outcome_is_rejected(pg: PgPool) {
    let id = uuid::Uuid::now_v7();
    let (old, new) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let first = emails::claim(&pg, &[row(id)], old, 60_000, 8)
        .await
        .unwrap();
    assert_eq!(first.claimed.len(), 1);
    assert!(!first.claimed[0].takeover, "a first claim is no takeover");
    // A live claim is not taken over, and the row is not reported final either...
    let busy = emails::claim(&pg, &[row(id)], new, 60_000, 8)
        .await
        .unwrap();
    assert!(busy.claimed.is_empty() && busy.finished.is_empty());
    // ...an expired one is.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let c = emails::claim(&pg, &[row(id)], new, 10, 8).await.unwrap();
    assert_eq!(c.claimed[0].attempt, 2);
    assert!(
        c.claimed[0].takeover,
        "taking over an expired claim is flagged"
    );
    // The first attempt's fate is unknown (it may have reached the provider): logged and counted.
    let unknown: Vec<i32> = sqlx::query_scalar(
        "SELECT attempt FROM email_attempts WHERE email_id = $1 AND outcome = 'unknown'",
    )
    .bind(id)
    .fetch_all(&pg)
    .await
    .unwrap();
    assert_eq!(unknown, vec![1]);
    // The zombie's outcome changes nothing; the current holder's lands.
    assert!(
        emails::record(&pg, &[outcome(id, old, 1)])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(status_of(&pg, id).await.as_deref(), Some("sending"));
    assert_eq!(
        emails::record(&pg, &[outcome(id, new, 2)]).await.unwrap(),
        vec![id]
    );
    let msg: String = sqlx::query_scalar("SELECT provider_message_id FROM emails WHERE id = $1")
        .bind(id)
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(msg, "m-2");
    // A final row is never claimed again, however old.
    let again = emails::claim(&pg, &[row(id)], uuid::Uuid::now_v7(), 0, 8)
        .await
        .unwrap();
    assert!(again.claimed.is_empty());
    assert_eq!(
        again.finished,
        vec![id],
        "reported final, so its entry is acked"
    );
    // Recording the same outcome again (a retry after a lost reply) is reported applied, so
    // its entry is acked, and changes nothing.
    assert_eq!(
        emails::record(&pg, &[outcome(id, new, 2)]).await.unwrap(),
        vec![id]
    );
    assert_eq!(status_of(&pg, id).await.as_deref(), Some("sent"));
}

#[sqlx::test]
async fn a_claim_retried_after_its_reply_was_lost_gets_its_jobs_back(pg: PgPool) {
    // The claim committed, the connection died before the reply, the worker retries with the
    // same token: the jobs are its own, not a live claim of someone else's to wait out.
    let id = uuid::Uuid::now_v7();
    let token = uuid::Uuid::now_v7();
    let first = emails::claim(&pg, &[row(id)], token, 60_000, 8)
        .await
        .unwrap();
    let again = emails::claim(&pg, &[row(id)], token, 60_000, 8)
        .await
        .unwrap();
    assert_eq!(again.claimed, first.claimed, "same attempt, no takeover");
    let unknown: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM email_attempts WHERE email_id = $1 AND outcome = 'unknown'",
    )
    .bind(id)
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!(unknown, 0, "a retried claim is not an ambiguous event");
    // The same for a record whose reply was lost: retried, it is applied once and reported
    // applied both times (so the entry is acked), with one attempt row.
    let o = outcome(id, token, first.claimed[0].attempt);
    assert_eq!(
        emails::record(&pg, std::slice::from_ref(&o)).await.unwrap(),
        vec![id]
    );
    assert_eq!(
        emails::record(&pg, std::slice::from_ref(&o)).await.unwrap(),
        vec![id]
    );
    let attempts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM email_attempts WHERE email_id = $1")
            .bind(id)
            .fetch_one(&pg)
            .await
            .unwrap();
    assert_eq!(attempts, 1);
}

#[sqlx::test]
async fn reclaims_the_entries_of_a_crashed_worker_and_sends_each_job_once(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let jobs = (0..40)
        .map(|i| job(Lane::Bulk, &format!("u{i}@example.com")))
        .collect();
    let ids: Vec<uuid::Uuid> = redis
        .producer()
        .send_many(jobs)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id.as_uuid())
        .collect();
    assert_eq!(read_and_die(&redis, Lane::Bulk, 100).await.len(), 40);
    // The crashed worker had claimed job 0 long ago (expired claim) and recorded job 1 as sent.
    sqlx::query("INSERT INTO emails (id, status, lane, payload, enqueued_at, attempts, claim_token, claimed_at)
                 VALUES ($1, 'sending', 'bulk', '{}', now(), 1, gen_random_uuid(), now() - interval '1 hour')")
        .bind(ids[0]).execute(&pg).await.unwrap();
    sqlx::query("INSERT INTO emails (id, status, lane, payload, enqueued_at, attempts, sent_at) VALUES ($1, 'sent', 'bulk', '{}', now(), 1, now())")
        .bind(ids[1]).execute(&pg).await.unwrap();

    let mock = TestMock::start(MockConfig::default()).await;
    let mut s = settings();
    s.visibility_timeout_ms = 300;
    s.reclaim_interval_ms = 50;
    let worker = TestWorker::start(&pg, &redis, &mock.url, s).await;
    eventually("every reclaimed job final and acked", WAIT, || async {
        (count_status(&pg, "sent").await == 40 && redis.pending(Lane::Bulk).await == 0)
            .then_some(())
    })
    .await;
    let counts = mock.state.counts();
    assert_eq!(counts.len(), 39, "the job already sent was not sent again");
    assert!(counts.values().all(|&n| n == 1), "no job sent twice");
    assert!(!counts.contains_key(&ids[1].to_string()));
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM emails WHERE id = $1")
        .bind(ids[0])
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(
        attempts, 2,
        "the expired claim's job was claimed again, and the retry is counted"
    );
    worker.stop().await;
}

#[sqlx::test]
async fn an_entry_whose_job_is_under_a_live_claim_stays_pending_until_that_claim_ends(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let id = redis.enqueue(job(Lane::Tx, "ada@example.com")).await;
    read_and_die(&redis, Lane::Tx, 10).await;
    // Another live worker holds a fresh claim on the same job.
    sqlx::query("INSERT INTO emails (id, status, lane, payload, enqueued_at, attempts, claim_token, claimed_at)
                 VALUES ($1, 'sending', 'tx', '{}', now(), 1, gen_random_uuid(), now())")
        .bind(id).execute(&pg).await.unwrap();
    let mock = TestMock::start(MockConfig::default()).await;
    let mut s = settings();
    s.visibility_timeout_ms = 200;
    s.reclaim_interval_ms = 30;
    let worker = TestWorker::start(&pg, &redis, &mock.url, s).await;
    for _ in 0..10 {
        // The other worker is alive: its claim stays younger than the visibility timeout.
        sqlx::query("UPDATE emails SET claimed_at = now() WHERE id = $1")
            .bind(id)
            .execute(&pg)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            redis.pending(Lane::Tx).await,
            1,
            "not acked while another claim may still send it"
        );
        assert_eq!(mock.state.stats().received, 0, "not sent twice at once");
    }
    // That worker finishes: the next reclaim sees a final row and acks without sending.
    sqlx::query("UPDATE emails SET status = 'sent' WHERE id = $1")
        .bind(id)
        .execute(&pg)
        .await
        .unwrap();
    eventually("acked after the other claim ended", WAIT, || async {
        (redis.pending(Lane::Tx).await == 0).then_some(())
    })
    .await;
    assert_eq!(mock.state.stats().received, 0);
    worker.stop().await;
}

#[sqlx::test]
async fn an_entry_delivered_more_than_max_deliveries_is_dead_lettered_with_its_history(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    redis
        .producer()
        .send(job(Lane::Tx, "ada@example.com"))
        .await
        .unwrap();
    read_and_die(&redis, Lane::Tx, 10).await;
    let mock = TestMock::start(MockConfig::default()).await;
    let mut s = settings();
    s.visibility_timeout_ms = 100;
    s.reclaim_interval_ms = 30;
    s.max_deliveries = 1;
    let worker = TestWorker::start(&pg, &redis, &mock.url, s).await;
    eventually("dead-lettered", WAIT, || async {
        (redis.xlen(&redis.keys.dead(0)).await == 1 && redis.pending(Lane::Tx).await == 0)
            .then_some(())
    })
    .await;
    let f = &redis.dead_entries().await[0];
    assert_eq!(f["reason"], "max_deliveries");
    assert_eq!(f["attempts"], "2");
    assert!(f.contains_key("orig_payload"));
    assert_eq!(mock.state.stats().received, 0);
    worker.stop().await;
}

/// The heartbeat refreshes a worker's live claims while its recorder records some of them.
/// A row the recorder holds is skipped, not waited for: waiting held the heartbeat's other row
/// locks meanwhile, and the two deadlocked (Postgres aborted one after a second).
#[sqlx::test]
async fn the_heartbeat_skips_a_claim_being_recorded_instead_of_waiting_for_it(pg: PgPool) {
    let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let token = uuid::Uuid::now_v7();
    let c = emails::claim(&pg, &[row(a), row(b)], token, 60_000, 8)
        .await
        .unwrap();
    assert_eq!(c.claimed.len(), 2);
    let mut recorder = pg.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM emails WHERE id = $1 FOR UPDATE")
        .bind(a)
        .execute(&mut *recorder)
        .await
        .unwrap();
    let claims = [(a, token), (b, token)];
    let refreshed =
        tokio::time::timeout(Duration::from_secs(10), emails::touch_claims(&pg, &claims))
            .await
            .expect("the heartbeat waited for a row another transaction holds")
            .unwrap();
    assert_eq!(refreshed, 1, "only the free row");
    recorder.rollback().await.unwrap();
    assert_eq!(emails::touch_claims(&pg, &claims).await.unwrap(), 2);
    // A claim that is no longer this token's is not refreshed.
    assert_eq!(
        emails::touch_claims(&pg, &[(a, uuid::Uuid::now_v7())])
            .await
            .unwrap(),
        0
    );
}

#[sqlx::test]
async fn a_bulk_entry_for_several_recipients_or_a_bad_tenant_is_dead_lettered_unsent(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let lane = redis.keys.lane(0, Lane::Bulk);
    let payloads = [
        // One message, one link: the victim's link would have gone to `other` too.
        r#"{"to":["victim@example.com"],"bcc":["other@example.com"],"from":"b@example.com","subject":"s","text":"t"}"#,
        // A `|` in the tenant made unsubscribe tokens ambiguous.
        r#"{"to":["a@example.com"],"tenant":"acme|zz","from":"b@example.com","subject":"s","text":"t"}"#,
    ];
    let mut conn = redis.conn().await;
    for p in payloads {
        let _: String = redis::cmd("XADD")
            .arg(&lane)
            .arg("*")
            .arg("v")
            .arg("1")
            .arg("id")
            .arg(uuid::Uuid::now_v7().to_string())
            .arg("enqueued_at")
            .arg("1")
            .arg("payload")
            .arg(p)
            .query_async(&mut *conn)
            .await
            .unwrap();
    }
    drop(conn);
    let good = redis
        .producer()
        .send(job(Lane::Bulk, "ok@example.com"))
        .await
        .unwrap();
    let mock = TestMock::start(MockConfig::default()).await;
    let mut s = settings();
    s.unsubscribe = Some(mailfleet::unsubscribe::Links {
        base_url: "https://mail.example.com".into(),
        secret: mailfleet::config::Secret::new("a-secret-of-at-least-thirty-two-bytes"),
        ttl_secs: 3600,
    });
    let worker = TestWorker::start(&pg, &redis, &mock.url, s).await;
    eventually("the valid bulk job is sent", WAIT, || async {
        (status_of(&pg, good.id.as_uuid()).await.as_deref() == Some("sent")).then_some(())
    })
    .await;
    eventually("both dead-lettered", WAIT, || async {
        (redis.xlen(&redis.keys.dead(0)).await == 2).then_some(())
    })
    .await;
    let dead = redis.dead_entries().await;
    assert!(
        dead.iter().all(|m| m["reason"] == "invalid_email"),
        "{dead:?}"
    );
    assert_eq!(
        mock.state.stats().received,
        1,
        "only the valid one reached the provider"
    );
    worker.stop().await;
}

/// A batch whose last enqueue call fails (here: its stream's key holds a string) is taken back
/// whole: the calls that had succeeded leave no entry and no dedup marker.
#[tokio::test]
async fn a_batch_that_fails_in_part_is_taken_back_whole() {
    let redis = TestRedis::new();
    let _: () = redis::cmd("SET")
        .arg(redis.keys.lane(0, Lane::Bulk))
        .arg("not a stream")
        .query_async(&mut *redis.conn().await)
        .await
        .unwrap();
    let mut jobs: Vec<_> = (0..70)
        .map(|i| {
            let mut j = job(Lane::Tx, &format!("t{i}@example.com"));
            j.idempotency_key = Some(format!("tx-{i}"));
            j
        })
        .collect();
    jobs.push(job(Lane::Bulk, "b@example.com"));
    let err = redis.producer().send_many(jobs).await.unwrap_err();
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    assert_eq!(
        redis.xlen(&redis.keys.lane(0, Lane::Tx)).await,
        0,
        "nothing left enqueued"
    );
    for i in 0..70 {
        let n: i64 = redis::cmd("EXISTS")
            .arg(redis.keys.dedup(0, &format!("tx-{i}")))
            .query_async(&mut *redis.conn().await)
            .await
            .unwrap();
        assert_eq!(n, 0, "no dedup marker left");
    }
}

/// The idempotency backstop: the Redis dedup marker is lost between two enqueues with the
/// same key (as a failover can lose it), so Redis takes both with different ids; the worker
/// sends one and records the other `duplicate`.
#[sqlx::test]
async fn a_lost_dedup_marker_still_sends_one_email_per_idempotency_key(pg: PgPool) {
    let redis = TestRedis::new();
    let keyed = |to: &str| {
        let mut j = job(Lane::Tx, to);
        j.idempotency_key = Some("order-7".into());
        j.payload.tenant = Some("acme".into());
        j
    };
    let first = redis
        .producer()
        .send(keyed("ada@example.com"))
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(redis.keys.dedup_for(0, Some("acme"), "order-7"))
        .query_async(&mut *redis.conn().await)
        .await
        .unwrap();
    let second = redis
        .producer()
        .send(keyed("ada@example.com"))
        .await
        .unwrap();
    assert!(
        first.added && second.added && first.id != second.id,
        "Redis took both"
    );
    let mock = TestMock::start(MockConfig::default()).await;
    let worker = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    for (id, status) in [(first.id, "sent"), (second.id, "duplicate")] {
        eventually("each final", WAIT, || async {
            (status_of(&pg, id.as_uuid()).await.as_deref() == Some(status)).then_some(())
        })
        .await;
    }
    // Once more, after the first was sent (another batch: the key is found in Postgres).
    let _: () = redis::cmd("DEL")
        .arg(redis.keys.dedup_for(0, Some("acme"), "order-7"))
        .query_async(&mut *redis.conn().await)
        .await
        .unwrap();
    let third = redis
        .producer()
        .send(keyed("ada@example.com"))
        .await
        .unwrap();
    assert!(third.added);
    eventually("the third is a duplicate", WAIT, || async {
        (status_of(&pg, third.id.as_uuid()).await.as_deref() == Some("duplicate")).then_some(())
    })
    .await;
    assert_eq!(mock.state.stats().received, 1, "one email for the key");
    assert_eq!(
        redis.pending(Lane::Tx).await,
        0,
        "the duplicate's entry was acked"
    );
    worker.stop().await;
}
