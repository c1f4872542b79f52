//! `POST /v1/emails`, `POST /v1/emails/batch`, `GET /v1/emails/{id}`.
//!
//! Requests are authorized before their body is read (401), bounded in size (413), validated
//! field by field with the worker's own parsers (400 with every error), enqueued through the
//! [`Producer`], and recorded `queued` in Postgres so `GET` and the reconciler know them at once.

use crate::config::Secret;
use crate::domain::{Lane, Payload, Status, ValidationErrors};
use crate::metrics::METRICS;
use crate::producer::{Durability, NewJob, Prepared, Producer, ProducerError};
use crate::store::emails::{self, NewRow};
use crate::store::suppressions;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Handlers build their error response early and return it; boxing keeps `Result` small.
pub(super) type Reject = Box<Response>;

pub const MAX_BATCH: usize = 1000;
/// Most field errors one batch answer reports (each email reports at most
/// `domain::MAX_REPORTED_ERRORS`); the rest are counted in its last entry.
pub const MAX_BATCH_ERRORS: usize = 100;

#[derive(Clone)]
pub struct ApiState {
    pub producer: Producer,
    pub pg: PgPool,
    /// SHA-256 of each bootstrap key (`MAILFLEET_API_KEYS`, the operator's: every tenant,
    /// every scope): compared in constant time, never kept in clear.
    key_hashes: Arc<Vec<[u8; 32]>>,
    /// Keys made with `mailfleet key create`, by hash, as last read from Postgres.
    keys: Arc<std::sync::Mutex<KeyCache>>,
    pub max_payload: usize,
}

/// Key hash -> what Postgres said of it (None: no live key), and when.
type KeyCache = HashMap<[u8; 32], (Option<Principal>, Instant)>;

/// How long a key read from Postgres is believed: a revoked key stops working within this.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// Keys remembered (valid and unknown ones); the cache starts over past it.
const KEY_CACHE_MAX: usize = 10_000;

/// Who a request comes from: put in its extensions by [`authorize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// None: every tenant (a bootstrap key, or a key made without `--tenant`).
    pub tenant: Option<String>,
    pub send: bool,
    pub read: bool,
}

impl ApiState {
    pub fn new(producer: Producer, pg: PgPool, keys: &[Secret], max_payload: usize) -> Self {
        let key_hashes = keys
            .iter()
            .filter(|k| !k.is_empty())
            .map(|k| Sha256::digest(k.expose().as_bytes()).into())
            .collect();
        ApiState {
            producer,
            pg,
            key_hashes: Arc::new(key_hashes),
            keys: Arc::default(),
            max_payload,
        }
    }

