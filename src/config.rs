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
    /// Audience members per fan-out transaction.
    #[arg(long, env = "MAILFLEET_FANOUT_BATCH", default_value_t = 1000)]
    pub fanout_batch: usize,
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
}

/// One provider, from the TOML file or the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub api_key: Secret,
    pub timeout_ms: u64,
    /// Per-worker cap on requests per second to this provider (smoothing; None = no cap).
    pub rate_per_sec: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProvider {
    name: String,
    kind: ProviderKind,
    base_url: String,
    #[serde(default)]
    api_key: Option<Secret>,
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default)]
    api_key_file: Option<PathBuf>,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default)]
    rate_per_sec: Option<u32>,
}

fn default_timeout() -> u64 {
    10_000
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    providers: Vec<FileProvider>,
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
}

/// Providers from the config file if it names any, else the default SendGrid provider.
pub fn providers(
    file: Option<&Path>,
    default: &DefaultProvider,
) -> Result<Vec<ProviderConfig>, ConfigError> {
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
    if parsed.providers.is_empty() {
        return Ok(vec![ProviderConfig {
            name: "sendgrid".into(),
            kind: ProviderKind::Sendgrid,
            base_url: default.sendgrid_url.clone(),
            api_key: default.sendgrid_api_key.clone(),
            timeout_ms: default.provider_timeout_ms,
            rate_per_sec: None,
        }]);
    }
    parsed
        .providers
        .into_iter()
        .map(|p| {
            let err = |message: String| ConfigError::Provider {
                name: p.name.clone(),
                message,
            };
            let api_key = match (&p.api_key, &p.api_key_env, &p.api_key_file) {
                (Some(k), None, None) => k.clone(),
                (None, Some(var), None) => Secret::new(
                    std::env::var(var)
                        .map_err(|_| err(format!("environment variable {var} is not set")))?,
                ),
                (None, None, Some(path)) => Secret::new(
                    std::fs::read_to_string(path)
                        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?
                        .trim()
                        .to_owned(),
                ),
                (None, None, None) => Secret::default(),
                _ => {
                    return Err(err(
                        "set at most one of api_key, api_key_env, api_key_file".into()
                    ));
                }
            };
            Ok(ProviderConfig {
                name: p.name,
                kind: p.kind,
                base_url: p.base_url,
                api_key,
                timeout_ms: p.timeout_ms,
                rate_per_sec: p.rate_per_sec,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        let p = ProviderConfig {
            name: "x".into(),
            kind: ProviderKind::Sendgrid,
            base_url: "http://x".into(),
            api_key: s,
            timeout_ms: 1,
            rate_per_sec: None,
        };
        assert!(!format!("{p:?}").contains("hunter2"));
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
        let ps = providers(Some(&path), &d).unwrap();
        assert_eq!(ps.len(), 1);
        assert_eq!(ps[0].api_key.expose(), "k1");
        assert_eq!(ps[0].timeout_ms, 10_000);
        std::fs::write(
            &path,
            "[[providers]]\nname = \"sg\"\nkind = \"carrier-pigeon\"\nbase_url = \"x\"\n",
        )
        .unwrap();
        assert!(matches!(
            providers(Some(&path), &d),
            Err(ConfigError::Parse { .. })
        ));
    }
}
