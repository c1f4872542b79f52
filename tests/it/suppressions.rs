//! The suppression list: checked before every send (per tenant, with expiry, dropping only the
//! suppressed recipients of a multi-recipient email), at enqueue through the API, and managed
//! with `mailfleet suppress`.

use crate::support::*;
use chrono::Utc;
use mailfleet::Lane;
use mailfleet::api::ingest::ApiState;
use mailfleet::api::v1::router;
use mailfleet::config::Secret;
use mailfleet::mock::MockConfig;
use mailfleet::store::suppressions::{self, Suppression};
use serde_json::{Value, json};
use sqlx::PgPool;

fn suppression(address: &str, tenant: &str, expires_in_s: Option<i64>) -> Suppression {
    Suppression {
        address: address.into(),
        tenant: tenant.into(),
        reason: "bounce".into(),
        note: None,
        expires_at: expires_in_s.map(|s| Utc::now() + chrono::Duration::seconds(s)),
        created_at: Utc::now(),
    }
}

fn email(to: &[&str], tenant: Option<&str>) -> mailfleet::NewJob {
    let mut p = json!({"to": to, "from": "shop@example.com", "subject": "Hi", "text": "Hello"});
    if let Some(t) = tenant {
        p["tenant"] = json!(t);
    }
    mailfleet::NewJob {
        lane: Lane::Tx,
        idempotency_key: None,
        payload: serde_json::from_value(p).unwrap(),
    }
}

async fn status_of(pg: &PgPool, id: uuid::Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM emails WHERE id = $1")
        .bind(id)
        .fetch_optional(pg)
        .await
        .unwrap()
}

#[sqlx::test]
async fn suppressed_recipients_never_reach_a_provider(pg: PgPool) {
    suppressions::add(
        &pg,
        &[
            suppression("bounced@example.com", "", None),
            suppression("tenant-only@example.com", "acme", None),
            suppression("expired@example.com", "", Some(-60)),
        ],
    )
    .await
    .unwrap();
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig {
        capture: 16,
        ..MockConfig::default()
    })
    .await;
    let w = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    // Case matters not: addresses are compared lowercased.
    let all = redis.enqueue(email(&["Bounced@Example.com"], None)).await;
    let for_acme = redis
        .enqueue(email(&["tenant-only@example.com"], Some("acme")))
        .await;
    let for_other = redis
        .enqueue(email(&["tenant-only@example.com"], Some("other")))
        .await;
    let expired = redis.enqueue(email(&["expired@example.com"], None)).await;
    let mixed = redis
        .enqueue(email(&["bounced@example.com", "fine@example.com"], None))
        .await;
    let ids = [all, for_acme, for_other, expired, mixed];
    let finals = eventually("all five final", WAIT, || async {
        let mut out = Vec::new();
        for id in ids {
            match status_of(&pg, id).await.as_deref() {
                Some(s @ ("sent" | "suppressed")) => out.push(s.to_owned()),
                _ => return None,
            }
        }
        Some(out)
    })
    .await;
    assert_eq!(
        finals,
        ["suppressed", "suppressed", "sent", "sent", "sent"],
        "global, per tenant, another tenant, expired, mixed"
    );
    let counts = mock.state.counts();
    assert!(!counts.contains_key(&all.to_string()) && !counts.contains_key(&for_acme.to_string()));
    // The mixed email went to the other recipient only.
    let sent_mixed = mock
        .state
        .captured()
        .into_iter()
        .find(|c| String::from_utf8_lossy(&c.body).contains(&mixed.to_string()))
        .expect("the mixed email was sent");
    let body = String::from_utf8_lossy(&sent_mixed.body);
    assert!(
        body.contains("fine@example.com") && !body.contains("bounced@"),
        "{body}"
    );
    let attempts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM email_attempts WHERE email_id = $1 AND outcome = 'suppressed'",
    )
    .bind(all)
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!(attempts, 1, "the suppression is in the attempt log");
    w.stop().await;
}

#[sqlx::test]
async fn the_api_records_a_fully_suppressed_email_and_does_not_enqueue_it(pg: PgPool) {
    suppressions::add(&pg, &[suppression("gone@example.com", "", None)])
        .await
        .unwrap();
    let redis = TestRedis::new();
    mailfleet::install_crypto_provider();
    let state = ApiState::new(redis.producer(), pg.clone(), &[Secret::new("k")], 64 * 1024);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/emails/batch"))
        .bearer_auth("k")
        .json(&json!({"emails": [
            {"to": ["gone@example.com"], "from": "shop@example.com", "subject": "s", "text": "t"},
            {"to": ["here@example.com"], "from": "shop@example.com", "subject": "s", "text": "t"},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["emails"][0]["status"], "suppressed", "{v}");
    assert_eq!(v["emails"][1]["status"], "queued", "{v}");
    let gone: uuid::Uuid = v["emails"][0]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(status_of(&pg, gone).await.as_deref(), Some("suppressed"));
    let mut c = redis.conn().await;
    let len: u64 = redis::cmd("XLEN")
        .arg(redis.keys.lane(0, Lane::Tx))
        .query_async(&mut *c)
        .await
        .unwrap();
    assert_eq!(len, 1, "only the deliverable email is on the stream");
}

#[sqlx::test]
async fn the_cli_adds_lists_imports_and_lifts_suppressions(pg: PgPool) {
    let redis = TestRedis::new();
    let run = |args: Vec<String>| {
        let mut c = mailfleet(&pg, &redis);
        c.args(args);
        async move { c.output().await.unwrap() }
    };
    let out = run([
        "suppress",
        "add",
        "Ada@Example.com",
        "--reason",
        "complaint",
        "--expires",
        "30d",
    ]
    .map(String::from)
    .to_vec())
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = run(["suppress", "add", "not-an-address"]
        .map(String::from)
        .to_vec())
    .await;
    assert!(!bad.status.success());
    let csv = std::env::temp_dir().join(format!("mf-sup-{}.csv", uuid::Uuid::now_v7().simple()));
    std::fs::write(
        &csv,
        "address,reason,tenant\nb@example.com,unsubscribe,acme\nc@example.com,,\n",
    )
    .unwrap();
    let out = run(vec![
        "suppress".into(),
        "import".into(),
        csv.display().to_string(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&csv, "address\nok@example.com\nnope\n").unwrap();
    let out = run(vec![
        "suppress".into(),
        "import".into(),
        csv.display().to_string(),
    ])
    .await;
    assert!(!out.status.success(), "one bad row imports nothing");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("nope"),
        "no address echoed"
    );
    let _ = std::fs::remove_file(&csv);
    let out = run(["suppress", "list", "--json"].map(String::from).to_vec()).await;
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap().into(),
                r["tenant"].as_str().unwrap().into(),
                r["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("ada@example.com".into(), "".into(), "complaint".into()),
            ("b@example.com".into(), "acme".into(), "unsubscribe".into()),
            ("c@example.com".into(), "".into(), "manual".into()),
        ]
    );
    let out = run(["suppress", "rm", "ada@example.com"]
        .map(String::from)
        .to_vec())
    .await;
    assert!(out.status.success());
    let left = suppressions::list(&pg, None, None, 10).await.unwrap();
    assert_eq!(left.len(), 2);
    // Suppressed for one tenant only: `rm` without --tenant says where it is.
    let out = run(["suppress", "rm", "b@example.com"]
        .map(String::from)
        .to_vec())
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the address is suppressed --tenant acme"),
        "{err}"
    );
    assert!(!err.contains("b@example.com"), "no address echoed: {err}");
}