    /// The principal a key hash stands for: a bootstrap key, or a live key from Postgres
    /// (cached for [`KEY_CACHE_TTL`], unknown ones too, so a flood of bad keys costs one
    /// lookup each per period). `Err`: Postgres could not say.
    async fn principal(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<Principal>, crate::store::StoreError> {
        // Constant time over every bootstrap key.
        let bootstrap = self.key_hashes.iter().fold(false, |acc, k| {
            acc | (k.iter().zip(hash.iter()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0)
        });
        if bootstrap {
            return Ok(Some(Principal {
                tenant: None,
                send: true,
                read: true,
            }));
        }
        let now = Instant::now();
        if let Some((p, at)) = self.lock_keys().get(hash)
            && now.duration_since(*at) < KEY_CACHE_TTL
        {
            return Ok(p.clone());
        }
        let found = crate::store::api_keys::find(&self.pg, hash)
            .await?
            .map(|g| Principal {
                tenant: g.tenant,
                send: g.scopes.iter().any(|s| s == "send"),
                read: g.scopes.iter().any(|s| s == "read"),
            });
        let mut keys = self.lock_keys();
        if keys.len() >= KEY_CACHE_MAX {
            keys.clear();
        }
        keys.insert(*hash, (found.clone(), now));
        Ok(found)
    }

    fn lock_keys(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every error answer in the JSON error shape: axum's own rejections (a body over its limit,
/// 413; a missing or unreadable body) answer in plain text, rewritten here with their text as
/// the `error`.
pub(super) async fn json_errors(r: Response) -> Response {
    let status = r.status();
    let is_json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return r;
    }
    let (parts, body) = r.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let error = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let mut out = (status, Json(json!({ "error": error }))).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

pub(super) fn problem(status: StatusCode, error: &str, details: Option<Value>) -> Reject {
    let mut body = json!({ "error": error });
    if let Some(d) = details {
        body["details"] = d;
    }
    Box::new((status, Json(body)).into_response())
}

pub(super) async fn authorize(State(s): State<ApiState>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|k| -> [u8; 32] { Sha256::digest(k.trim().as_bytes()).into() });
    let principal = match presented {
        None => None,
        Some(h) => match s.principal(&h).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error.message = %e, "API key lookup failed");
                return *problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot check the API key now; retry",
                    None,
                );
            }
        },
    };
    let Some(principal) = principal else {
        return *problem(StatusCode::UNAUTHORIZED, "missing or invalid API key", None);
    };
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// Bind `job` to the key's tenant: a tenant's key sends only as that tenant (a job that names
/// none becomes the tenant's), and every job's idempotency key lives in its tenant's own
/// namespace (`<tenant>/<key>`), so one tenant's keys never collide with another's.
fn bind_tenant(p: &Principal, job: &mut NewJob) -> Result<(), Reject> {
    if let Some(t) = &p.tenant {
        match &job.payload.tenant {
            None => job.payload.tenant = Some(t.clone()),
            Some(x) if x == t => {}
            Some(_) => {
                return Err(problem(
                    StatusCode::FORBIDDEN,
                    &format!("this API key sends only as tenant {t:?}"),
                    None,
                ));
            }
        }
    }
    if let (Some(k), Some(t)) = (&job.idempotency_key, &job.payload.tenant) {
        let max = crate::producer::MAX_IDEMPOTENCY_KEY_LEN.saturating_sub(t.len() + 1);
        if k.len() > max {
            return Err(field_errors(ValidationErrors::single(
                "idempotency_key",
                format!("at most {max} bytes for tenant {t:?}"),
            )));
        }
        job.idempotency_key = Some(format!("{t}/{k}"));
    }
    Ok(())
}

pub(super) fn may(allowed: bool, what: &str) -> Result<(), Reject> {
    if allowed {
        Ok(())
    } else {
        Err(problem(
            StatusCode::FORBIDDEN,
            &format!("this API key may not {what} (its scopes)"),
            None,
        ))
    }
}

#[derive(Serialize)]
struct Accepted {
    id: String,
    duplicate: bool,
    /// `queued`, or `suppressed` when every `to` recipient is on the suppression list (the job
    /// is recorded and never enqueued).
    status: Status,
}

fn field_errors(e: ValidationErrors) -> Reject {
    problem(
        StatusCode::BAD_REQUEST,
        "invalid email",
        Some(serde_json::to_value(e.0).unwrap_or_default()),
    )
}

/// Split a request object into (lane, idempotency key, payload). `lane` and `idempotency_key`
/// sit beside the payload's fields; anything else must be a payload field.
fn parse_job(mut v: Value, header_idem: Option<&str>) -> Result<NewJob, ValidationErrors> {
    let obj = v
        .as_object_mut()
        .ok_or_else(|| ValidationErrors::single("", "must be a JSON object"))?;
    let lane = match obj.remove("lane") {
        None | Some(Value::Null) => Lane::Tx,
        Some(Value::String(s)) => s.parse().map_err(|e: crate::domain::LaneParseError| {
            ValidationErrors::single("lane", e.to_string())
        })?,
        Some(_) => {
            return Err(ValidationErrors::single(
                "lane",
                "must be \"tx\" or \"bulk\"",
            ));
        }
    };
    let idem = match obj.remove("idempotency_key") {
        None | Some(Value::Null) => header_idem.map(str::to_owned),
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            return Err(ValidationErrors::single(
                "idempotency_key",
                "must be a string",
            ));
        }
    };
    let payload: Payload = serde_json::from_value(v)
        .map_err(|e| ValidationErrors::single("payload", e.to_string()))?;
    Ok(NewJob {
        lane,
        idempotency_key: idem,
        payload,
    })
}

