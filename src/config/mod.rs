//! Every setting in one place: its flag, its `MAILFLEET_*` environment variable, its default
//! and its documentation, so `mailfleet --help` and `mailfleet <cmd> --help` are the reference.
//! Providers (and their credentials) may also come from a TOML file (`MAILFLEET_CONFIG`), see
//! docs/configuration.md and `mailfleet.example.toml`.
//!
//! Secrets live in [`Secret`], whose Debug prints `[redacted]`; URLs that may carry passwords
//! are declared with `hide_env_values` so `--help` never echoes them.
//!
//! One file per concern: this file the settings every subcommand shares ([`Global`]);
//! [`worker`] the worker's, [`api`] the HTTP API's, [`send`] `mailfleet send`'s, [`mock`] the
//! mock provider's; [`providers`] the provider, route and breaker types; [`file`] the TOML
//! file they are read from. Nothing here imports from the modules that use the settings.

mod api;
mod bench;
mod file;
mod mock;
mod providers;
mod send;
mod worker;

pub use crate::domain::Secret;
pub use api::ApiArgs;
pub use bench::{BenchArgs, BenchCmd, PipelineArgs, Scenario};
pub use file::{ConfigError, send_config};
pub use mock::MockArgs;
pub use providers::*;
pub use send::{SendArgs, parse_time};
pub use worker::{AmbiguousPolicy, DAY_ONE as WORKER_DAY_ONE, SchedulerRole, WorkerArgs};

use clap::Args;
use std::path::PathBuf;

/// Settings every subcommand shares (listed under their own heading in every `--help`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
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
    #[arg(
        long,
        global = true,
        env = "MAILFLEET_REDIS_CLUSTER",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
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
    /// When an enqueue counts as done (every producer: `mailfleet send`, the API, the library):
    /// `ledger` (also write each job's `queued` row to Postgres, so the reconciler sends
    /// anything Redis loses), `replicated` (also wait until the partition's master has
    /// passed the write to its replicas) or `redis` (the write reached the Redis master).
    #[arg(
        long,
        global = true,
        env = "MAILFLEET_DURABILITY",
        value_enum,
        default_value_t = Durability::Ledger
    )]
    pub durability: Durability,
    /// With `--durability replicated`: how many replicas must confirm each enqueue.
    #[arg(
        long,
        global = true,
        env = "MAILFLEET_DURABILITY_REPLICAS",
        default_value_t = 1
    )]
    pub durability_replicas: u32,
    /// With `--durability replicated`: how long an enqueue waits for its replicas before it is
    /// refused (and taken back), in ms.
    #[arg(
        long,
        global = true,
        env = "MAILFLEET_DURABILITY_WAIT_MS",
        default_value_t = 1000
    )]
    pub durability_wait_ms: u64,
}

/// What an acknowledged enqueue survives (docs/durability.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Redis and Postgres: the job's `queued` row is written in the same call, so a job Redis
    /// loses is re-enqueued by the reconciler. Survives any loss of Redis data.
    Ledger,
    /// Redis with `WAIT`: the master passed the write to its replicas before the answer.
    /// Survives the loss of the master (a failover), not of every copy.
    Replicated,
    /// Redis only: the master has the write. Loses what its persistence and replication had
    /// not taken yet when it fails.
    Redis,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Ledger => "ledger",
            Durability::Replicated => "replicated",
            Durability::Redis => "redis",
        }
    }
}

impl Global {
    /// The Redis URL as the pool reads it: with `--redis-cluster`, a single URL becomes a
    /// one-seed list (see `stream::cluster_nodes`).
    /// The Redis target for messages, without credentials ([`redact_redis`]).
    pub fn redis_shown(&self) -> String {
        redact_redis(&self.redis_target())
    }

    pub fn redis_target(&self) -> String {
        let url = self.redis_url.expose();
        if self.redis_cluster && !url.contains(',') {
            format!("{url},")
        } else {
            url.to_owned()
        }
    }
}

/// A Redis URL or seed list for messages: every user and password replaced by `***`.
pub fn redact_redis(target: &str) -> String {
    target
        .split(',')
        .map(|part| match (part.find("://"), part.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}***{}", &part[..s + 3], &part[at..]),
            _ => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod redact_tests {
    #[test]
    fn redis_credentials_never_show() {
        assert_eq!(
            super::redact_redis("redis://:pw@h:6379/0"),
            "redis://***@h:6379/0"
        );
        assert_eq!(
            super::redact_redis("rediss://u:p@a:1,redis://b:2"),
            "rediss://***@a:1,redis://b:2"
        );
        assert_eq!(super::redact_redis("redis://h"), "redis://h");
    }
}
