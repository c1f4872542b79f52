//! Providers: the [`Provider`] trait, error classification, and the registry a worker sends
//! through. One file per vendor.
//!
//! Classification is the contract every adapter keeps, because the worker's retry and ledger
//! logic depends on it:
//! - [`ErrorClass::Transient`]: the answer proves the provider did not take the email, and it
//!   may later (connect errors, 408, 429, 503, a vendor's documented throttling code): retry
//!   with backoff, or fail over to the next provider;
//! - [`ErrorClass::Permanent`]: it never will (invalid recipient, 4xx validation): `failed`;
//! - [`ErrorClass::QuotaAuth`]: the account cannot send (401/403, paused): open the
//!   provider's breaker, fail over, and alert (`mailfleet_provider_errors_total{class}`);
//! - [`ErrorClass::Ambiguous`]: the request left and nothing proves it was refused (a timeout
//!   or reset after sending, or a 500, 502, 504 or other 5xx, which a gateway may answer after
//!   the vendor queued the email): the attempt is logged `unknown` and counted, it never fails
//!   over, and `MAILFLEET_AMBIGUOUS` decides whether the job is sent again.
//!
//! [`classify_status`] is the default reading of an HTTP status, shared by every HTTP adapter;
//! each adapter reads the vendor's own error codes first.

pub mod batch;
pub mod breaker;
pub mod mailgun;
pub mod postmark;
pub mod sendgrid;
pub mod ses;
mod slot;
pub mod smtp;

pub use slot::{Slot, Smoother, smoother};

use crate::config::{BreakerConfig, ProviderKind, Routes, SendConfig};
use crate::domain::{Email, JobId, Lane};
use crate::metrics::METRICS;
use crate::render::Rendered;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Transient,
    Permanent,
    QuotaAuth,
    Ambiguous,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::QuotaAuth => "quota_auth",
            ErrorClass::Ambiguous => "ambiguous",
        }
    }
}

/// A failed send, classified. `message` never contains an address or a body.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{class:?}: {message}")]
pub struct SendError {
    pub class: ErrorClass,
    pub message: String,
    pub http_status: Option<u16>,
    pub retry_after: Option<Duration>,
}

impl SendError {
    /// A request that could not even be built: no provider will take it as it is.
    pub fn permanent(message: impl Into<String>) -> Self {
        SendError {
            class: ErrorClass::Permanent,
            message: message.into(),
            http_status: None,
            retry_after: None,
        }
    }
}

/// The provider took the email.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub message_id: Option<String>,
    pub http_status: u16,
}

/// Everything an adapter needs to build the vendor's request.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub job_id: JobId,
    pub email: &'a Email,
    pub rendered: &'a Rendered,
}

pub trait Provider: Send + Sync {
    fn name(&self) -> &str;
    fn send<'a>(&'a self, msg: Message<'a>) -> BoxFuture<'a, Result<Accepted, SendError>>;
}

/// The default class of a failed HTTP answer, for statuses a vendor's own error codes do not
/// settle. Only answers that prove the email was not taken may be retried elsewhere:
/// 408 (the server did not receive the whole request), 429 (refused for the rate) and 503
/// (every vendor documents it as "not available, nothing was done"). Any other 5xx may come
/// from a gateway in front of a vendor that had already queued the email, so it is ambiguous.
pub fn classify_status(status: u16) -> ErrorClass {
    match status {
        401 | 403 => ErrorClass::QuotaAuth,
        408 | 429 | 503 => ErrorClass::Transient,
        500..=599 => ErrorClass::Ambiguous,
        _ => ErrorClass::Permanent,
    }
}

/// Classify a transport-level reqwest error. Only a connect failure proves the request never
/// reached the provider; anything later may have been accepted.
pub fn classify_transport(e: &reqwest::Error) -> SendError {
    let class = if e.is_connect() {
        ErrorClass::Transient
    } else if e.is_builder() {
        ErrorClass::Permanent
    } else {
        ErrorClass::Ambiguous
    };
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connect failed"
    } else {
        "transport error"
    };
    SendError {
        class,
        // reqwest's Display includes the URL, never the body.
        message: format!("{what}: {e}"),
        http_status: None,
        retry_after: None,
    }
}

/// How long a provider asked us to wait: `Retry-After` in seconds, else SendGrid's
/// `X-RateLimit-Reset` (the unix time the window resets).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let num = |name: &str| -> Option<i64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    if let Some(secs) = num("retry-after") {
        return Some(Duration::from_secs(secs.max(0) as u64));
    }
    let reset = num("x-ratelimit-reset")?;
    let now = chrono::Utc::now().timestamp();
    Some(Duration::from_secs((reset - now).clamp(1, 3600) as u64))
}

/// A `{"Name": .., "Value": ..}` header, as SES v2 and Postmark spell one.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct NameValue<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