async fn enqueue(s: &ApiState, prepared: Vec<Prepared>) -> Result<Vec<Accepted>, Reject> {
    // Jobs whose every `to` recipient is suppressed are recorded `suppressed` and not
    // enqueued. If the check itself fails, enqueue: the worker checks again before sending.
    let addresses: Vec<String> = prepared
        .iter()
        .flat_map(|p| p.email.to.iter())
        .map(|m| m.address.as_str().to_lowercase())
        .collect();
    let set = match suppressions::active(&s.pg, &addresses).await {
        Ok(set) => set,
        Err(e) => {
            METRICS
                .store_errors
                .with_label_values(&["suppressions"])
                .inc();
            tracing::warn!(error.message = %e, "suppression check failed; the workers will check");
            Default::default()
        }
    };
    let is_suppressed = |p: &Prepared| {
        !set.is_empty()
            && p.email.to.iter().all(|m| {
                suppressions::is_suppressed(
                    &set,
                    &m.address.as_str().to_lowercase(),
                    p.email.tenant.as_deref(),
                )
            })
    };
    let order: Vec<bool> = prepared.iter().map(is_suppressed).collect();
    let (mut suppressed, mut queued_jobs) = (Vec::new(), Vec::with_capacity(prepared.len()));
    for (p, held) in prepared.into_iter().zip(&order) {
        if *held {
            suppressed.push(p);
        } else {
            queued_jobs.push(p);
        }
    }
    let prepared = queued_jobs;
    let enq = s.producer.send_prepared(&prepared).await.map_err(|e| {
        tracing::error!(error.message = %e, "enqueue failed");
        let (error, retry) = refusal(&e);
        let mut r = problem(StatusCode::SERVICE_UNAVAILABLE, &error, None);
        r.headers_mut().insert(
            header::RETRY_AFTER,
            axum::http::HeaderValue::from_static(retry),
        );
        r
    })?;
    if s.producer.durability() != Durability::Ledger {
        // At `ledger` the producer wrote the rows (and refused the batch if it could not). At
        // the other levels the rows only serve `GET` and the reconciler early: the jobs are on
        // the stream and will be sent if this fails.
        let rows = crate::producer::ledger_rows(&prepared, &enq);
        if let Err(e) = emails::insert_queued(&s.pg, &rows).await {
            METRICS
                .store_errors
                .with_label_values(&["insert_queued"])
                .inc();
            tracing::warn!(error.message = %e, "could not record accepted jobs as queued");
        }
    }
    if !suppressed.is_empty() {
        let rows: Vec<NewRow> = suppressed.iter().map(Prepared::ledger_row).collect();
        emails::insert_suppressed(&s.pg, &rows).await.map_err(|e| {
            tracing::error!(error.message = %e, "could not record suppressed jobs");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable; retry with the same idempotency key",
                None,
            )
        })?;
        METRICS.suppressed.inc_by(suppressed.len() as u64);
    }
    // Answer in request order.
    let (mut held, mut queued) = (suppressed.iter(), enq.into_iter());
    let mut out = Vec::with_capacity(order.len());
    for was_suppressed in order {
        let next = if was_suppressed {
            held.next().map(|p| Accepted {
                id: p.id.to_string(),
                duplicate: false,
                status: Status::Suppressed,
            })
        } else {
            queued.next().map(|e| Accepted {
                id: e.id.to_string(),
                duplicate: !e.added,
                status: Status::Queued,
            })
        };
        out.extend(next);
    }
    Ok(out)
}

