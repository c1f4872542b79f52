//! `mailfleet bench`'s settings: the pipeline scenario (the default) and `bench fanout`.

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

/// `mailfleet bench [pipeline options]` or `mailfleet bench fanout ...`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub cmd: Option<BenchCmd>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Time one tick's audience fan-out: a scratch database (created next to the configured
    /// one, dropped afterwards) and a scratch Redis prefix; prints members/s.
    Fanout {
        #[arg(long, default_value_t = 100_000)]
        members: i64,
        /// Members per fan-out transaction.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Skewed mode: this many schedules of one member each, all due at the same instant
        /// (`--catch-up skip`, `stale_after` 60 s, so a tick handled late would show as
        /// skipped); `--members` is then ignored. Prints the tick lag of the last one.
        #[arg(long, default_value_t = 0)]
        schedules: i64,
        /// Skewed mode: run the scheduler in this many `mailfleet worker` processes (which
        /// also send the emails, to a mock provider) instead of in the bench's own process.
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// Skewed mode with workers: SIGKILL the leader this many seconds after the schedules
        /// are due (0: never), and start a replacement.
        #[arg(long, default_value_t = 0)]
        kill_leader_after_secs: u64,
        /// Keep the scratch database and Redis keys for inspection.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// `--emails` over the lane mix, at `--rate` or as fast as possible.
    Throughput,
    /// A bulk backlog of `--emails` (enqueued before the workers start) draining while tx
    /// email arrives at `--tx-rate`; rates are timed from the first claim.
    Priority,
    /// Tenant `big` enqueues `--emails` bulk; `--tenants-after-secs` later `--tenants` other
    /// tenants enqueue `--tenant-emails` each: how soon each small tenant finishes against its
    /// fair share of the limit, while `big` keeps sending.
    Fairness,
    /// Tenants `gold` (weight `--gold-weight`) and `free` (weight 1) enqueue `--emails` / 2
    /// bulk each: the share each gets while both have a backlog.
    Weights,
    /// `--tenants` tenants with `--tenant-emails` each plus tenant `big` with `--emails`, all
    /// at once: Redis commands per email and Redis CPU as the tenant count grows.
    Tenants,
    /// `--emails` at the maximum rate once per enqueue durability (ledger, replicated, redis),
    /// on a Redis master with one replica started for the run: emails/s end to end and
    /// enqueued/s, Redis commands and Postgres transactions per email, for each level.
    Durability,
}

#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// Emails to send (the bulk backlog, for the priority scenario).
    #[arg(long, default_value_t = 200_000)]
    pub emails: u64,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Concurrent sends per worker (MAILFLEET_SEND_CONCURRENCY; default: the worker's).
    #[arg(long)]
    pub tasks: Option<usize>,
    /// Offered rate in emails/s (open loop); 0 enqueues everything at once (maximum rate).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Size of each email's text body, in bytes.
    #[arg(long, default_value_t = 512)]
    pub payload_bytes: usize,
    /// Share of transactional email in the throughput scenario (the rest is bulk).
    #[arg(long, default_value_t = 0.2)]
    pub tx_share: f64,
    /// The mock provider's latency per request, in ms (plus up to as much again of jitter).
    #[arg(long, default_value_t = 0)]
    pub mock_latency_ms: u64,
    /// With it, the mock's latency is log-normal: `--mock-latency-ms` is the median and this
    /// the p99 (no jitter); 0: fixed latency plus jitter.
    #[arg(long, default_value_t = 0)]
    pub mock_latency_p99_ms: u64,
    #[arg(long, value_enum, default_value_t = Scenario::Throughput)]
    pub scenario: Scenario,
    /// Transactional emails per second during the priority scenario.
    #[arg(long, default_value_t = 200)]
    pub tx_rate: u64,
    /// How long tx email arrives in the priority scenario, in seconds (0: until the bulk
    /// backlog has drained).
    #[arg(long, default_value_t = 0)]
    pub tx_secs: u64,
    /// A provider limit in emails per 1 s window (0: none): the mock enforces it (answering
    /// 429 past it) and the workers are configured with it as the provider's cluster limit.
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    /// Small tenants in the fairness and tenants scenarios.
    #[arg(long, default_value_t = 50)]
    pub tenants: u64,
    /// Bulk emails per small tenant (fairness and tenants scenarios).
    #[arg(long, default_value_t = 1000)]
    pub tenant_emails: u64,
    /// How long after tenant `big` the small tenants enqueue, in seconds (fairness).
    #[arg(long, default_value_t = 5)]
    pub tenants_after_secs: u64,
    /// Tenant `gold`'s weight in the weights scenario (`free` weighs 1).
    #[arg(long, default_value_t = 3)]
    pub gold_weight: u32,
    /// SIGKILL worker 0 this many seconds into the run and start a replacement (0: never);
    /// set MAILFLEET_VISIBILITY_TIMEOUT_MS short so its entries are reclaimed within the run.
    #[arg(long, default_value_t = 0)]
    pub kill_after_secs: u64,
    /// Give up after this long.
    #[arg(long, default_value_t = 900)]
    pub timeout_secs: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Keep the scratch database and Redis keys.
    #[arg(long)]
    pub keep: bool,
    /// Run against a Redis Cluster of 6 local redis-server processes started for the bench
    /// (3 masters with a replica each; MAILFLEET_PARTITIONS, default 12 here), once per worker
    /// count in --cluster-workers.
    #[arg(long)]
    pub cluster: bool,
    /// Worker process counts measured with --cluster.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub cluster_workers: Vec<usize>,
}