/// Where a vendor puts its message id in a success answer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MessageIdFrom {
    Header(&'static str),
    /// A top-level string field of the JSON body.
    Json(&'static str),
}

/// Send a built request and turn the answer into [`Accepted`] or a classified [`SendError`]:
/// the part every HTTP adapter shares. `classify` sees the status, the headers and the
/// (scrubbed) start of the error body, and returns the class and the vendor's error type, if
/// it has one, for the message.
pub(crate) async fn exchange(
    req: reqwest::RequestBuilder,
    vendor: &str,
    id_from: MessageIdFrom,
    classify: impl FnOnce(u16, &reqwest::header::HeaderMap, &str) -> (ErrorClass, Option<String>),
) -> Result<Accepted, SendError> {
    let resp = req.send().await.map_err(|e| classify_transport(&e))?;
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        // The email is taken; an unreadable answer only loses the message id.
        let message_id = match id_from {
            MessageIdFrom::Header(h) => resp
                .headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            MessageIdFrom::Json(field) => resp
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v.get(field)?.as_str().map(str::to_owned)),
        };
        return Ok(Accepted {
            message_id,
            http_status: status,
        });
    }
    let headers = resp.headers().clone();
    let (retry, detail) = failed_response(resp).await;
    let (class, kind) = classify(status, &headers, &detail);
    let kind = kind.map(|k| format!(" {k}")).unwrap_or_default();
    Err(SendError {
        class,
        message: format!("{vendor} answered {status}{kind}: {detail}"),
        http_status: Some(status),
        retry_after: retry,
    })
}

/// A failed answer's Retry-After and the start of its body (300 characters), with every
/// word containing `@` replaced: vendors echo addresses in their error texts, and these texts
/// reach `last_error` and the dead-letter stream.
pub(crate) async fn failed_response(resp: reqwest::Response) -> (Option<Duration>, String) {
    let retry = retry_after(resp.headers());
    let text = resp.text().await.unwrap_or_default();
    (retry, scrub(&text))
}

/// The first 300 characters of `text`, every `@`-word replaced by `<address>`.
pub fn scrub(text: &str) -> String {
    let short: String = text.chars().take(300).collect();
    short
        .split_inclusive(|c: char| {
            c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ',' | ';')
        })
        .map(|w| {
            if w.contains('@') {
                let end = w.chars().last().filter(|c| {
                    c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ',' | ';')
                });
                match end {
                    Some(c) => format!("<address>{c}"),
                    None => "<address>".to_owned(),
                }
            } else {
                w.to_owned()
            }
        })
        .collect()
}

/// A provider could not be set up from its configuration.
#[derive(Debug, thiserror::Error)]
#[error("provider {name:?}: {message}")]
pub struct BuildError {
    pub name: String,
    pub message: String,
}

/// The vendor's batch endpoint, with its most messages and bytes per request, for the vendors
/// that have one mailfleet speaks.
fn batch_dialect(
    c: &crate::config::ProviderConfig,
    client: &reqwest::Client,
) -> Option<(Arc<dyn batch::BatchDialect>, usize, usize)> {
    Some(match c.kind {
        ProviderKind::Sendgrid => (
            Arc::new(sendgrid::SendGrid::new(c, client.clone())),
            sendgrid::MAX_BATCH,
            sendgrid::MAX_BATCH_BYTES,
        ),
        ProviderKind::Postmark => (
            Arc::new(postmark::Postmark::new(c, client.clone())),
            postmark::MAX_BATCH,
            postmark::MAX_BATCH_BYTES,
        ),
        _ => return None,
    })
}

/// The configured providers and the routes through them.
pub struct Providers {
    slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
    routes: Routes,
}

impl Providers {
    /// The configured providers; HTTP adapters send bulk over `client` and tx over `tx_client`
    /// (pass two clients so the lanes share no connection).
    pub fn from_config(
        cfg: &SendConfig,
        client: &reqwest::Client,
        tx_client: &reqwest::Client,
    ) -> Result<Self, BuildError> {
        let http = |c: &crate::config::ProviderConfig,
                    client: &reqwest::Client|
         -> Option<Arc<dyn Provider>> {
            Some(match c.kind {
                ProviderKind::Sendgrid => Arc::new(sendgrid::SendGrid::new(c, client.clone())),
                ProviderKind::Ses => Arc::new(ses::Ses::new(c, client.clone())),
                ProviderKind::Mailgun => Arc::new(mailgun::Mailgun::new(c, client.clone())),
                ProviderKind::Postmark => Arc::new(postmark::Postmark::new(c, client.clone())),
                ProviderKind::Smtp => return None,
            })
        };
        let mut slots = Vec::with_capacity(cfg.providers.len());
        for c in &cfg.providers {
            let provider: Arc<dyn Provider> = match http(c, client) {
                Some(p) => p,
                None => Arc::new(smtp::Smtp::new(c).map_err(|message| BuildError {
                    name: c.name.clone(),
                    message,
                })?),
            };
            let mut slot = Slot::new(provider, cfg.breaker);
            slot.tx = http(c, tx_client);
            slot.limit = c.limit;
            slot.smoother = c.rate_per_sec.and_then(smoother);
            slot.concurrency = c.concurrency.map(crate::priority::PrioritySemaphore::new);
            if c.batch_max > 1
                && let Some((dialect, max, max_bytes)) = batch_dialect(c, client)
            {
                slot.batcher = Some(Arc::new(batch::Batcher::new(
                    c.name.clone(),
                    dialect,
                    batch::BatchLimits {
                        max: c.batch_max.min(max),
                        max_bytes,
                        // Under a cluster limit a permit must be used at once (its
                        // margin): the batch goes as soon as its task runs, never on a timer.
                        linger: if c.limit.is_some() {
                            Duration::ZERO
                        } else {
                            Duration::from_millis(c.batch_linger_ms)
                        },
                    },
                )));
            }
            slots.push(slot);
        }
        Ok(Self::with_slots(slots, cfg.routes.clone()))
    }

