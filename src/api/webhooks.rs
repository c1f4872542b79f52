//! Provider event webhooks on the API server: `POST /v1/webhooks/{sendgrid,ses,mailgun,postmark}`.
//!
//! Each request is authenticated the vendor's way before its body is believed:
//! - **SendGrid**: ECDSA P-256 over `timestamp + raw body` (`X-Twilio-Email-Event-Webhook-
//!   Signature`, `-Timestamp`), checked with the account's verification key (base64 DER);
//! - **Mailgun**: HMAC-SHA256 of `timestamp + token` with the webhook signing key; each token
//!   is accepted once (replay protection);
//! - **Postmark**: HTTP basic auth with the configured user and password;
//! - **SES** (through an SNS topic): SNS signature version 2, RSA/SHA-256 with a certificate
//!   fetched only from an allow-listed URL ([`super::sns`]); only configured topic ARNs are
//!   accepted; each MessageId once; subscription confirmations are confirmed.
//!
//! SendGrid, Mailgun and SNS timestamps must be within the tolerance window (default 5 minutes).
//! A forged, stale or replayed request gets 401 and changes nothing; a webhook not configured
//! answers 404. Events are applied once each ([`store::webhooks::apply`]): a hard bounce or a
//! complaint suppresses the address and marks the job; a delivery marks it `delivered`.

use super::sns::{SnsMessage, SnsVerifier};
use crate::config::Secret;
use crate::domain::Address;
use crate::metrics::METRICS;
use crate::store::webhooks::{self, Event, Kind};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::PgPool;
use std::sync::Arc;

/// Each vendor's credentials; `None` leaves its webhook off (404).
#[derive(Clone, Default)]
pub struct WebhookKeys {
    /// SendGrid's verification key: base64 of the DER SubjectPublicKeyInfo.
    pub sendgrid_public_key: Option<String>,
    pub mailgun_signing_key: Option<Secret>,
    pub postmark_user: Option<String>,
    pub postmark_password: Option<Secret>,
    /// SES events through SNS; `None` leaves the webhook off.
    pub ses: Option<Arc<SesHook>>,
    /// Largest accepted clock difference, in seconds.
    pub tolerance_secs: i64,
}

/// The SES webhook: the SNS topics whose messages are believed, and the verifier.
#[derive(Debug)]
pub struct SesHook {
    pub topic_arns: Vec<String>,
    pub verifier: SnsVerifier,
}

#[derive(Clone)]
struct Hooks {
    pg: PgPool,
    keys: Arc<WebhookKeys>,
}

pub fn router(pg: PgPool, keys: WebhookKeys) -> Router {
    Router::new()
        .route("/v1/webhooks/{provider}", post(receive))
        .with_state(Hooks {
            pg,
            keys: Arc::new(keys),
        })
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("bad signature")]
    BadSignature,
    #[error("timestamp outside the tolerance window")]
    Stale,
    #[error("token already used")]
    Replayed,
    #[error("not allowed: {0}")]
    NotAllowed(&'static str),
    #[error("malformed body: {0}")]
    Malformed(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

fn fresh(ts: &str, tolerance: i64, now: i64) -> Result<(), Refused> {
    let t: i64 = ts
        .trim()
        .parse()
        .map_err(|_| Refused::Missing("a numeric timestamp"))?;
    if (now - t).abs() > tolerance {
        return Err(Refused::Stale);
    }
    Ok(())
}

/// SendGrid: ECDSA P-256 / SHA-256 over `timestamp + body`, signature base64 DER.
pub fn verify_sendgrid(
    public_key_b64: &str,
    timestamp: &str,
    body: &[u8],
    signature_b64: &str,
) -> Result<(), Refused> {
    use base64::Engine;
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    let b64 = base64::engine::general_purpose::STANDARD;
    let der = b64
        .decode(public_key_b64.trim())
        .map_err(|_| Refused::BadSignature)?;
    let key =
        p256::ecdsa::VerifyingKey::from_public_key_der(&der).map_err(|_| Refused::BadSignature)?;
    let sig = b64
        .decode(signature_b64.trim())
        .map_err(|_| Refused::BadSignature)?;
    let sig = p256::ecdsa::Signature::from_der(&sig).map_err(|_| Refused::BadSignature)?;
    let mut msg = Vec::with_capacity(timestamp.len() + body.len());
    msg.extend_from_slice(timestamp.as_bytes());
    msg.extend_from_slice(body);
    key.verify(&msg, &sig).map_err(|_| Refused::BadSignature)
}

/// Mailgun: hex HMAC-SHA256 of `timestamp + token` with the signing key (constant-time check).
pub fn verify_mailgun(
    key: &str,
    timestamp: &str,
    token: &str,
    signature: &str,
) -> Result<(), Refused> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).map_err(|_| Refused::BadSignature)?;
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    let sig = hex::decode(signature.trim()).map_err(|_| Refused::BadSignature)?;
    mac.verify_slice(&sig).map_err(|_| Refused::BadSignature)
}

