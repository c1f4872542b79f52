//! Every setting in one place: its flag, its `MAILFLEET_*` environment variable, its default
//! and its documentation, so `mailfleet --help` and `mailfleet <cmd> --help` are the reference.
//! Providers (and their credentials) may also come from a TOML file (`MAILFLEET_CONFIG`), see
//! docs/configuration.md and `mailfleet.example.toml`.
//!
//! Secrets live in [`Secret`], whose Debug prints `[redacted]`; URLs that may carry passwords
//! are declared with `hide_env_values` so `--help` never echoes them.

use clap::{Args, Parser};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// A value that must never be printed.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "mailfleet",
    version,
    about = "A Redis-coordinated, horizontally scaled email delivery cluster"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: crate::cli::Command,
}

/// Settings every subcommand shares.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Redis URL (redis://[user:password@]host:port[/db]).
    #[arg(
        long,
        global = true,
        env = "MAILFLEET_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: Secret,
    /// The Redis URL is a seed node of a Redis Cluster (a comma-separated list of URLs is a
    /// cluster anyway). Every key a script touches shares one hash tag, so nothing else changes.
    #[arg(long, global = true, env = "MAILFLEET_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Postgres URL.
    #[arg(
        long,
        global = true,
        env = "MAILFLEET_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/mailfleet",
        hide_env_values = true
    )]
    pub database_url: Secret,
    /// Key prefix, so several deployments can share one Redis.
    #[arg(long, global = true, env = "MAILFLEET_PREFIX", default_value = "mf")]
    pub prefix: String,
    /// Number of partitions jobs are spread over (hash tags); must match across producers and workers.
    #[arg(long, global = true, env = "MAILFLEET_PARTITIONS", default_value_t = 1)]
    pub partitions: u16,
    /// Optional TOML file with providers and limits.
    #[arg(long, global = true, env = "MAILFLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format: `text` or `json`.
    #[arg(
        long,
        global = true,
        env = "MAILFLEET_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: String,
    /// Largest accepted payload (the JSON `payload` field), in bytes.
    #[arg(long, global = true, env = "MAILFLEET_MAX_PAYLOAD_BYTES", default_value_t = 256 * 1024)]
    pub max_payload_bytes: usize,
    /// How long a Redis command may take before it is treated as failed, in ms.
    #[arg(
        long,
        global = true,
        env = "MAILFLEET_REDIS_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub redis_timeout_ms: u64,
    /// How long an idempotency key is remembered, in seconds.
    #[arg(
        long,
        global = true,
        env = "MAILFLEET_DEDUP_TTL_SECS",
        default_value_t = 86_400
    )]
    pub dedup_ttl_secs: u64,
}

impl Global {
    /// The Redis URL as the pool reads it: with `--redis-cluster`, a single URL becomes a
    /// one-seed list (see [`crate::stream::cluster_nodes`]).
    pub fn redis_target(&self) -> String {
        let url = self.redis_url.expose();
        if self.redis_cluster && !url.contains(',') {
            format!("{url},")
        } else {
            url.to_owned()
        }
    }
}

