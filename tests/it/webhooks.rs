//! Provider webhooks: for SendGrid, Mailgun and Postmark, a valid event updates the job and
//! suppresses the address; a forged, stale or replayed request gets 401 and changes nothing; a
//! repeated event is applied once.

use base64::Engine;
use hmac::{Hmac, Mac};
use mailfleet::api::webhooks::{WebhookKeys, router};
use mailfleet::config::Secret;
use p256::ecdsa::signature::Signer;
use p256::pkcs8::EncodePublicKey;
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::PgPool;
use uuid::Uuid;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn signing_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).expect("a valid scalar")
}

async fn spawn(pg: &PgPool) -> String {
    let public = signing_key()
        .verifying_key()
        .to_public_key_der()
        .expect("DER");
    let keys = WebhookKeys {
        sendgrid_public_key: Some(B64.encode(public.as_bytes())),
        mailgun_signing_key: Some(Secret::new("mg-signing-key")),
        postmark_user: Some("hooks".into()),
        postmark_password: Some(Secret::new("pm-pass")),
        tolerance_secs: 300,
    };
    let app = router(pg.clone(), keys);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A job recorded `sent` to `to`.
async fn sent_job(pg: &PgPool, to: &str) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO emails (id, status, lane, payload, enqueued_at, recipient_domain)
         VALUES ($1, 'sent', 'tx', $2, now(), 'example.com')",
    )
    .bind(id)
    .bind(json!({"to": [to]}).to_string())
    .execute(pg)
    .await
    .unwrap();
    id
}

async fn status(pg: &PgPool, id: Uuid) -> String {
    sqlx::query_scalar("SELECT status FROM emails WHERE id = $1")
        .bind(id)
        .fetch_one(pg)
        .await
        .unwrap()
}