    /// Providers built elsewhere (tests), with default breakers and no limits, routed in order.
    pub fn new(ordered: Vec<Arc<dyn Provider>>) -> Self {
        let slots = ordered
            .into_iter()
            .map(|p| Slot::new(p, BreakerConfig::default()))
            .collect();
        Self::with_slots(slots, Routes::default())
    }

    fn with_slots(slots: Vec<Slot>, routes: Routes) -> Self {
        let by_name = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name().to_owned(), i))
            .collect();
        for s in &slots {
            METRICS.breaker_state.with_label_values(&[s.name()]).set(0);
        }
        Providers {
            slots,
            by_name,
            routes,
        }
    }

    pub fn slot(&self, i: usize) -> &Slot {
        &self.slots[i]
    }

    /// The providers a job may use, in failover order: the tenant's route for its lane, else
    /// the lane's route, else every provider in configuration order; the job's own preference
    /// (when configured) goes first.
    pub fn route(&self, lane: Lane, tenant: Option<&str>, preference: Option<&str>) -> Vec<usize> {
        let names = tenant
            .and_then(|t| self.routes.tenants.get(t))
            .and_then(|r| r.get(lane))
            .or_else(|| self.routes.default.get(lane));
        let mut out: Vec<usize> = match names {
            Some(names) => names
                .iter()
                .filter_map(|n| self.by_name.get(n).copied())
                .collect(),
            None => (0..self.slots.len()).collect(),
        };
        if let Some(&p) = preference.and_then(|n| self.by_name.get(n)) {
            out.retain(|&i| i != p);
            out.insert(0, p);
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Each provider's breaker state in this worker (0 closed, 1 half-open, 2 open).
    pub fn breaker_states(&self) -> Vec<(String, i64)> {
        self.slots
            .iter()
            .map(|s| (s.name().to_owned(), s.breaker.state().gauge()))
            .collect()
    }
}

/// The HTTP client every adapter shares: one connection pool per host, reused across sends.
pub fn http_client(max_idle_per_host: usize) -> reqwest::Result<reqwest::Client> {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .pool_max_idle_per_host(max_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .user_agent(concat!("mailfleet/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubbing_removes_addresses_from_vendor_error_texts() {
        let s = scrub(
            r#"{"Message":"Error parsing 'To': Illegal email address 'ada@example.com'. It must contain the '@' symbol."}"#,
        );
        assert!(!s.contains("ada@example.com"), "{s}");
        assert!(s.contains("Illegal email address"), "{s}");
        assert_eq!(scrub("to: <bob@x.org>, ok"), "to: <<address>>, ok");
        assert_eq!(scrub(&"x".repeat(400)).len(), 300);
    }

    #[test]
    fn a_smoother_admits_one_seconds_worth_then_holds() {
        let s = smoother(5).expect("a limiter");
        assert!((0..5).all(|_| s.check().is_ok()));
        assert!(
            s.check().is_err(),
            "the sixth request in the same instant waits"
        );
        assert!(smoother(0).is_none(), "0 means no cap");
    }

    #[test]
    fn every_provider_reports_its_breaker_state() {
        let mut a = crate::config::ProviderConfig::new("a", ProviderKind::Sendgrid, "http://a");
        a.api_key = crate::config::Secret::new("k");
        let mut b = a.clone();
        b.name = "b".into();
        let cfg = SendConfig {
            providers: vec![a, b],
            routes: Routes::default(),
            breaker: BreakerConfig::default(),
        };
        let client = http_client(1).expect("client");
        let p = Providers::from_config(&cfg, &client, &client).expect("providers");
        assert_eq!(
            p.breaker_states(),
            vec![("a".to_owned(), 0), ("b".to_owned(), 0)]
        );
        p.slot(1)
            .record(breaker::Admit::Yes, Err(ErrorClass::QuotaAuth));
        assert_eq!(
            p.breaker_states(),
            vec![("a".to_owned(), 0), ("b".to_owned(), 2)]
        );
    }
}
