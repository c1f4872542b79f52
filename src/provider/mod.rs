//! Providers: the [`Provider`] trait, error classification, and the registry a worker sends
//! through. One file per vendor.
//!
//! Classification is the contract every adapter keeps, because the worker's retry and ledger
//! logic depends on it:
//! - [`ErrorClass::Transient`]: the provider did not take the email and may later (connect
//!   errors, 429, 5xx): retry with backoff;
//! - [`ErrorClass::Permanent`]: it never will (invalid recipient, 4xx validation): `failed`;
//! - [`ErrorClass::QuotaAuth`]: the account cannot send (401/403, paused): retry later;
//! - [`ErrorClass::Ambiguous`]: the request left and no answer came back (a timeout or reset
//!   after sending): the provider may have sent it, so the job is recorded `unknown` and never
//!   sent again automatically.

pub mod sendgrid;

use crate::config::{ProviderConfig, ProviderKind};
use crate::domain::{Email, JobId};
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

/// Parse a Retry-After header given in seconds (the form providers use).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A per-worker smoothing limiter (governor): spreads this worker's requests to one provider
/// evenly instead of in bursts. The cluster-wide limit is a separate, shared window.
pub type Smoother = governor::DefaultDirectRateLimiter;

/// Build a smoother for `per_sec` requests per second (burst of one second's worth).
pub fn smoother(per_sec: u32) -> Option<Smoother> {
    let n = std::num::NonZeroU32::new(per_sec)?;
    Some(governor::RateLimiter::direct(governor::Quota::per_second(
        n,
    )))
}

/// The configured providers, in preference order.
pub struct Providers {
    ordered: Vec<Arc<dyn Provider>>,
    by_name: HashMap<String, Arc<dyn Provider>>,
    smoothers: HashMap<String, Arc<Smoother>>,
}

impl Providers {
    pub fn from_config(configs: &[ProviderConfig], client: &reqwest::Client) -> Self {
        let ordered: Vec<Arc<dyn Provider>> = configs
            .iter()
            .map(|c| -> Arc<dyn Provider> {
                match c.kind {
                    ProviderKind::Sendgrid => Arc::new(sendgrid::SendGrid::new(c, client.clone())),
                }
            })
            .collect();
        let mut providers = Self::new(ordered);
        providers.smoothers = configs
            .iter()
            .filter_map(|c| Some((c.name.clone(), Arc::new(smoother(c.rate_per_sec?)?))))
            .collect();
        providers
    }

    pub fn new(ordered: Vec<Arc<dyn Provider>>) -> Self {
        let by_name = ordered
            .iter()
            .map(|p| (p.name().to_owned(), p.clone()))
            .collect();
        Providers {
            ordered,
            by_name,
            smoothers: HashMap::new(),
        }
    }

    /// Wait until this worker may send one more request to `provider`.
    pub async fn smooth(&self, provider: &str) {
        if let Some(s) = self.smoothers.get(provider) {
            s.until_ready().await;
        }
    }

    /// The provider the job asked for if it is configured, else the first one.
    pub fn pick(&self, preference: Option<&str>) -> Option<&Arc<dyn Provider>> {
        preference
            .and_then(|n| self.by_name.get(n))
            .or_else(|| self.ordered.first())
    }

    pub fn is_empty(&self) -> bool {
        self.ordered.is_empty()
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
    fn a_smoother_admits_one_seconds_worth_then_holds() {
        let s = smoother(5).expect("a limiter");
        assert!((0..5).all(|_| s.check().is_ok()));
        assert!(
            s.check().is_err(),
            "the sixth request in the same instant waits"
        );
        assert!(smoother(0).is_none(), "0 means no cap");
    }
}