/// A refused enqueue's message and Retry-After (seconds): nothing of the batch is enqueued
/// except what a worker had already read, so a retry with the same idempotency keys is safe.
fn refusal(e: &ProducerError) -> (String, &'static str) {
    let except = match e.sent_anyway() {
        0 => String::new(),
        n => format!(" except {n} email(s) a worker had already read, which will be sent"),
    };
    let retry = "; retry later with the same idempotency keys";
    match e {
        ProducerError::QueueFull { .. } => (
            format!("queue full: nothing was enqueued{except}{retry}"),
            "5",
        ),
        ProducerError::NotReplicated { .. } => (
            format!("queue not replicated in time: nothing was enqueued{except}{retry}"),
            "1",
        ),
        ProducerError::Ledger { .. } => (
            format!("store unavailable: nothing was enqueued{except}{retry}"),
            "1",
        ),
        _ => (
            "queue unavailable; retry with the same idempotency key".to_owned(),
            "1",
        ),
    }
}

fn prepare(s: &ApiState, job: NewJob) -> Result<Prepared, Reject> {
    s.producer.prepare(job).map_err(|e| match e {
        ProducerError::Invalid(v) => field_errors(v),
        ProducerError::TooLarge { size, limit } => problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("payload is {size} bytes; the limit is {limit}"),
            None,
        ),
        other => problem(StatusCode::INTERNAL_SERVER_ERROR, &other.to_string(), None),
    })
}

fn json_body(body: &Bytes) -> Result<Value, Reject> {
    serde_json::from_slice(body)
        .map_err(|e| field_errors(ValidationErrors::single("", format!("not valid JSON: {e}"))))
}

pub(super) async fn create(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let idem = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
    let result = async {
        may(who.send, "send")?;
        let v = json_body(&body)?;
        let mut job = parse_job(v, idem).map_err(field_errors)?;
        bind_tenant(&who, &mut job)?;
        let p = prepare(&s, job)?;
        let mut out = enqueue(&s, vec![p]).await?;
        out.pop()
            .ok_or_else(|| problem(StatusCode::INTERNAL_SERVER_ERROR, "no reply", None))
    }
    .await;
    match result {
        Ok(a) => (StatusCode::ACCEPTED, Json(a)).into_response(),
        Err(r) => *r,
    }
}

pub(super) async fn create_batch(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Response {
    let result = async {
        may(who.send, "send")?;
        let v = json_body(&body)?;
        let items = match v {
            Value::Object(mut o) => match o.remove("emails") {
                Some(Value::Array(a)) => a,
                _ => {
                    return Err(field_errors(ValidationErrors::single(
                        "emails",
                        "must be an array",
                    )));
                }
            },
            Value::Array(a) => a,
            _ => {
                return Err(field_errors(ValidationErrors::single(
                    "emails",
                    "must be an array",
                )));
            }
        };
        if items.is_empty() || items.len() > MAX_BATCH {
            return Err(field_errors(ValidationErrors::single(
                "emails",
                format!("must hold 1 to {MAX_BATCH} emails"),
            )));
        }
        let mut prepared = Vec::with_capacity(items.len());
        let mut errors = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let prefix = format!("emails[{i}].");
            match parse_job(item, None) {
                Ok(mut job) => {
                    bind_tenant(&who, &mut job)?;
                    match s.producer.prepare(job) {
                        Ok(p) => prepared.push(p),
                        Err(ProducerError::Invalid(e)) => errors.extend(e.prefixed(&prefix).0),
                        Err(ProducerError::TooLarge { size, limit }) => {
                            return Err(problem(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                &format!(
                                    "emails[{i}]: payload is {size} bytes; the limit is {limit}"
                                ),
                                None,
                            ));
                        }
                        Err(e) => {
                            return Err(problem(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                &e.to_string(),
                                None,
                            ));
                        }
                    }
                }
                Err(e) => errors.extend(e.prefixed(&prefix).0),
            }
        }
        if !errors.is_empty() {
            // However many items failed, the answer stays small.
            return Err(field_errors(
                ValidationErrors(errors).capped(MAX_BATCH_ERRORS),
            ));
        }
        enqueue(&s, prepared).await
    }
    .await;
    match result {
        Ok(a) => (StatusCode::ACCEPTED, Json(json!({ "emails": a }))).into_response(),
        Err(r) => *r,
    }
}