/// The worker's settings (`mailfleet worker`).
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Consumer name in the group; must be unique per live worker (default: host-pid).
    #[arg(long, env = "MAILFLEET_CONSUMER")]
    pub consumer: Option<String>,
    /// Entries per XREADGROUP.
    #[arg(long, env = "MAILFLEET_BATCH_SIZE", default_value_t = 256)]
    pub batch_size: usize,
    /// Most entries read but not yet acked, per worker (back-pressure).
    #[arg(long, env = "MAILFLEET_MAX_IN_FLIGHT", default_value_t = 2048)]
    pub max_in_flight: usize,
    /// Most provider requests in flight at once, per worker.
    #[arg(long, env = "MAILFLEET_SEND_CONCURRENCY", default_value_t = 512)]
    pub send_concurrency: usize,
    /// Most outcomes recorded in one Postgres statement.
    #[arg(long, env = "MAILFLEET_RECORD_BATCH", default_value_t = 1024)]
    pub record_batch: usize,
    /// How long a blocking read waits for new entries, in ms (also bounds shutdown latency).
    #[arg(long, env = "MAILFLEET_BLOCK_MS", default_value_t = 1000)]
    pub block_ms: u64,
    /// A claim older than this is presumed dead and may be taken over, in ms. Must exceed the
    /// longest legitimate send (provider timeout plus recording).
    #[arg(
        long,
        env = "MAILFLEET_VISIBILITY_TIMEOUT_MS",
        default_value_t = 300_000
    )]
    pub visibility_timeout_ms: u64,
    /// How often each worker looks for entries idle past the visibility timeout, in ms.
    #[arg(long, env = "MAILFLEET_RECLAIM_INTERVAL_MS", default_value_t = 30_000)]
    pub reclaim_interval_ms: u64,
    /// Deliveries without an outcome after which an entry is dead-lettered (a poison entry that
    /// crashes every worker that reads it).
    #[arg(long, env = "MAILFLEET_MAX_DELIVERIES", default_value_t = 10)]
    pub max_deliveries: u32,
    /// Attempts before a transiently failing job is dead-lettered.
    #[arg(long, env = "MAILFLEET_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: i32,
    /// First retry delay (full jitter up to it), in ms; doubles per attempt.
    #[arg(long, env = "MAILFLEET_RETRY_BASE_MS", default_value_t = 1000)]
    pub retry_base_ms: u64,
    /// Longest retry delay, in ms.
    #[arg(long, env = "MAILFLEET_RETRY_MAX_MS", default_value_t = 300_000)]
    pub retry_max_ms: u64,
    /// How often due delayed entries are promoted to their lanes, in ms.
    #[arg(long, env = "MAILFLEET_PROMOTE_INTERVAL_MS", default_value_t = 250)]
    pub promote_interval_ms: u64,
    /// Under load, wait up to this long before a read so that a read (and its claim and
    /// record transactions) carries several entries; 0 reads as soon as it can. Only when
    /// entries arrive faster than two per linger (docs/performance.md).
    #[arg(long, env = "MAILFLEET_READ_LINGER_MS", default_value_t = 5)]
    pub read_linger_ms: u64,
    /// Address for /metrics, /healthz, /readyz; empty to disable.
    #[arg(long, env = "MAILFLEET_WORKER_LISTEN", default_value = "0.0.0.0:9464")]
    pub listen: String,
    /// On SIGTERM/SIGINT, how long in-flight sends may take to finish and be recorded, in s.
    #[arg(long, env = "MAILFLEET_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,
    /// A send whose outcome cannot be known (timeout or reset after the request left): `resend`
    /// it later (at-least-once, the attempt is logged `unknown` and counted) or `hold` it as a
    /// final `unknown` for an operator.
    #[arg(long, env = "MAILFLEET_AMBIGUOUS", value_enum, default_value_t = crate::worker::AmbiguousPolicy::Resend)]
    pub ambiguous: crate::worker::AmbiguousPolicy,
    /// Re-enqueue a job whose row stays `queued`, `sending` or `retrying` this long past when it
    /// was due (Redis lost its entry), in s. Must exceed the visibility timeout; 0 turns the
    /// reconciler off.
    #[arg(long, env = "MAILFLEET_RECONCILE_AFTER_SECS", default_value_t = 900)]
    pub reconcile_after_secs: u64,
    /// How often this worker runs a reconciler pass, in ms.
    #[arg(
        long,
        env = "MAILFLEET_RECONCILE_INTERVAL_MS",
        default_value_t = 60_000
    )]
    pub reconcile_interval_ms: u64,
    /// Whether this process is a scheduler candidate: `on` (consume and stand for leader),
    /// `off` (consume only), `only` (stand for leader, consume nothing).
    #[arg(long, env = "MAILFLEET_SCHEDULER", value_enum, default_value_t = SchedulerRole::On)]
    pub scheduler: SchedulerRole,
    /// The scheduler lease's TTL. A killed leader is replaced about this long after its last
    /// renewal (at once after a clean shutdown, which releases the lease).
    #[arg(long, env = "MAILFLEET_LEASE_TTL_MS", default_value_t = 10_000)]
    pub lease_ttl_ms: u64,
    /// A tick at most this late when a leader first sees it fires whatever the schedule's
    /// catch-up policy; later ticks count as missed (`skip` or `once` applies).
    #[arg(long, env = "MAILFLEET_SCHEDULER_GRACE_SECS", default_value_t = 60)]
    pub scheduler_grace_secs: u64,
    /// How often the scheduler leader trims the lane streams below what every consumer group
    /// has acked, in seconds; 0 turns it off.
    #[arg(long, env = "MAILFLEET_TRIM_INTERVAL_SECS", default_value_t = 60)]
    pub trim_interval_secs: u64,
    /// Audience members per fan-out transaction.
    #[arg(long, env = "MAILFLEET_FANOUT_BATCH", default_value_t = 1000)]
    pub fanout_batch: usize,
    /// Public base URL of the API server; with --unsubscribe-secret, bulk email carries a signed
    /// one-click List-Unsubscribe link to `<url>/v1/unsubscribe/<token>`.
    #[arg(long, env = "MAILFLEET_UNSUBSCRIBE_URL")]
    pub unsubscribe_url: Option<String>,
    /// Secret that signs unsubscribe links (the API server needs the same one).
    #[arg(long, env = "MAILFLEET_UNSUBSCRIBE_SECRET", hide_env_values = true)]
    pub unsubscribe_secret: Option<Secret>,
    /// How long an unsubscribe link stays valid, in days.
    #[arg(long, env = "MAILFLEET_UNSUBSCRIBE_TTL_DAYS", default_value_t = 90)]
    pub unsubscribe_ttl_days: i64,
    /// Postgres connections per worker.
    #[arg(long, env = "MAILFLEET_PG_POOL", default_value_t = 8)]
    pub pg_pool: u32,
    /// Template render fuel (bounds loops and work per render).
    #[arg(long, env = "MAILFLEET_RENDER_FUEL", default_value_t = 200_000)]
    pub render_fuel: u64,
    /// Largest rendered body, in bytes.
    #[arg(long, env = "MAILFLEET_RENDER_MAX_BYTES", default_value_t = 1 << 20)]
    pub render_max_bytes: usize,
    #[command(flatten)]
    pub provider: DefaultProvider,
}

