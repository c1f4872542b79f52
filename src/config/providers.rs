//! Providers, routes and the circuit breaker's settings: the types the provider registry is
//! built from, whether they came from the TOML file ([`super::file`]) or the defaults.

use super::Secret;
use clap::Args;
use serde::Deserialize;

/// The provider used when the config file names none: SendGrid at this URL.
#[derive(Debug, Clone, Args)]
pub struct DefaultProvider {
    /// SendGrid API base URL (the mock provider's URL in development).
    #[arg(
        long,
        env = "MAILFLEET_SENDGRID_URL",
        default_value = "https://api.sendgrid.com"
    )]
    pub sendgrid_url: String,
    /// SendGrid API key.
    #[arg(
        long,
        env = "MAILFLEET_SENDGRID_API_KEY",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub sendgrid_api_key: Secret,
    /// Provider request timeout, in ms.
    #[arg(long, env = "MAILFLEET_PROVIDER_TIMEOUT_MS", default_value_t = 10_000)]
    pub provider_timeout_ms: u64,
    /// Most bulk emails per SendGrid request (personalizations of one `mail/send`, at most
    /// 1,000); 1: one request per email.
    #[arg(long, env = "MAILFLEET_SENDGRID_BATCH_MAX", default_value_t = 500)]
    pub sendgrid_batch_max: usize,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Sendgrid,
    Ses,
    Mailgun,
    Postmark,
    Smtp,
}

impl ProviderKind {
    /// The vendor's public API base URL (SES and Mailgun depend on the region).
    pub(super) fn default_base_url(self, region: Option<&str>) -> Option<String> {
        match self {
            ProviderKind::Sendgrid => Some("https://api.sendgrid.com".into()),
            ProviderKind::Postmark => Some("https://api.postmarkapp.com".into()),
            ProviderKind::Mailgun => Some(match region.unwrap_or("us") {
                "eu" => "https://api.eu.mailgun.net".into(),
                _ => "https://api.mailgun.net".into(),
            }),
            ProviderKind::Ses => region.map(|r| format!("https://email.{r}.amazonaws.com")),
            ProviderKind::Smtp => None,
        }
    }
}

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS at all: only for a local relay or a test server.
    None,
}

/// The cluster-wide sliding window for one provider (`lua/ratelimit.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Most requests in any window, across every worker.
    pub limit: u32,
    pub window_ms: u64,
    /// Most requests per tenant in any window (None: tenants share the provider's limit).
    pub tenant_limit: Option<u32>,
    /// Added to the window the limiter enforces, so requests that leave a little later than
    /// their permit was granted still fall inside the provider's window (see docs/rate-limiting.md).
    pub margin_ms: u64,
    /// The margin for a worker's first two windows after its limiter was idle for a window:
    /// a cluster that wakes up to a backlog is at its busiest then (connections opening, first
    /// batches claimed), and requests leave later than in steady state.
    pub cold_margin_ms: u64,
    /// Spread a window's permits over it: at most `limit × spread_ms / window_ms` in any
    /// `spread_ms` (0: no spreading).
    pub spread_ms: u64,
}

impl Limit {
    /// The most permits in any `spread_ms`.
    pub fn spread_cap(&self) -> u64 {
        (u64::from(self.limit) * self.spread_ms)
            .div_ceil(self.window_ms.max(1))
            .max(1)
    }
}

