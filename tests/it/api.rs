//! The HTTP ingest API: auth, validation, size limits, batch, status.

use crate::support::*;
use mailfleet::api::ingest::ApiState;
use mailfleet::api::v1::router;
use mailfleet::config::Secret;
use mailfleet::mock::MockConfig;
use serde_json::{Value, json};
use sqlx::PgPool;

async fn spawn_api(pg: &PgPool, redis: &TestRedis, max_payload: usize) -> String {
    mailfleet::install_crypto_provider();
    // Durability `ledger`, the API's default: the producer writes the `queued` rows.
    let state = ApiState::new(
        redis
            .producer()
            .with_max_payload(max_payload)
            .with_ledger(pg.clone()),
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
async fn a_batch_the_ledger_cannot_record_is_refused_with_retry_after_and_enqueues_nothing(
    pg: PgPool,
) {
    let redis = TestRedis::new();
    let url = spawn_api(&pg, &redis, 64 * 1024).await;
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_queued() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'the ledger refuses'; END $$;
         CREATE TRIGGER refuse_queued BEFORE INSERT ON emails
           FOR EACH ROW EXECUTE FUNCTION refuse_queued();",
    )
    .execute(&pg)
    .await
    .unwrap();
    let batch: Vec<Value> = (0..20)
        .map(|i| {
            let mut e = email();
            e["idempotency_key"] = json!(format!("ledger-{i}"));
            e
        })
        .collect();
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/emails/batch"))
        .bearer_auth("k-1")
        .json(&json!({ "emails": batch }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("store unavailable: nothing was enqueued"),
        "{body}"
    );
    let entries = redis.xlen(&redis.keys.lane(0, mailfleet::Lane::Tx)).await
        + redis.xlen(&redis.keys.lane(0, mailfleet::Lane::Bulk)).await;
    assert_eq!(entries, 0, "the batch was taken back from Redis");
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
    // Over the body limit itself: still the JSON error shape.
    let r = post(Some("k-1"), huge).await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("limit"), "{v}");

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

/// Hostile requests, one table: each gets the answer it should, the answer stays small, and
/// nothing is enqueued or recorded. Forged webhooks are in `webhooks.rs`.
#[sqlx::test]
async fn hostile_requests_get_a_clear_small_answer_and_nothing_is_enqueued(pg: PgPool) {
    let redis = TestRedis::new();
    mailfleet::install_crypto_provider();
    // The ingest API and the webhooks, as `mailfleet api` serves them.
    let state = ApiState::new(
        redis.producer().with_max_payload(64 * 1024),
        pg.clone(),
        &[Secret::new("k-1")],
        64 * 1024,
    );
    let hooks = mailfleet::api::webhooks::WebhookKeys {
        sendgrid_public_key: None,
        mailgun_signing_key: Some(Secret::new("mg-signing-key")),
        postmark_user: Some("hooks".into()),
        postmark_password: Some(Secret::new("pm-pass")),
        ses: None,
        tolerance_secs: 300,
    };
    let app = router(state).merge(mailfleet::api::webhooks::router(pg.clone(), hooks));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let now = chrono::Utc::now().timestamp().to_string();
    let forged_mailgun = json!({"signature": {"timestamp": now, "token": "t-1",
        "signature": "00".repeat(32)},
        "event-data": {"event": "failed", "severity": "permanent", "recipient": "victim@example.com"}});
    let postmark =
        json!({"RecordType": "Bounce", "Type": "HardBounce", "Email": "victim@example.com"});
    let http = reqwest::Client::new();
    let with = |patch: Value| {
        let mut e = email();
        for (k, v) in patch.as_object().unwrap() {
            e[k] = v.clone();
        }
        e
    };
    let bad_batch = json!({"emails": (0..1000)
        .map(|_| with(json!({"to": vec!["not an address"; 50]})))
        .collect::<Vec<_>>()});
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    // (what, path, key, body, status, a word the answer holds)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "no key",
            "/v1/emails",
            None,
            email().to_string().into(),
            401,
            "API key",
        ),
        (
            "a wrong key",
            "/v1/emails",
            Some("nope"),
            email().to_string().into(),
            401,
            "API key",
        ),
        (
            "not JSON",
            "/v1/emails",
            Some("k-1"),
            b"{\"to\":".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "deep nesting",
            "/v1/emails",
            Some("k-1"),
            deep.into(),
            400,
            "not valid JSON",
        ),
        (
            "CRLF in the subject",
            "/v1/emails",
            Some("k-1"),
            with(json!({"subject": "Hi\r\nBcc: x@evil.test"}))
                .to_string()
                .into(),
            400,
            "CR, LF",
        ),
        (
            "CRLF in a header",
            "/v1/emails",
            Some("k-1"),
            with(json!({"headers": {"X-A": "a\r\nBcc: x@evil.test"}}))
                .to_string()
                .into(),
            400,
            "CR, LF",
        ),
        (
            "a CRLF address",
            "/v1/emails",
            Some("k-1"),
            with(json!({"to": ["a@example.com\r\nBcc: x@evil.test"]}))
                .to_string()
                .into(),
            400,
            "to[0]",
        ),
        (
            "an oversized payload",
            "/v1/emails",
            Some("k-1"),
            with(json!({"text": "x".repeat(70_000)})).to_string().into(),
            413,
            "limit",
        ),
        (
            "10,000 recipients",
            "/v1/emails",
            Some("k-1"),
            with(json!({"to": vec!["x"; 10_000]})).to_string().into(),
            400,
            "10000 recipients",
        ),
        (
            "1,000 emails of 50 bad recipients",
            "/v1/emails/batch",
            Some("k-1"),
            bad_batch.to_string().into(),
            400,
            "more errors",
        ),
        (
            "a tenant with a '|'",
            "/v1/emails",
            Some("k-1"),
            with(json!({"tenant": "acme|zz"})).to_string().into(),
            400,
            "tenant",
        ),
        (
            "a provider's control header",
            "/v1/emails",
            Some("k-1"),
            with(json!({"headers": {"X-SMTPAPI": "{\"to\":[\"x@evil.test\"]}"}}))
                .to_string()
                .into(),
            400,
            "control header",
        ),
        (
            "mailfleet's own header",
            "/v1/emails",
            Some("k-1"),
            with(json!({"headers": {"X-Mailfleet-Id": "x"}}))
                .to_string()
                .into(),
            400,
            "control header",
        ),
        (
            "bulk to two recipients",
            "/v1/emails",
            Some("k-1"),
            with(json!({"lane": "bulk", "bcc": ["victim@example.com"]}))
                .to_string()
                .into(),
            400,
            "one recipient",
        ),
        (
            "an unknown field",
            "/v1/emails",
            Some("k-1"),
            with(json!({"subjet": "x"})).to_string().into(),
            400,
            "subjet",
        ),
        (
            "an inline template that would build 10 GB",
            "/v1/emails",
            Some("k-1"),
            with(json!({"html": "{{ ('x'*100000)|replace('x','x'*100000) }}", "vars": {}}))
                .to_string()
                .into(),
            400,
            "the * operator",
        ),
        (
            "a forged Mailgun event",
            "/v1/webhooks/mailgun",
            None,
            forged_mailgun.to_string().into(),
            401,
            "signature",
        ),
        (
            "a Postmark event without its password",
            "/v1/webhooks/postmark",
            None,
            postmark.to_string().into(),
            401,
            "",
        ),
    ];
    for (what, path, key, body, status, word) in cases {
        let mut rq = http
            .post(format!("{url}{path}"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            rq = rq.bearer_auth(k);
        }
        let r = rq.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{what}");
        let text = r.text().await.unwrap();
        assert!(text.contains(word), "{what}: {text:.300}");
        assert!(
            text.len() < 16 * 1024,
            "{what}: a {} byte answer",
            text.len()
        );
    }
    for lane in [mailfleet::Lane::Tx, mailfleet::Lane::Bulk] {
        assert_eq!(
            redis.xlen(&redis.keys.lane(0, lane)).await,
            0,
            "nothing enqueued"
        );
    }
    assert_eq!(count_status(&pg, "queued").await, 0, "nothing recorded");
    let suppressed: i64 = sqlx::query_scalar("SELECT count(*) FROM suppressions")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(suppressed, 0, "no forged event suppressed anyone");
}

/// 200 connections that never finish their headers, one that sends 1 byte of a 100,000-byte
/// body and one that sends nothing: a normal request is still answered while they are open,
/// and the server closes each of them by its timeout.
#[sqlx::test]
async fn slow_and_silent_clients_are_closed_by_their_timeouts_and_hold_nothing_up(pg: PgPool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    mailfleet::install_crypto_provider();
    let redis = TestRedis::new();
    let state = ApiState::new(
        redis.producer(),
        pg.clone(),
        &[Secret::new("k-1")],
        64 * 1024,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bounds = mailfleet::api::serve::Bounds {
        max_connections: 512,
        header_timeout: std::time::Duration::from_secs(1),
        request_timeout: std::time::Duration::from_secs(2),
        idle_timeout: std::time::Duration::from_secs(2),
    };
    tokio::spawn(mailfleet::api::serve(
        listener,
        router(state),
        bounds,
        tokio_util::sync::CancellationToken::new(),
    ));
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /v1/emails HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    let mut body = tokio::net::TcpStream::connect(addr).await.unwrap();
    body.write_all(
        b"POST /v1/emails HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k-1\r\n\
          Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{",
    )
    .await
    .unwrap();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();

    // A normal request is answered while all of them are open (its time is printed for the
    // record, not judged).
    let t0 = std::time::Instant::now();
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/v1/emails"))
        .bearer_auth("k-1")
        .json(&email())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    eprintln!(
        "a normal request beside 202 slow connections: {:?}",
        t0.elapsed()
    );

    // The slow body gets 408; every other connection is closed (a read ends).
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, body.read_to_end(&mut answer))
        .await
        .expect("the slow body's connection is closed")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:.200}");
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(WAIT, silent.read(&mut buf))
        .await
        .expect("the silent connection is closed");
    assert!(matches!(n, Ok(0) | Err(_)), "closed without an answer");
    for s in &mut slow {
        let r = tokio::time::timeout(WAIT, async {
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.map(|_| all)
        })
        .await
        .expect("a slow header's connection is closed");
        // hyper closes it (possibly with a 408 first): never a 2xx.
        if let Ok(all) = r {
            assert!(!String::from_utf8_lossy(&all).contains(" 202 "));
        }
    }
}

