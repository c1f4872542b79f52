//! What `mailfleet bench` reads from Postgres: progress, latency percentiles per lane, and the
//! transaction counter of a database.

use super::{StoreError, q};
use crate::domain::Status;
use sqlx::PgPool;

/// Jobs recorded in a final status, and of those `sent`.
pub async fn progress(pool: &PgPool) -> Result<(i64, i64), StoreError> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = ANY($1)), count(*) FILTER (WHERE status = $2)
           FROM emails",
    )
    .bind(&Status::FINAL[..])
    .bind(Status::Sent)
    .fetch_one(pool)
    .await
    .map_err(q("counting recorded jobs"))
}

/// Enqueue → recorded latency of the sent jobs of a lane (`None`: every lane), in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub count: i64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Unix ms of the first enqueue, the first claim and the last record.
    pub first_enqueued_ms: f64,
    pub first_claimed_ms: f64,
    pub last_recorded_ms: f64,
}

/// count, [p50, p95, p99], max, first enqueue, first claim, last record.
type LatencyRow = (
    i64,
    Option<Vec<f64>>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
);

pub async fn latency(pool: &PgPool, lane: Option<&str>) -> Result<Latency, StoreError> {
    let row: LatencyRow = sqlx::query_as(
        "WITH l AS (
            SELECT extract(epoch FROM recorded_at - enqueued_at) * 1000 AS ms, enqueued_at,
                   claimed_at, recorded_at
              FROM emails WHERE status = $2 AND ($1::text IS NULL OR lane = $1))
         SELECT count(*),
                percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ms)::float8[],
                max(ms)::float8,
                (extract(epoch FROM min(enqueued_at)) * 1000)::float8,
                (extract(epoch FROM min(claimed_at)) * 1000)::float8,
                (extract(epoch FROM max(recorded_at)) * 1000)::float8
           FROM l",
    )
    .bind(lane)
    .bind(Status::Sent)
    .fetch_one(pool)
    .await
    .map_err(q("measuring latency"))?;
    let p = row.1.unwrap_or_default();
    let at = |i: usize| p.get(i).copied().unwrap_or(0.0);
    Ok(Latency {
        count: row.0,
        p50_ms: at(0),
        p95_ms: at(1),
        p99_ms: at(2),
        max_ms: row.2.unwrap_or(0.0),
        first_enqueued_ms: row.3.unwrap_or(0.0),
        first_claimed_ms: row.4.unwrap_or(0.0),
        last_recorded_ms: row.5.unwrap_or(0.0),
    })
}

/// One tenant's sent jobs: how many, its first enqueue and last record (unix ms).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSpan {
    pub tenant: String,
    pub sent: i64,
    pub first_enqueued_ms: f64,
    pub last_recorded_ms: f64,
}

/// Every tenant's [`TenantSpan`] (jobs without a tenant left out).
pub async fn tenant_spans(pool: &PgPool) -> Result<Vec<TenantSpan>, StoreError> {
    let rows: Vec<(String, i64, f64, f64)> = sqlx::query_as(
        "SELECT tenant, count(*),
                (extract(epoch FROM min(enqueued_at)) * 1000)::float8,
                (extract(epoch FROM max(recorded_at)) * 1000)::float8
           FROM emails WHERE status = $1 AND tenant IS NOT NULL GROUP BY tenant",
    )
    .bind(Status::Sent)
    .fetch_all(pool)
    .await
    .map_err(q("measuring tenants' spans"))?;
    Ok(rows
        .into_iter()
        .map(|(tenant, sent, f, l)| TenantSpan {
            tenant,
            sent,
            first_enqueued_ms: f,
            last_recorded_ms: l,
        })
        .collect())
}

/// Sent jobs recorded in `[from_ms, to_ms]` (unix ms), per tenant (`''` for none).
pub async fn sent_between(
    pool: &PgPool,
    from_ms: f64,
    to_ms: f64,
) -> Result<Vec<(String, i64)>, StoreError> {
    sqlx::query_as(
        "SELECT coalesce(tenant, ''), count(*) FROM emails
          WHERE status = $1
            AND recorded_at >= to_timestamp($2 / 1000.0) AND recorded_at <= to_timestamp($3 / 1000.0)
          GROUP BY 1",
    )
    .bind(Status::Sent)
    .bind(from_ms)
    .bind(to_ms)
    .fetch_all(pool)
    .await
    .map_err(q("counting sends in a window"))
}

