//! The HTTP ingest API: auth, validation, size limits, batch, status.

use crate::support::*;
use mailfleet::api::ingest::{ApiState, router};
use mailfleet::config::Secret;
use mailfleet::mock::MockConfig;
use serde_json::{Value, json};
use sqlx::PgPool;

async fn spawn_api(pg: &PgPool, redis: &TestRedis, max_payload: usize) -> String {
    mailfleet::install_crypto_provider();
    let state = ApiState::new(
        redis.producer().with_max_payload(max_payload),
        pg.clone(),
        &[Secret::new("k-1"), Secret::new("k-2")],
        max_payload,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    url
}

fn email() -> Value {
    json!({"to": ["ada@example.com"], "from": "shop@example.com", "subject": "Hi", "text": "Hello"})
}

#[sqlx::test]
async fn an_email_posted_to_the_api_is_recorded_sent_and_its_status_is_served(pg: PgPool) {
    let redis = TestRedis::new();
    let url = spawn_api(&pg, &redis, 64 * 1024).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{url}/v1/emails"))
        .bearer_auth("k-2")
        .json(&email())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();

    // Known to Postgres at once, before any worker runs.
    let r = http
        .get(format!("{url}/v1/emails/{id}"))
        .bearer_auth("k-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "queued");

    let mock = TestMock::start(MockConfig::default()).await;
    let worker = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    let status = eventually("sent", WAIT, || async {
        let v: Value = http
            .get(format!("{url}/v1/emails/{id}"))
            .bearer_auth("k-1")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["status"] == "sent").then_some(v)
    })
    .await;
    assert_eq!(status["provider"], "sendgrid");
    assert_eq!(mock.state.counts().get(&id), Some(&1));
    worker.stop().await;
}

#[sqlx::test]
async fn the_api_rejects_missing_keys_bad_fields_and_oversized_payloads(pg: PgPool) {
    let redis = TestRedis::new();
    let url = spawn_api(&pg, &redis, 2048).await;
    let http = reqwest::Client::new();
    let post = |key: Option<&'static str>, body: Value| {
        let mut rq = http.post(format!("{url}/v1/emails")).json(&body);
        if let Some(k) = key {
            rq = rq.bearer_auth(k);
        }
        rq.send()
    };
    assert_eq!(post(None, email()).await.unwrap().status(), 401);
    assert_eq!(post(Some("wrong"), email()).await.unwrap().status(), 401);

    let bad = json!({"to": ["not-an-address", "ok@example.com"], "from": "shop@example.com",
                     "subject": "Hi\r\nBcc: x@evil.com", "text": "x", "lane": "fast"});
    let r = post(Some("k-1"), bad).await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["details"][0]["field"], "lane");
    let bad = json!({"to": ["not-an-address"], "from": "shop@example.com", "subject": "Hi\r\nBcc: x@evil.com", "text": "x"});
    let v: Value = post(Some("k-1"), bad).await.unwrap().json().await.unwrap();
    let fields: Vec<&str> = v["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["to[0]", "subject"]);
    let unknown =
        json!({"to": ["a@example.com"], "from": "shop@example.com", "subjet": "typo", "text": "x"});
    assert_eq!(post(Some("k-1"), unknown).await.unwrap().status(), 400);

    let mut big = email();
    big["text"] = Value::String("x".repeat(3000));
    assert_eq!(post(Some("k-1"), big).await.unwrap().status(), 413);
    let mut huge = email();
    huge["text"] = Value::String("x".repeat(200_000));
    assert_eq!(post(Some("k-1"), huge).await.unwrap().status(), 413);

    // Nothing was enqueued by any rejected request.
    assert_eq!(
        redis.xlen(&redis.keys.lane(0, mailfleet::Lane::Tx)).await,
        0
    );
    let r = http
        .get(format!("{url}/v1/emails/{}", uuid::Uuid::now_v7()))
        .bearer_auth("k-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[sqlx::test]
async fn a_batch_is_all_or_nothing_with_indexed_errors(pg: PgPool) {
    let redis = TestRedis::new();
    let url = spawn_api(&pg, &redis, 64 * 1024).await;
    let http = reqwest::Client::new();
    let mut bad = email();
    bad["to"] = json!(["nope"]);
    let r = http
        .post(format!("{url}/v1/emails/batch"))
        .bearer_auth("k-1")
        .json(&json!({"emails": [email(), bad]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["details"][0]["field"], "emails[1].to[0]");
    assert_eq!(
        redis.xlen(&redis.keys.lane(0, mailfleet::Lane::Tx)).await,
        0,
        "nothing of a bad batch is enqueued"
    );

    let mut keyed = email();
    keyed["idempotency_key"] = json!("k-77");
    keyed["lane"] = json!("bulk");
    let r = http
        .post(format!("{url}/v1/emails/batch"))
        .bearer_auth("k-1")
        .json(&json!({"emails": [email(), keyed.clone(), keyed]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    let items = v["emails"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[2]["duplicate"], true);
    assert_eq!(items[1]["id"], items[2]["id"]);
    assert_eq!(
        redis.xlen(&redis.keys.lane(0, mailfleet::Lane::Bulk)).await,
        1
    );
}
