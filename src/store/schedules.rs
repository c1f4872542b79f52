//! Recurring schedules and their runs (one row per handled tick).
//!
//! The leader's writes here ([`fire`], [`advance_run`], [`finish_run`]) take the caller's
//! connection: they run inside a fenced transaction (`lease::fenced`), never on their own.
//! [`fire`] records a tick's run and moves the schedule's `next_tick` past it in one statement,
//! conditional on `next_tick` still being what the leader read, so a tick is handled exactly
//! once even if an operator pauses or edits the schedule at that moment.

use super::{StoreError, q};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Schedule {
    pub id: i64,
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub template: String,
    pub audience_id: i64,
    pub audience: String,
    #[serde(skip)]
    pub from_addr: String,
    pub lane: String,
    pub vars: serde_json::Value,
    pub enabled: bool,
    pub catch_up: String,
    pub stale_after_secs: i32,
    pub next_tick: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

const SELECT: &str = "SELECT s.id, s.name, s.cron, s.timezone, s.template, s.audience_id,
        a.name AS audience, s.from_addr, s.lane, s.vars, s.enabled, s.catch_up,
        s.stale_after_secs, s.next_tick, s.created_at
   FROM schedules s JOIN audiences a ON a.id = s.audience_id";

/// A schedule to create; `cron` and `timezone` must already be validated.
#[derive(Clone)]
pub struct NewSchedule {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub template: String,
    pub audience_id: i64,
    pub from_addr: String,
    pub lane: &'static str,
    pub vars: serde_json::Value,
    pub enabled: bool,
    pub catch_up: &'static str,
    pub stale_after_secs: i32,
    pub next_tick: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Run {
    pub schedule_id: i64,
    pub tick: DateTime<Utc>,
    pub status: String,
    pub token: i64,
    pub fired_at: DateTime<Utc>,
    pub total: i32,
    pub enqueued: i32,
    pub cursor: i64,
    pub pushed: i64,
    pub skipped_ticks: i32,
    pub detail: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

pub(super) const RUN_COLUMNS: &str = "schedule_id, tick, status, token, fired_at, total, enqueued, cursor, \
                           pushed, skipped_ticks, detail, finished_at";

/// Create a schedule; `None` when the name is taken.
pub async fn insert(pool: &PgPool, s: &NewSchedule) -> Result<Option<i64>, StoreError> {
    sqlx::query_scalar(
        "INSERT INTO schedules (name, cron, timezone, template, audience_id, from_addr, lane, vars,
                                enabled, catch_up, stale_after_secs, next_tick)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (name) DO NOTHING RETURNING id",
    )
    .bind(&s.name)
    .bind(&s.cron)
    .bind(&s.timezone)
    .bind(&s.template)
    .bind(s.audience_id)
    .bind(&s.from_addr)
    .bind(s.lane)
    .bind(&s.vars)
    .bind(s.enabled)
    .bind(s.catch_up)
    .bind(s.stale_after_secs)
    .bind(s.next_tick)
    .fetch_optional(pool)
    .await
    .map_err(q("creating a schedule"))
}

pub async fn get(pool: &PgPool, name: &str) -> Result<Option<Schedule>, StoreError> {
    sqlx::query_as(&format!("{SELECT} WHERE s.name = $1"))
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(q("loading a schedule"))
}

pub async fn by_id(pool: &PgPool, id: i64) -> Result<Option<Schedule>, StoreError> {
    sqlx::query_as(&format!("{SELECT} WHERE s.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(q("loading a schedule"))
}

/// A run of schedule `id` at Postgres' `now()`, outside its expression (`schedule run-now`): a
/// `fanning_out` run like a tick's, which the leader's scan of open runs picks up and fans out
/// (its jobs' ids derive from this tick, so they are its own). Its `next_tick` is untouched.
pub async fn run_now(pool: &PgPool, id: i64) -> Result<Run, StoreError> {
    sqlx::query_as(&format!(
        "INSERT INTO schedule_runs (schedule_id, tick, status, token, total, detail)
         SELECT s.id, date_trunc('milliseconds', now()), 'fanning_out', 0,
                (SELECT count(*) FROM audience_members m
                  WHERE m.audience_id = s.audience_id AND m.subscribed),
                'run now by an operator'
           FROM schedules s WHERE s.id = $1
         RETURNING {RUN_COLUMNS}"
    ))
    .bind(id)
    .fetch_one(pool)
    .await
    .map_err(q("starting a run now"))
}

/// The schedules among `ids` that still exist.
pub async fn by_ids(pool: &PgPool, ids: &[i64]) -> Result<Vec<Schedule>, StoreError> {
    sqlx::query_as(&format!("{SELECT} WHERE s.id = ANY($1)"))
        .bind(ids)
        .fetch_all(pool)
        .await
        .map_err(q("loading schedules"))
}

pub async fn list(pool: &PgPool) -> Result<Vec<Schedule>, StoreError> {
    sqlx::query_as(&format!("{SELECT} ORDER BY s.name"))
        .fetch_all(pool)
        .await
        .map_err(q("listing schedules"))
}

/// Enabled schedules whose next tick is at or before `now`, soonest first.
pub async fn due(
    pool: &PgPool,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Schedule>, StoreError> {
    sqlx::query_as(&format!(
        "{SELECT} WHERE s.enabled AND s.next_tick <= $1 ORDER BY s.next_tick LIMIT $2"
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(q("finding due schedules"))
}

/// How many enabled schedules have a tick due at `now` (the leader's backlog).
pub async fn due_count(pool: &PgPool, now: DateTime<Utc>) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT count(*) FROM schedules WHERE enabled AND next_tick <= $1")
        .bind(now)
        .fetch_one(pool)
        .await
        .map_err(q("counting due schedules"))
}

/// The soonest next tick of any enabled schedule.
pub async fn next_due(pool: &PgPool) -> Result<Option<DateTime<Utc>>, StoreError> {
    sqlx::query_scalar("SELECT min(next_tick) FROM schedules WHERE enabled")
        .fetch_one(pool)
        .await
        .map_err(q("finding the next tick"))
}

/// Pause (`enabled = false`) or resume a schedule. Resuming sets `next_tick` (the first tick
/// after now), so ticks that passed while paused are not fired. False when no such schedule.
pub async fn set_enabled(
    pool: &PgPool,
    name: &str,
    enabled: bool,
    next_tick: Option<DateTime<Utc>>,
) -> Result<bool, StoreError> {
    let n = sqlx::query(
        "UPDATE schedules SET enabled = $2, next_tick = COALESCE($3, next_tick), updated_at = now()
          WHERE name = $1",
    )
    .bind(name)
    .bind(enabled)
    .bind(next_tick)
    .execute(pool)
    .await
    .map_err(q("pausing or resuming a schedule"))?
    .rows_affected();
    Ok(n == 1)
}

/// Delete a schedule and its runs. False when there was none.
pub async fn remove(pool: &PgPool, name: &str) -> Result<bool, StoreError> {
    let n = sqlx::query("DELETE FROM schedules WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await
        .map_err(q("removing a schedule"))?
        .rows_affected();
    Ok(n == 1)
}

/// The latest `limit` runs of a schedule, newest first.
pub async fn runs(pool: &PgPool, schedule_id: i64, limit: i64) -> Result<Vec<Run>, StoreError> {
    sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM schedule_runs WHERE schedule_id = $1 ORDER BY tick DESC LIMIT $2"
    ))
    .bind(schedule_id)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(q("listing schedule runs"))
}

/// Up to `limit` runs whose fan-out is not finished, of schedules not paused, oldest first:
/// what a new leader resumes.
pub async fn open_runs(pool: &PgPool, limit: i64) -> Result<Vec<Run>, StoreError> {
    sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM schedule_runs
          WHERE status = 'fanning_out'
            AND schedule_id IN (SELECT id FROM schedules WHERE enabled)
          ORDER BY fired_at LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(q("finding unfinished fan-outs"))
}

/// How a tick is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickResult {
    /// Fan out to the audience.
    Fire,
    /// Recorded, not sent: missed while no leader ran (catch-up `skip`, or older than the one
    /// `once` fires).
    Skipped,
    /// Recorded, not sent: later than `stale_after`.
    Stale,
}

impl TickResult {
    pub fn status(self) -> &'static str {
        match self {
            TickResult::Fire => "fanning_out",
            TickResult::Skipped => "skipped",
            TickResult::Stale => "stale",
        }
    }
}

/// Record the run of `tick` and move the schedule's `next_tick` from `expected` to `next`, in
/// one statement. Returns the run when this call handled the tick; `None` when the schedule
/// changed under the leader (paused, resumed, removed: `next_tick` is no longer `expected`),
/// and then nothing was written.
#[allow(clippy::too_many_arguments)]
pub async fn fire(
    conn: &mut PgConnection,
    schedule_id: i64,
    expected: DateTime<Utc>,
    tick: DateTime<Utc>,
    next: DateTime<Utc>,
    result: TickResult,
    token: i64,
    skipped_ticks: i32,
    detail: Option<&str>,
) -> Result<Option<Run>, StoreError> {
    sqlx::query_as(&format!(
        "WITH adv AS (
             UPDATE schedules SET next_tick = $4, updated_at = now()
              WHERE id = $1 AND next_tick = $2 AND enabled
             RETURNING id, audience_id
         )
         INSERT INTO schedule_runs (schedule_id, tick, status, token, total, skipped_ticks, detail,
                                    finished_at)
         SELECT adv.id, $3, $5, $6,
                CASE WHEN $5 = 'fanning_out' THEN
                    (SELECT count(*) FROM audience_members m
                      WHERE m.audience_id = adv.audience_id AND m.subscribed)
                ELSE 0 END,
                $7, $8, CASE WHEN $5 = 'fanning_out' THEN NULL ELSE now() END
           FROM adv
         ON CONFLICT (schedule_id, tick) DO NOTHING
         RETURNING {RUN_COLUMNS}"
    ))
    .bind(schedule_id)
    .bind(expected)
    .bind(tick)
    .bind(next)
    .bind(result.status())
    .bind(token)
    .bind(skipped_ticks)
    .bind(detail)
    .fetch_optional(conn)
    .await
    .map_err(q("firing a scheduled tick"))
}

/// Record a fan-out batch: its jobs are committed up to member `cursor` and on their streams up
/// to `pushed`. False when the run is no longer fanning out (finished by someone else).
pub async fn advance_run(
    conn: &mut PgConnection,
    schedule_id: i64,
    tick: DateTime<Utc>,
    cursor: i64,
    pushed: i64,
    added: i64,
) -> Result<bool, StoreError> {
    let n = sqlx::query(
        "UPDATE schedule_runs SET cursor = $3, pushed = GREATEST(pushed, $4),
                enqueued = enqueued + $5, updated_at = now()
          WHERE schedule_id = $1 AND tick = $2 AND status = 'fanning_out' AND cursor <= $3",
    )
    .bind(schedule_id)
    .bind(tick)
    .bind(cursor)
    .bind(pushed)
    .bind(added as i32)
    .execute(conn)
    .await
    .map_err(q("recording fan-out progress"))?
    .rows_affected();
    Ok(n == 1)
}

/// End a fan-out: `done` (every job committed and pushed) or `stale` (past `stale_after`).
pub async fn finish_run(
    conn: &mut PgConnection,
    schedule_id: i64,
    tick: DateTime<Utc>,
    status: &'static str,
    detail: Option<&str>,
) -> Result<bool, StoreError> {
    let n = sqlx::query(
        "UPDATE schedule_runs SET status = $3, pushed = cursor, detail = COALESCE($4, detail),
                finished_at = now(), updated_at = now()
          WHERE schedule_id = $1 AND tick = $2 AND status = 'fanning_out'",
    )
    .bind(schedule_id)
    .bind(tick)
    .bind(status)
    .bind(detail)
    .execute(conn)
    .await
    .map_err(q("finishing a fan-out"))?
    .rows_affected();
    Ok(n == 1)
}

/// Pause a schedule the leader cannot evaluate (its expression or timezone no longer parses),
/// unless it changed since the leader read it.
pub async fn disable(
    conn: &mut PgConnection,
    schedule_id: i64,
    expected: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let n = sqlx::query(
        "UPDATE schedules SET enabled = false, updated_at = now() WHERE id = $1 AND next_tick = $2",
    )
    .bind(schedule_id)
    .bind(expected)
    .execute(conn)
    .await
    .map_err(q("pausing a broken schedule"))?
    .rows_affected();
    Ok(n == 1)
}

/// What a chaos run judges a schedule by, for its ticks before `until`.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct TickStats {
    pub first_tick: Option<DateTime<Utc>>,
    /// Runs whose fan-out completed.
    pub done: i64,
    /// Run rows beyond one per tick (the primary key makes this 0; counted, not assumed).
    pub duplicate_runs: i64,
    /// Member jobs beyond one per (tick, member).
    pub duplicate_jobs: i64,
    pub max_lag_ms: Option<f64>,
}

pub async fn tick_stats(
    pool: &PgPool,
    schedule_id: i64,
    until: DateTime<Utc>,
) -> Result<TickStats, StoreError> {
    sqlx::query_as(
        "SELECT min(tick) AS first_tick,
                count(*) FILTER (WHERE status = 'done') AS done,
                count(*) - count(DISTINCT tick) AS duplicate_runs,
                (SELECT count(*) - count(DISTINCT idempotency_key) FROM emails
                  WHERE idempotency_key LIKE 'sched:' || $1 || ':%') AS duplicate_jobs,
                max(extract(epoch FROM fired_at - tick) * 1000)::float8 AS max_lag_ms
           FROM schedule_runs WHERE schedule_id = $1 AND tick < $2",
    )
    .bind(schedule_id)
    .bind(until)
    .fetch_one(pool)
    .await
    .map_err(q("judging a schedule's ticks"))
}

/// Whether a schedule is enabled; `None` when it was removed. A fan-out asks before each batch,
/// so pausing a schedule halts its fan-out too.
pub async fn enabled(
    conn: &mut PgConnection,
    schedule_id: i64,
) -> Result<Option<bool>, StoreError> {
    sqlx::query_scalar("SELECT enabled FROM schedules WHERE id = $1")
        .bind(schedule_id)
        .fetch_optional(conn)
        .await
        .map_err(q("checking a schedule"))
}