/// An RFC 3339 timestamp (SNS's) within `tolerance` seconds of `now`.
fn fresh_rfc3339(ts: &str, tolerance: i64, now: i64) -> Result<(), Refused> {
    let t = chrono::DateTime::parse_from_rfc3339(ts.trim())
        .map_err(|_| Refused::Missing("an RFC 3339 Timestamp"))?;
    fresh(&t.timestamp().to_string(), tolerance, now)
}

/// SES events in an SNS notification's `Message`: event publishing (`eventType`) or the older
/// identity notifications (`notificationType`). One event per recipient, keyed by the SNS
/// MessageId and the recipient's position.
pub fn ses_events(message_id: &str, message: &str) -> Result<Vec<Event>, Refused> {
    let v: Value = serde_json::from_str(message).map_err(|e| Refused::Malformed(e.to_string()))?;
    let kind = v["eventType"]
        .as_str()
        .or_else(|| v["notificationType"].as_str())
        .ok_or(Refused::Missing("eventType"))?;
    let job = job_id(&v["mail"]["tags"]["mailfleet_id"][0]);
    let (kind, rcpts): (Kind, Vec<&Value>) = match kind {
        "Bounce" => {
            let permanent = v["bounce"]["bounceType"].as_str() == Some("Permanent");
            let r = v["bounce"]["bouncedRecipients"].as_array();
            (
                if permanent {
                    Kind::HardBounce
                } else {
                    Kind::Other
                },
                r.map(|a| a.iter().map(|x| &x["emailAddress"]).collect())
                    .unwrap_or_default(),
            )
        }
        "Complaint" => {
            let r = v["complaint"]["complainedRecipients"].as_array();
            (
                Kind::Complaint,
                r.map(|a| a.iter().map(|x| &x["emailAddress"]).collect())
                    .unwrap_or_default(),
            )
        }
        "Delivery" => {
            let r = v["delivery"]["recipients"].as_array();
            (
                Kind::Delivered,
                r.map(|a| a.iter().collect()).unwrap_or_default(),
            )
        }
        _ => (Kind::Other, Vec::new()),
    };
    if rcpts.is_empty() {
        return Ok(vec![Event {
            provider: "ses",
            event_id: format!("{message_id}:0"),
            kind,
            job_id: job,
            recipient: None,
        }]);
    }
    Ok(rcpts
        .into_iter()
        .enumerate()
        .map(|(i, r)| Event {
            provider: "ses",
            event_id: format!("{message_id}:{i}"),
            kind,
            job_id: job,
            recipient: recipient(r),
        })
        .collect())
}

fn job_id(v: &Value) -> Option<uuid::Uuid> {
    v.as_str()?.parse().ok()
}

/// Keep a recipient only if it is an address (a suppression needs one).
fn recipient(v: &Value) -> Option<String> {
    Address::parse(v.as_str()?)
        .ok()
        .map(|a| a.as_str().to_lowercase())
}

pub fn sendgrid_events(body: &[u8]) -> Result<Vec<Event>, Refused> {
    let v: Vec<Value> =
        serde_json::from_slice(body).map_err(|e| Refused::Malformed(e.to_string()))?;
    Ok(v.iter()
        .filter_map(|e| {
            let kind = match (e["event"].as_str()?, e["type"].as_str()) {
                ("delivered", _) => Kind::Delivered,
                ("bounce", Some("blocked")) => Kind::Other,
                ("bounce", _) => Kind::HardBounce,
                ("spamreport", _) => Kind::Complaint,
                _ => Kind::Other,
            };
            Some(Event {
                provider: "sendgrid",
                event_id: e["sg_event_id"].as_str()?.to_owned(),
                kind,
                job_id: job_id(&e["mailfleet_id"]),
                recipient: recipient(&e["email"]),
            })
        })
        .collect())
}

pub fn mailgun_event(v: &Value) -> Option<Event> {
    let d = &v["event-data"];
    let kind = match (d["event"].as_str()?, d["severity"].as_str()) {
        ("delivered", _) => Kind::Delivered,
        ("failed", Some("permanent")) => Kind::HardBounce,
        ("complained", _) => Kind::Complaint,
        _ => Kind::Other,
    };
    Some(Event {
        provider: "mailgun",
        event_id: d["id"].as_str()?.to_owned(),
        kind,
        job_id: job_id(&d["user-variables"]["mailfleet_id"]),
        recipient: recipient(&d["recipient"]),
    })
}

