//! Provider webhooks: for SendGrid, SES (through SNS), Mailgun and Postmark, a valid event updates the job and
//! suppresses the address; a forged, stale or replayed request gets 401 and changes nothing; a
//! repeated event is applied once.

use base64::Engine;
use hmac::{Hmac, Mac};
use mailfleet::api::webhooks::sns::{SnsVerifier, UrlRule};
use mailfleet::api::webhooks::{SesHook, WebhookKeys, router};
use mailfleet::config::Secret;
use p256::ecdsa::signature::Signer;
use p256::pkcs8::EncodePublicKey;
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use uuid::Uuid;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn signing_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).expect("a valid scalar")
}

const TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:ses-events";

pub(crate) async fn spawn(pg: &PgPool) -> String {
    spawn_with(pg, None).await
}

async fn spawn_with(pg: &PgPool, sns_prefix: Option<&str>) -> String {
    let public = signing_key()
        .verifying_key()
        .to_public_key_der()
        .expect("DER");
    let keys = WebhookKeys {
        sendgrid_public_key: Some(B64.encode(public.as_bytes())),
        mailgun_signing_key: Some(Secret::new("mg-signing-key")),
        postmark_user: Some("hooks".into()),
        postmark_password: Some(Secret::new("pm-pass")),
        ses: sns_prefix.map(|p| {
            Arc::new(SesHook {
                topic_arns: vec![TOPIC.into()],
                verifier: SnsVerifier::new(UrlRule {
                    prefixes: vec![p.to_owned()],
                })
                .expect("client"),
            })
        }),
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

pub(crate) async fn post_sendgrid(url: &str, body: &str, ts: i64, forge: bool) -> (u16, Value) {
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

/// An RSA key and a self-signed certificate made by openssl, as SNS's signing certificate.
struct SnsSigner {
    key: rsa::RsaPrivateKey,
    cert_pem: String,
}

fn sns_signer() -> SnsSigner {
    use rsa::pkcs8::DecodePrivateKey;
    let dir = std::env::temp_dir().join(format!("mailfleet-sns-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=sns.eu-west-1.amazonaws.com", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_pem = std::fs::read_to_string(dir.join("key.pem")).unwrap();
    let cert_pem = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    SnsSigner {
        key: rsa::RsaPrivateKey::from_pkcs8_pem(&key_pem).expect("PKCS#8 key"),
        cert_pem,
    }
}

impl SnsSigner {
    /// Sign `m` as SNS does (version 2: RSA PKCS#1 v1.5 over SHA-256 of the canonical string).
    fn sign(&self, m: &mut Value) {
        use sha2::Digest;
        m["Signature"] = Value::String(String::new());
        let parsed: mailfleet::api::webhooks::sns::SnsMessage =
            serde_json::from_value(m.clone()).unwrap();
        let digest = Sha256::digest(parsed.string_to_sign().unwrap().as_bytes());
        let sig = self
            .key
            .sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest)
            .unwrap();
        m["Signature"] = Value::String(B64.encode(sig));
    }
}

/// Serves the signing certificate (`/good.pem`) and counts visits to `/confirm`.
async fn sns_endpoint(good: String, confirms: Arc<AtomicUsize>) -> String {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/good.pem", get(move || async move { good }))
        .route(
            "/confirm",
            get(move || async move {
                confirms.fetch_add(1, Ordering::SeqCst);
                "<ConfirmSubscriptionResponse/>"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn sns_notification(
    base: &str,
    id: &str,
    ts: chrono::DateTime<chrono::Utc>,
    message: &Value,
) -> Value {
    json!({
        "Type": "Notification",
        "MessageId": id,
        "TopicArn": TOPIC,
        "Message": message.to_string(),
        "Timestamp": ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "SignatureVersion": "2",
        "SigningCertURL": format!("{base}good.pem"),
        "UnsubscribeURL": format!("{base}unsubscribe"),
    })
}

#[sqlx::test]
async fn ses_events_through_sns_are_verified_confirmed_and_applied_once(pg: PgPool) {
    let signer = sns_signer();
    let stranger = sns_signer();
    let confirms = Arc::new(AtomicUsize::new(0));
    let base = sns_endpoint(signer.cert_pem.clone(), confirms.clone()).await;
    let url = spawn_with(&pg, Some(&base)).await;
    let post = |body: Value| {
        let url = url.clone();
        async move {
            let r = reqwest_client()
                .post(format!("{url}/v1/webhooks/ses"))
                .header(
                    "x-amz-sns-message-type",
                    body["Type"].as_str().unwrap_or(""),
                )
                .header("content-type", "text/plain; charset=UTF-8")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let code = r.status().as_u16();
            (code, r.text().await.unwrap_or_default())
        }
    };

    // SNS first confirms the subscription: verified, then SubscribeURL visited once.
    let mut confirm = json!({
        "Type": "SubscriptionConfirmation", "MessageId": "c-1", "Token": "tok-1",
        "TopicArn": TOPIC, "Message": "You have chosen to subscribe...",
        "SubscribeURL": format!("{base}confirm"),
        "Timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "SignatureVersion": "2", "SigningCertURL": format!("{base}good.pem"),
    });
    signer.sign(&mut confirm);
    assert_eq!(post(confirm.clone()).await.0, 200);
    assert_eq!(confirms.load(Ordering::SeqCst), 1);
    assert_eq!(post(confirm).await.0, 401, "a replayed confirmation");
    assert_eq!(confirms.load(Ordering::SeqCst), 1);

    let job = sent_job(&pg, "gone@example.com").await;
    let other = sent_job(&pg, "fine@example.com").await;
    let bounce = json!({
        "eventType": "Bounce",
        "bounce": {"bounceType": "Permanent", "bounceSubType": "General",
                   "bouncedRecipients": [{"emailAddress": "Gone@example.com"}]},
        "mail": {"messageId": "ses-1", "tags": {"mailfleet_id": [job.to_string()]}},
    });
    let now = chrono::Utc::now();
    let valid = {
        let mut m = sns_notification(&base, "n-1", now, &bounce);
        signer.sign(&mut m);
        m
    };
    let rejects: Vec<(&str, Value)> = vec![
        ("forged: the message changed after signing", {
            let mut m = valid.clone();
            m["Message"] = Value::String(
                json!({"eventType": "Bounce", "bounce": {"bounceType": "Permanent",
                       "bouncedRecipients": [{"emailAddress": "fine@example.com"}]},
                       "mail": {"tags": {"mailfleet_id": [other.to_string()]}}})
                .to_string(),
            );
            m
        }),
        ("forged: signed by another key", {
            let mut m = sns_notification(&base, "n-2", now, &bounce);
            stranger.sign(&mut m);
            m
        }),
        ("a certificate URL that is not a .pem", {
            let mut m = sns_notification(&base, "n-3", now, &bounce);
            m["SigningCertURL"] = Value::String(format!("{base}confirm"));
            signer.sign(&mut m);
            m
        }),
        ("certificate URL off the allow-list", {
            let mut m = sns_notification(&base, "n-4", now, &bounce);
            m["SigningCertURL"] = Value::String("https://evil.example/good.pem".into());
            signer.sign(&mut m);
            m
        }),
        ("a topic not configured", {
            let mut m = sns_notification(&base, "n-5", now, &bounce);
            m["TopicArn"] = Value::String("arn:aws:sns:eu-west-1:999999999999:other".into());
            signer.sign(&mut m);
            m
        }),
        ("signature version 1", {
            let mut m = sns_notification(&base, "n-6", now, &bounce);
            m["SignatureVersion"] = Value::String("1".into());
            signer.sign(&mut m);
            m
        }),
        ("stale", {
            let mut m =
                sns_notification(&base, "n-7", now - chrono::Duration::minutes(10), &bounce);
            signer.sign(&mut m);
            m
        }),
    ];
    for (why, m) in rejects {
        assert_eq!(post(m).await.0, 401, "{why}");
    }
    assert_eq!(status(&pg, job).await, "sent");
    assert_eq!(status(&pg, other).await, "sent");
    assert_eq!(suppressed(&pg, "gone@example.com").await, None);
    assert_eq!(suppressed(&pg, "fine@example.com").await, None);

    let (code, body) = post(valid.clone()).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(status(&pg, job).await, "bounced");
    assert_eq!(
        suppressed(&pg, "gone@example.com").await.as_deref(),
        Some("bounce")
    );
    sqlx::query("DELETE FROM suppressions")
        .execute(&pg)
        .await
        .unwrap();
    assert_eq!(post(valid).await.0, 401, "replayed");
    assert_eq!(suppressed(&pg, "gone@example.com").await, None);

    // A delivery notification (the older notificationType format) marks the other job.
    let delivery = json!({
        "notificationType": "Delivery",
        "delivery": {"recipients": ["fine@example.com"]},
        "mail": {"tags": {"mailfleet_id": [other.to_string()]}},
    });
    let mut m = sns_notification(&base, "n-8", chrono::Utc::now(), &delivery);
    m["Subject"] = Value::String("Amazon SES Email Event Notification".into());
    signer.sign(&mut m);
    assert_eq!(post(m).await.0, 200);
    assert_eq!(status(&pg, other).await, "delivered");
}

/// Serves `/good.pem` and a 404 at `/missing.pem`, counting the fetches of each.
async fn counting_cert_endpoint(good: String) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use axum::routing::get;
    let (g, m) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (g2, m2) = (g.clone(), m.clone());
    let app = axum::Router::new()
        .route(
            "/good.pem",
            get(move || async move {
                g2.fetch_add(1, Ordering::SeqCst);
                good
            }),
        )
        .route(
            "/missing.pem",
            get(move || async move {
                m2.fetch_add(1, Ordering::SeqCst);
                (axum::http::StatusCode::NOT_FOUND, "no")
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, g, m)
}

#[sqlx::test]
async fn unauthenticated_sns_posts_cost_no_certificate_fetch_and_a_bad_url_costs_one(pg: PgPool) {
    let signer = sns_signer();
    let (base, good, missing) = counting_cert_endpoint(signer.cert_pem.clone()).await;
    let url = spawn_with(&pg, Some(&base)).await;
    let post = |body: Value| {
        let url = url.clone();
        async move {
            reqwest_client()
                .post(format!("{url}/v1/webhooks/ses"))
                .header("x-amz-sns-message-type", "Notification")
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let msg = json!({"eventType": "Delivery", "mail": {"tags": {}}});
    let now = chrono::Utc::now();
    for i in 0..10 {
        // Stale, or for a topic not configured: refused before any certificate is fetched.
        let mut m = sns_notification(
            &base,
            &format!("s-{i}"),
            now - chrono::Duration::minutes(10),
            &msg,
        );
        m["SigningCertURL"] = Value::String(format!("{base}missing.pem"));
        signer.sign(&mut m);
        assert_eq!(post(m).await, 401);
        let mut m = sns_notification(&base, &format!("t-{i}"), now, &msg);
        m["TopicArn"] = Value::String("arn:aws:sns:eu-west-1:999999999999:other".into());
        m["SigningCertURL"] = Value::String(format!("{base}missing.pem"));
        signer.sign(&mut m);
        assert_eq!(post(m).await, 401);
    }
    assert_eq!(
        missing.load(Ordering::SeqCst),
        0,
        "no fetch for cheap refusals"
    );
    // Fresh and for the topic, but its certificate URL fails: fetched once, then refused
    // from the cache.
    for i in 0..10 {
        let mut m = sns_notification(&base, &format!("f-{i}"), now, &msg);
        m["SigningCertURL"] = Value::String(format!("{base}missing.pem"));
        signer.sign(&mut m);
        assert_eq!(post(m).await, 401);
    }
    assert_eq!(
        missing.load(Ordering::SeqCst),
        1,
        "a failing URL is fetched once"
    );
    // Signed ones: the good certificate is fetched once for all of them.
    for i in 0..5 {
        let mut m = sns_notification(&base, &format!("ok-{i}"), now, &msg);
        signer.sign(&mut m);
        assert_eq!(post(m).await, 200);
    }
    assert_eq!(good.load(Ordering::SeqCst), 1);
}
