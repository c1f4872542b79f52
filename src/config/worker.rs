//! The worker's settings (`mailfleet worker`).

use super::{DefaultProvider, Secret};
use clap::Args;

/// The settings `mailfleet worker --help` lists (clap's ids): what an operator sets on day one.
/// The rest are tuning, listed by `--help-all` and docs/configuration.md.
pub const DAY_ONE: &[&str] = &[
    "consumer",
    "max_in_flight",
    "send_concurrency",
    "max_attempts",
    "listen",
    "drain_timeout_secs",
    "ambiguous",
    "scheduler",
    "tenant_weights",
    "unsubscribe_url",
    "unsubscribe_secret",
    "sendgrid_url",
    "sendgrid_api_key",
    "provider_timeout_ms",
];

/// The worker's settings (`mailfleet worker`).
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Consumer name in the group; must be unique per live worker (default: host-pid).
    #[arg(long, env = "MAILFLEET_CONSUMER")]
    pub consumer: Option<String>,
    /// Entries per XREADGROUP.
    #[arg(long, env = "MAILFLEET_BATCH_SIZE", default_value_t = 256)]
    pub batch_size: usize,
    /// Most bulk entries read but not yet acked, per worker (back-pressure): the ceiling of
    /// bulk's adaptive room.
    #[arg(long, env = "MAILFLEET_MAX_IN_FLIGHT", default_value_t = 2048)]
    pub max_in_flight: usize,
    /// Hold bulk's in-flight room at `--max-in-flight` instead of adapting it. By default it is
    /// at that ceiling while no tx arrives and, while tx does, moves between a batch per
    /// partition and the ceiling: as deep as a slow provider needs, no deeper than a saturated
    /// machine can use (queues there delay tx emails).
    #[arg(long, env = "MAILFLEET_FIXED_IN_FLIGHT", value_parser = clap::builder::BoolishValueParser::new())]
    pub fixed_in_flight: bool,
    /// Most tx entries read but not yet acked, per worker: the tx lane's own pool, which bulk
    /// never uses.
    #[arg(long, env = "MAILFLEET_TX_IN_FLIGHT", default_value_t = 512)]
    pub tx_in_flight: usize,
    /// Most provider requests in flight at once, per worker.
    #[arg(long, env = "MAILFLEET_SEND_CONCURRENCY", default_value_t = 512)]
    pub send_concurrency: usize,
    /// Most tx provider requests in flight at once, per worker: the tx lane's own slots.
    #[arg(long, env = "MAILFLEET_TX_SEND_CONCURRENCY", default_value_t = 128)]
    pub tx_send_concurrency: usize,
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
    /// The longest a provider's `Retry-After` (or `X-RateLimit-Reset`) is honoured, in
    /// seconds: a longer one is cut to this, so one answer cannot park a job for years or
    /// block a provider cluster-wide for longer.
    #[arg(long, env = "MAILFLEET_MAX_RETRY_AFTER_SECS", default_value_t = 3600)]
    pub max_retry_after_secs: u64,
    /// The longest wait for a rate-limit permit that Redis may ask of a send holding a send
    /// slot, in ms. A provider whose next permit is further off (a back-off after a 429) is
    /// skipped like an open breaker: the send fails over or is put back without using an
    /// attempt, so a blocked provider never holds the slots other providers' sends need. Time
    /// queued behind this worker's other sends to the provider does not count.
    #[arg(long, env = "MAILFLEET_PERMIT_WAIT_MAX_MS", default_value_t = 10_000)]
    pub permit_wait_max_ms: u64,
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
    #[arg(long, env = "MAILFLEET_AMBIGUOUS", value_enum, default_value_t = AmbiguousPolicy::Resend)]
    pub ambiguous: AmbiguousPolicy,
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
    /// Postgres connections per worker for tx jobs alone (claims, suppression look-ups,
    /// records), beside MAILFLEET_PG_POOL: a tx statement never waits for a connection behind
    /// bulk statements.
    #[arg(long, env = "MAILFLEET_TX_PG_POOL", default_value_t = 4)]
    pub tx_pg_pool: u32,
    /// Tenants' weights in the fair bulk read, `tenant=weight` pairs separated by commas (for
    /// example `acme=3,beta=2`); any other tenant weighs 1. Every worker should carry the same
    /// list: each one writes it to Redis when it starts (docs/fairness.md).
    #[arg(long, env = "MAILFLEET_TENANT_WEIGHTS", default_value = "", value_parser = parse_weights)]
    pub tenant_weights: TenantWeights,
    /// Template render fuel (bounds loops and work per render).
    #[arg(long, env = "MAILFLEET_RENDER_FUEL", default_value_t = 200_000)]
    pub render_fuel: u64,
    /// Largest rendered body, in bytes.
    #[arg(long, env = "MAILFLEET_RENDER_MAX_BYTES", default_value_t = 1 << 20)]
    pub render_max_bytes: usize,
    #[command(flatten)]
    pub provider: DefaultProvider,
}