async fn make_key(pg: &PgPool, redis: &TestRedis, args: &[&str]) -> String {
    let out = mailfleet(pg, redis)
        .args(["key", "create"])
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[sqlx::test]
async fn a_tenants_key_sends_reads_and_dedups_only_as_its_tenant(pg: PgPool) {
    let redis = TestRedis::new();
    let url = spawn_api(&pg, &redis, 64 * 1024).await;
    let acme = make_key(&pg, &redis, &["--tenant", "acme", "--name", "acme app"]).await;
    let beta = make_key(&pg, &redis, &["--tenant", "beta"]).await;
    let acme_reader = make_key(&pg, &redis, &["--tenant", "acme", "--scope", "read"]).await;
    assert!(acme.starts_with("mfk_") && acme != beta);
    let http = reqwest::Client::new();
    let post = |key: &str, body: Value, idem: Option<&str>| {
        let mut r = http
            .post(format!("{url}/v1/emails"))
            .bearer_auth(key)
            .json(&body);
        if let Some(k) = idem {
            r = r.header("idempotency-key", k);
        }
        r.send()
    };
    let get = |key: &str, id: &str| {
        http.get(format!("{url}/v1/emails/{id}"))
            .bearer_auth(key)
            .send()
    };

    // Sent without a tenant, the job is the key's tenant's.
    let r = post(&acme, email(), Some("order-1")).await.unwrap();
    assert_eq!(r.status(), 202);
    let a: Value = r.json().await.unwrap();
    let id = a["id"].as_str().unwrap().to_owned();
    let v: Value = get(&acme, &id).await.unwrap().json().await.unwrap();
    assert_eq!(v["tenant"], "acme");
    // Not as another tenant.
    let mut as_beta = email();
    as_beta["tenant"] = json!("beta");
    assert_eq!(post(&acme, as_beta, None).await.unwrap().status(), 403);
    // Another tenant's email is not found; an operator's key reads every tenant's.
    assert_eq!(get(&beta, &id).await.unwrap().status(), 404);
    assert_eq!(get("k-1", &id).await.unwrap().status(), 200);
    // Scopes: a read-only key reads and may not send.
    assert_eq!(get(&acme_reader, &id).await.unwrap().status(), 200);
    assert_eq!(
        post(&acme_reader, email(), None).await.unwrap().status(),
        403
    );
    // Idempotency keys are per tenant: beta's "order-1" is its own job.
    let b: Value = post(&beta, email(), Some("order-1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(b["id"], a["id"]);
    assert_eq!(b["duplicate"], false);
    let again: Value = post(&acme, email(), Some("order-1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&again["id"], &again["duplicate"]),
        (&a["id"], &json!(true))
    );

    // Listed without the key itself; revoked, it stops working within the cache's life.
    let out = mailfleet(&pg, &redis)
        .args(["key", "list"])
        .output()
        .await
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains(&acme[..12]) && !list.contains(&acme),
        "{list}"
    );
    let out = mailfleet(&pg, &redis)
        .args(["key", "revoke", &acme[..12]])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the revoked key is refused", WAIT, || async {
        (get(&acme, &id).await.ok()?.status() == 401).then_some(())
    })
    .await;
    assert_eq!(
        get(&beta, &id).await.unwrap().status(),
        404,
        "others still work"
    );
}

#[sqlx::test]
async fn a_tenant_cancels_its_own_waiting_email_and_no_other_tenants(pg: PgPool) {
    let redis = TestRedis::new();
    let url = spawn_api(&pg, &redis, 64 * 1024).await;
    let acme = make_key(&pg, &redis, &["--tenant", "acme"]).await;
    let beta = make_key(&pg, &redis, &["--tenant", "beta"]).await;
    let acme_reader = make_key(&pg, &redis, &["--tenant", "acme", "--scope", "read"]).await;
    let http = reqwest::Client::new();
    let mut later = email();
    later["send_at"] = json!((chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
    let r = http
        .post(format!("{url}/v1/emails"))
        .bearer_auth(&acme)
        .json(&later)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let delete = |key: &str| {
        http.delete(format!("{url}/v1/emails/{id}"))
            .bearer_auth(key)
            .send()
    };
    // Another tenant's email is not found; a read-only key may not cancel.
    assert_eq!(delete(&beta).await.unwrap().status(), 404);
    assert_eq!(delete(&acme_reader).await.unwrap().status(), 403);
    let r = delete(&acme).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "cancelled");
    // Once final it no longer waits: 409 with its status.
    let r = delete(&acme).await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["details"]["status"],
        "cancelled"
    );
    assert_eq!(
        status_of(&pg, id.parse().unwrap()).await.as_deref(),
        Some("cancelled")
    );
    let r = http
        .delete(format!("{url}/v1/emails/not-a-uuid"))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