async fn suppressed(pg: &PgPool, addr: &str) -> Option<String> {
    sqlx::query_scalar("SELECT reason FROM suppressions WHERE address = $1 AND tenant = ''")
        .bind(addr)
        .fetch_optional(pg)
        .await
        .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn post_sendgrid(url: &str, body: &str, ts: i64, forge: bool) -> (u16, Value) {
    let ts = ts.to_string();
    let signed = if forge {
        format!("{body} ")
    } else {
        body.to_owned()
    };
    let sig: p256::ecdsa::Signature = signing_key().sign(format!("{ts}{signed}").as_bytes());
    let r = reqwest_client()
        .post(format!("{url}/v1/webhooks/sendgrid"))
        .header(
            "X-Twilio-Email-Event-Webhook-Signature",
            B64.encode(sig.to_der().as_bytes()),
        )
        .header("X-Twilio-Email-Event-Webhook-Timestamp", ts)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

fn reqwest_client() -> reqwest::Client {
    mailfleet::provider::http_client(4).expect("client")
}

#[sqlx::test]
async fn sendgrid_events_are_verified_applied_once_and_forgeries_change_nothing(pg: PgPool) {
    let url = spawn(&pg).await;
    let bounced = sent_job(&pg, "gone@example.com").await;
    let delivered = sent_job(&pg, "ok@example.com").await;
    let body = json!([
        {"event": "bounce", "type": "bounce", "email": "Gone@example.com", "sg_event_id": "ev-1",
         "mailfleet_id": bounced.to_string(), "timestamp": now()},
        {"event": "delivered", "email": "ok@example.com", "sg_event_id": "ev-2",
         "mailfleet_id": delivered.to_string(), "timestamp": now()},
        {"event": "open", "email": "ok@example.com", "sg_event_id": "ev-3"}
    ])
    .to_string();

    // Forged (the signature covers other bytes) and stale requests: 401, nothing changes.
    assert_eq!(post_sendgrid(&url, &body, now(), true).await.0, 401);
    assert_eq!(post_sendgrid(&url, &body, now() - 3600, false).await.0, 401);
    assert_eq!(status(&pg, bounced).await, "sent");
    assert_eq!(suppressed(&pg, "gone@example.com").await, None);

    let (code, v) = post_sendgrid(&url, &body, now(), false).await;
    assert_eq!((code, v["applied"].as_u64()), (200, Some(3)), "{v}");
    assert_eq!(status(&pg, bounced).await, "bounced");
    assert_eq!(status(&pg, delivered).await, "delivered");
    assert_eq!(
        suppressed(&pg, "gone@example.com").await.as_deref(),
        Some("bounce")
    );
    // The same events again (SendGrid retries): accepted, applied zero times.
    let (code, v) = post_sendgrid(&url, &body, now(), false).await;
    assert_eq!((code, v["applied"].as_u64()), (200, Some(0)));
}

fn mailgun_body(token: &str, ts: i64, key: &str, event: Value) -> Value {
    let mut m = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    m.update(format!("{ts}{token}").as_bytes());
    json!({
        "signature": {"timestamp": ts.to_string(), "token": token,
                      "signature": hex::encode(m.finalize().into_bytes())},
        "event-data": event,
    })
}

#[sqlx::test]
async fn mailgun_events_need_a_valid_fresh_unused_token(pg: PgPool) {
    let url = spawn(&pg).await;
    let job = sent_job(&pg, "angry@example.com").await;
    let event = json!({"event": "complained", "id": "mg-1", "recipient": "angry@example.com",
                       "user-variables": {"mailfleet_id": job.to_string()}});
    let post = |body: Value| {
        let url = url.clone();
        async move {
            reqwest_client()
                .post(format!("{url}/v1/webhooks/mailgun"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        post(mailgun_body("t-1", now(), "wrong-key", event.clone())).await,
        401,
        "forged"
    );
    assert_eq!(
        post(mailgun_body(
            "t-2",
            now() - 3600,
            "mg-signing-key",
            event.clone()
        ))
        .await,
        401,
        "stale"
    );
    assert_eq!(status(&pg, job).await, "sent");
    let valid = mailgun_body("t-3", now(), "mg-signing-key", event.clone());
    assert_eq!(post(valid.clone()).await, 200);
    assert_eq!(status(&pg, job).await, "complained");
    assert_eq!(
        suppressed(&pg, "angry@example.com").await.as_deref(),
        Some("complaint")
    );
    // The very same request again: its token was used, so it is a replay.
    sqlx::query("DELETE FROM suppressions")
        .execute(&pg)
        .await
        .unwrap();
    assert_eq!(post(valid).await, 401, "replayed");
    assert_eq!(
        suppressed(&pg, "angry@example.com").await,
        None,
        "a replay changes nothing"
    );
}

#[sqlx::test]
async fn postmark_events_need_basic_auth_and_apply_once(pg: PgPool) {
    let url = spawn(&pg).await;
    let job = sent_job(&pg, "nobody@example.com").await;
    let event = json!({"RecordType": "Bounce", "Type": "HardBounce", "ID": 42,
                       "Email": "nobody@example.com", "MessageID": "pm-1",
                       "Metadata": {"mailfleet_id": job.to_string()}});
    let post = |auth: Option<(&'static str, &'static str)>| {
        let event = event.clone();
        let url = url.clone();
        async move {
            let mut r = reqwest_client()
                .post(format!("{url}/v1/webhooks/postmark"))
                .json(&event);
            if let Some((u, p)) = auth {
                r = r.basic_auth(u, Some(p));
            }
            let r = r.send().await.unwrap();
            let code = r.status().as_u16();
            (code, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(post(None).await.0, 401);
    assert_eq!(post(Some(("hooks", "guess"))).await.0, 401);
    assert_eq!(status(&pg, job).await, "sent");
    let (code, v) = post(Some(("hooks", "pm-pass"))).await;
    assert_eq!((code, v["applied"].as_u64()), (200, Some(1)));
    assert_eq!(status(&pg, job).await, "bounced");
    assert_eq!(
        suppressed(&pg, "nobody@example.com").await.as_deref(),
        Some("bounce")
    );
    let (code, v) = post(Some(("hooks", "pm-pass"))).await;
    assert_eq!(
        (code, v["applied"].as_u64()),
        (200, Some(0)),
        "a repeat is applied once"
    );
    // A webhook not configured answers 404.
    let r = reqwest_client()
        .post(format!("{url}/v1/webhooks/unknown"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
