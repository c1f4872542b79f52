//! Bulk sends coalesced into SendGrid batch requests through a real worker: each email keeps
//! its own outcome (one bad recipient fails alone, the rest of its batch goes again and is sent
//! once), and a provider event for one personalization of a batch reaches that job alone.

use crate::support::*;
use crate::webhooks::{post_sendgrid, spawn};
use mailfleet::Lane;
use mailfleet::mock::MockConfig;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// Enqueue one bulk email to each of `to` before any worker runs (so a read takes them
/// together), start a worker, and wait until every one is final; returns the ids in order.
async fn send_all(
    pg: &PgPool,
    redis: &TestRedis,
    mock: &TestMock,
    to: &[String],
) -> Vec<uuid::Uuid> {
    send_through(pg, redis, provider_config(&mock.url), to, to.len()).await
}

/// [`send_all`] through `provider`, waiting until `finals` of them are sent or failed.
async fn send_through(
    pg: &PgPool,
    redis: &TestRedis,
    provider: mailfleet::config::ProviderConfig,
    to: &[String],
    finals: usize,
) -> Vec<uuid::Uuid> {
    let jobs = to.iter().map(|t| job(Lane::Bulk, t)).collect();
    let ids: Vec<uuid::Uuid> = redis
        .producer()
        .send_many(jobs)
        .await
        .expect("enqueued")
        .into_iter()
        .map(|e| e.id.as_uuid())
        .collect();
    let worker = TestWorker::start_with(pg, redis, provider, settings()).await;
    eventually("the emails final", WAIT, || async {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM emails WHERE status IN ('sent', 'failed')")
                .fetch_one(pg)
                .await
                .unwrap();
        (done == finals as i64).then_some(())
    })
    .await;
    worker.stop().await;
    ids
}

/// The captured requests that SendGrid accepted... as the mock saw them: each request's
/// personalizations' job ids, in order.
fn requests(mock: &TestMock) -> Vec<Vec<String>> {
    mock.state
        .captured()
        .iter()
        .map(|c| {
            let v: Value = serde_json::from_slice(&c.body).expect("json body");
            v["personalizations"]
                .as_array()
                .expect("personalizations")
                .iter()
                .map(|p| {
                    p["custom_args"]["mailfleet_id"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned()
                })
                .collect()
        })
        .collect()
}

#[sqlx::test]
async fn bulk_emails_share_requests_and_one_bad_recipient_fails_alone(pg: PgPool) {
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig {
        capture: 1000,
        ..MockConfig::default()
    })
    .await;
    let mut to: Vec<String> = (0..60).map(|i| format!("r{i}@example.com")).collect();
    to[36] = "nobody@refused.invalid".into();
    let ids = send_all(&pg, &redis, &mock, &to).await;

    let bad = ids[36];
    assert_eq!(status_of(&pg, bad).await.as_deref(), Some("failed"));
    let error: Option<String> = sqlx::query_scalar("SELECT last_error FROM emails WHERE id = $1")
        .bind(bad)
        .fetch_one(&pg)
        .await
        .unwrap();
    let error = error.unwrap_or_default();
    assert!(error.contains("400"), "{error}");
    assert!(
        !error.contains("refused.invalid"),
        "no address in the error: {error}"
    );
    assert_eq!(count_status(&pg, "sent").await, 59);

    // Every other email accepted exactly once; the bad one never.
    let counts = mock.state.counts();
    for (i, id) in ids.iter().enumerate() {
        let n = counts.get(&id.to_string()).copied().unwrap_or(0);
        assert_eq!(n, u32::from(i != 36), "email {i} accepted {n} times");
    }
    // Fewer requests than emails: they went in batches, one of which named the bad one.
    let reqs = requests(&mock);
    assert!(
        reqs.iter().any(|r| r.len() > 1),
        "{:?}",
        reqs.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(reqs.len() < 60, "{} requests for 60 emails", reqs.len());
    assert!(
        reqs.iter()
            .any(|r| r.len() > 1 && r.contains(&bad.to_string()))
    );

    // Each personalization carries its own email's body and subject.
    let c = &mock.state.captured()[0];
    let v: Value = serde_json::from_slice(&c.body).unwrap();
    let p = &v["personalizations"][0];
    assert_eq!(p["subject"], "Hello");
    let tag = v["content"][0]["value"].as_str().unwrap();
    assert_eq!(p["substitutions"][tag], "Hi there");
}

#[sqlx::test]
async fn an_event_for_the_37th_recipient_of_a_batch_updates_that_job_alone(pg: PgPool) {
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig {
        capture: 100,
        ..MockConfig::default()
    })
    .await;
    let to: Vec<String> = (0..40).map(|i| format!("r{i}@example.com")).collect();
    send_all(&pg, &redis, &mock, &to).await;
    assert_eq!(count_status(&pg, "sent").await, 40);
    let batch = requests(&mock)
        .into_iter()
        .find(|r| r.len() >= 37)
        .expect("a request with 37 personalizations or more");
    let job: uuid::Uuid = batch[36].parse().expect("a job id");

    let url = spawn(&pg).await;
    let body = json!([{
        "event": "bounce", "type": "bounce", "email": "r36@example.com", "sg_event_id": "ev-37",
        "mailfleet_id": job.to_string(), "timestamp": chrono::Utc::now().timestamp()
    }])
    .to_string();
    let (code, v) = post_sendgrid(&url, &body, chrono::Utc::now().timestamp(), false).await;
    assert_eq!((code, v["applied"].as_u64()), (200, Some(1)), "{v}");
    let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as("SELECT id, status FROM emails")
        .fetch_all(&pg)
        .await
        .unwrap();
    let by_id: HashMap<uuid::Uuid, String> = rows.into_iter().collect();
    for id in &batch {
        let id: uuid::Uuid = id.parse().unwrap();
        let want = if id == job { "bounced" } else { "sent" };
        assert_eq!(by_id[&id], want, "job {id}");
    }
}