/// A worker's part in scheduling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchedulerRole {
    On,
    Off,
    Only,
}

/// What a worker does with a send whose outcome cannot be known (a timeout or reset after the
/// request left, or a 5xx that may follow acceptance): the provider may or may not have taken
/// the email.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AmbiguousPolicy {
    /// Send again later (at-least-once). The attempt is logged `unknown`, and a duplicate it
    /// causes is counted by `mailfleet_ambiguous_total`.
    #[default]
    Resend,
    /// Record the job `unknown` and never send it again automatically (at-most-once for
    /// ambiguous sends).
    Hold,
}

/// `tenant=weight` pairs (see `WorkerArgs::tenant_weights`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantWeights(pub Vec<(String, u32)>);

/// The most a tenant may weigh: a visit of the fair read takes quantum x weight entries, so
/// weights stay in a range where one visit is still a fraction of a batch's worth of work.
pub const MAX_TENANT_WEIGHT: u32 = 100;

pub fn parse_weights(s: &str) -> Result<TenantWeights, String> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (t, w) = pair
            .rsplit_once('=')
            .ok_or_else(|| format!("{pair:?} is not tenant=weight"))?;
        let t = t.trim();
        if let Err(e) = crate::domain::check_tenant(t) {
            return Err(format!("{pair:?}: the tenant name {e}"));
        }
        let w: u32 = w
            .trim()
            .parse()
            .ok()
            .filter(|w| (1..=MAX_TENANT_WEIGHT).contains(w))
            .ok_or_else(|| {
                format!("{pair:?}: the weight must be a whole number from 1 to {MAX_TENANT_WEIGHT}")
            })?;
        if out.iter().any(|(x, _)| x == t) {
            return Err(format!("tenant {t:?} is weighted twice"));
        }
        out.push((t.to_owned(), w));
    }
    Ok(TenantWeights(out))
}

#[cfg(test)]
mod weight_tests {
    use super::*;

    #[test]
    fn weights_parse_and_bad_ones_say_why() {
        assert_eq!(parse_weights("").unwrap(), TenantWeights::default());
        assert_eq!(
            parse_weights(" acme=3, beta = 2 ").unwrap().0,
            vec![("acme".into(), 3), ("beta".into(), 2)]
        );
        assert!(parse_weights("acme").unwrap_err().contains("tenant=weight"));
        assert!(parse_weights("acme=0").unwrap_err().contains("1 to 100"));
        assert!(parse_weights("acme=x").unwrap_err().contains("1 to 100"));
        assert!(parse_weights("=3").unwrap_err().contains("empty"));
        assert!(
            parse_weights("a|b=3")
                .unwrap_err()
                .contains("letters, digits")
        );
        assert!(parse_weights("a=1,a=2").unwrap_err().contains("twice"));
    }
}