/// One provider, from the TOML file or the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// HTTP base URL (not used for SMTP).
    pub base_url: String,
    /// The provider's secret: SendGrid/Mailgun API key, Postmark server token, SES secret
    /// access key, SMTP password.
    pub api_key: Secret,
    /// SES access key id, SMTP user name, Mailgun user (default `api`).
    pub key_id: Option<String>,
    /// SES session token (temporary credentials).
    pub session_token: Option<Secret>,
    /// SES region (`us-east-1`); Mailgun `us` or `eu`.
    pub region: Option<String>,
    /// Mailgun sending domain.
    pub domain: Option<String>,
    /// Postmark message stream (`outbound` by default).
    pub message_stream: Option<String>,
    /// SES configuration set.
    pub configuration_set: Option<String>,
    /// SMTP host, port, TLS mode and pool size.
    pub host: Option<String>,
    pub port: Option<u16>,
    pub tls: SmtpTls,
    pub pool_size: u32,
    pub timeout_ms: u64,
    /// Most requests in flight to this provider, per worker (None: the worker's send concurrency).
    pub concurrency: Option<usize>,
    /// Per-worker cap on requests per second to this provider (smoothing; None = no cap).
    pub rate_per_sec: Option<u32>,
    /// The cluster-wide limit (None: not limited by mailfleet).
    pub limit: Option<Limit>,
    /// Most bulk emails per request where the vendor has a batch endpoint (SendGrid: up to
    /// 1,000 personalizations); 1 or 0: one request per email.
    pub batch_max: usize,
    /// How long a batch waits for more emails after its first, in ms.
    pub batch_linger_ms: u64,
}

impl ProviderConfig {
    /// A provider of `kind` with every optional setting at its default.
    pub fn new(name: impl Into<String>, kind: ProviderKind, base_url: impl Into<String>) -> Self {
        ProviderConfig {
            name: name.into(),
            kind,
            base_url: base_url.into(),
            api_key: Secret::default(),
            key_id: None,
            session_token: None,
            region: None,
            domain: None,
            message_stream: None,
            configuration_set: None,
            host: None,
            port: None,
            tls: SmtpTls::default(),
            pool_size: 8,
            timeout_ms: default_timeout(),
            concurrency: None,
            rate_per_sec: None,
            limit: None,
            batch_max: default_batch_max(kind),
            batch_linger_ms: DEFAULT_BATCH_LINGER_MS,
        }
    }
}

/// Bulk emails per batch request by default: SendGrid's batches of personalizations and
/// Postmark's `/email/batch`; the other vendors send one request per email.
pub fn default_batch_max(kind: ProviderKind) -> usize {
    match kind {
        ProviderKind::Sendgrid | ProviderKind::Postmark => 500,
        _ => 1,
    }
}

/// A batch's linger by default: the sends of one read batch reach the provider within a
/// millisecond or two of each other.
pub const DEFAULT_BATCH_LINGER_MS: u64 = 2;

pub(super) fn default_timeout() -> u64 {
    10_000
}

/// Circuit breaker settings, shared by every provider.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: u32,
    /// Failure share over `window_ms` that opens it, once `min_requests` were made.
    pub error_rate: f64,
    pub min_requests: u32,
    pub window_ms: u64,
    /// How long it stays open before letting one probe through (half-open).
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            error_rate: 0.5,
            min_requests: 20,
            window_ms: 10_000,
            open_ms: 5_000,
        }
    }
}

/// Ordered provider names per lane, for one tenant or for everyone.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LaneRoutes {
    #[serde(default)]
    pub tx: Option<Vec<String>>,
    #[serde(default)]
    pub bulk: Option<Vec<String>>,
}

impl LaneRoutes {
    pub fn get(&self, lane: crate::domain::Lane) -> Option<&[String]> {
        match lane {
            crate::domain::Lane::Tx => self.tx.as_deref(),
            crate::domain::Lane::Bulk => self.bulk.as_deref(),
        }
    }
}

/// Which providers a job may use, in failover order.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Routes {
    #[serde(flatten)]
    pub default: LaneRoutes,
    #[serde(default)]
    pub tenants: std::collections::BTreeMap<String, LaneRoutes>,
}

/// Everything the config file says about sending.
#[derive(Debug, Clone, PartialEq)]
pub struct SendConfig {
    pub providers: Vec<ProviderConfig>,
    pub routes: Routes,
    pub breaker: BreakerConfig,
}

impl SendConfig {
    /// Providers only: every lane fails over through them in this order.
    pub fn of(providers: Vec<ProviderConfig>) -> Self {
        SendConfig {
            providers,
            routes: Routes::default(),
            breaker: BreakerConfig::default(),
        }
    }
}