pub fn postmark_event(v: &Value) -> Option<Event> {
    let (kind, id) = match v["RecordType"].as_str()? {
        "Delivery" => (
            Kind::Delivered,
            format!("delivery:{}", v["MessageID"].as_str()?),
        ),
        "Bounce" => {
            let hard = matches!(v["Type"].as_str(), Some("HardBounce" | "BadEmailAddress"));
            let kind = if hard { Kind::HardBounce } else { Kind::Other };
            (kind, format!("bounce:{}", v["ID"].as_i64()?))
        }
        "SpamComplaint" => (Kind::Complaint, format!("complaint:{}", v["ID"].as_i64()?)),
        other => (Kind::Other, format!("{other}:{}", v["MessageID"].as_str()?)),
    };
    let rcpt = if v["Recipient"].is_string() {
        &v["Recipient"]
    } else {
        &v["Email"]
    };
    Some(Event {
        provider: "postmark",
        event_id: id,
        kind,
        job_id: job_id(&v["Metadata"]["mailfleet_id"]),
        recipient: recipient(rcpt),
    })
}

fn header_str<'a>(h: &'a HeaderMap, name: &'static str) -> Result<&'a str, Refused> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or(Refused::Missing(name))
}

/// An authenticated request: its events, the single-use token to take with them, and an SNS
/// subscription to confirm once the token is taken.
struct Authenticated {
    events: Vec<Event>,
    token: Option<(&'static str, String)>,
    confirm: Option<SnsMessage>,
}

impl From<Vec<Event>> for Authenticated {
    fn from(events: Vec<Event>) -> Self {
        Self {
            events,
            token: None,
            confirm: None,
        }
    }
}

async fn authenticate(
    s: &Hooks,
    provider: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<Authenticated>, Refused> {
    let now = chrono::Utc::now().timestamp();
    let tol = s.keys.tolerance_secs;
    match provider {
        "sendgrid" => {
            let Some(key) = &s.keys.sendgrid_public_key else {
                return Ok(None);
            };
            let sig = header_str(headers, "x-twilio-email-event-webhook-signature")?;
            let ts = header_str(headers, "x-twilio-email-event-webhook-timestamp")?;
            verify_sendgrid(key, ts, body, sig)?;
            fresh(ts, tol, now)?;
            sendgrid_events(body).map(|e| Some(e.into()))
        }
        "mailgun" => {
            let Some(key) = &s.keys.mailgun_signing_key else {
                return Ok(None);
            };
            let v: Value =
                serde_json::from_slice(body).map_err(|e| Refused::Malformed(e.to_string()))?;
            let sig = &v["signature"];
            let (ts, token, signature) = match (
                sig["timestamp"].as_str(),
                sig["token"].as_str(),
                sig["signature"].as_str(),
            ) {
                (Some(a), Some(b), Some(c)) => (a, b, c),
                _ => return Err(Refused::Missing("signature")),
            };
            verify_mailgun(key.expose(), ts, token, signature)?;
            fresh(ts, tol, now)?;
            Ok(Some(Authenticated {
                events: mailgun_event(&v).into_iter().collect(),
                token: Some(("mailgun", token.to_owned())),
                confirm: None,
            }))
        }
        "ses" => {
            let Some(ses) = &s.keys.ses else {
                return Ok(None);
            };
            let m: SnsMessage =
                serde_json::from_slice(body).map_err(|e| Refused::Malformed(e.to_string()))?;
            if !ses.topic_arns.contains(&m.topic_arn) {
                return Err(Refused::NotAllowed("SNS topic"));
            }
            ses.verifier.verify(&m).await?;
            fresh_rfc3339(&m.timestamp, tol, now)?;
            let token = Some(("ses", m.message_id.clone()));
            match m.kind.as_str() {
                "Notification" => Ok(Some(Authenticated {
                    events: ses_events(&m.message_id, &m.message)?,
                    token,
                    confirm: None,
                })),
                "SubscriptionConfirmation" => Ok(Some(Authenticated {
                    events: Vec::new(),
                    token,
                    confirm: Some(m),
                })),
                _ => Ok(Some(Authenticated {
                    events: Vec::new(),
                    token,
                    confirm: None,
                })),
            }
        }
        "postmark" => {
            let (Some(user), Some(pass)) = (&s.keys.postmark_user, &s.keys.postmark_password)
            else {
                return Ok(None);
            };
            use base64::Engine;
            let given = header_str(headers, "authorization")?
                .strip_prefix("Basic ")
                .and_then(|b| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b.trim())
                        .ok()
                })
                .ok_or(Refused::BadSignature)?;
            let expected = format!("{user}:{}", pass.expose());
            // Constant-time: compare HMACs of both under a fixed key.
            let digest = |b: &[u8]| {
                let mut m = Hmac::<Sha256>::new_from_slice(b"postmark-basic-auth")
                    .expect("HMAC takes any key length");
                m.update(b);
                m.finalize().into_bytes()
            };
            if digest(&given) != digest(expected.as_bytes()) {
                return Err(Refused::BadSignature);
            }
            let v: Value =
                serde_json::from_slice(body).map_err(|e| Refused::Malformed(e.to_string()))?;
            Ok(Some(Authenticated::from(
                postmark_event(&v).into_iter().collect::<Vec<_>>(),
            )))
        }
        _ => Ok(None),
    }
}