/// The provider used when the config file names none: SendGrid at this URL.
/// A worker's part in scheduling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchedulerRole {
    On,
    Off,
    Only,
}

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
    fn default_base_url(self, region: Option<&str>) -> Option<String> {
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
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProvider {
    name: String,
    kind: ProviderKind,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    api_key: Option<Secret>,
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default)]
    api_key_file: Option<PathBuf>,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    key_id_env: Option<String>,
    #[serde(default)]
    session_token_env: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    message_stream: Option<String>,
    #[serde(default)]
    configuration_set: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    tls: SmtpTls,
    #[serde(default)]
    pool_size: Option<u32>,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default)]
    concurrency: Option<usize>,
    #[serde(default)]
    rate_per_sec: Option<u32>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    window_ms: Option<u64>,
    #[serde(default)]
    tenant_limit: Option<u32>,
    #[serde(default)]
    limit_margin_ms: Option<u64>,
    #[serde(default)]
    limit_spread_ms: Option<u64>,
    #[serde(default)]
    limit_cold_margin_ms: Option<u64>,
}

fn default_timeout() -> u64 {
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
    pub fn get(&self, lane: crate::Lane) -> Option<&[String]> {
        match lane {
            crate::Lane::Tx => self.tx.as_deref(),
            crate::Lane::Bulk => self.bulk.as_deref(),
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    providers: Vec<FileProvider>,
    #[serde(default)]
    routes: Option<Routes>,
    #[serde(default)]
    breaker: Option<BreakerConfig>,
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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("provider {name:?}: {message}")]
    Provider { name: String, message: String },
    #[error("routes: {0}")]
    Routes(String),
}

/// Read a secret given inline, by environment variable or by file (at most one of them).
fn secret(
    inline: Option<Secret>,
    env: Option<&str>,
    file: Option<&Path>,
    what: &str,
) -> Result<Option<Secret>, String> {
    match (inline, env, file) {
        (Some(k), None, None) => Ok(Some(k)),
        (None, Some(var), None) => std::env::var(var)
            .map(|v| Some(Secret::new(v)))
            .map_err(|_| format!("environment variable {var} is not set")),
        (None, None, Some(path)) => std::fs::read_to_string(path)
            .map(|v| Some(Secret::new(v.trim())))
            .map_err(|e| format!("cannot read {}: {e}", path.display())),
        (None, None, None) => Ok(None),
        _ => Err(format!(
            "set at most one of {what}, {what}_env, {what}_file"
        )),
    }
}

fn provider(p: FileProvider) -> Result<ProviderConfig, ConfigError> {
    let err = |message: String| ConfigError::Provider {
        name: p.name.clone(),
        message,
    };
    let api_key = secret(
        p.api_key.clone(),
        p.api_key_env.as_deref(),
        p.api_key_file.as_deref(),
        "api_key",
    )
    .map_err(&err)?
    .unwrap_or_default();
    let key_id = match (&p.key_id, &p.key_id_env) {
        (Some(k), None) => Some(k.clone()),
        (None, Some(var)) => Some(
            std::env::var(var)
                .map_err(|_| err(format!("environment variable {var} is not set")))?,
        ),
        (None, None) => None,
        _ => return Err(err("set at most one of key_id, key_id_env".into())),
    };
    let session_token = match &p.session_token_env {
        Some(var) => {
            Some(Secret::new(std::env::var(var).map_err(|_| {
                err(format!("environment variable {var} is not set"))
            })?))
        }
        None => None,
    };
    let base_url = match p
        .base_url
        .clone()
        .or_else(|| p.kind.default_base_url(p.region.as_deref()))
    {
        Some(u) => u,
        None if p.kind == ProviderKind::Smtp => String::new(),
        None => return Err(err("base_url or region is required".into())),
    };
    match p.kind {
        ProviderKind::Ses if p.region.is_none() => {
            return Err(err(
                "region is required (it is part of the SigV4 signature)".into(),
            ));
        }
        ProviderKind::Ses if key_id.is_none() || api_key.is_empty() => {
            return Err(err(
                "key_id and api_key (the secret access key) are required".into(),
            ));
        }
        ProviderKind::Mailgun if p.domain.is_none() => {
            return Err(err("domain is required".into()));
        }
        ProviderKind::Mailgun if !matches!(p.region.as_deref(), None | Some("us" | "eu")) => {
            return Err(err("region must be \"us\" or \"eu\"".into()));
        }
        ProviderKind::Smtp if p.host.is_none() => return Err(err("host is required".into())),
        _ => {}
    }
    let limit = match (p.limit, p.window_ms) {
        (Some(0), _) => return Err(err("limit must be at least 1".into())),
        (Some(limit), window) => {
            let window_ms = window.unwrap_or(1000).max(1);
            // 3% of the window by default: the dispatch jitter between a permit and the
            // request reaching the provider, measured in docs/rate-limiting.md.
            let margin_ms = p.limit_margin_ms.unwrap_or(window_ms * 3 / 100);
            Some(Limit {
                limit,
                window_ms,
                tenant_limit: p.tenant_limit,
                margin_ms,
                // A tenth of the window by default, never less than the margin.
                cold_margin_ms: p
                    .limit_cold_margin_ms
                    .unwrap_or(window_ms / 10)
                    .max(margin_ms),
                // A tenth of the window: permits flow evenly instead of in a burst per window.
                spread_ms: p.limit_spread_ms.unwrap_or(window_ms / 10).min(window_ms),
            })
        }
        (None, None) if p.tenant_limit.is_none() => None,
        _ => return Err(err("window_ms and tenant_limit need limit".into())),
    };
    Ok(ProviderConfig {
        name: p.name,
        kind: p.kind,
        base_url,
        api_key,
        key_id,
        session_token,
        region: p.region,
        domain: p.domain,
        message_stream: p.message_stream,
        configuration_set: p.configuration_set,
        host: p.host,
        port: p.port,
        tls: p.tls,
        pool_size: p.pool_size.unwrap_or(8).max(1),
        timeout_ms: p.timeout_ms,
        concurrency: p.concurrency.filter(|&c| c > 0),
        rate_per_sec: p.rate_per_sec,
        limit,
    })
}

/// Providers, routes and breaker settings from the config file if it names any providers,
/// else the default SendGrid provider.
pub fn send_config(
    file: Option<&Path>,
    default: &DefaultProvider,
) -> Result<SendConfig, ConfigError> {
    let parsed = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            toml::from_str::<FileConfig>(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?
        }
        None => FileConfig::default(),
    };
    let providers = if parsed.providers.is_empty() {
        let mut p = ProviderConfig::new("sendgrid", ProviderKind::Sendgrid, &default.sendgrid_url);
        p.api_key = default.sendgrid_api_key.clone();
        p.timeout_ms = default.provider_timeout_ms;
        vec![p]
    } else {
        parsed
            .providers
            .into_iter()
            .map(provider)
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut names = std::collections::HashSet::new();
    for p in &providers {
        if !names.insert(p.name.as_str()) {
            return Err(ConfigError::Provider {
                name: p.name.clone(),
                message: "named twice".into(),
            });
        }
    }
    let routes = parsed.routes.unwrap_or_default();
    let all_routes = std::iter::once(("(default)", &routes.default))
        .chain(routes.tenants.iter().map(|(t, r)| (t.as_str(), r)));
    for (who, r) in all_routes {
        for lane in crate::Lane::ALL {
            if let Some(list) = r.get(lane) {
                if list.is_empty() {
                    return Err(ConfigError::Routes(format!(
                        "{who} {lane}: the list is empty"
                    )));
                }
                if let Some(n) = list.iter().find(|n| !names.contains(n.as_str())) {
                    return Err(ConfigError::Routes(format!(
                        "{who} {lane}: no provider is named {n:?}"
                    )));
                }
            }
        }
    }
    let breaker = parsed.breaker.unwrap_or_default();
    if !(0.0..=1.0).contains(&breaker.error_rate) || breaker.consecutive_failures == 0 {
        return Err(ConfigError::Routes(
            "breaker: error_rate must be within 0..1 and consecutive_failures at least 1".into(),
        ));
    }
    Ok(SendConfig {
        providers,
        routes,
        breaker,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        let mut p = ProviderConfig::new("x", ProviderKind::Sendgrid, "http://x");
        p.api_key = s;
        p.session_token = Some(Secret::new("hunter3"));
        let shown = format!("{p:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("hunter3"));
    }

    #[test]
    fn reads_providers_from_toml_with_keys_from_env() {
        let dir = std::env::temp_dir().join(format!("mf-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        // SAFETY: test-only; no other thread reads this variable.
        unsafe { std::env::set_var("MF_TEST_SG_KEY", "k1") };
        std::fs::write(&path, "[[providers]]\nname = \"sg\"\nkind = \"sendgrid\"\nbase_url = \"http://h\"\napi_key_env = \"MF_TEST_SG_KEY\"\n").unwrap();
        let d = DefaultProvider {
            sendgrid_url: "u".into(),
            sendgrid_api_key: Secret::default(),
            provider_timeout_ms: 5,
        };
        let ps = send_config(Some(&path), &d).unwrap().providers;
        assert_eq!(ps.len(), 1);
        assert_eq!(ps[0].api_key.expose(), "k1");
        assert_eq!(ps[0].timeout_ms, 10_000);
        std::fs::write(
            &path,
            "[[providers]]\nname = \"sg\"\nkind = \"carrier-pigeon\"\nbase_url = \"x\"\n",
        )
        .unwrap();
        assert!(matches!(
            send_config(Some(&path), &d),
            Err(ConfigError::Parse { .. })
        ));
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    fn parse(text: &str) -> Result<SendConfig, ConfigError> {
        let dir = std::env::temp_dir().join(format!("mf-cfg2-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("c.toml");
        std::fs::write(&path, text).expect("write");
        let d = DefaultProvider {
            sendgrid_url: "u".into(),
            sendgrid_api_key: Secret::default(),
            provider_timeout_ms: 5,
        };
        let r = send_config(Some(&path), &d);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn the_example_file_parses_into_five_providers_with_routes() {
        // SAFETY: test-only; these variables are read by this test alone.
        unsafe {
            for v in [
                "SENDGRID_API_KEY",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "POSTMARK_SERVER_TOKEN",
                "SMTP_PASSWORD",
            ] {
                std::env::set_var(v, "x");
            }
        }
        let text = include_str!("../mailfleet.example.toml")
            .replace("api_key_file = \"/run/secrets/mailgun\"", "api_key = \"k\"");
        let c = parse(&text).expect("the example is valid");
        let kinds: Vec<ProviderKind> = c.providers.iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            [
                ProviderKind::Sendgrid,
                ProviderKind::Ses,
                ProviderKind::Mailgun,
                ProviderKind::Postmark,
                ProviderKind::Smtp
            ]
        );
        assert_eq!(
            c.providers[1].base_url,
            "https://email.eu-west-1.amazonaws.com"
        );
        assert_eq!(c.providers[2].base_url, "https://api.eu.mailgun.net");
        assert_eq!(
            c.providers[0].limit,
            Some(Limit {
                limit: 1000,
                window_ms: 1000,
                tenant_limit: None,
                margin_ms: 30,
                cold_margin_ms: 100,
                spread_ms: 100,
            })
        );
        assert_eq!(c.routes.default.tx.as_deref().map(<[_]>::len), Some(3));
        assert_eq!(
            c.routes.tenants["acme"].tx.as_deref(),
            Some(&["relay".to_owned(), "postmark".to_owned()][..])
        );
        assert_eq!(c.breaker, BreakerConfig::default());
    }

    #[test]
    fn refuses_unknown_route_names_and_incomplete_providers() {
        let sg = "[[providers]]\nname = \"a\"\nkind = \"sendgrid\"\n";
        assert!(matches!(
            parse(&format!("{sg}[routes]\ntx = [\"b\"]\n")),
            Err(ConfigError::Routes(m)) if m.contains("\"b\"")
        ));
        assert!(matches!(
            parse("[[providers]]\nname = \"s\"\nkind = \"ses\"\nregion = \"us-east-1\"\n"),
            Err(ConfigError::Provider { message, .. }) if message.contains("key_id")
        ));
        assert!(matches!(
            parse("[[providers]]\nname = \"m\"\nkind = \"mailgun\"\n"),
            Err(ConfigError::Provider { message, .. }) if message.contains("domain")
        ));
        assert!(matches!(
            parse(&format!("{sg}window_ms = 10\n")),
            Err(ConfigError::Provider { message, .. }) if message.contains("need limit")
        ));
        assert!(matches!(
            parse(&format!("{sg}{sg}")),
            Err(ConfigError::Provider { message, .. }) if message.contains("twice")
        ));
    }
}