#[sqlx::test]
async fn a_postmark_batch_answers_each_message_on_its_own(pg: PgPool) {
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig {
        capture: 100,
        ..MockConfig::default()
    })
    .await;
    let mut to: Vec<String> = (0..30).map(|i| format!("r{i}@example.com")).collect();
    to[5] = "gone@refused.invalid".into();
    to[9] = "busy@throttled.invalid".into();
    let mut provider = mailfleet::config::ProviderConfig::new(
        "postmark",
        mailfleet::config::ProviderKind::Postmark,
        &mock.url,
    );
    provider.api_key = mailfleet::config::Secret::new("pm-token");
    // The throttled one is retried, not final: the other 29 are.
    let ids = send_through(&pg, &redis, provider, &to, 29).await;

    assert_eq!(count_status(&pg, "sent").await, 28);
    assert_eq!(status_of(&pg, ids[5]).await.as_deref(), Some("failed"));
    let attempts: Vec<(uuid::Uuid, String, Option<i32>, Option<String>)> = sqlx::query_as(
        "SELECT email_id, outcome, http_status, error FROM email_attempts WHERE email_id = ANY($1)",
    )
    .bind(vec![ids[5], ids[9]])
    .fetch_all(&pg)
    .await
    .unwrap();
    let of = |id: uuid::Uuid| attempts.iter().filter(move |a| a.0 == id);
    assert!(
        of(ids[5])
            .all(|a| a.1 == "failed" && a.3.as_deref().unwrap_or("").contains("ErrorCode 406")),
        "{attempts:?}"
    );
    // The throttled message is retried alone: its own attempt says 429, nobody else's does.
    assert!(
        of(ids[9]).next().is_some() && of(ids[9]).all(|a| a.2 == Some(429)),
        "{attempts:?}"
    );
    assert_ne!(status_of(&pg, ids[9]).await.as_deref(), Some("sent"));
    let counts = mock.state.counts();
    for (i, id) in ids.iter().enumerate() {
        let n = counts.get(&id.to_string()).copied().unwrap_or(0);
        assert_eq!(
            n,
            u32::from(i != 5 && i != 9),
            "email {i} accepted {n} times"
        );
    }
    let batches = mock
        .state
        .captured()
        .iter()
        .filter(|c| c.path == "/email/batch")
        .count();
    assert!(batches > 0 && batches < 30, "{batches} batch requests");
}