/// Attempts that ended without a known outcome (`unknown`: a worker stopped after claiming, a
/// timeout after the request left): the only events after which a duplicate is legitimate.
pub async fn ambiguous(pool: &PgPool) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT count(*) FROM email_attempts WHERE outcome = $1")
        .bind(Status::Unknown)
        .fetch_one(pool)
        .await
        .map_err(q("counting ambiguous attempts"))
}

/// Transactions committed and rolled back in database `db` so far (the statistics collector's
/// view: a backend reports its counts at most once a second and when it exits).
pub async fn xacts(pool: &PgPool, db: &str) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database WHERE datname = $1",
    )
    .bind(db)
    .fetch_optional(pool)
    .await
    .map_err(q("reading pg_stat_database"))
    .map(Option::unwrap_or_default)
}

/// `n` schedules, each with an audience of its own holding one member, all due at `at` (with
/// `cron`, an expression whose next tick is `at`), catch-up `skip` and `stale_after` 60 s: every
/// tenant's digest at 09:00, for `bench fanout --schedules` and the scheduler's scale tests.
pub async fn skewed_schedules(
    pool: &PgPool,
    n: i64,
    cron: &str,
    at: chrono::DateTime<chrono::Utc>,
    template: &str,
) -> Result<u64, StoreError> {
    let r = sqlx::query(
        "WITH a AS (
             INSERT INTO audiences (name) SELECT 'skew-' || g FROM generate_series(1, $1) g
             RETURNING id
         ), m AS (
             INSERT INTO audience_members (audience_id, email, vars)
             SELECT id, 'member' || id || '@example.com', jsonb_build_object('name', 'Member ' || id)
               FROM a
         )
         INSERT INTO schedules (name, cron, timezone, template, audience_id, from_addr, lane,
                                catch_up, stale_after_secs, next_tick)
         SELECT 'skew-' || id, $2, 'UTC', $4, id, 'bench@example.com', 'bulk', 'skip', 60, $3
           FROM a",
    )
    .bind(n)
    .bind(cron)
    .bind(at)
    .bind(template)
    .execute(pool)
    .await
    .map_err(q("creating skewed schedules"))?;
    Ok(r.rows_affected())
}

/// Ticks due by `at` not yet recorded, plus fan-outs not finished.
pub async fn schedule_work_left(
    pool: &PgPool,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM schedules WHERE enabled AND next_tick <= $1)
              + (SELECT count(*) FROM schedule_runs WHERE status = 'fanning_out')",
    )
    .bind(at)
    .fetch_one(pool)
    .await
    .map_err(q("counting scheduled work left"))
}

/// The runs of tick `at` in `bench fanout --schedules`: how many, how they ended, and how late
/// the last one fired and finished.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct TickOutcome {
    pub runs: i64,
    pub done: i64,
    pub skipped: i64,
    pub stale: i64,
    pub last_fired_ms: f64,
    pub last_done_ms: f64,
    pub emails: i64,
}

pub async fn tick_outcome(
    pool: &PgPool,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<TickOutcome, StoreError> {
    sqlx::query_as(
        "SELECT count(*) AS runs, count(*) FILTER (WHERE status = 'done') AS done,
                count(*) FILTER (WHERE status = 'skipped') AS skipped,
                count(*) FILTER (WHERE status = 'stale') AS stale,
                COALESCE(EXTRACT(EPOCH FROM max(fired_at - tick)) * 1000, 0)::float8
                    AS last_fired_ms,
                COALESCE(EXTRACT(EPOCH FROM max(finished_at - tick)) * 1000, 0)::float8
                    AS last_done_ms,
                (SELECT count(*) FROM emails) AS emails
           FROM schedule_runs WHERE tick = $1",
    )
    .bind(at)
    .fetch_one(pool)
    .await
    .map_err(q("reading a tick's runs"))
}
