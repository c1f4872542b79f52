//! The mock provider (`mailfleet mock-provider`): a real HTTP server speaking SendGrid v3's
//! `POST /v3/mail/send`, with configurable latency and failure rate. Every accepted job id
//! (`custom_args.mailfleet_id`) is appended to a JSONL log and counted, so a run can be
//! checked for lost and duplicated emails from the provider's side. `GET /stats` reports
//! `received`, `unique`, `duplicates` and `failed_injected`.
//!
//! The log is written by one task through a buffer flushed every 50 ms and on shutdown, so a
//! stopped mock's log is complete.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Added to every request.
    pub latency: Duration,
    /// Extra uniformly random latency, 0..jitter.
    pub jitter: Duration,
    /// Share of requests answered 503 (0.0 to 1.0); those are not counted as received.
    pub failure_rate: f64,
    /// Where accepted job ids are appended, one JSON object per line.
    pub log: Option<PathBuf>,
    /// Bursts of 429: every `throttle_every`, answer 429 (Retry-After: 1) for `throttle_for`.
    pub throttle_every: Duration,
    pub throttle_for: Duration,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            failure_rate: 0.0,
            log: None,
            throttle_every: Duration::ZERO,
            throttle_for: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub received: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub failed_injected: u64,
    pub throttled: u64,
}

struct Inner {
    cfg: MockConfig,
    seen: Mutex<HashMap<String, u32>>,
    received: AtomicU64,
    failed: AtomicU64,
    throttled: AtomicU64,
    started: std::time::Instant,
    log: Option<mpsc::UnboundedSender<String>>,
}

#[derive(Clone)]
pub struct Mock(Arc<Inner>);

/// A running mock: its router and the log writer to await after the server stops.
pub struct MockServer {
    pub router: Router,
    pub state: Mock,
    pub log_writer: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Mock {
    pub fn stats(&self) -> Stats {
        let seen = self.0.seen.lock().unwrap_or_else(|p| p.into_inner());
        let received = self.0.received.load(Ordering::SeqCst);
        Stats {
            received,
            unique: seen.len() as u64,
            duplicates: received.saturating_sub(seen.len() as u64),
            failed_injected: self.0.failed.load(Ordering::SeqCst),
            throttled: self.0.throttled.load(Ordering::SeqCst),
        }
    }
    /// How many times each job id was accepted.
    pub fn counts(&self) -> HashMap<String, u32> {
        self.0
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Build the mock. With a log path, the file is created (truncated) now. The log writer ends
/// when every clone of the returned state is dropped.
pub async fn build(cfg: MockConfig) -> std::io::Result<MockServer> {
    let (log, log_writer) = match &cfg.log {
        Some(path) => {
            let file = tokio::fs::File::create(path).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(tokio::spawn(write_log(file, rx))))
        }
        None => (None, None),
    };
    let state = Mock(Arc::new(Inner {
        cfg,
        seen: Mutex::new(HashMap::new()),
        received: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        throttled: AtomicU64::new(0),
        started: std::time::Instant::now(),
        log,
    }));
    let router = Router::new()
        .route("/v3/mail/send", post(sendgrid))
        .route(
            "/stats",
            get(|State(m): State<Mock>| async move { Json(m.stats()) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state.clone());
    Ok(MockServer {
        router,
        state,
        log_writer,
    })
}

async fn write_log(
    file: tokio::fs::File,
    mut rx: mpsc::UnboundedReceiver<String>,
) -> std::io::Result<()> {
    let mut w = tokio::io::BufWriter::new(file);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            line = rx.recv() => match line {
                Some(l) => { w.write_all(l.as_bytes()).await?; w.write_all(b"\n").await?; }
                None => break,
            },
            _ = tick.tick() => w.flush().await?,
        }
    }
    w.flush().await
}

fn sendgrid_error(status: StatusCode, message: &str, field: Option<&str>) -> Response {
    (
        status,
        Json(json!({ "errors": [{ "message": message, "field": field }] })),
    )
        .into_response()
}

async fn sendgrid(State(m): State<Mock>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let authed = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer ") && v.len() > 7);
    if !authed {
        return sendgrid_error(
            StatusCode::UNAUTHORIZED,
            "The provided authorization grant is invalid, expired, or revoked",
            None,
        );
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return sendgrid_error(StatusCode::BAD_REQUEST, "Bad Request", None);
    };
    let has_to = v["personalizations"][0]["to"]
        .as_array()
        .is_some_and(|a| !a.is_empty());
    if !has_to {
        return sendgrid_error(
            StatusCode::BAD_REQUEST,
            "The to array is required for all personalization objects",
            Some("personalizations.0.to"),
        );
    }
    if v["from"]["email"].as_str().is_none() {
        return sendgrid_error(
            StatusCode::BAD_REQUEST,
            "The from object must be provided for every email send.",
            Some("from"),
        );
    }
    if v["subject"].as_str().is_none_or(str::is_empty) {
        return sendgrid_error(
            StatusCode::BAD_REQUEST,
            "The subject is required.",
            Some("subject"),
        );
    }
    if v["content"].as_array().is_none_or(|a| a.is_empty()) {
        return sendgrid_error(
            StatusCode::BAD_REQUEST,
            "Unless a valid template_id is provided, the content parameter is required.",
            Some("content"),
        );
    }
    let cfg = &m.0.cfg;
    let mut delay = cfg.latency;
    if !cfg.jitter.is_zero() {
        delay += Duration::from_micros(rand::random_range(0..cfg.jitter.as_micros() as u64));
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if !cfg.throttle_every.is_zero() {
        let every = cfg.throttle_every.as_millis().max(1);
        let into = m.0.started.elapsed().as_millis() % every;
        if into < cfg.throttle_for.as_millis() {
            m.0.throttled.fetch_add(1, Ordering::SeqCst);
            let mut r = sendgrid_error(StatusCode::TOO_MANY_REQUESTS, "Too many requests", None);
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return r;
        }
    }
    if cfg.failure_rate > 0.0 && rand::random::<f64>() < cfg.failure_rate {
        m.0.failed.fetch_add(1, Ordering::SeqCst);
        return sendgrid_error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable", None);
    }
    let id = v["custom_args"]["mailfleet_id"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let message_id = uuid::Uuid::now_v7().simple().to_string();
    {
        let mut seen = m.0.seen.lock().unwrap_or_else(|p| p.into_inner());
        *seen.entry(id.clone()).or_insert(0) += 1;
    }
    m.0.received.fetch_add(1, Ordering::SeqCst);
    if let Some(log) = &m.0.log {
        let line = json!({
            "id": id,
            "provider": "sendgrid",
            "message_id": message_id,
            "at_ms": chrono::Utc::now().timestamp_millis(),
        });
        let _ = log.send(line.to_string());
    }
    (StatusCode::ACCEPTED, [("x-message-id", message_id)]).into_response()
}

/// Read a mock log: how many times each job id was accepted.
pub fn read_log(path: &std::path::Path) -> std::io::Result<HashMap<String, u32>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if let Some(id) = v["id"].as_str() {
            *out.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    Ok(out)
}