async fn receive(
    State(s): State<Hooks>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let auth = match authenticate(&s, &provider, &headers, &body).await {
        Ok(Some(a)) => a,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such webhook").into_response(),
        // Mailgun's and SNS's bodies carry their signatures: unreadable means unauthenticated.
        Err(Refused::Malformed(m)) if !matches!(provider.as_str(), "mailgun" | "ses") => {
            return (StatusCode::BAD_REQUEST, Json(json!({"error": m}))).into_response();
        }
        Err(Refused::Unavailable(m)) => return unavailable(&m),
        Err(e) => return refused(&provider, &e),
    };
    let token = auth.token.as_ref().map(|(p, t)| (*p, t.as_str()));
    let applied = match webhooks::apply_once(&s.pg, token, &auth.events).await {
        Ok(Some(n)) => n,
        Ok(None) => return refused(&provider, &Refused::Replayed),
        Err(e) => return unavailable(&e.to_string()),
    };
    if let (Some(m), Some(ses)) = (&auth.confirm, &s.keys.ses) {
        if let Err(e) = ses.verifier.confirm(m).await {
            // Give the token back so SNS's retry can confirm.
            if let Err(e) = webhooks::release_token(&s.pg, "ses", &m.message_id).await {
                tracing::warn!(error.message = %e, "webhook: could not release an SNS token");
            }
            return match e {
                Refused::Unavailable(m) => unavailable(&m),
                e => refused(&provider, &e),
            };
        }
        tracing::info!(topic = %m.topic_arn, "webhook: SNS subscription confirmed");
    }
    METRICS
        .webhooks
        .with_label_values(&[provider_label(&provider), "applied"])
        .inc_by(applied as u64);
    Json(json!({"received": auth.events.len(), "applied": applied})).into_response()
}

/// 503: the store (or SNS) is unavailable; the vendor retries later.
fn unavailable(m: &str) -> Response {
    METRICS.store_errors.with_label_values(&["webhooks"]).inc();
    tracing::warn!(error.message = %m, "webhook: not processed; the provider will retry");
    (StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable").into_response()
}

/// 401 with the reason (never the body).
fn refused(provider: &str, e: &Refused) -> Response {
    METRICS
        .webhooks
        .with_label_values(&[provider_label(provider), "refused"])
        .inc();
    tracing::warn!(provider = provider_label(provider), reason = %e, "webhook refused");
    let mut r = (StatusCode::UNAUTHORIZED, e.to_string()).into_response();
    if provider == "postmark" {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"mailfleet\""),
        );
    }
    r
}

fn provider_label(p: &str) -> &'static str {
    match p {
        "sendgrid" => "sendgrid",
        "mailgun" => "mailgun",
        "postmark" => "postmark",
        "ses" => "ses",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector SendGrid's own SDKs test against (public key, signature, timestamp, payload).
    #[test]
    fn verifies_sendgrids_published_vector_and_rejects_changes() {
        let key = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==";
        let sig = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0=";
        let body =
            br#"{"category":"example_payload","event":"test_event","message_id":"message_id"}"#;
        assert_eq!(verify_sendgrid(key, "1588788367", body, sig), Ok(()));
        assert_eq!(
            verify_sendgrid(key, "1388788367", body, sig),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            verify_sendgrid(key, "1588788367", b"{}", sig),
            Err(Refused::BadSignature)
        );
    }

    #[test]
    fn mailgun_hmac_and_the_time_window() {
        let mut m = Hmac::<Sha256>::new_from_slice(b"key-1").unwrap();
        m.update(b"1700000000tok");
        let sig = hex::encode(m.finalize().into_bytes());
        assert_eq!(verify_mailgun("key-1", "1700000000", "tok", &sig), Ok(()));
        assert_eq!(
            verify_mailgun("key-2", "1700000000", "tok", &sig),
            Err(Refused::BadSignature)
        );
        assert_eq!(fresh("1700000000", 300, 1700000299), Ok(()));
        assert_eq!(fresh("1700000000", 300, 1700000301), Err(Refused::Stale));
    }
}
