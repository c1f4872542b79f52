//! Provider event webhooks on the API server: `POST /v1/webhooks/{sendgrid,ses,mailgun,postmark}`.
//!
//! Each request is authenticated the vendor's way before its body is believed:
//! - **SendGrid**: ECDSA P-256 over `timestamp + raw body` (`X-Twilio-Email-Event-Webhook-
//!   Signature`, `-Timestamp`), checked with the account's verification key (base64 DER);
//! - **Mailgun**: HMAC-SHA256 of `timestamp + token` with the webhook signing key; each token
//!   is accepted once (replay protection);
//! - **Postmark**: HTTP basic auth with the configured user and password;
//! - **SES** (through an SNS topic): SNS signature version 2, RSA/SHA-256 with a certificate
//!   fetched only from an allow-listed URL ([`sns`]); only configured topic ARNs are
//!   accepted; each MessageId once; subscription confirmations are confirmed.
//!
//! SendGrid, Mailgun and SNS timestamps must be within the tolerance window (default 5 minutes).
//! A forged, stale or replayed request gets 401 and changes nothing; a webhook not configured
//! answers 404. Events are applied once each ([`store::webhooks::apply`]): a hard bounce or a
//! complaint suppresses the address and marks the job; a delivery marks it `delivered`.
//!
//! One file per vendor (mirroring `provider/`): its signature check and its event format;
//! this file authenticates a request the vendor's way and applies its events.

mod mailgun;
mod postmark;
mod refused;
mod sendgrid;
mod ses;
pub mod sns;

pub use mailgun::{mailgun_event, verify_mailgun};
pub use postmark::postmark_event;
pub use refused::Refused;
pub use sendgrid::{sendgrid_events, verify_sendgrid};
pub use ses::ses_events;
use sns::{SnsMessage, SnsVerifier};

use crate::domain::Address;
use crate::domain::Secret;
use crate::metrics::METRICS;
use crate::store::webhooks::{self, Event};
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

pub(super) fn fresh(ts: &str, tolerance: i64, now: i64) -> Result<(), Refused> {
    let t: i64 = ts
        .trim()
        .parse()
        .map_err(|_| Refused::Missing("a numeric timestamp"))?;
    if (now - t).abs() > tolerance {
        return Err(Refused::Stale);
    }
    Ok(())
}

/// An RFC 3339 timestamp (SNS's) within `tolerance` seconds of `now`.
fn fresh_rfc3339(ts: &str, tolerance: i64, now: i64) -> Result<(), Refused> {
    let t = chrono::DateTime::parse_from_rfc3339(ts.trim())
        .map_err(|_| Refused::Missing("an RFC 3339 Timestamp"))?;
    fresh(&t.timestamp().to_string(), tolerance, now)
}

pub(super) fn job_id(v: &Value) -> Option<uuid::Uuid> {
    v.as_str()?.parse().ok()
}

/// Keep a recipient only if it is an address (a suppression needs one).
pub(super) fn recipient(v: &Value) -> Option<String> {
    Address::parse(v.as_str()?)
        .ok()
        .map(|a| a.as_str().to_lowercase())
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
            // Topic and timestamp first: they cost nothing, and a post that fails them never
            // makes the verifier fetch a certificate.
            if !ses.topic_arns.contains(&m.topic_arn) {
                return Err(Refused::NotAllowed("SNS topic"));
            }
            fresh_rfc3339(&m.timestamp, tol, now)?;
            ses.verifier.verify(&m).await?;
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
